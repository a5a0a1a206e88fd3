"""Job files: a TOML description of one landscape job, validated before any work starts.

A job file has the sections ``[model]``, ``[train]`` (optional), ``[data]``,
``[loss]``, ``[directions]``, ``[grid]``, ``[output]`` and ``[run]``; see
``docs/jobfile.md`` for every key. Relative paths are taken from the current
working directory. Every error names the key path, e.g.
``directions.norm: expected one of auto|filter|layer|weight|model|none, got "filtr"``.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from pathlib import Path
from typing import Any, Callable

from .errors import GridError, JobFileError
from .spec import (ALIGN_KINDS, AUTO_NUM, AUTOCASTS, BN_MODES, CURVES, DIRECTION_KINDS, DTYPES, IGNORES, LOSSES,
                   MODEL_MODES, NORMS, PATH_KINDS, PROGRESS, SPECTRUM, SPLITS, WRITERS, Axis, ConnectSpec, DataSpec,
                   DirectionsSpec, GridSpec, HessianSpec, Job, LossSpec, ModelSpec, OutputSpec, RunSpec, TrainSpec, defaults,
                   resolve_directions)

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
        raise _fail(key, "expected at least one split, e.g. [\"test\"]")
    for s in splits:
        if not s.isidentifier():
            raise _fail(key, f"{s!r} cannot name datasets such as {s}_loss; use an identifier")
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


def _metrics(key: str, v: Any) -> dict[str, str]:
    table = _table(key, v)
    out = {}
    for name, target in table.items():
        if not name.isidentifier() or name in ("loss", "loss_stderr", "acc", "perplexity") or name.endswith("_stderr"):
            raise _fail(f"{key}.{name}", "a metric name must be an identifier other than loss, acc, perplexity and *_stderr "
                        "(it names datasets such as test_<name>)")
        out[name] = _factory(f"{key}.{name}", target)
    return out


def _accuracy(key: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return _choice(("auto", "true", "false"))(key, v)


def _axis(key: str, v: Any) -> Axis:
    if v == "auto":
        return Axis(None, None, AUTO_NUM)
    if isinstance(v, list) and len(v) == 2 and v[0] == "auto":
        v = v[1]
        if isinstance(v, bool) or not isinstance(v, int):
            raise GridError(f"{key}: expected [\"auto\", num] with an integer num, e.g. [\"auto\", 21], got {v!r}")
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise GridError(f"{key}: num must be at least 1, got {v}")
        return Axis(None, None, v)
    if not isinstance(v, list) or len(v) != 3:
        raise GridError(f"{key}: expected [min, max, num], e.g. [-1.0, 1.0, 21], or \"auto\" / [\"auto\", num] "
                        f"(or just num) for an automatic range, got {v!r}")
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


def _nonneg(key: str, v: Any) -> float:
    value = _num(key, v)
    if value < 0:
        raise _fail(key, f"expected a number >= 0, got {v}")
    return value


def _above(key: str, v: Any, lo: float) -> float:
    value = _num(key, v)
    if value <= lo:
        raise _fail(key, f"expected a number > {lo:g}, got {v}")
    return value


def _opt_axis(key: str, v: Any) -> Axis | None:
    return None if v is None else _axis(key, v)


# section -> key -> checker; the defaults are the spec dataclasses' (mpiland.spec), never repeated here.
_SCHEMA: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "model": {
        "factory": _factory,
        "kwargs": _table,
        "checkpoint": _opt_str,
        "seed": _int,
        "dtype": _choice(DTYPES),
        "mode": _choice(MODEL_MODES),
        "bn": _choice(BN_MODES),
        "bn_batches": lambda k, v: _int(k, v, 1),
    },
    "train": {
        "epochs": lambda k, v: _int(k, v, 1),
        "lr": lambda k, v: _num(k, v, positive=True),
        "momentum": _num,
        "weight_decay": _num,
        "batch_size": lambda k, v: _int(k, v, 1),
        "seed": _int,
        "checkpoint_dir": _opt_str,
    },
    "data": {
        "dataset": _opt_str,
        "factory": lambda k, v: None if v in (None, "") else _factory(k, v),
        "kwargs": _table,
        "splits": _splits,
        "subset": lambda k, v: _int(k, v, 0),
        "seed": _int,
        "batch_size": lambda k, v: _int(k, v, 1),
        "memory_budget_mb": lambda k, v: _num(k, v, positive=True),
        "stream": _accuracy,  # the same auto/true/false values
    },
    "loss": {
        "name": _loss_name,
        "accuracy": _accuracy,
        "metrics": _metrics,
    },
    "directions": {
        "kind": _choice(DIRECTION_KINDS),
        "seed": _int,
        "norm": _choice(NORMS),
        "ignore": _choice(IGNORES),
        "include": _regex_list,
        "exclude": _regex_list,
        "orthogonalize": _bool,
        "models": _str_list,
        "file": _str_list,
        "states": _bool,
        "compare_line": _bool,
        "align": _bool,
    },
    "grid": {
        "x": _axis,
        "y": _opt_axis,
        "margin": _nonneg,
        "auto_rise": lambda k, v: _above(k, v, 1.0),
        "auto_max": lambda k, v: _num(k, v, positive=True),
        "refine": _bool,
        "refine_tol": _nonneg,
        "refine_levels": lambda k, v: _int(k, v, 0),
    },
    "hessian": {
        "enabled": _bool,
        "splits": lambda k, v: _splits(k, v),
        "subset": lambda k, v: _int(k, v, 0),
        "tol": lambda k, v: _num(k, v, positive=True),
        "max_iter": lambda k, v: _int(k, v, 2),
        "dtype": _choice(tuple(d for d in DTYPES if d != "bfloat16")),  # Lanczos in bf16 cannot converge
        "seed": _int,
        "trace_samples": lambda k, v: _int(k, v, 0),
        "warm_start": _bool,
        "chain": lambda k, v: _int(k, v, 1),
        "spectrum": _choice(SPECTRUM),
        "spectrum_probes": lambda k, v: _int(k, v, 1),
        "spectrum_steps": lambda k, v: _int(k, v, 2),
        "spectrum_top": lambda k, v: _int(k, v, 1),
    },
    "connect": {
        "ends": _str_list,
        "curve": _choice(CURVES),
        "bends": lambda k, v: _int(k, v, 1),
        "epochs": lambda k, v: _int(k, v, 1),
        "lr": lambda k, v: _num(k, v, positive=True),
        "momentum": _num,
        "weight_decay": _nonneg,
        "batch_size": lambda k, v: _int(k, v, 1),
        "seed": _int,
        "checkpoint_dir": _opt_str,
    },
    "output": {
        "path": _str,
        "overwrite": _bool,
    },
    "run": {
        "device": lambda k, v: _device(k, v),
        "chunk_size": lambda k, v: _int(k, v, 0),
        "writer": _choice(WRITERS),
        "threads": lambda k, v: _int(k, v, 0),
        "progress": _choice(PROGRESS),
        "points_per_pass": lambda k, v: _int(k, v, 0),
        "group_size": lambda k, v: _int(k, v, 0),
        "batch_memory_mb": lambda k, v: _num(k, v, positive=True),
        "autocast": _choice(AUTOCASTS),
        "channels_last": _bool,
        "compile": _bool,
    },
}
_SPECS: dict[str, type] = {"model": ModelSpec, "train": TrainSpec, "data": DataSpec, "loss": LossSpec,
                           "directions": DirectionsSpec, "grid": GridSpec, "hessian": HessianSpec,
                           "output": OutputSpec, "run": RunSpec, "connect": ConnectSpec}
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
    default = defaults(_SPECS[name])
    for key, check in schema.items():
        path = f"{name}.{key}"
        if key in table:
            out[key] = check(path, table[key])
        elif key in _REQUIRED.get(name, ()):
            raise _fail(path, "missing required key")
        else:
            out[key] = copy.deepcopy(default[key])
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


def apply_overrides(raw: dict[str, Any], overrides: list[str], values: dict[str, Any] | None = None,
                    unset: list[str] | None = None) -> dict[str, Any]:
    """Return a copy of the raw job table with ``--set`` items and already-typed ``values`` applied, then the
    ``--unset`` keys removed (their defaults apply: ``--unset grid.y`` makes a 2D job 1D)."""
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
    for key in unset or []:
        *sections, name = key.strip().split(".")
        table: Any = raw
        for part in sections:
            table = table.get(part) if isinstance(table, dict) else None
        if not sections or not isinstance(table, dict) or name not in table:
            raise JobFileError(f"--unset {key!r}: the job does not set {key}; give a key of the job file, "
                               "e.g. --unset grid.y")
        del table[name]
    return raw


def parse_job(text: str, overrides: list[str] | None = None, source: str = "<job>",
              values: dict[str, Any] | None = None, unset: list[str] | None = None) -> Job:
    """Parse and validate a job file's text; raise JobFileError/GridError naming the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(f"{source}: not valid TOML ({exc}); fix the syntax at that line") from None
    raw = apply_overrides(raw, overrides or [], values, unset)
    return job_from_table(raw, text, source)


