"""Generate many samples (50 000 for FID) exactly, resumably, on one or many processes.

:func:`generate` writes the run's folder (its files: :mod:`ddim.generation.shards`) in two halves,
which callers that coordinate processes may run themselves: :func:`prepare_run` checks everything
and makes the folder ready, :func:`make_shards` samples this process's missing shards.

- **Exact count.** The last shard holds the remainder, so there are ``num`` samples, never
  ``num`` floored to whole batches (ermongroup/ddim's FID sampler makes 49 984 of 50 000).
- **Reproducible.** Sample i draws all its noise from its own CPU generator seeded from
  (seed, i) (:func:`ddim.sampling.noise.sample_seed`), and a shard is sampled in batches that start
  at the shard's first index, so a shard's arrays are the same however many processes share the
  run and however often it was resumed. The noise also does not depend on ``batch_size`` or on
  the device; the network's arithmetic may (convolution kernels are picked per batch size and
  device), which changes a rare uint8 value by one.
- **Resumable.** Rerunning with the same arguments keeps the shards that load, hold the
  right indices and were written by this run (each shard stores the identity of its run) and
  makes the others; different arguments (``run.json`` differs) are refused unless
  ``overwrite=True``.
- **Nothing written until everything is checked.** Arguments, model, labels, device and
  process count are checked before the folder or run.json is written.
- **One writer per folder.** The folder is locked (:mod:`ddim.generation.folder_lock`) while a run
  writes it; a second process is refused at once, naming the holder.
- **Parallel.** Under torchrun (see :mod:`ddim.generation.distributed`) shard k belongs to rank
  k % world_size; rank 0 holds the lock, prepares the folder and writes ``run.json`` while the
  others wait.

:func:`pack` joins the shards into one ``.npz`` of ``images`` (num, H, W, C) in index order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checks import check_bool, check_int
from ..images import to_uint8
from ..loading.pretrained import Pretrained
from ..sampling.sampler import SampleStep
from . import distributed as dist
from . import shards
from .folder_lock import FolderInUseError, FolderLock
from .manifest import RunMismatchError, make_manifest, run_identity
from .packing import pack  # part of this module's API
from .run_checks import bundle_on_device, check_out_dir, check_world_size
from .run_folder import prepare_folder, wait_for_manifest
from .settings import RunSettings
from .shards import ShardError

__all__ = ["FolderInUseError", "GenerateResult", "Run", "RunMismatchError", "RunSettings",
           "check_world_size", "generate", "make_shards", "pack", "prepare_run"]

DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True)
class Run:
    """A run that :func:`prepare_run` checked and whose folder is ready for :func:`make_shards`.

    ``run_id`` is the identity its shards carry (:func:`ddim.generation.manifest.run_identity`);
    ``lock`` the folder's lock on rank 0 (None elsewhere), held until :meth:`close` (also on
    leaving a ``with`` block).
    """

    out: Path
    bundle: Pretrained
    device: torch.device
    settings: RunSettings
    run_id: str
    rank: int = 0
    world_size: int = 1
    lock: FolderLock | None = None
    started: float = field(default_factory=time.perf_counter)

    def close(self) -> None:
        """Release the folder's lock (on rank 0); the other ranks hold none."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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


