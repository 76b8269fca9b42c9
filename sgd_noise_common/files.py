"""Atomic writes: a reader (or a crash) never sees half a file.

Every file the toolkit writes goes through ``atomic_write``: the content is written to a temporary file in the same
folder, flushed and ``fsync``-ed, renamed over the target (``os.replace``, atomic on POSIX), and then the folder is
``fsync``-ed so that the rename itself survives a power cut. The new file gets the permissions of a normal new
file (``0o666`` less the umask), not the owner-only mode of ``tempfile.mkstemp``.

What may be written where (``check_output_file``, ``check_output_dir``), checked before any work:

* A file that exists is replaced only when this toolkit wrote it, as the same kind of output: every JSON it writes
  carries a top-level ``"sgd_noise"`` field (``{"kind": ..., "version": ...}``, ``stamp``), and every figure the
  text ``sgd-noise-output:<kind>`` in its metadata. A user's file, a run's ``config.json`` or ``model.pt``, a
  named pipe, a device or a symbolic link is never replaced.
* A folder the toolkit writes into carries ``MARKER``, which names what the folder is (a run, an experiment, a
  report) and which of its file names belong to it; a file option may not write one of those names unless it is
  the kind of output that owns it (``nets.measure --json RUN/measure.json`` may, ``--json RUN/result.json`` may
  not).
* A write that fails (a full disk, a folder made read-only meanwhile) raises ``OutputError`` naming the path.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "save_figure_atomic", "jsonable", "MARKER",
           "figure_formats", "json_float", "check_output_file", "check_output_dir", "claim_output_dir", "read_json",
           "OutputError",
           "stamp", "written_kind", "folder_kind", "STAMP_KEY", "stamped_figure_formats"]

#: The file that marks an output folder as written by this toolkit. A folder with this file is ours to write into
#: (resume, skip, overwrite our own files); a folder without it that already holds files of the names we would
#: write is refused, so that nothing the user made is overwritten.
MARKER = ".sgd-noise"
#: The top-level field of every JSON the toolkit writes through ``write_json_atomic(..., kind=...)``.
STAMP_KEY = "sgd_noise"
#: The text a figure's metadata carries (followed by the kind and ';'), e.g. ``sgd-noise-output:verification.fdr;``.
FIGURE_STAMP = "sgd-noise-output:"
#: Largest file searched for a figure's stamp (figures are small; a larger file is not one of ours).
_STAMP_SEARCH_BYTES = 256 * 2**20


class OutputError(ValueError):
    """An output file could not be written (a full disk, a read-only folder): the message names the path."""


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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        _fsync_path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    except OSError as exc:  # a full disk, a folder made read-only: bad output, named, not a traceback
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def stamp(kind: str) -> dict:
    """The field that marks a JSON as this toolkit's output of ``kind`` (``{"sgd_noise": {...}}``).

    >>> stamp("nets.measure")["sgd_noise"]["kind"]
    'nets.measure'
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("sgd-noise")
    except PackageNotFoundError:  # run from a source tree that was not installed
        v = "unknown"
    return {STAMP_KEY: {"kind": kind, "version": v}}


