"""Atomic file writes: a reader sees the old file or the new one, never a partial file."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, then rename.

    The temporary file is flushed and fsynced before ``os.replace``; on any error it is
    removed and the target is left as it was. Returns the path written.

    Raises:
        OSError (its subclass for the errno, e.g. FileNotFoundError) whose ``filename`` is
        ``path``, never the temporary file: a missing folder says "its folder '...' does not
        exist", an unwritable one that it is not writable, a full disk its reason.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _naming(err, path, _FOLDER_PROBLEMS.get(err.errno)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise
    return path


_FOLDER_PROBLEMS = {errno.ENOENT: "does not exist", errno.ENOTDIR: "is not a folder",
                    errno.EACCES: "is not writable", errno.EPERM: "is not writable",
                    errno.EROFS: "is on a read-only filesystem"}


def _naming(err: OSError, path: Path, folder_problem: str | None = None) -> OSError:
    """``err`` again, about ``path``: its reason, or what is wrong with the folder."""
    reason = err.strerror or str(err)
    if folder_problem is not None:
        reason = f"its folder '{path.parent}' {folder_problem}"
    return OSError(err.errno, reason, str(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
