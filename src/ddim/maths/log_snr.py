"""The probability-flow ODE in log-SNR: the variables shared by DPM-Solver++ and UniPC.

Code name        paper symbol (α = sqrt(ᾱ), σ = sqrt(1-ᾱ); index i = grid point t_i)
---------------  ----------------------------------------------------------------------------
``lambda``       λ = log(α/σ), the half log-SNR; +∞ at ᾱ = 1 (x0), -∞ at ᾱ = 0
``h``            h_i = λ_{i+1} - λ_i >= 0, the step in log-SNR (+∞ onto ᾱ = 1, 0 onto the
                 same level: an identity step)
``r0``, ``r1``   r_0 = h_{i-1}/h_i, r_1 = h_{i-2}/h_i: ratios of past steps to this one
``sigma_ratio``  σ_{i+1}/σ_i;   ``exp_neg_h`` e^{-h} = (σ_{i+1}/α_{i+1})/(σ_i/α_i)
``h_phi_k``      h·φ_k(-h), φ_1(z) = (e^z-1)/z, φ_{k+1}(z) = (φ_k(z)-1/k!)/z:
                 h·φ_1(-h) = 1-e^{-h}, h·φ_2(-h) = 1-φ_1(-h), h·φ_3(-h) = 1/2-φ_2(-h)

The data-prediction ODE in λ is solved exactly in its linear part (an exponential integrator,
Lu et al. 2022, arXiv:2211.01095): every update is
x_{i+1} = (σ_{i+1}/σ_i)·x_i + α_{i+1}·[h·φ_1 D0 + h·φ_2 D1 + h·φ_3 D2] with D0 = x̂0_i and D1,
D2 scaled divided differences of past x̂0s. First order (D1 = D2 = 0) is DDIM with η = 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch

_FEW_STEPS = 15  # diffusers' `lower_order_final` applies only below 15 steps (DPM-Solver++)


class LogSNRStep(NamedTuple):
    """The float64 scalars of one step x_i -> x_{i+1} of a log-SNR solver (immutable).

    All are finite, except ``h`` = +∞ on a step onto ᾱ = 1 or from ᾱ = 0, and ``r0``/``r1``
    = +∞ after a step from ᾱ = 0 (zero terminal SNR), which makes that difference term vanish.
    A step onto its own level (h = 0) is the identity: σ_ratio = 1 and every h·φ_k = 0.
    """

    order: int  # order of this step's update: 1 (warm-up, final steps), 2 or 3
    h: float  # h_i = λ_{i+1} - λ_i
    r0: float  # h_{i-1}/h_i (0 where order < 2)
    r1: float  # h_{i-2}/h_i (0 where order < 3)
    alpha_next: float  # α_{i+1} = sqrt(ᾱ_{i+1})
    sigma_next: float  # σ_{i+1} = sqrt(1 - ᾱ_{i+1})
    sigma_ratio: float  # σ_{i+1}/σ_i
    exp_neg_h: float  # e^{-h_i}
    h_phi_1: float  # h·φ_1(-h) = 1 - e^{-h}, in [0, 1]
    h_phi_2: float  # h·φ_2(-h) = 1 - (1 - e^{-h})/h, 1 at h = ∞
    h_phi_3: float  # h·φ_3(-h) = 1/2 - (h - 1 + e^{-h})/h², 1/2 at h = ∞
    rho_c: tuple[float, float]  # UniC weights (ρ_1, ρ_last) for correcting x_{i+1}; else 0s
    one_minus_exp_neg_2h: float  # 1 - e^{-2h} (2M SDE); 0 for the ODE solvers
    noise_scale: float  # σ_{i+1}·sqrt(1 - e^{-2h}) (2M SDE); 0 for the ODE solvers


def log_snr_steps(alpha_bar_t: Sequence[float], alpha_bar_next: Sequence[float],
                  orders: Sequence[int], *, unipc: bool = False, stochastic: bool = False,
                  upward: bool = False) -> tuple[LogSNRStep, ...]:
    """Per-step coefficients of a log-SNR solver along a grid, in float64.

    Args:
        alpha_bar_t, alpha_bar_next: the grid's levels (see :func:`check_levels`); with
            ``upward``, decreasing: the grid run towards noise (inversion), h < 0.
        orders: the order of each step (:func:`diffusers_orders`).
        unipc: also compute UniC's corrector weights ``rho_c`` (Zhao et al. 2023, bh2).
        stochastic: also compute the SDE-DPM-Solver++ terms (1 - e^{-2h}, the noise scale).
    """
    a_t, a_next = check_levels(alpha_bar_t, alpha_bar_next, upward=upward)
    S = len(a_t)
    lam = [half_log_snr(a) for a in a_t] + [half_log_snr(a_next[-1])]
    h = [0.0 if a_next[i] == a_t[i] else lam[i + 1] - lam[i] for i in range(S)]
    out = []
    for i in range(S):
        alpha_t, sigma_t = math.sqrt(a_t[i]), math.sqrt(1 - a_t[i])
        alpha_n, sigma_n = math.sqrt(a_next[i]), math.sqrt(1 - a_next[i])
        if sigma_t == 0:  # from a clean level (ᾱ = 1) onto itself: x̂0 is the sample
            ratio = exp_neg_h = 0.0
        else:  # ratios: finite even at λ = ±∞
            ratio, exp_neg_h = sigma_n / sigma_t, (sigma_n * alpha_t) / (alpha_n * sigma_t)
        h_phi_1, h_phi_2, h_phi_3 = h_phi(h[i]) if sigma_t > 0 else (1.0, 1.0, 0.5)
        p = orders[i]
        r0 = h[i - 1] / h[i] if p >= 2 else 0.0
        r1 = h[i - 2] / h[i] if p >= 3 else 0.0
        rho_c = (0.0, 0.0)
        if unipc and p == 1:
            rho_c = (0.0, 0.5)  # UniC-1: diffusers' ρ = 1/2 (trapezoidal), not b_1 = hφ_2/hφ_1
        elif unipc:
            # UniC-2: solve R ρ = b, R = [[1, 1], [-r0, 1]] (rows r_k^{m-1}, r_k = -r0, r_2 = 1),
            # b_m = m!·h·φ_{m+1}(-h)/B(-h), B(-h) = e^{-h} - 1 = -h·φ_1(-h)
            b1, b2 = h_phi_2 / h_phi_1, 2 * h_phi_3 / h_phi_1
            rho_1 = (b1 - b2) / (1 + r0)
            rho_c = (rho_1, b1 - rho_1)
        one_minus_exp_neg_2h = noise_scale = 0.0
        if stochastic:
            one_minus_exp_neg_2h = -math.expm1(-2 * h[i])
            noise_scale = sigma_n * math.sqrt(one_minus_exp_neg_2h)
        out.append(LogSNRStep(p, h[i], r0, r1, alpha_n, sigma_n, ratio, exp_neg_h,
                              h_phi_1, h_phi_2, h_phi_3, rho_c, one_minus_exp_neg_2h,
                              noise_scale))
    return tuple(out)


def diffusers_orders(max_order: int, alpha_bar_t: Sequence[float],
                     alpha_bar_next: Sequence[float], *, unipc: bool = False) -> list[int]:
    """The order of each step, by diffusers 0.42.1's rules (so that the results match its
    ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` step for step).

    Step i uses min(p, i+1) (warm-up: order k needs k past x̂0s). DPM-Solver++ (2M, 3M, 2M
    SDE) uses order 1 on the last step when it lands on ᾱ = 1 (``final_sigmas_type="zero"``)
    or S < 15, and at most 2 on the step before when S < 15 (``lower_order_final=True``);
    UniPC uses min(2, S-i), order 1 on the last step whatever S. A step onto its own level
    (h = 0) and the step after a clean level are order 1.
    """
    S = len(alpha_bar_t)
    orders = [min(max_order, i + 1) for i in range(S)]
    if unipc:
        orders = [min(o, S - i) for i, o in enumerate(orders)]
    else:
        if alpha_bar_next[-1] == 1 or S < _FEW_STEPS:
            orders[-1] = 1
        if S < _FEW_STEPS and S >= 2:
            orders[-2] = min(orders[-2], 2)
    if alpha_bar_next[-1] == alpha_bar_t[-1]:  # h = 0: the identity, whatever the history
        orders[-1] = 1
    return orders


def h_phi(h: float) -> tuple[float, float, float]:
    """h·φ_k(-h) for k = 1, 2, 3; (1, 1, 1/2) at h = ∞, 0s at h = 0, power series where
    |h| < 0.01 (no cancellation: error < |h|^7). h < 0 on a step upwards (inversion)."""
    if abs(h) < 0.01:  # h·φ_k(-h) = Σ_n (-h)^n h/(n+k)!
        return tuple(sum((-h) ** n * h / math.factorial(n + k) for n in range(6))
                     for k in (1, 2, 3))
    h_phi_1 = -math.expm1(-h)  # 1 - e^{-h}
    h_phi_2 = 1 - h_phi_1 / h
    return h_phi_1, h_phi_2, 0.5 - h_phi_2 / h


def half_log_snr(alpha_bar: float) -> float:
    """λ = log(α/σ) = (log ᾱ - log(1-ᾱ))/2; -∞ at ᾱ = 0, +∞ at ᾱ = 1."""
    if alpha_bar == 0:
        return -math.inf
    if alpha_bar == 1:
        return math.inf
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


def check_levels(alpha_bar_t: Sequence[float], alpha_bar_next: Sequence[float], *,
                 upward: bool = False) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The levels of a grid for a multistep solver, checked, as float tuples.

    With ``upward`` the grid runs towards noise (inversion): every level lies in (0, 1) and
    ``alpha_bar_next[i] < alpha_bar_t[i]``; otherwise:

    Args:
        alpha_bar_t: ᾱ(t_i) for the S grid points t_0 > ... > t_{S-1}, in [0, 1],
            increasing (0 only at i = 0: zero terminal SNR). Floats, a 1-D tensor or array.
        alpha_bar_next: ᾱ(t_{i+1}), i.e. ``alpha_bar_t[1:]`` followed by the level after the
            last step: 1 (the clean sample) or ᾱ(0) (``final_alpha="first"``, which may equal
            the last level: an identity step).

    Raises:
        TypeError: levels that are not real numbers. ValueError: lengths that differ or are
            0; levels outside the ranges above, not increasing, or
            ``alpha_bar_next[i] != alpha_bar_t[i+1]``.
    """
    a_t, a_next = _floats("alpha_bar_t", alpha_bar_t), _floats("alpha_bar_next", alpha_bar_next)
    S = len(a_t)
    if S == 0 or len(a_next) != S:
        raise ValueError(f"alpha_bar_t and alpha_bar_next must have the same length >= 1, got "
                         f"{S} and {len(a_next)}")
    for i in range(S):
        if upward and not 0 < a_next[i] < a_t[i] < 1:
            raise ValueError(f"step {i}: need 0 < alpha_bar_next < alpha_bar_t < 1 on a grid "
                             f"run upwards, got alpha_bar_t={a_t[i]!r}, alpha_bar_next="
                             f"{a_next[i]!r}")
        same_ok = upward or (a_t[i] == a_next[i] and i == S - 1)
        if not upward and (not (0 <= a_t[i] <= 1 and (a_t[i] < a_next[i] <= 1 or same_ok))
                           or (i > 0 and a_t[i] == 0)):
            raise ValueError(f"step {i}: need 0 <= alpha_bar_t < alpha_bar_next <= 1 (equal only "
                             f"on the last step, 0 only at step 0), got alpha_bar_t={a_t[i]!r}, "
                             f"alpha_bar_next={a_next[i]!r}")
        if i + 1 < S and a_next[i] != a_t[i + 1]:
            raise ValueError(f"alpha_bar_next[{i}] must equal alpha_bar_t[{i + 1}] (the next "
                             f"grid point), got {a_next[i]!r} and {a_t[i + 1]!r}")
    return a_t, a_next


def _floats(name: str, values: Sequence[float]) -> tuple[float, ...]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64)
    if hasattr(values, "tolist") and getattr(values, "ndim", None) == 1:  # tensor, numpy
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{name} must be a sequence of real numbers, got {values!r:.80}")
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out!r:.80}")
    return out
