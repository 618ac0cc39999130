"""Image-to-image (SDEdit, Meng et al. 2022, with DDIM): noise an image to the level set by
``strength``, then denoise it over the grid points below that level. The level is the same for
every spacing and step count (diffusers' ``strength`` counts grid points instead, so with
"leading" spacing strength 1 never starts from noise: its issue 7651). strength 0 returns the
image, 1 starts from t = T-1 (pure noise); with η=0 the result is a deterministic function of
the image and the noise drawn once from ``generator``. A latent model (Rombach et al. 2022)
edits the image's latents: images in, encoded, noised and denoised, decoded, images out.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..checks import check_float
from ..sampling.latents import decode_samples, encode_images, is_latent
from ..sampling.noise import Generators
from ..sampling.sampler import run
from .common import check_image, edit_plan


def img2img(
    model: Any,
    image: torch.Tensor,
    strength: float,
    steps: int | None = None,
    eta: float = 0.0,
    *,
    generator: Generators = None,
    **options: Any,
) -> torch.Tensor:
    """Re-generate ``image`` from noise level ``strength`` (SDEdit with DDIM).

    Args:
        model: as for :func:`ddim.sample`; a latent model encodes the image first and decodes
            the result (its autoencoder must take the image's size).
        image: (B, C, H, W) images in the model's data range.
        strength: in [0, 1], the noise level to start from: the image is noised to training
            step t_s = round(strength·(T-1)) (1: t = T-1, pure noise; 0: the image is
            returned), whatever the spacing and S.
        steps: S, the size of the full grid (default 50); the points of the S-step grid more
            than half a grid step (T/(2S)) below t_s are run after t_s itself, about
            strength·S model calls.
        eta, generator: as for :func:`ddim.sample`; the generator also draws the noise added
            to the image.
        **options: further :func:`ddim.sample` options (schedule, spacing, steps_offset,
            prediction_type, class_labels, guidance_scale, ...); not x_T, shape or batch_size
            (the image sets them).

    Returns:
        Edited images of ``image``'s shape (a copy of ``image`` when strength rounds to 0), in
        its dtype promoted to at least float32.

    Raises:
        TypeError / ValueError naming the parameter, before any model call.
    """
    image = check_image(image, "image")
    strength = check_float("strength", strength, low=0.0, high=1.0)
    plan = edit_plan(model, "img2img", image, dict(options, steps=steps, eta=eta,
                                                generator=generator))
    if strength == 0:
        return image.clone().to(plan.x.dtype)
    T = plan.schedule.num_train_timesteps
    t_s = round(strength * (T - 1))
    grid = [t_s, *(t for t in plan.grid if t < t_s - T / (2 * len(plan.grid)))]
    a = float(plan.schedule.alpha_bar(t_s))
    latent = is_latent(model)
    x0 = encode_images(model, image) if latent else image
    x_t = math.sqrt(a) * x0.to(plan.x.dtype) + math.sqrt(1 - a) * plan.x  # plan.x ~ N(0, I)
    x = run(plan.restarted(grid, x_t))
    return decode_samples(model, x) if latent else x
