"""Turn samples into images: uint8 arrays, PIL images, grids, PNG and ``.npz`` files.

Samples come out of :func:`ddim.sample` as float tensors of shape (B, C, H, W) in the model's
data range, [-1, 1] for the usual image DDPMs. :func:`to_uint8` maps that range onto 0..255;
:func:`make_grid` tiles a batch into one image; :func:`save_image_grid`, :func:`save_png`
and :func:`save_npz` write files atomically with :func:`ddim.atomic.atomic_write` (a temporary file
in the target's folder, flushed to disk, then renamed over the target), so a crash or a full
disk never leaves a half-written file under the target's name.

torch, numpy and PIL do the work; nothing here encodes image formats by hand. PIL is imported
only by the functions that make PIL images or PNG files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .atomic import atomic_write
from .checks import check_float, check_int

if TYPE_CHECKING:
    from PIL import Image

DataRange = tuple[float, float]
PIL_MODES = {1: "L", 3: "RGB"}  # channels -> PIL mode, for to_pil and PNG files


def to_uint8(x: torch.Tensor | np.ndarray, data_range: Sequence[float] = (-1.0, 1.0)
             ) -> np.ndarray:
    """Float images (B, C, H, W) as a uint8 array (B, H, W, C), channels last.

    ``data_range = (lo, hi)`` maps lo to 0 and hi to 255: v = (x - lo) / (hi - lo) * 255,
    rounded half up (so 127.5 -> 128) and clamped to 0..255; values outside the range saturate.
    The arithmetic runs in float64 on the CPU, so the range's ends map exactly.

    Args:
        x: floating tensor or array of shape (B, C, H, W), any C, finite values.
        data_range: (lo, hi) with lo < hi, both finite; default (-1, 1).

    Returns:
        numpy uint8 array of shape (B, H, W, C).

    Raises:
        TypeError: x is not a floating tensor/array. ValueError: wrong ndim, an empty
        dimension, NaN/inf values or an invalid data_range.
    """
    lo, hi = _check_data_range(data_range)
    x = _check_images(x, "x")
    v = (x.detach().to(device="cpu", dtype=torch.float64) - lo) * (255.0 / (hi - lo))
    v = torch.floor(v + 0.5).clamp_(0, 255).to(torch.uint8)
    return v.permute(0, 2, 3, 1).contiguous().numpy()


def from_uint8(images: np.ndarray | torch.Tensor, data_range: Sequence[float] = (-1.0, 1.0)
               ) -> torch.Tensor:
    """The inverse of :func:`to_uint8`: uint8 (B, H, W, C) -> float32 (B, C, H, W) in range.

    0 maps to lo and 255 to hi of ``data_range``.
    """
    lo, hi = _check_data_range(data_range)
    a = torch.as_tensor(np.array(images, copy=True))  # read-only arrays (PIL) need a copy
    if a.dtype != torch.uint8 or a.ndim != 4:
        raise ValueError(f"images must be a uint8 array of shape (B, H, W, C), got dtype "
                         f"{a.dtype} and shape {tuple(a.shape)}")
    return (a.permute(0, 3, 1, 2).to(torch.float32) * ((hi - lo) / 255.0) + lo).contiguous()


def to_pil(x: torch.Tensor | np.ndarray, data_range: Sequence[float] = (-1.0, 1.0)
           ) -> list[Image.Image]:
    """Float images (B, C, H, W) as a list of B PIL images (mode ``L`` for C=1, ``RGB`` for C=3).

    Values are converted by :func:`to_uint8` (``data_range`` maps to 0..255).

    Raises:
        ValueError: C is not 1 or 3, and the errors of :func:`to_uint8`.
    """
    _check_channels(x)
    return [_pil_image(img) for img in to_uint8(x, data_range)]


def make_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 1,
              pad_value: float = 1.0) -> torch.Tensor:
    """Tile a batch (B, C, H, W) into one image (C, H', W'), row by row.

    The grid has ``ncol = min(nrow, B)`` columns and ``rows = ceil(B / ncol)`` rows; image i
    sits at row ``i // ncol``, column ``i % ncol``. ``padding`` pixels of ``pad_value`` separate
    the cells and frame the grid, and fill the cells left empty in the last row, so
    H' = rows * (H + padding) + padding and W' = ncol * (W + padding) + padding.

    Args:
        x: tensor of shape (B, C, H, W), any dtype (values are not rescaled).
        nrow: images per row, an integer >= 1; default ceil(sqrt(B)) (a square-ish grid).
        padding: width of the separating lines in pixels, an integer >= 0.
        pad_value: their value, in x's units: the default 1.0 is white for data in [-1, 1]
            or [0, 1].

    Returns:
        tensor of shape (C, H', W'), x's dtype and device.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W), got "
                        f"{type(x).__name__}")
    _check_shape(x, "x")
    b, c, h, w = x.shape
    ncol = min(math.ceil(math.sqrt(b)) if nrow is None else check_int("nrow", nrow, low=1), b)
    padding = check_int("padding", padding, low=0)
    pad_value = check_float("pad_value", pad_value)
    rows = math.ceil(b / ncol)
    cells = x.new_full((rows * ncol, c, h + padding, w + padding), pad_value)
    cells[:b, :, padding:, padding:] = x  # each cell: its image with a top and left margin
    grid = (cells.reshape(rows, ncol, c, h + padding, w + padding)
            .permute(2, 0, 3, 1, 4)  # (C, rows, H+p, ncol, W+p)
            .reshape(c, rows * (h + padding), ncol * (w + padding)))
    return torch.nn.functional.pad(grid, (0, padding, 0, padding), value=pad_value)


