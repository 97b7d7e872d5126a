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
        entries = {str(k): json_safe(v, drop_none) for k, v in obj.items()}
        return {k: v for k, v in entries.items() if v is not None} if drop_none else entries
    if isinstance(obj, (list, tuple)):
        items = [json_safe(v, drop_none) for v in obj]
        return [v for v in items if v is not None] if drop_none else items
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


def check_writable_folder(folder, error: type[Exception] = OSError, what: str = "output folder") -> Path:
    """Create ``folder`` when missing and prove that files can be written there (a temporary file is
    created and removed), so that work fails *before* hours of training rather than at the final save.
    Raises ``error`` with a one-line message naming the folder, the reason and the fix."""
    folder = Path(os.fspath(folder)).expanduser()
    if not str(folder):
        folder = Path(".")
    if folder.exists() and not folder.is_dir():
        raise error(f"The {what} {str(folder)!r} is a file, not a folder. Choose another location.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".scmedal-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise error(f"The {what} {str(folder)!r} is not writable ({reason}). Choose another location "
                    f"(or fix its permissions).") from None
    return folder


#: Temporary files of a killed write (our own ``.NAME.XXXXXXXX<suffix>`` pattern) older than this are removed
#: by the next write to the same path; younger ones may belong to a write still running elsewhere.
STALE_TEMP_SECONDS = 600.0


def remove_stale_temps(path, suffix: str, min_age: float = STALE_TEMP_SECONDS) -> list[str]:
    """Delete leftovers of killed atomic writes to ``path`` (same folder, our temp-name pattern, older
    than ``min_age`` seconds). Returns the names removed; errors (permissions, races) are ignored."""
    import re
    import time

    path = Path(path)
    pat = re.compile(r"\." + re.escape(path.name) + r"\.[A-Za-z0-9_]{8}" + re.escape(suffix) + r"\Z")
    removed: list[str] = []
    try:
        entries = list(os.scandir(path.parent if str(path.parent) else "."))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        try:
            if pat.match(e.name) and e.is_file(follow_symlinks=False) and now - e.stat().st_mtime > min_age:
                os.remove(e.path)
                removed.append(e.name)
        except OSError:
            pass
    return removed


@contextmanager
def atomic_output(path, suffix: str | None = None) -> Iterator[str]:
    """Write ``path`` atomically: yields a temporary file name in the same folder (same suffix
    by default, so writers that look at the extension behave); when the block succeeds the file is
    fsync'ed and moved over ``path`` with ``os.replace`` (and the folder fsync'ed so the rename is
    durable), otherwise it is removed and any existing ``path`` is left untouched. The folder is created
    when missing. Temporary files that a killed earlier write to ``path`` left behind are removed
    (:func:`remove_stale_temps`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    remove_stale_temps(path, suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
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
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse a folder fsync
        pass


def is_cancelled(cancel) -> bool:
    """``cancel`` is None, an object with ``is_set()`` (e.g. ``threading.Event``) or a callable returning True
    to stop: the one check every cancellable loop uses (training, held-out runs, the mixed model)."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def write_csv(df, path) -> str:
    """Write the DataFrame ``df`` to ``path`` as CSV, without its index, atomically (:func:`atomic_output`);
    the one CSV writer of the package's tables. Returns the path."""
    path = os.fspath(path)
    with atomic_output(path) as tmp:
        df.to_csv(tmp, index=False)
    return path
