"""Atomic writes: a reader (or a crash) never sees half a file.

Every file the toolkit writes goes through ``atomic_write``: the content is written to a temporary file in the same
folder, flushed and ``fsync``-ed, renamed over the target (``os.replace``, atomic on POSIX), and then the folder is
``fsync``-ed so that the rename itself survives a power cut. The new file gets the permissions of a normal new
file (``0o666`` less the umask), not the owner-only mode of ``tempfile.mkstemp``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "save_figure_atomic", "jsonable"]


def _fsync_path(path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # a folder cannot be opened for fsync on some systems (Windows): nothing more to do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[str], None]) -> None:
    """Create or replace ``path`` atomically: ``write(tmp)`` writes the content to the temporary path ``tmp``.

    Args:
        path: the target file; its folder is created when missing.
        write: writes the whole content to the path it is given (e.g. ``lambda tmp: fig.savefig(tmp)``).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(d / "a.txt", lambda tmp: pathlib.Path(tmp).write_text("hello"))
    >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('hello', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _fsync_path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (pass it through ``jsonable`` first when it may hold
    numpy values)."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_figure_atomic(fig, path, **kwargs) -> None:
    """``fig.savefig`` to ``path`` atomically (the format from the suffix, PNG without one), then close ``fig``."""
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))
    finally:
        plt.close(fig)


def jsonable(obj):
    """``obj`` with plain JSON types only: numpy scalars and arrays to Python numbers and lists, non-finite floats
    to the strings ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has no such numbers).

    >>> import numpy as np
    >>> jsonable({"a": np.float64(1.5), "b": [np.int64(2), float("nan")], "c": np.arange(2)})
    {'a': 1.5, 'b': [2, 'nan'], 'c': [0, 1]}
    """
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else str(x)
    return obj
