"""Grids calibrated per model: the S timesteps at which one solver, on one checkpoint, lands
closest to the probability-flow ODE's own end points.

A direct search against teacher end points (the idea of LD3, Tong et al. 2025, and of the
optimal-stepsize papers; GITS, Chen et al. 2024, fits a grid to a teacher trajectory the same
way): calibration noises x_T are drawn once, a teacher (a third-order solver on a fine grid)
solves the ODE from each, and the student (``solver`` with S model calls) is run on candidate
grids; the objective is the mean squared distance of its end points to the teacher's.

Both ends of a candidate grid are fixed, as in GITS and LD3: the first point at T-1, where x_T
is pure noise, and the last at the teacher's own last point (T/100 for its time_quadratic
grid), so that student and teacher solve the same stretch of the ODE before the final x̂0. A
free last point would be a trap: the end point of a grid that stops early is the blurred
E[x0 | x_t] of a high t, which is closer in mean square to the teacher's sharp sample than a
sharp sample that is slightly off (measured on ``digits`` with 4 calls: the free search
ended unipc at t = 93 and doubled its FD against the time_quadratic grid, which ends at 10).

The search starts from the best of the preset spacings (trailing, time_quadratic, karras,
kl_optimal, log_snr), each with its last point moved to the teacher's, and moves one interior
timestep at a time, halving the moves when none helps, until no move of one timestep does.
Every candidate is the real sampler with its real history, so the grid fits the solver as it
runs, not a one-step surrogate of it.

The calibration noise comes from its own seed stream (:func:`calibration_noise`), never one
of ``ddim generate``'s samples; the search is deterministic given its seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..checks import check_bool, check_choice, check_int
from ..loading.calibrations import default_file, grid_key, refuse_bundled, save_grid
from ..maths.grids import timesteps
from ..maths.schedule import NoiseSchedule
from ..sampling.model_contract import model_sample_shape
from ..sampling.sampler import sample
from ..sampling.solvers import SOLVERS

PRESETS = ("trailing", "time_quadratic", "karras", "kl_optimal", "log_snr")
TEACHER = dict(solver="dpmpp_3m_true", steps=100, spacing="time_quadratic")
NOISE_STREAM = 0xCA11  # the third word of the calibration noise's SeedSequence


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate_timesteps` found, and how.

    Attributes:
        timesteps: the calibrated grid, S integers from T-1 down (strictly decreasing).
        solver, steps: what it was fitted for.
        objective: mean squared distance of the student's end points to the teacher's, per
            value, on the calibration noises (the same measure as ``presets``').
        presets: the objective of each preset spacing on S steps, its last point moved to
            the teacher's (``teacher["end"]``).
        start: the preset the search started from (the best of ``presets``).
        teacher: the teacher's solver, steps, spacing and last point (``end``, where every
            candidate grid ends too).
        num_noises, seed: the calibration noises.
        evaluations: grids the search ran (presets included).
        model_calls: network evaluations of one sample, teacher included.
        seconds: wall time.
        key: what the grid is keyed by in a calibration file
            (:func:`ddim.loading.calibrations.grid_key`), None for a model without weights.
        default_path: the calibration file of the model's folder (None: it has none), where
            :meth:`save` writes by default.
    """

    timesteps: tuple[int, ...]
    solver: str
    steps: int
    objective: float
    presets: dict[str, float]
    start: str
    teacher: dict[str, Any]
    num_noises: int
    seed: int
    evaluations: int
    model_calls: int
    seconds: float
    key: dict[str, Any] | None = field(default=None, repr=False)
    default_path: Path | None = field(default=None, repr=False, compare=False)

    def entry(self) -> dict[str, Any]:
        """The grid as a calibration file holds it: its key, then everything above."""
        if self.key is None:
            raise ValueError("this calibration has no key (the model has no weights to key "
                             "it by): use its timesteps directly")
        record = {k: v for k, v in asdict(self).items() if k not in ("key", "default_path")}
        record["timesteps"] = list(self.timesteps)
        return {**self.key, **record, "ddim_version": __version__}

    def save(self, path: str | Path | None = None) -> Path:
        """Add this grid to the calibration file ``path`` (default: the model folder's own),
        atomically, replacing a grid of the same key. Returns the path written.

        Raises:
            ValueError: no path and the model has no folder, or is a bundled model (its
                calibration file ships with the package: pass a path of your own).
            OSError: it cannot be written.
        """
        if path is None:
            path = self.default_path
            if path is None:
                raise ValueError("the model was not loaded from a folder: pass the path of "
                                 "the calibration file")
            refuse_bundled(path)
        return save_grid(path, self.entry())


