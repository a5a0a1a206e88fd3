"""Run a landscape on any number of ranks: prepare once per rank, then hand out chunks.

:func:`run_landscape` is the one orchestration: launch checks, device binding, the
:class:`Problem` (model at θ*, directions, data, loss and metrics) from a builder,
the surface file (create, resume or refuse), the coordinator/worker protocol, and
a clean stop on SIGTERM/SIGUSR1/SIGUSR2. Its two clients differ only in the builder:
:func:`run_job` (``mpiland run``) builds the problem from a job file's factories
(training a missing checkpoint first), :func:`mpiland.api.landscape` from the
objects a Python caller holds. Set-up errors are agreed on by all ranks (every
rank raises the same user error, rank 0 reports it), so a bad job never leaves
ranks waiting for each other.
"""

from __future__ import annotations

import copy
import logging
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import h5py
import numpy as np
import torch

from . import autorange, surface
from .analysis.measures import DEFAULT_EPSILON, format_number, store_derived
from .comm import Comm, agree, isolated, mpi_module, world
from .curves import CurveResult, connect
from .data import Split, Stream, bn_inputs, job_split, load_split, stream_bn_inputs, stream_samples
from .directions import CurvatureInputs, Directions, make_directions
from .engine import EngineOptions, Evaluator, resolve_loss
from .engine.losses import LossFn
from .errors import CheckpointError, GridError, ModelError, SettingsError, SurfaceFileError
from .grid import Chunks, Grid, chain_block, chain_links, make_chunks, resolve_grid
from .launch import Placement, check_launch, place
from .layout import ParamLayout, state_vector
from .models import base_checkpoint, build_model, load_checkpoint, read_state_dict, save_checkpoint
from .progress import Progress
from .groups import PointGroups, make_groups, ranks_per_group
from .protocol import ChunkResult, Outcome, run_protocol
from .refine import SKIPPED, Plan, anchors
from .rebasin import aligned_state, weight_matching
from .signals import StopFlag
from .spec import SCAN_KINDS, Axis, ConnectSpec, HessianSpec, Job, resolve_directions
from .surface.identity import WHAT
from .train import train_model

log = logging.getLogger("mpiland")


@dataclass(frozen=True)
class RunSummary:
    """What one run did (identical on every rank except ``points_evaluated_here``)."""

    path: Path
    total_points: int
    already_done: int
    points_evaluated: int
    points_evaluated_here: int
    seconds: float
    eval_seconds: float
    interrupted: bool
    writer: str
    ranks: int
    points_skipped: int = 0
    """Points adaptive refinement left out (``done`` = 2 in the file)."""


@dataclass
class Problem:
    """What a landscape evaluates, resolved on one rank: the run owns ``model`` (it is moved and changed).

    ``loss_fn`` None: the loss ``job.loss.name`` names; ``metrics`` None: ``job.loss.metrics``.
    """

    model: torch.nn.Module
    directions: Directions
    splits: list[Split | Stream]
    loss_fn: LossFn | None = None
    metrics: Mapping[str, Any] | None = None
    bn_data: torch.Tensor | None = None
    digests: dict[str, str] = field(default_factory=dict)
    """Data digests beyond the splits' (e.g. ``bn_data`` given from Python), joining the file's identity."""


Builder = Callable[[Comm, Job, Placement], Problem]
"""Called on every rank of a run's communicator: the problem of that rank (collective, agreed errors)."""


def _train_if_needed(comm: Any, job: Job) -> None:
    ckpt = job.model.checkpoint
    missing = bool(comm.bcast(ckpt is not None and not Path(ckpt).exists() if comm.Get_rank() == 0 else None, root=0))
    if not missing:
        return
    if job.train is None:
        def _missing() -> None:
            raise CheckpointError(
                f"model.checkpoint {ckpt!r}: file not found; check the path or add a [train] section to create it")

        agree(comm, _missing)

    def _train() -> None:
        if comm.Get_rank() == 0:
            log.info("checkpoint %s is missing: training it as [train] says", ckpt)
            model = build_model(job.model)
            split = load_split(replace(job.data, subset=0), "train", "[train] trains the model on the train split "
                               "as tensors in memory")
            train_model(model, job, split)

    agree(comm, _train)


def _prepare_model(job: Job) -> torch.nn.Module:
    """The model at θ*: model.checkpoint, else the origin model of a path (whose buffers the path uses)."""
    model = build_model(job.model)
    if job.model.checkpoint is not None:
        load_checkpoint(model, job.model.checkpoint)
    else:
        base = base_checkpoint(job.directions)
        if base is not None:
            load_checkpoint(model, base, key="directions.models")
    return model


