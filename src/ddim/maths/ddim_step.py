"""One DDIM step as pure tensor math (Song, Meng & Ermon, ICLR 2021: eq. 9, 12 and 16).

Code name            paper symbol
-------------------  ------------------------------------------------------------
``alpha_bar_t``      ᾱ_t      (the paper's α_t): signal level at the current step
``alpha_bar_prev``   ᾱ_prev   (α_{t-1}): level at the next grid point, 1 after the last
``eta``              η        interpolates deterministic DDIM (0) and DDPM-like (1)
``sigma_t``          σ_t(η) = η·sqrt((1-ᾱ_prev)/(1-ᾱ_t))·sqrt(1-ᾱ_t/ᾱ_prev)    (eq. 16)
``pred_x0``          x̂0 = (x_t - sqrt(1-ᾱ_t)·ε̂)/sqrt(ᾱ_t)     "predicted x0"  (eq. 9)
``pred_eps``         ε̂ = ε_θ(x_t, t)
``prev_sample``      x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1-ᾱ_prev-σ_t²)·ε̂ + σ_t·z    (eq. 12)
``c_x0, c_eps``      sqrt(ᾱ_prev) and sqrt(1-ᾱ_prev-σ_t²): eq. 12 as x_prev = c_x0·x̂0 +
``noise_scale``      c_eps·ε̂ + noise_scale·z, with noise_scale = σ_t (σ̂_t for the σ̂ variant)
``a_x, a_out``       the fused form: x_prev = a_x·x_t + a_out·out + noise_scale·z
-------------------  ------------------------------------------------------------

Why the fused form is eq. 12: for every prediction type x̂0 and ε̂ are linear in (x_t, out)
(:func:`ddim.maths.prediction.output_coefficients`), so c_x0·x̂0 + c_eps·ε̂ is one linear
combination a_x·x_t + a_out·out. The sampler applies it in two kernels; for ε-prediction with
η=0 it is the Euler step of the probability-flow ODE in (x/sqrt(ᾱ), sqrt(1-ᾱ)/sqrt(ᾱ)).

Run "upwards" (``alpha_bar_prev`` a lower signal level than ``alpha_bar_t``) with η=0 the same
formula is the DDIM inversion step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..checks import check_choice, check_eta
from .prediction import (
    PREDICTION_TYPES,
    Scalar,
    expand_level,
    output_coefficients,
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


class Eq12Coefficients(NamedTuple):
    """Eq. 12 as x_prev = c_x0·x̂0 + c_eps·ε̂ + noise_scale·z (floats, or float64 tensors)."""

    c_x0: Scalar
    c_eps: Scalar
    noise_scale: Scalar


class FusedCoefficients(NamedTuple):
    """Eq. 12 with x̂0, ε̂ substituted: x_prev = a_x·x_t + a_out·out (+ noise_scale·z)."""

    a_x: Scalar
    a_out: Scalar


class DDIMCoefficients(NamedTuple):
    """One DDIM step of a grid, as Python floats: eq. 12 (c_x0, c_eps, noise_scale) and its
    fused form (a_x, a_out); ``fused`` False where the step must form x̂0 itself (x̂0 is
    processed, or the step returns x̂0 exactly)."""

    c_x0: float
    c_eps: float
    noise_scale: float
    a_x: float
    a_out: float
    fused: bool


def ddim_sigma(alpha_bar_t: Scalar, alpha_bar_prev: Scalar, eta: float) -> Scalar:
    """σ_t(η) = η·sqrt((1-ᾱ_prev)/(1-ᾱ_t))·sqrt(1-ᾱ_t/ᾱ_prev) (DDIM paper, eq. 16).

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


