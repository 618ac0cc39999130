"""``ddim sample``: draw images with DDIM (or another solver) and save them.

::

    ddim sample --model digits --steps 50 --eta 0 --num 64 --seed 0 --out samples.png
    ddim sample --model digits-cond --class 0 1 2 3 4 5 6 7 8 9 --guidance-scale 2 --out c.png

Reproducibility: sample i of a run with seed s draws all its randomness (x_T, and the noise
of η > 0 steps) from its own CPU generator seeded with :func:`ddim.sampling.noise.sample_seed` (s,
i), and takes its class from ``--class`` by :func:`ddim.sampling.guidance.cycled_labels`, so the
images do not depend on ``--batch-size`` or on the device's RNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from ..generation.settings import SamplingSettings
from ..loading.pretrained import Pretrained
from ..sampling.noise import SEED_RULE
from .base import EXIT_FAILURE, CliError, plural
from .common import (
    check_class_options,
    check_device,
    check_output,
    describe,
    library_error,
    load_model,
    progress_bar,
    sampling_settings,
    settings_for_model,
    want_progress,
    write_images,
)
from .files import read_latents
from .options import add_options, positive_int

SAMPLE_FORMATS = (".png", ".npz")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the ``sample`` subcommand to ``commands``."""
    p = commands.add_parser(
        "sample", help="generate images with DDIM and save them as a PNG grid or .npz",
        description="Generate images with DDIM and save them as a PNG grid (.png) or as uint8 "
                    "images (N, H, W, C) with the run's arguments (.npz).")
    add_options(p, "sample")
    p.add_argument("--num", type=positive_int, default=None,
                   help=f"number of images (default: {NUM}; with --latents their count)")
    p.add_argument("--latents", type=Path, default=None,
                   help="decode these x_T (an .npz with 'latents', as `ddim invert` writes) "
                        "instead of drawing them; --num is then their count. Latents that "
                        "record their grid (steps, spacing) are decoded on that grid only")
    p.add_argument("--latents-any-grid", action="store_true",
                   help="decode --latents with another --model, --steps, --spacing or "
                        "--solver than they were inverted with (the result then does not "
                        "reconstruct the images)")
    p.add_argument("--out", type=Path, default=Path("samples.png"),
                   help="output file, .png (a grid) or .npz (arrays) (default: %(default)s)")
    p.set_defaults(run=run_sample)


NUM = 64  # images of `ddim sample` without --latents


def add_num(p: argparse.ArgumentParser, default: int) -> None:
    """Add ``--num`` (the number of images) with this ``default``."""
    p.add_argument("--num", type=positive_int, default=default,
                   help="number of images (default: %(default)s)")


def run_sample(args: argparse.Namespace) -> int:
    """``ddim sample``: checks the arguments and reads --latents, then loads, samples, writes."""
    start = time.perf_counter()
    out = check_output(args.out, SAMPLE_FORMATS)
    device = check_device(args.device)
    show_progress = want_progress(args.progress)
    settings = sampling_settings(args, "sample")
    check_class_options(args)
    latents = None
    if args.latents is not None:
        latents, grid = read_latents(args.latents)
        check_grid(args, grid)
        if args.num is not None and args.num != latents.shape[0]:
            raise CliError(f"--num {args.num}: {args.latents} holds {latents.shape[0]} "
                           "latents, one image each; leave --num out")
        args.num = latents.shape[0]
    elif args.num is None:
        args.num = NUM
    bundle = load_model(args.model, device)
    if latents is not None and tuple(latents.shape[1:]) != tuple(bundle.sample_shape):
        raise CliError(f"--latents: {args.latents} holds latents of shape "
                       f"{tuple(latents.shape[1:])} (C, H, W), the model makes "
                       f"{tuple(bundle.sample_shape)}")
    settings, images = sample_images(bundle, settings, args, device, show_progress, latents)
    write_images(out, images, bundle.data_range, args.scale, model=str(args.model),
                 num=args.num, **settings.recorded(), seed_rule=SEED_RULE)
    print(f"wrote {plural(args.num, 'image')} ({args.model}, {describe(settings)}) to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def check_grid(args: argparse.Namespace, grid: dict[str, Any]) -> None:
    """Refuse to decode latents with another model, on another grid or with another solver
    than they record (``grid``: model, steps, spacing, solver) unless --latents-any-grid.

    Raises:
        CliError: naming both and the two ways out.
    """
    if args.latents_any_grid:
        return
    if "model" in grid and not _same_model(grid["model"], str(args.model)):
        raise CliError(f"--latents: {args.latents} was inverted with --model {grid['model']}, "
                       f"but this run uses --model {args.model}: another model does not "
                       f"reconstruct the images; pass --model {grid['model']}, or "
                       "--latents-any-grid to decode them anyway")
    recorded = {k: grid[k] for k in ("steps", "spacing", "solver") if k in grid}
    asked = {k: getattr(args, k) for k in recorded}
    if recorded == asked:
        return
    show = " ".join(f"--{k} {v}" for k, v in recorded.items())
    raise CliError(f"--latents: {args.latents} was inverted on the grid of "
                   f"{', '.join(f'{k} {v}' for k, v in recorded.items())}, but this run uses "
                   f"{', '.join(f'{k} {v}' for k, v in asked.items())}: decoding on another "
                   f"grid does not reconstruct the images; pass {show}, or --latents-any-grid "
                   "to decode them anyway")


def _same_model(recorded: str, asked: str) -> bool:
    """Whether two --model values name the same model: equal, or the same folder."""
    if recorded == asked:
        return True
    a, b = Path(recorded), Path(asked)
    return a.is_dir() and b.is_dir() and a.resolve() == b.resolve()


def sample_images(bundle: Pretrained, settings: SamplingSettings, args: argparse.Namespace,
                  device: torch.device | None, show_progress: bool,
                  latents: torch.Tensor | None = None
                  ) -> tuple[SamplingSettings, torch.Tensor]:
    """(the settings with --class resolved for ``bundle``, all ``args.num`` samples (N, C, H,
    W) on the CPU), ``args.batch_size`` per model call; from ``latents`` (N, C, H, W) if
    given.

    Raises:
        CliError: status 2 for arguments the model refuses (checked before any model call),
        1 when sampling fails (the model returned NaN or inf).
    """
    settings = settings_for_model(args, settings, bundle)
    try:  # every argument against the model, before any model call
        settings.check_model(bundle, device)
    except (TypeError, ValueError) as err:
        raise library_error(err) from None
    bar = progress_bar(-(-args.num // args.batch_size) * args.steps, args.num) if (
        show_progress) else None
    try:
        images = settings.sample(bundle, 0, args.num, batch_size=args.batch_size,
                                 device=device, x_T=latents,
                                 on_step=None if bar is None else lambda *_: bar.update())
    except ValueError as err:  # NaN/inf from the model, or an output of a wrong shape
        raise CliError(str(err), EXIT_FAILURE) from None
    finally:
        if bar is not None:
            bar.close()
    return settings, images
