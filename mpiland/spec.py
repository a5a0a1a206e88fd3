"""The plain settings of one landscape job: what the engine, the directions and the file use.

These frozen dataclasses are the one source of defaults: a job file (parsed by
:mod:`mpiland.jobfile`) and a Python caller get the same values for the keys they
leave out. ``"auto"`` settings are resolved here, once, by :func:`resolve_directions`
(normalisation and ignore rules depend on the kind of directions), so a
:class:`DirectionsSpec` built in Python means what the same ``[directions]``
section means in TOML. Nothing here imports torch or the TOML parser.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from .errors import GridError

NORMS = ("auto", "filter", "layer", "weight", "model", "none")
IGNORES = ("auto", "biasbn", "none")
DIRECTION_KINDS = ("random", "file", "hessian", "interpolation", "plane", "bilinear", "bezier", "polychain", "pca")
# kind -> (number of models: exact, or a minimum when negative; grid dims it needs: 1, 2 or 0 for either)
PATH_KINDS = {"interpolation": (2, 1), "plane": (3, 2), "bilinear": (4, 2), "bezier": (-3, 1),
              "polychain": (-3, 1), "pca": (-1, 0)}
BN_MODES = ("eval", "recompute")
LOSSES = ("cross_entropy", "mse", "nll", "causal_lm")
SPLITS = ("train", "test")
WRITERS = ("auto", "gather", "mpio")
PROGRESS = ("auto", "bar", "lines", "none")
DTYPES = ("float32", "float64", "bfloat16")
MODEL_MODES = ("eval", "train")
AUTOCASTS = ("none", "bf16", "fp16")
SPECTRUM = ("none", "origin", "models")
CURVES = ("bezier", "polychain")
ALIGN_KINDS = ("interpolation", "plane", "bilinear", "bezier", "polychain")
SCAN_KINDS = ("random", "file", "hessian")
"""Direction kinds whose automatic grid range comes from a pre-scan of the loss (the others: from their models)."""
AUTO_NUM = 21
"""Points of an axis given as plain ``"auto"``."""


@dataclass(frozen=True)
class ModelSpec:
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    seed: int = 0
    dtype: str = "float32"
    mode: str = "eval"
    bn: str = "eval"
    bn_batches: int = 10


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 8
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0
    checkpoint_dir: str | None = None


@dataclass(frozen=True)
class DataSpec:
    dataset: str | None = "digits"
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    splits: tuple[str, ...] = ("test",)
    subset: int = 0
    seed: int = 0
    batch_size: int = 512
    memory_budget_mb: float = 1024.0
    stream: str = "auto"
    """"auto": a factory's DataLoader or IterableDataset is streamed; "true": any Dataset too; "false": none."""


@dataclass(frozen=True)
class LossSpec:
    name: str = "cross_entropy"
    accuracy: str = "auto"
    metrics: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DirectionsSpec:
    kind: str = "random"
    seed: int = 0
    norm: str = "auto"
    ignore: str = "auto"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    orthogonalize: bool = False
    models: tuple[str, ...] = ()
    file: tuple[str, ...] = ()
    states: bool = False
    compare_line: bool = True
    align: bool = False

    def relevant(self) -> dict[str, Any]:
        """The settings that determine this kind's directions (what the fingerprint and the file record)."""
        resolved = resolve_directions(self)
        keys = ["kind", "norm", "ignore", "include", "exclude"]
        if self.kind == "random":
            keys += ["seed", "orthogonalize"]
        elif self.kind == "file":
            keys += ["file", "orthogonalize"]
        elif self.kind == "hessian":
            pass
        else:
            keys += ["models"]
        if self.kind in ("bezier", "polychain"):
            keys.append("compare_line")
        if self.align:
            keys.append("align")
        if self.states:
            keys.append("states")
        d = asdict(resolved)
        return {k: list(d[k]) if isinstance(d[k], tuple) else d[k] for k in keys}