def _bn_inputs(job: Job) -> torch.Tensor | None:
    """Training inputs for ``model.bn = "recompute"``: bn_batches seeded batches of data.batch_size."""
    if job.model.bn != "recompute":
        return None
    split = job_split(replace(job.data, subset=0), "train")
    if isinstance(split, Stream):  # only the drawn samples are read into memory
        return stream_bn_inputs(split, job.model.bn_batches, job.data.batch_size, job.data.seed)
    return bn_inputs(split, job.model.bn_batches, job.data.batch_size, job.data.seed)


def _curvature_spec(job: Job) -> HessianSpec | None:
    """The [hessian] settings when the job uses curvature (per point, Hessian directions, or a spectrum)."""
    used = job.hessian.enabled or job.directions.kind == "hessian" or job.hessian.spectrum != "none"
    return job.hessian if used else None


def _hessian_directions(job: Job, model: torch.nn.Module, splits: list[Split | Stream],
                        placement: Placement) -> Directions:
    """Rank 0: the top Hessian eigenvectors at θ* (broadcast, so every rank uses the same vectors).

    A streamed split gives the ``hessian.subset`` samples it would give as tensors, read from the stream;
    without a subset it is refused (the Hessian-vector products need the samples in memory)."""
    found = next(s for s in splits if s.name == job.hessian.splits[0])
    if isinstance(found, Stream):
        if not job.hessian.subset:
            raise SettingsError(f"directions.kind = \"hessian\" needs split {found.name!r} in memory, and "
                                "data.factory streams it: set hessian.subset = N to draw N samples from the stream, "
                                "or data.stream = false")
        subset, seed = job.hessian.subset, job.hessian.seed
        split = stream_samples(found, lambda n: torch.randperm(n, generator=torch.Generator().manual_seed(seed))
                               [:subset], "Hessian directions are computed")
    else:
        split = found
    inputs = CurvatureInputs(job.hessian, split, resolve_loss(job.loss), job.data.batch_size, placement.device,
                             getattr(torch, job.model.dtype))
    return make_directions(copy.deepcopy(model), job.directions, job.grid.dims, inputs)


def engine_options(job: Job) -> EngineOptions:
    """The engine settings of a job's [run] section."""
    r = job.run
    return EngineOptions(points_per_pass=r.points_per_pass, batch_memory_mb=r.batch_memory_mb, autocast=r.autocast,
                         channels_last=r.channels_last, compile=r.compile)


def _choose_writer(requested: str, size: int, output: Path) -> str:
    """The writer to use for ``output`` (surface.choose_writer checks its file system)."""
    has_mpi = bool(h5py.get_config().mpi) and mpi_module() is not None
    return surface.choose_writer(requested, size, has_mpi, output)


def _open_surface(comm: Any, job: Job, path: Path, grid: Grid, directions: Directions, evaluator: Evaluator,
                  ident: surface.Identity, points_per_pass: int) -> tuple[np.ndarray, int] | None:
    """Rank 0: take the output lock and resume, create or refuse the file (surface.open_surface)."""
    if comm.Get_rank() != 0:
        return None
    return surface.open_surface(path, job, ident, grid, directions, evaluator.metrics, evaluator.origin_curvature,
                                points_per_pass)


def _use_points_per_pass(comm: Any, evaluator: Evaluator, k: int) -> None:
    """Make every rank evaluate ``k`` points per pass, or all of them one at a time if any rank cannot.

    Called on every rank unconditionally: the check is a collective.
    """
    if k != evaluator.points_per_pass:
        evaluator.use_points_per_pass(k)
    works = evaluator.batched_pass_works()
    if not all(comm.allgather(works)):
        if comm.Get_rank() == 0:
            log.warning("the file was started with %d points per pass, which this model cannot run on every rank; "
                        "evaluating one at a time (values may differ from earlier ones at rounding level)", k)
        evaluator.use_points_per_pass(1)


def _check_same_problem(digests: list[dict[str, str]]) -> None:
    """Refuse ranks that would evaluate different things: their points would mix into one surface silently."""
    differ: dict[str, list[int]] = {}
    for r, theirs in enumerate(digests[1:], start=1):
        for component, value in theirs.items():
            if value != digests[0][component]:
                differ.setdefault(component, []).append(r)
    if differ:
        what = "; ".join(f"{WHAT[c]} on rank(s) {', '.join(map(str, ranks))}" for c, ranks in differ.items())
        raise ModelError(f"the ranks do not evaluate the same landscape as rank 0 ({what}): every rank must build "
                         "the same model, directions and data (seed them alike, or load one checkpoint)")


