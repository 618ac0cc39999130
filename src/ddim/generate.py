"""Generate many samples (50 000 for FID) exactly, resumably, on one or many processes.

The output folder::

    run.json          everything that determines the images (written first, atomically)
    shard-00000.npz   ``images`` (n, H, W, C) uint8 and ``indices`` (n,) int64 of samples
    shard-00001.npz   k·shard_size .. min((k+1)·shard_size, num) - 1; the last one is partial
    ...
    png/000123.png    one PNG per sample, with ``png=True``

- **Exact count.** The last shard holds the remainder, so there are ``num`` samples, never
  ``num`` floored to whole batches (ermongroup/ddim's FID sampler makes 49 984 of 50 000).
- **Reproducible.** Sample i draws all its noise from its own CPU generator seeded from
  (seed, i) (:func:`ddim.noise.sample_seed`), and a shard is sampled in batches that start at
  the shard's first index, so a shard's arrays are the same however many processes share the
  run and however often it was resumed. The noise also does not depend on ``batch_size`` or on
  the device; the network's arithmetic may (convolution kernels are picked per batch size and
  device), which changes a rare uint8 value by one.
- **Resumable.** Shards and PNGs are written atomically (:func:`ddim.io.atomic_write`): a crash
  or Ctrl-C leaves whole files or none. Rerunning with the same arguments keeps the shards that
  load and hold the right indices and makes the others; different arguments (``run.json``
  differs) are refused unless ``overwrite=True``.
- **Parallel.** Under torchrun (see :mod:`ddim.distributed`) shard k belongs to rank
  k % world_size; rank 0 prepares the folder and writes ``run.json`` while the others wait.

:func:`pack` joins the shards into one ``.npz`` of ``images`` (num, H, W, C) in index order.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import distributed as dist
from ._checks import check_choice, check_eta, check_int
from .images import PIL_MODES, save_npz, to_uint8
from .io import atomic_write, atomic_write_text
from .models import model_device_dtype
from .noise import SEED_RULE, sample_generators
from .pretrained import BUNDLED_MODELS, WEIGHT_NAMES, Pretrained, load_pretrained
from .sampler import DEFAULT_STEPS, sample_iter
from .schedule import SPACINGS

MANIFEST = "run.json"
FORMAT = "ddim-generate/1"
DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH_SIZE = 500
PNG_DIR = "png"
_SHARD_FILE = re.compile(r"^shard-(\d+)\.npz$")
_TEMP_GLOBS = (".shard-*.tmp", f".{MANIFEST}.*.tmp", f"{PNG_DIR}/.*.tmp")


class RunMismatchError(ValueError):
    """``out_dir`` holds another run; ``fields`` names the entries of run.json that differ."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


@dataclass(frozen=True)
class GenerateResult:
    """What :func:`generate` did, summed over all processes.

    ``generated`` shards were sampled by this call, ``resumed`` were found complete and kept;
    together they are the run's ``shards``. ``seconds`` is this process's wall time.
    """

    out_dir: Path
    num: int
    shards: int
    generated: int
    resumed: int
    generated_images: int
    seconds: float


def shard_name(k: int) -> str:
    """File name of shard ``k``: ``shard-00007.npz``."""
    return f"shard-{k:05d}.npz"


def shard_range(k: int, num: int, shard_size: int) -> tuple[int, int]:
    """Sample indices [lo, hi) of shard ``k``."""
    return k * shard_size, min((k + 1) * shard_size, num)


