"""Writing one of a run's files (a shard, a PNG, run.json, the packed .npz): atomically, and
with an error that says what the failure means for the run (finished shards are kept; rerun
with the same arguments to resume).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "run.json"  # the record of a run, in its folder


def write_run_file(path: Path, write: Callable[[Path], Any]) -> None:
    """Run ``write(path)``, an atomic write of one of the run's files.

    Raises:
        OSError with the failure's errno, naming the file and saying that no partial file is
        left and that a rerun with the same arguments resumes.
    """
    try:
        write(path)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}; no partial file "
                                 f"is left and finished shards are kept: {remedy(err)} and "
                                 "rerun with the same arguments to resume") from err


def remedy(err: OSError) -> str:
    """What to do about a failed write: free space (a full disk or quota), else fix it."""
    return "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the cause"
