"""The model output as the predicted clean sample x̂0 and noise ε̂, for every prediction type.

A network predicts ε (DDPM), x0 (``sample``) or v = sqrt(ᾱ)·ε - sqrt(1-ᾱ)·x0 (Salimans &
Ho 2022, ``v_prediction``). Whatever it predicts, both x̂0 and ε̂ are derived from its output
(never one from the other's formula for another type: diffusers issue 1486), through
x_t = sqrt(ᾱ_t)·x̂0 + sqrt(1-ᾱ_t)·ε̂ (DDIM paper, eq. 9).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

Scalar = float | torch.Tensor


class OutputCoefficients(NamedTuple):
    """x̂0 = x0_x·x_t + x0_out·out and ε̂ = eps_x·x_t + eps_out·out (eq. 9 and its inverse)."""

    x0_x: Scalar
    x0_out: Scalar
    eps_x: Scalar
    eps_out: Scalar


def predict_x0_eps(
    x_t: torch.Tensor, model_output: torch.Tensor, alpha_bar_t: Scalar,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from the model output, both derived from it whatever it predicts.

    - ``epsilon``: ε̂ = out, x̂0 = (x_t - sqrt(1-ᾱ_t)·ε̂)/sqrt(ᾱ_t) (eq. 9)
    - ``sample``: x̂0 = out, ε̂ = (x_t - sqrt(ᾱ_t)·x̂0)/sqrt(1-ᾱ_t); at ᾱ_t = 1 (a noise-free
      level) x_t carries no noise and ε̂ is defined as 0, never 0/0
    - ``v_prediction``: x̂0 = sqrt(ᾱ_t)·x_t - sqrt(1-ᾱ_t)·v, ε̂ = sqrt(ᾱ_t)·v + sqrt(1-ᾱ_t)·x_t

    ``alpha_bar_t`` is a float or a tensor broadcastable against x_t from the left
    (shape (B,) is allowed: one level per sample). Works in x_t's dtype.

    Raises:
        ValueError: an unknown ``prediction_type``.
    """
    a = expand_level(alpha_bar_t, x_t)
    sa, s1a = sqrt(a), sqrt(1 - a)
    if prediction_type == "epsilon":
        if isinstance(a, float):  # two kernels: x_t - s1a·ε̂, then / sa
            return torch.add(x_t, model_output, alpha=-s1a).div_(sa), model_output
        return (x_t - s1a * model_output) / sa, model_output
    if prediction_type == "sample":
        if isinstance(a, float):
            eps = (x_t - sa * model_output) / s1a if s1a > 0 else torch.zeros_like(x_t)
        else:
            eps = torch.where(s1a > 0, (x_t - sa * model_output) / s1a, 0.0)
        return model_output, eps
    if prediction_type == "v_prediction":
        return sa * x_t - s1a * model_output, sa * model_output + s1a * x_t
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def predict_x0(x_t: torch.Tensor, model_output: torch.Tensor, alpha_bar_t: float,
               prediction_type: str = "epsilon") -> torch.Tensor:
    """x̂0 alone, in the very kernels :func:`predict_x0_eps` forms it (so the two agree bit
    for bit); ``alpha_bar_t`` a float. Raises ValueError for an unknown prediction_type."""
    a = float(alpha_bar_t)
    if prediction_type == "epsilon":
        return torch.add(x_t, model_output, alpha=-math.sqrt(1 - a)).div_(math.sqrt(a))
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return math.sqrt(a) * x_t - math.sqrt(1 - a) * model_output
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def refuse_zero_snr_epsilon(prediction_type: str, alpha_bar_t: torch.Tensor,
                            grid: torch.Tensor | None = None) -> None:
    """ε-prediction cannot be sampled at ᾱ = 0 (zero terminal SNR, Lin et al. 2023):
    x̂0 = (x - sqrt(1-ᾱ)·ε̂)/sqrt(ᾱ) divides by zero (diffusers issues 4195, 5103).

    Args:
        prediction_type: the model's.
        alpha_bar_t: ᾱ of the steps (a float64 tensor of any shape).
        grid: the timesteps of those steps, named in the message when given.

    Raises:
        ValueError: naming the timestep and what to use instead.
    """
    zero = torch.as_tensor(alpha_bar_t).reshape(-1) == 0
    if prediction_type != "epsilon" or not zero.any():
        return
    where = f" at t={int(grid.reshape(-1)[zero][0])}" if grid is not None else ""
    raise ValueError(
        f"this schedule has zero terminal SNR (ᾱ=0{where}) and prediction_type='epsilon': "
        "x0 = (x - sqrt(1-ᾱ)ε)/sqrt(ᾱ) divides by zero at that step; use a v_prediction or "
        "sample model, or a grid that does not include that step")


def output_coefficients(
    alpha_bar_t: Scalar, prediction_type: str = "epsilon",
) -> OutputCoefficients:
    """x̂0 and ε̂ as linear combinations of x_t and the model output (see :func:`predict_x0_eps`).

    Every prediction type is linear in (x_t, out). ``alpha_bar_t`` is a float or a float64
    tensor (one value per step, say); the four results have its type and shape.

    Raises:
        ValueError: an unknown ``prediction_type``.
    """
    sa, s1a = sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)
    zero, one = _constant(0.0, alpha_bar_t), _constant(1.0, alpha_bar_t)
    if prediction_type == "epsilon":  # ε̂ = out; x̂0 by eq. 9
        return OutputCoefficients(x0_x=1 / sa, x0_out=-s1a / sa, eps_x=zero, eps_out=one)
    if prediction_type == "sample":  # x̂0 = out; ε̂ by eq. 9 solved for ε (0 where ᾱ = 1)
        inv = (torch.where(s1a > 0, 1 / s1a, 0.0) if isinstance(s1a, torch.Tensor)
               else 1 / s1a if s1a > 0 else 0.0)
        return OutputCoefficients(x0_x=zero, x0_out=one, eps_x=inv, eps_out=-sa * inv)
    if prediction_type == "v_prediction":  # v = sqrt(ᾱ)·ε - sqrt(1-ᾱ)·x0 (Salimans & Ho 2022)
        return OutputCoefficients(x0_x=sa, x0_out=-s1a, eps_x=s1a, eps_out=sa)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def sqrt(a: Scalar) -> Scalar:
    """sqrt of a float (math) or a tensor (elementwise)."""
    return a.sqrt() if isinstance(a, torch.Tensor) else math.sqrt(a)


def _constant(value: float, like: Scalar) -> Scalar:
    """``value`` as a float, or as a float64 tensor of ``like``'s shape."""
    if isinstance(like, torch.Tensor):
        return torch.full(like.shape, value, dtype=torch.float64)
    return value


def expand_level(a: Scalar, x: torch.Tensor) -> Scalar:
    """A float stays a float; a tensor of shape () or (B,) broadcasts over x's other dims."""
    if not isinstance(a, torch.Tensor):
        return float(a)
    a = a.to(device=x.device, dtype=x.dtype)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) if a.ndim else a
