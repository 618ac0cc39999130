"""One DDIM step as pure tensor math (DDIM paper, eq. 12).

Code name            paper symbol
-------------------  ------------------------------------------------------------
``alpha_bar_t``      ᾱ_t      (the paper's α_t): signal level at the current step
``alpha_bar_prev``   ᾱ_prev   (α_{t-1}): level at the next grid point, 1 after the last
``eta``              η        interpolates deterministic DDIM (0) and DDPM-like (1)
``sigma_t``          σ_t(η) = η·sqrt((1-ᾱ_prev)/(1-ᾱ_t))·sqrt(1-ᾱ_t/ᾱ_prev)
``pred_x0``          x̂0 = (x_t - sqrt(1-ᾱ_t)·ε̂)/sqrt(ᾱ_t)     "predicted x0"
``pred_eps``         ε̂ = ε_θ(x_t, t)
``prev_sample``      x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1-ᾱ_prev-σ_t²)·ε̂ + σ_t·z

Run "upwards" (``alpha_bar_prev`` > ... i.e. a lower signal level than ``alpha_bar_t``) with
η=0 the same formula is the DDIM inversion step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._checks import check_choice, check_eta

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

Scalar = float | torch.Tensor


class StepOutput(NamedTuple):
    """Result of :func:`ddim_step`; all three have x_t's shape."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor
    pred_eps: torch.Tensor


def ddim_sigma(alpha_bar_t: Scalar, alpha_bar_prev: Scalar, eta: float) -> Scalar:
    """σ_t(η) = η·sqrt((1-ᾱ_prev)/(1-ᾱ_t))·sqrt(1-ᾱ_t/ᾱ_prev).

    Args:
        alpha_bar_t, alpha_bar_prev: floats or tensors in (0, 1], ᾱ_prev > ᾱ_t.
        eta: η >= 0. With η=1 and consecutive steps σ_t² is the DDPM posterior variance β̃_t.

    Returns:
        σ_t, of the inputs' type (a 0 where ᾱ_prev = 1, where x_prev is the clean sample).
    """
    if isinstance(alpha_bar_t, torch.Tensor) or isinstance(alpha_bar_prev, torch.Tensor):
        a_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
        a_p = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
        ratio = torch.where(a_t < 1, (1 - a_p) / (1 - a_t), torch.zeros_like(a_t))
        return eta * (ratio * (1 - a_t / a_p)).clamp(min=0).sqrt()
    a_t, a_p = float(alpha_bar_t), float(alpha_bar_prev)
    if eta == 0 or a_t >= 1 or a_p >= 1:  # deterministic, or one end is the clean sample
        return 0.0
    return eta * math.sqrt(max((1 - a_p) / (1 - a_t) * (1 - a_t / a_p), 0.0))


def ddpm_sigma_hat(alpha_bar_t: Scalar, alpha_bar_prev: Scalar) -> Scalar:
    """The paper's σ̂_t = sqrt(1 - ᾱ_t/ᾱ_prev): DDPM's larger variance β_t, for skipped steps.

    Zero where ᾱ_prev = 1: DDPM adds no noise on the step that returns x0.
    """
    if isinstance(alpha_bar_t, torch.Tensor) or isinstance(alpha_bar_prev, torch.Tensor):
        a_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
        a_p = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
        return torch.where(a_p < 1, (1 - a_t / a_p).clamp(min=0).sqrt(), torch.zeros_like(a_t))
    a_t, a_p = float(alpha_bar_t), float(alpha_bar_prev)
    return math.sqrt(max(1 - a_t / a_p, 0.0)) if a_p < 1 else 0.0


