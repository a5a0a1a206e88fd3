"""Which file belongs to which job: content digests, and the resume/create/refuse decision.

A surface file is resumed only when everything that determines its values is
the same, judged by content where there is content (docs/schema.md, "Identity"):
the settings that still determine values, the source files of user factories,
the checkpoint files, the evaluated data tensors per split, the origin θ* (the
model's full state) and the direction vectors actually used. Each component's
SHA-256 is a root attribute of the file, so a refusal names what differs. Keys
that cannot change values (placement, output, memory budgets, ``data.batch_size``
for the built-in per-sample losses, ``model.seed`` when a checkpoint is given)
do not count, so they never make a valid resume be refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import h5py
import numpy as np

from ..version import SCHEMA_VERSION
from ..digest import file_digest, tensors_digest
from ..errors import SurfaceFileError
from ..grid import Grid
from ..spec import LOSSES, Job
from . import lock, storage
from .names import (ATTR_CODE, ATTR_FINGERPRINT, ATTR_SCHEMA, ATTR_SETTINGS, COMPONENTS, DIGEST_PREFIX,
                    DONE, SPECTRUM, data_attr)
from .netcdf import upgrade
from .writer import create, read_done, read_points_per_pass

if TYPE_CHECKING:
    from ..directions.base import Directions

log = logging.getLogger("mpiland")

WHAT = {"settings": "other settings", "code": "other code", "checkpoints": "other checkpoints",
        "data": "other data", "origin": "another origin (the model's state θ*)", "directions": "other directions"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def source_file(spec: str) -> Path | None:
    """The source file a ``path/file.py:callable`` or ``package.module:callable`` names (None if it has none)."""
    target = spec.rpartition(":")[0]
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        return path if path.is_file() else None
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    return Path(origin) if origin and origin not in ("built-in", "frozen") and Path(origin).is_file() else None


def factories(job: Job) -> dict[str, str]:
    """Job key -> ``module:callable`` of each user code the job runs (model, data and loss factories)."""
    out = {"model.factory": job.model.factory}
    if job.data.factory:
        out["data.factory"] = job.data.factory
    if job.loss.name not in LOSSES:
        out["loss.name"] = job.loss.name
    out.update({f"loss.metrics.{name}": target for name, target in job.loss.metrics.items()})
    return out


def settings_that_count(job: Job) -> dict[str, Any]:
    """The job keys that still determine values once content is digested (flat ``section.key`` names)."""
    d = job.to_dict()
    m, data = d["model"], d["data"]
    out: dict[str, Any] = {f"model.{k}": m[k] for k in ("factory", "kwargs", "dtype", "mode", "bn")}
    if m["bn"] == "recompute":  # the batches that re-estimate BatchNorm: drawn from the train split
        out["model.bn_batches"] = m["bn_batches"]
        out.update({f"data.{k}": data[k] for k in ("dataset", "factory", "kwargs", "seed", "batch_size")})
    if job.loss.name not in LOSSES or job.loss.metrics or m["mode"] == "train":
        out["data.batch_size"] = data["batch_size"]  # a mean per batch, or batch statistics
    out["data.splits"] = list(data["splits"])
    # loss.metrics only when set, so files made before the key existed still resume
    out.update({f"loss.{k}": v for k, v in d["loss"].items() if k != "metrics" or v})
    out["directions.kind"] = job.directions.kind
    if job.directions.kind in ("bezier", "polychain"):
        out["directions.compare_line"] = job.directions.compare_line
    out["grid.x"], out["grid.y"] = d["grid"]["x"], d["grid"]["y"]
    if job.grid.auto:
        out["grid.margin"] = d["grid"]["margin"]
    if job.hessian.enabled or job.directions.kind == "hessian" or job.hessian.spectrum != "none":
        # the spectrum keys only with a spectrum and the chain only with a warm start, so files made before
        # they existed still resume (a warm-started file made before chains is refused: its starts were θ*'s)
        out.update({f"hessian.{k}": v for k, v in d["hessian"].items()
                    if (not k.startswith("spectrum") or job.hessian.spectrum != "none")
                    and (k != "chain" or job.hessian.warm_start)})
    out["run.autocast"] = job.run.autocast
    return json.loads(json.dumps(out, sort_keys=True, default=list))


@dataclass(frozen=True)
class Identity:
    """What makes a surface file belong to a job: one digest per component, and the settings that count."""

    settings: dict[str, Any]
    digests: dict[str, str]
    data: dict[str, str] = field(default_factory=dict)
    code: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the component digests (the file's ``fingerprint`` attribute)."""
        return _sha(json.dumps([[k, self.digests[k]] for k in COMPONENTS]))

    def attrs(self) -> dict[str, str]:
        """The root attributes that record this identity (docs/schema.md)."""
        out = {ATTR_FINGERPRINT: self.fingerprint, ATTR_SETTINGS: json.dumps(self.settings, sort_keys=True),
               ATTR_CODE: json.dumps(self.code, sort_keys=True)}
        out.update({DIGEST_PREFIX + k: self.digests[k] for k in COMPONENTS})
        out.update({data_attr(s): v for s, v in self.data.items()})
        return out

    def for_job(self, job: Job) -> "Identity":
        """This identity for ``job``, which differs from the job it was made for only in settings (e.g. a grid
        range resolved by a pre-scan): the settings component recomputed as :func:`job_identity` computes it."""
        settings = settings_that_count(job)
        return replace(self, settings=settings,
                       digests={**self.digests, "settings": _sha(json.dumps(settings, sort_keys=True))})

    def with_data(self, digests: dict[str, str]) -> "Identity":
        """This identity with the data digests of more splits (by name)."""
        if not digests:
            return self
        data = {**self.data, **digests}
        return replace(self, data=data, digests={**self.digests, "data": _sha(json.dumps(data, sort_keys=True))})

    def differs_from(self, stored: dict[str, Any]) -> str | None:
        """What a file with root attributes ``stored`` was made with that this job is not (None: the same)."""
        missing = [k for k in COMPONENTS if DIGEST_PREFIX + k not in stored]
        if missing:
            return "a file without content digests (an older mpiland)"
        for k in COMPONENTS:
            if str(stored[DIGEST_PREFIX + k]) == self.digests[k]:
                continue
            if k == "settings":
                theirs = json.loads(str(stored.get(ATTR_SETTINGS, "{}")))
                keys = sorted(n for n in set(theirs) | set(self.settings) if theirs.get(n) != self.settings.get(n))
                return f"{WHAT[k]} ({', '.join(keys) or 'settings'} differ)"
            if k == "data":
                splits = [s for s, v in self.data.items() if str(stored.get(data_attr(s), "")) != v]
                return f"{WHAT[k]} (data digest differs{' for ' + ', '.join(splits) if splits else ''})"
            if k == "code":
                theirs = json.loads(str(stored.get(ATTR_CODE, "{}")))
                keys = sorted(n for n in set(theirs) | set(self.code) if theirs.get(n) != self.code.get(n))
                return f"{WHAT[k]} (source of {', '.join(keys) or 'a factory'} differs)"
            return f"{WHAT[k]} ({k} digest differs)"
        return None