def calibration_noise(shape: tuple[int, ...], num: int, seed: int) -> torch.Tensor:
    """``num`` standard-normal x_T of ``shape`` (C, H, W), float32: noise i from a CPU
    generator seeded by ``SeedSequence([seed, i, 0xCA11])``, a stream no sample of ``ddim
    generate`` or ``ddim sample`` draws from (theirs are ``SeedSequence([seed, i])``)."""
    gens = [torch.Generator().manual_seed(int(np.random.SeedSequence(
        [seed, i, NOISE_STREAM]).generate_state(1, np.uint64)[0])) for i in range(num)]
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens])


def calibrate_timesteps(
    model: Any,
    steps: int,
    *,
    solver: str = "ddim",
    num_noises: int = 64,
    seed: int = 0,
    teacher_steps: int = TEACHER["steps"],
    max_evaluations: int = 200,
    schedule: NoiseSchedule | None = None,
    prediction_type: str | None = None,
    shape: tuple[int, ...] | None = None,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    progress: bool = False,
) -> Calibration:
    """Fit a grid of ``steps`` timesteps to ``model`` and ``solver`` (see the module docstring).

    Args:
        model: a :class:`ddim.Pretrained` bundle, or any model ``sample`` takes together with
            ``schedule=`` (and ``shape=``).
        steps: S, the model calls of the grid, in [1, T] (S = 1 is the single step from T-1).
        solver: a deterministic solver of the registry; default ``ddim``, ``sample``'s
            default, so that ``sample(spacing="calibrated")`` finds the grid. Fit ``unipc``
            (or ``dpmpp_2m``/``dpmpp_3m``) for 5-10 calls: on the held-out 8×8 model its
            calibrated grid gave FD 2.97 at 5 calls against 6.91 on the best preset and
            DDIM's 32.7. The objective (mean squared distance to the teacher) does not track
            sample quality for every solver: calibrated ``ddim`` and ``ipndm_v`` grids had a
            worse FD than the presets there (benchmarks/results/solvers_*.md).
        num_noises: calibration noises (>= 2): the objective averages over them.
        seed: the calibration noises' seed (>= 0).
        teacher_steps: steps of the teacher (dpmpp_3m_true on time_quadratic), >= S.
        max_evaluations: at most this many grids are run (presets included), >= 5.
        schedule, prediction_type: default the bundle's; a model without a schedule needs it.
        shape: (C, H, W) of one sample, default the model's.
        class_labels, guidance_scale: for a class-conditional model (as ``sample`` takes them;
            one label for all, or one per noise).
        progress: a progress bar over the search.

    Returns:
        a :class:`Calibration` (``.timesteps`` for ``sample(timesteps=...)``; ``.save()``
        adds it to the model's calibration file, where ``spacing="calibrated"`` finds it).

    Raises:
        TypeError / ValueError naming the parameter, before any model call: S outside the
        schedule's range, an unknown or stochastic solver, a model without a schedule or a
        sample shape, bad counts.
    """
    entry = SOLVERS[check_choice("solver", solver, tuple(SOLVERS))]
    if entry.stochastic:
        raise ValueError(f"solver={solver!r} draws noise: its end point is not a function of "
                         "x_T, so no grid can be fitted to it; calibrate a deterministic "
                         "solver")
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError("calibrate_timesteps needs the model's schedule: pass a "
                         "ddim.Pretrained bundle (ddim.load_pretrained) or schedule=")
    T = schedule.num_train_timesteps
    S = check_int("steps", steps, low=1, high=T)
    num_noises = check_int("num_noises", num_noises, low=2)
    seed = check_int("seed", seed, low=0)
    teacher_steps = check_int("teacher_steps", teacher_steps, low=S, high=T)
    max_evaluations = check_int("max_evaluations", max_evaluations, low=len(PRESETS))
    check_bool("progress", progress)
    shape = tuple(shape) if shape is not None else model_sample_shape(model)
    if shape is None:
        raise ValueError("cannot tell the sample shape of this model: pass shape=(C, H, W)")
    ptype = prediction_type or getattr(model, "prediction_type", None) or "epsilon"
    network = getattr(model, "model", model)
    key = (grid_key(network, schedule, ptype, solver, S)
           if isinstance(network, torch.nn.Module) else None)
    started = time.perf_counter()

    x_T = calibration_noise(shape, num_noises, seed)
    kw = dict(schedule=schedule, prediction_type=ptype, class_labels=class_labels,
              guidance_scale=guidance_scale)
    sample(model, timesteps=[T - 1], x_T=x_T[:1], solver=solver, **kw)  # checks, 1 call
    teacher = sample(model, teacher_steps, x_T=x_T, **kw, solver=TEACHER["solver"],
                     spacing=TEACHER["spacing"]).double()
    tried: dict[tuple[int, ...], float] = {}
    bar = _bar(max_evaluations) if progress else None

    def objective(grid: tuple[int, ...]) -> float:
        if grid not in tried:
            out = sample(model, timesteps=list(grid), x_T=x_T, solver=solver, **kw).double()
            value = float((out - teacher).square().mean())
            tried[grid] = value if math.isfinite(value) else math.inf
            if bar is not None:
                bar.update(1)
        return tried[grid]

    end = min(int(timesteps(schedule, teacher_steps, TEACHER["spacing"])[-1]), T - S)
    starts = {name: ending_at(timesteps(schedule, S, name).tolist(), end) for name in PRESETS}
    try:
        presets = {name: objective(tuple(grid)) for name, grid in starts.items()}
        start = min(presets, key=presets.get)
        grid = _descend(starts[start], objective, tried, max_evaluations)
    finally:
        if bar is not None:
            bar.close()
    calls = 1 + num_noises * (teacher_steps + S * len(tried))
    result = Calibration(
        timesteps=tuple(grid), solver=solver, steps=S, objective=tried[tuple(grid)],
        presets=presets, start=start, teacher=dict(TEACHER, steps=teacher_steps, end=end),
        num_noises=num_noises, seed=seed, evaluations=len(tried), model_calls=calls,
        seconds=round(time.perf_counter() - started, 2), key=key,
        default_path=default_file(network))
    return result


