"""Multistep solvers of the probability-flow ODE in log-SNR: DPM-Solver++ and UniPC.

The data-prediction ODE in λ = log(α/σ) is solved exactly in its linear part (an exponential
integrator); the methods differ in how they extrapolate x̂0 over a step from past values.

Code name        paper symbol (α = sqrt(ᾱ), σ = sqrt(1-ᾱ); index i = grid point t_i)
---------------  ----------------------------------------------------------------------------
``lambda``       λ = log(α/σ), the half log-SNR; +∞ at ᾱ = 1 (x0), -∞ at ᾱ = 0
``h``            h_i = λ_{i+1} - λ_i > 0, the step in log-SNR (+∞ onto ᾱ = 1)
``r0``, ``r1``   r_0 = h_{i-1}/h_i, r_1 = h_{i-2}/h_i: ratios of past steps to this one
``sigma_ratio``  σ_{i+1}/σ_i;   ``exp_neg_h`` e^{-h} = (σ_{i+1}/α_{i+1})/(σ_i/α_i)
``h_phi_k``      h·φ_k(-h), φ_1(z) = (e^z-1)/z, φ_{k+1}(z) = (φ_k(z)-1/k!)/z:
                 h·φ_1(-h) = 1-e^{-h}, h·φ_2(-h) = 1-φ_1(-h), h·φ_3(-h) = 1/2-φ_2(-h)
``pred_x0s``     (x̂0_i, x̂0_{i-1}, ...), newest first: the data predictions at past grid points
``D0, D1, D2``   x̂0_i and its divided differences (DPM-Solver++'s D_i, scaled by h)

Every update is x_{i+1} = (σ_{i+1}/σ_i)·x_i + α_{i+1}·[h·φ_1 D0 + h·φ_2 D1 + h·φ_3 D2]:
first order (D1 = D2 = 0) is DDIM with η=0 (DPM-Solver++, Lu et al. 2022,
arXiv:2211.01095); the final step onto ᾱ=1 (σ_{i+1}=0, h=+∞) has σ_ratio = 0, α = 1,
h·φ_1 = 1: x = x̂0. Sources: DPM-Solver++ (2M: its multistep second-order algorithm; 3M: the
third-order multistep rule of the authors' code, in fact second order: see
:func:`dpmpp_3m_update`); UniPC (Zhao et al. 2023, arXiv:2302.04867), UniP/UniC with
B(h) = e^h - 1 ("bh2"), evaluated at -h in the data-prediction form. Lower orders at the start
(warm-up) and end follow diffusers 0.42.1 (``lower_order_final=True``; see
:func:`solver_coefficients`), so the results match its schedulers step for step. The update
functions live in :mod:`ddim.maths.multistep_updates` and are re-exported here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from ..checks import check_choice
from .multistep_updates import (
    StepCoefficients,
    dpmpp_2m_sde_update,
    dpmpp_2m_update,
    dpmpp_3m_update,
    first_order_update,
    unipc_corrector_update,
    unipc_predictor_update,
)

__all__ = [
    "SOLVERS", "STOCHASTIC_SOLVERS", "MultistepStepper", "StepCoefficients",
    "solver_coefficients", "first_order_update", "dpmpp_2m_update", "dpmpp_3m_update",
    "unipc_predictor_update", "unipc_corrector_update", "dpmpp_2m_sde_update",
]

SOLVERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde")
STOCHASTIC_SOLVERS = ("dpmpp_2m_sde",)
_MAX_ORDER = {"ddim": 1, "dpmpp_2m": 2, "dpmpp_3m": 3, "unipc": 2, "dpmpp_2m_sde": 2}
_FEW_STEPS = 15  # diffusers' `lower_order_final` applies only below 15 steps (DPM-Solver++)


def solver_coefficients(
    solver: str, alpha_bar_t: Sequence[float], alpha_bar_next: Sequence[float]
) -> tuple[StepCoefficients, ...]:
    """Per-step coefficients of ``solver`` along a grid, computed once in float64.

    Args:
        solver: one of :data:`SOLVERS` (``"ddim"`` gives the first-order update throughout).
        alpha_bar_t: ᾱ(t_i) for the S grid points t_0 > ... > t_{S-1}, in [0, 1), increasing
            (0 only at i = 0: zero terminal SNR). Floats, or a 1-D tensor or array.
        alpha_bar_next: ᾱ(t_{i+1}), i.e. ``alpha_bar_t[1:]`` followed by the level after the
            last step: 1 (the clean sample) or ᾱ(0) (``final_alpha="first"``).

    Returns:
        S :class:`StepCoefficients`. Orders, as diffusers: step i uses min(p, i+1) (warm-up);
        DPM-Solver++ (2M, 3M, 2M SDE) uses order 1 on the last step when it lands on ᾱ=1
        (``final_sigmas_type="zero"``) or S < 15, and at most 2 on the step before when
        S < 15; UniPC uses min(2, S-i), order 1 on the last step whatever S, and corrects
        x_{i+1} with the order of step i.

    Raises:
        ValueError: unknown solver; lengths differ or are 0; levels outside the ranges
            above, not increasing, or ``alpha_bar_next[i] != alpha_bar_t[i+1]``.
        TypeError: levels that are not real numbers.
    """
    check_choice("solver", solver, SOLVERS)
    a_t, a_next = _levels("alpha_bar_t", alpha_bar_t), _levels("alpha_bar_next", alpha_bar_next)
    S = len(a_t)
    if S == 0 or len(a_next) != S:
        raise ValueError(f"alpha_bar_t and alpha_bar_next must have the same length >= 1, got "
                         f"{S} and {len(a_next)}")
    for i in range(S):
        if not (0 <= a_t[i] < 1 and a_t[i] < a_next[i] <= 1) or (i > 0 and a_t[i] == 0):
            raise ValueError(f"step {i}: need 0 <= alpha_bar_t < alpha_bar_next <= 1 (0 only "
                             f"at step 0), got alpha_bar_t={a_t[i]!r}, alpha_bar_next="
                             f"{a_next[i]!r}")
        if i + 1 < S and a_next[i] != a_t[i + 1]:
            raise ValueError(f"alpha_bar_next[{i}] must equal alpha_bar_t[{i + 1}] (the next "
                             f"grid point), got {a_next[i]!r} and {a_t[i + 1]!r}")
    lam = [_half_log_snr(a) for a in a_t] + [_half_log_snr(a_next[-1])]
    h = [lam[i + 1] - lam[i] for i in range(S)]  # never ∞ - ∞: ᾱ_t < 1 and ᾱ_next > 0
    orders = _orders(solver, S, final_is_clean=a_next[-1] == 1)
    out = []
    for i in range(S):
        alpha_t, sigma_t = math.sqrt(a_t[i]), math.sqrt(1 - a_t[i])
        alpha_n, sigma_n = math.sqrt(a_next[i]), math.sqrt(1 - a_next[i])
        exp_neg_h = (sigma_n * alpha_t) / (alpha_n * sigma_t)  # a ratio: finite even at λ = ±∞
        h_phi_1, h_phi_2, h_phi_3 = _h_phi(h[i])
        p = orders[i]
        r0 = h[i - 1] / h[i] if p >= 2 else 0.0
        r1 = h[i - 2] / h[i] if p >= 3 else 0.0
        rho_c = (0.0, 0.0)
        if solver == "unipc" and p == 1:
            rho_c = (0.0, 0.5)  # UniC-1: diffusers' ρ = 1/2 (trapezoidal), not b_1 = hφ_2/hφ_1
        elif solver == "unipc":
            # UniC-2: solve R ρ = b, R = [[1, 1], [-r0, 1]] (rows r_k^{m-1}, r_k = -r0, r_2 = 1),
            # b_m = m!·h·φ_{m+1}(-h)/B(-h), B(-h) = e^{-h} - 1 = -h·φ_1(-h)
            b1, b2 = h_phi_2 / h_phi_1, 2 * h_phi_3 / h_phi_1
            rho_1 = (b1 - b2) / (1 + r0)
            rho_c = (rho_1, b1 - rho_1)
        one_minus_exp_neg_2h = noise_scale = 0.0
        if solver in STOCHASTIC_SOLVERS:
            one_minus_exp_neg_2h = -math.expm1(-2 * h[i])
            noise_scale = sigma_n * math.sqrt(one_minus_exp_neg_2h)
        out.append(StepCoefficients(
            solver, p, h[i], r0, r1, alpha_n, sigma_n, sigma_n / sigma_t, exp_neg_h,
            h_phi_1, h_phi_2, h_phi_3, rho_c, one_minus_exp_neg_2h, noise_scale))
    return tuple(out)


def _orders(solver: str, S: int, *, final_is_clean: bool) -> list[int]:
    """The order of each step, by diffusers 0.42.1's rules (see :func:`solver_coefficients`)."""
    p = _MAX_ORDER[solver]
    orders = [min(p, i + 1) for i in range(S)]  # warm-up: order k needs k past x̂0s
    if solver == "unipc":
        return [min(o, S - i) for i, o in enumerate(orders)]
    if final_is_clean or S < _FEW_STEPS:
        orders[-1] = 1
    if S < _FEW_STEPS and S >= 2:
        orders[-2] = min(orders[-2], 2)
    return orders