def generate(
    model: Pretrained | str | os.PathLike,
    out_dir: str | os.PathLike,
    num: int,
    *,
    steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    spacing: str | None = None,
    timesteps: Sequence[int] | None = None,
    solver: str = "ddim",
    class_labels: int | str | Sequence[int | str] | None = None,
    guidance_scale: float | None = None,
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
        steps, eta, spacing, timesteps, solver, guidance_scale: as in :func:`ddim.sample`
            (default 50 steps on the trailing grid); run.json records the grid's arguments
            (an explicit grid as its list of timesteps).
        seed: the run's seed, >= 0; sample i uses the generator of (seed, i).
        class_labels: for a class-conditional model: one label for every sample, or a list
            of which sample i takes entry i mod its length (``range(10)`` gives balanced
            digits whatever the batches); a label is an integer or ``"null"`` (the model's null
            class: unconditional).
        shard_size: samples per shard file, >= 1 (the last shard holds the remainder).
        batch_size: samples per model call, >= 1 (at most one shard's worth is used).
        device: where to sample (default: where the bundle's network is, else CPU).
        png: also write ``png/<index>.png`` per sample (1- or 3-channel models).
        overwrite: delete another run's shards (and PNGs) in ``out_dir`` and start over,
            instead of refusing; also starts a matching run over instead of resuming it.
        rank, world_size: this process's place among the processes sharing the run; with
            world_size > 1 a torch.distributed process group must exist (see
            :func:`ddim.generation.distributed.launch`). Shard k is made by rank k % world_size.
        progress: show a tqdm bar of this process's images (rank 0 only).

    Returns:
        a :class:`GenerateResult`; all shards exist when it returns.

    Raises:
        ValueError / TypeError naming the parameter (num or shard_size < 1, world_size above
            the number of shards, an unwritable out_dir, labels the model does not have, no
            labels for a class-conditional model...), all before anything is written;
            :class:`RunMismatchError` when out_dir holds another run;
            :class:`FolderInUseError` when another live process writes out_dir; OSError when
            a file cannot be written (a full disk): finished shards are kept and no partial
            file is left, so a rerun resumes.
    """
    check_bool("progress", progress)  # here too: before anything is written
    grid = {k: v for k, v in dict(steps=steps, spacing=spacing, timesteps=timesteps).items()
            if v is not None}
    settings = RunSettings(num=num, eta=eta, solver=solver, guidance_scale=guidance_scale,
                           **grid, seed=seed, class_labels=class_labels, shard_size=shard_size,
                           batch_size=batch_size, png=png)
    with prepare_run(model, out_dir, settings, device=device, overwrite=overwrite, rank=rank,
                     world_size=world_size) as run:
        return make_shards(run, progress=progress)


def prepare_run(model: Pretrained | str | os.PathLike, out_dir: str | os.PathLike,
                settings: RunSettings, *, device: torch.device | str | None = None,
                overwrite: bool = False, rank: int = 0, world_size: int = 1) -> Run:
    """The first half of :func:`generate`: check the arguments against the model, then (rank
    0) create ``out_dir``, lock it, clear temporary files and check or write run.json.
    Arguments as in :func:`generate`; the run's seconds count from this call. Use the
    returned :class:`Run` in a ``with`` block (or call its ``close``) to release the lock.

    Raises:
        the errors of :func:`generate` that come before any sampling. Every rank raises the
        same one: rank 0's folder errors are broadcast to the others.
    """
    started = time.perf_counter()
    if not isinstance(settings, RunSettings):
        raise TypeError(f"settings must be a RunSettings, got {type(settings).__name__}")
    check_bool("overwrite", overwrite)
    world_size = check_int("world_size", world_size, low=1)
    rank = check_int("rank", rank, low=0, high=world_size - 1)
    check_world_size(settings.num, settings.shard_size, world_size)
    if world_size > 1 and not dist.is_initialized():
        raise ValueError(f"world_size={world_size} needs a torch.distributed process group "
                         "(run under torchrun, inside ddim.generation.distributed.launch())")
    out = check_out_dir(out_dir)
    bundle, device = bundle_on_device(model, device)
    settings = settings.for_model(bundle)
    settings.check_model(bundle, device)
    manifest = make_manifest(bundle, settings.recorded())

    failure, lock = None, None
    if rank == 0:
        try:
            lock = prepare_folder(out, manifest, overwrite)
        except (ValueError, OSError) as err:
            failure = err
    if world_size > 1:
        failure = dist.broadcast(failure)
        manifest = dist.broadcast(manifest)  # rank 0's record is the run's
    if failure is not None:
        raise failure
    return Run(out, bundle, device, settings, run_identity(manifest), rank, world_size, lock,
               started)


def make_shards(run: Run, *, progress: bool = False) -> GenerateResult:
    """The second half of :func:`generate`: sample this rank's missing shards of ``run``.

    Raises:
        this rank's own errors: OSError when a file cannot be written, NonFiniteError when
        the model returns NaN or inf, ValueError when rank 0's run.json cannot be seen.
    """
    check_bool("progress", progress)
    out, s, rank, world_size = run.out, run.settings, run.rank, run.world_size
    if rank != 0:
        wait_for_manifest(out, rank)
    n = shards.count_shards(s.num, s.shard_size)
    mine = range(rank, n, world_size)
    todo = [k for k in mine if not _keep_existing(run, k)]
    mine_images = sum(_size(k, s) for k in todo)
    bar = _bar(mine_images, world_size) if progress and rank == 0 and todo else None
    try:
        done = 0
        for k in todo:
            lo, hi = shards.shard_range(k, s.num, s.shard_size)
            images = _sample_shard(run, lo, hi, bar, done)
            done += hi - lo
            if s.png:
                shards.write_pngs(out, images, lo, s.num)
            shards.write_shard(out / shards.shard_name(k), images, lo, run.run_id)
    finally:
        if bar is not None:
            bar.close()

    counts = dist.all_gather((len(todo), len(mine) - len(todo), mine_images))
    generated, resumed, images = (sum(c[i] for c in counts) for i in range(3))
    return GenerateResult(out, s.num, n, generated, resumed, images,
                          time.perf_counter() - run.started)


# ---------------------------------------------------------------------------- shards
def _keep_existing(run: Run, k: int) -> bool:
    """Whether shard k exists and is this run's (then also fill in its missing PNGs)."""
    s = run.settings
    lo, hi = shards.shard_range(k, s.num, s.shard_size)
    c, h, w = run.bundle.image_shape
    try:
        images, _ = shards.read_shard(run.out / shards.shard_name(k), lo, hi, (h, w, c),
                                      run.run_id)
    except ShardError:
        return False
    if s.png:
        shards.write_pngs(run.out, images, lo, s.num, only_missing=True)
    return True


def _sample_shard(run: Run, lo: int, hi: int, bar: Any, done: int) -> np.ndarray:
    """uint8 images (hi-lo, H, W, C) of samples lo..hi-1, in batches starting at lo."""
    s = run.settings

    def on_step(a: int, b: int, step: SampleStep) -> None:
        if bar is not None:  # fractional images: the bar moves at every step
            bar.update(done + (a - lo) + (b - a) * (step.index + 1) / s.steps - bar.n)

    images = s.sample(run.bundle, lo, hi, batch_size=s.batch_size, device=run.device,
                      on_step=on_step)
    return to_uint8(images, run.bundle.data_range)


def _size(k: int, s: RunSettings) -> int:
    lo, hi = shards.shard_range(k, s.num, s.shard_size)
    return hi - lo


def _bar(total: int, world_size: int) -> Any:
    from tqdm.auto import tqdm  # imported only when a bar is asked for

    where = f" (rank 0 of {world_size})" if world_size > 1 else ""
    return tqdm(total=total, desc=f"generating{where}", unit="img",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} "
                           "[{elapsed}<{remaining}, {rate_fmt}]")