def ending_at(grid: list[int], end: int) -> list[int]:
    """``grid`` (strictly decreasing, from T-1) with its last point moved to ``end``, the
    points above it pushed up where they would meet it; a one-point grid stays as it is."""
    if len(grid) == 1:
        return list(grid)
    out = list(grid[:-1]) + [end]
    for k in range(len(out) - 2, 0, -1):
        out[k] = max(out[k], out[k + 1] + 1)
    return out


def _descend(grid: list[int], objective: Any, tried: dict, budget: int) -> list[int]:
    """Coordinate descent over the interior timesteps t_1 .. t_{S-2} of ``grid`` (both ends
    fixed), keeping them strictly decreasing: each point tries a move of about ``frac`` of the
    room to its neighbours, both ways, and the first improvement is taken; a round without one
    halves ``frac``; the search ends when a round of one-timestep moves finds nothing, or when
    ``budget`` grids have been run."""
    best, frac = objective(tuple(grid)), 0.5
    S = len(grid)
    while len(tried) < budget:
        improved, smallest = False, True
        for k in range(1, S - 1):
            hi = grid[k - 1] - 1
            lo = grid[k + 1] + 1
            move = max(1, round(frac * (hi - lo) / 2))
            smallest &= move == 1
            for target in (grid[k] - move, grid[k] + move):
                if not lo <= target <= hi or target == grid[k] or len(tried) >= budget:
                    continue
                trial = grid[:k] + [target] + grid[k + 1:]
                value = objective(tuple(trial))
                if value < best:
                    grid, best, improved = trial, value, True
                    break
        if not improved:
            if smallest:
                break
            frac /= 2
    return grid


def _bar(total: int) -> Any:
    from tqdm.auto import tqdm  # imported only when a bar is asked for

    return tqdm(total=total, desc="calibrating", unit="grid")
