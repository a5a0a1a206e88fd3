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
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import h5py
import numpy as np
import torch

from . import surface
from .analysis.measures import format_number, store_derived
from .comm import Comm, agree, isolated, mpi_module, world
from .curves import CurveResult, connect
from .data import Split, Stream, bn_inputs, load_split
from .directions import CurvatureInputs, Directions, make_directions
from .engine import EngineOptions, Evaluator, resolve_loss
from .engine.losses import LossFn
from .errors import CheckpointError, GridError, ModelError, SettingsError
from .grid import Chunks, Grid, make_chunks, resolve_grid
from .launch import Placement, check_launch, place
from .layout import ParamLayout, state_vector
from .models import base_checkpoint, build_model, load_checkpoint, read_state_dict, save_checkpoint
from .progress import Progress
from .protocol import ChunkResult, run_protocol
from .rebasin import aligned_state, weight_matching
from .signals import StopFlag
from .spec import ConnectSpec, HessianSpec, Job, resolve_directions
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
            split = load_split(replace(job.data, subset=0), "train")
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
    split = load_split(replace(job.data, subset=0), "train")
    return bn_inputs(split, job.model.bn_batches, job.data.batch_size, job.data.seed)


def _curvature_spec(job: Job) -> HessianSpec | None:
    """The [hessian] settings when the job uses curvature (per point, Hessian directions, or a spectrum)."""
    used = job.hessian.enabled or job.directions.kind == "hessian" or job.hessian.spectrum != "none"
    return job.hessian if used else None


def _hessian_directions(job: Job, model: torch.nn.Module, splits: list[Split], placement: Placement) -> Directions:
    """Rank 0: the top Hessian eigenvectors at θ* (broadcast, so every rank uses the same vectors)."""
    split = next(s for s in splits if s.name == job.hessian.splits[0])
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
    model, splits = agree(comm, lambda: (_prepare_model(job), [load_split(job.data, s) for s in job.data.splits]))
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


