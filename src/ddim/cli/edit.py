"""``ddim invert``, ``ddim inpaint`` and ``ddim img2img``: edit existing images.

::

    ddim invert  --model digits --images in.npz --steps 50 --out latents.npz
    ddim sample  --model digits --latents latents.npz --steps 50 --out back.png
    ddim inpaint --model digits --images in.npz --keep left --steps 50 --out filled.png
    ddim img2img --model digits --images in.npz --strength 0.5 --steps 50 --out edited.png

Images are read from a PNG (one image) or an .npz with ``images``, uint8 (N, H, W, C) (what
``ddim sample`` and ``ddim generate --pack`` write), before the model is loaded.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..atomic import atomic_write
from ..editing.img2img import img2img
from ..editing.inpaint import check_resample, inpaint
from ..editing.inversion import METHODS, check_inversion, invert
from ..images import from_uint8
from ..loading.pretrained import Pretrained
from ..sampling.guidance import cycled_labels
from ..sampling.noise import sample_generators
from .base import CliError, plural
from .common import (
    check_class_options,
    check_device,
    check_output,
    library_error,
    load_model,
    model_labels,
    sampling_settings,
    write_images,
    writing,
)
from .files import read_images, read_mask
from .options import add_options, library_options, natural_int, number_in, positive_int

KEEP = ("left", "right", "top", "bottom")
IMAGE_FORMATS = (".png", ".npz")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the ``invert``, ``inpaint`` and ``img2img`` subcommands to ``commands``."""
    p = _add_parser(commands, "invert", "encode images to DDIM latents x_T (η = 0)",
                    "Deterministic DDIM inversion x0 -> x_T (or with a multistep --solver). "
                    "The .npz records --steps, --spacing and --solver; decode it with "
                    "`ddim sample --latents FILE` on that grid, with that solver.",
                    "output .npz with 'latents' float32 (N, C, H, W)")
    p.add_argument("--method", choices=METHODS, default="ddim",
                   help="ddim: one model call per step; fixed_point: implicit steps that "
                        "reconstruct much more closely (default: %(default)s)")
    p.add_argument("--max-iters", type=positive_int, default=5,
                   help="fixed_point: extra model calls per step at most (default: "
                        "%(default)s)")
    p.set_defaults(run=run_invert)

    p = _add_parser(commands, "inpaint", "fill masked-out pixels with the model",
                    "Keep the pixels where the mask is 1 (exactly) and generate the rest.",
                    "output .png grid or .npz")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--mask", type=Path,
                       help="mask image (.png) or .npz ('mask' or 'images'): white/1 = keep")
    group.add_argument("--keep", choices=KEEP, help="keep this half of every image")
    p.add_argument("--resample", type=natural_int, default=0,
                   help="RePaint rounds per step (default: %(default)s)")
    p.set_defaults(run=run_inpaint)

    p = _add_parser(commands, "img2img", "re-generate images from a chosen noise level",
                    "Noise the images to the level --strength, then denoise (SDEdit with "
                    "DDIM; deterministic with η=0).", "output .png grid or .npz")
    p.add_argument("--strength", type=number_in(0.0, 1.0), required=True,
                   help="the noise level to start from, in [0, 1]: 0 returns the images, 1 "
                        "starts from pure noise (t = T-1), whatever --steps and --spacing")
    p.set_defaults(run=run_img2img)


def _add_parser(commands: argparse._SubParsersAction, name: str, summary: str,
                description: str, out_help: str) -> argparse.ArgumentParser:
    """A subparser with the shared options, --images and a required --out."""
    p = commands.add_parser(name, help=summary, description=description)
    add_options(p, name)
    p.add_argument("--images", type=Path, required=True,
                   help="input images: a .png, or an .npz with 'images' uint8 (N, H, W, C)")
    p.add_argument("--out", type=Path, required=True, help=out_help)
    return p