def max_eta(alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """The largest η for which eq. 12 is defined: σ_t(η)² <= 1-ᾱ_prev, per step.

    η_max² = (1-ᾱ_t)/(1-ᾱ_t/ᾱ_prev), always > 1 (so η in [0, 1] is always allowed); +inf
    where ᾱ_prev = 1 (no noise is added on the step that returns x̂0).

    Args:
        alpha_bar_t, alpha_bar_prev: float64 tensors of shape (S,), ᾱ_prev > ᾱ_t.

    Returns:
        float64 tensor of shape (S,).
    """
    a_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    a_p = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    gap = 1 - a_t / a_p
    return torch.where((a_p < 1) & (gap > 0), ((1 - a_t) / gap).sqrt(), math.inf)


def ddpm_sigma_hat(alpha_bar_t: Scalar, alpha_bar_prev: Scalar) -> Scalar:
    """The paper's σ̂_t = sqrt(1 - ᾱ_t/ᾱ_prev): DDPM's larger variance β_t, for skipped steps.

    Zero where ᾱ_prev = 1: DDPM adds no noise on the step that returns x0 (DDIM paper,
    section 5, the "σ̂" rows of Table 1).
    """
    if isinstance(alpha_bar_t, torch.Tensor) or isinstance(alpha_bar_prev, torch.Tensor):
        a_t = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
        a_p = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
        return torch.where(a_p < 1, (1 - a_t / a_p).clamp(min=0).sqrt(), torch.zeros_like(a_t))
    a_t, a_p = float(alpha_bar_t), float(alpha_bar_prev)
    return math.sqrt(max(1 - a_t / a_p, 0.0)) if a_p < 1 else 0.0


def check_eta_fits(eta: float, alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor,
                   grid: torch.Tensor | None = None) -> None:
    """Refuse an η whose noise σ_t(η)² would exceed 1-ᾱ_prev, the whole variance of the next
    level, at some step (η <= 1 always fits; see :func:`max_eta`).

    Args:
        eta: η >= 0.
        alpha_bar_t, alpha_bar_prev: float64 tensors of shape (S,) (or ()).
        grid: the timesteps (S,), named in the message when given.

    Raises:
        ValueError: naming η, the step and the largest η the levels allow.
    """
    if eta <= 1:
        return
    limit = max_eta(torch.as_tensor(alpha_bar_t, dtype=torch.float64).reshape(-1),
                    torch.as_tensor(alpha_bar_prev, dtype=torch.float64).reshape(-1))
    if eta <= float(limit.min()) * (1 + 1e-12):
        return
    i = int(limit.argmin())
    where = f"at step {i} (t={int(grid[i])})" if grid is not None else f"at step {i}"
    raise ValueError(
        f"eta={eta:g} is too large for this grid: {where} its noise σ_t² would exceed "
        f"1-ᾱ_prev, the whole variance of the next level; the largest eta this grid allows is "
        f"{float(limit.min()):.6g} (the paper's η lies in [0, 1]; sigma_hat=True gives DDPM's "
        "larger variance)")


def step_coefficients(
    alpha_bar_t: Scalar, alpha_bar_prev: Scalar, eta: float = 0.0, *, sigma_hat: bool = False
) -> Eq12Coefficients:
    """(c_x0, c_eps, noise_scale) with x_prev = c_x0·x̂0 + c_eps·ε̂ + noise_scale·z (eq. 12).

    c_x0 = sqrt(ᾱ_prev); c_eps = sqrt(1-ᾱ_prev-σ_t(η)²); noise_scale = σ_t(η) (eq. 16).
    With ``sigma_hat`` (the paper's σ̂ rows): the mean is the η=1 mean, which is the DDPM
    posterior mean μ̃(x_t, x̂0) of the skipping process, and the noise is σ̂_t·z
    (:func:`ddpm_sigma_hat`), larger than σ_t(1); ``eta`` is then ignored. Works on floats
    (float64 math) or on tensors of any shape (computed in float64).
    """
    sig_dir = ddim_sigma(alpha_bar_t, alpha_bar_prev, 1.0 if sigma_hat else eta)
    sig_noise = ddpm_sigma_hat(alpha_bar_t, alpha_bar_prev) if sigma_hat else sig_dir
    if isinstance(sig_dir, torch.Tensor):
        a_p = torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
        return Eq12Coefficients(a_p.sqrt(), (1 - a_p - sig_dir**2).clamp(min=0).sqrt(),
                                sig_noise)
    a_p = float(alpha_bar_prev)
    return Eq12Coefficients(math.sqrt(a_p), math.sqrt(max(1 - a_p - sig_dir**2, 0.0)), sig_noise)


def fused_coefficients(
    alpha_bar_t: Scalar, coefficients: tuple[Scalar, Scalar, Scalar],
    prediction_type: str = "epsilon",
) -> FusedCoefficients:
    """(a_x, a_out) with c_x0·x̂0 + c_eps·ε̂ = a_x·x_t + a_out·out, for unprocessed x̂0.

    Substituting x̂0 and ε̂ (:func:`output_coefficients`) into eq. 12
    (:func:`step_coefficients`) makes the noise-free part of x_prev one linear combination of
    x_t and the model output: for ε-prediction a_x = sqrt(ᾱ_prev/ᾱ_t) and a_out = c_eps -
    sqrt(ᾱ_prev·(1-ᾱ_t)/ᾱ_t), the Euler step of the probability-flow ODE when η=0. The
    sampler applies it in two kernels; computed once per call in float64.

    Raises:
        ValueError: an unknown ``prediction_type``.
    """
    o = output_coefficients(alpha_bar_t, prediction_type)
    c_x0, c_eps, _ = coefficients
    return FusedCoefficients(a_x=c_x0 * o.x0_x + c_eps * o.eps_x,
                             a_out=c_x0 * o.x0_out + c_eps * o.eps_out)


def ddim_coefficients(alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float,
                      sigma_hat: bool, prediction_type: str,
                      fuse: bool) -> tuple[DDIMCoefficients, ...]:
    """The coefficients of every DDIM step of a grid, from its float64 levels of shape (S,).

    ``fuse`` is False when x̂0 is processed: then no step uses the fused form. The last step
    onto ᾱ_prev = 1 without noise returns x̂0 exactly and is never fused.
    """
    c = step_coefficients(alpha_bar_t, alpha_bar_prev, eta, sigma_hat=sigma_hat)
    a_x, a_out = fused_coefficients(alpha_bar_t, c, prediction_type)
    returns_x0 = (alpha_bar_prev == 1) & (c.noise_scale == 0)  # x_prev = x̂0 exactly
    return tuple(DDIMCoefficients(*values, fuse and not last) for *values, last in zip(
        c.c_x0.tolist(), c.c_eps.tolist(), c.noise_scale.tolist(), a_x.tolist(),
        a_out.tolist(), returns_x0.tolist(), strict=True))


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
