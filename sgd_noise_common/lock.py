"""One writer per output folder: a lock held by the process that writes a run, an experiment or a report.

``folder_lock(folder, option=...)`` takes an exclusive ``flock`` on ``folder/.sgd-noise.lock`` for as long as the
``with`` block runs. A second process that asks for the same folder is refused at once with a ``FolderBusy`` (a
``ValueError``: exit 2 at the command line) that names the holder (its process id, host, command and start time),
or, with ``wait``, waits for it. The kernel releases a ``flock`` when its process dies, however it dies, so a lock
file left behind by a killed process is recognised as stale and simply taken over. Inside one process the lock is
re-entrant (an experiment that trains its runs in-process, a stage that reads the run it belongs to).

Written by hand rather than with the ``filelock`` package because the refusal must name the holder, which
``filelock`` does not record, and because the lock file is removed on release without the race that removing a
``flock``-ed file otherwise has (a waiter that locked the removed file checks the inode and tries again).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "FolderBusy", "folder_lock", "holder", "output_locks"]

LOCK_NAME = ".sgd-noise.lock"
_POLL_SECONDS = 0.2

_held: dict[str, list] = {}   # folder (resolved) -> [fd, depth]: this process's locks
_guard = threading.Lock()


class FolderBusy(ValueError):
    """Another process holds the folder's lock: the message names it."""


def holder(folder) -> dict | None:
    """What the lock file of ``folder`` says of its holder (``pid``, ``host``, ``command``, ``since``), or ``None``."""
    try:
        record = json.loads((Path(folder) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict | None) -> str:
    if not record:
        return "another process"
    since = record.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return (f"process {record.get('pid', '?')} on {record.get('host', '?')} (`{record.get('command', '?')}`, since "
            f"{when})")


def _try_lock(path: Path) -> int | None:
    """An fd holding the exclusive lock of ``path``, or ``None`` when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # The holder we waited for may have removed the file after we opened it: then our lock is on a file that
        # no longer has the name, and we must lock the new one instead.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def folder_lock(folder, *, option: str = "folder", wait: float | None = None):
    """Hold the exclusive lock of ``folder`` (which must exist) for the ``with`` block.

    Args:
        folder: the output folder.
        option: the option that named it, for the message (``--out``).
        wait: seconds to wait for another holder (``None`` or 0: refuse at once; ``float("inf")``: wait as long as
            it takes). Waiting can be interrupted with Ctrl-C.

    Raises:
        FolderBusy: another process holds the lock (after ``wait`` seconds): one line naming the holder.
    """
    key = os.path.realpath(folder)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key][1] -= 1
        return
    path = Path(key) / LOCK_NAME
    deadline = time.monotonic() + (wait or 0.0)
    told = False
    while True:
        try:
            fd = _try_lock(path)
        except OSError as exc:
            raise FolderBusy(f"{option} {folder}: cannot lock it ({exc.strerror or exc})") from None
        if fd is not None:
            break
        if time.monotonic() >= deadline:
            raise FolderBusy(f"{option} {folder} is in use by {_describe(holder(key))}; wait for it to finish, or "
                             "ask to wait (--wait)")
        if not told:
            print(f"{option} {folder} is in use by {_describe(holder(key))}; waiting", file=sys.stderr)
            told = True
        time.sleep(_POLL_SECONDS)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
              "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    with _guard:
        _held[key] = [fd, 1]
    try:
        yield
    finally:
        with _guard:
            _held[key][1] -= 1
            done = _held[key][1] == 0
            if done:
                del _held[key]
        if done:
            try:
                os.unlink(path)   # under the lock: a waiter that opened the old file sees the inode change
            except OSError:
                pass
            os.close(fd)


@contextmanager
def output_locks(*outputs, option: str = "output", wait: float | None = None):
    """Hold the lock of every toolkit folder that the given outputs write into, for the ``with`` block: a file's
    folder, or a folder itself, when it carries the toolkit's marker (a run, an experiment, a report, a folder of
    figures). A ``--json`` aimed into a run that another process is training, or into a report being written, is
    thus refused (``FolderBusy``) rather than written beside it. ``None`` outputs are skipped.

    Args:
        outputs: ``(path, is_folder)`` pairs.
    """
    from sgd_noise_common.files import MARKER

    folders = []
    for item in outputs:
        if item is None or item[0] is None:
            continue
        path, is_folder = Path(item[0]), item[1]
        folder = path if is_folder else path.parent
        if (folder / MARKER).exists() and os.path.realpath(folder) not in [os.path.realpath(f) for f in folders]:
            folders.append(folder)
    with ExitStack() as stack:
        for folder in folders:
            stack.enter_context(folder_lock(folder, option=option, wait=wait))
        yield
