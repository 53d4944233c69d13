"""An exclusive lock on a workdir for the whole of a run: ``WORKDIR/.jaxcnn.lock``.

``fcntl.flock`` on the lock file; the holder writes ``{"pid", "host", "since", "argv"}`` into
it and empties it when done. The kernel drops the lock of a process that dies (even by
SIGKILL), so a lock file that still names a holder but can be locked is stale: it is taken over
with a notice. The lock is re-entrant within one process (the CLI takes it before the data
loads, :func:`jaxcnn.training.train` takes it again).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._checkpoint import CheckpointError

LOCK_FILE = ".jaxcnn.lock"


class WorkdirLocked(CheckpointError):
    """Another live process holds the workdir; ``holder`` is its lock record."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


_held: dict[str, list[Any]] = {}  # realpath -> [fd, count]
_guard = threading.Lock()


def _read(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace").strip()
    if not text:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {"raw": text[:200]}
    return record if isinstance(record, dict) else {"raw": text[:200]}


def _describe(record: dict[str, Any]) -> str:
    if "pid" not in record:
        return "an unknown process"
    since = record.get("since")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    return f"pid {record['pid']} on host {record.get('host', '?')}{when}"


def check_workdir(workdir: str | os.PathLike[str]) -> Path:
    """Create ``workdir`` (and parents) if needed and check it is a writable directory;
    raises :class:`CheckpointError` naming the path and the fix."""
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"--workdir {path} is a file, not a directory; choose another "
                              f"path (or remove the file)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create --workdir {path}: {e.strerror or e}; choose a "
                              f"writable location") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise CheckpointError(f"--workdir {path} is not writable (permission denied or a "
                              f"read-only file system); choose a writable location")
    return path


class WorkdirLock:
    """``with WorkdirLock(workdir): ...`` holds the workdir exclusively (re-entrant in one
    process). A second process gets :class:`WorkdirLocked` at once, naming the holder's pid
    and host; a stale lock (its holder died) is taken over, ``notice`` saying so."""

    def __init__(self, workdir: str | os.PathLike[str],
                 notice: Callable[[str], None] | None = None) -> None:
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self.notice = notice if notice is not None else (
            lambda s: print(s, file=sys.stderr, flush=True))
        self._key: str | None = None

    def acquire(self) -> WorkdirLock:
        check_workdir(self.workdir)
        key = os.path.realpath(self.path)
        with _guard:
            if key in _held:
                _held[key][1] += 1
                self._key = key
                return self
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise CheckpointError(f"cannot create the lock file {self.path}: "
                                      f"{e.strerror or e}; choose a writable --workdir") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read(fd)
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise WorkdirLocked(
                        f"{self.workdir} is in use by another jaxcnn run ({_describe(holder)}); "
                        f"wait for it to finish, stop it, or choose another --workdir",
                        holder) from None
                raise CheckpointError(f"cannot lock {self.path}: {e.strerror or e}") from e
            try:
                stale = _read(fd)
                if stale:
                    self.notice(f"jaxcnn: taking over the stale lock of {self.workdir} "
                                f"(held by {_describe(stale)}, which is no longer running)")
                record = {"pid": os.getpid(), "host": socket.gethostname(),
                          "since": time.time(), "argv": sys.argv[:8]}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            _held[key] = [fd, 1]
            self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        with _guard:
            entry = _held.get(self._key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    fd = entry[0]
                    del _held[self._key]
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, 0)  # an empty lock file: released cleanly
                    os.close(fd)  # closing drops the flock
            self._key = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
