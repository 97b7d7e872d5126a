"""Small core utilities shared by the modules: JSON-safe conversion and atomic file output."""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def json_safe(obj: Any, drop_none: bool = False) -> Any:
    """Plain-JSON copy of ``obj``: dict keys become strings, tuples and arrays lists, numpy
    scalars Python numbers, non-finite floats ``None``, ``str`` subclasses (e.g. torch's
    ``TorchVersion``) plain strings and anything else its ``str``. ``drop_none``: entries that are or
    become ``None`` are left out of dicts and lists (what ``.h5ad`` ``uns`` can store)."""
    if isinstance(obj, dict):
        out = {str(k): json_safe(v, drop_none) for k, v in obj.items()}
        return {k: v for k, v in out.items() if v is not None} if drop_none else out
    if isinstance(obj, (list, tuple)):
        out = [json_safe(v, drop_none) for v in obj]
        return [v for v in out if v is not None] if drop_none else out
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist(), drop_none)
    if isinstance(obj, np.generic):
        return json_safe(obj.item(), drop_none)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    return str(obj)


def new_file_mode(path) -> int:
    """Permission bits for a file written atomically at ``path``: those of the file it replaces, else
    what ``open()`` would give a new file (0o666 less the umask) -- not mkstemp's private 0o600."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextmanager
def atomic_output(path, suffix: str | None = None) -> Iterator[str]:
    """Write ``path`` atomically: yields a temporary file name in the same folder (same suffix
    by default, so writers that look at the extension behave); when the block succeeds the file is
    fsync'ed and moved over ``path`` with ``os.replace``, otherwise it is removed and any existing
    ``path`` is left untouched. The folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, new_file_mode(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