def save_image_grid(x: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
                    scale: int = 1, *, padding: int = 1, pad_value: float = 1.0,
                    data_range: Sequence[float] = (-1.0, 1.0)) -> Path:
    """Write a batch (B, C, H, W) as one PNG grid (see :func:`make_grid`), atomically.

    Args:
        x: floating tensor of shape (B, C, H, W) with C = 1 (greyscale) or 3 (RGB).
        path: the ``.png`` file to write; its folder must exist. An existing file is replaced.
        nrow, padding, pad_value: the grid layout, as in :func:`make_grid`.
        scale: integer upscaling factor >= 1, nearest neighbour (8×8 digits are tiny: 4 helps).
        data_range: the range of x mapped onto 0..255 (see :func:`to_uint8`).

    Returns:
        the path written, as a :class:`pathlib.Path`.

    Raises:
        TypeError / ValueError: a bad argument (see :func:`make_grid`, :func:`to_uint8`).
        OSError: the file cannot be written, naming ``path`` (or its missing or unwritable
        folder); no partial file is left.
    """
    path = _check_path(path, (".png",))
    scale = check_int("scale", scale, low=1)
    _check_channels(x)
    image = _pil_image(to_uint8(make_grid(x, nrow, padding, pad_value)[None], data_range)[0])
    if scale > 1:
        from PIL import Image

        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    atomic_write(path, lambda f: image.save(f, format="PNG"))
    return path


def save_png(path: str | os.PathLike, image_uint8: np.ndarray) -> Path:
    """Write one image as a PNG file (mode ``L`` for C=1, ``RGB`` for C=3), atomically.

    Args:
        path: the ``.png`` file to write; its folder must exist. An existing file is replaced.
        image_uint8: numpy uint8 array of shape (H, W, C) with C = 1 or 3, e.g. one image of
            what :func:`to_uint8` returns.

    Returns:
        the path written, as a :class:`pathlib.Path`.

    Raises:
        TypeError: image_uint8 is not a numpy uint8 array. ValueError: path does not end in
        ``.png``, or the array is not (H, W, C) with C = 1 or 3. OSError: the file cannot be
        written, naming ``path`` (or its missing or unwritable folder); no partial file is
        left.
    """
    path = _check_path(path, (".png",))
    _check_uint8(image_uint8, "(H, W, C)", 3)
    if image_uint8.shape[2] not in PIL_MODES:
        raise ValueError(f"image_uint8 must have 1 (greyscale) or 3 (RGB) channels, got shape "
                         f"{image_uint8.shape}")
    image = _pil_image(image_uint8)
    atomic_write(path, lambda f: image.save(f, format="PNG"))
    return path


