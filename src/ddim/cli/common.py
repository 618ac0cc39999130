"""What the ``ddim`` subcommands share: errors and exit codes, the argument parser, checks of
outputs and devices, model loading, the progress bar, and reading and writing files.

Errors the user can fix are raised as :class:`CliError` with :data:`EXIT_USAGE` (2), failed
runs (the model returned NaN, the disk filled up) with :data:`EXIT_FAILURE` (1); ``ddim.cli.main``
prints them as one line. Everything here that reads a file runs before the model is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .. import NonFiniteError, Pretrained, PretrainedError, __version__, load_pretrained
from ..images import save_image_grid, save_npz, to_uint8
from ..shards import RunMismatchError

PROG = "ddim"
EXIT_USAGE = 2  # bad arguments (argparse's convention)
EXIT_FAILURE = 1  # the run itself failed
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error,
               UnidentifiedImageError)


class CliError(Exception):
    """A problem to report as ``ddim: error: <message>`` with exit status ``status``."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse, but errors become a :class:`CliError` (one line, no usage block)."""

    def error(self, message: str) -> Any:
        raise CliError(f"{message} (see '{self.prog} --help')")


def library_error(err: Exception, where: str = "") -> CliError:
    """The :class:`CliError` for an error a library call raised, ``where`` appended.

    Status 1 for a failed run (OSError: a file could not be written; NonFiniteError: the model
    returned NaN or inf), 2 for anything else (arguments the library refused). OSErrors show
    their reason only; a :class:`ddim.shards.RunMismatchError` names ``--overwrite``.
    """
    if isinstance(err, RunMismatchError):
        message = err.message("--overwrite")
    elif isinstance(err, OSError) and err.strerror:
        message = err.strerror
    else:
        message = str(err)
    failed = isinstance(err, (OSError, NonFiniteError))
    return CliError(message + where, EXIT_FAILURE if failed else EXIT_USAGE)


# ---------------------------------------------------------------------------- checks
def check_output(path: Path, suffixes: Sequence[str], flag: str = "--out") -> Path:
    """``path`` if a file with one of ``suffixes`` can be written there.

    Raises:
        CliError: another suffix, a missing or unwritable folder, or a directory at ``path``.
    """
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


def check_device(name: str | None) -> torch.device | None:
    """``--device`` as a torch.device (None stays None: the default, CPU).

    Raises:
        CliError: an unknown device, or one this machine does not have.
    """
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


def want_progress(flag: bool | None) -> bool:
    """--progress forces a bar (tqdm must be installed), --no-progress none, default: tty.

    Raises:
        CliError: --progress without tqdm installed.
    """
    wanted = sys.stderr.isatty() if flag is None else flag
    if not wanted:
        return False
    try:
        import tqdm  # noqa: F401  (an optional dependency: imported only when asked for)
    except ImportError:
        if flag:
            raise CliError("--progress needs tqdm: pip install 'ddim[progress]'") from None
        return False
    return True


def progress_bar(total_steps: int, num: int) -> Any:
    """A tqdm bar on stderr over ``total_steps`` model calls that make ``num`` images."""
    from tqdm.auto import tqdm

    return tqdm(total=total_steps, desc=f"sampling {num} images", unit="step", file=sys.stderr)


def load_model(name: str, device: torch.device | None) -> Pretrained:
    """``ddim.load_pretrained(name, device=device)``; its errors become one-line CliErrors."""
    try:
        return load_pretrained(name, device=device)
    except PretrainedError as err:
        raise CliError(str(err)) from None


# ---------------------------------------------------------------------------- reading
def read_npz(path: Path, keys: Sequence[str], what: str) -> np.ndarray:
    """The first of the arrays ``keys`` that the .npz at ``path`` holds.

    Raises:
        CliError: the file cannot be read as an .npz (missing, truncated, not a zip), or holds
        none of ``keys``; ``what`` names the contents in the message.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            key = next((k for k in keys if k in data), None)
            if key is None:
                wanted = " or ".join(repr(k) for k in keys)
                raise CliError(f"{path} has no {wanted} array (found: {sorted(data.files)})")
            return data[key]
    except _UNREADABLE as err:
        raise CliError(f"cannot read {what} from {path}: {err}") from None


def read_images(path: Path) -> np.ndarray:
    """uint8 images (N, H, W, C) from a .png (N = 1) or an .npz with ``images``; an .npz of
    (N, H, W) greyscale images gets C = 1.

    Raises:
        CliError: unreadable, or not uint8 images with N >= 1.
    """
    npz = path.suffix.lower() == ".npz"
    if npz:
        array = read_npz(path, ("images",), "images")
    else:
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("L") if img.mode in ("L", "1", "P", "I")
                                   else img.convert("RGB"))
        except _UNREADABLE as err:
            raise CliError(f"cannot read images from {path}: {err}") from None
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[..., None] if npz else array[None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[0] == 0:
        raise CliError(f"{path}: images must be uint8 (N, H, W, C), got {array.dtype} "
                       f"{array.shape}")
    return array


def read_latents(path: Path) -> torch.Tensor:
    """The float32 ``latents`` (N, C, H, W) of an .npz written by ``ddim invert``.

    Raises:
        CliError: unreadable, no ``latents``, not numbers, or not of shape (N, C, ...) with
        N >= 1.
    """
    array = read_npz(path, ("latents",), "latents")
    if not np.issubdtype(array.dtype, np.number):
        raise CliError(f"{path}: latents must be numbers, got {array.dtype}")
    latents = torch.from_numpy(array.astype(np.float32))
    if latents.ndim < 3 or latents.shape[0] == 0:
        raise CliError(f"{path}: latents must have shape (N, C, ...), got {tuple(latents.shape)}")
    return latents


# ---------------------------------------------------------------------------- writing
@contextmanager
def writing(out: Path) -> Iterator[None]:
    """Run the block that writes ``out``; an OSError (a full disk) becomes a CliError with
    status 1 naming ``out`` (the library's atomic writes leave no partial file)."""
    try:
        yield
    except OSError as err:
        raise CliError(f"cannot write {out}: {err.strerror or err}", EXIT_FAILURE) from None


def write_images(out: Path, images: torch.Tensor, data_range: Sequence[float], scale: int,
                 **meta: Any) -> None:
    """Float ``images`` (N, C, H, W) in ``data_range`` as a PNG grid upscaled ``scale`` times,
    or as an .npz of uint8 images (N, H, W, C) plus ``meta``, atomically.

    Raises:
        CliError: with status 1 when the file cannot be written.
    """
    with writing(out):
        if out.suffix.lower() == ".png":
            save_image_grid(images, out, scale=scale, data_range=data_range)
        else:
            save_npz(out, to_uint8(images, data_range), ddim_version=__version__, **meta)
