"""Processing of the predicted clean sample x̂0 before the step uses it.

Off by default, as in the DDIM paper. Clipping to the data range is what diffusers calls
``clip_sample``; dynamic thresholding is Imagen's (Saharia et al. 2022, section 2.3): per
sample, s = a high quantile of |x̂0| (at least 1), then x̂0 = clamp(x̂0, -s, s)/s, which pulls
saturated pixels back inside the range instead of clipping them flat.
"""

from __future__ import annotations

import torch


def process_x0(
    pred_x0: torch.Tensor, *, clip_sample: float | None = None,
    dynamic_threshold: float | None = None, dynamic_threshold_max: float = 1.0,
) -> torch.Tensor:
    """Optional x̂0 processing; returns x̂0 unchanged when both options are None.

    Args:
        pred_x0: (B, ...) predicted clean sample.
        clip_sample: clamp x̂0 to [-clip_sample, clip_sample] (e.g. 1.0 for images in [-1, 1]).
        dynamic_threshold: Imagen's dynamic thresholding: per sample, s = the
            ``dynamic_threshold`` quantile (in (0, 1), e.g. 0.995) of |x̂0|, clamped to
            [1, dynamic_threshold_max]; then x̂0 = clamp(x̂0, -s, s)/s.
    """
    if clip_sample is not None:
        pred_x0 = pred_x0.clamp(-clip_sample, clip_sample)
    if dynamic_threshold is not None:
        flat = pred_x0.reshape(pred_x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, dynamic_threshold, dim=1).clamp(1.0, dynamic_threshold_max)
        s = s.to(pred_x0.dtype).reshape((-1,) + (1,) * (pred_x0.ndim - 1))
        pred_x0 = torch.maximum(torch.minimum(pred_x0, s), -s) / s
    return pred_x0