def write_json_atomic(path, obj, *, kind: str | None = None) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically, through ``jsonable`` (numpy values, result types,
    NaN as null: the file is strict JSON). With ``kind``, ``obj`` (a dict) gets the ``stamp`` field first, so that a
    later ``check_output_file(..., kind=kind)`` recognises the file as ours to replace."""
    if kind is not None:
        if not isinstance(obj, dict):
            raise TypeError(f"a stamped JSON must be an object (dict), got {type(obj).__name__}")
        obj = {**stamp(kind), **{k: v for k, v in obj.items() if k != STAMP_KEY}}
    write_text_atomic(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


#: The metadata key that carries the stamp, per figure format (matplotlib accepts only these keys there); a format
#: not listed cannot carry it, so an existing file of that format is never replaced.
_FIGURE_META_KEY = {"png": "Software", "pdf": "Creator", "svg": "Creator", "svgz": "Creator", "eps": "Creator",
                    "ps": "Creator"}


def save_figure_atomic(fig, path, *, kind: str | None = None, **kwargs) -> None:
    """``fig.savefig`` to ``path`` atomically (the format from the suffix, PNG without one), then close ``fig``.
    With ``kind``, the figure's metadata carries ``sgd-noise-output:<kind>`` where its format has a field for it
    (PNG, PDF, SVG, EPS, PS)."""
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    if kind is not None and fmt in _FIGURE_META_KEY:
        meta = {**kwargs.get("metadata", {}), _FIGURE_META_KEY[fmt]: FIGURE_STAMP + kind + ";"}
        kwargs = {**kwargs, "metadata": meta}
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))
    finally:
        plt.close(fig)


def jsonable(obj):
    """``obj`` with plain JSON types only: numpy scalars and arrays to Python numbers and lists, objects with a
    ``to_dict()`` (the library's result types) to their data, NaN to ``None`` (JSON's ``null``) and ±∞ to the
    strings ``"inf"``, ``"-inf"`` (JSON has no such numbers; ``json_float`` reads all three back).

    >>> import numpy as np
    >>> jsonable({"a": np.float64(1.5), "b": [np.int64(2), float("nan"), -float("inf")], "c": np.arange(2)})
    {'a': 1.5, 'b': [2, None, '-inf'], 'c': [0, 1]}
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
        return x if math.isfinite(x) else (None if math.isnan(x) else str(x))
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    return obj