def _record_threads(writer: surface.SurfaceWriter | None, threads: list[int], rank: int) -> None:
    """Store the threads per rank in the file, and say when values may differ from earlier ones at rounding level.

    mpiland's own sums do not depend on the thread count; a library's kernels (GEMM,
    convolutions) may, so a value is independent of ranks and resumes when every
    rank of every run used the same number of threads (docs/schema.md).
    """
    if len(set(threads)) > 1 and rank == 0:
        log.warning("ranks use different numbers of torch threads (%s); values may differ at rounding level "
                    "between their points: set run.threads to make them equal", sorted(set(threads)))
    if writer is None:
        return
    previous = writer.record_threads(threads[0])
    if rank == 0 and previous is not None and previous != threads[0]:
        log.warning("this run uses %d torch thread(s) per rank, the file's earlier points %d; values may differ "
                    "from theirs at rounding level (set run.threads = %d to match)", threads[0], previous, previous)


def _store_derived(path: Path, endpoints: tuple[float, float] | None) -> None:
    """Store barrier and flatness numbers of a finished surface as root attributes (docs/schema.md), and
    log the barriers of a path between two models (the straight line and unaligned path beside it too)."""
    stored = store_derived(path)
    if endpoints is None:
        return
    barriers = [(k[: -len("_barrier")], v) for k, v in stored.items() if k.endswith("_loss_barrier")]
    if barriers:
        log.info("loss barrier between the models: %s",
                 ", ".join(f"{m} {format_number(float(v))}" for m, v in barriers))


def _from_job(comm: Comm, job: Job, placement: Placement) -> Problem:
    """The problem of a job file: train a missing checkpoint, then build model, data and directions."""
    rank = comm.Get_rank()
    _train_if_needed(comm, job)
    # Each step that can raise on some ranks only runs inside agree(); collectives run between them, on
    # every rank, so a user error anywhere is one agreed error and never a rank left in a broadcast.
    # data.stream decides which splits are read batch by batch (never materialised) rather than as tensors.
    model, splits = agree(comm, lambda: (_prepare_model(job), [job_split(job.data, s) for s in job.data.splits]))
    if job.directions.kind == "hessian":
        found = agree(comm, lambda: _hessian_directions(job, model, splits, placement) if rank == 0 else None)
        directions: Directions = comm.bcast(found, root=0)
    elif job.directions.align:
        # Weight matching breaks near-ties by floating-point sums: rank 0 decides for all ranks.
        found = agree(comm, lambda: make_directions(model, job.directions, job.grid.dims) if rank == 0 else None)
        directions = comm.bcast(found, root=0)
    else:
        directions = agree(comm, lambda: make_directions(model, job.directions, job.grid.dims))
    bn_data = agree(comm, lambda: _bn_inputs(job))
    return Problem(model, directions, list(splits), bn_data=bn_data)


def run_job(job: Job, comm: Any = None, progress: str | None = None, stop: StopFlag | None = None) -> RunSummary:
    """Evaluate the job file's ``job`` over all ranks of ``comm`` (None: COMM_WORLD, or one process without MPI).

    The model, data, loss and directions come from the job's factories and files
    (a missing checkpoint is trained first when the job has a [train] section);
    the rest is :func:`run_landscape`.
    """
    return run_landscape(job, _from_job, comm, progress, stop)


def run_landscape(job: Job, build: Builder, comm: Any = None, progress: str | None = None,
                  stop: StopFlag | None = None) -> RunSummary:
    """Evaluate the problem ``build`` gives, with the settings of ``job``, over all ranks of ``comm``.

    ``comm`` None: COMM_WORLD, or one process without MPI. The run talks on its own
    duplicate of ``comm`` (freed before returning), so a message the caller has
    pending on ``comm`` is neither received nor disturbed. ``stop``: an already
    installed :class:`StopFlag` (the CLI installs one before set-up, so a signal
    during start-up also ends the run cleanly); None installs one here.
    Raises :class:`~mpiland.errors.LaunchError` for an intercommunicator.
    """
    threads = torch.get_num_threads()
    cuda = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        with isolated(world(comm)) as own_comm:
            if stop is not None:
                return _run(job, build, own_comm, progress, stop)
            with StopFlag() as own:
                return _run(job, build, own_comm, progress, own)
    finally:
        # The run binds the process to its device and thread count; an in-process caller gets its own back.
        torch.set_num_threads(threads)
        if cuda is not None:
            torch.cuda.set_device(cuda)


