"""The autoencoder of a latent diffusion folder: a diffusers ``VQModel`` (``vqvae/``, as
``LDMPipeline`` saves it) or ``AutoencoderKL`` (``vae/``, as Stable Diffusion does), checked
and read, and the two maps between images and the latents the UNet samples (Rombach et al.
2022, "High-Resolution Image Synthesis with Latent Diffusion Models", sections 3 and 4.3.2):

    encode:  z = scaling_factor · (E(x) - shift_factor)
    decode:  x = D(z / scaling_factor + shift_factor)

E(x) is the posterior mean for an ``AutoencoderKL`` (deterministic) and the quantised code for
a ``VQModel``; a ``VQModel``'s D quantises before it decodes (``VQModel.decode``, as
``LDMPipeline`` and CompVis' ``decode_first_stage`` do), so a sampled latent decodes to the
image of its nearest code. ``scaling_factor`` and ``shift_factor`` come from the
autoencoder's own config file; a ``VQModel`` file without ``scaling_factor`` means 1.0 (the
CompVis VQ models were trained unscaled). diffusers' ``LDMPipeline`` would use ``VQModel``'s
constructor default 0.18215 there instead (its issue 6725: ``CompVis/ldm-celebahq-256`` then
decodes to noise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import folders as files
from .folders import WEIGHT_NAMES, PretrainedError

AUTOENCODER_FOLDERS = ("vqvae", "vae")
AUTOENCODER_CLASSES = ("VQModel", "AutoencoderKL")
_HALF = (torch.float16, torch.bfloat16)


def autoencoder_folder(folder: Path) -> Path | None:
    """The autoencoder's subfolder of a saved pipeline (``vqvae/`` or ``vae/`` with a
    config.json), or None.

    Raises:
        PretrainedError: the folder holds both.
    """
    found = [folder / name for name in AUTOENCODER_FOLDERS if (folder / name / "config.json"
                                                                ).is_file()]
    if len(found) > 1:
        raise PretrainedError(f"{folder} holds two autoencoders (vqvae/ and vae/); keep the "
                              "one its UNet was trained with")
    return found[0] if found else None


def check_autoencoder(ae_dir: Path, latent_channels: int, unet_config: Path
                      ) -> tuple[type, dict[str, Any], Path]:
    """Read and check the autoencoder config in ``ae_dir`` before any weights are read.

    Args:
        ae_dir: ``vqvae/`` or ``vae/``.
        latent_channels: the UNet's ``in_channels`` (read from ``unet_config``).

    Returns:
        (its diffusers class, its config as the file holds it, its weights file).

    Raises:
        PretrainedError naming the file: a class other than VQModel or AutoencoderKL, unknown
        keys, latent channels that differ from the UNet's, a scaling_factor that is not a
        positive number, latents_mean/latents_std (not supported), no weights.
    """
    config_file = ae_dir / "config.json"
    config = files.read_json(config_file)
    cls = files.model_class(config, config_file)
    if cls.__name__ not in AUTOENCODER_CLASSES:
        raise PretrainedError(f"{config_file}: _class_name {cls.__name__!r} is not an "
                              f"autoencoder ddim can use {AUTOENCODER_CLASSES}")
    files.check_model_config(config, cls, config_file)
    channels = config.get("latent_channels", 3 if cls.__name__ == "VQModel" else 4)
    if channels != latent_channels:
        raise PretrainedError(f"{config_file}: latent_channels {channels} differs from the "
                              f"UNet's in_channels {latent_channels} ({unet_config}): they are "
                              "not one latent diffusion model")
    for key in ("scaling_factor", "shift_factor"):
        value = config.get(key)
        bad = (not isinstance(value, (int, float)) or isinstance(value, bool)
               or not abs(value) < float("inf") or (key == "scaling_factor" and value <= 0))
        if value is not None and bad:
            allowed = "a positive number" if key == "scaling_factor" else "a number or null"
            raise PretrainedError(f"{config_file}: {key} must be {allowed}, got {value!r}")
    for key in ("latents_mean", "latents_std"):
        if config.get(key) is not None:
            raise PretrainedError(f"{config_file}: {key} is set; ddim does not normalise "
                                  "latents per channel (only scaling_factor and shift_factor)")
    weights = next((ae_dir / w for w in WEIGHT_NAMES if (ae_dir / w).is_file()), None)
    if weights is None:
        raise PretrainedError(f"no weights in {ae_dir}: expected one of {WEIGHT_NAMES}")
    return cls, config, weights


def load_autoencoder(ae_dir: Path, cls: type, config: dict[str, Any], weights: Path
                     ) -> dict[str, Any]:
    """The checked autoencoder of :func:`check_autoencoder`, loaded: the keywords
    ``autoencoder``, ``scaling_factor`` and ``shift_factor`` of :class:`ddim.Pretrained`.

    Raises:
        PretrainedError: corrupt weights, or weights that do not fit the config.
    """
    if weights.suffix == ".safetensors":
        files.check_safetensors(weights)
    module = files.load_network(cls, ae_dir, weights)
    default = 1.0 if cls.__name__ == "VQModel" else 0.18215  # CompVis VQ; diffusers' KL
    scale = config.get("scaling_factor")
    return dict(autoencoder=module, scaling_factor=float(default if scale is None else scale),
                shift_factor=float(config.get("shift_factor") or 0.0))


def downsampling(autoencoder: Any) -> int:
    """f, the autoencoder's downsampling factor: 2^(blocks - 1) (each block but the last
    halves the size)."""
    return 2 ** (len(autoencoder.config.block_out_channels) - 1)


def image_shape(autoencoder: Any, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
    """(C, H, W) of the images that latents of shape (C_z, h, w) decode to: (C, f·h, f·w)."""
    f = downsampling(autoencoder)
    return (int(autoencoder.config.out_channels), *(f * s for s in latent_shape[1:]))


def latent_shape(autoencoder: Any, shape: tuple[int, ...], name: str = "image"
                 ) -> tuple[int, ...]:
    """The shape (B, C_z, H/f, W/f) of the latents of images of ``shape`` (B, C, H, W).

    Raises:
        ValueError naming ``name``: another number of channels than the autoencoder takes,
        or a height or width that is not a multiple of f (its encoder would round it down
        and its decoder not give it back).
    """
    f, config = downsampling(autoencoder), autoencoder.config
    channels = int(config.in_channels)
    what = (f"the autoencoder ({type(autoencoder).__name__}) takes images (B, {channels}, H, "
            f"W) with H and W multiples of {f} (its {len(config.block_out_channels)} blocks)")
    if len(shape) != 4 or shape[1] != channels:
        raise ValueError(f"{name} has shape {tuple(shape)}: {what}")
    if shape[2] % f or shape[3] % f:
        raise ValueError(f"{name} has size {shape[2]}×{shape[3]}: {what}, e.g. "
                         f"{-(-shape[2] // f) * f}×{-(-shape[3] // f) * f}")
    return (shape[0], int(config.latent_channels), shape[2] // f, shape[3] // f)


def encode(autoencoder: Any, images: torch.Tensor, scaling_factor: float,
           shift_factor: float = 0.0) -> torch.Tensor:
    """Latents z = scaling_factor·(E(x) - shift_factor) of images (B, C, H, W) in [-1, 1]:
    E is the posterior mean (AutoencoderKL) or the quantised code (VQModel). Runs in the
    autoencoder's dtype; returns (B, C_z, H/f, W/f) in the images' dtype promoted to at
    least float32. The shape is checked by :func:`latent_shape` (not here)."""
    dtype = torch.promote_types(images.dtype, torch.float32)
    x = images.to(_dtype(autoencoder, images))
    if type(autoencoder).__name__ == "VQModel":
        h = autoencoder.encode(x, return_dict=False)[0]
        z = autoencoder.quantize(h)[0]
    else:
        z = autoencoder.encode(x, return_dict=False)[0].mean
    return (z.to(dtype) - shift_factor) * scaling_factor


def decode(autoencoder: Any, latents: torch.Tensor, scaling_factor: float,
           shift_factor: float = 0.0) -> torch.Tensor:
    """Images x = D(z/scaling_factor + shift_factor) of latents (B, C_z, h, w), in the
    autoencoder's range ([-1, 1] for the diffusers ones), (B, C, f·h, f·w) in the latents'
    dtype (at least float32). The decoder runs in the autoencoder's dtype."""
    dtype = torch.promote_types(latents.dtype, torch.float32)
    z = latents.to(dtype) / scaling_factor + shift_factor
    return autoencoder.decode(z.to(_dtype(autoencoder, z)), return_dict=False)[0].to(dtype)


def cast_dtype(autoencoder: Any, dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype the autoencoder takes when its bundle is cast to ``dtype``: ``dtype``, but
    float32 for half precision when its config asks for that (``force_upcast``: Stable
    Diffusion's VAE overflows in float16, as diffusers' pipelines know)."""
    if dtype in _HALF and getattr(autoencoder.config, "force_upcast", False):
        return torch.float32
    return dtype


def _dtype(autoencoder: Any, like: torch.Tensor) -> torch.dtype:
    for p in autoencoder.parameters():
        if p.is_floating_point():
            return p.dtype
    return like.dtype  # pragma: no cover - the diffusers autoencoders have parameters
