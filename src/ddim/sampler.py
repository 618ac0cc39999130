"""The DDIM loop: ``sample_iter`` yields every step and ``sample`` drains it.

All arguments are checked once, up front; the loop itself only calls the model (without
autograd: sampling builds no graph), checks the output's shape (a Python comparison) and
applies the DDIM step with per-step coefficients computed in float64 before the loop (and
memoised per setup: schedule, grid, η, final ᾱ, prediction type, x̂0 processing). Without
x̂0 processing the step is applied in its fused form x_prev = a_x·x_t + a_out·out + c_noise·z
(:func:`ddim.step.fused_coefficients`: x̂0 and ε̂ substituted; two kernels, three with noise);
x̂0 and ε̂ themselves are only computed when someone looks at them (:func:`sample_iter`, a
callback). The last step onto ᾱ=1 returns x̂0 itself, and x̂0 processing goes through
:func:`ddim.step.apply_step`. It never synchronises with the device: the sum of each model
output (NaN/inf survive a sum) goes into a preallocated device tensor, checked once at the end.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import noise as _noise
from ._checks import check_choice, check_eta, check_int
from .guidance import conditioning
from .models import ModelFn, as_model_fn, fit_output, model_device_dtype, model_sample_shape
from .schedule import FINAL_ALPHAS, SPACINGS, NoiseSchedule, default_schedule
from .step import (
    PREDICTION_TYPES,
    StepOutput,
    apply_step,
    fused_coefficients,
    predict_x0_eps,
    step_coefficients,
)

DEFAULT_STEPS = 50

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], Any]


class NonFiniteError(ValueError):
    """The model returned NaN or inf; ``step`` and ``timestep`` say where it first happened."""

    def __init__(self, message: str, step: int, timestep: int) -> None:
        super().__init__(message)
        self.step, self.timestep = step, timestep


@dataclass(frozen=True)
class SampleStep:
    """What :func:`sample_iter` yields after step ``index`` (0-based) at training step ``t``.

    ``sample`` is x at the next grid level (after the last step: the final sample), ``pred_x0``
    and ``pred_eps`` the step's x̂0 and ε̂; all of shape (B, ...).
    """

    index: int
    t: int
    sample: torch.Tensor
    pred_x0: torch.Tensor
    pred_eps: torch.Tensor


@dataclass(frozen=True)
class _Plan:
    """Everything the loop needs, validated: built once per call."""

    fn: ModelFn
    levels: _Levels  # the grid and its per-step numbers
    t_grid: torch.Tensor  # the grid as int64 on x's device (fresh each call)
    x: torch.Tensor
    model_dtype: torch.dtype | None
    step_kwargs: dict[str, Any]
    noise: _noise.NoiseSource | None


def sample_iter(
    model: Any,
    steps: int | None = None,
    eta: float = 0.0,
    *,
    x_T: torch.Tensor | None = None,
    shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    schedule: NoiseSchedule | None = None,
    spacing: str = "leading",
    steps_offset: int = 0,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    final_alpha: str = "one",
    sigma_hat: bool = False,
    generator: _noise.Generators = None,
    prediction_type: str | None = None,
    clip_sample: float | None = None,
    dynamic_threshold: float | None = None,
    dynamic_threshold_max: float = 1.0,
    rederive_eps: bool = False,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    model_kwargs: dict[str, torch.Tensor] | None = None,
    uncond_kwargs: dict[str, torch.Tensor] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[SampleStep]:
    """Run DDIM step by step, yielding a :class:`SampleStep` after each model call.

    Arguments are validated when this is called (not when iteration starts). See :func:`sample`
    for their meaning. The iterator raises :class:`NonFiniteError` after its last step if the
    model returned NaN or inf at any step, naming the first such step.
    """
    plan = _prepare(
        model, steps, eta, x_T=x_T, shape=shape, batch_size=batch_size, schedule=schedule,
        spacing=spacing, steps_offset=steps_offset, timesteps=timesteps, final_alpha=final_alpha,
        sigma_hat=sigma_hat, generator=generator, prediction_type=prediction_type,
        clip_sample=clip_sample, dynamic_threshold=dynamic_threshold,
        dynamic_threshold_max=dynamic_threshold_max, rederive_eps=rederive_eps,
        class_labels=class_labels, guidance_scale=guidance_scale, model_kwargs=model_kwargs,
        uncond_kwargs=uncond_kwargs, device=device, dtype=dtype,
    )
    _check_callback(callback)
    return _loop(plan, callback, progress, details=True)


def sample(model: Any, steps: int | None = None, eta: float = 0.0, *,
           max_batch_size: int | None = None, **kwargs: Any) -> torch.Tensor:
    """Generate samples with DDIM (Song, Meng & Ermon 2021).

    Args:
        model: ``model(x, t) -> Tensor`` with x (B, C, ...) and t int64 (B,) on x's device; a
            diffusers ``UNet2DModel``; a learned-variance model (2C outputs: first C used); or a
            bundle from :func:`ddim.load_pretrained` (which supplies schedule, shape and
            prediction type).
        steps: S, the number of model calls, an integer in [1, T] (default 50). Ignored when
            ``timesteps`` is given (then it must be None or equal to its length).
        eta: η >= 0. 0 is deterministic DDIM (no random numbers drawn), 1 is DDPM-like.
        x_T: initial noise (B, ...), a floating tensor; sets device, dtype and shape.
        shape: the full shape (B, C, H, W) to draw x_T with, when x_T is not given.
        batch_size: B when neither x_T nor shape is given (shape from the model; default 1).
        schedule: a :class:`NoiseSchedule`; default the model bundle's, else the DDPM linear
            schedule (T=1000, β 1e-4..0.02) that the ``google/ddpm-*`` checkpoints use.
        spacing: ``leading`` (paper, default), ``trailing`` (best with few steps),
            ``linspace`` or ``quad``; see :meth:`NoiseSchedule.timesteps`.
        steps_offset: shift of the ``leading`` grid (diffusers' ``steps_offset``).
        timesteps: an explicit strictly decreasing grid instead of steps/spacing.
        final_alpha: ᾱ after the last grid point: ``one`` (default, returns x̂0) or ``first``
            (ᾱ_0, as diffusers' ``set_alpha_to_one=False`` and CompVis).
        sigma_hat: use the paper's σ̂ noise (DDPM's larger variance); ``eta`` is then unused.
        generator: a ``torch.Generator`` (CPU ones give identical results on CUDA) or a list of
            B generators, one per sample (results then independent of the batch).
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction`` (default: the bundle's,
            else ``epsilon``).
        clip_sample: clamp x̂0 to [-clip_sample, clip_sample] (off by default, as the paper).
        dynamic_threshold, dynamic_threshold_max: Imagen's dynamic thresholding of x̂0.
        rederive_eps: recompute ε̂ from the processed x̂0 (diffusers' use_clipped_model_output).
        class_labels: int64 (B,) labels (or one int) for a class-conditional model.
        guidance_scale: classifier-free guidance weight w >= 0 (1: conditional, 0:
            unconditional; one batched forward for both halves). See :mod:`ddim.guidance`.
        model_kwargs, uncond_kwargs: conditioning tensors (batch first) passed to the model as
            keywords, e.g. ``encoder_hidden_states``; ``uncond_kwargs`` is the unconditional
            half for guidance.
        callback: called as ``callback(i, t, x, pred_x0)`` after step i, x being the new sample.
        progress: show a tqdm progress bar.
        max_batch_size: run the batch in chunks of at most this many samples (bounded
            memory). x_T is drawn for the whole batch first; with a list of per-sample
            generators the result is identical to one big batch, with a single generator it is
            reproducible but the step noise is drawn chunk after chunk. ``callback`` then sees
            each chunk's samples.
        device, dtype: where and in which dtype (>= float32 precision) to keep the sample when
            x_T is not given (default: the model's device, float32). The model runs in its own
            dtype; only its input and output are cast.

    Returns:
        x_0 of shape (B, ...), in the model's data range (e.g. [-1, 1] for images).

    Raises:
        TypeError / ValueError naming the parameter for invalid arguments; NonFiniteError if the
        model returns NaN or inf.
    """
    if max_batch_size is None:
        return _sample(model, steps, eta, **kwargs)
    k = check_int("max_batch_size", max_batch_size, low=1)
    setup = {n: v for n, v in kwargs.items() if n not in ("callback", "progress")}
    x_T = _prepare(model, steps, eta, **setup).x  # validates everything, draws x_T once
    gens = kwargs.get("generator")
    per_sample = ("class_labels", "model_kwargs", "uncond_kwargs")
    rest = {n: v for n, v in kwargs.items() if n not in ("x_T", "shape", "batch_size",
                                                         "generator", "device", *per_sample)}
    chunks = []
    for lo in range(0, x_T.shape[0], k):
        part = slice(lo, lo + k)
        g = gens if gens is None or isinstance(gens, torch.Generator) else gens[part]
        cond = {n: _rows(kwargs[n], part) for n in per_sample if kwargs.get(n) is not None}
        chunks.append(_sample(model, steps, eta, x_T=x_T[part], generator=g, **cond, **rest))
    return torch.cat(chunks)


def _sample(model: Any, steps: int | None, eta: float, *, callback: Callback | None = None,
            progress: bool = False, **kwargs: Any) -> torch.Tensor:
    """:func:`sample_iter` drained, without computing x̂0 and ε̂ unless a callback needs them."""
    _check_callback(callback)
    plan = _prepare(model, steps, eta, **kwargs)
    return _drain(_loop(plan, callback, progress, details=callback is not None))


def _rows(value: Any, part: slice) -> Any:
    """Rows ``part`` of per-sample conditioning (labels, or a dict of batch-first tensors)."""
    if isinstance(value, dict):
        return {k: v[part] for k, v in value.items()}
    return value if isinstance(value, int) else value[part]


def _drain(steps: Iterator[SampleStep]) -> torch.Tensor:
    x = None
    for out in steps:
        x = out.sample
    return x


def _check_callback(callback: Any) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(i, t, x, pred_x0), "
                        f"got {type(callback).__name__}")


def _loop(plan: _Plan, callback: Callback | None, progress: bool,
          details: bool) -> Iterator[SampleStep]:
    """The steps; ``details=False`` leaves pred_x0/pred_eps None where the fused step skips
    them (the samples are the same either way)."""
    x, grid = plan.x, plan.levels.grid
    probes = x.new_empty(len(grid), dtype=torch.float32)
    for i in _progress(range(len(grid)), progress, "sampling"):
        if torch.is_grad_enabled():  # per step: grad mode must not leak across yield
            with torch.no_grad():
                x, pred_x0, pred_eps = _step(plan, x, i, probes, details)
        else:
            x, pred_x0, pred_eps = _step(plan, x, i, probes, details)
        if callback is not None:
            callback(i, grid[i], x, pred_x0)
        yield SampleStep(i, grid[i], x, pred_x0, pred_eps)
    _check_finite(probes, grid)


def _step(plan: _Plan, x: torch.Tensor, i: int, probes: torch.Tensor,
          details: bool) -> StepOutput:
    """Step i: the model call, its NaN probe, then x_prev in the fused form (or through
    :func:`apply_step` where x̂0 is processed or the step returns x̂0 itself)."""
    levels = plan.levels
    out = _call(plan, x, i)
    probes[i] = out.sum(dtype=torch.float32)  # NaN/inf survive the sum; no sync here
    z = plan.noise() if levels.noisy[i] else None
    fused = levels.fused[i]
    if fused is None:
        return apply_step(x, out, levels.alpha_bar_t[i], levels.coefficients[i], z,
                          **plan.step_kwargs)
    out = out if out.dtype == x.dtype else out.to(x.dtype)
    prev = x.mul(fused[0]).add_(out, alpha=fused[1])
    if z is not None:  # NoiseSource draws in x's dtype
        prev.add_(z, alpha=levels.coefficients[i][2])
    if not details:
        return StepOutput(prev, None, None)
    pred_x0, pred_eps = predict_x0_eps(x, out, levels.alpha_bar_t[i],
                                       plan.step_kwargs["prediction_type"])
    return StepOutput(prev, pred_x0, pred_eps)


def _call(plan: _Plan, x: torch.Tensor, i: int) -> torch.Tensor:
    x_in = x if plan.model_dtype in (None, x.dtype) else x.to(plan.model_dtype)
    t = plan.t_grid[i].expand(x.shape[0])  # int64 (B,) on x's device, a view: no copy
    return fit_output(plan.fn(x_in, t), x, i, plan.levels.grid[i])


def _check_finite(probes: torch.Tensor, grid: Sequence[int]) -> None:
    bad = ~torch.isfinite(probes)
    if bad.any():  # the one host sync of the call
        i = int(bad.nonzero()[0])
        raise NonFiniteError(
            f"the model returned NaN or inf at step {i} (t={grid[i]}); check the model, its "
            "dtype (fp16 overflow?) and its input range", step=i, timestep=int(grid[i]))


def _progress(it: Sequence[int], enabled: bool, desc: str) -> Sequence[int]:
    if not enabled:
        return it
    from tqdm.auto import tqdm  # imported only when a bar is asked for

    return tqdm(it, desc=desc, unit="step")


def _prepare(
    model: Any,
    steps: int | None,
    eta: float,
    *,
    x_T: torch.Tensor | None = None,
    shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    schedule: NoiseSchedule | None = None,
    spacing: str = "leading",
    steps_offset: int = 0,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    final_alpha: str = "one",
    sigma_hat: bool = False,
    generator: _noise.Generators = None,
    prediction_type: str | None = None,
    clip_sample: float | None = None,
    dynamic_threshold: float | None = None,
    dynamic_threshold_max: float = 1.0,
    rederive_eps: bool = False,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    model_kwargs: dict[str, torch.Tensor] | None = None,
    uncond_kwargs: dict[str, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    x_name: str = "x_T",
) -> _Plan:
    fn = as_model_fn(model)
    eta = check_eta(eta)
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    schedule = schedule if schedule is not None else default_schedule()
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a ddim.NoiseSchedule, got {type(schedule).__name__}")
    ptype = prediction_type if prediction_type is not None else (
        getattr(model, "prediction_type", None) or "epsilon")
    check_choice("prediction_type", ptype, PREDICTION_TYPES)
    check_choice("spacing", spacing, SPACINGS)
    check_choice("final_alpha", final_alpha, FINAL_ALPHAS)
    _check_x0_options(clip_sample, dynamic_threshold, dynamic_threshold_max)

    fuse = clip_sample is None and dynamic_threshold is None
    if timesteps is not None:
        if isinstance(timesteps, str) or not isinstance(timesteps, (Sequence, torch.Tensor)):
            raise TypeError(f"timesteps must be a sequence of integers, got {timesteps!r:.40}")
        grid = schedule.timesteps(timesteps)
        if steps is not None and check_int("steps", steps, low=1) != len(grid):
            raise ValueError(f"steps={steps} contradicts the {len(grid)} explicit timesteps; "
                             "pass one of them")
        levels = _levels(schedule, grid, final_alpha, eta, bool(sigma_hat), ptype, fuse)
    else:
        steps = DEFAULT_STEPS if steps is None else check_int(
            "steps", steps, low=1, high=schedule.num_train_timesteps)
        offset = check_int("steps_offset", steps_offset, low=0,
                           high=schedule.num_train_timesteps - 1)
        levels = _grid_levels(schedule, steps, spacing, offset, final_alpha, eta,
                              bool(sigma_hat), ptype, fuse)

    model_device, model_dtype = model_device_dtype(model)
    x = _initial_sample(model, x_T, shape, batch_size, device, dtype, model_device, x_name)
    gens = _noise.check_generators(generator, x.shape[0], x.device)
    fn = conditioning(model, x.shape[0], x.device, class_labels=class_labels,
                      guidance_scale=guidance_scale, model_kwargs=model_kwargs,
                      uncond_kwargs=uncond_kwargs) or fn
    if x_T is None:
        x = _noise.randn(x.shape, gens, x.device, x.dtype)
    source = (_noise.NoiseSource(x.shape, gens, x.device, x.dtype) if any(levels.noisy)
              else None)
    step_kwargs = dict(prediction_type=ptype, clip_sample=clip_sample,
                       dynamic_threshold=dynamic_threshold,
                       dynamic_threshold_max=dynamic_threshold_max, rederive_eps=rederive_eps)
    t_grid = torch.tensor(levels.grid, dtype=torch.int64, device=x.device)
    return _Plan(fn, levels, t_grid, x, model_dtype, step_kwargs, source)


@dataclass(frozen=True)
class _Levels:
    """The per-step numbers of one sampling setup, as Python scalars (read-only, shared)."""

    grid: tuple[int, ...]
    alpha_bar_t: tuple[float, ...]
    alpha_bar_prev: tuple[float, ...]
    coefficients: tuple[tuple[float, float, float], ...]  # (c_x0, c_eps, c_noise)
    fused: tuple[tuple[float, float] | None, ...]  # (a_x, a_out); None: through apply_step
    noisy: tuple[bool, ...]


def _levels(schedule: NoiseSchedule, grid: torch.Tensor, final_alpha: str, eta: float,
            sigma_hat: bool, ptype: str, fuse: bool) -> _Levels:
    """ᾱ, the step coefficients and their fused form for every step of ``grid``, in float64."""
    a_t, a_prev = schedule.alpha_bars(grid, final_alpha)
    if ptype == "epsilon" and (a_t == 0).any():
        raise ValueError(
            "this schedule has zero terminal SNR (ᾱ=0 at t="
            f"{int(grid[a_t == 0][0])}) and prediction_type='epsilon': x0 = (x - sqrt(1-ᾱ)ε)/"
            "sqrt(ᾱ) divides by zero at the first step; use a v_prediction or sample model, "
            "or a grid that does not include that step"
        )
    coefficients = step_coefficients(a_t, a_prev, eta, sigma_hat=sigma_hat)
    per_step = tuple(zip(*(c.tolist() for c in coefficients), strict=True))
    fused: tuple[tuple[float, float] | None, ...] = (None,) * len(grid)
    if fuse:
        a_x, a_out = fused_coefficients(a_t, coefficients, ptype)
        returns_x0 = ((a_prev == 1) & (coefficients[2] == 0)).tolist()  # x_prev = x̂0 exactly
        fused = tuple(None if last else pair for pair, last in
                      zip(zip(a_x.tolist(), a_out.tolist(), strict=True), returns_x0, strict=True))
    return _Levels(tuple(grid.tolist()), tuple(a_t.tolist()), tuple(a_prev.tolist()), per_step,
                   fused, tuple((coefficients[2] > 0).tolist()))


@functools.lru_cache(maxsize=64)
def _grid_levels(schedule: NoiseSchedule, steps: int, spacing: str, steps_offset: int,
                 final_alpha: str, eta: float, sigma_hat: bool, ptype: str,
                 fuse: bool) -> _Levels:
    """:func:`_levels` of a spaced grid, memoised: a pure function of immutable arguments (the
    schedule hashes its ᾱ), so repeated calls with one setup skip ≈300 µs of float64 work."""
    grid = schedule.timesteps(steps, spacing, steps_offset=steps_offset)
    return _levels(schedule, grid, final_alpha, eta, sigma_hat, ptype, fuse)


def _initial_sample(model: Any, x_T: torch.Tensor | None, shape: Sequence[int] | None,
                    batch_size: int | None, device: Any, dtype: torch.dtype | None,
                    model_device: torch.device | None, name: str = "x_T") -> torch.Tensor:
    """x_T validated (returned as a state-dtype copy), or an empty tensor of the right shape."""
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64 (the sampler's state; a "
                        f"half-precision model still runs in its own dtype), got {dtype!r}")
    if shape is not None:
        shape = tuple(shape)
        if len(shape) < 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"shape must be (B, C, ...) of positive integers, got {shape}")
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, low=1)
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x_T).__name__}")
        if not x_T.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {x_T.dtype}")
        if x_T.numel() == 0 or x_T.ndim < 2:
            raise ValueError(f"{name} must have shape (B, C, ...) with B >= 1 and no empty "
                             f"dimension, got {tuple(x_T.shape)}")
        if shape is not None and tuple(x_T.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(x_T.shape)} but shape={shape}")
        if batch_size is not None and batch_size != x_T.shape[0]:
            raise ValueError(f"{name} has batch size {x_T.shape[0]} but batch_size={batch_size}")
        if not torch.isfinite(x_T).all():
            raise ValueError(f"{name} contains NaN or inf values")
        state = dtype or torch.promote_types(x_T.dtype, torch.float32)
        return x_T.to(device=device if device is not None else x_T.device, dtype=state,
                      copy=True)
    if shape is None:
        sample_shape = model_sample_shape(model)
        if sample_shape is None:
            raise ValueError("cannot tell the sample shape of this model: pass x_T or "
                             "shape=(B, C, H, W)")
        b = 1 if batch_size is None else batch_size
        shape = (b, *sample_shape)
    elif batch_size is not None and batch_size != shape[0]:
        raise ValueError(f"shape {shape} contradicts batch_size={batch_size}")
    dev = torch.device(device) if device is not None else (model_device or torch.device("cpu"))
    return torch.empty(shape, device=dev, dtype=dtype or torch.float32)


def _check_x0_options(clip_sample: float | None, dynamic_threshold: float | None,
                      dynamic_threshold_max: float) -> None:
    checks = [
        ("clip_sample", clip_sample, 0, math.inf, "None or a positive number (the x0 range, "
         "e.g. 1.0)"),
        ("dynamic_threshold", dynamic_threshold, 0, 1, "a quantile in (0, 1), e.g. 0.995"),
        ("dynamic_threshold_max", dynamic_threshold_max, 1, math.inf, ">= 1"),
    ]
    for name, value, low, high, allowed in checks:
        if value is None and name != "dynamic_threshold_max":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
        ok = math.isfinite(value) and (low < value or value == low == 1) and value < high
        if not ok:
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
