"""diffusers' multistep schedulers running in float64, for tests of formula agreement.

diffusers keeps its noise levels in float32 and ``DPMSolverMultistepScheduler.step`` casts the
sample to float32, so that, compared with it as it is, a float64 formula agrees to ~1e-7 at
best, and a float32 network amplifies the rest differently on each CPU. :func:`float64_levels`
gives a scheduler after ``set_timesteps`` the float64 levels of the same schedule, and
:func:`float64_step` its ``step`` without the casts (the source of diffusers' own method, with
those lines changed): then both sides compute the same formulas in float64.
"""

import inspect
import sys
import textwrap
import types

import torch

_CASTS = {  # the casts of DPMSolverMultistepScheduler.step, and what they become
    "sample = sample.to(torch.float32)": "pass",
    "noise = variance_noise.to(device=model_output.device, dtype=torch.float32)":
        "noise = variance_noise.to(device=model_output.device, dtype=sample.dtype)",
}


def float64_levels(sched, alphas_cumprod: torch.Tensor) -> None:
    """Replace ``sched.sigmas`` (after ``set_timesteps``) by float64 values of the same
    schedule: σ = sqrt((1-ᾱ)/ᾱ) at its timesteps, then its final σ (0, or σ at t = 0)."""
    a = alphas_cumprod.double()
    sigmas = ((1 - a[sched.timesteps]) / a[sched.timesteps]).sqrt()
    last = 0.0 if sched.config.final_sigmas_type == "zero" else float(((1 - a[0]) / a[0]).sqrt())
    sched.sigmas = torch.cat([sigmas, torch.tensor([last], dtype=torch.float64)])


def float64_step(sched) -> None:
    """Give ``sched`` a ``step`` that keeps the sample's dtype: diffusers' own source with its
    float32 casts of the sample and of ``variance_noise`` removed (a no-op where there are no
    such casts). An SDE step then takes its noise as ``variance_noise`` (draw it in float32
    and cast it up, as ddim's noise source does)."""
    method = type(sched).step
    source = textwrap.dedent(inspect.getsource(method))
    found = [old for old in _CASTS if old in source]
    if not found:
        return
    for old in found:
        source = source.replace(old, _CASTS[old])
    namespace = dict(vars(sys.modules[method.__module__]))
    exec(compile(source, f"<float64 {method.__qualname__}>", "exec"), namespace)
    sched.step = types.MethodType(namespace["step"], sched)