def _scan_axes(job: Job) -> list[str]:
    """The axes whose range a pre-scan chooses: the automatic axes of random, file and Hessian directions."""
    if job.directions.kind not in SCAN_KINDS:
        return []
    return [name for name in ("x", "y") if (axis := getattr(job.grid, name)) is not None and axis.auto]


def _first_loss(job: Job) -> str:
    """The metric automatic ranges and refinement judge by: the loss of the first split."""
    return f"{job.data.splits[0]}_loss"


def _with_ranges(job: Job, ranges: dict[str, float]) -> Job:
    """``job`` with its automatic axes given the symmetric ranges ``ranges`` (axis name -> R: [-R, R])."""
    x, y = job.grid.x, job.grid.y
    if "x" in ranges:
        x = Axis(-ranges["x"], ranges["x"], x.num)
    if "y" in ranges and y is not None:
        y = Axis(-ranges["y"], ranges["y"], y.num)
    return replace(job, grid=replace(job.grid, x=x, y=y))


def _stored_ranges(job: Job, path: Path, axes: list[str],
                   identity: Callable[[Job], surface.Identity]) -> dict[str, float] | None:
    """Rank 0: the ranges of the existing file at ``path`` when this job would resume it with them (else None)."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r", locking=False) as f:
            ranges = autorange.read_ranges(f, job.grid.auto_rise, job.grid.auto_max, _first_loss(job))
            stored = dict(f.attrs)
    except OSError:
        return None
    if ranges is None or sorted(ranges) != sorted(axes):
        return None
    return ranges if identity(_with_ranges(job, ranges)).differs_from(stored) is None else None


def _resolve_range(comm: Comm, job: Job, path: Path, evaluator: Evaluator,
                   identity: Callable[[Job], surface.Identity]) -> tuple[Job, autorange.AutoRange | None]:
    """The job with its pre-scanned axes resolved: from the file it resumes, else from a pre-scan on rank 0.

    Collective; every rank gets the same ranges. The scan is returned (on every rank)
    when one ran, for rank 0 to store it in the file.
    """
    axes = _scan_axes(job)
    if not axes:
        return job, None
    metric = _first_loss(job)

    def on_rank0() -> tuple[dict[str, float], autorange.AutoRange | None] | None:
        if comm.Get_rank() != 0:
            return None
        stored = _stored_ranges(job, path, axes, identity)
        if stored is not None:
            log.info("automatic range: %s, from the pre-scan stored in %s",
                     ", ".join(f"{a} in [{-r:g}, {r:g}]" for a, r in stored.items()), path)
            return stored, None

        def losses(coords: np.ndarray) -> np.ndarray:
            return evaluator.evaluate_points(coords)[0][metric]

        scan = autorange.scan(losses, job.grid.dims, axes, job.grid.auto_rise, job.grid.auto_max, metric)
        reached = "; ".join(
            f"{a} in [{-s.range:g}, {s.range:g}] ({metric} reaches {job.grid.auto_rise:g}× at "
            f"{', '.join('-' if not np.isfinite(c) else f'{c:.3g}' for c in s.crossings)})"
            for a, s in scan.axes.items())
        log.info("automatic range: pre-scan of %d points in %.1f s, %s %s at the centre: %s", scan.points,
                 scan.seconds, metric, format_number(scan.centre), reached)
        return {a: s.range for a, s in scan.axes.items()}, scan

    ranges, scan = comm.bcast(agree(comm, on_rank0), root=0)
    return _with_ranges(job, ranges), scan


def _annotate(path: Path, scan: autorange.AutoRange | None, plan: Plan | None, metric: str) -> None:
    """Rank 0, before the writers open: store the pre-scan (``autorange/``) and the refinement settings."""
    if scan is None and plan is None:
        return
    try:
        with h5py.File(path, "r+") as f:
            if scan is not None:
                scan.write(f)
            if plan is not None:
                f.attrs["refine_levels"], f.attrs["refine_tol"] = plan.levels, plan.tol
                f.attrs["refine_epsilon"], f.attrs["refine_metric"] = plan.epsilon, metric
    except OSError as exc:
        surface.release_output(path)
        raise SurfaceFileError(f"cannot write the grid's pre-scan or refinement settings to {path} "
                               f"({' '.join(str(exc).split())}); is the disk full?") from None


def _stored_losses(path: Path, done: np.ndarray, metric: str) -> np.ndarray:
    """Rank 0: the flat values of ``metric`` at the points done (NaN elsewhere), for the refinement decisions."""
    have = done.reshape(-1) == 1
    out = np.full(done.size, np.nan)
    if have.any():
        with h5py.File(path, "r") as f:
            out[have] = np.asarray(f[metric][...], dtype=np.float64).reshape(-1)[have]
    return out


def _mark_skipped(path: Path, skipped: np.ndarray) -> None:
    """Rank 0, writers closed: mark the points refinement never needs ``done`` = 2, their values NaN."""
    with h5py.File(path, "r+") as f:
        done = f[surface.DONE][...]
        flat = done.reshape(-1)
        flat[skipped] = SKIPPED
        f[surface.DONE][...] = done
        for name in [*(str(m) for m in f.attrs["metrics"]), surface.SECONDS]:
            values = f[name][...]
            if np.isfinite(values.reshape(-1)[skipped]).any():  # written before a crash, never marked done
                values.reshape(-1)[skipped] = np.nan
                f[name][...] = values


def _first_points(plan: Plan | None, losses: np.ndarray | None, have: np.ndarray | None, k: int) -> int:
    """Rank 0: the blocks of ``k`` points the first round needs at least (chunks hold whole blocks of k
    consecutive points, :func:`~mpiland.grid.make_chunks`): what an automatic group size is chosen for."""
    if have is None:
        return 0
    pending = np.flatnonzero(~have)
    if plan is not None:
        assert losses is not None
        levels, complete = plan.walk(losses, have)
        pending = np.zeros(0, dtype=np.int64) if complete else levels[-1][~have[levels[-1]]]
    return len(np.unique(np.asarray(pending) // max(k, 1)))


def _point_groups(comm: Comm, job: Job, evaluator: Evaluator, blocks: int, block: int
                  ) -> tuple[int, PointGroups | None]:
    """The number of groups the coordinator hands chunks to, and this rank's point group (None for groups of
    one rank), with the engine set to evaluate its shard (:mod:`mpiland.groups`)."""
    size = comm.Get_size()
    requested = job.run.group_size
    g = comm.bcast(agree(comm, lambda: ranks_per_group(requested, size, blocks)
                         if comm.Get_rank() == 0 else None), root=0)
    groups = make_groups(comm, g)
    if groups is not None:
        agree(comm, lambda: evaluator.use_shard(groups.shard))
    if comm.Get_rank() == 0 and (g > 1 or requested == 0):
        log.info("point groups: %d group(s) of %d rank(s)%s%s", size // g, g,
                 f" (automatic: the smallest size that leaves no group without one of the {blocks} block(s) "
                 f"of {block} point(s) to evaluate)"
                 if requested == 0 else "",
                 f"; rank r of a group evaluates the batches b with b mod {g} = r at the group's points" if g > 1 else "")
    return size // g, groups


def _run(job: Job, build: Builder, comm: Comm, progress: str | None, stop: StopFlag) -> RunSummary:
    rank, size = comm.Get_rank(), comm.Get_size()
    t_start = time.perf_counter()
    agree(comm, lambda: check_launch(comm))
    placement: Placement = agree(comm, lambda: place(comm, job.run.device, job.run.threads))
    writer_kind = comm.bcast(agree(comm, lambda: _choose_writer(job.run.writer, size, Path(job.output.path))
                                   if rank == 0 else None), root=0)
    problem = build(comm, job, placement)
    model, directions, splits = problem.model, problem.directions, problem.splits

    def _engine() -> Evaluator:
        return Evaluator(model, directions, splits, job.loss, placement.device,
                         dtype=getattr(torch, job.model.dtype), batch_size=job.data.batch_size,
                         memory_budget_mb=job.data.memory_budget_mb, mode=job.model.mode,
                         options=engine_options(job), bn_data=problem.bn_data, hessian=_curvature_spec(job),
                         copy_model=False, loss_fn=problem.loss_fn, metrics=problem.metrics,
                         sharing=placement.sharing)

    def identity(of: Job) -> surface.Identity:
        ident = surface.job_identity(of, model, directions, splits)
        return ident.with_data({**evaluator.data_digests, **problem.digests})

    evaluator = agree(comm, _engine)
    path = Path(job.output.path)
    # Before any point is evaluated: evaluating leaves the model at its last point (and BatchNorm statistics
    # recomputed there), and the identity digests θ*.
    first = agree(comm, lambda: identity(job))
    # Points per pass: every rank takes part, and all use the smallest K any rank can run.
    agreed_k = min(comm.allgather(evaluator.points_per_pass))
    job, scan = _resolve_range(comm, job, path, evaluator, first.for_job)
    fp = first.for_job(job)
    if size > 1:
        digests = comm.allgather(fp.digests)
        agree(comm, lambda: _check_same_problem(digests))
    grid = Grid.from_spec(resolve_grid(job.grid, directions))
    metrics = evaluator.metrics
    metric = _first_loss(job)
    g = job.grid
    axes = [grid.x] if grid.y is None else [grid.x, grid.y]
    near = anchors(axes, [np.asarray(pos) for _, pos in directions.models])
    plan = agree(comm, lambda: Plan.make(grid.shape, g.refine_levels, g.refine_tol, DEFAULT_EPSILON, near)) \
        if g.refine else None
    done, k = comm.bcast(agree(comm, lambda: _open_surface(comm, job, path, grid, directions, evaluator, fp,
                                                         agreed_k)), root=0)
    if rank == 0:
        _annotate(path, scan, plan, metric)
    _use_points_per_pass(comm, evaluator, k)
    already = int((done == 1).sum())
    # Rank 0's view of the refinement metric, from the file and then from every delivered chunk.
    losses = _stored_losses(path, done, metric) if plan is not None and rank == 0 else None
    have = (done.reshape(-1) == 1) if rank == 0 else None
    chained = evaluator.curvature is not None and job.hessian.enabled and evaluator.curvature.warm_start
    row = grid.shape[-1]
    block = chain_block(evaluator.points_per_pass, row, job.hessian.chain) if chained else evaluator.points_per_pass
    blocks = _first_points(plan, losses, have, block)
    n_groups, groups = _point_groups(comm, job, evaluator, blocks, block)
    if rank == 0:
        log.info("%d rank(s); rank 0 on %s with %d thread(s); writer %s; data %s; %d point(s) per pass%s",
                 size, placement.device, placement.threads, writer_kind,
                 "resident on the device" if evaluator.resident else "streamed from host memory",
                 evaluator.points_per_pass,
                 "" if plan is None else f"; adaptive refinement on {metric}: {plan.levels} level(s) below every "
                 f"{2 ** plan.levels}-th point, tol {plan.tol:g}, ε {plan.epsilon:g}"
                 + (" (the grid is too small for a coarser level: every point is evaluated)" if plan.levels == 0
                    else ""))
    log.info("rank %d on %s (local rank %d/%d), %d thread(s), host %s", rank, placement.device,
             placement.local_rank, placement.local_size, placement.threads, socket.gethostname())

    threads = comm.allgather(placement.threads)
    writer = surface.open_writer(path, comm, writer_kind, evaluator.points_per_pass)
    _record_threads(writer, threads, rank)

    label = "(with Hessian eigenvalues) " if job.hessian.enabled else ""
    if rank == 0 and job.hessian.enabled:
        log.info("curvature at every point: λmax and λmin by Lanczos (tol %g, at most %d HVPs) on %s%s; "
                 "expect each point to cost tens of loss evaluations", job.hessian.tol, job.hessian.max_iter,
                 ", ".join(job.hessian.splits),
                 f", warm-started along chains of up to {min(row, job.hessian.chain)} points of a row (blocks of "
                 f"{block}, each evaluated whole by one rank)" if chained else "")
    bar: Progress | None = None
    evaluated = 0
    chunks: Chunks = make_chunks(np.ones(0, dtype=np.uint8), size)

    def evaluate_chunk(chunk: int, poll: Callable[[], bool]) -> ChunkResult:
        points = chunks.points(chunk)
        coords = grid.coords(points)
        # poll() is asked before each pass: once it says stop, only the points before it are returned
        links = chain_links(points, row, chunks.block) if chained else None
        values, seconds = evaluator.evaluate_points(coords, chunks.groups(points), poll, links)
        n = len(seconds)
        result = ChunkResult(chunk, points[:n], {m: values[m] for m in metrics}, seconds, n < len(points))
        if plan is not None:
            result.loss = values[metric]
        if writer_kind == "mpio" and n and (groups is None or groups.leader):
            # every rank has an MPI-IO writer, and the values were just set
            assert writer is not None and result.values is not None and result.seconds is not None
            writer.write(result.points, result.values, result.seconds)
            result.values = result.seconds = None
        return result

    def deliver(result: ChunkResult) -> None:
        nonlocal evaluated
        # only rank 0 delivers: it has the bar, and the writer when values come with the result
        assert bar is not None and have is not None
        if result.values is not None and len(result.points):
            assert writer is not None and result.seconds is not None
            writer.write(result.points, result.values, result.seconds)
        if losses is not None and result.loss is not None:
            losses[result.points] = result.loss
        have[result.points] = True
        evaluated += len(result.points)
        bar.update(len(result.points))

    def next_round() -> tuple[np.ndarray, str] | None:
        """Rank 0: the points to evaluate next and the bar's label (None: nothing left)."""
        assert have is not None
        if plan is None:  # one round: every point not evaluated yet (also those an earlier refinement skipped)
            pending = np.flatnonzero(~have)
            return (pending, label) if len(pending) and rounds == 0 else None
        assert losses is not None
        levels, complete = plan.walk(losses, have)
        if complete:
            return None
        pending = levels[-1][~have[levels[-1]]]
        log.info("refinement level %d of %d: %d point(s), %d pending", len(levels) - 1, plan.levels,
                 len(levels[-1]), len(pending))
        return pending, f"{label}level {len(levels) - 1}/{plan.levels} "

    t_eval = time.perf_counter()
    outcome = Outcome(0, 0, False)
    rounds = 0
    try:
        while True:
            todo = comm.bcast(next_round() if rank == 0 else None, root=0)
            if todo is None:
                break
            rounds += 1
            pending, round_label = todo
            mask = np.ones(grid.size, dtype=np.uint8)
            mask[pending] = 0
            chunks = make_chunks(mask.reshape(grid.shape), n_groups, job.run.chunk_size, block=block,
                                 passes=evaluator.points_per_pass)
            if rank == 0:
                log.info("%d points pending in %d chunks of %d", len(chunks.pending), len(chunks), chunks.size)
                total = grid.size if plan is None else len(pending)
                bar = Progress(total, total - len(pending), progress or job.run.progress, label=round_label)
            if groups is None:
                part = run_protocol(comm, len(chunks), evaluate_chunk, deliver, stop)
            elif groups.leaders is not None:
                part = run_protocol(groups.leaders, len(chunks), groups.leading(evaluate_chunk), deliver, stop)
                groups.release()
            else:
                part = groups.follow(evaluate_chunk, stop)
            outcome = Outcome(outcome.chunks_evaluated + part.chunks_evaluated,
                              outcome.points_evaluated + part.points_evaluated, part.stopped)
            if bar is not None:
                bar.close()
            stopped = bool(comm.allreduce(int(part.stopped or stop()))) if size > 1 else part.stopped or stop()
            if stopped:
                outcome = replace(outcome, stopped=True)
                break
    except BaseException:
        # Release a file this process writes alone, so an in-process caller can retry;
        # an MPI-IO file cannot be closed by one failing rank (closing is collective).
        if writer is not None and not writer.parallel:
            writer.close()
        if rank == 0:
            surface.release_output(path)
        raise
    eval_seconds = time.perf_counter() - t_eval
    if groups is not None:
        evaluator.use_shard(None)
        groups.free()
    if writer is not None:
        writer.close(release=False)
    interrupted = bool(comm.allreduce(int(outcome.stopped or stop()))) if size > 1 else outcome.stopped or stop()
    evaluated = comm.bcast(evaluated, root=0)
    eval_seconds = comm.bcast(eval_seconds, root=0)
    skipped = 0
    if rank == 0:
        try:
            assert have is not None
            finished = not interrupted and bool(have.all())
            if plan is not None and not interrupted:
                assert losses is not None
                levels, complete = plan.walk(losses, have)
                used = np.zeros(grid.size, dtype=bool)
                for points in levels:
                    used[points] = True
                left_out = np.flatnonzero(~used & ~have)
                if complete:
                    _mark_skipped(path, left_out)
                    skipped = len(left_out)
                    finished = True
            if finished:
                _store_derived(path, directions.endpoints)
        finally:
            surface.release_output(path)
    skipped = comm.bcast(skipped, root=0)
    summary = RunSummary(path, grid.size, already, evaluated, outcome.points_evaluated, time.perf_counter() - t_start,
                         eval_seconds, bool(interrupted), writer_kind, size, skipped)
    if rank == 0:
        assert have is not None
        remaining = grid.size - int(have.sum()) - skipped
        if interrupted:
            log.warning("stopped: %d points saved to %s, %d left; run the same command again to resume",
                        int(have.sum()), path, remaining)
        else:
            log.info("done: %d points evaluated in %.1f s (%.1f points/s after set-up)%s; surface in %s",
                     evaluated, summary.seconds, evaluated / max(eval_seconds, 1e-9),
                     f"; refinement left out {skipped} of {grid.size} points (done = 2)" if plan is not None else "",
                     path)
    return summary


