"""One DDIM step as pure tensor math (Song, Meng & Ermon, ICLR 2021: eq. 9, 12 and 16).

x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1-ᾱ_prev-σ_t²)·ε̂ + σ_t·z (eq. 12), with x̂0 and ε̂ from the
model output (eq. 9, :mod:`ddim.maths.prediction`) and σ_t(η) of eq. 16; the notation and the
coefficients are :mod:`ddim.maths.ddim_coefficients`. Run "upwards" (``alpha_bar_prev`` a
lower signal level than ``alpha_bar_t``) with η=0 the same formula is the DDIM inversion step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..checks import check_choice, check_eta
from .ddim_coefficients import check_eta_fits, step_coefficients
from .prediction import (
    PREDICTION_TYPES,
    Scalar,
    expand_level,
    predict_x0_eps,
    refuse_zero_snr_epsilon,
    sqrt,
)
from .thresholding import ClipSample, process_x0


class StepOutput(NamedTuple):
    """Result of :func:`ddim_step`; all three have x_t's shape."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor
    pred_eps: torch.Tensor


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
    clip_sample: ClipSample = None,
    dynamic_threshold: float | None = None,
    dynamic_threshold_max: float = 1.0,
    rederive_eps: bool = False,
) -> StepOutput:
    """One generalized DDIM step x_t -> x_prev (DDIM paper, eq. 12, with σ_t(η) of eq. 16).

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

    Raises:
        TypeError: x_t or model_output is not a tensor. ValueError: an unknown
            prediction_type, η < 0 or above :func:`max_eta`, a level outside [0, 1], ᾱ_t = 0
            with ε-prediction, mismatched shapes, or noise missing where σ_t > 0.
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    eta = check_eta(eta)
    for name, value in (("x_t", x_t), ("model_output", model_output)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    for name, value in (("alpha_bar_t", alpha_bar_t), ("alpha_bar_prev", alpha_bar_prev)):
        if not isinstance(value, torch.Tensor) and not 0 <= float(value) <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    refuse_zero_snr_epsilon(prediction_type, torch.as_tensor(alpha_bar_t))
    if model_output.shape != x_t.shape:
        raise ValueError(f"model_output must have x_t's shape {tuple(x_t.shape)}, "
                         f"got {tuple(model_output.shape)}")
    if not sigma_hat:
        check_eta_fits(eta, torch.as_tensor(alpha_bar_t, dtype=torch.float64),
                       torch.as_tensor(alpha_bar_prev, dtype=torch.float64))
    coefficients = step_coefficients(alpha_bar_t, alpha_bar_prev, eta, sigma_hat=sigma_hat)
    if _positive(coefficients.noise_scale):
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
    clip_sample: ClipSample = None,
    dynamic_threshold: float | None = None,
    dynamic_threshold_max: float = 1.0,
    rederive_eps: bool = False,
) -> StepOutput:
    """:func:`ddim_step` with precomputed (c_x0, c_eps, noise_scale) and no argument checks.

    x_prev = c_x0·x̂0 + c_eps·ε̂ + noise_scale·z (eq. 12, see :func:`step_coefficients`). The
    sampler loop calls this with coefficients computed once per sampling call; ``noise`` is
    read only when noise_scale > 0 (and must then be given).

    Raises:
        ValueError: noise_scale > 0 and no noise given.
    """
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    x_t, model_output = x_t.to(dtype), model_output.to(dtype)
    pred_x0, pred_eps = predict_x0_eps(x_t, model_output, alpha_bar_t, prediction_type)
    if clip_sample is not None or dynamic_threshold is not None:
        pred_x0 = process_x0(pred_x0, clip_sample=clip_sample,
                             dynamic_threshold=dynamic_threshold,
                             dynamic_threshold_max=dynamic_threshold_max)
        if rederive_eps:
            a = expand_level(alpha_bar_t, x_t)
            pred_eps = (x_t - sqrt(a) * pred_x0) / sqrt(1 - a)
    c_x0, c_eps, c_noise = coefficients
    if isinstance(c_x0, torch.Tensor) or isinstance(c_eps, torch.Tensor):
        prev = expand_level(c_x0, x_t) * pred_x0 + expand_level(c_eps, x_t) * pred_eps
    else:  # two kernels: c_x0·x̂0, then + c_eps·ε̂
        prev = torch.add(pred_x0 * c_x0, pred_eps, alpha=c_eps)
    if _positive(c_noise):
        if noise is None:
            raise ValueError("noise is required when the step's noise scale is > 0")
        if isinstance(c_noise, torch.Tensor):
            prev = prev + expand_level(c_noise, x_t) * noise.to(dtype)
        else:
            prev = prev.add_(noise.to(dtype), alpha=c_noise)
    return StepOutput(prev, pred_x0, pred_eps)


def _positive(c: Scalar) -> bool:
    return bool((c > 0).any()) if isinstance(c, torch.Tensor) else c > 0
