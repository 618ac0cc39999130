"""DDIM's coefficients (Song, Meng & Ermon, ICLR 2021: eq. 12 and 16), in float64.

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

The step itself, on tensors: :mod:`ddim.maths.ddim_step`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .prediction import Scalar, output_coefficients


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