def job_from_table(raw: dict[str, Any], text: str = "", source: str = "<job>", data_given: bool = False) -> Job:
    """Validate a job table (parsed TOML, or built from Python arguments); raise JobFileError/GridError naming the key.

    ``data_given``: the data comes from the caller (the Python API), so [data] names
    no dataset or factory and its splits are the caller's names.
    """
    unknown = sorted(set(raw) - set(_SCHEMA) - _TOP)
    if unknown:
        raise _fail(unknown[0], f"unknown section or key; known: {', '.join(sorted(set(_SCHEMA) | _TOP))}")
    for required in ("model", "grid"):
        if required not in raw:
            raise _fail(required, f"missing required section [{required}]")
    name = raw.get("name", Path(source).stem if source != "<job>" else "")
    name = _str("name", name)
    optional = ("train", "connect")  # sections that mean something only when present
    sections = {s: _section(raw, s) for s in _SCHEMA if s not in optional or s in raw}
    data = sections["data"]
    if data["factory"] is not None or data_given:
        data["dataset"] = None
    elif data["dataset"] not in ("digits",):
        raise _fail("data.dataset", f'expected "digits" (or set data.factory), got {json.dumps(data["dataset"])}')
    else:
        for split in data["splits"]:
            _choice(SPLITS)("data.splits", split)
    directions = sections["directions"]
    grid = sections["grid"]
    _check_directions(directions, grid, sections["model"])
    _check_bare_num(raw.get("grid", {}), directions["kind"])
    hessian = sections["hessian"]
    if not hessian["splits"]:
        hessian["splits"] = tuple(data["splits"])
    missing = [sp for sp in hessian["splits"] if sp not in data["splits"]]
    if missing:
        raise _fail("hessian.splits", f"{missing[0]} is not evaluated; add it to data.splits or remove it here")
    curvature = hessian["enabled"] or directions["kind"] == "hessian" or hessian["spectrum"] != "none"
    if hessian["spectrum"] == "models" and directions["kind"] not in PATH_KINDS:
        raise _fail("hessian.spectrum", f'"models" takes the spectrum at each model of a path; {directions["kind"]} '
                    'directions have none: use "origin"')
    if curvature and sections["model"]["mode"] == "train":
        raise _fail("hessian.enabled", 'curvature is taken in eval mode; it cannot be combined with model.mode = "train"')
    if curvature and sections["model"]["dtype"] == "bfloat16":
        raise _fail("model.dtype", 'bfloat16 weights are for loss values; curvature (hessian.enabled, Hessian directions, '
                    'a spectrum) needs float32 or float64 weights: set model.dtype = "float32"')
    return Job(
        model=ModelSpec(**sections["model"]),
        train=TrainSpec(**sections["train"]) if "train" in sections else None,
        connect=ConnectSpec(**sections["connect"]) if "connect" in sections else None,
        data=DataSpec(**data),
        loss=LossSpec(**sections["loss"]),
        directions=resolve_directions(DirectionsSpec(**directions)),
        grid=GridSpec(**grid),
        output=OutputSpec(**sections["output"]),
        run=RunSpec(**sections["run"]),
        hessian=HessianSpec(**hessian),
        name=name,
        text=text,
        source=source,
    )