@dataclass(frozen=True)
class HessianSpec:
    """Curvature settings: per-point extreme eigenvalues (``enabled``), Hessian directions, trace at the origin."""

    enabled: bool = False
    splits: tuple[str, ...] = ()
    subset: int = 0
    tol: float = 1e-3
    max_iter: int = 100
    dtype: str = "float32"
    seed: int = 0
    trace_samples: int = 100
    warm_start: bool = False
    chain: int = 16
    spectrum: str = "none"
    spectrum_probes: int = 8
    spectrum_steps: int = 60
    spectrum_top: int = 5


@dataclass(frozen=True)
class ConnectSpec:
    """Curve finding between two modes (Garipov et al. 2018): the bends of a curve trained between fixed ends."""

    ends: tuple[str, ...] = ()
    curve: str = "bezier"
    bends: int = 1
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    checkpoint_dir: str | None = None


@dataclass(frozen=True)
class Axis:
    """``num`` evenly spaced values from min to max; min/max None: an automatic range (:attr:`GridSpec.auto`)."""

    min: float | None
    max: float | None
    num: int

    @property
    def auto(self) -> bool:
        return self.min is None

    def values(self) -> list[float]:
        """The axis coordinates: ``num`` evenly spaced values from min to max."""
        if self.min is None or self.max is None:
            raise GridError("internal: the axis range has not been resolved from the models' positions")
        if self.num == 1:
            return [self.min]
        step = (self.max - self.min) / (self.num - 1)
        return [self.min + i * step for i in range(self.num - 1)] + [self.max]


@dataclass(frozen=True)
class GridSpec:
    """The grid: its axes, how an automatic range is found, and adaptive refinement (docs/jobfile.md)."""

    x: Axis
    y: Axis | None = None
    margin: float = 0.25
    auto_rise: float = 3.0
    auto_max: float = 1.0
    refine: bool = False
    refine_tol: float = 0.1
    refine_levels: int = 0

    @property
    def dims(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.x.num,) if self.y is None else (self.x.num, self.y.num)

    @property
    def auto(self) -> bool:
        """Whether an axis has an automatic range (a bare num, or "auto"): from the models' positions for
        path kinds, from a pre-scan of the loss for random, file and Hessian directions (:mod:`mpiland.autorange`)."""
        return self.x.auto or (self.y is not None and self.y.auto)


@dataclass(frozen=True)
class OutputSpec:
    path: str = "surface.h5"
    overwrite: bool = False


@dataclass(frozen=True)
class RunSpec:
    device: str = "auto"
    chunk_size: int = 0
    writer: str = "auto"
    threads: int = 0
    progress: str = "auto"
    points_per_pass: int = 0
    group_size: int = 1
    batch_memory_mb: float = 512.0
    autocast: str = "none"
    channels_last: bool = False
    compile: bool = False


@dataclass(frozen=True)
class Job:
    """A validated job; ``text`` is the job file as written, before overrides."""

    model: ModelSpec
    data: DataSpec
    loss: LossSpec
    directions: DirectionsSpec
    grid: GridSpec
    output: OutputSpec
    run: RunSpec
    train: TrainSpec | None = None
    hessian: HessianSpec = field(default_factory=HessianSpec)
    connect: ConnectSpec | None = None
    name: str = ""
    text: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The resolved job as plain data (what the surface file stores as ``job_json``)."""
        d = asdict(self)
        d.pop("text")
        d.pop("source")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def default_norm(kind: str) -> str:
    """The normalisation ``norm = "auto"`` means: filter for random directions, none otherwise."""
    return "filter" if kind == "random" else "none"


def default_ignore(kind: str) -> str:
    """The ignore rule ``ignore = "auto"`` means: biasbn for random directions, none otherwise."""
    return "biasbn" if kind == "random" else "none"


def resolve_directions(spec: DirectionsSpec) -> DirectionsSpec:
    """``spec`` with its ``auto`` settings replaced by what they mean for its kind."""
    norm = default_norm(spec.kind) if spec.norm == "auto" else spec.norm
    ignore = default_ignore(spec.kind) if spec.ignore == "auto" else spec.ignore
    if (norm, ignore) == (spec.norm, spec.ignore):
        return spec
    return replace(spec, norm=norm, ignore=ignore)


def defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of a spec dataclass (the job file's defaults come from here)."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
        elif f.default is not MISSING:
            out[f.name] = f.default
    return out
