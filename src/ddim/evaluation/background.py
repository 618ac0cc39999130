"""The cleanness of a digit's background: how bright the pixels far from the strokes are, and
whether a lone bright pixel sits anywhere (the "speckles" of an under-trained model).

Images are read as brightness in [0, 1] (clipped from their data range). A *stroke* pixel is
one brighter than 0.5; the *background* is every pixel more than 2 pixels away from all
stroke pixels (outside the 5×5 square around each, Chebyshev distance > 2); an *isolated*
bright pixel is a stroke pixel with no other stroke pixel in its 5×5 square. Real MNIST digits
have a background of exactly 0 and, rarely, a lone bright pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .frechet import check_images

STROKE = 0.5  # brightness above which a pixel belongs to a stroke
MARGIN = 2  # pixels around the strokes that are not background


def background_stats(images: torch.Tensor, data_range: Sequence[float] = (-1.0, 1.0)
                     ) -> dict[str, float]:
    """Background brightness and lone bright pixels of single-channel images.

    Args:
        images: (N, 1, H, W) floating tensor in ``data_range``.
        data_range: (lo, hi), mapped to brightness 0 .. 1 (values outside are clipped).

    Returns:
        dict with ``background_brightness`` (the mean brightness of all background pixels
        of all images, in [0, 1]), ``background_fraction`` (the share of pixels that are
        background), ``isolated_share`` (the share of images with at least one isolated
        bright pixel) and ``n``.

    Raises:
        TypeError / ValueError: not a finite (N, 1, H, W) tensor, or a data_range with
            lo >= hi.
    """
    check_images("images", images)
    if images.shape[1] != 1:
        raise ValueError(f"images must have one channel, got shape {tuple(images.shape)}")
    lo, hi = (float(v) for v in data_range)
    if not lo < hi:
        raise ValueError(f"data_range must be (lo, hi) with lo < hi, got {tuple(data_range)}")
    u = ((images.detach().to("cpu", torch.float64) - lo) / (hi - lo)).clamp(0, 1)
    stroke = (u > STROKE).to(torch.float64)
    size = 2 * MARGIN + 1
    near = F.max_pool2d(stroke, size, stride=1, padding=MARGIN) > 0
    background = ~near
    neighbours = F.conv2d(stroke, torch.ones(1, 1, size, size, dtype=torch.float64),
                          padding=MARGIN)
    isolated = (stroke > 0) & (neighbours <= 1)  # itself only
    count = background.sum()
    return {
        "background_brightness": float((u * background).sum() / count) if count else 0.0,
        "background_fraction": float(background.to(torch.float64).mean()),
        "isolated_share": float(isolated.flatten(1).any(1).to(torch.float64).mean()),
        "n": int(images.shape[0]),
    }
