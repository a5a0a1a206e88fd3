"""Models and checkpoints: build the model from its factory, load checkpoints strictly, list checkpoint globs."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import CheckpointError, ModelError, MpilandError
from .spec import DirectionsSpec, ModelSpec
from .userimport import resolve_callable

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")


def build_model(spec: ModelSpec) -> torch.nn.Module:
    """Call the factory (seeded, so checkpoint-free runs are reproducible) and check it returns a module.

    The seed applies to a forked RNG, so the caller's global torch RNG state is left as it was.
    """
    fn = resolve_callable(spec.factory, "model.factory", ModelError)
    # Seed a forked generator: the caller's global RNG state is the same afterwards.
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(spec.seed)
        try:
            model = fn(**spec.kwargs)
        except Exception as exc:
            raise ModelError(f"model.factory {spec.factory!r} raised {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model.factory {spec.factory!r} returned {type(model).__name__}, expected a torch.nn.Module")
    if next(model.parameters(), None) is None:
        raise ModelError(f"model.factory {spec.factory!r} returned a module without parameters")
    return model


def extract_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """Find the state_dict in a checkpoint: the object itself or a dict under a usual key."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    elif isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
        else:
            raise CheckpointError(
                f"{where}: no state_dict found (looked at the top level and under {', '.join(STATE_DICT_KEYS)}); "
                "save model.state_dict() or a dict holding it under 'state_dict'")
    else:
        raise CheckpointError(f"{where}: holds a {type(obj).__name__}, expected a state_dict; save model.state_dict()")
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


SAFETENSORS_MAX_HEADER = 100_000_000
"""The safetensors format's own limit on its JSON header (bytes)."""


def is_safetensors(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file: an 8-byte little-endian header length, then a JSON object.

    Told by content, not by name, so a renamed file is still read the right way.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= length <= min(SAFETENSORS_MAX_HEADER, size - 8)


def _read_safetensors(path: str | Path, where: str, error: type[MpilandError], fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (no code runs while reading: the format holds only tensors and JSON)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise error(f"{where} is a safetensors file, and reading it needs the safetensors package: "
                    "pip install safetensors (or mpiland[safetensors])") from None
    try:
        return dict(load_file(os.fspath(path), device="cpu"))
    except Exception as exc:
        raise error(f"{where}: cannot be read as a safetensors file ({exc.__class__.__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); {fix}") from None


def read_state_dict(path: str | Path, where: str, error: type[MpilandError] = CheckpointError,
                    fix: str = "save model.state_dict()") -> dict[str, torch.Tensor]:
    """Read a checkpoint without running code from it and find the state_dict in it; ``where`` names it in errors.

    A safetensors file (:func:`is_safetensors`; HuggingFace's ``model.safetensors``, or
    ``safetensors.torch.save_file(model.state_dict(), path)``) is read with the
    safetensors package; anything else as a torch file with ``weights_only=True``
    (tensors and plain containers only, no pickled objects executed).
    """
    if is_safetensors(path):
        return extract_state_dict(_read_safetensors(path, where, error, fix), where)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(f"{where}: cannot be read as a torch checkpoint ({exc.__class__.__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); {fix}") from None
    return extract_state_dict(obj, where)


def load_checkpoint(model: torch.nn.Module, path: str | Path, key: str = "model.checkpoint") -> None:
    """Load ``path`` into ``model`` strictly; the error lists missing, unexpected and mismatched keys.

    ``key`` names the job key the path came from, for the error message.
    """
    where = f"{key} {str(path)!r}"
    p = Path(path)
    if not p.is_file():
        fix = "add a [train] section to create it" if key == "model.checkpoint" else "train that model first"
        raise CheckpointError(f"{where}: file not found; check the path or {fix}")
    load_state(model, read_state_dict(p, where), where, "check model.factory and model.kwargs")


def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str, fix: str) -> None:
    """Load ``state`` into ``model`` strictly; the error (``where`` … ``fix``) lists missing, unexpected and
    mismatched keys."""
    state = extract_state_dict(dict(state), where)
    own = model.state_dict()
    state = _with_tied(own, state)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{where} does not fit the model ({'; '.join(parts)}); {fix}")
    model.load_state_dict(state, strict=True)


def _with_tied(own: Mapping[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` plus the model's tied entries it leaves out, taken from the entry they share storage with.

    Files that store shared tensors once (safetensors, HuggingFace's ``save_pretrained``
    with tied input and output embeddings) omit one name of each tied pair; the model
    holds one tensor under both, so the omitted one is not missing.
    """
    def where(tensor: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
        return tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()), tuple(tensor.shape)

    by_storage: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in own.items():
        if name in state and tensor.untyped_storage().data_ptr():
            by_storage.setdefault(where(tensor), name)
    out = dict(state)
    for name, tensor in own.items():
        if name not in out:
            twin = by_storage.get(where(tensor))
            if twin is not None:
                out[name] = state[twin]
    return out


def _natural_key(path: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def expand_checkpoints(patterns: list[str] | tuple[str, ...], key: str = "directions.models") -> list[str]:
    """Paths and globs to a list of files: globs in natural order (epoch_2 before epoch_10), duplicates dropped."""
    out: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern), key=_natural_key)
            if not matches:
                raise CheckpointError(f"{key}: {pattern!r} matches no file; check the pattern or train the model first")
            out += matches
        else:
            if not Path(pattern).is_file():
                raise CheckpointError(f"{key} {pattern!r}: file not found; check the path or train that model first")
            out.append(pattern)
    unique: dict[str, str] = {}
    for p in out:
        unique.setdefault(str(Path(p).resolve()), p)
    return list(unique.values())


def base_checkpoint(spec: DirectionsSpec) -> str | None:
    """The checkpoint whose buffers a path job uses when model.checkpoint is not given (the path's origin)."""
    if not spec.models:
        return None
    paths = expand_checkpoints(spec.models)
    return paths[-1] if spec.kind == "pca" else paths[0]


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically: a file written beside it, then renamed, so
    a run killed while saving never leaves a truncated checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def outputs_of(result: Any) -> Any:
    """The outputs in what a model's forward returned: a tensor as it is; a HuggingFace ``ModelOutput`` (or
    any object with a ``logits`` tensor) its logits; a tuple or list its first element (HF's
    ``return_dict=False``); anything else as it is, for the checks to name."""
    if isinstance(result, torch.Tensor):
        return result
    logits = getattr(result, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(result, (tuple, list)) and result and isinstance(result[0], torch.Tensor):
        return result[0]
    return result
