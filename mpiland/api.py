"""The Python API: a landscape of the model and data a notebook or script already holds, in one call.

:func:`landscape` is ``mpiland run`` without a job file: the same engine, surface
file, resume rules, ranks and analyses (:func:`mpiland.run.run_landscape`), fed
with objects instead of import strings. Every job-file key is reachable through
``settings`` under its job-file name (``{"run.points_per_pass": 4}``), checked by
the same rules. The caller's model, data loaders, metric objects and random
state are never changed: the run works on copies and on its own loaders.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from .comm import Comm, agree, world
from .curves import CurveResult
from .curves import connect as train_curve
from .data import as_splits, as_tensors, bn_inputs
from .digest import tensors_digest
from .directions import Directions
from .engine.metrics import Metric, check_name
from .errors import GridError, ModelError, SettingsError
from .jobfile import apply_overrides, job_from_table
from .launch import Placement
from .layout import ParamLayout
from .result import Surface
from .result import open as open_surface
from .run import Problem, RunSummary, run_landscape
from .lossfns import loss_function
from .models import read_state_dict
from .spec import PATH_KINDS, ConnectSpec, Job
from .userimport import qualified_name

__all__ = ["connect", "landscape"]

AxisLike = tuple[float, float, int] | Sequence[Any] | int | str
"""An axis: ``(min, max, num)``; a bare ``num`` for a range that covers the models of a path; ``("auto", num)``
(or ``"auto"``, 21 points) for random, file and Hessian directions: a range chosen by a pre-scan of the loss."""


def _axis(name: str, value: Any) -> Any:
    if value is None or isinstance(value, int) or value == "auto":
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == "auto":
        return ["auto", value[1]]
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return [value[0], value[1], value[2]]
    raise GridError(f"{name}={value!r}: give (min, max, num), e.g. (-1, 1, 51), num for a range covering "
                    "the models of a path, or (\"auto\", num) for a range chosen by a pre-scan of the loss")


def _loss(loss: Any) -> tuple[str, Any]:
    """The loss's recorded name, and the callable (None for a name the engine resolves itself)."""
    name, fn = loss_function(loss)
    return (name, None) if isinstance(loss, str) else (name, fn)


def _metrics(metrics: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, Any]]:
    """The metrics' recorded names and objects (import strings are left for the engine to resolve)."""
    if metrics is None:
        return {}, {}
    if not isinstance(metrics, Mapping):
        raise SettingsError(f"metrics is a {type(metrics).__name__}; give a dict of name -> callable, e.g. "
                            "{'top5': top5}")
    names = {}
    for name, fn in metrics.items():
        check_name(name)
        stateful = Metric(name, fn).stateful
        if not isinstance(fn, str) and not callable(fn) and not stateful:
            raise SettingsError(f"metric {name!r} is a {type(fn).__name__}; give a callable (outputs, targets) -> "
                                "tensor, or an object with update() and compute()")
        names[name] = fn if isinstance(fn, str) else qualified_name(fn)
    return names, dict(metrics)


def _dtype(model: nn.Module) -> str:
    first = next(iter(model.parameters()), None)
    names = {torch.float64: "float64", torch.bfloat16: "bfloat16"}
    return names.get(first.dtype, "float32") if first is not None else "float32"


def _job(model: nn.Module, directions: Directions, split_names: list[str], x: Any, y: Any, loss_name: str,
         metric_names: dict[str, str], out: str, overwrite: bool, batch_size: int, memory_budget_mb: float,
         device: str, progress: str, name: str, settings: Mapping[str, Any] | None) -> Job:
    """The job these arguments make, validated by the job file's rules (settings are job-file keys)."""
    spec = directions.settings
    kind = str(spec.get("kind", "random"))
    recorded = {k: v for k, v in spec.items() if k in ("kind", "seed", "norm", "ignore", "include", "exclude",
                                                          "orthogonalize", "models", "file", "states",
                                                          "compare_line", "align")}
    if kind == "hessian":
        recorded.pop("norm", None)
    if kind in PATH_KINDS and kind != "pca":
        recorded.pop("ignore", None)
    table: dict[str, Any] = {
        "name": name,
        "model": {"factory": qualified_name(model), "dtype": _dtype(model)},
        "data": {"splits": split_names, "batch_size": batch_size, "memory_budget_mb": memory_budget_mb},
        "loss": {"name": loss_name, "metrics": metric_names},
        "directions": recorded,
        "grid": {"x": _axis("x", x), **({"y": _axis("y", y)} if y is not None else {})},
        "output": {"path": out, "overwrite": overwrite},
        "run": {"device": device, "progress": progress},
    }
    if settings:
        if not isinstance(settings, Mapping) or not all(isinstance(k, str) and "." in k for k in settings):
            raise SettingsError("settings: give job-file keys as 'section.key', e.g. {'run.points_per_pass': 4}")
        for key in settings:
            _check_setting(key)
        table = apply_overrides(table, [], dict(settings))
    return job_from_table(table, source="<python>", data_given=True)


