"""UniPC (Zhao et al. 2023, arXiv:2302.04867): UniP-2 and UniC with B(h) = e^h - 1 ("bh2"),
evaluated at -h in the data-prediction form, as pure tensor functions.

Notation and tensors as in :mod:`ddim.maths.dpm_solver`. The corrector reuses the next model
call: x̂0_i, computed at the uncorrected x_i, corrects x_i before x_{i+1} is predicted from it
(no extra model call; the last step is not corrected), as diffusers'
``UniPCMultistepScheduler`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dpm_solver import combine, dpmpp_2m_update
from .log_snr import LogSNRStep


def unipc_predictor_update(x: torch.Tensor, pred_x0s: Sequence[torch.Tensor], c: LogSNRStep,
                           noise: torch.Tensor | None = None,
                           pred_x0: torch.Tensor | None = None) -> torch.Tensor:
    """UniP-2 with B(h) = e^h - 1 (bh2) at -h, data prediction.

    x_{i+1} = (σ_{i+1}/σ_i)x_i + α_{i+1}(1 - e^{-h})·(x̂0_i + ρ_p·D1), ρ_p = 1/2 (UniP-2),
    D1 = (x̂0_i - x̂0_{i-1})/r_0. B(-h) = e^{-h} - 1 is the same factor as the exponential
    integrator's, so UniP-2-bh2 coincides with DPM-Solver++(2M); UniPC's gain is the corrector.
    """
    return dpmpp_2m_update(x, pred_x0s, c)


def unipc_corrector_update(x_prev: torch.Tensor, pred_x0s: Sequence[torch.Tensor],
                           pred_x0_new: torch.Tensor, c_prev: LogSNRStep) -> torch.Tensor:
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
    return combine(x_prev, c.sigma_ratio, *terms)
