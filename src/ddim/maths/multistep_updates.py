"""The update rules of :mod:`ddim.maths.multistep`, as pure tensor functions.

x and the x̂0s (``pred_x0s``, newest first: x̂0_i, x̂0_{i-1}, ...) are (B, ...) float32 or
float64 tensors; the x̂0s are cast to x's dtype and the result has x's dtype. Each update
reads its order from ``c.order`` (a :class:`StepCoefficients`, float64 scalars)
and needs that many x̂0s. Notation as in :mod:`ddim.maths.multistep`: every update has the form
x_{i+1} = (σ_{i+1}/σ_i)·x_i + α_{i+1}·[h·φ_1 D0 + h·φ_2 D1 + h·φ_3 D2]. Each update expands
its D's into one weight per tensor (float64 scalar algebra) and applies x·w_x + Σ w_k·x̂0_k,
one elementwise kernel per term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class StepCoefficients(NamedTuple):
    """The float64 scalars of one step x_i -> x_{i+1} (immutable, hashable).

    All are finite, except ``h`` = +∞ on a step onto ᾱ = 1 or from ᾱ = 0, and ``r0``/``r1``
    = +∞ after a step from ᾱ = 0 (zero terminal SNR), which makes that difference term vanish.
    """

    solver: str  # one of SOLVERS
    order: int  # order of this step's update: 1 (warm-up, final steps), 2 or 3
    h: float  # h_i = λ_{i+1} - λ_i
    r0: float  # h_{i-1}/h_i (0 where order < 2)
    r1: float  # h_{i-2}/h_i (0 where order < 3)
    alpha_next: float  # α_{i+1} = sqrt(ᾱ_{i+1})
    sigma_next: float  # σ_{i+1} = sqrt(1 - ᾱ_{i+1})
    sigma_ratio: float  # σ_{i+1}/σ_i
    exp_neg_h: float  # e^{-h_i}
    h_phi_1: float  # h·φ_1(-h) = 1 - e^{-h}, in (0, 1]
    h_phi_2: float  # h·φ_2(-h) = 1 - (1 - e^{-h})/h, 1 at h = ∞
    h_phi_3: float  # h·φ_3(-h) = 1/2 - (h - 1 + e^{-h})/h², 1/2 at h = ∞
    rho_c: tuple[float, float]  # UniC weights (ρ_1, ρ_last) for correcting x_{i+1}; else 0s
    one_minus_exp_neg_2h: float  # 1 - e^{-2h} (2M SDE); 0 for the ODE solvers
    noise_scale: float  # σ_{i+1}·sqrt(1 - e^{-2h}) (2M SDE); 0 for the ODE solvers


def first_order_update(x: torch.Tensor, pred_x0: torch.Tensor, c: StepCoefficients
                       ) -> torch.Tensor:
    """DPM-Solver++(1): x_{i+1} = (σ_{i+1}/σ_i)·x_i + α_{i+1}(1 - e^{-h})·x̂0_i.

    Equal to DDIM with η=0 (:func:`ddim.maths.ddim_step.ddim_step`): substituting
    ε̂ = (x_i - α_i x̂0_i)/σ_i into α_{i+1}x̂0 + σ_{i+1}ε̂ gives the same two terms.
    """
    return _combine(x, c.sigma_ratio, (c.alpha_next * c.h_phi_1, pred_x0))


def dpmpp_2m_update(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor], c: StepCoefficients
                    ) -> torch.Tensor:
    """DPM-Solver++(2M), diffusers' "midpoint" form (= k-diffusion's ``sample_dpmpp_2m``).

    x_{i+1} = (σ_{i+1}/σ_i)·x_i + α_{i+1}(1 - e^{-h})·(D0 + D1/2),
    D0 = x̂0_i, D1 = (x̂0_i - x̂0_{i-1})/r_0. Order 1 (:func:`first_order_update`) where
    ``c.order`` is 1.
    """
    if c.order == 1:
        return first_order_update(x, pred_x0s[0], c)
    w, q = c.alpha_next * c.h_phi_1, 0.5 / c.r0  # D0 + D1/2 = (1 + q)·x̂0_i - q·x̂0_{i-1}
    return _combine(x, c.sigma_ratio, (w * (1 + q), pred_x0s[0]), (-w * q, pred_x0s[1]))


def dpmpp_3m_update(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor], c: StepCoefficients
                    ) -> torch.Tensor:
    """DPM-Solver++(3M): x_{i+1} = (σ_{i+1}/σ_i)x_i + α_{i+1}[hφ_1 D0 + hφ_2 D1 + hφ_3 D2].

    D1_0 = (x̂0_i - x̂0_{i-1})/r_0 and D1_1 = (x̂0_{i-1} - x̂0_{i-2})/r_1 are scaled first
    differences; D1 = D1_0 + r_0/(r_0+r_1)·(D1_0 - D1_1) and D2 = (D1_0 - D1_1)/(r_0+r_1)
    estimate h·x̂0' and h²·x̂0''/2 at λ_i. Falls back to 2M/first order where ``c.order`` < 3.

    Order: the exact step needs h³φ_3(-h)·x̂0'' = 2·hφ_3·D2, but this rule (diffusers', and
    the DPM-Solver reference code's) weighs D2 by hφ_3, so its local error is O(h³) and the
    method is second order (measured 2.0 on the Gaussian oracle; with 2·hφ_3 it is exact for
    quadratic x̂0(λ)). Kept as is: it is what "DPM-Solver++(3M)" means in diffusers.
    """
    if c.order < 3:
        return dpmpp_2m_update(x, pred_x0s, c)
    # hφ_2 D1 + hφ_3 D2 = hφ_2 D1_0 + q (D1_0 - D1_1), q = (hφ_2 r_0 + hφ_3)/(r_0 + r_1)
    q = (c.h_phi_2 * c.r0 + c.h_phi_3) / (c.r0 + c.r1)
    u, v = (c.h_phi_2 + q) / c.r0, q / c.r1  # weights of x̂0_i - x̂0_{i-1}, x̂0_{i-1} - x̂0_{i-2}
    a = c.alpha_next
    return _combine(x, c.sigma_ratio, (a * (c.h_phi_1 + u), pred_x0s[0]),
                    (-a * (u + v), pred_x0s[1]), (a * v, pred_x0s[2]))


def unipc_predictor_update(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor],
                           c: StepCoefficients) -> torch.Tensor:
    """UniP-2 with B(h) = e^h - 1 (bh2) at -h, data prediction.

    x_{i+1} = (σ_{i+1}/σ_i)x_i + α_{i+1}(1 - e^{-h})·(x̂0_i + ρ_p·D1), ρ_p = 1/2 (UniP-2),
    D1 = (x̂0_i - x̂0_{i-1})/r_0. B(-h) = e^{-h} - 1 is the same factor as the exponential
    integrator's, so UniP-2-bh2 coincides with DPM-Solver++(2M); UniPC's gain is the corrector.
    """
    return dpmpp_2m_update(x, pred_x0s, c)


def unipc_corrector_update(x_prev: torch.Tensor, pred_x0s: Sequence[torch.Tensor],
                           pred_x0_new: torch.Tensor, c_prev: StepCoefficients) -> torch.Tensor:
    """UniC: redo step i-1 → i with the new x̂0_i included, giving the corrected x_i^c.

    x_i^c = (σ_i/σ_{i-1})x_{i-1} + α_i(1 - e^{-h})·(x̂0_{i-1} + ρ_1·D1 + ρ_last·(x̂0_i -
    x̂0_{i-1})), with h, r_0, ρ = ``c_prev.rho_c`` and the order of the step i-1 → i.

    Args:
        x_prev: x_{i-1}, itself corrected, from which the predictor produced x_i.
        pred_x0s: (x̂0_{i-1}, x̂0_{i-2}, ...) newest first, as the predictor used them.
        pred_x0_new: x̂0_i, from the model at the uncorrected x_i (no extra model call).
        c_prev: the coefficients of step i-1.
    """
    c = c_prev
    w, (rho_1, rho_last) = c.alpha_next * c.h_phi_1, c.rho_c
    q = rho_1 / c.r0 if c.order >= 2 else 0.0  # ρ_1·D1 = q·(x̂0_{i-1} - x̂0_{i-2})
    terms = [(w * rho_last, pred_x0_new), (w * (1 - rho_last + q), pred_x0s[0])]
    if c.order >= 2:
        terms.append((-w * q, pred_x0s[1]))
    return _combine(x_prev, c.sigma_ratio, *terms)


def dpmpp_2m_sde_update(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor], c: StepCoefficients,
                        noise: torch.Tensor | None) -> torch.Tensor:
    """SDE-DPM-Solver++(2M), midpoint (diffusers ``algorithm_type="sde-dpmsolver++"``).

    x_{i+1} = (σ_{i+1}/σ_i)e^{-h}·x_i + α_{i+1}(1 - e^{-2h})·(D0 + D1/2)
              + σ_{i+1}·sqrt(1 - e^{-2h})·z,   D1 = (x̂0_i - x̂0_{i-1})/r_0 (0 at order 1).
    ``noise`` z ~ N(0, I) of x's shape is read only where ``c.noise_scale`` > 0.
    """
    w, q = c.alpha_next * c.one_minus_exp_neg_2h, (0.5 / c.r0 if c.order >= 2 else 0.0)
    terms = [(w * (1 + q), pred_x0s[0])] + ([(-w * q, pred_x0s[1])] if c.order >= 2 else [])
    if c.noise_scale > 0:
        if noise is None:
            raise ValueError("noise is required where the step's noise_scale > 0")
        terms.append((c.noise_scale, noise))
    return _combine(x, c.sigma_ratio * c.exp_neg_h, *terms)


def _combine(x: torch.Tensor, x_weight: float, *terms: tuple[float, torch.Tensor]
             ) -> torch.Tensor:
    """x_weight·x + Σ w_k·m_k in x's dtype (each m_k cast to it), one kernel per term."""
    out = x * x_weight
    for weight, m in terms:
        out.add_(m if m.dtype == x.dtype else m.to(x.dtype), alpha=weight)
    return out
