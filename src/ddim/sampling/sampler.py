"""The sampler: ``sample_iter`` yields every step, ``sample`` drains it.

The arguments become one validated :class:`~ddim.sampling.options.SampleOptions`, the options and
the model one :class:`~ddim.sampling.plan.Plan` (grid, per-step coefficients, x_T, conditioning);
the loop then only calls the model, records a NaN probe of its output on the device, and hands the
output to the plan's stepper (DDIM's eq. 12, :mod:`ddim.sampling.steppers`). It never synchronises
with the device: the probes are checked once, at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..maths.schedule import NoiseSchedule
from ..maths.thresholding import ClipSample
from .latents import check_decode, decode_samples
from .model_contract import OutputProbe
from .noise import Generators
from .options import Callback, SampleOptions
from .plan import Plan, make_plan


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


def sample(
    model: Any,
    steps: int | None = None,
    eta: float = 0.0,
    *,
    solver: str = "ddim",
    x_T: torch.Tensor | None = None,
    shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    schedule: NoiseSchedule | None = None,
    spacing: str | None = None,
    steps_offset: int | None = None,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    final_alpha: str = "one",
    sigma_hat: bool = False,
    generator: Generators = None,
    prediction_type: str | None = None,
    clip_sample: ClipSample = None,
    dynamic_threshold: float | None = None,
    dynamic_threshold_max: float = 1.0,
    rederive_eps: bool = False,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    model_kwargs: Mapping[str, torch.Tensor] | None = None,
    uncond_kwargs: Mapping[str, torch.Tensor] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    max_batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    decode: bool | None = None,
) -> torch.Tensor:
    """Generate samples with DDIM (Song, Meng & Ermon 2021).

    Args:
        model: ``model(x, t) -> Tensor`` with x (B, C, ...) and t int64 (B,) on x's device; a
            diffusers ``UNet2DModel``; a learned-variance model (2C outputs: first C used); or a
            bundle from :func:`ddim.load_pretrained` (which supplies schedule, shape and
            prediction type).
        steps: S, the number of model calls, an integer in [1, T] (default 50). With
            ``timesteps`` it must be None or equal to their number.
        eta: η >= 0. 0 is deterministic DDIM (no random numbers drawn), 1 is DDPM-like.
        solver: the update applied after each model call, a name of the registry
            :data:`ddim.sampling.solvers.SOLVERS`: ``ddim`` (default: the paper's eq. 12, any
            η), ``dpmpp_2m``, ``dpmpp_3m`` (as diffusers: second order) and ``dpmpp_3m_true``
            (third order) (DPM-Solver++ multistep, Lu et al. 2022), ``unipc`` (UniPC-bh2,
            order 2, Zhao et al. 2023), ``ipndm`` and ``ipndm_v`` (fourth-order
            Adams–Bashforth on ε, Zhang & Chen 2023) or ``dpmpp_2m_sde`` (stochastic
            DPM-Solver++(2M): draws noise from ``generator`` like η > 0). DDIM with η=0 is
            their first-order case; at 4-20 model calls the multistep solvers reach DDIM's
            quality with fewer calls. η, ``sigma_hat`` and ``rederive_eps`` are DDIM's only.
        x_T: initial noise (B, ...), a floating tensor; sets device, dtype and shape.
        shape: the full shape (B, C, H, W) to draw x_T with, when x_T is not given.
        batch_size: B when neither x_T nor shape is given (shape from the model; default 1).
        schedule: a :class:`NoiseSchedule`; default the model bundle's, else the DDPM linear
            schedule (T=1000, β 1e-4..0.02) that the ``google/ddpm-*`` checkpoints use.
        spacing: where the S steps go (:mod:`ddim.maths.spacings`): in time ``trailing``
            (default: starts at T-1, from pure noise, for every S), ``leading`` (the paper's
            uniform grid i·T/S: 10 steps start at t=900, 1 step at t=0), ``linspace``,
            ``quad`` (the paper's CIFAR10 grid) or ``time_quadratic``; in the noise level
            ``karras``, ``kl_optimal`` or ``log_snr``; ``calibrated``: the grid fitted to this
            model, solver and S by :func:`ddim.calibrate_timesteps` (read from the model
            folder's ``calibration.json``; a bundle without one for them raises
            ``CalibrationError`` naming what is missing).
        steps_offset: shift of the ``leading`` grid (diffusers' ``steps_offset``; default 0).
        timesteps: an explicit strictly decreasing grid (a 1-D integer list, tuple, numpy
            array or tensor), used as given, instead of spacing/steps_offset (giving those
            too is refused).
        final_alpha: ᾱ after the last grid point: ``one`` (default, returns x̂0) or ``first``
            (ᾱ_0, as diffusers' ``set_alpha_to_one=False`` and CompVis).
        sigma_hat: use the paper's σ̂ noise (DDPM's larger variance); ``eta`` is then unused.
        generator: a ``torch.Generator`` (CPU ones give identical results on CUDA) or a list of
            B generators, one per sample (results then independent of the batch).
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction`` (default: the bundle's,
            else ``epsilon``).
        clip_sample: clip x̂0 (off by default, as in the paper): True clips to the model's
            data range (a bundle's ``data_range``, else [-1, 1]), a number c to [-c, c], a
            pair (lo, hi) to that range.
        dynamic_threshold, dynamic_threshold_max: Imagen's dynamic thresholding of x̂0.
        rederive_eps: recompute ε̂ from the processed x̂0 (diffusers' use_clipped_model_output).
        class_labels: int64 (B,) labels (or one int) for a class-conditional model.
        guidance_scale: classifier-free guidance weight w >= 0 (1: conditional, 0:
            unconditional; one batched forward for both halves). See :mod:`ddim.sampling.guidance`.
        model_kwargs, uncond_kwargs: conditioning tensors (batch first) passed to the model as
            keywords, e.g. ``encoder_hidden_states``; ``uncond_kwargs`` is the unconditional
            half for guidance.
        callback: called as ``callback(i, t, x, pred_x0)`` after step i, x being the new sample
            (inference tensors: copy them, ``x.clone()``, to use them in autograd later).
        progress: show a tqdm progress bar.
        max_batch_size: run the batch in chunks of at most this many samples (bounded
            memory). x_T is drawn for the whole batch first; with a list of per-sample
            generators the result is identical to one big batch, with a single generator it is
            reproducible but the step noise is drawn chunk after chunk. ``callback`` then sees
            each chunk's samples.
        device, dtype: where and in which dtype (>= float32 precision) to keep the sample when
            x_T is not given (default: the model's device, float32). The model runs in its own
            dtype; only its input and output are cast.
        decode: for a latent model (a bundle with an autoencoder, :mod:`ddim.sampling.latents`;
            x_T, shape and the loop are in latent space): None (default) or True decodes the
            final latents to images after the loop (in chunks of ``max_batch_size``), False
            returns the latents. True for a model without an autoencoder is refused.

    Returns:
        x_0 of shape (B, ...), in the model's data range (e.g. [-1, 1] for images); for a
        latent model the decoded images (B, *image_shape), or the latents with decode=False.

    Raises:
        TypeError / ValueError naming the parameter for invalid arguments, before any model
        call; :class:`NonFiniteError` if the model returns NaN or inf.
    """
    options = SampleOptions(
        steps=steps, eta=eta, solver=solver, x_T=x_T, shape=shape,
        batch_size=batch_size, schedule=schedule, spacing=spacing, steps_offset=steps_offset,
        timesteps=timesteps, final_alpha=final_alpha, sigma_hat=sigma_hat, generator=generator,
        prediction_type=prediction_type, clip_sample=clip_sample,
        dynamic_threshold=dynamic_threshold, dynamic_threshold_max=dynamic_threshold_max,
        rederive_eps=rederive_eps, class_labels=class_labels, guidance_scale=guidance_scale,
        model_kwargs=model_kwargs, uncond_kwargs=uncond_kwargs, callback=callback,
        progress=progress, max_batch_size=max_batch_size, device=device, dtype=dtype)
    plan, decoding = make_plan(model, options), check_decode(model, decode)
    x = run(plan)
    return decode_samples(model, x, max_batch_size) if decoding else x


def sample_iter(
    model: Any,
    steps: int | None = None,
    eta: float = 0.0,
    *,
    solver: str = "ddim",
    x_T: torch.Tensor | None = None,
    shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    schedule: NoiseSchedule | None = None,
    spacing: str | None = None,
    steps_offset: int | None = None,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    final_alpha: str = "one",
    sigma_hat: bool = False,
    generator: Generators = None,
    prediction_type: str | None = None,
    clip_sample: ClipSample = None,
    dynamic_threshold: float | None = None,
    dynamic_threshold_max: float = 1.0,
    rederive_eps: bool = False,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    model_kwargs: Mapping[str, torch.Tensor] | None = None,
    uncond_kwargs: Mapping[str, torch.Tensor] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[SampleStep]:
    """Run the sampler step by step, yielding a :class:`SampleStep` after each model call.

    The arguments are those of :func:`sample` (but ``max_batch_size`` and ``decode``: for a
    latent model every step is in latent space; ``model.decode`` turns the last sample into
    images), validated when this is called, not when iteration starts. After its last step
    the iterator raises :class:`NonFiniteError` if the model returned NaN or inf at any step,
    naming the first.
    """
    options = SampleOptions(
        steps=steps, eta=eta, solver=solver, x_T=x_T, shape=shape,
        batch_size=batch_size, schedule=schedule, spacing=spacing, steps_offset=steps_offset,
        timesteps=timesteps, final_alpha=final_alpha, sigma_hat=sigma_hat, generator=generator,
        prediction_type=prediction_type, clip_sample=clip_sample,
        dynamic_threshold=dynamic_threshold, dynamic_threshold_max=dynamic_threshold_max,
        rederive_eps=rederive_eps, class_labels=class_labels, guidance_scale=guidance_scale,
        model_kwargs=model_kwargs, uncond_kwargs=uncond_kwargs, callback=callback,
        progress=progress, device=device, dtype=dtype)
    return loop(make_plan(model, options), details=True)


def run(plan: Plan) -> torch.Tensor:
    """The final sample of ``plan``, in chunks of ``max_batch_size`` rows if it is set.

    A model accelerated with ``graph_loop`` runs the whole plan as one CUDA graph
    (:mod:`ddim.acceleration.graph_loop`). The whole run is one ``torch.inference_mode()`` block (no
    autograd bookkeeping at all: the plain call costs what a caller's own inference_mode
    would), and the result is handed
    back as an ordinary tensor, usable anywhere, autograd included (one copy; none when the
    caller is in inference mode already). x̂0 and ε̂ are not computed unless a callback looks
    at them (the fused step skips them).
    """
    details = plan.options.callback is not None
    network = getattr(plan.model, "model", plan.model)
    graphs = getattr(network, "loop_graphs", None)  # ddim.accelerate(..., "graph_loop")

    def whole(part: Plan) -> torch.Tensor:
        x = graphs.run(part) if graphs is not None else None
        return x if x is not None else _last(loop(part, details, guard=False))

    k = plan.options.max_batch_size
    if k is None or k >= plan.x.shape[0]:
        return without_autograd(lambda: whole(plan))
    return without_autograd(lambda: torch.cat([whole(plan.rows(slice(lo, lo + k)))
                                               for lo in range(0, plan.x.shape[0], k)]))


def without_autograd(compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` run under ``torch.inference_mode()``, its result handed back as an
    ordinary tensor (one copy; none when the caller is in inference mode already)."""
    with torch.inference_mode():
        x = compute()
    return x if torch.is_inference_mode_enabled() else x.clone()


def loop(plan: Plan, details: bool, guard: bool = True, *, stepper: Any = None,
         probe: OutputProbe | None = None, check: bool = True) -> Iterator[SampleStep]:
    """The sampling loop over ``plan``'s grid, from ``plan.x``: the one loop of the library
    (the whole-loop CUDA graph captures it too; inversion and inpainting have their own, see
    their modules). ``details=False`` leaves pred_x0/pred_eps None where the fused step skips
    them (the samples are the same either way).

    With ``guard`` each step runs under ``torch.no_grad()`` (sampling builds no graph),
    entered per step so that the caller's grad mode never leaks across a ``yield``; without,
    the caller has switched autograd off itself (:func:`run`). ``stepper`` and ``probe``
    replace the plan's own (a graph draws its noise ahead and keeps its probes in static
    buffers); ``check=False`` leaves the probes unchecked (a graph checks them after its
    replay: checking is a host sync).
    """
    x, grid, callback = plan.x, plan.grid, plan.options.callback
    stepper = plan.stepper() if stepper is None else stepper
    probe = OutputProbe(grid, x.device, x.dtype) if probe is None else probe
    no_grad = torch.no_grad if guard else contextlib.nullcontext
    for i in progress_bar(range(len(grid)), plan.options.progress, "sampling"):
        with no_grad():
            out = plan.call(x, i)
            probe.record(i, out)
            x, pred_x0, pred_eps = stepper(i, x, out, details)
        if callback is not None:
            callback(i, grid[i], x, pred_x0)
        yield SampleStep(i, grid[i], x, pred_x0, pred_eps)
    if check:
        probe.check(x)


def progress_bar(it: Sequence[int], enabled: bool, desc: str) -> Sequence[int]:
    """``it`` wrapped in a tqdm bar when ``enabled`` (tqdm is imported only then)."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit="step")


def _last(steps: Iterator[SampleStep]) -> torch.Tensor:
    x = None
    for out in steps:
        x = out.sample
    return x