def _h_phi(h: float) -> tuple[float, float, float]:
    """h·φ_k(-h) for k = 1, 2, 3; (1, 1, 1/2) at h = ∞, power series where h < 0.01."""
    if h < 0.01:  # h·φ_k(-h) = Σ_n (-h)^n h/(n+k)!: no cancellation (error < h^7)
        return tuple(sum((-h) ** n * h / math.factorial(n + k) for n in range(6))
                     for k in (1, 2, 3))
    h_phi_1 = -math.expm1(-h)  # 1 - e^{-h}
    h_phi_2 = 1 - h_phi_1 / h
    return h_phi_1, h_phi_2, 0.5 - h_phi_2 / h


def _half_log_snr(alpha_bar: float) -> float:
    """λ = log(α/σ) = (log ᾱ - log(1-ᾱ))/2; -∞ at ᾱ = 0, +∞ at ᾱ = 1."""
    if alpha_bar == 0:
        return -math.inf
    if alpha_bar == 1:
        return math.inf
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


def _levels(name: str, values: Sequence[float]) -> tuple[float, ...]:
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


_PREDICTORS = {"ddim": lambda x, pred_x0s, c: first_order_update(x, pred_x0s[0], c),
               "dpmpp_2m": dpmpp_2m_update,
               "dpmpp_3m": dpmpp_3m_update, "unipc": unipc_predictor_update}