_FROM_ARGUMENTS = {"data": "the data argument (and batch_size, memory_budget_mb)", "directions": "the directions",
                   "train": "training your model before the call", "connect": "ml.connect",
                   "grid.x": "x", "grid.y": "y", "output.path": "out", "loss.name": "loss", "loss.metrics": "metrics",
                   "model.factory": "the model argument", "model.kwargs": "the model argument",
                   "model.checkpoint": "loading the checkpoint into the model first",
                   "model.seed": "the model argument"}
"""Job keys a Python call gives through its arguments: a ``settings`` entry for them would be ignored."""
_ALLOWED_DATA = ("data.batch_size", "data.memory_budget_mb")


def _check_setting(key: str) -> None:
    """Refuse a ``settings`` key that the call's arguments decide, rather than record it and ignore it."""
    if key in _ALLOWED_DATA:
        return
    for prefix, instead in _FROM_ARGUMENTS.items():
        if key == prefix or key.startswith(prefix + "."):
            raise SettingsError(f"settings: {key} is given from Python by {instead}, not by settings; remove it")


def _bn_data(job: Job, data: Any, given: Any, batch_size: int) -> torch.Tensor | None:
    """The inputs that recompute BatchNorm statistics at every point (``model.bn = "recompute"``)."""
    if job.model.bn != "recompute":
        return None
    if given is None:
        if not (isinstance(data, Mapping) and "train" in data):
            raise SettingsError('model.bn = "recompute" re-estimates BatchNorm statistics from training data: '
                                "pass bn_data=..., or a 'train' split in data")
        given = data["train"]
    split = as_tensors(given, "bn_data", batch_size)
    return bn_inputs(split, job.model.bn_batches, job.data.batch_size, job.data.seed)


@contextmanager
def _abort_on_failure(ranks: Comm) -> Iterator[None]:
    """Under several ranks, end the whole MPI job on an error only some ranks have (the others would wait
    for them forever); an agreed error, which every rank raises alike, is raised as usual."""
    try:
        yield
    except BaseException as exc:
        if ranks.Get_size() > 1 and not getattr(exc, "agreed", False) and not isinstance(exc, SystemExit):
            print(f"error (rank {ranks.Get_rank()}): {exc.__class__.__name__}: {exc}; aborting all ranks",
                  file=sys.stderr, flush=True)
            traceback.print_exception(exc, file=sys.stderr)
            sys.stderr.flush()
            time.sleep(0.5)  # let the launcher forward the lines above before every rank is killed
            ranks.Abort(1)
        raise


def _check_dims(directions: Directions, job: Job) -> None:
    axes = directions.block_size
    if directions.coefficient_map == "axes" and axes != job.grid.dims:
        fix = "pass y=(min, max, num)" if axes == 2 else "remove y"
        raise GridError(f"the directions have {axes} axes but the grid {job.grid.dims}; {fix}, or build "
                        f"the directions with dims={job.grid.dims}")


