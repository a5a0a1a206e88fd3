"""Import user code named as ``package.module:callable`` or ``path/to/file.py:callable``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import MpilandError


def resolve_callable(spec: str, key: str, error: type[MpilandError]) -> Callable[..., Any]:
    """Return the callable that ``spec`` names; raise ``error`` naming ``key`` if it cannot be found."""
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise error(f"{key}: file {target!r} not found (relative paths start at the current directory)")
        mod_name = f"mpiland_user_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]
                raise error(f"{key}: importing {target!r} raised {exc.__class__.__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise error(f"{key}: module {target!r} not found ({exc}); check the name or install it") from None
        except Exception as exc:
            raise error(f"{key}: importing {target!r} raised {exc.__class__.__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise error(f"{key}: {target!r} has no callable named {attr!r}")
    return fn


def qualified_name(obj: Any) -> str:
    """``module:qualname`` of a callable, or of an object's class: how a file records user code it was given."""
    target = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', None) or 'unknown'}:{getattr(target, '__qualname__', type(obj).__name__)}"