def step_coefficients(
    alpha_bar_t: Scalar, alpha_bar_prev: Scalar, eta: float = 0.0, *, sigma_hat: bool = False
) -> tuple[Scalar, Scalar, Scalar]:
    """(c_x0, c_eps, c_noise) with x_prev = c_x0·x̂0 + c_eps·ε̂ + c_noise·z.

    c_x0 = sqrt(ᾱ_prev); c_eps = sqrt(1-ᾱ_prev-σ_t(η)²); c_noise = σ_t(η).
    With ``sigma_hat`` (the paper's σ̂ rows): the mean is the η=1 mean, which is the DDPM
    posterior mean μ̃(x_t, x̂0) of the skipping process, and the noise is σ̂_t·z
    (:func:`ddpm_sigma_hat`), larger than σ_t(1); ``eta`` is then ignored. Works on floats
    (float64 math) or on tensors of any shape (computed in float64).
    """
    sig_dir = ddim_sigma(alpha_bar_t, alpha_bar_prev, 1.0 if sigma_hat else eta)
    sig_noise = ddpm_sigma_hat(alpha_bar_t, alpha_bar_prev) if sigma_hat else sig_dir
    if isinstance(sig_dir, torch.Tensor):
        a_p = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
        return a_p.sqrt(), (1 - a_p - sig_dir**2).clamp(min=0).sqrt(), sig_noise
    a_p = float(alpha_bar_prev)
    return math.sqrt(a_p), math.sqrt(max(1 - a_p - sig_dir**2, 0.0)), sig_noise


