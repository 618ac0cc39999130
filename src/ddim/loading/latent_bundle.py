"""What a bundle of a latent model does besides sampling: the shape of its images, the shape
of the latents of an image, and encoding and decoding (the latent-model contract of
:mod:`ddim.sampling.latents`, which recognises it by these methods)."""

from __future__ import annotations

import torch

from ..sampling.model_contract import check_sample_shape
from . import autoencoder as ae


class LatentMethods:
    """The methods :class:`ddim.Pretrained` has for latent models, from its fields
    ``autoencoder``, ``scaling_factor``, ``shift_factor``, ``sample_shape`` and ``name``
    (see :mod:`ddim.loading.autoencoder` for the maps)."""

    autoencoder: torch.nn.Module | None
    scaling_factor: float
    shift_factor: float
    sample_shape: tuple[int, ...]
    name: str

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the images :func:`ddim.sample` returns: ``sample_shape``, or for a
        latent model the size its latents decode to (C, f·h, f·w)."""
        if self.autoencoder is None:
            return tuple(self.sample_shape)
        return ae.image_shape(self.autoencoder, tuple(self.sample_shape))

    def latent_shape_for(self, shape: tuple[int, ...], name: str = "image") -> tuple[int, ...]:
        """The latents' shape (B, C_z, H/f, W/f) for images of ``shape`` (B, C, H, W).

        Raises:
            ValueError naming ``name`` and its shape: a size the autoencoder cannot take
            (channels, or H and W not multiples of f) or whose latents the UNet cannot take
            (the message says which sizes each takes); a bundle without an autoencoder.
        """
        latent = ae.latent_shape(self._codec(), tuple(shape), name)
        try:
            check_sample_shape(self, latent, "its latent")
        except ValueError as err:
            raise ValueError(f"{name} has shape {tuple(shape)}: {err}") from None
        return latent

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (B, C_z, H/f, W/f) of images (B, C, H, W) in the data range [-1, 1], in the
        images' dtype promoted to float32 (:func:`ddim.loading.autoencoder.encode`: the
        posterior mean, or the quantised code). The shape is checked by
        :meth:`latent_shape_for`, not here. Raises ValueError without an autoencoder."""
        return ae.encode(self._codec(), images, self.scaling_factor, self.shift_factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, C, f·h, f·w) in the data range of latents (B, C_z, h, w), in the
        latents' dtype promoted to float32 (:func:`ddim.loading.autoencoder.decode`; a
        VQModel quantises first). Raises ValueError without an autoencoder."""
        return ae.decode(self._codec(), latents, self.scaling_factor, self.shift_factor)

    def _codec(self) -> torch.nn.Module:
        if self.autoencoder is None:
            raise ValueError(f"{self.name or 'this bundle'} has no autoencoder: it samples "
                             "images, not latents")
        return self.autoencoder
