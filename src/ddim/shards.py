"""The files of a :func:`ddim.generate.generate` run, and :func:`pack`, which joins them.

The run's folder::

    run.json          everything that determines the images (written first, atomically)
    shard-00000.npz   ``images`` (n, H, W, C) uint8 and ``indices`` (n,) int64 of samples
    shard-00001.npz   k·shard_size .. min((k+1)·shard_size, num) - 1; the last one is partial
    ...
    png/000123.png    one PNG per sample, when asked for

Every file is written atomically (:func:`ddim.io.atomic_write`): a crash, Ctrl-C or a full
disk leaves whole files or none. This module knows the formats; :mod:`ddim.generate` decides
what to write when.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .images import save_npz, save_png
from .io import atomic_write_text
from .models import model_device_dtype
from .noise import SEED_RULE
from .pretrained import BUNDLED_MODELS, WEIGHT_NAMES, Pretrained

MANIFEST = "run.json"
FORMAT = "ddim-generate/1"
PNG_DIR = "png"
_SHARD_FILE = re.compile(r"^shard-(\d+)\.npz$")
_TEMP_GLOBS = (".shard-*.tmp", f".{MANIFEST}.*.tmp", f"{PNG_DIR}/.*.tmp")


class RunMismatchError(ValueError):
    """The folder holds another run's files, or shards without a run.json to check them by.

    ``fields`` names the run.json entries that differ (none without a run.json). The message
    names the remedy ``overwrite=True``; :meth:`message` spells it for another interface."""

    def __init__(self, problem: str, fields: tuple[str, ...] = ()) -> None:
        self.problem, self.fields = problem, tuple(fields)
        super().__init__(self.message("overwrite=True"))

    def message(self, overwrite: str) -> str:
        """The error message, with the option that starts over spelt ``overwrite``."""
        if self.fields:
            return (f"{self.problem}. Rerun with its arguments to resume it, use another "
                    f"folder, or pass {overwrite} to delete its shards and start over")
        return f"{self.problem}; pass {overwrite} to delete them, or use another folder"

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (broadcast to other ranks)
        return type(self), (self.problem, self.fields)


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


def _names(ks: list[int], limit: int = 10) -> str:
    names = ", ".join(shard_name(k) for k in ks[:limit])
    return names + (f" and {len(ks) - limit} more" if len(ks) > limit else "")


# ---------------------------------------------------------------------------- run.json
def make_manifest(bundle: Pretrained, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The contents of run.json: the model's identity, then ``settings`` (num, steps, eta,
    seed, spacing, shard_size), the seed rule and the ddim version; JSON types only."""
    _, model_dtype = model_device_dtype(bundle)
    schedule = bundle.schedule.alphas_cumprod.numpy().astype("<f8").tobytes()
    manifest = {
        "format": FORMAT,
        "model": _model_name(bundle),
        "weights": _weights_identity(bundle),
        "model_dtype": str(model_dtype).removeprefix("torch.") if model_dtype else None,
        "schedule_sha256": hashlib.sha256(schedule).hexdigest(),
        "prediction_type": bundle.prediction_type,
        "sample_shape": list(bundle.sample_shape),
        "data_range": [float(v) for v in bundle.data_range],
        **settings,
        "seed_rule": SEED_RULE,
        "ddim_version": __version__,
    }
    return json.loads(json.dumps(manifest))  # as it will read back


def read_manifest(path: Path) -> dict[str, Any] | None:
    """run.json as a dict; None if it does not exist. Raises ValueError if it cannot be
    read or is not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write run.json into ``out`` atomically (OSError: see :func:`write_shard`)."""
    text = json.dumps(manifest, indent=2) + "\n"
    _write_or_explain(out / MANIFEST, lambda p: atomic_write_text(p, text))