def predict_x0_eps(
    x_t: torch.Tensor, model_output: torch.Tensor, alpha_bar_t: Scalar,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, ε̂) from the model output, both derived from it whatever it predicts.

    - ``epsilon``: ε̂ = out, x̂0 = (x_t - sqrt(1-ᾱ_t)·ε̂)/sqrt(ᾱ_t)
    - ``sample``: x̂0 = out, ε̂ = (x_t - sqrt(ᾱ_t)·x̂0)/sqrt(1-ᾱ_t)
    - ``v_prediction``: x̂0 = sqrt(ᾱ_t)·x_t - sqrt(1-ᾱ_t)·v, ε̂ = sqrt(ᾱ_t)·v + sqrt(1-ᾱ_t)·x_t

    ``alpha_bar_t`` is a float or a tensor broadcastable against x_t from the left
    (shape (B,) is allowed: one level per sample). Works in x_t's dtype.
    """
    a = _expand(alpha_bar_t, x_t)
    sa, s1a = _sqrt(a), _sqrt(1 - a)
    if prediction_type == "epsilon":
        if isinstance(a, float):  # two kernels: x_t - s1a·ε̂, then / sa
            return torch.add(x_t, model_output, alpha=-s1a).div_(sa), model_output
        return (x_t - s1a * model_output) / sa, model_output
    if prediction_type == "sample":
        return model_output, (x_t - sa * model_output) / s1a
    if prediction_type == "v_prediction":
        return sa * x_t - s1a * model_output, sa * model_output + s1a * x_t
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def output_coefficients(
    alpha_bar_t: Scalar, prediction_type: str = "epsilon",
) -> tuple[Scalar, Scalar, Scalar, Scalar]:
    """(p, q, r, s) with x̂0 = p·x_t + q·out and ε̂ = r·x_t + s·out (see :func:`predict_x0_eps`).

    Every prediction type is linear in (x_t, out). ``alpha_bar_t`` is a float or a float64
    tensor (one value per step, say); the four results have its type and shape.
    """
    sa, s1a = _sqrt(alpha_bar_t), _sqrt(1 - alpha_bar_t)
    if prediction_type == "epsilon":
        return 1 / sa, -s1a / sa, 0 * sa, 1 + 0 * sa
    if prediction_type == "sample":
        return 0 * sa, 1 + 0 * sa, 1 / s1a, -sa / s1a
    if prediction_type == "v_prediction":
        return sa, -s1a, s1a, sa
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def fused_coefficients(
    alpha_bar_t: Scalar, coefficients: tuple[Scalar, Scalar, Scalar],
    prediction_type: str = "epsilon",
) -> tuple[Scalar, Scalar]:
    """(a_x, a_out) with c_x0·x̂0 + c_eps·ε̂ = a_x·x_t + a_out·out, for unprocessed x̂0.

    Substituting x̂0 and ε̂ (:func:`output_coefficients`) into the step of
    :func:`step_coefficients` makes the noise-free part of x_prev one linear combination of
    x_t and the model output: for ε-prediction a_x = sqrt(ᾱ_prev/ᾱ_t) and a_out = c_eps -
    sqrt(ᾱ_prev·(1-ᾱ_t)/ᾱ_t), the Euler step of the probability-flow ODE when η=0. The
    sampler applies it in two kernels; computed once per call in float64.
    """
    p, q, r, s = output_coefficients(alpha_bar_t, prediction_type)
    c_x0, c_eps, _ = coefficients
    return c_x0 * p + c_eps * r, c_x0 * q + c_eps * s


def process_x0(
    pred_x0: torch.Tensor, *, clip_sample: float | None = None,
    dynamic_threshold: float | None = None, dynamic_threshold_max: float = 1.0,
) -> torch.Tensor:
    """Optional x̂0 processing; returns x̂0 unchanged when both options are None.

    Args:
        pred_x0: (B, ...) predicted clean sample.
        clip_sample: clamp x̂0 to [-clip_sample, clip_sample] (e.g. 1.0 for images in [-1, 1]).
        dynamic_threshold: Imagen's dynamic thresholding: per sample, s = the
            ``dynamic_threshold`` quantile (in (0, 1), e.g. 0.995) of |x̂0|, clamped to
            [1, dynamic_threshold_max]; then x̂0 = clamp(x̂0, -s, s)/s.
    """
    if clip_sample is not None:
        pred_x0 = pred_x0.clamp(-clip_sample, clip_sample)
    if dynamic_threshold is not None:
        flat = pred_x0.reshape(pred_x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, dynamic_threshold, dim=1).clamp(1.0, dynamic_threshold_max)
        s = s.to(pred_x0.dtype).reshape((-1,) + (1,) * (pred_x0.ndim - 1))
        pred_x0 = torch.maximum(torch.minimum(pred_x0, s), -s) / s
    return pred_x0


def ddim_step(
    x_t: torch.Tensor,
    model_output: torch.Tensor,
    alpha_bar_t: Scalar,
    alpha_bar_prev: Scalar,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    *,
    sigma_hat: bool = False,
    prediction_type: str = "epsilon",
    clip_sample: float | None = None,
    dynamic_threshold: float | None = None,
    dynamic_threshold_max: float = 1.0,
    rederive_eps: bool = False,
) -> StepOutput:
    """One generalized DDIM step x_t -> x_prev (paper eq. 12).

    Args:
        x_t: (B, ...) current sample, float32 or float64 (half precision is upcast to float32).
        model_output: the model's prediction, x_t's shape, any float dtype (upcast to x_t's).
        alpha_bar_t, alpha_bar_prev: ᾱ at this grid point and at the next one (1 after the last);
            floats, or tensors of shape (B,) for one level per sample.
        eta: η >= 0; σ_t = η·sqrt((1-ᾱ_prev)/(1-ᾱ_t))·sqrt(1-ᾱ_t/ᾱ_prev).
        noise: z ~ N(0, I) of x_t's shape; required when the noise scale is > 0, never read
            otherwise (η=0 needs none).
        sigma_hat: the paper's σ̂ variant (see :func:`step_coefficients`).
        prediction_type: ``epsilon``, ``sample`` (x0) or ``v_prediction``.
        clip_sample, dynamic_threshold, dynamic_threshold_max: x̂0 processing
            (:func:`process_x0`), off by default as in the paper.
        rederive_eps: after processing x̂0, recompute ε̂ from it (diffusers'
            ``use_clipped_model_output``) so that the step stays on the line through x_t.

    Returns:
        StepOutput(prev_sample, pred_x0, pred_eps), in x_t's dtype (at least float32).
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    eta = check_eta(eta)
    for name, value in (("x_t", x_t), ("model_output", model_output)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    for name, value in (("alpha_bar_t", alpha_bar_t), ("alpha_bar_prev", alpha_bar_prev)):
        if not isinstance(value, torch.Tensor) and not 0 <= float(value) <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if prediction_type == "epsilon" and not isinstance(alpha_bar_t, torch.Tensor) and (
            float(alpha_bar_t) == 0):
        raise ValueError("alpha_bar_t = 0 (zero terminal SNR) cannot be used with "
                         "prediction_type='epsilon': x0 = (x - sqrt(1-ᾱ)ε)/sqrt(ᾱ) divides by 0")
    if model_output.shape != x_t.shape:
        raise ValueError(f"model_output must have x_t's shape {tuple(x_t.shape)}, "
                         f"got {tuple(model_output.shape)}")
    coefficients = step_coefficients(alpha_bar_t, alpha_bar_prev, eta, sigma_hat=sigma_hat)
    if _positive(coefficients[2]):
        if noise is None:
            raise ValueError("noise is required when the step's noise scale σ_t > 0 "
                             f"(eta={eta}, sigma_hat={sigma_hat})")
        if noise.shape != x_t.shape:
            raise ValueError(f"noise must have x_t's shape {tuple(x_t.shape)}, "
                             f"got {tuple(noise.shape)}")
    return apply_step(x_t, model_output, alpha_bar_t, coefficients, noise,
                      prediction_type=prediction_type, clip_sample=clip_sample,
                      dynamic_threshold=dynamic_threshold,
                      dynamic_threshold_max=dynamic_threshold_max, rederive_eps=rederive_eps)


def apply_step(
    x_t: torch.Tensor,
    model_output: torch.Tensor,
    alpha_bar_t: Scalar,
    coefficients: tuple[Scalar, Scalar, Scalar],
    noise: torch.Tensor | None = None,
    *,
    prediction_type: str = "epsilon",
    clip_sample: float | None = None,
    dynamic_threshold: float | None = None,
    dynamic_threshold_max: float = 1.0,
    rederive_eps: bool = False,
) -> StepOutput:
    """:func:`ddim_step` with precomputed (c_x0, c_eps, c_noise) and no argument checks.

    x_prev = c_x0·x̂0 + c_eps·ε̂ + c_noise·z (see :func:`step_coefficients`). The sampler loop
    calls this with coefficients computed once per sampling call; ``noise`` is read only when
    c_noise > 0 (and must then be given).
    """
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    x_t, model_output = x_t.to(dtype), model_output.to(dtype)
    pred_x0, pred_eps = predict_x0_eps(x_t, model_output, alpha_bar_t, prediction_type)
    if clip_sample is not None or dynamic_threshold is not None:
        pred_x0 = process_x0(pred_x0, clip_sample=clip_sample,
                             dynamic_threshold=dynamic_threshold,
                             dynamic_threshold_max=dynamic_threshold_max)
        if rederive_eps:
            a = _expand(alpha_bar_t, x_t)
            pred_eps = (x_t - _sqrt(a) * pred_x0) / _sqrt(1 - a)
    c_x0, c_eps, c_noise = coefficients
    if isinstance(c_x0, torch.Tensor) or isinstance(c_eps, torch.Tensor):
        prev = _expand(c_x0, x_t) * pred_x0 + _expand(c_eps, x_t) * pred_eps
    else:  # two kernels: c_x0·x̂0, then + c_eps·ε̂
        prev = torch.add(pred_x0 * c_x0, pred_eps, alpha=c_eps)
    if _positive(c_noise):
        if noise is None:
            raise ValueError("noise is required when the step's noise scale c_noise > 0")
        if isinstance(c_noise, torch.Tensor):
            prev = prev + _expand(c_noise, x_t) * noise.to(dtype)
        else:
            prev = prev.add_(noise.to(dtype), alpha=c_noise)
    return StepOutput(prev, pred_x0, pred_eps)


def _positive(c: Scalar) -> bool:
    return bool((c > 0).any()) if isinstance(c, torch.Tensor) else c > 0


def _sqrt(a: Scalar) -> Scalar:
    return a.sqrt() if isinstance(a, torch.Tensor) else math.sqrt(a)


def _expand(a: Scalar, x: torch.Tensor) -> Scalar:
    """A float stays a float; a tensor of shape () or (B,) broadcasts over x's other dims."""
    if not isinstance(a, torch.Tensor):
        return float(a)
    a = a.to(device=x.device, dtype=x.dtype)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)) if a.ndim else a
