"""The folder of a :func:`ddim.generation.generate.generate` run: made ready by rank 0 before any
shard is written (created, locked, cleared of a killed process's temporary files, run.json kept or
written), and waited for by the other ranks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from . import shards
from .folder_lock import FolderLock, lock_folder
from .manifest import MANIFEST, check_same_run, read_manifest, write_manifest


def prepare_folder(out: Path, manifest: dict[str, Any], overwrite: bool) -> FolderLock:
    """Make folder ``out`` ready for the run that ``manifest`` (run.json's contents)
    describes, before any shard is written (rank 0): create it, lock it, clear temporary
    files left by killed processes, then keep a matching run.json (a resume) or write it;
    ``overwrite`` first deletes another run's files. Returns the held lock.

    Raises:
        ValueError: the folder cannot be created or written. :class:`FolderInUseError`:
        another live process holds its lock. :class:`RunMismatchError`: it holds another run
        (without ``overwrite``). OSError: run.json cannot be written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out_dir: cannot create {str(out)!r}: "
                         f"{err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"out_dir {str(out)!r} is not writable")
    lock = lock_folder(out)
    try:
        shards.remove_temp_files(out)  # ours to remove: no live writer but us
        try:
            old = read_manifest(out / MANIFEST)
        except ValueError:
            if not overwrite:
                raise
            old = {}
        if not overwrite:
            check_same_run(out, old, manifest, bool(shards.shard_numbers(out)))
            if old == manifest:
                return lock
        shards.remove_run_files(out)
        write_manifest(out, manifest)
    except BaseException:
        lock.release()
        raise
    return lock


def wait_for_manifest(out: Path, rank: int, seconds: float = 30.0) -> None:
    """Ranks > 0: wait up to ``seconds`` for rank 0's run.json to be visible in ``out``.

    Raises:
        ValueError: it did not appear (out_dir is not on a filesystem all nodes share).
    """
    deadline, path = time.monotonic() + seconds, out / MANIFEST
    while not path.is_file():
        if time.monotonic() > deadline:
            raise ValueError(f"rank {rank} cannot see {path}, which rank 0 wrote: out_dir must "
                             "be on a filesystem that every node shares")
        time.sleep(0.5)
