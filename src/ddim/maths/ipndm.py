"""iPNDM: Adams–Bashforth on ε in the variables x̄ = x/α and σ̄ = σ/α (Zhang & Chen, "Fast
Sampling of Diffusion Models with Exponential Integrator" (DEIS), ICLR 2023; the ``ipndm`` and
``ipndm_v`` samplers of zju-pi/diff-sampler and ComfyUI), as pure tensor functions.

With α = sqrt(ᾱ), σ = sqrt(1-ᾱ), the probability-flow ODE of an ε-model is dx̄/dσ̄ = ε(x, t):
DDIM (η = 0) is its Euler step. iPNDM extrapolates ε from the last k model calls:

    x̄_{i+1} = x̄_i + (σ̄_{i+1} - σ̄_i)·Σ_j b_j ε̂_{i-j},   k = min(4, i+1) (lower-order warm-up)

- ``ipndm``: the fixed Adams–Bashforth weights b = (1), (3, -1)/2, (23, -16, 5)/12,
  (55, -59, 37, -9)/24, whatever the steps (exact for equal steps in σ̄);
- ``ipndm_v``: the variable-step weights b_j = (1/Δ)∫ ℓ_j(σ̄)dσ̄ over [σ̄_i, σ̄_{i+1}], ℓ_j the
  Lagrange basis through the k past σ̄s (the same weights on equal steps).

In x: x_{i+1} = (α_{i+1}/α_i)·x_i + α_{i+1}(σ̄_{i+1} - σ̄_i)·Σ_j b_j ε̂_{i-j}. A step from ᾱ = 0
(zero terminal SNR: σ̄ = ∞) is the DDIM step x_{i+1} = α_{i+1}·x̂0 + σ_{i+1}·ε̂, after which the
warm-up starts again (no ε̂ at σ̄ = ∞ enters a later step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .dpm_solver import combine
from .log_snr import check_levels

# Adams–Bashforth weights for equal steps, newest first (order 1 .. 4)
ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12),
                   (55 / 24, -59 / 24, 37 / 24, -9 / 24))


class IPNDMStep(NamedTuple):
    """The float64 weights of one iPNDM step x_i -> x_{i+1} (immutable).

    x_{i+1} = x_weight·x_i + Σ_j eps_weights[j]·ε̂_{i-j}, or, where ``x0_weight`` > 0,
    x0_weight·x̂0_i + eps_weights[0]·ε̂_i: on a step from ᾱ = 0 (x_weight would be ∞), and on a
    first-order step onto ᾱ = 1, which returns x̂0 itself (x̄ - σ̄·ε̂ = x̂0, without rounding).
    """

    order: int  # how many past ε̂s the step uses (1 .. 4)
    x_weight: float  # α_{i+1}/α_i (0 where x0_weight is used)
    eps_weights: tuple[float, ...]  # α_{i+1}(σ̄_{i+1} - σ̄_i)·b_j, newest first
    x0_weight: float  # α_{i+1} on a step from ᾱ = 0, 1 on a first-order step onto ᾱ = 1
    noise_scale: float = 0.0  # deterministic


def ipndm_steps(alpha_bar_t: Sequence[float], alpha_bar_next: Sequence[float],
                max_order: int = 4, *, variable: bool = False,
                upward: bool = False) -> tuple[IPNDMStep, ...]:
    """Per-step weights of iPNDM (``variable``: iPNDM-v) along a grid, in float64.

    Args:
        alpha_bar_t, alpha_bar_next: the grid's levels
            (:func:`ddim.maths.log_snr.check_levels`).
        max_order: 1 .. 4.
        variable: variable-step Adams–Bashforth weights (see the module docstring).
        upward: the grid runs towards noise (inversion: σ̄ grows).

    Raises:
        ValueError / TypeError: bad levels, or max_order outside [1, 4].
    """
    if not 1 <= max_order <= len(ADAMS_BASHFORTH):
        raise ValueError(f"max_order must lie in [1, {len(ADAMS_BASHFORTH)}], got {max_order}")
    a_t, a_next = check_levels(alpha_bar_t, alpha_bar_next, upward=upward)
    s = [_sigma_bar(a) for a in a_t] + [_sigma_bar(a_next[-1])]
    start = 1 if a_t[0] == 0 else 0  # the warm-up restarts after a step from σ̄ = ∞
    out = []
    for i in range(len(a_t)):
        alpha_n, sigma_n = math.sqrt(a_next[i]), math.sqrt(1 - a_next[i])
        if a_t[i] == 0:
            out.append(IPNDMStep(1, 0.0, (sigma_n,), alpha_n))
            continue
        k = min(max_order, i - start + 1)
        if k == 1 and a_next[i] == 1 and a_t[i] < 1:  # x̄ - σ̄·ε̂ = x̂0: return it
            out.append(IPNDMStep(1, 0.0, (0.0,), 1.0))
            continue
        delta = s[i + 1] - s[i]
        b = (variable_weights(s[i + 1], s[i - k + 1:i + 1][::-1]) if variable and k > 1
             else ADAMS_BASHFORTH[k - 1])
        x_weight = alpha_n / math.sqrt(a_t[i])
        out.append(IPNDMStep(k, x_weight, tuple(alpha_n * delta * w for w in b), 0.0))
    return tuple(out)


def variable_weights(s_next: float, nodes: Sequence[float]) -> tuple[float, ...]:
    """b_j = (1/Δ)∫_{s_i}^{s_next} ℓ_j(s) ds, Δ = s_next - s_i, ℓ_j the Lagrange basis through
    ``nodes`` = (s_i, s_{i-1}, ...) (newest first, distinct): variable-step Adams–Bashforth.

    Computed in the scaled variable u = (s - s_i)/Δ, integrated over u in [0, 1] (float64);
    on equal steps it gives :data:`ADAMS_BASHFORTH`.
    """
    delta = s_next - nodes[0]
    if delta == 0:  # a step onto its own level: no weight is used (the step is the identity)
        return (1.0,) + (0.0,) * (len(nodes) - 1)
    u = [(v - nodes[0]) / delta for v in nodes]
    weights = []
    for j, u_j in enumerate(u):
        basis = np.polynomial.Polynomial([1.0])
        for m, u_m in enumerate(u):
            if m != j:
                basis = basis * np.polynomial.Polynomial([-u_m, 1.0]) / (u_j - u_m)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(1.0) - antiderivative(0.0)))
    return tuple(weights)


def ipndm_update(x: torch.Tensor, eps_history: Sequence[torch.Tensor], c: IPNDMStep,
                 noise: torch.Tensor | None = None,
                 pred_x0: torch.Tensor | None = None) -> torch.Tensor:
    """One iPNDM step: x_{i+1} = x_weight·x_i + Σ_j w_j·ε̂_{i-j} (see :class:`IPNDMStep`).

    Args:
        x: x_i, (B, ...) float32 or float64.
        eps_history: (ε̂_i, ε̂_{i-1}, ...) newest first, at least ``c.order`` of them.
        c: the step's weights.
        pred_x0: x̂0_i, read only where ``c.x0_weight`` > 0.
    """
    if c.x0_weight:
        return combine(pred_x0, c.x0_weight, (c.eps_weights[0], eps_history[0]))
    return combine(x, c.x_weight, *zip(c.eps_weights, eps_history[:c.order], strict=True))


def _sigma_bar(alpha_bar: float) -> float:
    """σ̄ = sqrt((1-ᾱ)/ᾱ): +∞ at ᾱ = 0, 0 at ᾱ = 1."""
    return math.inf if alpha_bar == 0 else math.sqrt((1 - alpha_bar) / alpha_bar)
