"""Latent models: the sampler runs on latents, an autoencoder turns them into images after the
loop, and images into latents before an edit (latent diffusion, Rombach et al. 2022).

A latent model is recognised by what it has, not by its class (this wing does not know the
bundles of :mod:`ddim.loading`): an ``autoencoder`` attribute that is not None, and

- ``decode(latents) -> images``: (B, *sample_shape) latents to images in ``data_range``;
- ``encode(images) -> latents``: the inverse map (for inversion and the edits);
- ``latent_shape_for(shape, name) -> shape``: the latents' shape for images of ``shape``
  (B, C, H, W), raising ValueError naming ``name`` when the autoencoder cannot take them;
- ``image_shape``: (C, H, W) of the decoded images.

A :class:`ddim.Pretrained` loaded from a latent folder is one. ``sample_shape`` is the
latents' shape, ``data_range`` the images' range.
"""

from __future__ import annotations

from typing import Any

import torch

from .model_contract import model_sample_shape

_METHODS = ("decode", "encode", "latent_shape_for")


def is_latent(model: Any) -> bool:
    """Whether ``model`` is a latent model (see the module docstring).

    Raises:
        TypeError: it has an autoencoder but not the methods a latent model needs.
    """
    if getattr(model, "autoencoder", None) is None:
        return False
    missing = [m for m in _METHODS if not callable(getattr(model, m, None))]
    if getattr(model, "image_shape", None) is None:
        missing.append("image_shape")
    if missing:
        raise TypeError(f"the model has an autoencoder but no {', '.join(missing)}: a latent "
                        "model needs decode, encode, latent_shape_for and image_shape (as "
                        "ddim.Pretrained has)")
    return True


def check_decode(model: Any, decode: Any) -> bool:
    """Whether :func:`ddim.sample` decodes: ``decode`` None (default: when the model is a
    latent model), True (it must be) or False (return the latents).

    Raises:
        TypeError: ``decode`` is not None, True or False. ValueError: True for a model with no
        autoencoder.
    """
    if decode is not None and not isinstance(decode, bool):
        raise TypeError(f"decode must be None, True or False, got {decode!r} "
                        f"({type(decode).__name__})")
    latent = is_latent(model)
    if decode and not latent:
        raise ValueError("decode=True, but the model has no autoencoder: its samples are "
                         "images already (decode applies to latent models)")
    return latent if decode is None else decode


def decode_samples(model: Any, latents: torch.Tensor, max_batch_size: int | None = None
                   ) -> torch.Tensor:
    """``model.decode`` of latents (B, *sample_shape), in chunks of ``max_batch_size`` rows
    when given, under ``torch.inference_mode()``; images (B, *image_shape) in the latents'
    dtype (at least float32), as an ordinary tensor (usable in autograd afterwards)."""
    k = latents.shape[0] if max_batch_size is None else max_batch_size
    with torch.inference_mode():
        images = torch.cat([model.decode(latents[lo:lo + k])
                            for lo in range(0, latents.shape[0], k)])
    return images if torch.is_inference_mode_enabled() else images.clone()


def encode_images(model: Any, images: torch.Tensor) -> torch.Tensor:
    """``model.encode`` of images (B, C, H, W) under ``torch.inference_mode()``: latents in
    the images' dtype promoted to float32, as an ordinary tensor. Check the images' shape
    first with ``model.latent_shape_for``."""
    with torch.inference_mode():
        latents = model.encode(images)
    return latents if torch.is_inference_mode_enabled() else latents.clone()


def model_space_shape(model: Any, image: torch.Tensor, name: str) -> tuple[int, ...]:
    """The shape an edit of ``image`` (B, C, H, W) samples in: the latents' for a latent
    model (checked against its autoencoder and UNet), else the image's own.

    Raises:
        ValueError naming ``name``: a size the latent model cannot take.
    """
    if is_latent(model):
        return tuple(model.latent_shape_for(tuple(image.shape), name))
    return tuple(image.shape)


def output_shape(model: Any) -> tuple[int, ...] | None:
    """(C, H, W) of what :func:`ddim.sample` returns for ``model``: its ``image_shape`` for a
    latent model, else its sample shape (None when it cannot be told)."""
    if is_latent(model):
        return tuple(model.image_shape)
    return model_sample_shape(model)


def check_latent_clip(model: Any, clip_sample: Any) -> None:
    """``clip_sample=True`` clips x̂0 to the model's data range; a latent model's x̂0 is a
    latent, whose range is not the images' (clipping latents to [-1, 1] breaks them: diffusers
    issues 271, 706).

    Raises:
        ValueError: ``clip_sample=True`` for a latent model (a number or a range is taken as
        the latents' own).
    """
    if clip_sample is True and is_latent(model):
        raise ValueError("clip_sample=True clips x̂0 to the model's data range, but this is a "
                         "latent model: x̂0 is a latent, not an image in "
                         f"{tuple(getattr(model, 'data_range', (-1.0, 1.0)))}; pass the latents' "
                         "own bound (a number c or a range (lo, hi)) or leave clipping off")
