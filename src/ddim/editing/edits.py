"""Image editing with a pretrained DDPM: image-to-image and inpainting.

- :func:`img2img` (SDEdit, Meng et al. 2022, with DDIM): noise an image to the level set by
  ``strength``, then denoise it over the grid points below that level. The level is the
  same for every spacing and step count (diffusers' ``strength`` counts grid points instead,
  so with "leading" spacing strength 1 never starts from noise: its issue 7651). strength 0
  returns the image, 1 starts from t = T-1 (pure noise); with η=0 the result is a
  deterministic function of the image and the noise drawn once from ``generator``.
- :func:`inpaint`: fill the pixels where ``mask`` is 0, keep those where it is 1. After every
  step the known pixels are replaced by the known image noised to the step's new level (the
  CompVis scheme); the last step reaches ᾱ = 1, so they come out exactly as given.
  ``resample`` > 0 adds RePaint-style rounds (Lugmayr et al. 2022): the step's result is noised
  back to the current level and the step repeated, letting the generated region agree with
  the known one.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..checks import check_float, check_int
from ..sampling.model_contract import OutputProbe
from ..sampling.noise import Generators, NoiseSource
from ..sampling.options import SampleOptions, check_keywords
from ..sampling.plan import Plan, make_plan
from ..sampling.sampler import progress_bar, run, without_autograd


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
        model: as for :func:`ddim.sample`.
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
        Edited images of ``image``'s shape (a copy of ``image`` when strength rounds to 0).

    Raises:
        TypeError / ValueError naming the parameter, before any model call.
    """
    image = _check_image(image, "image")
    strength = check_float("strength", strength, low=0.0, high=1.0)
    plan = _plan(model, "img2img", image, dict(options, steps=steps, eta=eta,
                                                generator=generator))
    if strength == 0:
        return image.clone().to(plan.x.dtype)
    T = plan.schedule.num_train_timesteps
    t_s = round(strength * (T - 1))
    grid = [t_s, *(t for t in plan.grid if t < t_s - T / (2 * len(plan.grid)))]
    a = float(plan.schedule.alpha_bar(t_s))
    x_t = math.sqrt(a) * image.to(plan.x.dtype) + math.sqrt(1 - a) * plan.x  # plan.x ~ N(0, I)
    return run(plan.restarted(grid, x_t))


def inpaint(
    model: Any,
    image: torch.Tensor,
    mask: torch.Tensor,
    steps: int | None = None,
    eta: float = 0.0,
    *,
    resample: int = 0,
    generator: Generators = None,
    progress: bool = False,
    **options: Any,
) -> torch.Tensor:
    """Fill the unknown pixels of ``image`` (where ``mask`` is 0) with the model.

    Args:
        model: as for :func:`ddim.sample`.
        image: (B, C, H, W) in the model's data range; its values where mask is 0 are ignored.
        mask: 1 = known pixel, 0 = to generate; shape (B, C, H, W), or broadcastable to it
            (e.g. (1, 1, H, W)); values in {0, 1}, or in [0, 1] for a soft blend.
        steps, eta: as for :func:`ddim.sample`.
        resample: RePaint rounds per step (0: none); each costs one more model call per step.
        generator: noise for x_T, for the known region at every step and for η > 0.
        progress: tqdm progress bar.
        **options: further :func:`ddim.sample` options (schedule, spacing, prediction_type,
            class_labels, guidance_scale, ...); not x_T, shape or batch_size.

    Returns:
        (B, C, H, W): equal to ``image`` wherever mask is 1 (exactly, with the default final
        ᾱ = 1), generated elsewhere.

    Raises:
        TypeError / ValueError naming the parameter, before any model call;
        :class:`ddim.NonFiniteError` if the model returns NaN or inf.
    """
    image = _check_image(image, "image")
    mask = _check_mask(mask, image)
    resample = check_int("resample", resample, low=0)
    if resample and options.get("solver", "ddim") != "ddim":
        raise ValueError(f"resample={resample} repeats steps, which a multistep solver cannot "
                         f"(its history moves on); use solver='ddim', got "
                         f"solver={options['solver']!r}")
    plan = _plan(model, "inpaint", image, dict(options, steps=steps, eta=eta,
                                                generator=generator, progress=progress))
    return without_autograd(lambda: _inpaint(plan, image, mask, resample))


def _inpaint(plan: Plan, image: torch.Tensor, mask: torch.Tensor, resample: int
             ) -> torch.Tensor:
    """The loop of :func:`inpaint` (under inference mode)."""
    x, known, table = plan.x, image.to(plan.x.dtype), plan.table
    mask = mask.to(x.dtype)
    fresh = NoiseSource(x.shape, plan.generator, x.device, x.dtype)
    stepper = plan.stepper()
    probe = OutputProbe([t for t in table.grid for _ in range(resample + 1)], x.device,
                        x.dtype)
    for i in progress_bar(range(len(table.grid)), plan.options.progress, "inpainting"):
        a_t, a_prev = table.alpha_bar_t[i], table.alpha_bar_prev[i]
        for r in range(resample + 1):
            out = plan.call(x, i)
            probe.record(i * (resample + 1) + r, out)
            x_prev = stepper(i, x, out, False).prev_sample
            noisy_known = known if a_prev >= 1 else (
                math.sqrt(a_prev) * known + math.sqrt(1 - a_prev) * fresh())
            x_prev = mask * noisy_known + (1 - mask) * x_prev
            if r < resample:  # RePaint: back up to level ᾱ_t and repeat the step
                ratio = a_t / a_prev
                x = math.sqrt(ratio) * x_prev + math.sqrt(1 - ratio) * fresh()
        x = x_prev
    probe.check(x)
    return x


def _plan(model: Any, function: str, image: torch.Tensor, options: dict[str, Any]) -> Plan:
    """The plan of an edit: x_T of the image's shape, device and (at least float32) dtype."""
    check_keywords(function, options, refused=("x_T", "shape", "batch_size", "max_batch_size"))
    return make_plan(model, SampleOptions(
        shape=tuple(image.shape), device=image.device, x_name="image",
        dtype=torch.promote_types(image.dtype, torch.float32), **options))


def _check_image(image: Any, name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor, got "
                        f"{getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim < 2 or image.numel() == 0:
        raise ValueError(f"{name} must have shape (B, C, ...), got {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return image


def _check_mask(mask: Any, image: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    try:
        full = torch.broadcast_shapes(mask.shape, image.shape)
    except RuntimeError:
        full = None
    if full != image.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the image's "
                         f"shape {tuple(image.shape)}")
    m = mask.to(device=image.device, dtype=torch.float64)
    if not torch.isfinite(m).all() or (m < 0).any() or (m > 1).any():
        raise ValueError("mask values must lie in [0, 1] (1 = known pixel, 0 = generate)")
    return m