class MultistepStepper:
    """One sampling call's solver state: x_{i+1} = stepper(i, x_i, x̂0_i) for i = 0, 1, ...

    Args:
        coefficients: :func:`solver_coefficients` of one grid (all of one solver).
        noise: a function returning fresh N(0, I) noise of x's shape; required by
            ``"dpmpp_2m_sde"``, which calls it once per step whose noise_scale > 0. The
            deterministic solvers never call it.

    Keeps the last x̂0s (in x's dtype) and, for UniPC, the previous x. UniPC corrects x_i with
    x̂0_i, computed by the model at the uncorrected x_i (the next step's model call, as
    diffusers), then predicts x_{i+1} from the corrected x_i; the last step is not corrected.
    The returned x_{i+1} is the predictor's (what diffusers' ``step`` returns).
    """

    def __init__(self, coefficients: Sequence[StepCoefficients],
                 noise: Callable[[], torch.Tensor] | None = None) -> None:
        self.coefficients = tuple(coefficients)
        if not self.coefficients or not all(
                isinstance(c, StepCoefficients) for c in self.coefficients):
            raise TypeError("coefficients must be a non-empty sequence of StepCoefficients "
                            "from solver_coefficients()")
        solvers = {c.solver for c in self.coefficients}
        if len(solvers) != 1:
            raise ValueError(f"coefficients must all be of one solver, got {sorted(solvers)}")
        self.solver = solvers.pop()
        if self.solver in STOCHASTIC_SOLVERS and noise is None:
            raise ValueError(f"noise is required for solver {self.solver!r}: a function "
                             "returning standard-normal noise of x's shape")
        self._noise = noise
        self._pred_x0s: tuple[torch.Tensor, ...] = ()  # newest first
        self._x_prev: torch.Tensor | None = None
        self._next = 0

    def __call__(self, i: int, x: torch.Tensor, pred_x0: torch.Tensor) -> torch.Tensor:
        """x_{i+1} from x_i (float32/float64, (B, ...)) and x̂0_i (x's shape), in x's dtype."""
        if i != self._next or i >= len(self.coefficients):
            raise ValueError(f"step index i must be {self._next} (steps run once, in order, "
                             f"i < {len(self.coefficients)}), got {i}")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"x must be float32 or float64, got {x.dtype}")
        if pred_x0.shape != x.shape:
            raise ValueError(f"pred_x0 must have x's shape {tuple(x.shape)}, "
                             f"got {tuple(pred_x0.shape)}")
        c = self.coefficients[i]
        if self.solver == "unipc" and i > 0:
            x = unipc_corrector_update(self._x_prev, self._pred_x0s, pred_x0,
                                       self.coefficients[i - 1])
        pred_x0 = pred_x0 if pred_x0.dtype == x.dtype else pred_x0.to(x.dtype)
        self._pred_x0s = (pred_x0, *self._pred_x0s[:_MAX_ORDER[self.solver] - 1])
        if self.solver in STOCHASTIC_SOLVERS:
            z = self._noise() if c.noise_scale > 0 else None
            if z is not None and z.shape != x.shape:
                raise ValueError(f"noise() must return x's shape {tuple(x.shape)}, "
                                 f"got {tuple(z.shape)}")
            x_next = dpmpp_2m_sde_update(x, self._pred_x0s, c, z)
        else:
            x_next = _PREDICTORS[self.solver](x, self._pred_x0s, c)
        self._x_prev = x if self.solver == "unipc" else None
        self._next = i + 1
        return x_next
