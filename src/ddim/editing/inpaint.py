"""Inpainting: fill the pixels where ``mask`` is 0, keep those where it is 1. After every step
the known pixels are replaced by the known image noised to the step's new level (the CompVis
scheme); the last step reaches ᾱ = 1, so they come out exactly as given. ``resample`` > 0 adds
RePaint-style rounds (Lugmayr et al. 2022): the step's result is noised back to the current
level and the step repeated, letting the generated region agree with the known one.

The loop is its own (not :func:`ddim.sampling.sampler.loop`): after every step it replaces
the known pixels, and RePaint repeats steps, which no plain pass over the grid does.

A latent model (Rombach et al. 2022) inpaints the image's latents: the mask is resized to the
latent grid by area (the mean over each f×f block of pixels, after the minimum over the
image's channels: a latent cell is as known as its pixels are, so the mask is soft along the
boundary), the known latents are kept as above, and after decoding the known pixels are
restored in pixel space (the decoder gives back the autoencoder's reconstruction there, not
the image), so they come out exactly as given too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..checks import check_int
from ..sampling.latents import decode_samples, encode_images, is_latent
from ..sampling.model_contract import OutputProbe
from ..sampling.noise import Generators, NoiseSource
from ..sampling.plan import Plan
from ..sampling.sampler import progress_bar, without_autograd
from ..sampling.solvers import SOLVERS
from .common import check_image, edit_plan


def check_resample(resample: Any, solver: str = "ddim") -> int:
    """RePaint rounds (an integer >= 0); rounds repeat a step, which only DDIM can (a multistep
    solver's history moves on).

    Raises:
        TypeError / ValueError naming ``resample`` (and ``solver``).
    """
    resample = check_int("resample", resample, low=0)
    if resample and not SOLVERS[solver].ddim_options:
        raise ValueError(f"resample={resample} repeats steps, which a multistep solver cannot "
                         f"(its history moves on); use solver='ddim', got solver={solver!r}")
    return resample


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
        model: as for :func:`ddim.sample`; a latent model inpaints the latents (see the
            module docstring).
        image: (B, C, H, W) in the model's data range; its values where mask is 0 are ignored.
        mask: 1 = known pixel, 0 = to generate; shape (B, C, H, W), or broadcastable to it
            (e.g. (1, 1, H, W)); values in {0, 1}, or in [0, 1] for a soft blend. Always at
            the image's resolution (a latent model resizes it itself).
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
    image = check_image(image, "image")
    mask = check_mask(mask, image)
    plan = edit_plan(model, "inpaint", image, dict(options, steps=steps, eta=eta,
                                                generator=generator, progress=progress))
    resample = check_resample(resample, plan.options.solver)
    if not is_latent(model):
        return without_autograd(lambda: _inpaint(plan, image, mask, resample))
    known = encode_images(model, image)
    z = without_autograd(lambda: _inpaint(plan, known, latent_mask(mask, image, known),
                                          resample))
    decoded = decode_samples(model, z)
    mask = mask.to(decoded.dtype)
    return mask * image.to(decoded.dtype) + (1 - mask) * decoded


def latent_mask(mask: torch.Tensor, image: torch.Tensor, latents: torch.Tensor
                ) -> torch.Tensor:
    """A pixel mask (broadcastable to ``image`` (B, C, H, W), values in [0, 1]) on the grid of
    ``latents`` (B, C_z, H/f, W/f): the minimum over the image's channels, then the mean over
    each f×f block (area resizing; soft where a block straddles the boundary). Returns
    (B, 1, H/f, W/f) in the mask's dtype (it broadcasts over the latents' channels)."""
    full = mask.expand(image.shape).amin(dim=1, keepdim=True)
    fh, fw = image.shape[2] // latents.shape[2], image.shape[3] // latents.shape[3]
    return F.avg_pool2d(full, kernel_size=(fh, fw))


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


def check_mask(mask: Any, image: torch.Tensor) -> torch.Tensor:
    """``mask`` as float64 on the image's device, if it broadcasts to the image's shape and
    lies in [0, 1]; else a TypeError or ValueError naming ``mask``."""
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

