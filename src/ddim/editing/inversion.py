"""DDIM inversion: x0 -> x_T, the deterministic decoder run upwards, plain, solved implicitly,
or with a multistep solver.

Decoder step i takes x at level ᾱ(t_i) down to ᾱ_prev with ε evaluated at (x_{t_i}, t_i).
Its exact inverse must find x_{t_i} from x_prev, but ε depends on the unknown x_{t_i}:

    x_t = sqrt(ᾱ_t/ᾱ_prev)·x_prev + (sqrt(1-ᾱ_t) - sqrt(ᾱ_t/ᾱ_prev)·sqrt(1-ᾱ_prev))·ε(x_t, t)

Plain DDIM inversion (``method="ddim"``) evaluates ε at x_prev instead, one model call per
step: the decoder later sees a slightly different ε, and reconstructions drift (what users of
diffusers' ``DDIMInverseScheduler`` report, its issues 5703 and 4654). ``method="fixed_point"``
solves the equation above by fixed-point iteration started from the plain step, accelerated
with Anderson mixing (``anderson`` past iterates), until the relative change is below ``tol``
or ``max_iters`` extra model calls are spent. When it converges, decoding with the same grid
undoes each step exactly. The model is always evaluated at the decoder's timestep t_i (not
the loop index: the bug of CompVis' SD2 ``encode``).

The step onto ᾱ = 0 (zero terminal SNR) cannot be written with ε: there ε̂(x_T) = x_T, so the
equation above is the identity. The decoder's first step is x_prev = sqrt(ᾱ_prev)·x̂0(x_T) +
sqrt(1-ᾱ_prev)·x_T, so its inverse is x_T = (x_prev - sqrt(ᾱ_prev)·x̂0(x_T))/sqrt(1-ᾱ_prev),
solved the same way (x̂0 evaluated at x_prev for the plain step).

With ``solver=`` a multistep solver of the registry that inverts (``dpmpp_2m``, ``dpmpp_3m``,
``dpmpp_3m_true``) the probability-flow ODE is solved upwards with that solver's own update on
the upward levels (h < 0 in log-SNR), the model evaluated at each point's own level, as
diffusers' ``DPMSolverMultistepInverseScheduler`` does; the first step (from the
clean sample, which has no timestep of its own) is plain DDIM's, the step onto ᾱ = 0 the one
above.

Each loop here is its own, not the sampler's: it runs the grid upwards, pairs each level with
the decoder's timestep one point above, and may solve each step implicitly.

A latent model (Rombach et al. 2022) inverts the images' latents: x0 is encoded first (the
posterior mean of an AutoencoderKL, the quantised code of a VQModel, times scaling_factor) and
the x_T returned is a latent, which :func:`ddim.sample` decodes back to an image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from ..checks import check_choice, check_float, check_int
from ..maths.ddim_step import ddim_step
from ..maths.prediction import predict_x0_eps
from ..maths.schedule import NoiseSchedule
from ..sampling.latents import encode_images, is_latent, model_space_shape
from ..sampling.model_contract import OutputProbe
from ..sampling.options import SampleOptions
from ..sampling.plan import Plan, make_plan
from ..sampling.sampler import progress_bar, without_autograd
from ..sampling.solvers import SOLVERS
from ..sampling.steppers import MultistepStepper, X0Processing
from .common import check_image

METHODS = ("ddim", "fixed_point")


def invert(
    model: Any,
    x0: torch.Tensor,
    steps: int | None = None,
    *,
    solver: str = "ddim",
    method: str = "ddim",
    max_iters: int = 5,
    tol: float = 1e-5,
    anderson: int = 2,
    schedule: NoiseSchedule | None = None,
    spacing: str | None = None,
    steps_offset: int | None = None,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    final_alpha: str = "one",
    prediction_type: str | None = None,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    model_kwargs: dict[str, torch.Tensor] | None = None,
    uncond_kwargs: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic encoding x0 -> x_T (see the module docstring).

    Args:
        model, steps, schedule, spacing, steps_offset, timesteps, final_alpha,
        prediction_type, class_labels, guidance_scale, model_kwargs, uncond_kwargs, progress:
        as in :func:`ddim.sample`; decode with the same values (and solver) to reconstruct.
        x0: (B, ...) floating tensor in the model's data range: images (B, C, H, W), which a
            latent model encodes first (its autoencoder must take their size).
        solver: ``ddim`` (default), ``dpmpp_2m``, ``dpmpp_3m`` or ``dpmpp_3m_true`` (the
            registry's solvers that invert stably: their update is run upwards; the others
            are refused, saying why).
        method: ``ddim`` (one model call per step) or ``fixed_point`` (implicit steps; with
            ``solver="ddim"`` only: a multistep update depends on points the inversion has not
            reached yet).
        max_iters: with ``fixed_point``, at most this many extra model calls per step (>= 1).
        tol: stop iterating a step once max_b |x⁺ - x| / |x| over the batch is below tol.
        anderson: Anderson-mixing depth (0: plain fixed-point iteration).

    Returns:
        x_T, x0's shape (a latent model's: its latents' shape), in x0's dtype promoted to at
        least float32.

    Raises:
        TypeError / ValueError naming the parameter, before any model call (among them a
        solver that does not invert, ``fixed_point`` with a multistep solver, and a grid
        whose first step goes from ᾱ = 0 straight to ᾱ = 1, which no x_T inverts);
        :class:`ddim.NonFiniteError` if the model returns NaN or inf.
    """
    check_choice("method", method, METHODS)
    max_iters = check_int("max_iters", max_iters, low=1)
    tol = check_float("tol", tol, low=0.0)
    anderson = check_int("anderson", anderson, low=0)
    latent = is_latent(model)
    start = x0  # a latent model's stands in for the latents until the options are checked
    if latent:
        x0 = check_image(x0, "x0")
        start = torch.zeros(model_space_shape(model, x0, "x0"), dtype=x0.dtype,
                            device=x0.device)
    options = SampleOptions(
        steps=steps, solver=solver, x_T=start, schedule=schedule, spacing=spacing,
        steps_offset=steps_offset, timesteps=timesteps, final_alpha=final_alpha,
        prediction_type=prediction_type, class_labels=class_labels,
        guidance_scale=guidance_scale, model_kwargs=model_kwargs, uncond_kwargs=uncond_kwargs,
        progress=progress, x_name="x0")
    entry = check_inversion(options.solver, method)
    plan = make_plan(model, options)
    table = plan.table
    if table.alpha_bar_t[0] == 0 and table.alpha_bar_prev[0] == 1:
        raise ValueError(f"this grid ({list(table.grid)}) steps from ᾱ = 0 (zero terminal "
                         "SNR) straight to ᾱ = 1, which cannot be inverted: x_T enters that "
                         "step only through x̂0(x_T); use more steps")
    if latent:
        plan = replace(plan, x=encode_images(model, x0).to(plan.x.dtype))
    run = _invert_ddim if entry.ddim_options else _invert_multistep
    return without_autograd(lambda: run(plan, method, max_iters, tol, anderson))


