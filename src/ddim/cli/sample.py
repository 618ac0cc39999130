"""``ddim sample`` and ``ddim eval``: draw images with DDIM; score images against real data.

::

    ddim sample --model digits --steps 50 --eta 0 --num 64 --seed 0 --out samples.png
    ddim eval --model digits --steps 10 --num 1000

Reproducibility: sample i of a run with seed s draws all its randomness (x_T, and the noise
of η > 0 steps) from its own CPU generator seeded with :func:`ddim.noise.sample_seed` (s, i),
so the images do not depend on ``--batch-size`` or on the device's RNG.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import Pretrained, sample_iter
from ..evaluation import evaluate
from ..images import from_uint8
from ..io import atomic_write_text
from ..noise import SEED_RULE, sample_generators
from .common import (
    EXIT_FAILURE,
    CliError,
    check_device,
    check_output,
    load_model,
    progress_bar,
    read_images,
    read_latents,
    want_progress,
    write_images,
    writing,
)
from .options import add_options, library_options, positive_int

SAMPLE_FORMATS = (".png", ".npz")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the ``sample`` and ``eval`` subcommands to ``commands``."""
    p = commands.add_parser(
        "sample", help="generate images with DDIM and save them as a PNG grid or .npz",
        description="Generate images with DDIM and save them as a PNG grid (.png) or as uint8 "
                    "images (N, H, W, C) with the run's arguments (.npz).")
    add_options(p, "sample")
    _add_num(p, 64)
    p.add_argument("--latents", type=Path, default=None,
                   help="decode these x_T (an .npz with 'latents', as `ddim invert` writes) "
                        "instead of drawing them; --num is then their count")
    p.add_argument("--out", type=Path, default=Path("samples.png"),
                   help="output file, .png (a grid) or .npz (arrays) (default: %(default)s)")
    p.set_defaults(run=run_sample)

    p = commands.add_parser(
        "eval", help="Fréchet distance (and class histogram) of samples against real data",
        description="Fréchet distance between feature statistics of generated and reference "
                    "images. Images come from --images (an .npz of uint8 (N, H, W, C) "
                    "images, as `ddim sample`/`generate --pack` write) or are sampled with "
                    "the sampling options. Features: the bundled digits classifier, or any "
                    "function given as --features module:function (images -> (N, D)).")
    add_options(p, "eval")
    _add_num(p, 1000)
    p.add_argument("--images", type=Path, default=None,
                   help="evaluate these images (.npz with 'images') instead of sampling")
    p.add_argument("--reference", type=Path, default=None,
                   help="reference images (.npz with 'images'; default: the 1797 real digits)")
    p.add_argument("--features", default=None,
                   help="feature extractor as module:function (default: digits classifier)")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(run=run_eval)


def _add_num(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--num", type=positive_int, default=default,
                   help="number of images (default: %(default)s)")


def run_sample(args: argparse.Namespace) -> int:
    """``ddim sample``: checks the arguments and reads --latents, then loads, samples, writes."""
    start = time.perf_counter()
    out = check_output(args.out, SAMPLE_FORMATS)
    device = check_device(args.device)
    show_progress = want_progress(args.progress)
    latents = None if args.latents is None else read_latents(args.latents)
    if latents is not None:
        args.num = latents.shape[0]
    bundle = load_model(args.model, device)
    if latents is not None and tuple(latents.shape[1:]) != tuple(bundle.sample_shape):
        raise CliError(f"--latents: {args.latents} holds latents of shape "
                       f"{tuple(latents.shape[1:])} (C, H, W), the model makes "
                       f"{tuple(bundle.sample_shape)}")
    images = sample_images(bundle, args, "sample", device, show_progress, latents)
    write_images(out, images, bundle.data_range, args.scale, model=str(args.model),
                 steps=args.steps, eta=args.eta, num=args.num, seed=args.seed,
                 spacing=args.spacing, seed_rule=SEED_RULE)
    print(f"wrote {args.num} images ({args.model}, {args.steps} steps, eta {args.eta:g}, "
          f"{args.spacing} spacing) to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """``ddim eval``: FD of given or freshly sampled images against a reference set."""
    start = time.perf_counter()
    if args.json is not None:
        check_output(args.json, (".json",), flag="--json")
    extractor = _import_function(args.features) if args.features else None
    reference = from_uint8(read_images(args.reference)) if args.reference else None
    if args.images is not None:
        images, source = from_uint8(read_images(args.images)), str(args.images)
    else:
        device = check_device(args.device)
        show_progress = want_progress(args.progress)
        bundle = load_model(args.model, device)
        images = sample_images(bundle, args, "eval", device, show_progress)
        images = images.clamp(*bundle.data_range)  # what a saved image holds
        source = (f"{args.model}, {args.num} samples, {args.steps} steps, eta {args.eta:g}, "
                  f"{args.spacing}, seed {args.seed}")
    try:
        result = evaluate(images, reference, extractor)
    except (TypeError, ValueError) as err:
        raise CliError(str(err)) from None
    result.update(source=source, seconds=round(time.perf_counter() - start, 2))
    print(f"FD {result['fd']:.4f} ({source}; {result['n']} vs {result['n_reference']} "
          "reference images)")
    if "classes" in result:
        print("classes " + " ".join(map(str, result["classes"])))
    if args.json is not None:
        with writing(args.json):
            atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def sample_images(bundle: Pretrained, args: argparse.Namespace, command: str,
                  device: torch.device | None, show_progress: bool,
                  latents: torch.Tensor | None = None) -> torch.Tensor:
    """All ``args.num`` samples (N, C, H, W) on the CPU, ``args.batch_size`` per model call,
    sample i from the generator of (``args.seed``, i); from ``latents`` (N, C, H, W) if given.

    Raises:
        CliError: status 2 for arguments the sampler refuses (checked before any model call),
        1 when sampling fails (the model returned NaN or inf).
    """
    chunks, bar = [], None
    options = library_options(args, command)
    try:
        for lo in range(0, args.num, args.batch_size):
            hi = min(lo + args.batch_size, args.num)
            given = {"batch_size": hi - lo} if latents is None else {"x_T": latents[lo:hi]}
            try:  # sample_iter checks its arguments when called, before any model call
                steps = sample_iter(bundle, device=device,
                                    generator=sample_generators(args.seed, lo, hi),
                                    **given, **options)
            except (TypeError, ValueError) as err:
                raise CliError(str(err)) from None
            if show_progress and bar is None:  # created once the arguments are known good
                bar = progress_bar(-(-args.num // args.batch_size) * args.steps, args.num)
            try:
                for step in steps:
                    x = step.sample
                    if bar is not None:
                        bar.update()
            except ValueError as err:  # NaN/inf from the model, or an output of a wrong shape
                raise CliError(str(err), EXIT_FAILURE) from None
            chunks.append(x.cpu())
    finally:
        if bar is not None:
            bar.close()
    return torch.cat(chunks)


def _import_function(spec: str) -> Callable[..., Any]:
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CliError(f"--features must be module:function, cannot import {spec!r}: {err}"
                       ) from None
    if not callable(fn):
        raise CliError(f"--features {spec!r} is not callable")
    return fn