def landscape(model: nn.Module, directions: Directions, data: Any, x: AxisLike = (-1.0, 1.0, 51),
              y: AxisLike | None = None, *, loss: Any = "cross_entropy", metrics: Mapping[str, Any] | None = None,
              out: str | os.PathLike[str] | None = None, overwrite: bool = False, comm: Comm | None = None,
              batch_size: int = 512, memory_budget_mb: float = 1024.0, device: str = "auto",
              progress: str = "auto", name: str = "", settings: Mapping[str, Any] | None = None,
              bn_data: Any = None) -> Surface | None:
    """Loss and accuracy of ``model`` at θ(a, b) = origin + a·δ + b·η over a grid; the surface back.

    Parameters:
        model: the model at θ* (for path directions: any model of the path's architecture; its buffers
            are used). Never changed: the run evaluates a copy.
        directions: from :mod:`mpiland.directions` (``random``, ``interpolation``, ``plane``, ``bilinear``,
            ``bezier``, ``polychain``, ``pca``, ``hessian``, ``from_file``).
        data: a ``DataLoader`` (read in dataset order through mpiland's own loader with persistent
            workers), a ``Dataset``, ``(inputs, targets)`` tensors, or a dict of named splits of any of
            those (``{"train": ..., "test": ...}``; one unnamed split is called ``data``). Splits that fit
            ``memory_budget_mb`` (MiB) stay on the device, others are streamed from their loader.
            Batches are ``(inputs, targets)`` or dicts with a ``labels`` entry (other entries: keyword inputs).
        x, y: axes ``(min, max, num)``; ``y`` None for a 1D curve. A bare ``num`` takes the range from
            the models of a path (with a margin, ``settings={"grid.margin": 0.25}``); ``("auto", num)``
            for random, file and Hessian directions: a range chosen by a pre-scan of the loss
            (``settings={"grid.auto_rise": 3.0, "grid.auto_max": 1.0}``). ``settings={"grid.refine": True}``
            evaluates adaptively (docs/jobfile.md).
        loss: ``cross_entropy``, ``mse``, ``nll``, or a callable ``(outputs, targets)`` returning
            per-sample losses (a scalar per batch is weighted by the batch's size).
        metrics: name -> callable ``(outputs, targets) -> per-sample tensor`` (datasets ``<split>_<name>``
            and ``<split>_<name>_stderr``), or -> an object with ``update``/``compute`` (``<split>_<name>``).
        out: the surface file (resumed when it belongs to the same landscape, refused when it belongs
            to another unless ``overwrite``); None keeps the results in memory only.
        comm: None for one process; an mpi4py communicator (e.g. ``MPI.COMM_WORLD`` in a script under
            ``mpiexec``/``srun``) to share the grid among its ranks. Every rank must call with the same
            arguments.
        batch_size: batch size of tensor and Dataset splits (a DataLoader keeps its own).
        device: ``auto`` (the rank's GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``.
        progress: ``auto`` (a bar, a widget in Jupyter), ``bar``, ``lines`` or ``none``.
        name: the landscape's name in plots and summaries.
        settings: any other job-file key by its name, e.g. ``{"run.points_per_pass": 4,
            "hessian.enabled": True, "model.mode": "train"}`` (docs/jobfile.md); keys the arguments
            give (data, directions, grid axes, output, loss, model) are refused rather than ignored.
        bn_data: training data whose inputs re-estimate BatchNorm statistics at every point with
            ``settings={"model.bn": "recompute"}`` (tensors, a Dataset or a loader; default: the
            ``train`` split of ``data``); ``model.bn_batches`` batches of ``batch_size`` are drawn.

    Returns:
        The :class:`~mpiland.result.Surface` on rank 0 (on an interrupted run, the points done so far);
        None on the other ranks of ``comm``.

    Raises:
        A :class:`~mpiland.errors.MpilandError` subclass with one sentence naming the problem and the
        fix: ModelError (directions made for another model), DataError (empty loader, wrong batch
        structure, data that does not fit the model), MetricError (a loss or metric of the wrong shape),
        SettingsError/JobFileError/GridError (bad arguments), SurfaceFileError (``out`` belongs to
        another landscape). Under ``comm``, a set-up error is raised by every rank alike; an error only
        some ranks meet while evaluating (a model failing at one point) aborts the MPI job, as
        ``mpiland run`` does, since the other ranks would otherwise wait for them forever.
    """
    ranks = world(comm)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model is a {type(model).__name__}; give the torch nn.Module at θ* (load a state_dict "
                         "or checkpoint into it first)")
    if not isinstance(directions, Directions):
        raise SettingsError(f"directions is a {type(directions).__name__}; build them with mpiland.directions, "
                            "e.g. ml.directions.random(model)")
    loss_name, loss_fn = _loss(loss)
    metric_names, metric_objects = _metrics(metrics)
    temporary = out is None
    scratch = ranks.bcast(tempfile.mkdtemp(prefix="mpiland-") if temporary and ranks.Get_rank() == 0 else None,
                          root=0)
    path = str(Path(scratch) / "surface.h5") if temporary else os.fspath(out)  # type: ignore[arg-type]
    try:
        splits = agree(ranks, lambda: as_splits(data, batch_size))
        job = agree(ranks, lambda: _job(model, directions, [s.name for s in splits], x, y, loss_name,
                                        metric_names, path, overwrite, batch_size, memory_budget_mb, device,
                                        progress, name, {**({"run.writer": "gather"} if temporary else {}),
                                                         **(settings or {})}))
        agree(ranks, lambda: _check_dims(directions, job))

        def build(own: Comm, job: Job, placement: Placement) -> Problem:
            def make() -> Problem:
                if ParamLayout.from_model(model, directions.layout.states) != directions.layout:
                    raise ModelError("the directions were made for another model (parameter names or shapes "
                                     "differ); build them from this model")
                bn = _bn_data(job, data, bn_data, batch_size)
                return Problem(copy.deepcopy(model), directions, list(splits), loss_fn=loss_fn,
                               metrics=metric_objects, bn_data=bn,
                               digests={} if bn is None else {"bn_data": tensors_digest(bn)})
            return agree(own, make)

        with _abort_on_failure(ranks):
            summary: RunSummary = run_landscape(job, build, ranks)
        if ranks.Get_rank() != 0:
            return None
        surface = open_surface(summary.path)
        return replace(surface, path=Path("<memory>")) if temporary else surface
    finally:
        if temporary and ranks.Get_rank() == 0 and scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _state(obj: Any, role: str) -> dict[str, torch.Tensor]:
    """A state dict from a module, a state dict or a checkpoint path (never the caller's tensors)."""
    if isinstance(obj, nn.Module):
        return {k: v.detach().clone() for k, v in obj.state_dict().items()}
    if isinstance(obj, Mapping):
        return {str(k): torch.as_tensor(v).detach().clone() for k, v in obj.items()}
    if isinstance(obj, (str, os.PathLike)):
        return read_state_dict(os.fspath(obj), f"connect {role} {os.fspath(obj)!r}")
    raise SettingsError(f"connect: the {role} is a {type(obj).__name__}; give an nn.Module, a state_dict or a "
                        "checkpoint path")