def _bends_dir(job: Job, ends: tuple[str, str], spec: ConnectSpec) -> Path:
    """Where a connect job's bends go: ``connect.checkpoint_dir``, else beside the first end."""
    if spec.checkpoint_dir:
        return Path(spec.checkpoint_dir)
    a, b = (Path(e).stem for e in ends)
    return Path(ends[0]).parent / f"{a}-{b}-{spec.curve}{spec.bends}"


def curve_job(job: Job, ends: tuple[str, str], bends: list[Path], batchnorm: bool = False) -> Job:
    """The job that evaluates a trained curve: ``connect.curve`` through the ends and bends, with the line.

    With ``batchnorm`` (the model has BatchNorm layers), the statistics are recomputed at
    every t (``model.bn = "recompute"``), as Garipov et al. evaluate their curves: the
    bends' own running statistics were never trained.
    """
    assert job.connect is not None
    if job.grid.y is not None:
        raise GridError("the curve is a 1D path from t = 0 to 1: remove grid.y from the job")
    directions = resolve_directions(replace(job.directions, kind=job.connect.curve, norm="auto", ignore="auto",
                                            models=(ends[0], *map(str, bends), ends[1]), compare_line=True,
                                            file=(), orthogonalize=False, align=False))
    model = replace(job.model, checkpoint=None)  # the buffers come from the first end, the curve's origin
    if batchnorm and model.bn == "eval" and model.mode == "eval":
        log.info("connect: the model has BatchNorm layers: recomputing their statistics at every t "
                 "(model.bn = \"recompute\")")
        model = replace(model, bn="recompute")
    return replace(job, directions=directions, model=model)