def check_same_run(out: Path, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Raise :class:`RunMismatchError` unless folder ``out``, whose run.json reads ``old``
    (None: none), can hold the run ``new``: the same run, or no run and no shard files."""
    if old is None and shard_numbers(out):
        raise RunMismatchError(f"out_dir {str(out)!r} holds shard files but no {MANIFEST}, so "
                               "they cannot be checked")
    if old is None or old == new:
        return
    fields = tuple(k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k))
    shown = ", ".join(f"{k} ({_short(old.get(k))} there, {_short(new.get(k))} now)"
                      for k in fields)
    raise RunMismatchError(f"out_dir {str(out)!r} holds another run: its {MANIFEST} differs "
                           f"in {shown}", fields)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_name(bundle: Pretrained) -> str:
    name = bundle.name
    # a folder: recorded absolute, so that it reads the same from any working directory
    if name and name not in BUNDLED_MODELS and Path(name).is_dir():
        return str(Path(name).resolve())
    return name


def _weights_identity(bundle: Pretrained) -> dict[str, Any] | None:
    """sha256 of the weights file (safetensors or bin), else of the parameters' bytes."""
    network = getattr(bundle, "model", None)
    config = getattr(network, "config", None)
    folder = getattr(config, "_name_or_path", None) if config is not None else None
    if folder and Path(folder).is_dir():
        for name in WEIGHT_NAMES:
            file = Path(folder) / name
            if file.is_file():
                digest = hashlib.sha256()
                with open(file, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                return {"file": name, "sha256": digest.hexdigest()}
    if isinstance(network, torch.nn.Module):
        digest = hashlib.sha256()
        for key, tensor in network.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return {"state_dict_sha256": digest.hexdigest()}
    return None


# ---------------------------------------------------------------------------- shards, PNGs
def read_shard(path: Path, lo: int, hi: int, hwc: tuple[int, int, int]
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """(images (hi-lo, H, W, C) uint8, indices lo..hi-1) of a complete, readable shard for
    samples [lo, hi); None when it is missing, unreadable, or holds anything else."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images, indices = data["images"], data["indices"]
    except Exception:  # missing, truncated or corrupt (BadZipFile, zlib.error, KeyError...)
        return None
    if (images.dtype != np.uint8 or images.shape != (hi - lo, *hwc)
            or not np.array_equal(indices, np.arange(lo, hi))):
        return None
    return images, indices


def write_shard(path: Path, images: np.ndarray, lo: int) -> None:
    """Write uint8 ``images`` (n, H, W, C) of samples lo.. as a shard. Raises OSError with the
    failure's errno, naming the file and saying that a rerun with the same arguments resumes."""
    indices = np.arange(lo, lo + len(images), dtype=np.int64)
    _write_or_explain(path, lambda p: save_npz(p, images, indices=indices))


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
            _write_or_explain(path, lambda p, im=image: save_png(p, im))


def _write_or_explain(path: Path, write: Callable[[Path], Any]) -> None:
    """Run ``write(path)``, an atomic write; an OSError gets a message saying what to do."""
    try:
        write(path)
    except OSError as err:
        reason = err.strerror or str(err)
        hint = ("free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT)
                else "fix the cause")
        raise OSError(err.errno, f"cannot write {path}: {reason}; no partial file is left and "
                                 f"finished shards are kept: {hint} and rerun with the same "
                                 "arguments to resume") from err


def remove_temp_files(out: Path) -> None:
    """Delete the temporary files a killed process left in ``out`` (SIGKILL, power loss)."""
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


# ---------------------------------------------------------------------------- pack
def pack(out_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Join the shards of the run in ``out_dir`` into one ``.npz`` at ``path``, atomically.

    The file holds ``images`` (num, H, W, C) uint8 in index order and the run's settings
    (``manifest``: run.json as text, plus ``model``, ``steps``, ``eta``, ``seed``, ``spacing``,
    ``num``, ``seed_rule``, ``ddim_version``).

    Raises:
        ValueError: no run.json in out_dir, ``path`` not ending in ``.npz``, shards missing or
            unreadable (listed), or shard files that are not part of the run.
        OSError: ``path`` cannot be written (no partial file is left).
    """
    out = Path(out_dir)
    manifest = read_manifest(out / MANIFEST)
    if manifest is None:
        raise ValueError(f"out_dir {str(out)!r} holds no {MANIFEST}: not the folder of a "
                         "generate run")
    if not str(path).lower().endswith(".npz"):
        raise ValueError(f"path must end in .npz, got {str(path)!r}")
    num, shard_size = manifest["num"], manifest["shard_size"]
    c, h, w = manifest["sample_shape"]
    n = count_shards(num, shard_size)
    extra = [k for k in shard_numbers(out) if k >= n]
    if extra:
        raise ValueError(f"{out} holds shard files that are not part of its run of {n} shards: "
                         f"{_names(extra)}")
    images = np.empty((num, h, w, c), dtype=np.uint8)
    seen = np.zeros(num, dtype=np.int64)
    missing = []
    for k in range(n):
        lo, hi = shard_range(k, num, shard_size)
        arrays = read_shard(out / shard_name(k), lo, hi, (h, w, c))
        if arrays is None:
            missing.append(k)
            continue
        images[lo:hi], indices = arrays
        np.add.at(seen, indices, 1)
    if missing:
        raise ValueError(f"cannot pack {out}: {len(missing)} of {n} shards missing or "
                         f"unreadable: {_names(missing)}; rerun the generation with the "
                         "same arguments to make them")
    if not (seen == 1).all():  # cannot happen with valid shards; checked all the same
        raise ValueError(f"cannot pack {out}: sample indices not covered exactly once, e.g. "
                         f"{np.flatnonzero(seen != 1)[:10].tolist()}")
    return save_npz(path, images, manifest=json.dumps(manifest), model=manifest["model"],
                    steps=manifest["steps"], eta=manifest["eta"], seed=manifest["seed"],
                    spacing=manifest["spacing"], num=num, seed_rule=manifest["seed_rule"],
                    ddim_version=manifest["ddim_version"])
