"""The plan of one sampling call: everything the loop needs, resolved from the options once.

:func:`make_plan` turns a model and validated :class:`~ddim.sampling.options.SampleOptions` into a
:class:`Plan`: the schedule and prediction type (the options', else the model bundle's, else
the defaults), the grid and its per-step coefficients (memoised per setup: a pure function of
immutable values), the starting sample x_T (drawn from the generators when not given), the
conditioning, and the adapted model. Every entry point (sample, sample_iter, invert,
img2img, inpaint, interpolation_strip, generate) builds its grid and levels here, so the same
arguments always give the same grid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..checks import check_choice, check_int
from ..maths.ddim_coefficients import check_eta_fits
from ..maths.grids import CALIBRATED, GridSpec, grid_levels, grid_spec, grid_timesteps
from ..maths.prediction import PREDICTION_TYPES, refuse_zero_snr_epsilon
from ..maths.schedule import NoiseSchedule, default_schedule
from ..maths.thresholding import clip_range
from . import noise as _noise
from .guidance import Conditioning, conditioning
from .latents import check_latent_clip
from .model_contract import (
    ModelFn,
    as_model_fn,
    check_sample_shape,
    fit_output,
    model_device_dtype,
    model_sample_shape,
)
from .options import DEFAULT_STEPS, SampleOptions
from .solvers import SOLVERS
from .steppers import X0Processing, draws_noise


@dataclass(frozen=True)
class StepTable:
    """The grid of one setup and its per-step numbers, as Python scalars (shared, read-only).

    ``alpha_bar_prev[i]`` is ᾱ at the next grid point (after the last: 1, or ᾱ_0 with
    ``final_alpha="first"``); ``coefficients[i]`` is what the solver's stepper needs.
    """

    grid: tuple[int, ...]
    alpha_bar_t: tuple[float, ...]
    alpha_bar_prev: tuple[float, ...]
    coefficients: tuple[Any, ...]


@dataclass(frozen=True)
class Plan:
    """One sampling call, resolved: see the module docstring. ``x`` is the starting sample
    (a fresh tensor the loop may overwrite), ``t_grid`` the grid as int64 on x's device."""

    model: Any
    options: SampleOptions
    schedule: NoiseSchedule
    prediction_type: str
    table: StepTable
    x: torch.Tensor
    t_grid: torch.Tensor
    fn: ModelFn
    model_dtype: torch.dtype | None
    generator: _noise.Generators
    conditioning: Conditioning | None

    @property
    def grid(self) -> tuple[int, ...]:
        """The timesteps, in the order they are run."""
        return self.table.grid

    def call(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The model's output at (x, t_i), checked against x's shape (first C of 2C taken)."""
        x_in = x if self.model_dtype in (None, x.dtype) else x.to(self.model_dtype)
        t = self.t_grid[i].expand(x.shape[0])  # int64 (B,) on x's device, a view: no copy
        return fit_output(self.fn(x_in, t), x, i, self.table.grid[i])

    def noise_source(self) -> _noise.NoiseSource | None:
        """The source of this run's step noise (drawn from its generators), or None when no
        step draws any (η = 0, the deterministic solvers)."""
        if not draws_noise(self.table.coefficients):
            return None
        return _noise.NoiseSource(self.x.shape, self.generator, self.x.device, self.x.dtype)

    def stepper(self, noise: Callable[[], torch.Tensor] | None = None) -> Any:
        """A fresh stepper for one run over the grid (it owns the run's noise source and, for
        a multistep solver, its history): the solver's class in the registry
        (:mod:`ddim.sampling.solvers`). ``noise``: draws to use instead of the generators'
        (the whole-loop CUDA graph passes draws made ahead)."""
        o, table, solver = self.options, self.table, SOLVERS[self.options.solver]
        bounds = clip_range(o.clip_sample, getattr(self.model, "data_range", (-1.0, 1.0)))
        x0 = X0Processing(bounds, o.dynamic_threshold, o.dynamic_threshold_max, o.rederive_eps)
        return solver.stepper(solver, table.coefficients, table.alpha_bar_t,
                              self.prediction_type, x0, noise or self.noise_source())

    def restarted(self, grid: Sequence[int], x: torch.Tensor) -> Plan:
        """This plan on another grid (strictly decreasing timesteps), run from ``x`` (for
        image-to-image: x is the image noised to the level of the grid's first point)."""
        o = self.options
        spec = grid_spec(None, None, None, grid, self.schedule.num_train_timesteps)
        table = step_table(self.schedule, spec, o.solver, o.final_alpha, o.eta, o.sigma_hat,
                           self.prediction_type, _fuse(o))
        t_grid = _noise.to_device(torch.tensor(table.grid, dtype=torch.int64), x.device)
        return replace(self, table=table, x=x, t_grid=t_grid)

    def rows(self, part: slice) -> Plan:
        """The plan of samples ``part`` of the batch (for chunked sampling): the same grid,
        those rows of x_T, their generators (a single generator is shared) and conditioning."""
        gens = self.generator
        if gens is not None and not isinstance(gens, torch.Generator):
            gens = gens[part]
        cond = None if self.conditioning is None else self.conditioning.rows(part)
        fn = as_model_fn(self.model) if cond is None else cond.model_fn(self.model)
        return replace(self, x=self.x[part], generator=gens, conditioning=cond, fn=fn)


def make_plan(model: Any, options: SampleOptions) -> Plan:
    """Resolve ``options`` against ``model`` (see the module docstring).

    Raises:
        TypeError / ValueError naming the parameter: a model that is not callable, steps or
            steps_offset outside the schedule's range, a bad explicit grid, zero terminal SNR
            with ε-prediction, a sample shape the model cannot tell, a generator on another
            device, bad conditioning, ``clip_sample=True`` for a latent model.
    """
    fn = as_model_fn(model)
    o = options
    schedule = o.schedule if o.schedule is not None else getattr(model, "schedule", None)
    schedule = schedule if schedule is not None else default_schedule()
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"the model's schedule must be a ddim.NoiseSchedule, got "
                        f"{type(schedule).__name__}")
    ptype = o.prediction_type or getattr(model, "prediction_type", None) or "epsilon"
    check_choice("prediction_type", ptype, PREDICTION_TYPES)
    spec = (calibrated_spec(model, o, schedule, ptype) if o.spacing == CALIBRATED else
            grid_spec(o.steps, o.spacing, o.steps_offset, o.timesteps,
                      schedule.num_train_timesteps, DEFAULT_STEPS))
    table = step_table(schedule, spec, o.solver, o.final_alpha, o.eta, o.sigma_hat, ptype,
                       _fuse(o))

    check_latent_clip(model, o.clip_sample)
    model_device, model_dtype = model_device_dtype(model)
    x = _initial_sample(model, o, model_device)
    check_sample_shape(model, x.shape, "shape" if o.x_T is None and o.x_name == "x_T" else
                       o.x_name)
    _noise.check_generator_device(o.generator, x.device)
    cond = conditioning(model, x.shape[0], x.device, class_labels=o.class_labels,
                        guidance_scale=o.guidance_scale, model_kwargs=o.model_kwargs,
                        uncond_kwargs=o.uncond_kwargs)
    if o.x_T is None:
        x = _noise.randn(x.shape, o.generator, x.device, x.dtype)
    t_grid = _noise.to_device(torch.tensor(table.grid, dtype=torch.int64), x.device)
    return Plan(model, o, schedule, ptype, table, x, t_grid,
                fn if cond is None else cond.model_fn(model), model_dtype, o.generator, cond)


def calibrated_spec(model: Any, o: SampleOptions, schedule: NoiseSchedule,
                    prediction_type: str) -> GridSpec:
    """The grid of ``spacing="calibrated"``: the one fitted to this model, solver and S,
    which the model bundle finds in its calibration file
    (:meth:`ddim.Pretrained.calibrated_timesteps`).

    Raises:
        ValueError: the model is not a bundle that can find one (the message says how to pass
            a grid instead), or its file has none for this solver and S, or one fitted to
            another model (:class:`ddim.loading.calibrations.CalibrationError`).
    """
    T = schedule.num_train_timesteps
    S = check_int("steps", DEFAULT_STEPS if o.steps is None else o.steps, low=1, high=T)
    if o.steps_offset is not None:
        raise ValueError(f"steps_offset={o.steps_offset!r} has no effect with "
                         "spacing='calibrated' (the grid is the one fitted to the model)")
    find = getattr(model, "calibrated_timesteps", None)
    if not callable(find):
        raise ValueError("spacing='calibrated' needs a model bundle (ddim.load_pretrained), "
                         "which finds the calibrated grids of its folder; for another model "
                         "pass the grid: timesteps=ddim.calibrated_timesteps(file, model, "
                         "solver, steps)")
    grid = find(solver=o.solver, steps=S, schedule=schedule, prediction_type=prediction_type)
    return grid_spec(None, None, None, grid, T)


def _fuse(o: SampleOptions) -> bool:
    """Whether DDIM steps may run fused: only when x̂0 is not processed."""
    return clip_range(o.clip_sample) is None and o.dynamic_threshold is None


@functools.lru_cache(maxsize=64)
def step_table(schedule: NoiseSchedule, spec: GridSpec, solver: str, final_alpha: str,
               eta: float, sigma_hat: bool, prediction_type: str, fuse: bool) -> StepTable:
    """The grid's levels and coefficients in float64, memoised: a pure function of immutable
    arguments (the schedule hashes its ᾱ), so repeated calls with one setup skip ≈300 µs.

    ``spec`` is the grid (:func:`ddim.maths.grids.grid_spec`); ``solver`` names the registry
    entry whose ``coefficients`` are computed (:mod:`ddim.sampling.solvers`).

    Raises:
        ValueError: zero terminal SNR on the grid with ε-prediction; an η whose noise σ_t²
            would exceed 1-ᾱ_prev somewhere on the grid (the message names the largest η
            the grid allows).
    """
    grid = grid_timesteps(schedule, spec)
    a_t, a_prev = grid_levels(schedule, grid, final_alpha)
    refuse_zero_snr_epsilon(prediction_type, a_t, grid)
    entry = SOLVERS[solver]
    if entry.ddim_options and not sigma_hat:
        check_eta_fits(eta, a_t, a_prev, grid)
    coefficients = entry.coefficients(a_t, a_prev, eta=eta, sigma_hat=sigma_hat,
                                      prediction_type=prediction_type, fuse=fuse)
    return StepTable(tuple(grid.tolist()), tuple(a_t.tolist()), tuple(a_prev.tolist()),
                     coefficients)


def _initial_sample(model: Any, o: SampleOptions,
                    model_device: torch.device | None) -> torch.Tensor:
    """x_T as a fresh state-dtype copy on its device, or an empty tensor of the right shape."""
    if o.x_T is not None:
        state = o.dtype or torch.promote_types(o.x_T.dtype, torch.float32)
        return _noise.to_device(o.x_T, o.device if o.device is not None else o.x_T.device
                                ).to(state)
    shape: Sequence[int] | None = o.shape
    if shape is None:
        sample_shape = model_sample_shape(model)
        if sample_shape is None:
            raise ValueError("cannot tell the sample shape of this model: pass x_T or "
                             "shape=(B, C, H, W)")
        shape = (o.batch, *sample_shape)
    device = o.device if o.device is not None else (model_device or torch.device("cpu"))
    return torch.empty(shape, device=device, dtype=o.dtype or torch.float32)
