"""DDIM inversion: x0 -> x_T with the η=0 update run upwards, plain or solved implicitly.

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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..checks import check_choice, check_float, check_int
from ..maths.ddim_step import ddim_step
from ..maths.prediction import predict_x0_eps
from ..maths.schedule import NoiseSchedule
from ..sampling.model_contract import OutputProbe
from ..sampling.options import SampleOptions
from ..sampling.plan import Plan, make_plan
from ..sampling.sampler import progress_bar, without_autograd

METHODS = ("ddim", "fixed_point")


def invert(
    model: Any,
    x0: torch.Tensor,
    steps: int | None = None,
    *,
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
    """Deterministic DDIM encoding x0 -> x_T (see the module docstring).

    Args:
        model, steps, schedule, spacing, steps_offset, timesteps, final_alpha,
        prediction_type, class_labels, guidance_scale, model_kwargs, uncond_kwargs, progress:
        as in :func:`ddim.sample`; decode with the same values to reconstruct.
        x0: (B, ...) floating tensor in the model's data range.
        method: ``ddim`` (one model call per step) or ``fixed_point`` (implicit steps).
        max_iters: with ``fixed_point``, at most this many extra model calls per step (>= 1).
        tol: stop iterating a step once max_b |x⁺ - x| / |x| over the batch is below tol.
        anderson: Anderson-mixing depth (0: plain fixed-point iteration).

    Returns:
        x_T, x0's shape, in x0's dtype promoted to at least float32.

    Raises:
        TypeError / ValueError naming the parameter, before any model call;
        :class:`ddim.NonFiniteError` if the model returns NaN or inf.
    """
    check_choice("method", method, METHODS)
    max_iters = check_int("max_iters", max_iters, low=1)
    tol = check_float("tol", tol, low=0.0)
    anderson = check_int("anderson", anderson, low=0)
    options = SampleOptions(
        steps=steps, x_T=x0, schedule=schedule, spacing=spacing, steps_offset=steps_offset,
        timesteps=timesteps, final_alpha=final_alpha, prediction_type=prediction_type,
        class_labels=class_labels, guidance_scale=guidance_scale, model_kwargs=model_kwargs,
        uncond_kwargs=uncond_kwargs, progress=progress, x_name="x0")
    plan = make_plan(model, options)
    return without_autograd(lambda: _invert(plan, method, max_iters, tol, anderson))


def _invert(plan: Plan, method: str, max_iters: int, tol: float, anderson: int
            ) -> torch.Tensor:
    """The upward loop of :func:`invert` (under inference mode)."""
    table, ptype = plan.table, plan.prediction_type
    order = list(range(len(table.grid) - 1, -1, -1))
    probe = OutputProbe([table.grid[i] for i in order], plan.x.device, plan.x.dtype)
    x = plan.x

    def eps_at(y: torch.Tensor, i: int, j: int) -> torch.Tensor:
        out = plan.call(y, i)
        probe.record(j, out)
        if ptype == "epsilon":
            return out
        return predict_x0_eps(y, out.to(y.dtype), table.alpha_bar_t[i], ptype)[1]

    for j, i in enumerate(progress_bar(order, plan.options.progress, "inverting")):
        a_from, a_to = table.alpha_bar_prev[i], table.alpha_bar_t[i]

        def up(eps: torch.Tensor, x=x, a_from=a_from, a_to=a_to) -> torch.Tensor:
            return ddim_step(x, eps, a_from, a_to).prev_sample

        x_next = up(eps_at(x, i, j))
        if method == "fixed_point":
            x_next = solve_fixed_point(lambda y, i=i, j=j, up=up: up(eps_at(y, i, j)),
                                       x_next, max_iters, tol, anderson)
        x = x_next
    probe.check(x)
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
