"""Processing of the predicted clean sample x̂0 before the step uses it.

Off by default, as in the DDIM paper. Clipping to the data range is what diffusers calls
``clip_sample``; dynamic thresholding is Imagen's (Saharia et al. 2022, section 2.3): per
sample, s = a high quantile of |x̂0| (at least 1), then x̂0 = clamp(x̂0, -s, s)/s, which pulls
saturated pixels back inside the range instead of clipping them flat.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

ClipSample = bool | float | tuple[float, float] | None
CLIP_SAMPLE_ALLOWED = ("None or False (off), True (the model's data range), a number c > 0 "
                       "([-c, c]) or a pair (lo, hi) with lo < hi")


def clip_range(clip_sample: Any, data_range: Sequence[float] = (-1.0, 1.0)
               ) -> tuple[float, float] | None:
    """The interval x̂0 is clipped to, from the ``clip_sample`` option; None: no clipping.

    Args:
        clip_sample: None or False (off); True (the model's ``data_range``); a number c > 0
            (the symmetric range [-c, c], diffusers' ``clip_sample_range``); or a pair
            (lo, hi) of finite numbers with lo < hi.
        data_range: the model's data range, (-1, 1) for the usual image models.

    Raises:
        TypeError / ValueError naming ``clip_sample`` and what it may be.
    """
    if clip_sample is None or clip_sample is False:
        return None
    if clip_sample is True:
        lo, hi = data_range
    elif isinstance(clip_sample, numbers.Real) and not isinstance(clip_sample, bool):
        c = float(clip_sample)
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"clip_sample must be {CLIP_SAMPLE_ALLOWED}, got {clip_sample!r}")
        lo, hi = -c, c
    elif isinstance(clip_sample, Sequence) and not isinstance(clip_sample, str) and (
            len(clip_sample) == 2 and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                          for v in clip_sample)):
        lo, hi = (float(v) for v in clip_sample)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"clip_sample must be {CLIP_SAMPLE_ALLOWED}, got {clip_sample!r}")
    else:
        raise TypeError(f"clip_sample must be {CLIP_SAMPLE_ALLOWED}, got {clip_sample!r} "
                        f"({type(clip_sample).__name__})")
    return float(lo), float(hi)


def row_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of each row of ``values`` (N, n), as ``torch.quantile(values, q,
    dim=1)`` computes it (linear interpolation between the two order statistics around rank
    q·(n-1)), for any n: torch refuses more than 2^24 values per call (its sort), so the two
    order statistics are found with ``torch.kthvalue`` instead.

    Up to 2^24 values per row the rank is computed as torch does (in the values' dtype), and
    the result equals ``torch.quantile``'s bit for bit; beyond, the rank is computed in
    float64 (torch gives no answer there).

    Args:
        values: (N, n) floating tensor, n >= 1.
        q: in [0, 1].

    Returns:
        (N,) tensor of values' dtype.
    """
    n = values.shape[1]
    rank_dtype = values.dtype if n <= 2**24 else torch.float64
    rank = torch.tensor(q, dtype=rank_dtype) * (n - 1)
    below = int(rank.floor())
    above = min(int(rank.ceil()), n - 1)
    v_below = values.kthvalue(below + 1, dim=1).values
    if above == below:
        return v_below
    v_above = values.kthvalue(above + 1, dim=1).values
    weight = (rank - below).to(values.dtype)
    return v_below.lerp(v_above, weight)


def process_x0(
    pred_x0: torch.Tensor, *, clip_sample: ClipSample = None,
    dynamic_threshold: float | None = None, dynamic_threshold_max: float = 1.0,
) -> torch.Tensor:
    """Optional x̂0 processing; returns x̂0 unchanged when both options are off.

    Args:
        pred_x0: (B, ...) predicted clean sample.
        clip_sample: clamp x̂0 to a range: a pair (lo, hi), a number c for [-c, c], or True
            for [-1, 1] (see :func:`clip_range`; the sampler resolves True to the model's
            data range first).
        dynamic_threshold: Imagen's dynamic thresholding: per sample, s = the
            ``dynamic_threshold`` quantile (in (0, 1), e.g. 0.995) of |x̂0|, clamped to
            [1, dynamic_threshold_max]; then x̂0 = clamp(x̂0, -s, s)/s (for data in
            [-1, 1]).

    Raises:
        TypeError / ValueError: a bad ``clip_sample``.
    """
    bounds = clip_range(clip_sample)
    if bounds is not None:
        pred_x0 = pred_x0.clamp(*bounds)
    if dynamic_threshold is not None:
        flat = pred_x0.reshape(pred_x0.shape[0], -1).abs().float()
        s = row_quantile(flat, dynamic_threshold).clamp(1.0, dynamic_threshold_max)
        s = s.to(pred_x0.dtype).reshape((-1,) + (1,) * (pred_x0.ndim - 1))
        pred_x0 = torch.maximum(torch.minimum(pred_x0, s), -s) / s
    return pred_x0
