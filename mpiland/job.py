"""Job files: a TOML description of one landscape job, validated before any work starts.

A job file has the sections ``[model]``, ``[train]`` (optional), ``[data]``,
``[loss]``, ``[directions]``, ``[grid]``, ``[output]`` and ``[run]``; see
``docs/jobfile.md`` for every key. Relative paths are taken from the current
working directory. Every error names the key path, e.g.
``directions.norm: expected one of filter|layer|weight|model|none, got "filtr"``.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import GridError, JobFileError

NORMS = ("filter", "layer", "weight", "model", "none")
IGNORES = ("biasbn", "none")
DIRECTION_KINDS = ("random",)
LOSSES = ("cross_entropy", "mse", "nll")
SPLITS = ("train", "test")
WRITERS = ("auto", "gather", "mpio")
PROGRESS = ("auto", "bar", "lines", "none")
DTYPES = ("float32", "float64")
MODEL_MODES = ("eval", "train")
AUTOCASTS = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class ModelSpec:
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    seed: int = 0
    dtype: str = "float32"
    mode: str = "eval"


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


@dataclass(frozen=True)
class LossSpec:
    name: str = "cross_entropy"
    accuracy: str = "auto"


@dataclass(frozen=True)
class DirectionsSpec:
    kind: str = "random"
    seed: int = 0
    norm: str = "filter"
    ignore: str = "biasbn"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    orthogonalize: bool = False


@dataclass(frozen=True)
class Axis:
    min: float
    max: float
    num: int

    def values(self) -> list[float]:
        """The axis coordinates: ``num`` evenly spaced values from min to max."""
        if self.num == 1:
            return [self.min]
        step = (self.max - self.min) / (self.num - 1)
        return [self.min + i * step for i in range(self.num - 1)] + [self.max]


@dataclass(frozen=True)
class GridSpec:
    x: Axis
    y: Axis | None = None

    @property
    def dims(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.x.num,) if self.y is None else (self.x.num, self.y.num)


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


def _fail(key: str, msg: str) -> JobFileError:
    return JobFileError(f"{key}: {msg}")


def _type_name(v: Any) -> str:
    return {str: "a string", bool: "true/false", int: "an integer", float: "a number",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _fail(key, f"expected a string, got {_type_name(v)} {v!r}")
    return v


def _opt_str(key: str, v: Any) -> str | None:
    if v is None or v == "":
        return None
    return _str(key, v)


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(key, f"expected true or false, got {v!r}")
    return v


def _int(key: str, v: Any, lo: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(key, f"expected an integer, got {_type_name(v)} {v!r}")
    if lo is not None and v < lo:
        raise _fail(key, f"expected an integer >= {lo}, got {v}")
    return v


def _num(key: str, v: Any, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _fail(key, f"expected a number, got {_type_name(v)} {v!r}")
    if not math.isfinite(v):
        raise _fail(key, f"expected a finite number, got {v}")
    if positive and v <= 0:
        raise _fail(key, f"expected a number > 0, got {v}")
    return float(v)


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, v: Any) -> str:
        if v not in choices:
            raise _fail(key, f"expected one of {'|'.join(choices)}, got {json.dumps(v)}")
        return v
    return check


def _table(key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(key, f"expected a table (e.g. {{ a = 1 }}), got {_type_name(v)} {v!r}")
    return v


def _str_list(key: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _fail(key, f"expected a list of strings, got {v!r}")
    return tuple(v)


def _regex_list(key: str, v: Any) -> tuple[str, ...]:
    import re
    pats = _str_list(key, v)
    for p in pats:
        try:
            re.compile(p)
        except re.error as exc:
            raise _fail(key, f"invalid regular expression {p!r}: {exc}") from None
    return pats


def _splits(key: str, v: Any) -> tuple[str, ...]:
    splits = _str_list(key, v)
    if not splits:
        raise _fail(key, "expected at least one of train|test")
    for s in splits:
        _choice(SPLITS)(key, s)
    if len(set(splits)) != len(splits):
        raise _fail(key, f"lists a split twice: {list(splits)}")
    return splits


def _factory(key: str, v: Any) -> str:
    s = _str(key, v)
    mod, sep, attr = s.rpartition(":")
    if not sep or not mod or not attr:
        raise _fail(key, f'expected "package.module:callable" or "path/to/file.py:callable", got {json.dumps(s)}')
    return s


def _loss_name(key: str, v: Any) -> str:
    s = _str(key, v)
    if s in LOSSES or ":" in s:
        return s
    raise _fail(key, f'expected one of {"|".join(LOSSES)} or "package.module:callable", got {json.dumps(s)}')


def _accuracy(key: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return _choice(("auto", "true", "false"))(key, v)


def _axis(key: str, v: Any) -> Axis:
    if not isinstance(v, list) or len(v) != 3:
        raise GridError(f"{key}: expected [min, max, num], e.g. [-1.0, 1.0, 21], got {v!r}")
    lo, hi, num = v
    for part, val in (("min", lo), ("max", hi)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
            raise GridError(f"{key}: {part} must be a finite number, got {val!r}")
    if isinstance(num, bool) or not isinstance(num, int):
        raise GridError(f"{key}: num must be an integer, got {num!r}")
    if num < 1:
        raise GridError(f"{key}: num must be at least 1, got {num}")
    if lo > hi:
        raise GridError(f"{key}: min ({lo}) is greater than max ({hi}); swap them")
    if num > 1 and lo == hi:
        raise GridError(f"{key}: min equals max ({lo}) but num is {num}; widen the range or set num = 1")
    return Axis(float(lo), float(hi), num)


def _opt_axis(key: str, v: Any) -> Axis | None:
    return None if v is None else _axis(key, v)


# section -> key -> (checker, default)
_SCHEMA: dict[str, dict[str, tuple[Callable[[str, Any], Any], Any]]] = {
    "model": {
        "factory": (_factory, None),
        "kwargs": (_table, {}),
        "checkpoint": (_opt_str, None),
        "seed": (_int, 0),
        "dtype": (_choice(DTYPES), "float32"),
        "mode": (_choice(MODEL_MODES), "eval"),
    },
    "train": {
        "epochs": (lambda k, v: _int(k, v, 1), 8),
        "lr": (lambda k, v: _num(k, v, positive=True), 0.05),
        "momentum": (_num, 0.9),
        "weight_decay": (_num, 0.0),
        "batch_size": (lambda k, v: _int(k, v, 1), 64),
        "seed": (_int, 0),
        "checkpoint_dir": (_opt_str, None),
    },
    "data": {
        "dataset": (_opt_str, "digits"),
        "factory": (lambda k, v: None if v in (None, "") else _factory(k, v), None),
        "kwargs": (_table, {}),
        "splits": (_splits, ("test",)),
        "subset": (lambda k, v: _int(k, v, 0), 0),
        "seed": (_int, 0),
        "batch_size": (lambda k, v: _int(k, v, 1), 512),
        "memory_budget_mb": (lambda k, v: _num(k, v, positive=True), 1024.0),
    },
    "loss": {
        "name": (_loss_name, "cross_entropy"),
        "accuracy": (_accuracy, "auto"),
    },
    "directions": {
        "kind": (_choice(DIRECTION_KINDS), "random"),
        "seed": (_int, 0),
        "norm": (_choice(NORMS), "filter"),
        "ignore": (_choice(IGNORES), "biasbn"),
        "include": (_regex_list, ()),
        "exclude": (_regex_list, ()),
        "orthogonalize": (_bool, False),
    },
    "grid": {
        "x": (_axis, None),
        "y": (_opt_axis, None),
    },
    "output": {
        "path": (_str, "surface.h5"),
        "overwrite": (_bool, False),
    },
    "run": {
        "device": (lambda k, v: _device(k, v), "auto"),
        "chunk_size": (lambda k, v: _int(k, v, 0), 0),
        "writer": (_choice(WRITERS), "auto"),
        "threads": (lambda k, v: _int(k, v, 0), 0),
        "progress": (_choice(PROGRESS), "auto"),
        "points_per_pass": (lambda k, v: _int(k, v, 0), 0),
        "batch_memory_mb": (lambda k, v: _num(k, v, positive=True), 512.0),
        "autocast": (_choice(AUTOCASTS), "none"),
        "channels_last": (_bool, False),
        "compile": (_bool, False),
    },
}
_REQUIRED = {"model": ("factory",), "grid": ("x",)}
_TOP = {"name"}


def _device(key: str, v: Any) -> str:
    s = _str(key, v)
    if s in ("auto", "cpu", "cuda") or (s.startswith("cuda:") and s[5:].isdigit()):
        return s
    raise _fail(key, f'expected auto|cpu|cuda|cuda:N, got {json.dumps(s)}')


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise _fail(name, f"expected a table [{name}], got {_type_name(table)}")
    schema = _SCHEMA[name]
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise _fail(f"{name}.{unknown[0]}", f"unknown key; known keys of [{name}]: {', '.join(schema)}")
    out: dict[str, Any] = {}
    for key, (check, default) in schema.items():
        path = f"{name}.{key}"
        if key in table:
            out[key] = check(path, table[key])
        elif key in _REQUIRED.get(name, ()):
            raise _fail(path, "missing required key")
        else:
            out[key] = copy.deepcopy(default)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split a ``--set key.sub=value`` item; the value is read as TOML, else taken as a string."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise JobFileError(f"--set {item!r}: expected key.sub=value, e.g. --set grid.x=[-1,1,11]")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a copy of the raw job table with ``--set`` items and already-typed ``values`` applied."""
    raw = copy.deepcopy(raw)
    pairs = [(parse_override(item), item) for item in overrides]
    pairs += [((key.split("."), value), f"{key}={value}") for key, value in (values or {}).items()]
    for (path, value), item in pairs:
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise JobFileError(f"--set {item!r}: {part} is not a table")
            node = child
        node[path[-1]] = value
    return raw