def json_float(value) -> float:
    """A number as ``jsonable`` writes it, read back: ``None`` (null) is NaN, ``"inf"``/``"-inf"`` infinite.

    >>> json_float(None), json_float("-inf"), json_float(2)
    (nan, -inf, 2.0)
    """
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def read_json(path, *, what: str = "file", remedy: str = "delete it to recompute it"):
    """The JSON content of ``path``; a ``ValueError`` naming the file when it is unreadable or corrupt (e.g.
    truncated by a crash), with what to do about it (``remedy``: advice that leads to a working state)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} {path} is unreadable or corrupt ({type(exc).__name__}: {exc}); {remedy}") from None


def stamped_figure_formats() -> set[str]:
    """The figure formats whose metadata carries the toolkit's stamp (PNG, PDF, SVG, SVGZ, EPS, PS): the only ones a
    figure option accepts, for a figure in any other could never be recognised as ours and replaced."""
    return figure_formats() & set(_FIGURE_META_KEY)


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


def written_kind(path) -> str | None:
    """The kind of output this toolkit wrote at ``path`` (its stamp), or ``None`` when the file carries none.

    A JSON is read whole and its top-level ``"sgd_noise"`` field looked up; any other file is searched for
    ``sgd-noise-output:<kind>`` (a figure's metadata; ``.svgz`` is unzipped first). A file that cannot be read
    carries no stamp.
    """
    path = Path(path)
    try:
        if path.stat().st_size > _STAMP_SEARCH_BYTES:
            return None
        raw = path.read_bytes()
        if path.suffix.lower() == ".svgz":
            import gzip

            raw = gzip.decompress(raw)
    except (OSError, EOFError, ValueError):
        return None
    if raw.lstrip()[:1] == b"{":
        try:
            field = json.loads(raw.decode("utf-8")).get(STAMP_KEY)
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return None
        kind = field.get("kind") if isinstance(field, dict) else None
        return kind if isinstance(kind, str) else None
    # The kind is a module-like name (letters, digits, '.', '_', '-') closed by ';': the bytes after it are the
    # format's own (a PNG chunk's checksum may begin with letters).
    found = re.search(re.escape(FIGURE_STAMP.encode()) + rb"([A-Za-z0-9._-]+);", raw)
    return found.group(1).decode("ascii") if found else None


def _marker_record(folder: Path) -> dict | None:
    """What ``folder``'s marker says of it (``{"kind", "files"}``), ``{}`` for a marker of a version that wrote no
    record, ``None`` when the folder has no marker."""
    marker = folder / MARKER
    try:
        text = marker.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {} if marker.exists() else None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def folder_kind(folder) -> str | None:
    """The kind of output folder ``folder`` is (``"run"``, ``"experiment"``, ``"report"``, ...), as its marker says;
    ``None`` when it has no marker or an old one that does not say."""
    record = _marker_record(Path(folder))
    return record.get("kind") if record else None


def _describe(st_mode: int) -> str:
    if stat.S_ISDIR(st_mode):
        return "a folder"
    if stat.S_ISFIFO(st_mode):
        return "a named pipe"
    if stat.S_ISCHR(st_mode) or stat.S_ISBLK(st_mode):
        return "a device"
    if stat.S_ISSOCK(st_mode):
        return "a socket"
    if stat.S_ISLNK(st_mode):
        return "a symbolic link"
    return "not a regular file"


def _owned_by_parent(path: Path):
    """``(record, pattern, owner)`` when ``path``'s name is one of the own files of the toolkit folder it lies in
    (its marker's ``files``, or the marker and lock themselves), else ``None``."""
    if not path.parent.is_dir():
        return None
    record = _marker_record(path.parent)
    if record is None:
        return None
    if path.name.startswith(MARKER):
        return record, MARKER + "*", None
    for pattern, owner in (record.get("files") or {}).items():
        if fnmatch.fnmatchcase(path.name, pattern):
            return record, pattern, owner
    return None


def check_output_file(path, *, option: str, kind: str | None = None, formats=None, home=None) -> Path:
    """Check, without writing anything, that the file ``path`` may be created, or replaced by output of ``kind``.

    Args:
        path: the output file.
        option: the option that named it (for the message), e.g. ``"--json"``.
        kind: the kind of output to be written (e.g. ``"nets.measure"``): an existing file is replaced only when
            it carries this toolkit's stamp of the same kind (``None``: of any kind).
        formats: allowed extensions (e.g. ``figure_formats()``); ``None`` accepts any.
        home: the toolkit folder whose own file of this kind the output may be (``nets.measure RUN`` may write
            ``RUN/measure.json``, not another run's); ``None``: any folder's own file of this kind.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: naming ``option``, the path and what is wrong: an unknown format; a folder, named pipe, device
            or symbolic link; an existing file this toolkit did not write (or wrote as another kind of output); a
            file name that belongs to the toolkit folder it lies in (a run's ``config.json``); a parent that is a
            file; a place that cannot be written.
    """
    path = Path(path)
    if formats is not None:
        ext = path.suffix.lstrip(".").lower()
        if ext not in formats:
            raise ValueError(f"{option} {path}: unknown figure format {ext!r}; use one of "
                             f"{', '.join(sorted(formats))}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # e.g. a parent that is a file (ENOTDIR): reported below, with the anchor
        st = None if exc.errno == errno.ENOTDIR else exc
        if isinstance(st, OSError):
            raise ValueError(f"{option} {path}: cannot inspect it ({exc.strerror or exc})") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"{option} {path} is a folder; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{option} {path} is {_describe(st.st_mode)}, not a regular file; sgd-noise writes only "
                             "regular files: give another path")
    anchor = _first_existing(path.parent)
    if not anchor.is_dir():
        raise ValueError(f"{option} {path}: {anchor} is a file, not a folder")
    owned = _owned_by_parent(path)
    if owned is not None:
        record, pattern, owner = owned
        other_home = home is not None and os.path.realpath(path.parent) != os.path.realpath(home)
        if owner is None or owner != kind or other_home:
            raise ValueError(f"{option} {path} is one of the own files of the sgd-noise "
                             f"{record.get('kind', 'output')} folder {path.parent} (its {pattern}); writing it "
                             "would break that folder: choose a path outside it")
    if st is not None:
        theirs = written_kind(path)
        if theirs is None:
            raise ValueError(f"{option} {path} exists and carries no sgd-noise output stamp (a file of yours, or one "
                             "sgd-noise keeps); it is never replaced: choose another path, or move that file")
        if kind is not None and theirs != kind:
            raise ValueError(f"{option} {path} holds sgd-noise's {theirs} output, not {kind}; it is not replaced: "
                             "choose another path")
    _probe_writable(anchor, option, path)
    return path


def check_output_dir(path, *, option: str, names=(), kind: str | None = None) -> Path:
    """Check, without writing anything, that ``path`` can be an output folder of ours.

    It may not exist yet (its first existing ancestor must then be a writable folder); if it exists it must be a
    writable folder that is ours (holding ``MARKER``, and of ``kind`` when its marker says what it is) or holds
    none of the ``names`` we would write into it (file names or glob patterns such as ``"fdr*"``).

    Raises:
        ValueError: naming ``option``, the path and what is wrong.
    """
    path = Path(path)
    if path.is_symlink() and not path.is_dir():
        raise ValueError(f"{option} {path} is a symbolic link that leads nowhere; give a folder")
    owned = _owned_by_parent(Path(os.path.abspath(path)))
    if owned is not None and (owned[2] is None or owned[2] != kind):
        record, pattern, _ = owned
        raise ValueError(f"{option} {path} belongs to the sgd-noise {record.get('kind', 'output')} folder "
                         f"{path.parent} (its {pattern}); use a folder outside it")
    if path.exists() and not path.is_dir():
        try:
            what = _describe(os.stat(path).st_mode)
        except OSError:
            what = "not a folder"
        raise ValueError(f"{option} {path} is {'a file' if what == 'not a regular file' else what}; give a folder")
    anchor = _first_existing(path)
    if not anchor.is_dir():
        raise ValueError(f"{option} {path}: {anchor} is a file, not a folder")
    _probe_writable(anchor, option, path)
    if path.is_dir():
        record = _marker_record(path)
        if record is None:
            theirs = sorted({q.name for pattern in names for q in path.glob(pattern)})
            if theirs:
                raise ValueError(f"{option} {path} holds {', '.join(theirs)} that sgd-noise did not write (no "
                                 f"{MARKER} marker); use another folder, or move those files (a folder written by "
                                 f"sgd-noise before 0.2 has no marker: add an empty {MARKER} file to it to use it "
                                 "again)")
        elif kind is not None and record.get("kind") not in (None, kind):
            raise ValueError(f"{option} {path} is an sgd-noise {record['kind']} folder, not one of kind {kind}; "
                             "writing into it would mix the two: use another folder")
    return path


def claim_output_dir(path, *, option: str, names=(), kind: str | None = None, files: dict | None = None) -> Path:
    """``check_output_dir``, then create the folder and its ``MARKER``: from now on it is ours.

    Args:
        kind: what the folder is (``"run"``, ``"experiment"``, ``"report"``, ...), recorded in the marker.
        files: the folder's own file names or patterns, each with the kind of output that may write it through a
            file option (``None``: none may), recorded in the marker so that ``check_output_file`` refuses the
            others.
    """
    path = check_output_dir(path, option=option, names=names, kind=kind)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot create the folder ({exc.strerror or exc})") from None
    marker = path / MARKER
    record = _marker_record(path)
    if kind is not None and (not record or record.get("kind") != kind or record.get("files") != (files or {})):
        write_text_atomic(marker, json.dumps({"note": "This folder was written by sgd-noise; files here may be "
                                                      "replaced by it.", "kind": kind, "files": files or {}},
                                             indent=2) + "\n")
    elif record is None:
        write_text_atomic(marker, "This folder was written by sgd-noise; files here may be replaced by it.\n")
    return path
