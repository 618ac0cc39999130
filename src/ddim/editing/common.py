"""What the editing functions share: the plan of an edit (its x_T of the image's shape, or of
its latents' for a latent model) and the checks of the images they take."""

from __future__ import annotations

from typing import Any

import torch

from ..sampling.latents import model_space_shape
from ..sampling.options import SampleOptions, check_keywords
from ..sampling.plan import Plan, make_plan


def edit_plan(model: Any, function: str, image: torch.Tensor, options: dict[str, Any]) -> Plan:
    """The plan of an edit called ``function``: x_T of the image's shape (of its latents' for
    a latent model, :mod:`ddim.sampling.latents`), device and (at least float32) dtype, with
    the sampling ``options`` the edit was given. Calls no model.

    Raises:
        TypeError: an option that is not a sampling option, or one the edit sets itself
            (x_T, shape, batch_size, max_batch_size); ValueError: an image size a latent
            model cannot take; the errors of :func:`make_plan`.
    """
    check_keywords(function, options, refused=("x_T", "shape", "batch_size", "max_batch_size"))
    return make_plan(model, SampleOptions(
        shape=model_space_shape(model, image, "image"), device=image.device, x_name="image",
        dtype=torch.promote_types(image.dtype, torch.float32), **options))


def check_image(image: Any, name: str) -> torch.Tensor:
    """``image`` if it is a finite floating tensor of shape (B, C, ...), else a TypeError or
    ValueError naming ``name``."""
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor, got "
                        f"{getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim < 2 or image.numel() == 0:
        raise ValueError(f"{name} must have shape (B, C, ...), got {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return image


