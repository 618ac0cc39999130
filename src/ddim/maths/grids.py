"""Sampling grids: which S of the T training timesteps a sampler visits, strictly decreasing.

The DDIM paper samples on a sub-sequence τ of [0, T) (section 4.2). How the S points are
placed matters most when S is small: a grid that does not start near T-1 never starts from
(almost) pure noise (diffusers issues 5921 and 8730; Lin et al. 2023, "Common diffusion noise
schedules and sample steps are flawed", Table 2 names the first three spacings here).

Here: the checked entry points (:func:`grid_spec`, :func:`timesteps`), explicit grids and
the levels along a grid. The spacings themselves (:mod:`ddim.maths.spacings`) come in two
families, each giving exactly S distinct integer timesteps for every S in [1, T]: in time
(``trailing``, the default, ``leading``, ``linspace``, ``quad``, ``time_quadratic``) and in
the noise level σ (``karras``, ``kl_optimal``, ``log_snr``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..checks import check_choice, check_int
from .schedule import NoiseSchedule
from .spacings import SIGMA_SPACINGS, TIME_SPACINGS, sigma_timesteps, time_timesteps

SPACINGS = TIME_SPACINGS + SIGMA_SPACINGS
CALIBRATED = "calibrated"  # not a rule: the grid fitted to the model (ddim.calibration)
SPACING_CHOICES = SPACINGS + (CALIBRATED,)
DEFAULT_SPACING = "trailing"  # starts at T-1 for every S: never from a level far below noise
FINAL_ALPHAS = ("one", "first")


@dataclass(frozen=True)
class GridSpec:
    """What determines a grid, checked against a schedule of T steps (:func:`grid_spec`).

    ``timesteps`` (explicit, used as given) or ``steps`` S placed by ``spacing`` with
    ``steps_offset`` (``leading`` only). Immutable and hashable: the plan memoises per spec.
    """

    steps: int
    spacing: str | None = None
    steps_offset: int = 0
    timesteps: tuple[int, ...] | None = None


def grid_spec(steps: int | None, spacing: str | None, steps_offset: int | None,
              timesteps: Any, T: int, default_steps: int = 50) -> GridSpec:
    """The :class:`GridSpec` of a call's grid arguments, every rule checked here, once.

    Args:
        steps: S in [1, T] (None: ``default_steps``, or the number of explicit timesteps).
        spacing: one of :data:`SPACINGS` (None: ``trailing``).
        steps_offset: the ``leading`` grid's shift in [0, T-1] (None: 0).
        timesteps: an explicit grid (see :func:`explicit_timesteps`), or None.
        T: the schedule's number of training steps.

    Raises:
        TypeError / ValueError naming the argument: a bad S, spacing, offset or grid; a
        spacing or offset next to explicit timesteps (they would be ignored); S that differs
        from the number of explicit timesteps; an offset with a spacing other than leading.
    """
    if timesteps is not None:
        refuse_with_explicit_grid(spacing, steps_offset)
        grid = tuple(explicit_timesteps(timesteps, T).tolist())
        if steps is not None and check_int("steps", steps, low=1) != len(grid):
            raise ValueError(f"steps={steps} contradicts the {len(grid)} explicit timesteps; "
                             "pass one of them")
        return GridSpec(len(grid), timesteps=grid)
    S = check_int("steps", default_steps if steps is None else steps, low=1, high=T)
    spacing = check_choice("spacing", DEFAULT_SPACING if spacing is None else spacing,
                           SPACINGS)
    offset = check_int("steps_offset", 0 if steps_offset is None else steps_offset, low=0,
                       high=T - 1)
    if offset and spacing != "leading":
        raise ValueError(f"steps_offset applies to spacing='leading' only, got "
                         f"steps_offset={offset} with spacing={spacing!r}")
    if spacing == "leading" and (S - 1) * (T // S) + offset > T - 1:
        raise ValueError(
            f"spacing='leading' with steps_offset={offset} puts the last of {S} steps at "
            f"t={(S - 1) * (T // S) + offset}, outside [0, {T - 1}]; use steps <= "
            f"{T - offset} or steps_offset=0")
    return GridSpec(S, spacing, offset)


def grid_timesteps(schedule: NoiseSchedule, spec: GridSpec) -> torch.Tensor:
    """The grid of ``spec`` (checked by :func:`grid_spec`) on ``schedule``: an int64 CPU
    tensor of shape (S,), strictly decreasing, values in [0, T)."""
    if spec.timesteps is not None:
        return torch.tensor(spec.timesteps, dtype=torch.int64)
    if spec.spacing in SIGMA_SPACINGS:
        return sigma_timesteps(spec.steps, schedule.sigmas.log(), spec.spacing)
    return time_timesteps(spec.steps, schedule.num_train_timesteps, spec.spacing,
                          spec.steps_offset)


def timesteps(schedule: NoiseSchedule, steps: int | Sequence[int] | None = None,
              spacing: str | None = None, *, steps_offset: int | None = None) -> torch.Tensor:
    """The sampling grid τ of ``schedule``: exactly S distinct, strictly decreasing timesteps.

    ``steps``: S in [1, T] (default 50), placed by ``spacing`` (default ``trailing``) and
    ``steps_offset`` (leading only, default 0); or an explicit grid, returned as given (then
    spacing and steps_offset are refused). Returns an int64 CPU tensor of shape (S,).

    Raises:
        TypeError / ValueError naming the parameter (see :func:`grid_spec`).
    """
    explicit = (hasattr(steps, "__len__") and not isinstance(steps, (str, bytes))
                and getattr(steps, "ndim", 1) != 0)
    spec = grid_spec(None if explicit else steps, spacing, steps_offset,
                     steps if explicit else None, schedule.num_train_timesteps)
    return grid_timesteps(schedule, spec)


def grid_levels(schedule: NoiseSchedule, grid: torch.Tensor, final_alpha: str = "one"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ᾱ_t, ᾱ_prev) along a grid, both float64 of shape (S,).

    ᾱ_prev[i] is ᾱ at the grid's next point ``grid[i+1]``, never ``t - T//S`` (diffusers
    issues 12633, 11347); after the last point it is 1 (``final_alpha="one"``, the paper: the
    last step returns x̂0) or ᾱ_0 (``"first"``: diffusers' ``set_alpha_to_one=False``, CompVis).

    Raises:
        ValueError: an unknown ``final_alpha``, or a bad grid (see :func:`explicit_timesteps`).
    """
    check_choice("final_alpha", final_alpha, FINAL_ALPHAS)
    t = explicit_timesteps(grid, schedule.num_train_timesteps)
    a = schedule.alphas_cumprod
    a_t = a[t]
    last = a.new_ones(1) if final_alpha == "one" else a[:1]
    return a_t, torch.cat([a_t[1:], last])