def run_invert(args: argparse.Namespace) -> int:
    """``ddim invert``: images -> latents (.npz), recording the grid they belong to."""
    start = time.perf_counter()
    out = check_output(args.out, (".npz",))
    try:  # before the images are read and the model loads
        check_inversion(args.solver, args.method)
    except ValueError as err:
        raise CliError(f"--solver/--method: {err}") from None
    bundle, images, labels = _load(args, read_images(args.images))
    latents = _run(lambda: invert(bundle, images, method=args.method,
                                  max_iters=args.max_iters, class_labels=labels,
                                  **library_options(args, "invert")))
    arrays = dict(latents=latents.cpu().numpy().astype(np.float32), model=str(args.model),
                  steps=args.steps, spacing=args.spacing, solver=args.solver,
                  method=args.method,
                  class_labels=None if labels is None else labels.numpy(),
                  guidance_scale=args.guidance_scale, ddim_version=__version__)
    with writing(out):
        atomic_write(out, lambda f: np.savez(f, **{k: v for k, v in arrays.items()
                                                   if v is not None}))
    print(f"wrote {plural(len(latents), 'latent')} to {out} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def run_inpaint(args: argparse.Namespace) -> int:
    """``ddim inpaint``: fill the unknown pixels."""
    start = time.perf_counter()
    out = check_output(args.out, IMAGE_FORMATS)
    try:  # before the images are read and the model loads
        check_resample(args.resample, args.solver)
    except ValueError as err:
        raise CliError(f"--resample/--solver: {err}") from None
    uint8 = read_images(args.images)
    mask = None if args.keep else read_mask(args.mask, uint8.shape)
    bundle, images, labels = _load(args, uint8)
    mask = _half_mask(images, args.keep) if args.keep else mask.to(images.device, images.dtype)
    gens = sample_generators(args.seed, 0, len(images))
    result = _run(lambda: inpaint(bundle, images, mask, resample=args.resample, generator=gens,
                                  class_labels=labels, **library_options(args, "inpaint")))
    write_images(out, result, bundle.data_range, args.scale, **_meta(args, labels))
    print(f"wrote {plural(len(result), 'inpainted image')} to {out} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def run_img2img(args: argparse.Namespace) -> int:
    """``ddim img2img``: re-generate from a noise level."""
    start = time.perf_counter()
    out = check_output(args.out, IMAGE_FORMATS)
    bundle, images, labels = _load(args, read_images(args.images))
    gens = sample_generators(args.seed, 0, len(images))
    result = _run(lambda: img2img(bundle, images, args.strength, generator=gens,
                                  class_labels=labels, **library_options(args, "img2img")))
    write_images(out, result, bundle.data_range, args.scale, strength=args.strength,
                 **_meta(args, labels))
    print(f"wrote {plural(len(result), 'image')} to {out} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


# ---------------------------------------------------------------------------- helpers
def _load(args: argparse.Namespace, uint8: np.ndarray
          ) -> tuple[Pretrained, torch.Tensor, torch.Tensor | None]:
    """After the checks that need no model: the bundle; ``uint8`` images (N, H, W, C) as
    float32 (N, C, H, W) in its data range on its device (refused when their shape is not
    the model's, or for a latent model one its autoencoder cannot take); and their labels
    (N,) from --class (image i: entry i mod its length)."""
    device = check_device(args.device)
    sampling_settings(args, args.command)  # the sampling options, checked before loading
    check_class_options(args)
    bundle = load_model(args.model, device)
    resolved = model_labels(args, bundle)
    images = from_uint8(uint8, bundle.data_range).to(device or "cpu")
    want = tuple(bundle.sample_shape)
    if bundle.autoencoder is not None:  # a latent model: any size its autoencoder takes
        try:
            bundle.latent_shape_for(tuple(images.shape), f"--images {args.images}")
        except ValueError as err:
            raise CliError(str(err)) from None
    elif tuple(images.shape[1:]) != want:
        raise CliError(f"--images: {args.images} holds images of shape "
                       f"{tuple(images.shape[1:])} (C, H, W), the model makes {want}")
    labels = None if resolved is None else cycled_labels(resolved, 0, len(images))
    return bundle, images, labels


def _meta(args: argparse.Namespace, labels: torch.Tensor | None) -> dict[str, Any]:
    """What an edit's .npz records besides the images: the model and the settings, as every
    command records them (:meth:`ddim.generation.settings.SamplingSettings.recorded`), the
    labels being the images' own."""
    recorded = sampling_settings(args, args.command).recorded()
    recorded["class_labels"] = None if labels is None else labels.numpy()
    return dict(model=str(args.model), **recorded)


def _run(edit: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``edit()``, its errors as CliErrors (status 2 for refused arguments, 1 for NaN)."""
    try:
        return edit()
    except (TypeError, ValueError) as err:
        raise library_error(err) from None


def _half_mask(images: torch.Tensor, keep: str) -> torch.Tensor:
    """1 on the kept half of each image, 0 on the other."""
    mask = torch.zeros((1, 1, *images.shape[2:]), dtype=images.dtype, device=images.device)
    h, w = images.shape[2] // 2, images.shape[3] // 2
    region = {"left": (slice(None), slice(None, w)), "right": (slice(None), slice(w, None)),
              "top": (slice(None, h), slice(None)), "bottom": (slice(h, None), slice(None))}
    mask[(..., *region[keep])] = 1
    return mask
