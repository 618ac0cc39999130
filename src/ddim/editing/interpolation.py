"""Interpolation in the DDIM latent space x_T (paper, section 5.3).

With η=0 the sampler is a deterministic map x_T -> x0, so walking between two latents walks
between two images. Gaussian latents concentrate on a sphere of radius ~sqrt(d); a straight
line between two of them cuts through the low-norm interior, which the model never saw, so
the paper uses spherical interpolation (slerp), which keeps the norm statistics of N(0, I).
"""

from __future__ import annotations

from typing import Any

import torch

from ..sampling.options import check_keywords
from ..sampling.sampler import sample


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents, per sample.

    z = sin((1-α)θ)/sin θ · z0 + sin(αθ)/sin θ · z1, θ the angle between z0 and z1 (each
    sample flattened). Falls back to linear interpolation where θ ≈ 0.

    Args:
        z0, z1: (B, ...) tensors of one shape (B may be 1 and broadcast against alpha).
        alpha: a float in [0, 1], or a tensor of shape (N,) giving N points; then the result
            has shape (N, ...) and z0, z1 must have batch 1.

    Returns:
        The interpolated latents: z0's shape for a float alpha, (N, ...) for a vector.
    """
    if not isinstance(z0, torch.Tensor) or not isinstance(z1, torch.Tensor):
        raise TypeError("z0 and z1 must be torch.Tensors")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have one shape, got {tuple(z0.shape)} and "
                         f"{tuple(z1.shape)}")
    if not (z0.is_floating_point() and z1.is_floating_point()):
        raise TypeError(f"z0 and z1 must be floating tensors, got {z0.dtype} and {z1.dtype}")
    a = torch.as_tensor(alpha, dtype=torch.float64)
    if a.ndim > 1 or not torch.isfinite(a).all() or (a < 0).any() or (a > 1).any():
        raise ValueError(f"alpha must be a number or a 1-D tensor with values in [0, 1], "
                         f"got {alpha!r}")
    if a.ndim == 1:
        if z0.shape[0] != 1:
            raise ValueError(f"a vector alpha needs z0 and z1 of batch 1, got {tuple(z0.shape)}")
        return torch.cat([slerp(z0, z1, float(v)) for v in a])
    f0, f1 = z0.flatten(1).double(), z1.flatten(1).double()
    cos = (f0 * f1).sum(1) / (f0.norm(dim=1) * f1.norm(dim=1)).clamp(min=1e-30)
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    sin = torch.sin(theta)
    near = sin.abs() < 1e-6
    w0 = torch.where(near, 1 - a, torch.sin((1 - a) * theta) / torch.where(near, 1, sin))
    w1 = torch.where(near, a, torch.sin(a * theta) / torch.where(near, 1, sin))
    return (w0 * f0 + w1 * f1).reshape(z0.shape).to(z0.dtype)


def interpolation_strip(model: Any, x_T0: torch.Tensor, x_T1: torch.Tensor, num: int = 8,
                        steps: int | None = None, *, decode: bool | None = None,
                        **sample_kwargs: Any) -> torch.Tensor:
    """Decode ``num`` slerp points between two latents with deterministic DDIM (η=0).

    Args:
        model: as for :func:`ddim.sample`.
        x_T0, x_T1: two latents of shape (1, C, H, W) (or (C, H, W)); for a latent model, in
            its latent space (what :func:`ddim.invert` returns).
        num: points including both ends, >= 2.
        steps: DDIM steps (default 50, or the number of ``timesteps`` given); further
            keyword arguments go to :func:`ddim.sample` (not eta).
        decode: as for :func:`ddim.sample` (a latent model's strip is images by default).

    Returns:
        (num, C, H, W) samples, the first decoded from x_T0 and the last from x_T1 (for a
        latent model: images (num, *image_shape), unless decode=False).

    Raises:
        TypeError / ValueError naming the parameter, before any model call.
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"num must be an integer >= 2, got {num!r}")
    if "eta" in sample_kwargs:
        raise ValueError("interpolation_strip decodes with eta=0 (a deterministic map); "
                         "do not pass eta")
    check_keywords("interpolation_strip", sample_kwargs,
                   refused=("x_T", "shape", "batch_size"))
    z0 = x_T0[None] if x_T0.ndim == 3 else x_T0
    z1 = x_T1[None] if x_T1.ndim == 3 else x_T1
    latents = slerp(z0, z1, torch.linspace(0, 1, num, dtype=torch.float64))
    return sample(model, steps, 0.0, x_T=latents, decode=decode, **sample_kwargs)

