"""The solver registry: every update the sampler can apply after a model call, one entry each.

An entry (:class:`Solver`) holds what the rest of the library needs to know: its per-step
coefficients along a grid (float64, from :mod:`ddim.maths`), its pure update (and corrector),
its order, whether it draws noise of its own, what it extrapolates, and the words the README's
solver table and ``--solver``'s help are drawn from. Adding a solver is one entry here plus its
pure update in :mod:`ddim.maths`.

Names follow k-diffusion and ComfyUI. DDIM with η = 0 is the first-order (Euler) solver of the
probability-flow ODE (DPM-Solver-1); the others are its higher-order relatives on the same ODE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..maths.ddim_coefficients import ddim_coefficients
from ..maths.dpm_solver import (
    dpmpp_2m_sde_update,
    dpmpp_2m_update,
    dpmpp_3m_true_update,
    dpmpp_3m_update,
)
from ..maths.ipndm import ipndm_steps, ipndm_update
from ..maths.log_snr import diffusers_orders, log_snr_steps
from ..maths.unipc import unipc_corrector_update, unipc_predictor_update
from .steppers import DDIMStepper, MultistepStepper

Coefficients = Callable[..., tuple]


@dataclass(frozen=True)
class Solver:
    """One solver of the registry.

    Attributes:
        name: the name ``solver=`` takes (k-diffusion's and ComfyUI's).
        method: what it is, in a few words (the README's table, ``--solver``'s help).
        source: the paper or code it follows.
        max_order: the highest order of its update.
        stochastic: whether it draws noise of its own (from the run's generators).
        data: what its update extrapolates: ``"x0"`` (x̂0), ``"eps"`` (ε̂) or ``"output"``
            (DDIM: eq. 12 on the model output).
        coefficients: ``(alpha_bar_t, alpha_bar_prev, eta=, sigma_hat=, prediction_type=,
            fuse=, upward=)`` -> per-step coefficients along a grid (float64 tensors of shape
            (S,) in), each with a ``noise_scale``; ``upward`` (multistep solvers): the grid
            run towards noise, for inversion.
        stepper: the class that runs it over a grid (:mod:`ddim.sampling.steppers`).
        update: ``update(x, history, c, noise, pred_x0) -> x_next``, None for DDIM.
        corrector: ``corrector(x_prev, history, new, c_prev) -> x`` (UniPC's), else None.
        ddim_options: whether it takes DDIM's ``eta``, ``sigma_hat`` and ``rederive_eps``.
        not_invertible: why :func:`ddim.invert` refuses it (None: it inverts).
    """

    name: str
    method: str
    source: str
    max_order: int
    stochastic: bool
    data: str
    coefficients: Coefficients
    stepper: type
    update: Callable[..., torch.Tensor] | None = None
    corrector: Callable[..., torch.Tensor] | None = None
    ddim_options: bool = False
    not_invertible: str | None = None


def _ddim(a_t: torch.Tensor, a_prev: torch.Tensor, *, eta: float, sigma_hat: bool,
          prediction_type: str, fuse: bool) -> tuple:
    return ddim_coefficients(a_t, a_prev, eta, sigma_hat, prediction_type, fuse)


def _log_snr(max_order: int, *, unipc: bool = False, stochastic: bool = False) -> Coefficients:
    def coefficients(a_t: torch.Tensor, a_prev: torch.Tensor, *, upward: bool = False,
                     **_: Any) -> tuple:
        a, n = a_t.tolist(), a_prev.tolist()
        return log_snr_steps(a, n, diffusers_orders(max_order, a, n, unipc=unipc), unipc=unipc,
                             stochastic=stochastic, upward=upward)

    return coefficients


def _ipndm(variable: bool) -> Coefficients:
    def coefficients(a_t: torch.Tensor, a_prev: torch.Tensor, *, upward: bool = False,
                     **_: Any) -> tuple:
        return ipndm_steps(a_t.tolist(), a_prev.tolist(), 4, variable=variable, upward=upward)

    return coefficients


_LU = "Lu et al. 2022, arXiv:2211.01095"
_REGISTRY = (
    Solver("ddim", "DDIM, any η (eq. 12); the default", "Song et al. 2021, arXiv:2010.02502",
           1, False, "output", _ddim, DDIMStepper, ddim_options=True),
    Solver("dpmpp_2m", "DPM-Solver++(2M), multistep, data prediction", _LU, 2, False, "x0",
           _log_snr(2), MultistepStepper, dpmpp_2m_update),
    Solver("dpmpp_3m", "DPM-Solver++(3M) as diffusers and k-diffusion compute it (its "
           "third-order term has half the weight: second order)", _LU, 3, False, "x0",
           _log_snr(3), MultistepStepper, dpmpp_3m_update),
    Solver("dpmpp_3m_true", "DPM-Solver++(3M) with the third-order weight on its D2 term "
           "(true third order)", _LU, 3, False, "x0", _log_snr(3), MultistepStepper,
           dpmpp_3m_true_update),
    Solver("unipc", "UniPC-bh2, order 2: predictor and corrector, the corrector reusing the "
           "next model call", "Zhao et al. 2023, arXiv:2302.04867", 2, False, "x0",
           _log_snr(2, unipc=True), MultistepStepper, unipc_predictor_update,
           unipc_corrector_update,
           not_invertible="its corrector, run upwards, amplifies the error (measured on the "
           "Gaussian oracle: a round trip off by 17 at S = 5 on a karras grid)"),
    Solver("dpmpp_2m_sde", "stochastic DPM-Solver++(2M), noise from the run's generators",
           _LU, 2, True, "x0", _log_snr(2, stochastic=True), MultistepStepper,
           dpmpp_2m_sde_update, not_invertible="it draws noise, and an inversion is "
           "deterministic"),
    Solver("ipndm", "iPNDM: fourth-order Adams–Bashforth on ε in (x/√ᾱ, σ/√ᾱ), fixed "
           "weights, lower-order warm-up", "Zhang & Chen 2023 (DEIS), arXiv:2204.13902", 4,
           False, "eps", _ipndm(False), MultistepStepper, ipndm_update,
           not_invertible="its fixed weights, run upwards over steps that grow (σ̄ multiplies "
           "at each step), diverge (measured on the digits model: a round trip off by 3.6 in "
           "mean square at S = 5)"),
    Solver("ipndm_v", "iPNDM with variable-step Adams–Bashforth weights",
           "Zhang & Chen 2023 (DEIS), arXiv:2204.13902", 4, False, "eps", _ipndm(True),
           MultistepStepper, ipndm_update,
           not_invertible="its variable-step weights extrapolate over steps that grow "
           "upwards (σ̄ multiplies at each step): unstable"),
)
SOLVERS: dict[str, Solver] = {s.name: s for s in _REGISTRY}
SOLVER_NAMES = tuple(SOLVERS)
STOCHASTIC_SOLVERS = tuple(s.name for s in _REGISTRY if s.stochastic)


def solver_help() -> str:
    """``--solver``'s help: every solver in a few words, from the registry."""
    return "; ".join(f"{s.name}: {s.method}" for s in _REGISTRY)


def solver_table() -> str:
    """The README's solver table (Markdown), from the registry."""
    rows = ["| `solver` | order | method | source |", "|---|---|---|---|"]
    rows += [f"| `{s.name}` | {s.max_order} | {s.method} | {s.source} |" for s in _REGISTRY]
    return "\n".join(rows)
