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

    ``record(j, out)`` stores a sum of call j's output in a preallocated tensor on the
    device (NaN and inf survive a sum); ``check()`` looks at all of them at once, the one host
    sync of a sampling call, and raises :class:`NonFiniteError` naming the first bad call.

    Args:
        timesteps: the training timestep of each call, in call order (for the message).
        device: where the outputs live.
    """

    def __init__(self, timesteps: Sequence[int], device: torch.device) -> None:
        self.timesteps = list(timesteps)
        self.sums = torch.empty(len(self.timesteps), dtype=torch.float32, device=device)

    def record(self, j: int, out: torch.Tensor) -> None:
        """Note call j's output (no sync)."""
        self.sums[j] = out.sum(dtype=torch.float32)

    def check(self) -> None:
        """Raise :class:`NonFiniteError` if any recorded output held NaN or inf."""
        bad = ~torch.isfinite(self.sums)
        if bad.any():
            j = int(bad.nonzero()[0])
            t = int(self.timesteps[j])
            raise NonFiniteError(
                f"the model returned NaN or inf at step {j} (t={t}); check the model, its "
                "dtype (fp16 overflow?) and its input range", step=j, timestep=t)
