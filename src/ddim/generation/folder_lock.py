"""One writer per output folder: an advisory lock on ``run.lock`` in the folder.

:func:`lock_folder` takes an exclusive ``fcntl.flock`` on the file without waiting and writes
who holds it (pid, host, since when) into it; a second process is refused at once with a
:class:`FolderInUseError` that names the holder (:func:`check_unlocked` says so even before
that process loads its model). The kernel releases a flock when its holder
exits, however it exits (SIGKILL, a crash, power loss), so a killed run never leaves a stale
lock: the file stays, but an unlocked file blocks nobody, and the next run overwrites who
held it. The file is never deleted (deleting it would let two processes lock two different
files of the same name).

Caveat, network filesystems: on NFS (v4, or v3 with a lock manager) Linux maps flock onto
the server's byte-range locks, which processes on all clients see; other network and
cluster filesystems (some FUSE mounts, Lustre or CIFS without lock support) may lock only
within one machine, or refuse locks (then :func:`lock_folder` warns and carries on
unlocked). Where that is so, do not start two writers on one folder from two machines.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # not a POSIX system: no flock
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "run.lock"


class FolderInUseError(ValueError):
    """Another live process holds the folder's lock; ``holder`` is what it wrote about
    itself (``pid``, ``host``, ``since``; empty when it could not be read). :meth:`message`
    names the folder's parameter for another interface."""

    def __init__(self, folder: str, holder: dict[str, Any]) -> None:
        self.folder, self.holder = folder, dict(holder)
        super().__init__(self.message())

    def message(self, out_dir: str = "out_dir") -> str:
        """The error message, the folder named as ``out_dir``."""
        h = self.holder
        who = (f"pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('since', '?')}"
               if h else "it has not said who it is yet")
        return (f"{out_dir} {self.folder!r} is in use by another process ({who}): one process "
                "writes a folder at a time; wait for it to finish, or stop it and rerun to "
                "resume")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (broadcast to other ranks)
        return type(self), (self.folder, self.holder)


@dataclass
class FolderLock:
    """A held lock (see :func:`lock_folder`); :meth:`release` gives it up (also on exit)."""

    path: Path
    file: IO[str] | None

    def release(self) -> None:
        """Give the lock up (the file stays); releasing twice does nothing."""
        if self.file is not None:
            self.file.close()  # closing the last descriptor releases the flock
            self.file = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_folder(folder: Path) -> FolderLock:
    """Take the lock of ``folder`` (which must exist) for this process, without waiting
    (beyond a moment for a :func:`check_unlocked` of another process to let go).

    Raises:
        FolderInUseError: another live process holds it.
        OSError: the lock file cannot be created or written.
    Warns:
        RuntimeWarning: the filesystem supports no locks; the folder is then not locked.
    """
    path = Path(folder) / LOCK_FILE
    file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8")
    if not _flock(file, path, exclusive=True):
        file.close()
        raise FolderInUseError(str(folder), read_holder(path))
    try:
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "since": datetime.now().astimezone().isoformat(" ", "seconds")})
                   + "\n")
        file.flush()
    except OSError:
        file.close()
        raise
    return FolderLock(path, file)


def check_unlocked(folder: Path) -> None:
    """Refuse early, before a run's expensive start (loading the model), when another live
    process holds the lock of ``folder``; takes nothing (:func:`lock_folder` still must).
    A missing folder or lock file is unlocked.

    Raises:
        FolderInUseError: naming the holder.
    """
    path = Path(folder) / LOCK_FILE
    try:
        file = open(path, encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError:
        return
    with file:
        if not _flock(file, path, exclusive=False):
            raise FolderInUseError(str(folder), read_holder(path))


def _flock(file: IO[str], path: Path, exclusive: bool, tries: int = 5) -> bool:
    """Lock ``file`` without waiting: False when another process holds it. A shared
    (probing) lock is released on closing; an exclusive try is repeated over a moment, in
    case another process is only probing. Unsupported locks warn and count as taken."""
    if fcntl is None:
        warnings.warn(f"cannot lock {path}: no fcntl on this system, so nothing stops a "
                      "second process from writing the folder", RuntimeWarning, stacklevel=3)
        return True
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    for attempt in range(tries if exclusive else 1):
        if attempt:
            time.sleep(0.05)
        try:
            fcntl.flock(file.fileno(), mode)
            return True
        except BlockingIOError:
            continue
        except OSError as err:  # ENOLCK, EOPNOTSUPP...: a filesystem without flock
            warnings.warn(f"cannot lock {path} ({err.strerror or err}): this filesystem "
                          "supports no locks, so nothing stops a second process from writing "
                          "the folder", RuntimeWarning, stacklevel=3)
            return True
    return False


def read_holder(path: Path) -> dict[str, Any]:
    """What the holder of the lock file ``path`` wrote about itself ({} if unreadable)."""
    try:
        holder = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