def parse_job(text: str, overrides: list[str] | None = None, source: str = "<job>",
              values: dict[str, Any] | None = None) -> Job:
    """Parse and validate a job file's text; raise JobFileError/GridError naming the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(f"{source}: not valid TOML ({exc}); fix the syntax at that line") from None
    raw = apply_overrides(raw, overrides or [], values)
    unknown = sorted(set(raw) - set(_SCHEMA) - _TOP)
    if unknown:
        raise _fail(unknown[0], f"unknown section or key; known: {', '.join(sorted(set(_SCHEMA) | _TOP))}")
    for required in ("model", "grid"):
        if required not in raw:
            raise _fail(required, f"missing required section [{required}]")
    name = raw.get("name", Path(source).stem if source != "<job>" else "")
    name = _str("name", name)
    sections = {s: _section(raw, s) for s in _SCHEMA if s != "train" or "train" in raw}
    data = sections["data"]
    if data["factory"] is not None:
        data["dataset"] = None
    elif data["dataset"] not in ("digits",):
        raise _fail("data.dataset", f'expected "digits" (or set data.factory), got {json.dumps(data["dataset"])}')
    directions = sections["directions"]
    grid = sections["grid"]
    if directions["orthogonalize"] and grid["y"] is None:
        raise _fail("directions.orthogonalize", "needs a 2D grid (grid.y); remove it or add grid.y")
    return Job(
        model=ModelSpec(**sections["model"]),
        train=TrainSpec(**sections["train"]) if "train" in sections else None,
        data=DataSpec(**data),
        loss=LossSpec(**sections["loss"]),
        directions=DirectionsSpec(**directions),
        grid=GridSpec(**grid),
        output=OutputSpec(**sections["output"]),
        run=RunSpec(**sections["run"]),
        name=name,
        text=text,
        source=source,
    )


def load_job(path: str | Path, overrides: list[str] | None = None, values: dict[str, Any] | None = None) -> Job:
    """Read and validate a job file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise JobFileError(f"job file {str(p)!r} not found; check the path") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise JobFileError(f"job file {str(p)!r} cannot be read ({exc.__class__.__name__}); pass a TOML file") from None
    return parse_job(text, overrides, source=str(p), values=values)