def _run(job: Job, build: Builder, comm: Comm, progress: str | None, stop: StopFlag) -> RunSummary:
    rank, size = comm.Get_rank(), comm.Get_size()
    t_start = time.perf_counter()
    agree(comm, lambda: check_launch(comm))
    placement: Placement = agree(comm, lambda: place(comm, job.run.device, job.run.threads))
    writer_kind = comm.bcast(agree(comm, lambda: _choose_writer(job.run.writer, size, Path(job.output.path))
                                   if rank == 0 else None), root=0)
    problem = build(comm, job, placement)
    model, directions, splits = problem.model, problem.directions, problem.splits

    def _engine() -> tuple[Evaluator, surface.Identity]:
        ident = surface.job_identity(job, model, directions, splits)
        evaluator = Evaluator(model, directions, splits, job.loss, placement.device,
                              dtype=getattr(torch, job.model.dtype), batch_size=job.data.batch_size,
                              memory_budget_mb=job.data.memory_budget_mb, mode=job.model.mode,
                              options=engine_options(job), bn_data=problem.bn_data, hessian=_curvature_spec(job),
                              copy_model=False, loss_fn=problem.loss_fn, metrics=problem.metrics)
        return evaluator, ident.with_data({**evaluator.data_digests, **problem.digests})

    evaluator, fp = agree(comm, _engine)
    if size > 1:
        digests = comm.allgather(fp.digests)
        agree(comm, lambda: _check_same_problem(digests))
    # Points per pass: every rank takes part, and all use the smallest K any rank can run.
    agreed_k = min(comm.allgather(evaluator.points_per_pass))
    grid = Grid.from_spec(resolve_grid(job.grid, directions))
    metrics = evaluator.metrics
    path = Path(job.output.path)
    done, k = comm.bcast(agree(comm, lambda: _open_surface(comm, job, path, grid, directions, evaluator, fp,
                                                         agreed_k)), root=0)
    _use_points_per_pass(comm, evaluator, k)
    chunks: Chunks = make_chunks(done, size, job.run.chunk_size, block=evaluator.points_per_pass)
    already = int(done.sum())
    if rank == 0:
        log.info("%d rank(s); rank 0 on %s with %d thread(s); writer %s; data %s; %d point(s) per pass; "
                 "%d points pending in %d chunks of %d",
                 size, placement.device, placement.threads, writer_kind,
                 "resident on the device" if evaluator.resident else "streamed from host memory",
                 evaluator.points_per_pass, len(chunks.pending), len(chunks), chunks.size)
    log.debug("rank %d on %s (local rank %d/%d), %d thread(s)", rank, placement.device,
              placement.local_rank, placement.local_size, placement.threads)

    threads = comm.allgather(placement.threads)
    writer = surface.open_writer(path, comm, writer_kind, evaluator.points_per_pass)
    _record_threads(writer, threads, rank)

    label = "(with Hessian eigenvalues) " if job.hessian.enabled else ""
    if rank == 0 and job.hessian.enabled:
        log.info("curvature at every point: λmax and λmin by Lanczos (tol %g, at most %d HVPs) on %s; "
                 "expect each point to cost tens of loss evaluations", job.hessian.tol, job.hessian.max_iter,
                 ", ".join(job.hessian.splits))
    bar = Progress(grid.size, already, progress or job.run.progress, label=label) if rank == 0 else None
    evaluated = 0

    def evaluate_chunk(chunk: int, poll: Callable[[], bool]) -> ChunkResult:
        points = chunks.points(chunk)
        coords = grid.coords(points)
        # poll() is asked before each pass: once it says stop, only the points before it are returned
        values, seconds = evaluator.evaluate_points(coords, chunks.groups(points), poll)
        n = len(seconds)
        result = ChunkResult(chunk, points[:n], {m: values[m] for m in metrics}, seconds, n < len(points))
        if writer_kind == "mpio" and n:
            # every rank has an MPI-IO writer, and the values were just set
            assert writer is not None and result.values is not None and result.seconds is not None
            writer.write(result.points, result.values, result.seconds)
            result.values = result.seconds = None
        return result

    def deliver(result: ChunkResult) -> None:
        nonlocal evaluated
        # only rank 0 delivers: it has the bar, and the writer when values come with the result
        assert bar is not None
        if result.values is not None and len(result.points):
            assert writer is not None and result.seconds is not None
            writer.write(result.points, result.values, result.seconds)
        evaluated += len(result.points)
        bar.update(len(result.points))

    t_eval = time.perf_counter()
    try:
        outcome = run_protocol(comm, len(chunks), evaluate_chunk, deliver, stop)
    except BaseException:
        # Release a file this process writes alone, so an in-process caller can retry;
        # an MPI-IO file cannot be closed by one failing rank (closing is collective).
        if writer is not None and not writer.parallel:
            writer.close()
        if rank == 0:
            surface.release_output(path)
        raise
    eval_seconds = time.perf_counter() - t_eval
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close(release=False)
    interrupted = bool(comm.allreduce(int(outcome.stopped or stop()))) if size > 1 else outcome.stopped or stop()
    evaluated = comm.bcast(evaluated, root=0)
    eval_seconds = comm.bcast(eval_seconds, root=0)
    summary = RunSummary(path, grid.size, already, evaluated, outcome.points_evaluated, time.perf_counter() - t_start,
                         eval_seconds, bool(interrupted), writer_kind, size)
    if rank == 0:
        try:
            if not interrupted and already + evaluated == grid.size:
                _store_derived(path, directions.endpoints)
        finally:
            surface.release_output(path)
    if rank == 0:
        remaining = grid.size - already - evaluated
        if interrupted:
            log.warning("stopped: %d points saved to %s, %d left; run the same command again to resume",
                        already + evaluated, path, remaining)
        else:
            log.info("done: %d points evaluated in %.1f s (%.1f points/s after set-up); surface in %s",
                     evaluated, summary.seconds, evaluated / max(eval_seconds, 1e-9), path)
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
        return model, a, b, load_split(replace(job.data, subset=0), "train")

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
