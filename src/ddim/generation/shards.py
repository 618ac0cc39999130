"""The shard files of a :func:`ddim.generation.generate.generate` run (:mod:`.packing` joins them).

The run's folder::

    run.json          everything that determines the images (:mod:`ddim.generation.manifest`), first
    run.lock          the lock of the process writing the folder
    (:mod:`ddim.generation.folder_lock`) shard-00000.npz   ``images`` (n, H, W, C) uint8 and
    ``indices`` (n,) int64 of samples shard-00001.npz   k·shard_size .. min((k+1)·shard_size, num)
    - 1; the last one is partial ...
    png/000123.png    one PNG per sample, when asked for

Each shard also holds ``run_id``, the identity of the run that wrote it
(:func:`ddim.generation.manifest.run_identity` of its run.json): a shard of another run (one whose
run.json was replaced while it still wrote) is never taken for one of this run's. Every file
is written atomically (:func:`ddim.atomic.atomic_write`): a crash, Ctrl-C or a full disk leaves
whole files or none. This module knows the formats; :mod:`ddim.generation.generate` decides what to
write when.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..images import save_npz, save_png
from .run_files import MANIFEST, write_run_file

PNG_DIR = "png"
_SHARD_FILE = re.compile(r"^shard-(\d+)\.npz$")
_TEMP_GLOBS = (".shard-*.tmp", f".{MANIFEST}.*.tmp", f"{PNG_DIR}/.*.tmp")


class ShardError(ValueError):
    """A shard file that cannot be used; the message says why: missing, unreadable, written
    by another run, or holding other samples."""


def shard_name(k: int) -> str:
    """File name of shard ``k``: ``shard-00007.npz``."""
    return f"shard-{k:05d}.npz"


def shard_range(k: int, num: int, shard_size: int) -> tuple[int, int]:
    """Sample indices [lo, hi) of shard ``k`` of a run of ``num`` samples."""
    return k * shard_size, min((k + 1) * shard_size, num)


def count_shards(num: int, shard_size: int) -> int:
    """Number of shards of a run: ceil(num / shard_size)."""
    return -(-num // shard_size)


def shard_numbers(out: Path) -> list[int]:
    """The k of every ``shard-k.npz`` file in folder ``out``, sorted ([] if no such folder)."""
    names = os.listdir(out) if out.is_dir() else []
    return sorted(int(m.group(1)) for m in map(_SHARD_FILE.match, names) if m)


# ---------------------------------------------------------------------------- shards, PNGs
def read_shard(path: Path, lo: int, hi: int, hwc: tuple[int, int, int], run_id: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """(images (hi-lo, H, W, C) uint8, indices lo..hi-1) of the complete shard at ``path``
    that the run of identity ``run_id`` wrote for samples [lo, hi).

    Raises:
        ShardError: the file is missing, unreadable (truncated, corrupt), written by another
        run (or by a version of ddim that stored no identity), or holds anything else.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            images, indices = data["images"], data["indices"]
            written_by = str(data["run_id"]) if "run_id" in data.files else None
    except FileNotFoundError:
        raise ShardError("missing") from None
    except Exception as err:  # truncated or corrupt (BadZipFile, zlib.error, KeyError...)
        raise ShardError(f"unreadable ({type(err).__name__})") from None
    if written_by != run_id:
        raise ShardError("written by another run")
    if (images.dtype != np.uint8 or images.shape != (hi - lo, *hwc)
            or not np.array_equal(indices, np.arange(lo, hi))):
        raise ShardError("holds other samples than its name says")
    return images, indices


def write_shard(path: Path, images: np.ndarray, lo: int, run_id: str) -> None:
    """Write uint8 ``images`` (n, H, W, C) of samples lo.. as a shard of the run of identity
    ``run_id``. Raises OSError as :func:`ddim.generation.run_files.write_run_file`."""
    indices = np.arange(lo, lo + len(images), dtype=np.int64)
    write_run_file(path, lambda p: save_npz(p, images, indices=indices, run_id=run_id))


def write_pngs(out: Path, images: np.ndarray, lo: int, num: int,
               only_missing: bool = False) -> None:
    """``png/<index>.png`` for uint8 ``images`` (n, H, W, C), C = 1 or 3, of samples lo.. of
    a run of ``num``; OSError as :func:`write_shard`."""
    folder = out / PNG_DIR
    folder.mkdir(exist_ok=True)
    width = max(6, len(str(num - 1)))
    for i, image in enumerate(images, start=lo):
        path = folder / f"{i:0{width}d}.png"
        if not (only_missing and path.is_file()):
            write_run_file(path, lambda p, im=image: save_png(p, im))


def remove_temp_files(out: Path) -> None:
    """Delete the temporary files a killed process left in ``out`` (SIGKILL, power loss).

    Only the holder of the folder's lock (:mod:`ddim.generation.folder_lock`) may call this,
    before its run writes: a live writer's temporary files would go too."""
    for pattern in _TEMP_GLOBS:
        for tmp in out.glob(pattern):
            tmp.unlink(missing_ok=True)


def remove_run_files(out: Path) -> None:
    """Delete run.json first (so a crash never pairs it with old shards), then the shards and
    the PNGs of folder ``out``."""
    (out / MANIFEST).unlink(missing_ok=True)
    for k in shard_numbers(out):
        (out / shard_name(k)).unlink(missing_ok=True)
    for file in (out / PNG_DIR).glob("*.png"):
        if file.stem.isdigit():
            file.unlink()
