"""Benchmark cells saved as they finish: a JSON file of results keyed by each cell's settings.

Every finished cell is merged into the file at once (atomically, under a file lock), so an
interrupted benchmark resumes where it stopped and several processes may share one file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path

from ddim.atomic import atomic_write_text


def key(cell: dict) -> str:
    """The cell's identity: its settings, sorted, as ``k=v|k=v``."""
    return "|".join(f"{k}={cell[k]}" for k in sorted(cell))


def load_cells(path: Path) -> dict:
    """The finished cells in ``path`` ({} if there is none yet)."""
    return json.loads(path.read_text()) if path.exists() else {}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save_cells(path: Path, new: dict) -> dict:
    """Merge ``new`` into ``path`` (atomically, under a lock); return the merged dict."""
    with _locked(path):
        done = load_cells(path)
        done.update(new)
        atomic_write_text(path, json.dumps(done, indent=1) + "\n")
    return done


def shard_arg(text: str) -> tuple[int, int]:
    """An argparse ``type`` for ``--shard I/N``: (I, N) with 0 <= I < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like I/N, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n
