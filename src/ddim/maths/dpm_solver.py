"""DPM-Solver++ multistep updates (Lu et al. 2022, arXiv:2211.01095), as pure tensor functions.

x and the x̂0s (``pred_x0s``, newest first: x̂0_i, x̂0_{i-1}, ...) are (B, ...) float32 or
float64 tensors; the x̂0s are cast to x's dtype and the result has x's dtype. Each update reads
its order from ``c.order`` (a :class:`~ddim.maths.log_snr.LogSNRStep` of float64 scalars) and
needs that many x̂0s. Notation as in :mod:`ddim.maths.log_snr`: every update has the form
x_{i+1} = (σ_{i+1}/σ_i)·x_i + α_{i+1}·[h·φ_1 D0 + h·φ_2 D1 + h·φ_3 D2]. Each update expands its
D's into one weight per tensor (float64 scalar algebra) and applies x·w_x + Σ w_k·x̂0_k, one
elementwise kernel per term (:func:`combine`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .log_snr import LogSNRStep


def first_order_update(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor], c: LogSNRStep,
                       noise: torch.Tensor | None = None,
                       pred_x0: torch.Tensor | None = None) -> torch.Tensor:
    """DPM-Solver++(1): x_{i+1} = (σ_{i+1}/σ_i)·x_i + α_{i+1}(1 - e^{-h})·x̂0_i.

    Equal to DDIM with η=0 (:func:`ddim.maths.ddim_step.ddim_step`): substituting
    ε̂ = (x_i - α_i x̂0_i)/σ_i into α_{i+1}x̂0 + σ_{i+1}ε̂ gives the same two terms.
    """
    return combine(x, c.sigma_ratio, (c.alpha_next * c.h_phi_1, pred_x0s[0]))


def dpmpp_2m_update(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor], c: LogSNRStep,
                    noise: torch.Tensor | None = None,
                    pred_x0: torch.Tensor | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), diffusers' "midpoint" form (= k-diffusion's ``sample_dpmpp_2m``).

    x_{i+1} = (σ_{i+1}/σ_i)·x_i + α_{i+1}(1 - e^{-h})·(D0 + D1/2),
    D0 = x̂0_i, D1 = (x̂0_i - x̂0_{i-1})/r_0 (the paper's Algorithm 2). Order 1
    (:func:`first_order_update`) where ``c.order`` is 1.
    """
    if c.order == 1:
        return first_order_update(x, pred_x0s, c)
    w, q = c.alpha_next * c.h_phi_1, 0.5 / c.r0  # D0 + D1/2 = (1 + q)·x̂0_i - q·x̂0_{i-1}
    return combine(x, c.sigma_ratio, (w * (1 + q), pred_x0s[0]), (-w * q, pred_x0s[1]))


def dpmpp_3m_update(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor], c: LogSNRStep,
                    noise: torch.Tensor | None = None,
                    pred_x0: torch.Tensor | None = None) -> torch.Tensor:
    """DPM-Solver++(3M) as diffusers, the DPM-Solver reference code and k-diffusion compute it.

    x_{i+1} = (σ_{i+1}/σ_i)x_i + α_{i+1}[hφ_1 D0 + hφ_2 D1 + hφ_3 D2], where D1_0 =
    (x̂0_i - x̂0_{i-1})/r_0 and D1_1 = (x̂0_{i-1} - x̂0_{i-2})/r_1 are scaled first
    differences, D1 = D1_0 + r_0/(r_0+r_1)·(D1_0 - D1_1) ≈ h·x̂0' and D2 = (D1_0 - D1_1)/(r_0+r_1)
    ≈ h²·x̂0''/2 at λ_i. Falls back to 2M / first order where ``c.order`` < 3.

    Order: the exact step needs h³φ_3(-h)·x̂0'' = 2·hφ_3·D2, but this rule weighs D2 by hφ_3,
    so its local error is O(h³) and the method is second order (measured 2.2 on the Gaussian
    oracle). Kept as is: it is what "DPM-Solver++(3M)" means in those libraries.
    :func:`dpmpp_3m_true_update` has the third-order weight.
    """
    return _third_order(x, pred_x0s, c, d2_weight=c.h_phi_3)


def dpmpp_3m_true_update(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor], c: LogSNRStep,
                         noise: torch.Tensor | None = None,
                         pred_x0: torch.Tensor | None = None) -> torch.Tensor:
    """DPM-Solver++(3M) of true third order: :func:`dpmpp_3m_update` with D2 weighted by
    2·hφ_3, the weight the Taylor expansion of the exponential integrator asks for (as the
    same paper's singlestep third-order update has it). Exact for x̂0(λ) quadratic in λ once
    three x̂0s are known."""
    return _third_order(x, pred_x0s, c, d2_weight=2 * c.h_phi_3)


def _third_order(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor], c: LogSNRStep,
                 d2_weight: float) -> torch.Tensor:
    if c.order < 3:
        return dpmpp_2m_update(x, pred_x0s, c)
    # hφ_2 D1 + w D2 = hφ_2 D1_0 + q (D1_0 - D1_1), q = (hφ_2 r_0 + w)/(r_0 + r_1)
    q = (c.h_phi_2 * c.r0 + d2_weight) / (c.r0 + c.r1)
    u, v = (c.h_phi_2 + q) / c.r0, q / c.r1  # weights of x̂0_i - x̂0_{i-1}, x̂0_{i-1} - x̂0_{i-2}
    a = c.alpha_next
    return combine(x, c.sigma_ratio, (a * (c.h_phi_1 + u), pred_x0s[0]),
                   (-a * (u + v), pred_x0s[1]), (a * v, pred_x0s[2]))


def dpmpp_2m_sde_update(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor], c: LogSNRStep,
                        noise: torch.Tensor | None = None,
                        pred_x0: torch.Tensor | None = None) -> torch.Tensor:
    """SDE-DPM-Solver++(2M), midpoint (diffusers ``algorithm_type="sde-dpmsolver++"``).

    x_{i+1} = (σ_{i+1}/σ_i)e^{-h}·x_i + α_{i+1}(1 - e^{-2h})·(D0 + D1/2)
              + σ_{i+1}·sqrt(1 - e^{-2h})·z,   D1 = (x̂0_i - x̂0_{i-1})/r_0 (0 at order 1).
    ``noise`` z ~ N(0, I) of x's shape is read only where ``c.noise_scale`` > 0.

    Raises:
        ValueError: noise_scale > 0 and no noise given.
    """
    w, q = c.alpha_next * c.one_minus_exp_neg_2h, (0.5 / c.r0 if c.order >= 2 else 0.0)
    terms = [(w * (1 + q), pred_x0s[0])] + ([(-w * q, pred_x0s[1])] if c.order >= 2 else [])
    if c.noise_scale > 0:
        if noise is None:
            raise ValueError("noise is required where the step's noise_scale > 0")
        terms.append((c.noise_scale, noise))
    return combine(x, c.sigma_ratio * c.exp_neg_h, *terms)


def combine(x: torch.Tensor, x_weight: float, *terms: tuple[float, torch.Tensor]
            ) -> torch.Tensor:
    """x_weight·x + Σ w_k·m_k in x's dtype (each m_k cast to it), one kernel per term."""
    out = x * x_weight
    for weight, m in terms:
        out.add_(m if m.dtype == x.dtype else m.to(x.dtype), alpha=weight)
    return out