def job_identity(job: Job, model: Any, directions: "Directions", splits: list[Any]) -> Identity:
    """The identity of a job from what it evaluates: ``model`` at θ*, its directions and its data.

    Splits with tensors (``inputs``, ``targets``) are digested here; a split read
    from a loader is digested by the engine as it reads it, and joins with
    :meth:`Identity.with_data`.
    """
    code = {}
    for key, spec in factories(job).items():
        src = source_file(spec)
        code[key] = file_digest(src) if src is not None else "no source file"
    checkpoints = [file_digest(job.model.checkpoint)] if job.model.checkpoint else []
    checkpoints += [file_digest(p) for p in directions.sources]
    data = {s.name: tensors_digest(s.inputs, s.targets) for s in splits if hasattr(s, "inputs")}
    state = model.state_dict()
    origin = _sha(json.dumps([[name, tensors_digest(state[name])] for name in state])
                  + tensors_digest(directions.origin))
    layout = directions.layout
    shape_text = json.dumps([directions.coefficient_map, list(directions.variants), list(layout.names),
                             [list(s) for s in layout.shapes], layout.n_params])
    settings = settings_that_count(job)
    digests = {"settings": _sha(json.dumps(settings, sort_keys=True)), "code": _sha(json.dumps(code, sort_keys=True)),
               "checkpoints": _sha(json.dumps(checkpoints)), "data": _sha(json.dumps(data, sort_keys=True)),
               "origin": origin, "directions": _sha(shape_text + tensors_digest(directions.vectors))}
    return Identity(settings, digests, data, code)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def decide(path: Path, ident: Identity, overwrite: bool) -> bool:
    """True: resume the file at ``path``; False: create it (anew). Raises SurfaceFileError to refuse.

    A file of the same job is always resumed, also with ``overwrite`` (a requeued
    job must never start from zero); ``overwrite`` replaces a file of another job
    and a file that cannot be read. Call while holding the output lock, so an
    unreadable file is known not to be one another run is writing.
    """
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r", locking=False) as f:
            stored = dict(f.attrs)
            has_done = DONE in f
    except OSError as exc:
        if overwrite:
            log.warning("replacing %s, which cannot be read as HDF5 (%s)", path, _one_line(exc))
            return False
        raise SurfaceFileError(f"{path} exists but cannot be read as HDF5 ({_one_line(exc)}); it is not in use by "
                               "another run: move it away or pass --overwrite to replace it") from None
    if ATTR_SCHEMA not in stored or not has_done:
        if overwrite:
            return False
        raise SurfaceFileError(f"{path} exists and is not an mpiland surface file; choose another --output or "
                               "pass --overwrite")
    version = int(stored[ATTR_SCHEMA])
    if version > SCHEMA_VERSION:
        raise SurfaceFileError(f"{path} has schema version {version}, newer than this mpiland's {SCHEMA_VERSION}; "
                               "upgrade mpiland")
    what = ident.differs_from(stored)
    if what is None:
        return True
    if overwrite:
        log.info("replacing %s: it was made with %s", path, what)
        return False
    raise SurfaceFileError(f"{path} was made by a different job: {what}; pass --overwrite to replace it or choose "
                           "another --output")


