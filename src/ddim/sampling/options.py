"""The sampling options, stated once: one frozen, validated value built from the public
arguments of :func:`ddim.sample` (and of every entry point built on it).

Every check that needs no model runs here, once, when the object is built: types, ranges,
choices, and the options that contradict each other. What needs the model (steps <= T, the
model's shape and classes, its device) is resolved by :mod:`ddim.sampling.plan`. The meaning of each
option is documented on :func:`ddim.sample`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..checks import check_bool, check_choice, check_device, check_eta, check_int
from ..maths.grids import (
    FINAL_ALPHAS,
    SPACING_CHOICES,
    refuse_with_explicit_grid,
    timestep_array,
)
from ..maths.prediction import PREDICTION_TYPES
from ..maths.schedule import NoiseSchedule
from ..maths.thresholding import ClipSample, clip_range
from .noise import Generators, check_generator_list
from .solvers import SOLVER_NAMES, SOLVERS, STOCHASTIC_SOLVERS

DEFAULT_STEPS = 50

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], Any]


@dataclass(frozen=True)
class SampleOptions:
    """Validated sampling options (see :func:`ddim.sample` for each one's meaning).

    Building one checks every value that needs no model (``steps`` and ``steps_offset`` are
    bounded by the schedule's T: the plan checks them); an invalid one raises
    ``TypeError``/``ValueError`` naming the parameter, its value and what is allowed.
    ``x_name`` is the name of the starting
    tensor in messages (``x_T``, or ``x0`` for :func:`ddim.invert`).
    """

    steps: int | None = None
    eta: float = 0.0
    solver: str = "ddim"
    schedule: NoiseSchedule | None = None
    spacing: str | None = None
    steps_offset: int | None = None
    timesteps: tuple[int, ...] | None = None
    final_alpha: str = "one"
    sigma_hat: bool = False
    prediction_type: str | None = None
    clip_sample: ClipSample = None
    dynamic_threshold: float | None = None
    dynamic_threshold_max: float = 1.0
    rederive_eps: bool = False
    x_T: torch.Tensor | None = None
    shape: Sequence[int] | None = None
    batch_size: int | None = None
    generator: Generators = None
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    class_labels: Any = None
    guidance_scale: float | None = None
    model_kwargs: Mapping[str, torch.Tensor] | None = None
    uncond_kwargs: Mapping[str, torch.Tensor] | None = None
    callback: Callback | None = None
    progress: bool = False
    max_batch_size: int | None = None
    x_name: str = "x_T"

    def __post_init__(self) -> None:
        for f in fields(self):
            check = _CHECKS.get(f.name)
            if check is not None:
                object.__setattr__(self, f.name, check(self, getattr(self, f.name)))
        _check_x0_options(self.clip_sample, self.dynamic_threshold, self.dynamic_threshold_max)
        _check_batch(self)
        if self.timesteps is not None:
            refuse_with_explicit_grid(self.spacing, self.steps_offset)
        _check_solver_options(self)

    @property
    def batch(self) -> int:
        """B, the number of samples: from x_T, shape or batch_size (default 1)."""
        if self.x_T is not None:
            return self.x_T.shape[0]
        if self.shape is not None:
            return self.shape[0]
        return 1 if self.batch_size is None else self.batch_size


def _timesteps(o: SampleOptions, timesteps: Any) -> tuple[int, ...] | None:
    """An explicit grid as a tuple of ints (range and order: the plan, against T)."""
    return None if timesteps is None else tuple(timestep_array(timesteps).tolist())


def _schedule(o: SampleOptions, schedule: Any) -> NoiseSchedule | None:
    if schedule is not None and not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a ddim.NoiseSchedule, got {type(schedule).__name__}")
    return schedule


def _optional_choice(name: str, choices: Sequence[str]) -> Callable[[SampleOptions, Any], Any]:
    def check(o: SampleOptions, value: Any) -> Any:
        return None if value is None else check_choice(name, value, choices)

    return check


def _dtype(o: SampleOptions, dtype: Any) -> torch.dtype | None:
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64 (the sampler's state; a "
                        f"half-precision model still runs in its own dtype), got {dtype!r}")
    return dtype


def _shape(o: SampleOptions, shape: Any) -> tuple[int, ...] | None:
    if shape is None:
        return None
    shape = tuple(shape) if isinstance(shape, Sequence) and not isinstance(shape, str) else shape
    if not isinstance(shape, tuple) or len(shape) < 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"shape must be (B, C, ...) of positive integers, got {shape}")
    return shape


def _x_T(o: SampleOptions, x_T: Any) -> torch.Tensor | None:
    name = o.x_name
    if x_T is None:
        return None
    if not isinstance(x_T, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x_T).__name__}")
    if not x_T.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x_T.dtype}")
    if x_T.numel() == 0 or x_T.ndim < 2:
        raise ValueError(f"{name} must have shape (B, C, ...) with B >= 1 and no empty "
                         f"dimension, got {tuple(x_T.shape)}")
    if not torch.isfinite(x_T).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x_T


def _callback(o: SampleOptions, callback: Any) -> Callback | None:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(i, t, x, pred_x0), "
                        f"got {type(callback).__name__}")
    return callback


def _positive_or_none(name: str) -> Callable[[SampleOptions, Any], int | None]:
    def check(o: SampleOptions, value: Any) -> int | None:
        return None if value is None else check_int(name, value, low=1)

    return check


_CHECKS: dict[str, Callable[[SampleOptions, Any], Any]] = {
    "eta": lambda o, v: check_eta(v),
    "solver": lambda o, v: check_choice("solver", v, SOLVER_NAMES),
    "schedule": _schedule,
    "spacing": _optional_choice("spacing", SPACING_CHOICES),
    "timesteps": _timesteps,
    "final_alpha": lambda o, v: check_choice("final_alpha", v, FINAL_ALPHAS),
    "sigma_hat": lambda o, v: check_bool("sigma_hat", v),
    "prediction_type": _optional_choice("prediction_type", PREDICTION_TYPES),
    "rederive_eps": lambda o, v: check_bool("rederive_eps", v),
    "x_T": _x_T,
    "shape": _shape,
    "batch_size": _positive_or_none("batch_size"),
    "device": lambda o, v: check_device("device", v),
    "dtype": _dtype,
    "callback": _callback,
    "progress": lambda o, v: check_bool("progress", v),
    "max_batch_size": _positive_or_none("max_batch_size"),
}


def _check_batch(o: SampleOptions) -> None:
    """x_T, shape and batch_size must agree; the generators must match the batch."""
    name = o.x_name
    if o.x_T is not None:
        if o.shape is not None and tuple(o.x_T.shape) != o.shape:
            raise ValueError(f"{name} has shape {tuple(o.x_T.shape)} but shape={o.shape}")
        if o.batch_size is not None and o.batch_size != o.x_T.shape[0]:
            raise ValueError(f"{name} has batch size {o.x_T.shape[0]} but "
                             f"batch_size={o.batch_size}")
    elif o.shape is not None and o.batch_size is not None and o.batch_size != o.shape[0]:
        raise ValueError(f"shape {o.shape} contradicts batch_size={o.batch_size}")
    check_generator_list(o.generator, o.batch)


def _check_solver_options(o: SampleOptions) -> None:
    """η, σ̂ and re-derived ε belong to DDIM's update; another solver would ignore them."""
    if SOLVERS[o.solver].ddim_options:
        return
    what = ("its noise is set by the SDE" if o.solver in STOCHASTIC_SOLVERS
            else f"it is deterministic; {', '.join(STOCHASTIC_SOLVERS)} is the stochastic "
            "multistep solver")
    for name, value, given in (("eta", o.eta, o.eta != 0), ("sigma_hat", o.sigma_hat, o.sigma_hat),
                               ("rederive_eps", o.rederive_eps, o.rederive_eps)):
        if given:
            raise ValueError(f"{name}={value!r} applies to solver='ddim' only, got "
                             f"solver={o.solver!r} ({what})")


def _check_x0_options(clip_sample: Any, dynamic_threshold: Any,
                      dynamic_threshold_max: Any) -> None:
    clip_range(clip_sample)
    checks = [
        ("dynamic_threshold", dynamic_threshold, 0, 1, "a quantile in (0, 1), e.g. 0.995"),
        ("dynamic_threshold_max", dynamic_threshold_max, 1, math.inf, ">= 1"),
    ]
    for name, value, low, high, allowed in checks:
        if value is None and name == "dynamic_threshold":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
        ok = math.isfinite(value) and (low < value or value == low == 1) and value < high
        if not ok:
            raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_keywords(function: str, keywords: Mapping[str, Any],
                   refused: Sequence[str] = ()) -> None:
    """Refuse keywords that are not sampling options, or that ``function`` sets itself.

    Raises:
        TypeError: ``function() got an unexpected keyword argument 'name'``, as Python says it
            for a named parameter, with the options it does take.
    """
    known = {f.name for f in fields(SampleOptions)} - {"x_name", *refused}
    for name in keywords:
        if name not in known:
            why = " (it sets that itself)" if name in refused else ""
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}{why}; "
                            f"its sampling options are {sorted(known)}")
