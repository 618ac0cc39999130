"""The model contract and thin adapters, applied once at the edge.

Contract: ``model(x, t) -> Tensor`` where ``x`` has shape (B, C, ...) and ``t`` is an int64
tensor of shape (B,) on x's device; the output has x's shape (ε, x0 or v, depending on the
prediction type). Accepted as well, and adapted here:

- diffusers models (``UNet2DModel`` and friends) that return an object with ``.sample`` or a
  tuple: called with ``return_dict=False`` and the first element taken;
- models that also predict their variance (improved/guided diffusion: 2C output channels):
  the sampler takes the first C channels;
- any object with ``schedule``, ``sample_shape`` and ``prediction_type`` attributes (such as
  :class:`ddim.Pretrained`) lends the sampler those defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def as_model_fn(model: Any) -> ModelFn:
    """A plain ``fn(x, t) -> Tensor`` for ``model`` (see the module docstring).

    Raises:
        TypeError: ``model`` is not callable.
    """
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t), got {type(model).__name__}")
    inner = getattr(model, "model_fn", None)
    if callable(inner):  # a bundle that already adapted its network
        return inner
    if is_diffusers_model(model):
        def diffusers_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model(x, t, return_dict=False)[0]

        return diffusers_fn

    def generic_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unwrap_output(model(x, t))

    return generic_fn


def unwrap_output(out: Any) -> torch.Tensor:
    """The tensor inside a model's output (a Tensor, an object with ``.sample``, or a tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model must return a tensor (or an object with .sample), "
                    f"got {type(out).__name__}")


def model_device_dtype(model: Any) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of a module's first floating parameter, else (None, None)."""
    target = getattr(model, "model", model)
    params = getattr(target, "parameters", None)
    if callable(params):
        try:
            for p in params():
                if p.is_floating_point():
                    return p.device, p.dtype
        except TypeError:
            pass
    return None, None


def model_sample_shape(model: Any) -> tuple[int, ...] | None:
    """(C, H, W) of one sample, from a bundle's ``sample_shape`` or a diffusers UNet config."""
    shape = getattr(model, "sample_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get"):
        size, channels = config.get("sample_size"), config.get("in_channels")
        if size is not None and channels is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            return (int(channels), *map(int, hw))
    return None


def check_sample_shape(model: Any, shape: Sequence[int], name: str = "x_T") -> None:
    """Refuse a sample shape the model cannot take, before any model call.

    What is checked comes from the model: a bundle's ``sample_shape`` or a diffusers UNet's
    config (``in_channels``, ``sample_size``, ``down_block_types``). The channels must match.
    The spatial size may differ from the trained one only for a fully convolutional diffusers
    UNet, and then it must be divisible by 2^(down blocks - 1). Plain callables declare
    nothing and are not checked.

    Raises:
        ValueError: naming ``name``, its shape and the expected one.
    """
    declared = model_sample_shape(model)
    if declared is None:
        return
    shape = tuple(shape)
    expected = f"(B, {', '.join(map(str, declared))})"
    if len(shape) != len(declared) + 1 or shape[1] != declared[0]:
        raise ValueError(f"{name} has shape {shape} but the model takes samples of shape "
                         f"{expected}")
    if shape[2:] == declared[1:]:
        return
    config = _unet_config(model)
    blocks = config.get("down_block_types") if config is not None else None
    if not blocks:
        raise ValueError(f"{name} has shape {shape} but the model takes samples of shape "
                         f"{expected} (it declares no other size)")
    factor = 2 ** (len(blocks) - 1)
    if any(size % factor for size in shape[2:]):
        raise ValueError(f"{name} has shape {shape}: this UNet takes any spatial size divisible "
                         f"by {factor} (its {len(blocks)} down blocks), trained at {expected}")


def _unet_config(model: Any) -> Any:
    network = getattr(model, "model", model)
    config = getattr(network, "config", None)
    return config if config is not None and hasattr(config, "get") else None


def fit_output(out: torch.Tensor, x: torch.Tensor, step: int, t: int) -> torch.Tensor:
    """Check a model output against x's shape; take the first C of 2C (learned variance)."""
    if out.shape == x.shape:
        return out
    if (out.ndim == x.ndim and out.shape[0] == x.shape[0] and out.shape[2:] == x.shape[2:]
            and out.shape[1] == 2 * x.shape[1]):
        return out[:, : x.shape[1]]
    raise ValueError(
        f"model output at step {step} (t={t}) has shape {tuple(out.shape)}, expected the "
        f"input's shape {tuple(x.shape)} (or 2x the channels for a learned-variance model)"
    )


def is_diffusers_model(model: Any) -> bool:
    """Whether ``model`` is a diffusers model (called with ``return_dict=False``)."""
    return type(model).__module__.startswith("diffusers.") and hasattr(model, "config")


class NonFiniteError(ValueError):
    """The model returned NaN or inf; ``step`` and ``timestep`` say where it first happened."""

    def __init__(self, message: str, step: int, timestep: int) -> None:
        super().__init__(message)
        self.step, self.timestep = step, timestep


class OutputProbe:
    """Watches the model's outputs for NaN and inf without synchronising with the device.

    ``record(j, out)`` writes max|out| of call j into a preallocated tensor on the device, in
    the sampler's state dtype (NaN propagates through the max, inf is its own max, and a
    large finite output stays finite, unlike a float32 sum); ``check(result)`` looks at all of
    them at once, the one host sync of a sampling call, and raises :class:`NonFiniteError`
    naming the first bad call, or, when every output was finite, if the result itself is not
    (an overflow).

    Args:
        timesteps: the training timestep of each call, in call order (for the message).
        device: where the outputs live.
        dtype: the sampler's state dtype (float32 or float64), in which maxima are kept.
    """

    def __init__(self, timesteps: Sequence[int], device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.timesteps = list(timesteps)
        self.maxima = torch.empty(len(self.timesteps) + 1, dtype=dtype, device=device)

    def record(self, j: int, out: torch.Tensor) -> None:
        """Note call j's output (no sync; one reduction written in place)."""
        dtype = None if out.dtype == self.maxima.dtype else self.maxima.dtype
        torch.linalg.vector_norm(out, ord=math.inf, dtype=dtype, out=self.maxima[j])

    def check(self, result: torch.Tensor | None = None) -> None:
        """Raise :class:`NonFiniteError` if a recorded output (or ``result``) is not finite."""
        if result is not None:
            self.record(len(self.timesteps), result)
        bad = ~torch.isfinite(self.maxima)
        if not bad.any():
            return
        j = int(bad.nonzero()[0])
        if j < len(self.timesteps):
            t = int(self.timesteps[j])
            raise NonFiniteError(
                f"the model returned NaN or inf at step {j} (t={t}); check the model, its "
                "dtype (fp16 overflow?) and its input range", step=j, timestep=t)
        top = float(self.maxima[:-1].max()) if len(self.timesteps) else 0.0
        raise NonFiniteError(
            f"the sample overflowed to inf (the model's outputs were finite, up to {top:.3g} "
            "in size); check the model and its input range", step=j - 1,
            timestep=int(self.timesteps[-1]))