def explicit_timesteps(timesteps: Any, T: int) -> torch.Tensor:
    """A grid given as a 1-D integer array-like (list, tuple, numpy array, tensor), checked:
    strictly decreasing integers in [0, T).

    Returns:
        int64 CPU tensor of shape (S,), a copy.

    Raises:
        TypeError: not a 1-D array-like of integers (floats that are whole numbers pass).
        ValueError: empty, out of range, repeated or not strictly decreasing (the message
            names the positions).
    """
    t = timestep_array(timesteps)
    if (t < 0).any() or (t >= T).any():
        raise ValueError(f"timesteps must lie in [0, {T - 1}], got {t.tolist()[:8]}"
                         f"{' ...' if t.numel() > 8 else ''}")
    if t.numel() > 1 and not (t[1:] < t[:-1]).all():
        i = int(torch.nonzero(t[1:] >= t[:-1])[0])
        kind = "duplicated" if t[i] == t[i + 1] else "not strictly decreasing"
        raise ValueError(f"timesteps must be strictly decreasing without repeats; "
                         f"{kind} at positions {i},{i + 1}: {t[i].item()}, {t[i + 1].item()}")
    return t


def refuse_with_explicit_grid(spacing: str | None, steps_offset: int | None) -> None:
    """An explicit grid is used as given: a spacing or offset next to it would be ignored.

    Raises:
        ValueError: ``spacing`` or ``steps_offset`` is given (not None).
    """
    for name, value in (("spacing", spacing), ("steps_offset", steps_offset)):
        if value is not None:
            raise ValueError(f"{name}={value!r} has no effect with explicit timesteps (they are "
                             f"used as given); pass {name} or timesteps, not both")


_WHAT = "a 1-D sequence or array of integers (a list, tuple, numpy array or tensor)"


def timestep_array(values: Any) -> torch.Tensor:
    """``values``, a 1-D integer array-like (a list, tuple, numpy array or tensor; floats that
    are whole numbers pass), as a 1-D int64 CPU tensor (a copy). The range and order are
    checked by :func:`explicit_timesteps`.

    Raises:
        TypeError: naming ``timesteps`` and what it may be. ValueError: it is empty.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"timesteps must be {_WHAT}, got {values!r:.60}")
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):  # ragged nesting
        raise TypeError(f"timesteps must be {_WHAT}, got {values!r:.60}") from None
    if array.ndim == 0 or array.dtype == object:
        raise TypeError(f"timesteps must be {_WHAT}, got {values!r:.60}")
    if array.ndim != 1:
        raise TypeError(f"timesteps must be {_WHAT}, got an array of shape {array.shape}")
    if array.size == 0:
        raise ValueError("timesteps must hold at least one timestep, got an empty sequence")
    whole_floats = array.dtype.kind == "f" and np.isfinite(array).all() and (
        array == np.round(array)).all()
    if array.dtype.kind not in "iu" and not whole_floats:
        raise TypeError(f"timesteps must be {_WHAT}, got {array.tolist()[:8]!r} "
                        f"(dtype {array.dtype})")
    return torch.from_numpy(array.astype(np.int64, copy=True))