def run_connect(job: Job, ends: tuple[str, ...] = (), comm: Any = None, progress: str | None = None,
                stop: StopFlag | None = None) -> tuple[CurveResult, RunSummary | None]:
    """``mpiland connect``: train the bends of a curve between two modes, then evaluate it with the line.

    ``ends`` (A, B) default to ``connect.ends``. The curve is trained on the data's
    ``train`` split with the job's loss and [connect] settings (:mod:`mpiland.curves`),
    then evaluated as a ``bezier``/``polychain`` path with the straight line beside it
    into the job's output (barriers stored). Returns the training result and the
    run's summary (None when a stop signal ended the training).
    """
    spec = job.connect or ConnectSpec()
    pair = tuple(ends) or spec.ends
    if len(pair) != 2:
        raise SettingsError(f"connect: give the two end models (A.pt B.pt, or connect.ends), got {len(pair)}")
    a_path, b_path = str(pair[0]), str(pair[1])
    job = replace(job, connect=replace(spec, ends=(a_path, b_path)))
    assert job.connect is not None
    ranks = world(comm)
    if job.grid.y is not None:
        raise GridError("the curve is a 1D path from t = 0 to 1: remove grid.y from the job")

    def inputs() -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor], Split]:
        model = build_model(job.model)
        a = read_state_dict(a_path, f"connect end {a_path!r}")
        b = read_state_dict(b_path, f"connect end {b_path!r}")
        return model, a, b, load_split(replace(job.data, subset=0), "train",
                                       "connect trains the curve on the train split as tensors in memory")

    model, a, b, split = agree(ranks, inputs)
    out = _bends_dir(job, (a_path, b_path), job.connect)
    with StopFlag() if stop is None else nullcontext(stop) as flag:
        result = connect(model, a, b, split, resolve_loss(job.loss), job.connect, out, loss_name=job.loss.name,
                         comm=ranks, progress=progress or job.run.progress, stop=flag)
        if result.stopped:
            return result, None
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        summary = run_job(curve_job(job, (a_path, b_path), result.paths, has_bn), ranks, progress, flag)
    return result, summary



@dataclass(frozen=True)
class AlignSummary:
    """What ``mpiland align`` did: the units it permuted and B's distance to A before and after."""

    path: Path
    permuted_units: int
    units: int
    distance_before: float
    distance_after: float


def align_checkpoints(job: Job, a_path: str, b_path: str, out: str, seed: int = 0) -> AlignSummary:
    """``mpiland align``: permute B's hidden units to match A's (weight matching); save the aligned B to ``out``.

    The architecture is the job's [model]; both checkpoints are loaded strictly. The
    aligned checkpoint computes the same function as B.
    """
    a, b = build_model(job.model), build_model(job.model)
    load_checkpoint(a, a_path, key="align")
    load_checkpoint(b, b_path, key="align")
    alignment = weight_matching(a, b, seed=seed)
    aligned = aligned_state(b, alignment)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(aligned, target)
    layout = ParamLayout.from_model(a)
    theta_a = state_vector(a, layout)
    before = float((state_vector(b, layout) - theta_a).norm())
    b.load_state_dict(aligned)
    after = float((state_vector(b, layout) - theta_a).norm())
    return AlignSummary(target, alignment.permuted_units, alignment.spec.units, before, after)