def count_shards(num: int, shard_size: int) -> int:
    """Number of shards of a run: ceil(num / shard_size)."""
    return -(-num // shard_size)


def generate(
    model: Pretrained | str | os.PathLike,
    out_dir: str | os.PathLike,
    num: int,
    *,
    steps: int = DEFAULT_STEPS,
    eta: float = 0.0,
    seed: int = 0,
    spacing: str = "leading",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    png: bool = False,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> GenerateResult:
    """Sample ``num`` images with DDIM into shards under ``out_dir`` (see the module docstring).

    Args:
        model: a :class:`ddim.Pretrained` bundle (from :func:`ddim.load_pretrained`) or a name
            for it (bundled name, diffusers folder, hub id), loaded onto ``device``.
        out_dir: the run's folder, created if missing; one run per folder.
        num: number of samples, >= 1.
        steps, eta, spacing: as in :func:`ddim.sample`.
        seed: the run's seed, >= 0; sample i uses the generator of (seed, i).
        shard_size: samples per shard file, >= 1 (the last shard holds the remainder).
        batch_size: samples per model call, >= 1 (at most one shard's worth is used).
        device: where to sample (default: where the bundle's network is, else CPU).
        png: also write ``png/<index>.png`` per sample (1- or 3-channel models).
        overwrite: delete another run's shards (and PNGs) in ``out_dir`` and start over,
            instead of refusing; also starts a matching run over instead of resuming it.
        rank, world_size: this process's place among the processes sharing the run; with
            world_size > 1 a torch.distributed process group must exist (see
            :func:`ddim.distributed.launch`). Shard k is made by rank k % world_size.
        progress: show a tqdm bar of this process's images (rank 0 only).

    Returns:
        a :class:`GenerateResult`; all shards exist when it returns.

    Raises:
        ValueError / TypeError naming the parameter (num or shard_size < 1, world_size above
            the number of shards, an unwritable out_dir, ...); :class:`RunMismatchError` when
            out_dir holds another run; OSError when a file cannot be written (a full disk):
            finished shards are kept and no partial file is left, so a rerun resumes.
    """
    start = time.perf_counter()
    try:
        settings = _Settings.check(num, steps, eta, seed, spacing, shard_size, batch_size,
                                   png, overwrite, rank, world_size, progress)
        out = _check_out_dir(out_dir)
        bundle, device = _bundle_and_device(model, device)
        _check_sampler_arguments(bundle, settings, device)
        manifest = make_manifest(bundle, settings)
    except (TypeError, ValueError) as err:
        raise _on_all_ranks(err) from None

    failure = None
    if rank == 0:
        try:
            _prepare_folder(out, manifest, overwrite)
        except (ValueError, OSError) as err:
            failure = err
    if world_size > 1:
        failure = dist.broadcast(failure)
    if failure is not None:
        raise _on_all_ranks(failure)
    if rank != 0:
        _wait_for_manifest(out, rank)

    mine = range(rank, count_shards(num, shard_size), world_size)
    todo = [k for k in mine if not _keep_existing(out, k, settings, bundle.sample_shape)]
    mine_images = sum(_size(k, settings) for k in todo)
    bar = _bar(mine_images, rank, world_size) if progress and rank == 0 and todo else None
    try:
        done = 0
        for k in todo:
            lo, hi = shard_range(k, num, shard_size)
            images = _sample_shard(bundle, device, lo, hi, settings, bar, done)
            done += hi - lo
            if png:
                _write_pngs(out, images, lo, num)
            _write_shard(out / shard_name(k), images, lo, hi)
    finally:
        if bar is not None:
            bar.close()

    counts = dist.all_gather((len(todo), len(mine) - len(todo), mine_images))
    generated, resumed, images = (sum(c[i] for c in counts) for i in range(3))
    return GenerateResult(out, num, count_shards(num, shard_size), generated, resumed, images,
                          time.perf_counter() - start)


def pack(out_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Join the shards of the run in ``out_dir`` into one ``.npz`` at ``path``, atomically.

    The file holds ``images`` (num, H, W, C) uint8 in index order and the run's settings
    (``manifest``: run.json as text, plus ``model``, ``steps``, ``eta``, ``seed``, ``spacing``,
    ``num``, ``seed_rule``, ``ddim_version``).

    Raises:
        ValueError: no run.json in out_dir, ``path`` not ending in ``.npz``, shards missing or
            unreadable (listed), or shard files that are not part of the run.
    """
    out = Path(out_dir)
    manifest = read_manifest(out / MANIFEST)
    if manifest is None:
        raise ValueError(f"out_dir {str(out)!r} holds no {MANIFEST}: not a `ddim generate` "
                         "folder")
    if not str(path).lower().endswith(".npz"):
        raise ValueError(f"path must end in .npz, got {str(path)!r}")
    num, shard_size = manifest["num"], manifest["shard_size"]
    c, h, w = manifest["sample_shape"]
    n = count_shards(num, shard_size)
    extra = sorted(k for k in _shard_numbers(out) if k >= n)
    if extra:
        raise ValueError(f"{out} holds shard files that are not part of its run of {n} shards: "
                         f"{_names(extra)}")
    images = np.empty((num, h, w, c), dtype=np.uint8)
    seen = np.zeros(num, dtype=np.int64)
    missing = []
    for k in range(n):
        lo, hi = shard_range(k, num, shard_size)
        arrays = _read_shard(out / shard_name(k), lo, hi, (h, w, c))
        if arrays is None:
            missing.append(k)
            continue
        images[lo:hi], indices = arrays
        np.add.at(seen, indices, 1)
    if missing:
        raise ValueError(f"cannot pack {out}: {len(missing)} of {n} shards missing or "
                         f"unreadable: {_names(missing)}; rerun `ddim generate` with the same "
                         "arguments to make them")
    if not (seen == 1).all():  # cannot happen with valid shards; checked all the same
        raise ValueError(f"cannot pack {out}: sample indices not covered exactly once, e.g. "
                         f"{np.flatnonzero(seen != 1)[:10].tolist()}")
    return save_npz(path, images, manifest=json.dumps(manifest), model=manifest["model"],
                    steps=manifest["steps"], eta=manifest["eta"], seed=manifest["seed"],
                    spacing=manifest["spacing"], num=num, seed_rule=manifest["seed_rule"],
                    ddim_version=manifest["ddim_version"])


# ---------------------------------------------------------------------------- run.json
def make_manifest(bundle: Pretrained, settings: _Settings) -> dict[str, Any]:
    """The contents of run.json: everything that determines the images, JSON types only."""
    from . import __version__  # here: ddim/__init__ may import this module before defining it
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
        "num": settings.num,
        "steps": settings.steps,
        "eta": settings.eta,
        "seed": settings.seed,
        "spacing": settings.spacing,
        "shard_size": settings.shard_size,
        "seed_rule": SEED_RULE,
        "ddim_version": __version__,
    }
    return json.loads(json.dumps(manifest))  # as it will read back


def read_manifest(path: Path) -> dict[str, Any] | None:
    """run.json as a dict; None if it does not exist.

    Raises:
        ValueError: it exists but is not a JSON object.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


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
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return {"state_dict_sha256": digest.hexdigest()}
    return None


def _prepare_folder(out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Rank 0: create out_dir, clean temp files, check or write run.json (before any shard)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out_dir: cannot create {str(out)!r}: "
                         f"{err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"out_dir {str(out)!r} is not writable")
    for pattern in _TEMP_GLOBS:  # left by a killed process (SIGKILL, power loss)
        for tmp in out.glob(pattern):
            tmp.unlink(missing_ok=True)
    path = out / MANIFEST
    try:
        old = read_manifest(path)
    except ValueError:
        if not overwrite:
            raise
        old = {}
    if not overwrite:
        if old is None and any(True for _ in _shard_numbers(out)):
            raise ValueError(f"out_dir {str(out)!r} holds shard files but no {MANIFEST}, so "
                             "they cannot be checked; pass overwrite=True (--overwrite) to "
                             "delete them, or use another folder")
        if old is not None and old != manifest:
            raise _mismatch(out, old, manifest)
    if old == manifest and not overwrite:
        return
    path.unlink(missing_ok=True)  # first, so a crash below never pairs old shards with it
    for k in _shard_numbers(out):
        (out / shard_name(k)).unlink(missing_ok=True)
    for file in (out / PNG_DIR).glob("*.png"):
        if file.stem.isdigit():
            file.unlink()
    _write_or_explain(path, lambda p: atomic_write_text(p, json.dumps(manifest, indent=2)
                                                        + "\n"))


def _mismatch(out: Path, old: dict[str, Any], new: dict[str, Any]) -> RunMismatchError:
    fields = tuple(k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k))
    shown = ", ".join(f"{k} ({_short(old.get(k))} there, {_short(new.get(k))} now)"
                      for k in fields)
    return RunMismatchError(
        f"out_dir {str(out)!r} holds another run: its {MANIFEST} differs in {shown}. Rerun "
        "with its arguments to resume it, use another folder, or pass overwrite=True "
        "(--overwrite) to delete its shards and start over", fields)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _wait_for_manifest(out: Path, rank: int, seconds: float = 30.0) -> None:
    """Ranks > 0: rank 0's run.json must be visible (out_dir on a filesystem all nodes share)."""
    deadline = time.monotonic() + seconds
    while not (out / MANIFEST).is_file():
        if time.monotonic() > deadline:
            raise ValueError(f"rank {rank} cannot see {out / MANIFEST}, which rank 0 wrote: "
                             "out_dir must be on a filesystem that every node shares")
        time.sleep(0.5)


# ---------------------------------------------------------------------------- shards
def _keep_existing(out: Path, k: int, s: _Settings, sample_shape: tuple[int, ...]) -> bool:
    """Whether shard k exists and is valid (then also fill in its missing PNGs)."""
    lo, hi = shard_range(k, s.num, s.shard_size)
    c, h, w = sample_shape
    arrays = _read_shard(out / shard_name(k), lo, hi, (h, w, c))
    if arrays is None:
        return False
    if s.png:
        _write_pngs(out, arrays[0], lo, s.num, only_missing=True)
    return True


def _read_shard(path: Path, lo: int, hi: int, hwc: tuple[int, int, int]
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, indices) of a complete, readable shard for samples [lo, hi); else None."""
    try:
        with np.load(path, allow_pickle=False) as data:
            images, indices = data["images"], data["indices"]
    except FileNotFoundError:
        return None
    except Exception:  # truncated or corrupt (BadZipFile, zlib.error, ValueError, KeyError...)
        return None
    if (images.dtype != np.uint8 or images.shape != (hi - lo, *hwc)
            or not np.array_equal(indices, np.arange(lo, hi))):
        return None
    return images, indices


def _sample_shard(bundle: Pretrained, device: torch.device, lo: int, hi: int, s: _Settings,
                  bar: Any, done: int) -> np.ndarray:
    """uint8 images (hi-lo, H, W, C) of samples lo..hi-1, in batches starting at lo."""
    chunks = []
    for a in range(lo, hi, s.batch_size):
        b = min(a + s.batch_size, hi)
        steps = sample_iter(bundle, s.steps, s.eta, batch_size=b - a, spacing=s.spacing,
                            device=device, generator=sample_generators(s.seed, a, b))
        for step in steps:
            x = step.sample
            if bar is not None:  # fractional images: the bar moves at every step
                bar.update(done + (a - lo) + (b - a) * (step.index + 1) / s.steps - bar.n)
        chunks.append(to_uint8(x, bundle.data_range))
    return np.concatenate(chunks)


def _write_shard(path: Path, images: np.ndarray, lo: int, hi: int) -> None:
    indices = np.arange(lo, hi, dtype=np.int64)
    _write_or_explain(path, lambda p: save_npz(p, images, indices=indices))


def _write_pngs(out: Path, images: np.ndarray, lo: int, num: int,
                only_missing: bool = False) -> None:
    folder = out / PNG_DIR
    folder.mkdir(exist_ok=True)
    width = max(6, len(str(num - 1)))
    for i, image in enumerate(images, start=lo):
        path = folder / f"{i:0{width}d}.png"
        if only_missing and path.is_file():
            continue
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        _write_or_explain(path, lambda p, im=pil: atomic_write(p, lambda f: im.save(f, "PNG")))


def _write_or_explain(path: Path, write: Callable[[Path], Any]) -> None:
    """Run ``write(path)`` (an atomic write); an OSError gets a message saying what to do."""
    try:
        write(path)
    except OSError as err:
        reason = err.strerror or str(err)
        hint = ("free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT)
                else "fix the cause")
        raise OSError(err.errno, f"cannot write {path}: {reason}; no partial file is left and "
                                 f"finished shards are kept: {hint} and rerun with the same "
                                 "arguments to resume") from err


def _shard_numbers(out: Path) -> Iterable[int]:
    if not out.is_dir():
        return []
    return sorted(int(m.group(1)) for m in map(_SHARD_FILE.match, os.listdir(out)) if m)


def _names(ks: list[int], limit: int = 10) -> str:
    names = ", ".join(shard_name(k) for k in ks[:limit])
    return names + (f" and {len(ks) - limit} more" if len(ks) > limit else "")


def _size(k: int, s: _Settings) -> int:
    lo, hi = shard_range(k, s.num, s.shard_size)
    return hi - lo


def _bar(total: int, rank: int, world_size: int) -> Any:
    from tqdm.auto import tqdm  # imported only when a bar is asked for

    where = f" (rank 0 of {world_size})" if world_size > 1 else ""
    return tqdm(total=total, desc=f"generating{where}", unit="img",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} "
                           "[{elapsed}<{remaining}, {rate_fmt}]")


# ---------------------------------------------------------------------------- arguments
@dataclass(frozen=True)
class _Settings:
    num: int
    steps: int
    eta: float
    seed: int
    spacing: str
    shard_size: int
    batch_size: int
    png: bool
    rank: int
    world_size: int

    @classmethod
    def check(cls, num: Any, steps: Any, eta: Any, seed: Any, spacing: Any, shard_size: Any,
              batch_size: Any, png: Any, overwrite: Any, rank: Any, world_size: Any,
              progress: Any) -> _Settings:
        num = check_int("num", num, low=1)
        shard_size = check_int("shard_size", shard_size, low=1)
        for name, value in (("png", png), ("overwrite", overwrite), ("progress", progress)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        world_size = check_int("world_size", world_size, low=1)
        rank = check_int("rank", rank, low=0, high=world_size - 1)
        check_world_size(num, shard_size, world_size)
        if world_size > 1 and not dist.is_initialized():
            raise ValueError(f"world_size={world_size} needs a torch.distributed process group "
                             "(run under torchrun, inside ddim.distributed.launch())")
        return cls(num, check_int("steps", steps, low=1), check_eta(eta),
                   check_int("seed", seed, low=0), check_choice("spacing", spacing, SPACINGS),
                   shard_size, min(check_int("batch_size", batch_size, low=1), shard_size),
                   png, rank, world_size)


def check_world_size(num: int, shard_size: int, world_size: int) -> None:
    """Refuse more processes than shards: the extra ones would idle (almost always a mistake).

    Raises:
        ValueError: world_size > ceil(num / shard_size), saying how many shards there are.
    """
    shards = count_shards(num, shard_size)
    if world_size > shards:
        raise ValueError(
            f"world_size={world_size} processes but the run has only {shards} shard"
            f"{'s' if shards > 1 else ''} ({num} samples, shard_size {shard_size}): "
            f"{world_size - shards} would idle; start at most {shards} processes or pass a "
            "smaller shard_size")


def _check_out_dir(out_dir: Any) -> Path:
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a string or path, got {type(out_dir).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    return out


def _bundle_and_device(model: Any, device: Any) -> tuple[Pretrained, torch.device]:
    if isinstance(model, (str, os.PathLike)):
        model = load_pretrained(model, device=device)
    if not isinstance(model, Pretrained):
        raise TypeError("model must be a ddim.Pretrained bundle (ddim.load_pretrained) or a "
                        f"model name or folder, got {type(model).__name__}")
    model_device, _ = model_device_dtype(model)
    model_device = model_device or torch.device("cpu")
    if device is None:
        return model, model_device
    device = torch.device(device)
    if device.type != model_device.type or (
            device.index is not None and device.index != model_device.index):
        raise ValueError(f"device={str(device)!r} but the model is on {model_device}; move it "
                         "first (bundle.to(device)) or pass the model by name")
    return model, model_device


def _check_sampler_arguments(bundle: Pretrained, s: _Settings, device: torch.device) -> None:
    """Everything sample_iter checks (steps <= T, ...), before run.json is written."""
    sample_iter(bundle, s.steps, s.eta, batch_size=1, spacing=s.spacing, device=device,
                generator=sample_generators(s.seed, 0, 1))
    if s.png and bundle.sample_shape[0] not in PIL_MODES:
        raise ValueError(f"png=True needs 1- or 3-channel samples, this model makes "
                         f"{bundle.sample_shape[0]} channels")


def _on_all_ranks(err: BaseException) -> BaseException:
    """Mark an error that every process raises alike (the CLI then prints it on rank 0 only)."""
    err.same_on_all_ranks = True
    return err
