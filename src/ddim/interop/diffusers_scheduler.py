"""ddim's grids and solvers behind diffusers' scheduler protocol, so that a diffusers pipeline
samples with them::

    pipe.scheduler = ddim.DiffusersScheduler.from_config(pipe.scheduler.config,
                                                         solver="dpmpp_2m")
    images = pipe(num_inference_steps=10, generator=torch.Generator().manual_seed(0)).images

Nothing is re-derived here: the schedule comes from the config
(:meth:`ddim.NoiseSchedule.from_diffusers`), the grid from :mod:`ddim.maths.grids`, every
step's numbers from :func:`ddim.sampling.plan.step_table` and the update from the solver
registry's stepper (:mod:`ddim.sampling.solvers`), the noise from
:class:`ddim.sampling.noise.NoiseSource`. With the same solver, grid, η and generator a pipeline
then gives what :func:`ddim.sample` gives (``DDPMPipeline``, ``DDIMPipeline``, ``LDMPipeline``;
Stable Diffusion's pipelines call it the same way).

What it cannot do (each refused with a ValueError naming the timestep and the grid, or said
here): a step at a timestep off its grid, or out of order (a multistep solver's history and
DDIM's ᾱ_prev come from the grid's next point, never from ``t - T/S``: diffusers issues 12633,
11347); a second step at one timestep (second-order samplers like Heun's call ``step`` twice
per timestep: here ``order`` is 1); several values of η in one run. A run that begins further
down the grid (img2img pipelines: ``set_begin_index``, or a first step at a later grid point)
runs the solver on that tail of the grid, warming a multistep solver up again, as
:func:`ddim.img2img` does. Only the config's schedule and ``prediction_type`` are read: its
sampling choices (``timestep_spacing``, ``steps_offset``, ``clip_sample``,
``set_alpha_to_one``, ``thresholding``) give way to ddim's options (defaults: trailing spacing,
final ᾱ = 1, no clipping). A pipeline holding it cannot be written with ``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..checks import check_choice, check_eta, check_int
from ..maths.grids import grid_spec, grid_timesteps
from ..maths.prediction import PREDICTION_TYPES
from ..maths.schedule import NoiseSchedule
from ..sampling.noise import Generators
from ..sampling.options import DEFAULT_STEPS, SampleOptions
from ..sampling.plan import step_table
from .scheduler_run import SchedulerRun, fused

OPTIONS = ("solver", "spacing", "timesteps", "steps_offset", "eta", "final_alpha",
           "sigma_hat", "prediction_type", "clip_sample", "dynamic_threshold",
           "dynamic_threshold_max", "rederive_eps")


class DiffusersScheduler:
    """A diffusers-style scheduler that steps with ddim's solvers along ddim's grids.

    Build it with :meth:`from_config`. Attributes as diffusers' schedulers have them:
    ``config`` (the config given, with the prediction type used), ``timesteps`` (int64, after
    :meth:`set_timesteps`), ``num_inference_steps``, ``init_noise_sigma`` (1: a
    variance-preserving model starts from N(0, I)), ``order`` (1: one model call per
    timestep), ``alphas_cumprod`` (float64), ``step_index`` and ``begin_index``.
    """

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, schedule: NoiseSchedule, config: Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        from diffusers.configuration_utils import FrozenDict

        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"DiffusersScheduler got unexpected options {unknown}; it takes "
                            f"{list(OPTIONS)}")
        config = dict(config or {})
        ptype = options.pop("prediction_type", None) or config.get("prediction_type",
                                                                   "epsilon")
        check_choice("prediction_type", ptype, PREDICTION_TYPES)
        self._options = SampleOptions(schedule=schedule, prediction_type=ptype, **options)
        self._schedule, self._ptype = schedule, ptype
        self.config = FrozenDict({**config, "num_train_timesteps": len(schedule),
                                  "prediction_type": ptype})
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._grid: tuple[int, ...] = ()
        self._begin: int | None = None
        self._run: SchedulerRun | None = None

    @classmethod
    def from_config(cls, config: Any, **options: Any) -> DiffusersScheduler:
        """The scheduler for a diffusers scheduler config (or a scheduler object).

        Args:
            config: ``pipe.scheduler.config`` (a dict-like of ``scheduler_config.json``) or
                a diffusers scheduler; its schedule (``num_train_timesteps``,
                ``beta_schedule``, ``beta_start``, ``beta_end``, ``trained_betas``,
                ``rescale_betas_zero_snr``) and ``prediction_type`` are read.
            **options: ddim's sampling options, as :func:`ddim.sample` takes them:
                ``solver`` (default ``ddim``), ``spacing`` (default ``trailing``),
                ``timesteps`` (an explicit grid), ``steps_offset``, ``eta`` (the default of
                ``step``'s), ``final_alpha``, ``sigma_hat``, ``prediction_type``,
                ``clip_sample`` (True: [-1, 1], the pixel pipelines' range; give latents
                their own bound), ``dynamic_threshold``, ``dynamic_threshold_max``,
                ``rederive_eps``.

        Raises:
            TypeError / ValueError naming the option (as :func:`ddim.sample` does), or an
            option it does not take.
        """
        raw = getattr(config, "config", config)
        if not isinstance(raw, Mapping):
            raise TypeError(f"config must be a diffusers scheduler config (a mapping) or a "
                            f"scheduler, got {type(config).__name__}")
        return cls(NoiseSchedule.from_diffusers(raw), raw, **options)

    # ------------------------------------------------------------ the grid
    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: torch.device | str | None = None,
                      timesteps: Any = None) -> None:
        """Set the grid of the next run: S = ``num_inference_steps`` points placed by the
        spacing (default 50), or the explicit ``timesteps`` (here, or given to
        :meth:`from_config`). ``timesteps`` lands on ``device``. Starts a fresh run.

        Raises:
            TypeError / ValueError naming the argument: S outside [1, T], a bad grid, a grid
            given twice, an η (from :meth:`from_config`) the grid cannot take.
        """
        o = self._options
        if timesteps is not None and o.timesteps is not None:
            raise ValueError("timesteps were given to from_config already; pass them once")
        if o.timesteps is not None and num_inference_steps not in (None, len(o.timesteps)):
            raise ValueError(f"num_inference_steps={num_inference_steps!r} contradicts the "
                             f"{len(o.timesteps)} timesteps given to from_config "
                             f"{list(o.timesteps)}: call the pipeline with "
                             f"num_inference_steps={len(o.timesteps)}")
        explicit = o.timesteps if timesteps is None else timesteps
        spec = grid_spec(num_inference_steps, o.spacing, o.steps_offset, explicit,
                         len(self._schedule), DEFAULT_STEPS)
        step_table(self._schedule, spec, o.solver, o.final_alpha, o.eta, o.sigma_hat,
                   self._ptype, fused(o))  # its checks (η) before any model call
        self._grid = tuple(grid_timesteps(self._schedule, spec).tolist())
        self.timesteps = torch.tensor(self._grid, dtype=torch.int64, device=device)
        self.num_inference_steps = len(self._grid)
        self._begin, self._run = None, None

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run at grid point ``begin_index`` (img2img pipelines: the grid's
        tail below the strength's level). Raises ValueError outside [0, S-1]."""
        self._require_grid()
        self._begin = check_int("begin_index", begin_index, low=0, high=len(self._grid) - 1)
        self._run = None

    @property
    def step_index(self) -> int | None:
        """The grid index of the next step (None before a run's first step)."""
        return None if self._run is None else self._grid.index(self._run.grid[0]) + (
            self._run.next)

    @property
    def begin_index(self) -> int | None:
        """Where the next run starts, if :meth:`set_begin_index` said so."""
        return self._begin

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t, t = 0 .. T-1: float64 (T,) (a copy)."""
        return self._schedule.alphas_cumprod

    def __len__(self) -> int:
        return len(self._schedule)

    def __repr__(self) -> str:
        o = self._options
        grid = (f"timesteps={list(o.timesteps)}" if o.timesteps is not None
                else f"spacing={o.spacing or 'trailing'!r}")
        return (f"DiffusersScheduler(solver={o.solver!r}, {grid}, eta={o.eta:g}, "
                f"final_alpha={o.final_alpha!r}, prediction_type={self._ptype!r}, "
                f"schedule={self._schedule!r}, steps={self.num_inference_steps})")

    # ------------------------------------------------------------ the protocol
    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """``sample`` itself: a variance-preserving model takes x_t as it is."""
        return sample

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             eta: float | None = None, use_clipped_model_output: bool | None = None,
             generator: Generators = None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True) -> Any:
        """One step from grid point ``timestep`` to the next (to x̂0 after the last).

        Args:
            model_output: the network's output at (sample, timestep), sample's shape (2C
                channels: the first C are used).
            timestep: the grid point, an integer (or a 0-d integer tensor).
            sample: x_t (B, ...); the step runs in its dtype promoted to float32.
            eta: η of this run (None: from_config's); one value per run, ddim's solver only.
            use_clipped_model_output: None, or from_config's ``rederive_eps``.
            generator: where the noise of a noisy step comes from (a generator or a list of B).
            variance_noise: z ~ N(0, I) of sample's shape to use instead of drawing.
            return_dict: a ``DDIMSchedulerOutput`` (``prev_sample``,
                ``pred_original_sample``), else the tuple of the two.

        Returns:
            x at the next grid point (prev_sample) and x̂0, in ``sample``'s dtype.

        Raises:
            ValueError naming the timestep and the grid: no grid set, a timestep off the
            grid, out of order, or after the last step; TypeError / ValueError naming the
            argument for a bad η, generator, noise or shape.
        """
        from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

        self._require_grid()
        for name, value in (("model_output", model_output), ("sample", sample)):
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise TypeError(f"{name} must be a floating torch.Tensor, got "
                                f"{getattr(value, 'dtype', type(value).__name__)}")
        t = check_int("timestep", timestep)
        eta = self._options.eta if eta is None else check_eta(eta)
        if use_clipped_model_output is not None and (
                use_clipped_model_output != self._options.rederive_eps):
            raise ValueError(f"use_clipped_model_output={use_clipped_model_output!r}: set "
                             "rederive_eps in from_config (ddim applies it to the whole run)")
        run = self._run_at(t, eta, sample)
        out = run.step(model_output, sample, generator, variance_noise)
        prev, pred_x0 = out.prev_sample.to(sample.dtype), out.pred_x0.to(sample.dtype)
        return DDIMSchedulerOutput(prev, pred_x0) if return_dict else (prev, pred_x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: Any) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε (the forward process, DDPM eq. 4), ᾱ in float64.

        Args:
            original_samples, noise: (B, ...) floating tensors of one shape.
            timesteps: one integer, or an integer tensor of shape (B,), in [0, T-1].

        Returns:
            x_t in ``original_samples``' dtype.

        Raises:
            TypeError / ValueError naming the argument.
        """
        if not (isinstance(original_samples, torch.Tensor) and isinstance(noise, torch.Tensor)
                and original_samples.shape == noise.shape):
            raise ValueError("original_samples and noise must be tensors of one shape, got "
                             f"{getattr(original_samples, 'shape', None)} and "
                             f"{getattr(noise, 'shape', None)}")
        t = torch.as_tensor(timesteps).detach().cpu()
        if t.is_floating_point() or t.dtype == torch.bool or t.ndim > 1 or (
                t.ndim == 1 and len(t) not in (1, len(original_samples))):
            raise TypeError(f"timesteps must be an integer or {len(original_samples)} integers, "
                            f"got {timesteps!r:.60}")
        if ((t < 0) | (t >= len(self._schedule))).any():
            raise ValueError(f"timesteps must lie in [0, {len(self._schedule) - 1}], got "
                             f"{t.tolist()}")
        dtype = torch.promote_types(original_samples.dtype, torch.float32)
        x0 = original_samples.to(dtype)
        a = self._schedule.alpha_bar(t.reshape(-1))  # float64 (1,) or (B,)
        shape = (-1, *([1] * (x0.ndim - 1)))
        signal, noise_level = (v.reshape(shape).to(device=x0.device, dtype=dtype)
                               for v in (a.sqrt(), (1 - a).sqrt()))
        return (signal * x0 + noise_level * noise.to(dtype)).to(original_samples.dtype)

    # ------------------------------------------------------------ runs
    def _require_grid(self) -> None:
        if not self._grid:
            raise ValueError("no grid yet: call set_timesteps(num_inference_steps) first")

    def _run_at(self, t: int, eta: float, sample: torch.Tensor) -> SchedulerRun:
        """The run that steps from timestep ``t`` now: the current one if ``t`` is its next
        point, else a new one when none has started (from ``t``'s place on the grid)."""
        run, grid = self._run, self._grid
        if run is not None and not run.done and t == run.grid[run.next]:
            if eta != run.eta:
                raise ValueError(f"eta={eta!r} at timestep {t}, but this run started with "
                                 f"eta={run.eta!r}: η is one value per run")
            return run
        if t not in grid:
            raise ValueError(f"timestep {t} is not on this scheduler's grid {list(grid)}: it "
                             "steps only from its own timesteps (set_timesteps sets them)")
        start = grid.index(t)
        if run is not None:
            where = ("after the last step" if run.done else
                     f"where timestep {run.grid[run.next]} is next")
            raise ValueError(f"timestep {t} comes {where} on the grid {list(grid)}: steps run "
                             "once, in order (call set_timesteps to start again)")
        if self._begin is not None and start != self._begin:
            raise ValueError(f"timestep {t} is grid point {start} of {list(grid)}, but "
                             f"set_begin_index({self._begin}) starts the run at "
                             f"{grid[self._begin]}")
        self._run = SchedulerRun(self._schedule, self._with_eta(eta), self._ptype,
                                 grid[start:], sample)
        return self._run

    def _with_eta(self, eta: float) -> SampleOptions:
        """The options with this run's η (checked as :func:`ddim.sample` checks it)."""
        if eta == self._options.eta:
            return self._options
        kept = {k: getattr(self._options, k) for k in OPTIONS if k != "eta"}
        return SampleOptions(**kept, schedule=self._schedule, eta=eta)