def save_npz(path: str | os.PathLike, images_uint8: np.ndarray, **arrays: Any) -> Path:
    """Write images and extra arrays to a compressed ``.npz`` file, atomically.

    ``np.load(path)["images"]`` gives the images back; each keyword becomes an array of its
    own (scalars and strings become 0-d arrays), readable without ``allow_pickle``.

    Args:
        path: the ``.npz`` file to write; its folder must exist. An existing file is replaced.
        images_uint8: numpy uint8 array of shape (N, H, W, C), as :func:`to_uint8` returns.
        **arrays: metadata or other arrays (numbers, strings, numeric arrays; not objects).

    Returns:
        the path written, as a :class:`pathlib.Path`.

    Raises:
        TypeError: not uint8 images, or an array that would need pickle. ValueError: path
        does not end in ``.npz``, the images are not 4-D, or a keyword is ``images``.
        OSError: the file cannot be written, naming ``path`` (or its missing or unwritable
        folder); no partial file is left.
    """
    path = _check_path(path, (".npz",))
    _check_uint8(images_uint8, "(N, H, W, C)", 4, name="images_uint8")
    if "images" in arrays:
        raise ValueError("'images' is the name of the images array; pick another keyword")
    extra = {name: np.asarray(value) for name, value in arrays.items()}
    for name, value in extra.items():
        if value.dtype.hasobject:
            raise TypeError(f"{name} must be a number, string or numeric array (an object "
                            f"array would need pickle to load), got {type(arrays[name]).__name__}")
    atomic_write(path, lambda f: np.savez_compressed(f, images=images_uint8, **extra))
    return path


# ---------------------------------------------------------------------------- helpers
def _check_path(path: Any, suffixes: tuple[str, ...]) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a string or path, got {type(path).__name__}")
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"path must end in {' or '.join(suffixes)}, got {str(path)!r}")
    return path


def _check_uint8(array: Any, shape: str, ndim: int, name: str = "image_uint8") -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise TypeError(f"{name} must be a numpy uint8 array (see ddim.images.to_uint8), "
                        f"got {getattr(array, 'dtype', type(array).__name__)}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")


def _check_shape(x: torch.Tensor | np.ndarray, name: str) -> None:
    if x.ndim != 4 or 0 in x.shape:
        raise ValueError(f"{name} must have shape (B, C, H, W) with no empty dimension, got "
                         f"{tuple(x.shape)}")


def _check_images(x: Any, name: str) -> torch.Tensor:
    """x as a tensor: floating, (B, C, H, W), finite."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape (B, C, H, W), "
                        f"got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must hold floating values in the data range, got dtype "
                        f"{x.dtype}")
    _check_shape(x, name)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def _check_channels(x: torch.Tensor | np.ndarray) -> None:
    if x.ndim == 4 and x.shape[1] not in PIL_MODES:
        raise ValueError(f"images must have 1 (greyscale) or 3 (RGB) channels, got "
                         f"{x.shape[1]} in shape {tuple(x.shape)}")


def _check_data_range(data_range: Any) -> DataRange:
    if (isinstance(data_range, (str, bytes)) or not isinstance(data_range, Sequence)
            or len(data_range) != 2):
        raise TypeError(f"data_range must be a pair (lo, hi), got {data_range!r}")
    lo = check_float("data_range[0]", data_range[0])
    hi = check_float("data_range[1]", data_range[1])
    if not lo < hi:
        raise ValueError(f"data_range must have lo < hi, got {(lo, hi)}")
    return lo, hi


def _pil_image(array_hwc: np.ndarray) -> Image.Image:
    """One (H, W, C) uint8 array as a PIL image (C = 1 or 3)."""
    from PIL import Image

    return Image.fromarray(array_hwc[:, :, 0] if array_hwc.shape[2] == 1 else array_hwc)
