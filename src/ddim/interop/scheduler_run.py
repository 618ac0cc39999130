"""One run of :class:`ddim.DiffusersScheduler` over (the rest of) its grid: the per-step
numbers (:func:`ddim.sampling.plan.step_table`), a fresh stepper of the solver registry
(:mod:`ddim.sampling.solvers`), the position on the grid, and the noise the stepper draws."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..maths.ddim_step import StepOutput
from ..maths.grids import grid_spec
from ..maths.schedule import NoiseSchedule
from ..maths.thresholding import clip_range
from ..sampling.model_contract import fit_output
from ..sampling.noise import Generators, NoiseSource, check_generators
from ..sampling.options import SampleOptions
from ..sampling.plan import step_table
from ..sampling.solvers import SOLVERS
from ..sampling.steppers import X0Processing


def fused(options: SampleOptions) -> bool:
    """Whether DDIM's steps may run in their fused form: when x̂0 is not processed (as
    :func:`ddim.sample` decides)."""
    return clip_range(options.clip_sample) is None and options.dynamic_threshold is None


class SchedulerRun:
    """The steps of one pipeline call, from grid point ``grid[0]`` on, in order.

    Args:
        schedule: the training schedule.
        options: the validated options (solver, final_alpha, η, σ̂, x̂0 processing).
        prediction_type: what the network predicts.
        grid: the timesteps this run visits (a tail of the scheduler's grid).
        sample: the first step's sample (B, ...): fixes the run's shape, device and dtype.

    Raises:
        ValueError: an η the grid cannot take (:func:`ddim.sampling.plan.step_table`).
    """

    def __init__(self, schedule: NoiseSchedule, options: SampleOptions, prediction_type: str,
                 grid: Sequence[int], sample: torch.Tensor) -> None:
        o = options
        spec = grid_spec(None, None, None, tuple(grid), schedule.num_train_timesteps)
        table = step_table(schedule, spec, o.solver, o.final_alpha, o.eta, o.sigma_hat,
                           prediction_type, fused(o))
        entry = SOLVERS[o.solver]
        x0 = X0Processing(clip_range(o.clip_sample, (-1.0, 1.0)), o.dynamic_threshold,
                          o.dynamic_threshold_max, o.rederive_eps)
        self.grid, self.eta, self.shape = table.grid, o.eta, tuple(sample.shape)
        self.dtype = torch.promote_types(sample.dtype, torch.float32)  # the state's, >= fp32
        self.device = sample.device
        self.next = 0  # the index in ``grid`` of the next step
        self._stepper = entry.stepper(entry, table.coefficients, table.alpha_bar_t,
                                      prediction_type, x0, self._draw)
        self._sources: dict[int, NoiseSource] = {}
        self._generator: Generators = None
        self._given: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        """Whether every grid point has been stepped from."""
        return self.next >= len(self.grid)

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, generator: Generators,
             variance_noise: torch.Tensor | None) -> StepOutput:
        """The step from ``grid[next]``: x_{i+1}, x̂0 (and ε̂) in the state's dtype.

        Args:
            model_output: the network's output at (sample, grid[next]) (2C channels: the
                first C are used).
            sample: x_i, the run's shape.
            generator: draws the step's noise (a generator, one per sample, or None: the
                global RNG), where the solver draws any.
            variance_noise: z ~ N(0, I) of the sample's shape to use instead of drawing.

        Raises:
            ValueError / TypeError: another shape than the run's, an output that does not
            fit it, a bad generator list or noise.
        """
        i, t = self.next, self.grid[self.next]
        if tuple(sample.shape) != self.shape or sample.device != self.device:
            raise ValueError(f"sample has shape {tuple(sample.shape)} on {sample.device} at "
                             f"timestep {t}, but this run started with {self.shape} on "
                             f"{self.device}; call set_timesteps to start a new run")
        x = sample.to(self.dtype)
        out = fit_output(model_output, x, i, t)
        self._generator = check_generators(generator, x.shape[0], x.device)
        if variance_noise is not None and (not isinstance(variance_noise, torch.Tensor)
                                           or tuple(variance_noise.shape) != self.shape):
            raise ValueError(f"variance_noise must be a tensor of the sample's shape "
                             f"{self.shape}, got {getattr(variance_noise, 'shape', None)}")
        self._given = variance_noise
        result = self._stepper(i, x, out, True)
        self.next = i + 1
        return result

    def _draw(self) -> torch.Tensor:
        """The noise of this step: ``variance_noise`` if given, else a draw from the step's
        generator (a :class:`ddim.sampling.noise.NoiseSource` per generator, so that one
        generator passed at every step gives the draws :func:`ddim.sample` makes)."""
        if self._given is not None:
            return self._given.to(device=self.device, dtype=self.dtype)
        source = self._sources.get(id(self._generator))
        if source is None:
            source = NoiseSource(self.shape, self._generator, self.device, self.dtype)
            self._sources[id(self._generator)] = source
        return source()