def check_inversion(solver: str, method: str = "ddim") -> Any:
    """The registry entry of ``solver``, if it inverts with ``method``.

    Raises:
        ValueError: an unknown solver or method; a solver that does not invert (saying why,
            and which do); ``fixed_point`` with a multistep solver.
    """
    check_choice("method", method, METHODS)
    entry = SOLVERS[check_choice("solver", solver, tuple(SOLVERS))]
    if entry.not_invertible is not None:
        usable = tuple(n for n, e in SOLVERS.items() if e.not_invertible is None)
        raise ValueError(f"solver={solver!r} cannot invert: {entry.not_invertible}; invert "
                         f"with one of {usable}")
    if method == "fixed_point" and not entry.ddim_options:
        raise ValueError(f"method='fixed_point' solves one step at a time, which a multistep "
                         f"update cannot (it depends on points further up the grid): use "
                         f"solver='ddim' with it, got solver={solver!r}")
    return entry


class _Calls:
    """The model along the upward loop, at the decoder's timestep t_i, as ε̂ (or x̂0 for the
    step onto ᾱ = 0); every output is recorded for the NaN check in the slot of its step (the
    last iteration's, for an implicit step)."""

    def __init__(self, plan: Plan) -> None:
        self.plan, self.table, self.ptype = plan, plan.table, plan.prediction_type
        grid = self.table.grid
        self.probe = OutputProbe(grid[::-1], plan.x.device, plan.x.dtype)
        self.slot = 0  # the loop's step: the probe slot of the next outputs

    def eps(self, y: torch.Tensor, i: int) -> torch.Tensor:
        out = self._call(y, i)
        if self.ptype == "epsilon":
            return out
        return predict_x0_eps(y, out.to(y.dtype), self.table.alpha_bar_t[i], self.ptype)[1]

    def x0(self, y: torch.Tensor, i: int) -> torch.Tensor:
        out = self._call(y, i)
        return predict_x0_eps(y, out.to(y.dtype), self.table.alpha_bar_t[i], self.ptype)[0]

    def _call(self, y: torch.Tensor, i: int) -> torch.Tensor:
        out = self.plan.call(y, i)
        self.probe.record(self.slot, out)
        return out


