"""The spacings: where S of the T training timesteps go, as pure functions of S and T (in
time) or of S and the schedule's noise levels (in σ). Every spacing gives exactly S distinct
integer timesteps, strictly decreasing, for every S in [1, T]: where a rule would repeat an
integer, points are pushed apart (:func:`make_distinct`).

The arguments are taken as checked (:func:`ddim.maths.grids.grid_spec` checks them).

- in time: ``trailing`` (the default), ``leading``, ``linspace``, ``quad`` (the DDIM paper's
  CIFAR10 grid), ``time_quadratic`` (DPM-Solver's);
- in the noise level σ_t = sqrt((1-ᾱ_t)/ᾱ_t), placed between σ(T-1) and σ(0) and mapped to the
  timestep of nearest log σ: ``karras`` (EDM, Karras et al. 2022, ρ = 7), ``kl_optimal``
  (σ = tan of a linear interpolation of atan σ, Sabour et al. 2024) and ``log_snr`` (uniform
  in λ = -log σ, DPM-Solver's "logSNR" steps).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

TIME_SPACINGS = ("leading", "trailing", "linspace", "quad", "time_quadratic")
SIGMA_SPACINGS = ("karras", "kl_optimal", "log_snr")
KARRAS_RHO = 7.0  # EDM's ρ


def time_timesteps(steps: int, T: int, spacing: str = "trailing",
                   steps_offset: int = 0) -> torch.Tensor:
    """S timesteps of [0, T) placed in time by ``spacing``: exactly S distinct ones, decreasing.

    Args:
        steps: S, an integer in [1, T].
        T: the number of training timesteps.
        spacing: one of :data:`TIME_SPACINGS`:

            - ``leading``: the paper's uniform grid ``i·(T//S) + steps_offset``, i < S
              (starts at T - T//S: for 10 steps at t=900, for 1 step at t=0).
            - ``trailing`` (the default): ``round(T - i·T/S) - 1``, starting at T-1 (pure-ish
              noise) whatever S is; with few steps the others start far below it.
            - ``linspace``: ``round(i·(T-1)/(S-1))`` from 0 to T-1.
            - ``quad``: the paper's CIFAR10 grid ``floor((i·sqrt(0.8T)/(S-1))²)``, computed
              exactly (floating point can give 799 for the last point). Where the parabola is
              flatter than one step per point its integers repeat; each repeat is moved up to
              one more than its predecessor (and, where S > 0.8T, points are capped from the
              top at T-1, T-2, ...) so that the count is exactly S.
            - ``time_quadratic``: ``t_min + (T-1-t_min)·(1 - i/(S-1))²`` rounded, from T-1 down
              to t_min = round(T/100): quadratic in time, dense near the data (DPM-Solver's
              "time_quadratic" steps, Lu et al. 2022); crowded points are pushed apart.

            Rounding is exact (rational arithmetic, halves to even as numpy does).
        steps_offset: added to every ``leading`` point (diffusers' ``steps_offset``; Stable
            Diffusion uses 1), in [0, T-1].

    Returns:
        int64 CPU tensor of shape (S,), strictly decreasing, values in [0, T).

    """
    S, offset = steps, steps_offset
    if spacing == "leading":
        grid = [i * (T // S) + offset for i in range(S)]
    elif spacing == "trailing":
        grid = [round(Fraction(T * (S - i), S)) - 1 for i in range(S)][::-1]
    elif spacing == "linspace":
        grid = [0] if S == 1 else [round(Fraction(i * (T - 1), S - 1)) for i in range(S)]
    elif spacing == "quad":
        grid = [0] if S == 1 else [
            math.floor(Fraction(4 * T * i * i, 5 * (S - 1) ** 2)) for i in range(S)]
        grid = make_distinct(grid, T)
    else:  # time_quadratic: i-th point from the end, increasing
        t_min = round(Fraction(T, 100))
        grid = [T - 1] if S == 1 else [
            round(t_min + Fraction((T - 1 - t_min) * i * i, (S - 1) ** 2)) for i in range(S)]
        grid = make_distinct(grid, T)
    return torch.tensor(grid[::-1], dtype=torch.int64)


def sigma_timesteps(steps: int, log_sigma: torch.Tensor, spacing: str) -> torch.Tensor:
    """S timesteps placed in the noise level σ_t = sqrt((1-ᾱ_t)/ᾱ_t) by ``spacing``.

    The S target levels σ_0 > ... > σ_{S-1} run from σ_max = σ(T-1) to σ_min = σ(0) (where
    those are infinite or zero, ᾱ = 0 or 1, from the nearest finite positive level; the first
    point stays T-1):

    - ``karras``: σ_i = (σ_max^{1/ρ} + i/(S-1)·(σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, ρ = 7 (EDM,
      Karras et al. 2022, eq. 5);
    - ``kl_optimal``: σ_i = tan((1 - i/(S-1))·atan σ_max + i/(S-1)·atan σ_min) (Sabour et
      al. 2024; ComfyUI's "kl_optimal" scheduler);
    - ``log_snr``: log σ_i uniform, i.e. λ = -log σ uniform (DPM-Solver's "logSNR" steps).

    Each target goes to the timestep of nearest log σ; where several land on one timestep
    (near t = 0 the levels are finer than one step) they are pushed apart, so that there are
    exactly S distinct timesteps, strictly decreasing from T-1.

    Args:
        steps: S in [1, T].
        log_sigma: log σ_t of the schedule, float64 (T,), increasing in t (-inf where ᾱ = 1,
            +inf where ᾱ = 0).
        spacing: one of :data:`SIGMA_SPACINGS`.
    """
    T, S = log_sigma.numel(), steps
    if S == 1:
        return torch.tensor([T - 1], dtype=torch.int64)
    finite = torch.isfinite(log_sigma).nonzero()  # ᾱ = 1 at t = 0 or ᾱ = 0 at T-1: skip them
    lo, hi = float(log_sigma[int(finite[0])]), float(log_sigma[int(finite[-1])])
    i = torch.arange(S, dtype=torch.float64) / (S - 1)  # 0 at σ_max, 1 at σ_min
    if spacing == "karras":
        r = 1 / KARRAS_RHO
        targets = ((math.exp(hi * r) + i * (math.exp(lo * r) - math.exp(hi * r))) ** KARRAS_RHO
                   ).log()
    elif spacing == "kl_optimal":
        targets = ((1 - i) * math.atan(math.exp(hi)) + i * math.atan(math.exp(lo))).tan().log()
    else:
        targets = (1 - i) * hi + i * lo
    grid = nearest_timesteps(log_sigma, targets).tolist()[::-1]  # increasing
    grid[-1] = T - 1
    return torch.tensor(make_distinct(grid, T)[::-1], dtype=torch.int64)


def nearest_timesteps(log_sigma: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """For each target log σ, the timestep whose log σ_t (increasing in t) is nearest.

    Args:
        log_sigma: float64 (T,), non-decreasing (may start at -inf and end at +inf).
        targets: float64 (S,) finite values.

    Returns:
        int64 (S,) timesteps in [0, T).
    """
    T = log_sigma.numel()
    hi = torch.searchsorted(log_sigma, targets).clamp(max=T - 1)
    lo = (hi - 1).clamp(min=0)
    closer_low = (targets - log_sigma[lo]).abs() <= (log_sigma[hi] - targets).abs()
    return torch.where(closer_low, lo, hi)


def make_distinct(grid: list[int], T: int) -> list[int]:
    """Increasing integers in [0, T) made strictly increasing: each repeat is pushed up to one
    more than its predecessor, then points are capped from the top at T-1, T-2, ...
    (S <= T points always fit)."""
    out = list(grid)
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + 1)
    out[-1] = min(out[-1], T - 1)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1] - 1)
    return out
