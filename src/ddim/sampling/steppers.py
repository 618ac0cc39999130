"""Steppers: the update the sampler loop applies after each model call, one per solver.

:class:`DDIMStepper` runs DDIM (``solver="ddim"``); :class:`SolverStepper` runs the
multistep solvers of :mod:`ddim.maths.multistep` (DPM-Solver++(2M/3M), UniPC, 2M SDE) on the same
grid, prediction types and x̂0 processing.

A stepper is made fresh for every sampling call (a multistep solver carries its history in
it) from coefficients computed once per setup in float64 (:func:`ddim_coefficients`, memoised
by :mod:`ddim.sampling.plan`). The loop calls ``stepper(i, x, out, details)`` with x_i and the model
output at (x_i, t_i), and gets a :class:`~ddim.maths.ddim_step.StepOutput`: x_{i+1}, and x̂0 and ε̂
when ``details`` is set (else None where computing them would cost extra kernels).

DDIM (η >= 0, or σ̂) runs eq. 12 in its fused form x_prev = a_x·x_t + a_out·out + c_noise·z:
two kernels (three with noise), x̂0 and ε̂ substituted. Steps that process x̂0 (clipping,
thresholding) and the last step onto ᾱ = 1, which returns x̂0 itself, go through
:func:`ddim.maths.ddim_step.apply_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..maths.ddim_step import StepOutput, apply_step, fused_coefficients, step_coefficients
from ..maths.multistep import MultistepStepper, StepCoefficients
from ..maths.prediction import output_coefficients, predict_x0_eps
from ..maths.thresholding import process_x0

Noise = Callable[[], torch.Tensor] | None


class DDIMCoefficients(NamedTuple):
    """One DDIM step: eq. 12 as c_x0·x̂0 + c_eps·ε̂ + c_noise·z, and fused as a_x·x_t +
    a_out·out + c_noise·z (``fused`` False: the step goes through ``apply_step``)."""

    c_x0: float
    c_eps: float
    c_noise: float
    a_x: float
    a_out: float
    fused: bool


def ddim_coefficients(alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float,
                      sigma_hat: bool, prediction_type: str,
                      fuse: bool) -> tuple[DDIMCoefficients, ...]:
    """The coefficients of every step of a grid, from its float64 levels (shape (S,)).

    ``fuse`` is False when x̂0 is processed: then no step uses the fused form. The last step
    onto ᾱ_prev = 1 without noise returns x̂0 exactly and is never fused.
    """
    c = step_coefficients(alpha_bar_t, alpha_bar_prev, eta, sigma_hat=sigma_hat)
    a_x, a_out = fused_coefficients(alpha_bar_t, c, prediction_type)
    returns_x0 = (alpha_bar_prev == 1) & (c.c_noise == 0)  # x_prev = x̂0 exactly
    return tuple(DDIMCoefficients(*values, fuse and not last) for *values, last in zip(
        c.c_x0.tolist(), c.c_eps.tolist(), c.c_noise.tolist(), a_x.tolist(), a_out.tolist(),
        returns_x0.tolist(), strict=True))


class DDIMStepper:
    """DDIM's update (eq. 12) for one sampling call: stateless apart from its noise source.

    Args:
        coefficients: per step, from :func:`ddim_coefficients`.
        alpha_bar_t: ᾱ of every grid point (floats).
        prediction_type: what the model predicts.
        x0_options: the x̂0 processing keywords of :func:`ddim.maths.ddim_step.apply_step`
            (clip_sample, dynamic_threshold, dynamic_threshold_max, rederive_eps).
        noise: draws z ~ N(0, I) of x's shape; called only on steps with c_noise > 0.
    """

    def __init__(self, coefficients: tuple[DDIMCoefficients, ...],
                 alpha_bar_t: tuple[float, ...], prediction_type: str,
                 x0_options: dict, noise: Noise) -> None:
        self.coefficients, self.alpha_bar_t = coefficients, alpha_bar_t
        self.prediction_type, self.x0_options, self.noise = prediction_type, x0_options, noise

    def __call__(self, i: int, x: torch.Tensor, out: torch.Tensor,
                 details: bool) -> StepOutput:
        c = self.coefficients[i]
        z = self.noise() if c.c_noise > 0 else None
        if not c.fused:
            return apply_step(x, out, self.alpha_bar_t[i], (c.c_x0, c.c_eps, c.c_noise), z,
                              prediction_type=self.prediction_type, **self.x0_options)
        out = out if out.dtype == x.dtype else out.to(x.dtype)
        prev = x.mul(c.a_x).add_(out, alpha=c.a_out)  # eq. 12, x̂0 and ε̂ substituted
        if z is not None:
            prev.add_(z, alpha=c.c_noise)
        if not details:
            return StepOutput(prev, None, None)
        pred_x0, pred_eps = predict_x0_eps(x, out, self.alpha_bar_t[i], self.prediction_type)
        return StepOutput(prev, pred_x0, pred_eps)


class SolverStepper:
    """A multistep solver (:mod:`ddim.maths.multistep`) for one sampling call.

    Each step turns the model output into the data prediction x̂0 (processed: clipped or
    thresholded, as DPM-Solver++ applies thresholding to x̂0) and hands it to the solver's
    :class:`~ddim.maths.multistep.MultistepStepper`, which carries the history of past x̂0s.

    Args:
        coefficients: per step, from :func:`ddim.maths.multistep.solver_coefficients`.
        alpha_bar_t: ᾱ of every grid point (floats).
        prediction_type: what the model predicts.
        x0_options: ``clip_sample``, ``dynamic_threshold``, ``dynamic_threshold_max``.
        noise: draws z ~ N(0, I) of x's shape (the SDE solver only).
    """

    def __init__(self, coefficients: tuple[StepCoefficients, ...],
                 alpha_bar_t: tuple[float, ...], prediction_type: str, x0_options: dict,
                 noise: Noise) -> None:
        self.solver = MultistepStepper(coefficients, noise)
        self.alpha_bar_t, self.prediction_type = alpha_bar_t, prediction_type
        self.x0_options = x0_options
        self.processed = any(v is not None for v in x0_options.values())
        # x̂0 = x0_x·x + x0_out·out per step (eq. 9 and its kin), as Python floats
        self.x0_of = [output_coefficients(a, prediction_type)[:2] for a in alpha_bar_t]

    def __call__(self, i: int, x: torch.Tensor, out: torch.Tensor,
                 details: bool) -> StepOutput:
        out = out if out.dtype == x.dtype else out.to(x.dtype)
        x0_x, x0_out = self.x0_of[i]
        pred_x0 = torch.mul(out, x0_out) if x0_x == 0 else torch.mul(out, x0_out).add_(
            x, alpha=x0_x)
        if self.processed:
            pred_x0 = process_x0(pred_x0, **self.x0_options)
        x_next = self.solver(i, x, pred_x0)
        if not details:
            return StepOutput(x_next, None, None)
        return StepOutput(x_next, pred_x0,
                          predict_x0_eps(x, out, self.alpha_bar_t[i], self.prediction_type)[1])


def draws_noise(coefficients: tuple) -> bool:
    """Whether a run with these per-step coefficients draws any noise."""
    return any(getattr(c, "c_noise", 0) > 0 or getattr(c, "noise_scale", 0) > 0
               for c in coefficients)
