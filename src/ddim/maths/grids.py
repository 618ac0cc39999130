"""Sampling grids: which S of the T training timesteps a sampler visits, strictly decreasing.

The DDIM paper samples on a sub-sequence τ of [0, T) (section 4.2). How the S points are
placed matters most when S is small: a grid that does not start near T-1 never starts from
(almost) pure noise (diffusers issues 5921 and 8730; Lin et al. 2023, "Common diffusion noise
schedules and sample steps are flawed", Table 2 names the spacings used here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch

from ..checks import check_int

SPACINGS = ("leading", "trailing", "linspace", "quad", "time_quadratic")
DEFAULT_SPACING = "trailing"  # starts at T-1 for every S: never from a level far below noise


def spaced_timesteps(steps: int, T: int, spacing: str = DEFAULT_SPACING,
                     steps_offset: int = 0) -> torch.Tensor:
    """S timesteps of [0, T) placed by ``spacing``: exactly S distinct ones, decreasing.

    Args:
        steps: S, an integer in [1, T].
        T: the number of training timesteps.
        spacing: how to place S points in [0, T):

            - ``leading``: the paper's uniform grid ``i·(T//S) + steps_offset``, i < S
              (starts at T - T//S: for 10 steps at t=900, for 1 step at t=0).
            - ``trailing`` (the default): ``round(T - i·T/S) - 1``, starting at T-1 (pure-ish
              noise) whatever S is; with few steps the others start far below it.
            - ``linspace``: ``round(i·(T-1)/(S-1))`` from 0 to T-1.
            - ``quad``: the paper's CIFAR10 grid ``floor((i·sqrt(0.8T)/(S-1))²)``, computed
              exactly (floating point can give 799 for the last point). Where the parabola is
              flatter than one step per point its integers repeat; each repeat is moved up to
              one more than its predecessor (and, where S > 0.8T, points are capped from the
              top at T-1, T-2, ...) so that the count is exactly S and the grid keeps the
              parabola everywhere it is steeper than 1.

            - ``time_quadratic``: ``t_min + (T-1-t_min)·(1 - i/(S-1))²`` rounded, from T-1 down
              to t_min = round(T/100): quadratic in time, dense near the data (the idea of
              DPM-Solver's "time_quadratic" steps, Lu et al. 2022). With the multistep solvers
              at 4-10 model calls it beats ``trailing`` by far (benchmarks/solvers.py); where
              the low end is too crowded for S distinct points they are pushed apart.

            Rounding is exact (rational arithmetic, halves to even as numpy does).
        steps_offset: added to every ``leading`` point (diffusers' ``steps_offset``; Stable
            Diffusion uses 1), in [0, T-1]. Only for ``leading``.

    Returns:
        int64 CPU tensor of shape (S,), strictly decreasing, values in [0, T).

    Raises:
        TypeError / ValueError naming ``steps``, ``spacing`` or ``steps_offset``.
    """
    S = check_int("steps", steps, low=1, high=T)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    offset = check_int("steps_offset", steps_offset, low=0, high=T - 1)
    if offset and spacing != "leading":
        raise ValueError(f"steps_offset applies to spacing='leading' only, got "
                         f"steps_offset={offset} with spacing={spacing!r}")
    if spacing == "leading":
        ratio = T // S
        grid = [i * ratio + offset for i in range(S)]
        if grid[-1] > T - 1:
            raise ValueError(
                f"spacing='leading' with steps_offset={offset} puts the last of {S} steps at "
                f"t={grid[-1]}, outside [0, {T - 1}]; use steps <= {T - offset} or "
                "steps_offset=0"
            )
    elif spacing == "trailing":
        grid = [round(Fraction(T * (S - i), S)) - 1 for i in range(S)][::-1]
    elif spacing == "linspace":
        grid = [0] if S == 1 else [round(Fraction(i * (T - 1), S - 1)) for i in range(S)]
    elif spacing == "quad":
        grid = [0] if S == 1 else [
            math.floor(Fraction(4 * T * i * i, 5 * (S - 1) ** 2)) for i in range(S)]
        grid = _make_strict(grid, T)
    else:  # time_quadratic: i-th point from the end, increasing
        t_min = round(Fraction(T, 100))
        grid = [T - 1] if S == 1 else [
            round(t_min + Fraction((T - 1 - t_min) * i * i, (S - 1) ** 2)) for i in range(S)]
        grid = _make_strict(grid, T)
    return torch.tensor(grid[::-1], dtype=torch.int64)


def explicit_timesteps(timesteps: Sequence[int] | torch.Tensor, T: int) -> torch.Tensor:
    """A grid given as a sequence, checked: strictly decreasing integers in [0, T).

    Returns:
        int64 CPU tensor of shape (S,), a copy.

    Raises:
        TypeError: non-integer values. ValueError: empty, not 1-D, out of range, repeated or
            not strictly decreasing (the message names the positions).
    """
    t = torch.as_tensor(timesteps)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape "
                         f"{tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        if not (t.is_floating_point() and torch.equal(t, t.round())):
            raise TypeError(f"timesteps must be integers, got {t.tolist()[:8]}")
    t = t.to(device="cpu", dtype=torch.int64)
    if (t < 0).any() or (t >= T).any():
        raise ValueError(f"timesteps must lie in [0, {T - 1}], got {t.tolist()[:8]}"
                         f"{' ...' if t.numel() > 8 else ''}")
    if t.numel() > 1 and not (t[1:] < t[:-1]).all():
        i = int(torch.nonzero(t[1:] >= t[:-1])[0])
        kind = "duplicated" if t[i] == t[i + 1] else "not strictly decreasing"
        raise ValueError(f"timesteps must be strictly decreasing without repeats; "
                         f"{kind} at positions {i},{i + 1}: {t[i].item()}, {t[i + 1].item()}")
    return t.clone()


def refuse_with_explicit_grid(spacing: str | None, steps_offset: int | None) -> None:
    """An explicit grid is used as given: a spacing or offset next to it would be ignored.

    Raises:
        ValueError: ``spacing`` or ``steps_offset`` is given (not None).
    """
    for name, value in (("spacing", spacing), ("steps_offset", steps_offset)):
        if value is not None:
            raise ValueError(f"{name}={value!r} has no effect with explicit timesteps (they are "
                             f"used as given); pass {name} or timesteps, not both")


def _make_strict(grid: list[int], T: int) -> list[int]:
    """Increasing integers with repeats pushed up by one, capped from the top at T-1."""
    out = list(grid)
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + 1)
    out[-1] = min(out[-1], T - 1)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1] - 1)
    return out
