"""Joining the shards of a :func:`ddim.generation.generate.generate` run into one ``.npz``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..checks import plural
from ..images import save_npz
from .manifest import MANIFEST, read_manifest, run_identity
from .run_files import remedy
from .shards import ShardError, count_shards, read_shard, shard_name, shard_numbers, shard_range


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def pack(out_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Join the shards of the run in ``out_dir`` into one ``.npz`` at ``path``, atomically.

    The file holds ``images`` (num, H, W, C) uint8 in index order and the run's record
    (``manifest``: run.json as text), plus its ``model``, every one of its settings that is set
    (``num``, ``steps``, ``eta``, ``solver``, ``spacing``, ``seed``, ``class_labels``, ...: the
    settings run.json records, :meth:`ddim.generation.settings.RunSettings.recorded`),
    ``seed_rule`` and ``ddim_version``.

    Raises:
        ValueError: no run.json in out_dir, ``path`` not ending in ``.npz``, shard files that
            are not part of the run, or shards missing, unreadable or written by another run
            (each listed with its reason).
        OSError: ``path`` cannot be written (no partial file is left); the message says that
            the shards are complete.
    """
    out = Path(out_dir)
    manifest = read_manifest(out / MANIFEST)
    if manifest is None:
        raise ValueError(f"out_dir {str(out)!r} holds no {MANIFEST}: not the folder of a "
                         "generate run")
    if not str(path).lower().endswith(".npz"):
        raise ValueError(f"path must end in .npz, got {str(path)!r}")
    settings = manifest["settings"]
    num, shard_size, run_id = settings["num"], settings["shard_size"], run_identity(manifest)
    c, h, w = manifest.get("image_shape", manifest["sample_shape"])  # latent: decoded
    n = count_shards(num, shard_size)
    extra = [shard_name(k) for k in shard_numbers(out) if k >= n]
    if extra:
        raise ValueError(f"{out} holds shard files that are not part of its run of "
                         f"{plural(n, 'shard')}: "
                         f"{_names(extra)}")
    images = np.empty((num, h, w, c), dtype=np.uint8)
    bad = []
    for k in range(n):
        lo, hi = shard_range(k, num, shard_size)
        try:
            images[lo:hi] = read_shard(out / shard_name(k), lo, hi, (h, w, c), run_id)[0]
        except ShardError as err:
            bad.append(f"{shard_name(k)} ({err})")
    if bad:
        raise ValueError(f"cannot pack {out}: {len(bad)} of {n} shards missing, unreadable or "
                         f"not of the run its {MANIFEST} describes: {_names(bad)}; rerun the "
                         "generation with the same arguments to make them")
    recorded = {"model": manifest["model"],
                **{k: v for k, v in settings.items() if v is not None},
                "seed_rule": manifest["seed_rule"], "ddim_version": manifest["ddim_version"]}
    try:
        return save_npz(path, images, manifest=json.dumps(manifest), **recorded)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}; no partial "
                                 f"file is left, and {_shards_in(n, out)} complete: "
                                 f"{remedy(err)} and pack again") from err


def _shards_in(n: int, out: Path) -> str:
    return f"the {n} shards in {out} are" if n != 1 else f"the shard in {out} is"