def open_surface(path: Path, job: Job, ident: Identity, grid: Grid, directions: "Directions", metrics: list[str],
                 origin_attrs: Callable[[], dict[str, Any]], points_per_pass: int) -> tuple[np.ndarray, int]:
    """Rank 0: take the output lock, then resume or create the file; return its done mask and points per pass.

    The lock stays held (released by the writer's ``close`` or :func:`lock.release`).
    A resumed file keeps the points per pass it was started with unless the job
    sets one, so that its values do not depend on where each run happened.
    """
    lock.check_output_path(path)
    lock.hold(path)
    try:
        lock.remove_stale_parts(path)
        if decide(path, ident, job.output.overwrite):
            if upgrade(path):
                log.info("upgraded %s to surface schema %d (netCDF-4 dimensions); its values are unchanged",
                         path, SCHEMA_VERSION)
            done = read_done(path)
            log.info("resuming %s: %d of %d points already done", path, int(done.sum()), done.size)
            stored = read_points_per_pass(path)
            if job.run.points_per_pass == 0 and stored is not None:
                points_per_pass = stored
            return done, points_per_pass
        storage.check_room(path, grid.shape, len(metrics), int(directions.vectors.numel()))
        labels = (directions.labels[0], directions.labels[1] if grid.dims == 2 else "")
        origin = dict(origin_attrs())
        spectrum = origin.pop(SPECTRUM, None)  # the spectra become the spectrum/ group, not attributes
        create(path, grid=grid, metrics=metrics, splits=list(job.data.splits), directions=directions,
               fingerprint=ident.fingerprint, job_text=job.text, job_json=job.to_json(), labels=labels,
               points_per_pass=points_per_pass, bn=(job.model.bn, job.model.bn_batches),
               attrs={**origin, **ident.attrs()}, spectrum=spectrum)
        return np.zeros(grid.shape, dtype=np.uint8), points_per_pass
    except BaseException:
        lock.release(path)
        raise

