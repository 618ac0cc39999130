"""``ddim eval``: the Fréchet distance (and class histogram) of images against real data.

::

    ddim eval --model digits --steps 10 --num 1000
    ddim eval --images samples.npz --reference real.npz --features mymodule:features

The default features and reference follow the images' shape
(``ddim.evaluation.kits.default_kit``): 8×8 digits are compared with scikit-learn's 1797 digits
in the digits classifier's features, 28×28 digits with the 1000 held-out MNIST digits in the MNIST
classifier's. That data needs the ``eval`` extra (``pip install 'ddim[eval]'``); it, the files and
the options are checked before any sampling.
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

from ..atomic import atomic_write_text
from ..evaluation.kits import default_kit, evaluate, reference_images, require_reference
from ..images import from_uint8
from .base import CliError, plural
from .common import (
    check_class_options,
    check_device,
    check_output,
    describe,
    load_model,
    sampling_settings,
    want_progress,
    writing,
)
from .files import read_images
from .options import add_options
from .sample import add_num, sample_images


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand to ``commands``."""
    p = commands.add_parser(
        "eval", help="Fréchet distance (and class histogram) of samples against real data",
        description="Fréchet distance between feature statistics of generated and reference "
                    "images. Images come from --images (an .npz of uint8 (N, H, W, C) "
                    "images, as `ddim sample`/`generate --pack` write) or are sampled with "
                    "the sampling options. Features: the shipped classifier for the images' "
                    "shape (8×8 digits, 28×28 MNIST), or any function given as --features "
                    "module:function (images -> (N, D)). The default references need the "
                    "eval extra: pip install 'ddim[eval]'.")
    add_options(p, "eval")
    add_num(p, 1000)
    p.add_argument("--images", type=Path, default=None,
                   help="evaluate these images (.npz with 'images') instead of sampling")
    p.add_argument("--reference", type=Path, default=None,
                   help="reference images (.npz with 'images'; default: the 1797 real digits "
                        "for 8×8 images, the 1000 held-out MNIST digits for 28×28)")
    p.add_argument("--features", default=None,
                   help="feature extractor as module:function (default: the shipped digits or "
                        "MNIST classifier, by image shape)")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """``ddim eval``: FD of given or freshly sampled images against a reference set."""
    start = time.perf_counter()
    if args.json is not None:
        check_output(args.json, (".json",), flag="--json")
    extractor = _import_function(args.features) if args.features else None
    reference = _read_set(args, "reference") if args.reference else None
    if args.images is not None:
        images, source = _read_set(args, "images"), str(args.images)
        reference = _default_reference(tuple(images.shape[1:])) if reference is None else reference
        _check_shape(f"--images: {args.images} holds images that", tuple(images.shape[1:]),
                     reference, extractor)
    else:
        if args.num < 2:
            raise CliError(f"--num {args.num}: the Fréchet distance needs at least 2 images")
        device = check_device(args.device)
        show_progress = want_progress(args.progress)
        settings = sampling_settings(args, "eval")
        check_class_options(args)
        if reference is None:  # before the model loads: a bundled model's kit, else both
            for kit in ([KNOWN_KITS[args.model]] if args.model in KNOWN_KITS
                        else ["digits", "mnist"]):  # (the eval extra installs both)
                _require(kit)
        bundle = load_model(args.model, device)
        if reference is None:
            reference = _default_reference(tuple(bundle.image_shape))
        _check_shape(f"--model {args.model}: its samples", tuple(bundle.image_shape),
                     reference, extractor)
        settings, images = sample_images(bundle, settings, args, device, show_progress)
        images = images.clamp(*bundle.data_range)  # what a saved image holds
        source = (f"{args.model}, {plural(args.num, 'sample')}, {describe(settings)}, seed "
                  f"{args.seed}")
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
        with writing(args.json, note=" (the result is printed above)"):
            atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


KNOWN_KITS = {"digits": "digits", "digits-cond": "digits", "mnist": "mnist",
              "mnist-cond": "mnist"}  # bundled models


def _require(kit: str) -> None:
    try:
        require_reference(kit)
    except ImportError as err:
        raise CliError(f"{err} (or pass --reference FILE.npz)") from None


def _default_reference(shape: tuple[int, ...]) -> torch.Tensor:
    """The shipped real images for images of ``shape`` (C, H, W), or a CliError."""
    try:
        kit = default_kit(shape)
    except ValueError as err:
        raise CliError(f"{err}: --reference FILE.npz and --features module:function") from None
    _require(kit)
    return reference_images(kit)


def _read_set(args: argparse.Namespace, name: str) -> torch.Tensor:
    """--images or --reference as float (N, C, H, W) in [-1, 1], N >= 2."""
    path = getattr(args, name)
    images = from_uint8(read_images(path, f"--{name}"))
    if len(images) < 2:
        raise CliError(f"--{name}: {path} holds {plural(len(images), 'image')}; the Fréchet "
                       "distance needs at least 2")
    return images


def _check_shape(what: str, shape: tuple[int, ...], reference: torch.Tensor,
                 extractor: Callable[..., Any] | None) -> None:
    """Images of ``shape`` (C, H, W) must match the reference's, and a shipped classifier's
    input for the default features (:func:`default_kit`); ``what`` starts the message."""
    want = tuple(reference.shape[1:])
    if shape != want:
        raise CliError(f"{what} have shape {shape} (C, H, W), the reference images {want}: "
                       "compare images of one kind")
    if extractor is None:
        try:
            default_kit(shape)
        except ValueError:
            raise CliError(f"{what} have shape {shape} (C, H, W); the default features (the "
                           "shipped digits and MNIST classifiers) take (1, 8, 8) or (1, 28, 28):"
                           " pass --features module:function") from None


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
