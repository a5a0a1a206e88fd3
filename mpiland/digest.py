"""Content digests: SHA-256 of files and of tensors' dtypes, shapes and bytes.

A surface file is resumed only when what determines its values has the same
digests (docs/schema.md, "Identity"). Tensors are read duck-typed (``detach``,
``cpu``, ``numpy``), so this module imports neither torch nor h5py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def update_tensor(h: Any, t: Any) -> None:
    """Feed a tensor's dtype, shape and bytes to a hash (torch is not imported: any dtype works)."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)};".encode())
    try:
        h.update(np.ascontiguousarray(t.numpy()).reshape(-1).view(np.uint8).data)
    except (TypeError, RuntimeError):  # bfloat16 and other dtypes numpy lacks
        h.update(bytes(t.clone().untyped_storage()))


def update_batch(h: Any, inputs: Any, targets: Any) -> None:
    """Feed one batch to a hash: its inputs (a tensor, or a dict of tensors by sorted key) and targets."""
    if isinstance(inputs, dict):
        for key in sorted(inputs):
            h.update(f"{key}=".encode())
            update_tensor(h, inputs[key])
    else:
        update_tensor(h, inputs)
    update_tensor(h, targets)


def tensors_digest(*tensors: Any) -> str:
    """SHA-256 over tensors' dtypes, shapes and bytes (None entries count as absent)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none;")
        else:
            update_tensor(h, t)
    return h.hexdigest()
