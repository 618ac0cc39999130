"""The ``ddim`` command (also ``python -m ddim``).

::

    ddim sample --model digits --steps 50 --eta 0 --num 64 --seed 0 --out samples.png

Each subcommand is a pair of functions: ``_add_<name>_parser`` declares its arguments and
``run_<name>(args) -> int`` does the work; :data:`COMMANDS` lists the pairs. Errors the user
can fix are reported as one line on stderr (``ddim: error: ...``) with exit status 2, runtime
failures (the model returned NaN, the disk filled up) with status 1; no traceback for either.

Reproducibility: sample i of a run with seed s draws all its randomness (x_T, and the noise
of η > 0 steps) from its own CPU generator seeded with :func:`sample_seed` (s, i), so the
images do not depend on ``--batch-size`` or on the device's RNG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .cli_edit import _add_img2img_parser, _add_inpaint_parser, _add_invert_parser
from .cli_generate import _add_generate_parser
from .images import save_image_grid, save_npz, to_uint8
from .io import atomic_write_text
from .noise import SEED_RULE, sample_generators, sample_seed  # noqa: F401 (re-exported)
from .pretrained import BUNDLED_MODELS, PretrainedError, load_pretrained
from .sampler import DEFAULT_STEPS, sample_iter
from .schedule import SPACINGS

PROG = "ddim"
EXIT_USAGE = 2  # bad arguments (argparse's convention)
EXIT_FAILURE = 1  # the run itself failed
SAMPLE_FORMATS = (".png", ".npz")


class CliError(Exception):
    """A problem to report as ``ddim: error: <message>`` with exit status ``status``."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse, but errors become a :class:`CliError` (one line, no usage block)."""

    def error(self, message: str) -> Any:
        raise CliError(f"{message} (see '{self.prog} --help')")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ddim`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except CliError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.status
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``ddim`` command, one subparser per entry of :data:`COMMANDS`."""
    parser = _Parser(prog=PROG, description="DDIM sampling for pretrained DDPMs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in COMMANDS:
        add_parser(commands)
    return parser


# ---------------------------------------------------------------------------- sample
def _add_sampling_args(p: argparse.ArgumentParser, num: int) -> None:
    """The options that say which images to generate (shared by sample and eval)."""
    p.add_argument("--model", default="digits",
                   help=f"bundled model {BUNDLED_MODELS}, diffusers folder or hub id "
                        "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help="number of DDIM steps, 1..T (default: %(default)s)")
    p.add_argument("--eta", type=float, default=0.0,
                   help="η >= 0: 0 deterministic DDIM, 1 DDPM-like (default: %(default)s)")
    p.add_argument("--num", type=_positive_int, default=num,
                   help="number of images (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the run; image i uses seed (seed, i) (default: %(default)s)")
    p.add_argument("--spacing", choices=SPACINGS, default="leading",
                   help="timestep spacing; trailing suits few steps (default: %(default)s)")
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="images per model call; does not change the images (default: "
                        "%(default)s)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: only when stderr is a terminal)")


def _add_sample_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "sample", help="generate images with DDIM and save them as a PNG grid or .npz",
        description="Generate images with DDIM and save them as a PNG grid (.png) or as uint8 "
                    "images (N, H, W, C) with the run's arguments (.npz).")
    _add_sampling_args(p, num=64)
    p.add_argument("--latents", type=Path, default=None,
                   help="decode these x_T (an .npz with 'latents', as `ddim invert` writes) "
                        "instead of drawing them; --num is then their count")
    p.add_argument("--out", type=Path, default=Path("samples.png"),
                   help="output file, .png (a grid) or .npz (arrays) (default: %(default)s)")
    p.add_argument("--scale", type=_positive_int, default=4,
                   help="integer upscaling of the PNG grid, nearest neighbour "
                        "(default: %(default)s)")
    p.set_defaults(run=run_sample)


def _add_eval_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval", help="Fréchet distance (and class histogram) of samples against real data",
        description="Fréchet distance between feature statistics of generated and reference "
                    "images. Images come from --images (an .npz of uint8 (N, H, W, C) "
                    "images, as `ddim sample`/`generate --pack` write) or are sampled with "
                    "the sampling options. Features: the bundled digits classifier, or any "
                    "function given as --features module:function (images -> (N, D)).")
    _add_sampling_args(p, num=1000)
    p.add_argument("--images", type=Path, default=None,
                   help="evaluate these images (.npz with 'images') instead of sampling")
    p.add_argument("--reference", type=Path, default=None,
                   help="reference images (.npz with 'images'; default: the 1797 real digits)")
    p.add_argument("--features", default=None,
                   help="feature extractor as module:function (default: digits classifier)")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(run=run_eval)


def run_sample(args: argparse.Namespace) -> int:
    """``ddim sample``: checks everything cheap first, then loads, samples and writes."""
    start = time.perf_counter()
    out = _check_output(args.out, SAMPLE_FORMATS)
    device = _check_device(args.device)
    show_progress = _want_progress(args.progress)
    bundle = load_model(args.model, device)

    latents = None
    if args.latents is not None:
        latents = read_latents(args.latents)
        args.num = latents.shape[0]
    try:
        images = _sample_in_chunks(bundle, args, device, show_progress, latents)
    except ValueError as err:  # NaN/inf from the model, or an output of the wrong shape
        raise CliError(str(err), EXIT_FAILURE) from None

    write_images(out, images, getattr(bundle, "data_range", (-1.0, 1.0)), args.scale,
                 model=str(args.model), steps=args.steps, eta=args.eta, num=args.num,
                 seed=args.seed, spacing=args.spacing, seed_rule=SEED_RULE)
    print(f"wrote {args.num} images ({args.model}, {args.steps} steps, eta {args.eta:g}, "
          f"{args.spacing} spacing) to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """``ddim eval``: FD of given or freshly sampled images against a reference set."""
    from .evaluation import evaluate
    from .images import from_uint8

    start = time.perf_counter()
    if args.json is not None:
        _check_output(args.json, (".json",), flag="--json")
    extractor = _import_function(args.features) if args.features else None
    reference = from_uint8(_read_npz_images(args.reference)) if args.reference else None
    if args.images is not None:
        images, source = from_uint8(_read_npz_images(args.images)), str(args.images)
    else:
        device = _check_device(args.device)
        bundle = load_model(args.model, device)
        try:
            images = _sample_in_chunks(bundle, args, device, _want_progress(args.progress))
        except ValueError as err:
            raise CliError(str(err), EXIT_FAILURE) from None
        lo, hi = getattr(bundle, "data_range", (-1.0, 1.0))
        images = images.clamp(lo, hi)  # what a saved image holds
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
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def _read_npz_images(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data:
                raise CliError(f"{path} has no 'images' array (found: {sorted(data.files)})")
            return data["images"]
    except (OSError, ValueError) as err:
        raise CliError(f"cannot read images from {path}: {err}") from None


def _import_function(spec: str) -> Callable[..., Any]:
    import importlib

    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CliError(f"--features must be module:function, cannot import {spec!r}: {err}"
                       ) from None
    if not callable(fn):
        raise CliError(f"--features {spec!r} is not callable")
    return fn


def write_images(out: Path, images: torch.Tensor, data_range: Sequence[float], scale: int,
                 **meta: Any) -> None:
    """A PNG grid or an .npz of uint8 images (N, H, W, C) plus ``meta``, atomically."""
    try:
        if out.suffix.lower() == ".png":
            save_image_grid(images, out, scale=scale, data_range=data_range)
        else:
            save_npz(out, to_uint8(images, data_range), ddim_version=__version__, **meta)
    except OSError as err:
        raise CliError(f"cannot write {out}: {err.strerror or err}", EXIT_FAILURE) from None

def read_latents(path: Path) -> torch.Tensor:
    """The float32 ``latents`` (N, C, H, W) of an .npz written by ``ddim invert``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "latents" not in data:
                raise CliError(f"{path} has no 'latents' array (found: {sorted(data.files)})")
            latents = torch.from_numpy(data["latents"].astype(np.float32))
    except (OSError, ValueError) as err:
        raise CliError(f"cannot read latents from {path}: {err}") from None
    if latents.ndim < 3 or latents.shape[0] == 0:
        raise CliError(f"{path}: latents must have shape (N, C, ...), got {tuple(latents.shape)}")
    return latents

def _sample_in_chunks(bundle: Any, args: argparse.Namespace, device: torch.device | None,
                      show_progress: bool, latents: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """All ``args.num`` samples (N, C, H, W) on the CPU, ``args.batch_size`` per model call."""
    chunks, bar = [], None
    try:
        for lo in range(0, args.num, args.batch_size):
            hi = min(lo + args.batch_size, args.num)
            try:  # sample_iter checks its arguments when called, before any model call
                given = {} if latents is None else {"x_T": latents[lo:hi]}
                steps = sample_iter(bundle, args.steps, args.eta, spacing=args.spacing,
                                    device=device, generator=sample_generators(args.seed, lo, hi),
                                    **(given or {"batch_size": hi - lo}))
            except (TypeError, ValueError) as err:
                raise CliError(str(err)) from None
            if show_progress and bar is None:  # created once the arguments are known good
                bar = _progress_bar(-(-args.num // args.batch_size) * args.steps, args.num)
            for step in steps:
                x = step.sample
                if bar is not None:
                    bar.update()
            chunks.append(x.cpu())
    finally:
        if bar is not None:
            bar.close()
    return torch.cat(chunks)


# ---------------------------------------------------------------------------- helpers
def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``low``, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


_positive_int, _seed = _int_at_least(1), _int_at_least(0)


def _check_output(path: Path, suffixes: Sequence[str], flag: str = "--out") -> Path:
    """Refuse an output path that cannot be written, before any compute is spent."""
    if path.suffix.lower() not in suffixes:
        raise CliError(f"{flag} must end in {' or '.join(suffixes)}, got '{path}'")
    folder = path.parent
    if not folder.is_dir():
        raise CliError(f"{flag}: folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"{flag}: folder '{folder}' is not writable")
    if path.is_dir():
        raise CliError(f"{flag}: '{path}' is a directory")
    return path


def load_model(name: str, device: torch.device | None) -> Any:
    """``load_pretrained`` with its errors as one-line CLI errors."""
    try:
        return load_pretrained(name, device=device)
    except PretrainedError as err:
        raise CliError(str(err)) from None


def _check_device(name: str | None) -> torch.device | None:
    if name is None:
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CliError(f"--device: unknown device {name!r} (e.g. cpu, cuda, cuda:1)") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type in available and not available[device.type]():
        raise CliError(f"--device: {device.type} is not available on this machine")
    if device.type == "cuda" and device.index is not None and (
            device.index >= torch.cuda.device_count()):
        raise CliError(f"--device: {name} does not exist ({torch.cuda.device_count()} CUDA "
                       "devices)")
    return device


def _want_progress(flag: bool | None) -> bool:
    """--progress forces a bar (tqdm must be installed), --no-progress none, default: tty."""
    wanted = sys.stderr.isatty() if flag is None else flag
    if not wanted:
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        if flag:
            raise CliError("--progress needs tqdm: pip install 'ddim[progress]'") from None
        return False
    return True


def _progress_bar(total_steps: int, num: int) -> Any:
    """One bar over the model calls of all chunks."""
    from tqdm.auto import tqdm

    return tqdm(total=total_steps, desc=f"sampling {num} images", unit="step", file=sys.stderr)


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_sample_parser,
    _add_eval_parser,
    _add_generate_parser,
    _add_invert_parser,
    _add_inpaint_parser,
    _add_img2img_parser,
)
