"""The steppers: the update the sampling loop applies after each model call, one class each.

A stepper is made fresh for every run over a grid (a multistep solver carries its history in
it) from per-step coefficients computed once per setup in float64 (:mod:`ddim.sampling.plan`
memoises them). The loop calls ``stepper(i, x, out, details)`` with x_i and the model output at
(x_i, t_i), and gets a :class:`~ddim.maths.ddim_step.StepOutput`: x_{i+1}, and x̂0 and ε̂ when
``details`` is set (else None where computing them would cost extra kernels).

- :class:`DDIMStepper` runs DDIM's eq. 12 (any η, or σ̂) in its fused form x_prev = a_x·x_t +
  a_out·out + noise_scale·z: two kernels (three with noise). Steps that process x̂0 (clipping,
  thresholding) and the last step onto ᾱ = 1, which returns x̂0 itself, form x̂0 and go
  through :func:`ddim.maths.ddim_step.apply_step`.
- :class:`MultistepStepper` runs any multistep solver of the registry
  (:mod:`ddim.sampling.solvers`): it turns the model output into the data the solver
  extrapolates (x̂0 for DPM-Solver++ and UniPC, ε̂ for iPNDM; x̂0 processed first, with ε̂
  re-derived from it, as DPM-Solver++ thresholds x̂0), keeps the last ones, and applies the
  solver's pure update (and UniPC's corrector) from :mod:`ddim.maths`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ..maths.ddim_coefficients import DDIMCoefficients
from ..maths.ddim_step import StepOutput, apply_step
from ..maths.prediction import output_coefficients, predict_x0, predict_x0_eps, sqrt
from ..maths.thresholding import ClipSample, process_x0

Noise = Callable[[], torch.Tensor] | None


class X0Processing(NamedTuple):
    """How x̂0 is processed before a step uses it (:func:`ddim.maths.thresholding.process_x0`),
    and, for DDIM, whether ε̂ is re-derived from the processed x̂0."""

    clip_sample: ClipSample = None
    dynamic_threshold: float | None = None
    dynamic_threshold_max: float = 1.0
    rederive_eps: bool = False

    @property
    def active(self) -> bool:
        """Whether x̂0 is processed at all."""
        return self.clip_sample is not None or self.dynamic_threshold is not None

    def apply(self, pred_x0: torch.Tensor) -> torch.Tensor:
        """x̂0 processed (unchanged when nothing is asked)."""
        return process_x0(pred_x0, clip_sample=self.clip_sample,
                          dynamic_threshold=self.dynamic_threshold,
                          dynamic_threshold_max=self.dynamic_threshold_max)


class DDIMStepper:
    """DDIM's update (eq. 12) for one run: stateless apart from its noise source.

    Args:
        solver: the registry entry (unused: DDIM has one update).
        coefficients: per step, from :func:`ddim.maths.ddim_coefficients.ddim_coefficients`.
        alpha_bar_t: ᾱ of every grid point (floats).
        prediction_type: what the model predicts.
        x0: x̂0 processing (and ``rederive_eps``).
        noise: draws z ~ N(0, I) of x's shape; called only on steps with noise_scale > 0.
    """

    def __init__(self, solver: Any, coefficients: tuple[DDIMCoefficients, ...],
                 alpha_bar_t: tuple[float, ...], prediction_type: str, x0: X0Processing,
                 noise: Noise) -> None:
        self.coefficients, self.alpha_bar_t = coefficients, alpha_bar_t
        self.prediction_type, self.x0, self.noise = prediction_type, x0, noise

    def __call__(self, i: int, x: torch.Tensor, out: torch.Tensor,
                 details: bool) -> StepOutput:
        c = self.coefficients[i]
        z = self.noise() if c.noise_scale > 0 else None
        if not c.fused:
            return apply_step(x, out, self.alpha_bar_t[i], (c.c_x0, c.c_eps, c.noise_scale), z,
                              prediction_type=self.prediction_type, **self.x0._asdict())
        out = out if out.dtype == x.dtype else out.to(x.dtype)
        prev = x.mul(c.a_x).add_(out, alpha=c.a_out)  # eq. 12, x̂0 and ε̂ substituted
        if z is not None:
            prev.add_(z, alpha=c.noise_scale)
        if not details:
            return StepOutput(prev, None, None)
        pred_x0, pred_eps = predict_x0_eps(x, out, self.alpha_bar_t[i], self.prediction_type)
        return StepOutput(prev, pred_x0, pred_eps)


class MultistepStepper:
    """A multistep solver of the registry for one run over a grid (see the module docstring).

    Args:
        solver: the registry entry (:class:`ddim.sampling.solvers.Solver`): its ``update``,
            ``corrector``, ``max_order`` and ``data`` (``"x0"`` or ``"eps"``).
        coefficients: per step, from the entry's ``coefficients``.
        alpha_bar_t: ᾱ of every grid point (floats).
        prediction_type: what the model predicts.
        x0: x̂0 processing (``rederive_eps`` does not apply: with processing, ε̂ is always
            re-derived from the processed x̂0).
        noise: draws z ~ N(0, I) of x's shape; called only on steps with noise_scale > 0
            (the stochastic solver's).

    UniPC corrects x_i with x̂0_i, computed by the model at the uncorrected x_i (the next
    step's model call, as diffusers), then predicts x_{i+1} from the corrected x_i; the
    returned x_{i+1} is the predictor's (what diffusers' ``step`` returns).
    """

    def __init__(self, solver: Any, coefficients: tuple, alpha_bar_t: tuple[float, ...],
                 prediction_type: str, x0: X0Processing, noise: Noise) -> None:
        self.update, self.corrector = solver.update, solver.corrector
        self.keep, self.data = solver.max_order, solver.data
        self.coefficients, self.alpha_bar_t = coefficients, alpha_bar_t
        self.prediction_type, self.x0, self.noise = prediction_type, x0, noise
        # x̂0 = x0_x·x + x0_out·out and ε̂ = eps_x·x + eps_out·out per step, as floats
        self.linear = [output_coefficients(a, prediction_type) for a in alpha_bar_t]
        self._history: tuple[torch.Tensor, ...] = ()  # the solver's data, newest first
        self._x_prev: torch.Tensor | None = None
        self._next = 0

    def __call__(self, i: int, x: torch.Tensor, out: torch.Tensor,
                 details: bool) -> StepOutput:
        """x_{i+1} from x_i (float32/float64, (B, ...)) and the model output at (x_i, t_i)."""
        if i != self._next or i >= len(self.coefficients):
            raise ValueError(f"step index i must be {self._next} (steps run once, in order, "
                             f"i < {len(self.coefficients)}), got {i}")
        out = out if out.dtype == x.dtype else out.to(x.dtype)
        c, lin, a = self.coefficients[i], self.linear[i], self.alpha_bar_t[i]
        pred_x0 = pred_eps = None
        if self.data == "x0" or self.x0.active or details or (self.data == "eps"
                                                              and c.x0_weight):
            pred_x0 = predict_x0(x, out, a, self.prediction_type)
            if self.x0.active:
                pred_x0 = self.x0.apply(pred_x0)
        if self.data == "eps":  # with processing, the ε̂ of the processed x̂0
            pred_eps = (_eps_of(x, pred_x0, a) if self.x0.active
                        else _linear(x, out, lin.eps_x, lin.eps_out))
        elif details:  # the model's ε̂, as DDIM reports it
            pred_eps = _linear(x, out, lin.eps_x, lin.eps_out)
        data = pred_x0 if self.data == "x0" else pred_eps
        if self.corrector is not None and i > 0:
            x = self.corrector(self._x_prev, self._history, data, self.coefficients[i - 1])
        self._history = (data, *self._history[:self.keep - 1])
        z = None
        if c.noise_scale > 0:
            if self.noise is None:
                raise ValueError(f"step {i} draws noise but this stepper has no noise source")
            z = self.noise()
        x_next = self.update(x, self._history, c, z, pred_x0)
        self._x_prev = x if self.corrector is not None else None
        self._next = i + 1
        return StepOutput(x_next, pred_x0, pred_eps) if details else StepOutput(x_next, None,
                                                                                None)


def draws_noise(coefficients: tuple) -> bool:
    """Whether a run with these per-step coefficients draws any noise."""
    return any(c.noise_scale > 0 for c in coefficients)


def _linear(x: torch.Tensor, out: torch.Tensor, w_x: float, w_out: float) -> torch.Tensor:
    """w_x·x + w_out·out in the fewest kernels (none when it is ``out`` itself)."""
    if w_x == 0:
        return out if w_out == 1 else torch.mul(out, w_out)
    return torch.mul(out, w_out).add_(x, alpha=w_x)


def _eps_of(x: torch.Tensor, pred_x0: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """ε̂ = (x - sqrt(ᾱ)·x̂0)/sqrt(1-ᾱ) (eq. 9 solved for ε); 0 at a clean level ᾱ = 1."""
    if alpha_bar >= 1:
        return torch.zeros_like(x)
    return torch.add(x, pred_x0, alpha=-sqrt(alpha_bar)).div_(sqrt(1 - alpha_bar))