def connect(model: nn.Module, a: Any, b: Any, data: Any, *, curve: str = "bezier", bends: int = 1,
            epochs: int = 10, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4,
            batch_size: int = 128, seed: int = 0, loss: Any = "cross_entropy",
            checkpoint_dir: str | os.PathLike[str] | None = None, comm: Comm | None = None,
            progress: str = "auto") -> CurveResult:
    """Find a low-loss curve between the modes ``a`` and ``b`` (Garipov et al. 2018): train its bends.

    Parameters:
        model: an ``nn.Module`` of the ends' architecture (a template: never changed).
        a, b: the end models: modules, state dicts or checkpoint paths; kept fixed.
        data: the training data: ``(inputs, targets)`` tensors, a ``Dataset`` or a ``DataLoader``
            (joined into tensors: the steps draw batches at random).
        curve: ``bezier`` or ``polychain``; bends: control points between the ends.
        epochs, lr, momentum, weight_decay, batch_size, seed: SGD on the bends with Garipov et al.'s
            learning-rate schedule; weight decay on the bends only; one t ~ U(0, 1) per step.
        loss: a built-in name or a callable ``(outputs, targets)`` (per-sample losses or a batch mean).
        checkpoint_dir: where the bends (``bend_1.pt`` …) and the training state go, so a killed run
            resumes; None keeps them in memory only.
        comm: an mpi4py communicator to share each step's batch among ranks (gradients summed).
        progress: ``auto``, ``bar``, ``lines`` or ``none``.

    Returns:
        A :class:`~mpiland.curves.CurveResult`: ``bends`` (state dicts, for
        ``ml.directions.bezier(a, *result.bends, b)``), ``paths`` and per-epoch ``losses``.

    Raises:
        SettingsError for bad settings, CheckpointError for ends that do not fit the model or a
        checkpoint folder holding another curve's training, DataError for unusable data.
    """
    ranks = world(comm)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model is a {type(model).__name__}; give an nn.Module of the ends' architecture")
    spec = ConnectSpec(curve=curve, bends=bends, epochs=epochs, lr=lr, momentum=momentum,
                       weight_decay=weight_decay, batch_size=batch_size, seed=seed)
    loss_name, loss_fn = loss_function(loss)
    ends = agree(ranks, lambda: (_state(a, "first end"), _state(b, "second end"),
                                 as_tensors(data, "train", batch_size)))
    with _abort_on_failure(ranks):
        return train_curve(model, ends[0], ends[1], ends[2], loss_fn, spec, checkpoint_dir, loss_name=loss_name,
                           comm=ranks, progress=progress)
