"""Reading the files the ``ddim`` subcommands take, before the model is loaded.

Every problem (a missing, truncated or non-npz file, a missing array, the wrong dtype, an
impossible shape, NaN, values out of range) is a one-line :class:`~.base.CliError` that names
the flag, the file and what is wrong.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import CliError, plural

_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def read_npz(path: Path, flag: str, what: str) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path`` (``flag``'s file; ``what`` it should hold, for
    messages).

    Raises:
        CliError: missing, unreadable, truncated, not an .npz archive (e.g. a .npy array or
        text), or holding object arrays (which would need pickle).
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise CliError(f"{flag}: cannot read {what} from {path}: {_reason(err)}") from None
    if not magic.startswith(b"PK"):  # every zip file (an .npz is one) starts so
        kind = "a .npy array" if magic.startswith(b"\x93NUM") else "not a zip file"
        raise CliError(f"{flag}: {path} is not an .npz archive of named arrays ({kind}; "
                       f"np.savez writes those), cannot read {what} from it")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except _UNREADABLE as err:  # truncated or corrupt, or an object array (pickle)
        raise CliError(f"{flag}: cannot read {what} from {path}: {_reason(err)}") from None


def pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...], path: Path, flag: str
         ) -> np.ndarray:
    """The first of the arrays ``keys`` in ``arrays`` (read from ``path``).

    Raises:
        CliError: none of them is there (the message lists what is).
    """
    key = next((k for k in keys if k in arrays), None)
    if key is None:
        wanted = " or ".join(repr(k) for k in keys)
        raise CliError(f"{flag}: {path} has no {wanted} array (found: {sorted(arrays)})")
    return arrays[key]


def read_images(path: Path, flag: str = "--images") -> np.ndarray:
    """uint8 images (N, H, W, C) from a .png (N = 1) or an .npz with ``images``; an .npz of
    (N, H, W) greyscale images gets C = 1.

    Raises:
        CliError: unreadable, or not uint8 images with N >= 1 and no empty dimension.
    """
    npz = path.suffix.lower() == ".npz"
    if npz:
        array = pick(read_npz(path, flag, "images"), ("images",), path, flag)
    else:
        array = _read_png(path, flag)
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[..., None] if npz else array[None]
    if array.dtype != np.uint8 or array.ndim != 4 or 0 in array.shape:
        raise CliError(f"{flag}: {path}: images must be uint8 (N, H, W, C) with no empty "
                       f"dimension, got {array.dtype} {array.shape}")
    return array


def read_latents(path: Path, flag: str = "--latents") -> tuple[torch.Tensor, dict[str, Any]]:
    """The float32 ``latents`` (N, C, ...) of an .npz written by ``ddim invert``, and the
    model, grid and solver they were inverted with as far as the file records them
    (``model``, ``steps``, ``spacing``, ``solver``; {} for latents from elsewhere).

    Raises:
        CliError: unreadable, no ``latents``, not real numbers, NaN or inf, not of shape
        (N, C, ...) with N >= 1, or grid entries that are not an integer and a string.
    """
    arrays = read_npz(path, flag, "latents")
    array = pick(arrays, ("latents",), path, flag)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise CliError(f"{flag}: {path}: latents must be real numbers, got {array.dtype}")
    if array.ndim < 3 or 0 in array.shape:
        raise CliError(f"{flag}: {path}: latents must have shape (N, C, ...) with no empty "
                       f"dimension, got {array.shape}")
    if not np.isfinite(array).all():
        raise CliError(f"{flag}: {path}: latents contain NaN or inf values")
    grid = {}
    for key, kind, name in (("model", np.str_, "a string"), ("steps", np.integer, "an integer"),
                            ("spacing", np.str_, "a string"), ("solver", np.str_, "a string")):
        if key in arrays:
            value = arrays[key]
            if value.ndim != 0 or not np.issubdtype(value.dtype, kind):
                raise CliError(f"{flag}: {path}: '{key}' must be {name}, got {value.dtype} "
                               f"{value.shape}")
            grid[key] = value.item()
    return torch.from_numpy(array.astype(np.float32)), grid


def read_mask(path: Path, images_shape: tuple[int, ...], flag: str = "--mask"
              ) -> torch.Tensor:
    """A float64 mask in [0, 1] (1 = keep) for uint8 images of shape ``images_shape``
    (N, H, W, C), channels first: from a .png (white = 1) or an .npz ('mask' or 'images';
    uint8 values are divided by 255) of shape (H, W), (N, H, W) or (N, H, W, C), where N
    and C may be 1 for all images or channels.

    Raises:
        CliError: unreadable, not real numbers, NaN or values outside [0, 1], or a shape
        that does not fit the images.
    """
    if path.suffix.lower() != ".npz":
        array = read_images(path, flag)
    else:
        array = pick(read_npz(path, flag, "the mask"), ("mask", "images"), path, flag)
        if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer)
                or np.issubdtype(array.dtype, np.floating)):
            raise CliError(f"{flag}: {path}: the mask must be real numbers, got {array.dtype}")
    mask = array.astype(np.float64) / (255.0 if array.dtype == np.uint8 else 1.0)
    if not np.isfinite(mask).all() or mask.min(initial=0) < 0 or mask.max(initial=0) > 1:
        raise CliError(f"{flag}: {path}: mask values must lie in [0, 1] (1 = keep, 0 = "
                       f"generate; uint8: 0..255), got {array.min()}..{array.max()}")
    if mask.ndim == 2:
        mask = mask[None, :, :, None]
    elif mask.ndim == 3:
        mask = mask[..., None]
    n, h, w, c = images_shape
    if mask.ndim != 4 or mask.shape[1:3] != (h, w) or mask.shape[0] not in (1, n) or (
            mask.shape[3] not in (1, c)):
        raise CliError(f"{flag}: {path}: a mask of shape {array.shape} does not fit the "
                       f"{plural(n, 'image')} of shape ({h}, {w}, {c}): give (H, W), (N, H, W) or "
                       "(N, H, W, C), with N and C either 1 or the images'")
    return torch.from_numpy(mask).permute(0, 3, 1, 2)


def _read_png(path: Path, flag: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L") if img.mode in ("L", "1", "P", "I")
                              else img.convert("RGB"))
    except (*_UNREADABLE, UnidentifiedImageError) as err:
        raise CliError(f"{flag}: cannot read images from {path}: {_reason(err)}") from None


def _reason(err: BaseException) -> str:
    """An exception's reason, without the path it repeats."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__
