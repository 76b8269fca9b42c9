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

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "save_figure_atomic", "jsonable", "MARKER",
           "figure_formats", "check_output_file", "check_output_dir", "claim_output_dir", "read_json"]

#: The file that marks an output folder as written by this toolkit. A folder with this file is ours to write into
#: (resume, skip, overwrite our own files); a folder without it that already holds files of the names we would
#: write is refused, so that nothing the user made is overwritten.
MARKER = ".sgd-noise"


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


def read_json(path, *, what: str = "file"):
    """The JSON content of ``path``; a ``ValueError`` naming the file when it is unreadable or corrupt (e.g.
    truncated by a crash), with what to do about it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} {path} is unreadable or corrupt ({type(exc).__name__}: {exc}); delete it to "
                         "recompute it") from None


def figure_formats() -> set[str]:
    """The file extensions matplotlib can write (``png``, ``pdf``, ``svg``, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes())


def _first_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return path


def _probe_writable(folder: Path, option: str, target) -> None:
    """Create and remove a file in ``folder``: the only test of writability that holds for every user (root
    included) and file system (read-only mounts, /proc)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sgd-noise-probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ValueError(f"{option} {target}: cannot write into {folder} ({exc.strerror or exc})") from None


def check_output_file(path, *, option: str, formats=None) -> Path:
    """Check, without writing anything, that the file ``path`` can be created or replaced.

    Args:
        path: the output file.
        option: the option that named it (for the message), e.g. ``"--json"``.
        formats: allowed extensions (e.g. ``figure_formats()``); ``None`` accepts any.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: naming ``option``, the path and what is wrong (a folder, a parent that is a file, a place that
            cannot be written, an unknown format).
    """
    path = Path(path)
    if formats is not None:
        ext = path.suffix.lstrip(".").lower()
        if ext not in formats:
            raise ValueError(f"{option} {path}: unknown figure format {ext!r}; use one of "
                             f"{', '.join(sorted(formats))}")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    anchor = _first_existing(path.parent)
    if not anchor.is_dir():
        raise ValueError(f"{option} {path}: {anchor} is a file, not a folder")
    _probe_writable(anchor, option, path)
    return path


def check_output_dir(path, *, option: str, names=()) -> Path:
    """Check, without writing anything, that ``path`` can be an output folder of ours.

    It may not exist yet (its first existing ancestor must then be a writable folder); if it exists it must be a
    writable folder that is ours (holding ``MARKER``) or holds none of the ``names`` we would write into it
    (file names or glob patterns such as ``"fdr*"``).

    Raises:
        ValueError: naming ``option``, the path and what is wrong.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; give a folder")
    anchor = _first_existing(path)
    if not anchor.is_dir():
        raise ValueError(f"{option} {path}: {anchor} is a file, not a folder")
    _probe_writable(anchor, option, path)
    if path.is_dir() and not (path / MARKER).exists():
        theirs = sorted({q.name for pattern in names for q in path.glob(pattern)})
        if theirs:
            raise ValueError(f"{option} {path} holds {', '.join(theirs)} that sgd-noise did not write (no {MARKER} "
                             "marker); use another folder, or move those files (a folder written by sgd-noise before "
                             f"0.2 has no marker: add an empty {MARKER} file to it to use it again)")
    return path


def claim_output_dir(path, *, option: str, names=()) -> Path:
    """``check_output_dir``, then create the folder and its ``MARKER``: from now on it is ours."""
    path = check_output_dir(path, option=option, names=names)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / MARKER
    if not marker.exists():
        write_text_atomic(marker, "This folder was written by sgd-noise; files here may be replaced by it.\n")
    return path