def _check_bare_num(grid: dict[str, Any], kind: str) -> None:
    """A bare ``num`` takes its range from the models of a path; other kinds spell a pre-scanned range "auto"."""
    if kind in PATH_KINDS:
        return
    for key in ("x", "y"):
        v = grid.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            raise GridError(f"grid.{key}: a bare num takes its range from the models of a path; {kind} directions "
                            f"need [min, max, num], or [\"auto\", {v}] for a range chosen by a pre-scan of the loss")


def _check_directions(d: dict[str, Any], grid: dict[str, Any], model: dict[str, Any]) -> None:
    """Cross-key rules of [directions]: models/file per kind, grid dimensions, where norm/ignore apply."""
    kind = d["kind"]
    dims = 1 if grid["y"] is None else 2
    if d["orthogonalize"] and (dims == 1 or kind not in ("random", "file")):
        raise _fail("directions.orthogonalize", "needs random or file directions on a 2D grid (grid.y); remove it")
    if kind in PATH_KINDS:
        count, need_dims = PATH_KINDS[kind]
        n = len(d["models"])
        if (count > 0 and n != count) or (count < 0 and n < -count):
            want = f"exactly {count}" if count > 0 else f"at least {-count}"
            roles = {"interpolation": "[A, B]", "plane": "[θ0, θ1, θ2]", "bilinear": "[θ00, θ10, θ01, θ11]",
                     "bezier": "[start, bend..., end]", "polychain": "[start, bend..., end]",
                     "pca": "the trajectory's checkpoints (paths or globs)"}[kind]
            raise _fail("directions.models", f"kind {kind} needs {want} checkpoint(s), {roles}; got {n}")
        if need_dims and dims != need_dims:
            fix = "remove grid.y" if need_dims == 1 else "add grid.y"
            raise _fail("directions.kind", f"{kind} is a {need_dims}D path; {fix}")
        if d["norm"] not in ("auto", "none"):
            raise _fail("directions.norm", f"applies to random and file directions; a {kind} path is defined by "
                        "its models, remove the key")
        if d["file"]:
            raise _fail("directions.file", f"is for kind = \"file\", not {kind}; remove it")
        if kind != "pca" and d["ignore"] not in ("auto", "none"):
            raise _fail("directions.ignore", f"applies to random, file and pca directions, not {kind}; remove it")
    else:
        if d["models"]:
            raise _fail("directions.models", f"is for path kinds ({', '.join(PATH_KINDS)}), not {kind}; remove it")
        if kind == "file" and not d["file"]:
            raise _fail("directions.file", 'kind = "file" needs a file: an .h5 file with directions (ours or the '
                        'loss-landscape tool\'s), or one state_dict-shaped .pt file per axis')
        if kind != "file" and d["file"]:
            raise _fail("directions.file", 'is for kind = "file"; remove it or set kind = "file"')
        if kind == "file" and len(d["file"]) > 1 and len(d["file"]) != dims:
            raise _fail("directions.file", f"give one .h5 file, or one .pt file per axis ({dims}); got {len(d['file'])}")
        if kind == "hessian" and d["states"]:
            raise _fail("directions.states", "Hessian directions are over the parameters; remove it")
        if kind == "hessian" and d["norm"] not in ("auto", "none"):
            raise _fail("directions.norm", "Hessian eigenvectors are unit vectors and are not normalised; remove the "
                        "key (include/exclude/ignore choose the parameters whose Hessian block is used)")
    if d["align"] and kind not in ALIGN_KINDS:
        raise _fail("directions.align", f"aligns the models of a path ({', '.join(ALIGN_KINDS)}) by permutation; "
                    f"{kind} directions have no models to align: remove it")
    if model["bn"] == "recompute" and model["mode"] == "train":
        raise _fail("model.bn", 'recompute evaluates with recomputed running statistics; it cannot be combined with '
                    'model.mode = "train" (batch statistics): drop one')


def load_job(path: str | Path, overrides: list[str] | None = None, values: dict[str, Any] | None = None,
             unset: list[str] | None = None) -> Job:
    """Read and validate a job file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise JobFileError(f"job file {str(p)!r} not found; check the path") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise JobFileError(f"job file {str(p)!r} cannot be read ({exc.__class__.__name__}); pass a TOML file") from None
    return parse_job(text, overrides, source=str(p), values=values, unset=unset)
