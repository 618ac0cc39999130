"""``ddim invert``, ``ddim inpaint`` and ``ddim img2img``: edit existing images.

::

    ddim invert  --model digits --images in.npz --steps 50 --out latents.npz
    ddim sample  --model digits --latents latents.npz --steps 50 --out back.png
    ddim inpaint --model digits --images in.npz --keep left --steps 50 --out filled.png
    ddim img2img --model digits --images in.npz --strength 0.5 --steps 50 --out edited.png

Images are read from a PNG (one image) or an .npz with ``images``, uint8 (N, H, W, C) (what
``ddim sample`` and ``ddim generate --pack`` write). Errors follow :mod:`ddim.cli`: one line on
stderr, exit status 2 for bad arguments and 1 for failed runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .editing import img2img, inpaint
from .images import from_uint8
from .inversion import METHODS, invert
from .io import atomic_write
from .noise import sample_generators
from .pretrained import BUNDLED_MODELS
from .sampler import DEFAULT_STEPS
from .schedule import SPACINGS

KEEP = ("left", "right", "top", "bottom")


def _add_common(p: argparse.ArgumentParser, out_help: str) -> None:
    from .cli import _positive_int, _seed

    p.add_argument("--model", default="digits",
                   help=f"bundled model {BUNDLED_MODELS}, diffusers folder or hub id")
    p.add_argument("--images", type=Path, required=True,
                   help="input images: a .png, or an .npz with 'images' uint8 (N, H, W, C)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps (1..T)")
    p.add_argument("--spacing", choices=SPACINGS, default="leading")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--scale", type=_positive_int, default=4, help="PNG upscaling")
    p.add_argument("--out", type=Path, required=True, help=out_help)


def _add_invert_parser(commands: argparse._SubParsersAction) -> None:
    from .cli import _positive_int

    p = commands.add_parser("invert", help="encode images to DDIM latents x_T (η = 0)",
                            description="Deterministic DDIM inversion x0 -> x_T. Decode the "
                                        "result with `ddim sample --latents FILE`, same "
                                        "--steps and --spacing.")
    _add_common(p, "output .npz with 'latents' float32 (N, C, H, W)")
    p.add_argument("--method", choices=METHODS, default="ddim",
                   help="ddim: one model call per step; fixed_point: implicit steps that "
                        "reconstruct much more closely (default: %(default)s)")
    p.add_argument("--max-iters", type=_positive_int, default=5,
                   help="fixed_point: extra model calls per step at most")
    p.set_defaults(run=run_invert)


def _add_inpaint_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("inpaint", help="fill masked-out pixels with the model",
                            description="Keep the pixels where the mask is 1 (exactly) and "
                                        "generate the rest.")
    _add_common(p, "output .png grid or .npz")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--mask", type=Path,
                       help="mask image (.png) or .npz ('mask' or 'images'): white/1 = keep")
    group.add_argument("--keep", choices=KEEP, help="keep this half of every image")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--resample", type=int, default=0,
                   help="RePaint rounds per step (default: %(default)s)")
    p.set_defaults(run=run_inpaint)


def _add_img2img_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("img2img", help="re-generate images from a chosen noise level",
                            description="Noise the images to --strength of the grid, then "
                                        "denoise (SDEdit with DDIM; deterministic with η=0).")
    _add_common(p, "output .png grid or .npz")
    p.add_argument("--strength", type=float, required=True, help="in [0, 1]")
    p.add_argument("--eta", type=float, default=0.0)
    p.set_defaults(run=run_img2img)


def run_invert(args: argparse.Namespace) -> int:
    """``ddim invert``: images -> latents (.npz)."""
    from .cli import CliError, _check_output

    start = time.perf_counter()
    out = _check_output(args.out, (".npz",))
    bundle, images = _load(args)
    latents = _run(lambda: invert(bundle, images, args.steps, spacing=args.spacing,
                                  method=args.method, max_iters=args.max_iters))
    arrays = dict(latents=latents.cpu().numpy().astype(np.float32), model=str(args.model),
                  steps=args.steps, spacing=args.spacing, method=args.method,
                  ddim_version=__version__)
    try:
        atomic_write(out, lambda f: np.savez(f, **arrays))
    except OSError as err:
        raise CliError(f"cannot write {out}: {err.strerror or err}", 1) from None
    print(f"wrote {len(latents)} latents to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def run_inpaint(args: argparse.Namespace) -> int:
    """``ddim inpaint``: fill the unknown pixels."""
    from .cli import _check_output, write_images

    start = time.perf_counter()
    out = _check_output(args.out, (".png", ".npz"))
    bundle, images = _load(args)
    mask = _half_mask(images, args.keep) if args.keep else _read_mask(args.mask, images)
    gens = sample_generators(args.seed, 0, len(images))
    result = _run(lambda: inpaint(bundle, images, mask, args.steps, args.eta,
                                  resample=args.resample, generator=gens,
                                  spacing=args.spacing))
    write_images(out, result, _range(bundle), args.scale, model=str(args.model),
                 steps=args.steps, eta=args.eta, seed=args.seed)
    print(f"wrote {len(result)} inpainted images to {out} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def run_img2img(args: argparse.Namespace) -> int:
    """``ddim img2img``: re-generate from a noise level."""
    from .cli import _check_output, write_images

    start = time.perf_counter()
    out = _check_output(args.out, (".png", ".npz"))
    bundle, images = _load(args)
    gens = sample_generators(args.seed, 0, len(images))
    result = _run(lambda: img2img(bundle, images, args.strength, args.steps, args.eta,
                                  generator=gens, spacing=args.spacing))
    write_images(out, result, _range(bundle), args.scale, model=str(args.model),
                 steps=args.steps, eta=args.eta, seed=args.seed, strength=args.strength)
    print(f"wrote {len(result)} images to {out} in {time.perf_counter() - start:.1f} s")
    return 0


# ---------------------------------------------------------------------------- helpers
def _load(args: argparse.Namespace) -> tuple[Any, torch.Tensor]:
    from .cli import CliError, _check_device, load_model

    device = _check_device(args.device)
    uint8 = read_images(args.images)
    bundle = load_model(args.model, device)
    images = from_uint8(uint8, _range(bundle)).to(device or "cpu")
    want = tuple(bundle.sample_shape)
    if tuple(images.shape[1:]) != want:
        raise CliError(f"--images: {args.images} holds images of shape "
                       f"{tuple(images.shape[1:])} (C, H, W), the model makes {want}")
    return bundle, images


def _run(fn: Any) -> torch.Tensor:
    from .cli import CliError

    try:
        return fn()
    except (TypeError, ValueError) as err:
        raise CliError(str(err)) from None


def _range(bundle: Any) -> tuple[float, float]:
    return tuple(getattr(bundle, "data_range", (-1.0, 1.0)))


def read_images(path: Path) -> np.ndarray:
    """uint8 images (N, H, W, C) from a .png (N = 1) or an .npz with ``images``."""
    from PIL import Image, UnidentifiedImageError

    from .cli import CliError

    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "images" not in data:
                    raise CliError(f"{path} has no 'images' array (found: {sorted(data.files)})")
                array = data["images"]
        else:
            with Image.open(path) as img:
                array = np.asarray(img.convert("L") if img.mode in ("L", "1", "P", "I")
                                   else img.convert("RGB"))
    except (OSError, ValueError, UnidentifiedImageError) as err:
        raise CliError(f"cannot read images from {path}: {err}") from None
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[None] if path.suffix.lower() != ".npz" else array[..., None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] == 0:
        raise CliError(f"{path}: images must be uint8 (N, H, W, C), got {array.dtype} "
                       f"{array.shape}")
    return array


def _read_mask(path: Path, images: torch.Tensor) -> torch.Tensor:
    from .cli import CliError

    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                key = "mask" if "mask" in data else "images"
                array = data[key]
        except (OSError, ValueError, KeyError) as err:
            raise CliError(f"cannot read the mask from {path}: {err}") from None
        mask = torch.from_numpy(np.asarray(array, dtype=np.float64))
        if array.dtype == np.uint8:
            mask = mask / 255.0
        if mask.ndim == 4:  # (N, H, W, C) as images are stored
            mask = mask.permute(0, 3, 1, 2)
    else:
        mask = torch.from_numpy(read_images(path)).permute(0, 3, 1, 2).double() / 255.0
    return mask.to(device=images.device, dtype=images.dtype)


def _half_mask(images: torch.Tensor, keep: str) -> torch.Tensor:
    """1 on the kept half of each image, 0 on the other."""
    mask = torch.zeros((1, 1, *images.shape[2:]), dtype=images.dtype, device=images.device)
    h, w = images.shape[2] // 2, images.shape[3] // 2
    region = {"left": (slice(None), slice(None, w)), "right": (slice(None), slice(w, None)),
              "top": (slice(None, h), slice(None)), "bottom": (slice(h, None), slice(None))}
    mask[(..., *region[keep])] = 1
    return mask