def _up(calls: _Calls, x: torch.Tensor, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The upward step i as a map of the point y where the model is evaluated: DDIM's step
    from ᾱ_prev(i) up to ᾱ(t_i) with ε̂(y), or onto ᾱ = 0 with x̂0(y)."""
    table = calls.table
    a_from, a_to = table.alpha_bar_prev[i], table.alpha_bar_t[i]
    if a_to == 0:
        return lambda y: (x - math.sqrt(a_from) * calls.x0(y, i)) / math.sqrt(1 - a_from)
    return lambda y: ddim_step(x, calls.eps(y, i), a_from, a_to).prev_sample


def _invert_ddim(plan: Plan, method: str, max_iters: int, tol: float, anderson: int
                 ) -> torch.Tensor:
    """The upward DDIM loop of :func:`invert` (under inference mode)."""
    S = len(plan.table.grid)
    calls = _Calls(plan)
    x = plan.x
    for i in progress_bar(range(S - 1, -1, -1), plan.options.progress, "inverting"):
        calls.slot = S - 1 - i
        up = _up(calls, x, i)
        x_next = up(x)
        if method == "fixed_point":
            x_next = solve_fixed_point(up, x_next, max_iters, tol, anderson)
        x = x_next
    calls.probe.check(x)
    return x


def _invert_multistep(plan: Plan, method: str, max_iters: int, tol: float, anderson: int
                      ) -> torch.Tensor:
    """The upward loop of :func:`invert` with a multistep solver (under inference mode): the
    ODE from level ᾱ(t_{i+1}) up to ᾱ(t_i) with the model at (x, t_{i+1}), x's own level."""
    table, S = plan.table, len(plan.table.grid)
    entry = SOLVERS[plan.options.solver]
    top = 1 if table.alpha_bar_t[0] == 0 else 0  # the step onto ᾱ = 0 is its own
    calls = _Calls(plan)
    x = _up(calls, plan.x, S - 1)(plan.x)  # from the clean sample: DDIM's step
    chain = [table.alpha_bar_t[i] for i in range(S - 1, top - 1, -1)]  # upwards, below 1
    stepper = None
    if len(chain) > 1:
        levels = torch.tensor(chain, dtype=torch.float64)
        coefficients = entry.coefficients(levels[:-1], levels[1:], upward=True, eta=0.0,
                                          sigma_hat=False, prediction_type="epsilon",
                                          fuse=False)
        stepper = MultistepStepper(entry, coefficients, tuple(chain[:-1]), "epsilon",
                                   X0Processing(), None)
    steps = progress_bar(range(S - 2, -1, -1), plan.options.progress, "inverting")
    for m, i in enumerate(steps):  # from the level of t_{i+1} up to that of t_i
        calls.slot = m + 1
        if i < top:  # onto ᾱ = 0, x̂0 at x's own level
            a = table.alpha_bar_t[i + 1]
            x = (x - math.sqrt(a) * calls.x0(x, i + 1)) / math.sqrt(1 - a)
        else:
            x = stepper(m, x, calls.eps(x, i + 1), False).prev_sample
    calls.probe.check(x)
    return x


def solve_fixed_point(g: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor,
                      max_iters: int, tol: float, anderson: int = 2) -> torch.Tensor:
    """Iterate y <- g(y) (each call one model evaluation), with Anderson mixing.

    Args:
        g: the map, (B, ...) -> (B, ...).
        y: the starting point (B, ...).
        max_iters: calls of g at most.
        tol: stop when max over the batch of |g(y) - y| / |y| is below tol (one host sync per
            iteration: iterations are few and each costs a model call).
        anderson: how many past iterates to mix (0: plain iteration). Per sample, the next
            point is g(y_k) - ΔG·γ with γ the least-squares fit of the residual changes ΔF to
            the current residual (Walker & Ni 2011), in float64.
    """
    shape, b = y.shape, y.shape[0]
    hist_g: list[torch.Tensor] = []
    hist_f: list[torch.Tensor] = []
    for _ in range(max_iters):
        gy = g(y)
        f = (gy - y).reshape(b, -1).double()
        if (f.norm(dim=1) / y.reshape(b, -1).double().norm(dim=1).clamp(min=1e-12)).max() < tol:
            return gy
        hist_g.append(gy.reshape(b, -1).double())
        hist_f.append(f)
        if anderson and len(hist_f) > 1:
            hist_g, hist_f = hist_g[-(anderson + 1):], hist_f[-(anderson + 1):]
            d_f = torch.stack([hist_f[k + 1] - hist_f[k] for k in range(len(hist_f) - 1)], -1)
            d_g = torch.stack([hist_g[k + 1] - hist_g[k] for k in range(len(hist_g) - 1)], -1)
            gamma = torch.linalg.lstsq(d_f, f[..., None]).solution  # (B, m, 1)
            y = (hist_g[-1] - (d_g @ gamma)[..., 0]).to(y.dtype).reshape(shape)
        else:
            y = gy
    return y
