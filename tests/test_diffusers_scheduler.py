"""ddim.DiffusersScheduler: diffusers pipelines (DDIMPipeline, DDPMPipeline, LDMPipeline, and
Stable Diffusion's loop) sample with ddim's solvers and grids and give what ddim.sample gives
with the same solver, grid and noise (float64 on both sides: bit for bit, measured 0); the
img2img protocol (set_begin_index, add_noise); and the calls it refuses.
"""

import functools
import inspect
import re

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, LDMPipeline
from diffusers.pipelines.deprecated.latent_diffusion_uncond import (
    pipeline_latent_diffusion_uncond as ldm_module,
)

import ddim
from ddim.maths.grids import timesteps as grid_of

F64 = torch.float64
SOLVERS = [("ddim", 0.0), ("ddim", 1.0), ("dpmpp_2m", 0.0), ("unipc", 0.0)]


pytestmark = pytest.mark.usefixtures("quiet_diffusers")


@pytest.fixture
def unet64(tiny_unet):
    import copy

    return copy.deepcopy(tiny_unet).to(F64)


def _recording(scheduler):
    """Record every prev_sample the pipeline gets from ``scheduler.step`` (the signature stays
    the step's own: pipelines read it to decide whether to pass eta and generator)."""
    seen, step = [], scheduler.step

    @functools.wraps(step)
    def recorded(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.append((out.prev_sample if kwargs.get("return_dict", True) else out[0]).clone())
        return out

    scheduler.step = recorded
    return seen


def _ours(model, steps, x_T, generator, solver, eta, **kw):
    """ddim.sample_iter's trajectory and final sample."""
    return [s.sample for s in ddim.sample_iter(model, steps, eta, solver=solver, x_T=x_T,
                                               generator=generator, **kw)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# ------------------------------------------------------------------ inside the pipelines
@pytest.mark.parametrize("solver, eta", SOLVERS)
@pytest.mark.parametrize("spacing", [None, "leading"])
def test_inside_ddim_pipeline(unet64, solver, eta, spacing):
    """DDIMPipeline draws x_T from the generator (float64: the UNet's dtype) and passes the
    same generator to every step; ddim.sample from that x_T with the generator where the
    pipeline left it gives the same trajectory, bit for bit."""
    pipe = DDIMPipeline(unet=unet64, scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = ddim.DiffusersScheduler.from_config(pipe.scheduler.config, solver=solver,
                                                         spacing=spacing)
    seen = _recording(pipe.scheduler)
    pipe(batch_size=3, num_inference_steps=8, eta=eta, output_type="np",
         generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn((3, 1, 8, 8), generator=g, dtype=F64)
    _same(seen, _ours(unet64, 8, x_T, g, solver, eta, spacing=spacing))


def test_inside_ddim_pipeline_on_an_explicit_grid(unet64):
    """from_config(timesteps=...): the pipeline is called with their number of steps."""
    grid = [999, 700, 400, 150, 20]
    pipe = DDIMPipeline(unet=unet64, scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = ddim.DiffusersScheduler.from_config(pipe.scheduler.config,
                                                         solver="unipc", timesteps=grid)
    seen = _recording(pipe.scheduler)
    pipe(batch_size=2, num_inference_steps=5, output_type="np",
         generator=torch.Generator().manual_seed(4))
    assert pipe.scheduler.timesteps.tolist() == grid
    x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(4), dtype=F64)
    _same(seen, _ours(unet64, None, x_T, None, "unipc", 0.0, timesteps=grid))


def test_inside_ddpm_pipeline_with_eta_from_config(unet64):
    """DDPMPipeline passes no eta to step: the scheduler's own (from_config) applies, and the
    pipeline's generator draws the step noise."""
    pipe = DDPMPipeline(unet=unet64, scheduler=DDPMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = ddim.DiffusersScheduler.from_config(pipe.scheduler.config, eta=1.0)
    seen = _recording(pipe.scheduler)
    pipe(batch_size=2, num_inference_steps=6, output_type="np",
         generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn((2, 1, 8, 8), generator=g, dtype=F64)
    _same(seen, _ours(unet64, 6, x_T, g, "ddim", 1.0))


@pytest.mark.parametrize("solver, eta", [s for s in SOLVERS if s[1] == 0])
def test_inside_ldm_pipeline(ldm_folder, monkeypatch, solver, eta):
    """LDMPipeline with the scheduler: the latents of every step and the decoded images equal
    ddim.sample's on the bundle of the same folder (float64)."""
    bundle = ddim.load_pretrained(ldm_folder, torch_dtype=F64)
    real = ldm_module.randn_tensor  # LDMPipeline draws in float32 whatever the UNet's dtype
    monkeypatch.setattr(ldm_module, "randn_tensor", lambda *a, **k: real(*a, **k, dtype=F64))
    decoded = {}
    decode = bundle.autoencoder.decode

    def recording(h, *args, **kwargs):
        out = decode(h, *args, **kwargs)
        decoded["images"] = out.sample
        return out

    monkeypatch.setattr(bundle.autoencoder, "decode", recording)
    pipe = LDMPipeline(vqvae=bundle.autoencoder, unet=bundle.model,
                       scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = ddim.DiffusersScheduler.from_config(pipe.scheduler.config, solver=solver)
    seen = _recording(pipe.scheduler)
    pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(3),
         output_type="np")
    monkeypatch.setattr(bundle.autoencoder, "decode", decode)
    z = torch.randn((2, 2, 8, 8), generator=torch.Generator().manual_seed(3), dtype=F64)
    _same(seen, _ours(bundle, 6, z, None, solver, eta))
    torch.testing.assert_close(decoded["images"], ddim.sample(bundle, 6, solver=solver, x_T=z),
                               rtol=0, atol=0)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "unipc"])
def test_a_stable_diffusion_loop(sd_folder, solver):
    """StableDiffusionPipeline's calls, written out (it needs transformers, which the test
    machines lack): set_timesteps(S, device=...), init_noise_sigma, scale_model_input, the
    guided UNet on [uncond, cond], step(..., **extra_step_kwargs, return_dict=False)[0] with
    eta and generator passed because step's signature has them. Equal to ddim.sample with
    model_kwargs/uncond_kwargs and guidance_scale (float64; measured 0: bit for bit)."""
    bundle = ddim.load_pretrained(sd_folder, torch_dtype=F64)
    g = torch.Generator().manual_seed(0)
    cond, uncond = (torch.randn((2, 5, 12), generator=g, dtype=F64) for _ in range(2))
    z, w = torch.randn((2, 4, 8, 8), generator=g, dtype=F64), 5.0
    config = (sd_folder / "scheduler" / "scheduler_config.json").read_text()
    sched = ddim.DiffusersScheduler.from_config(eval_json(config), solver=solver)
    params = set(inspect.signature(sched.step).parameters)
    extra = {k: v for k, v in (("eta", 0.0), ("generator", g)) if k in params}
    assert set(extra) == {"eta", "generator"}
    sched.set_timesteps(7, device="cpu")
    latents = z * sched.init_noise_sigma
    num_warmup_steps = len(sched.timesteps) - 7 * sched.order
    assert num_warmup_steps == 0
    with torch.inference_mode():
        for t in sched.timesteps:
            both = sched.scale_model_input(torch.cat([latents] * 2), t)
            out = bundle.model(both, t, encoder_hidden_states=torch.cat([uncond, cond]),
                               return_dict=False)[0]
            out_u, out_c = out.chunk(2)
            latents = sched.step(out_u + w * (out_c - out_u), t, latents, **extra,
                                 return_dict=False)[0]
    ours = ddim.sample(bundle, 7, solver=solver, x_T=z, decode=False, guidance_scale=w,
                       model_kwargs={"encoder_hidden_states": cond},
                       uncond_kwargs={"encoder_hidden_states": uncond})
    torch.testing.assert_close(latents, ours, rtol=0, atol=1e-12 * ours.abs().max().item())


def eval_json(text):
    import json

    return json.loads(text)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("begin", [True, False])
def test_an_img2img_run_from_the_middle_of_the_grid(unet64, solver, begin):
    """What diffusers' img2img pipelines do: timesteps[t_start:], set_begin_index(t_start),
    add_noise at the first of them, then step. The run is the solver on that tail of the
    grid (a multistep solver warms up again): ddim.sample on those timesteps from the same
    noised image. Without set_begin_index the first step's timestep says where it starts."""
    sched = ddim.DiffusersScheduler.from_config(DDIMScheduler().config, solver=solver)
    sched.set_timesteps(10)
    t_start = 4
    timesteps = sched.timesteps[t_start * sched.order:]
    if begin:
        sched.set_begin_index(t_start)
        assert sched.begin_index == t_start
    g = torch.Generator().manual_seed(2)
    x0, noise = (torch.randn((2, 1, 8, 8), generator=g, dtype=F64) for _ in range(2))
    x = sched.add_noise(x0, noise, timesteps[:1].repeat(2))
    x_t, seen = x.clone(), []
    for t in timesteps:
        assert sched.step_index in (None, t_start + len(seen))
        x = sched.step(unet64(x, t).sample, t, x).prev_sample
        seen.append(x)
    _same(seen, _ours(unet64, None, x_t, None, solver, 0.0, timesteps=timesteps))


def test_add_noise_is_the_forward_process():
    """sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε with ᾱ in float64, per-sample timesteps; diffusers'
    DDIMScheduler.add_noise (ᾱ in float32) agrees to 1.2e-6 (at t = 999, where float32's
    sqrt(ᾱ) is least precise)."""
    config = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                           beta_end=0.012).config
    sched = ddim.DiffusersScheduler.from_config(config)
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn((3, 4, 2, 2), generator=g, dtype=F64) for _ in range(2))
    t = torch.tensor([0, 500, 999])
    a = ddim.NoiseSchedule.from_diffusers(config).alphas_cumprod[t].reshape(3, 1, 1, 1)
    torch.testing.assert_close(sched.add_noise(x0, eps, t), a.sqrt() * x0 + (1 - a).sqrt() * eps,
                               rtol=0, atol=1e-15)
    one = sched.add_noise(x0, eps, 500)
    torch.testing.assert_close(one[1], sched.add_noise(x0, eps, t)[1], rtol=0, atol=0)
    ref = DDIMScheduler.from_config(config).add_noise(x0.float(), eps.float(), t)
    torch.testing.assert_close(sched.add_noise(x0.float(), eps.float(), t), ref, rtol=0,
                               atol=2e-6)


# ------------------------------------------------------------------ the protocol
def test_what_pipelines_read():
    config = DDIMScheduler(prediction_type="v_prediction", beta_end=0.03).config
    sched = ddim.DiffusersScheduler.from_config(config, solver="dpmpp_2m", spacing="karras")
    assert sched.order == 1 and sched.init_noise_sigma == 1.0 and len(sched) == 1000
    assert sched.config.num_train_timesteps == 1000 and sched.config["prediction_type"] == (
        "v_prediction")
    assert sched.timesteps is None and sched.step_index is None
    sched.set_timesteps(5, device="cpu")
    schedule = ddim.NoiseSchedule.from_diffusers(config)
    assert sched.timesteps.dtype == torch.int64 and sched.num_inference_steps == 5
    assert sched.timesteps.tolist() == grid_of(schedule, 5, "karras").tolist()
    torch.testing.assert_close(sched.alphas_cumprod, schedule.alphas_cumprod, rtol=0, atol=0)
    x = torch.randn(1, 1, 2, 2)
    assert sched.scale_model_input(x, 3) is x
    assert repr(sched).startswith("DiffusersScheduler(solver='dpmpp_2m', spacing='karras', "
                                  "eta=0, final_alpha='one', prediction_type='v_prediction'")
    with pytest.raises(ValueError, match=re.escape(
            "spacing='karras' has no effect with explicit timesteps")):
        sched.set_timesteps(timesteps=[900, 500, 100])
    sched = ddim.DiffusersScheduler.from_config(config)
    sched.set_timesteps(timesteps=[900, 500, 100])  # retrieve_timesteps' custom grid
    assert sched.timesteps.tolist() == [900, 500, 100] and sched.num_inference_steps == 3
    from_object = ddim.DiffusersScheduler.from_config(DDIMScheduler(), timesteps=[999, 1])
    from_object.set_timesteps()
    assert from_object.timesteps.tolist() == [999, 1]


def test_the_step_keeps_the_samples_dtype():
    """A half-precision pipeline hands float16 samples: the step runs in float32 and returns
    float16, x̂0 included."""
    sched = ddim.DiffusersScheduler.from_config(DDIMScheduler().config, solver="dpmpp_2m")
    sched.set_timesteps(3)
    x = torch.randn(2, 1, 4, 4).half()
    for t in sched.timesteps:
        out = sched.step(0.1 * x, t, x)
        assert out.prev_sample.dtype == out.pred_original_sample.dtype == torch.float16
        x = out.prev_sample
    assert torch.isfinite(x).all()


def test_learned_variance_outputs_use_their_first_channels():
    sched = ddim.DiffusersScheduler.from_config(DDPMScheduler().config)
    sched.set_timesteps(2)
    x, eps = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    a = sched.step(torch.cat([eps, torch.randn_like(eps)], 1), 999, x).prev_sample
    sched.set_timesteps(2)
    torch.testing.assert_close(a, sched.step(eps, 999, x).prev_sample, rtol=0, atol=0)


# ------------------------------------------------------------------ what it refuses
def _stepped(sched, *timesteps, eta=None):
    x = torch.zeros(1, 1, 2, 2)
    for t in timesteps:
        sched.step(x, t, x, eta=eta)


def test_calls_off_the_grid_or_out_of_order():
    sched = ddim.DiffusersScheduler.from_config(DDIMScheduler().config)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=re.escape(
            "no grid yet: call set_timesteps(num_inference_steps) first")):
        sched.step(x, 999, x)
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [999, 749, 499, 249]
    with pytest.raises(ValueError, match=re.escape(
            "timestep 500 is not on this scheduler's grid [999, 749, 499, 249]: it steps only "
            "from its own timesteps (set_timesteps sets them)")):
        sched.step(x, 500, x)
    _stepped(sched, 999)
    with pytest.raises(ValueError, match=re.escape(
            "timestep 499 comes where timestep 749 is next on the grid [999, 749, 499, 249]: "
            "steps run once, in order (call set_timesteps to start again)")):
        sched.step(x, 499, x)
    with pytest.raises(ValueError, match=re.escape(
            "timestep 999 comes where timestep 749 is next")):
        sched.step(x, 999, x)
    _stepped(sched, 749, 499, 249)
    with pytest.raises(ValueError, match=re.escape(
            "timestep 249 comes after the last step on the grid [999, 749, 499, 249]")):
        sched.step(x, 249, x)
    sched.set_timesteps(4)  # a fresh run
    _stepped(sched, 999, 749)
    sched.set_timesteps(4)
    sched.set_begin_index(2)
    with pytest.raises(ValueError, match=re.escape(
            "timestep 999 is grid point 0 of [999, 749, 499, 249], but set_begin_index(2) "
            "starts the run at 499")):
        sched.step(x, 999, x)
    with pytest.raises(ValueError, match=re.escape("begin_index must be an integer in [0, 3], "
                                                   "got 4")):
        sched.set_begin_index(4)


def test_bad_arguments_name_themselves():
    config = DDIMScheduler().config
    cases = [
        (TypeError, "DiffusersScheduler got unexpected options ['steps']; it takes ['solver', "
         "'spacing', 'timesteps', 'steps_offset', 'eta', 'final_alpha', 'sigma_hat', "
         "'prediction_type', 'clip_sample', 'dynamic_threshold', 'dynamic_threshold_max', "
         "'rederive_eps']", lambda: ddim.DiffusersScheduler.from_config(config, steps=5)),
        (ValueError, "solver must be one of", lambda: ddim.DiffusersScheduler.from_config(
            config, solver="euler")),
        (ValueError, "eta=0.5 applies to solver='ddim' only, got solver='dpmpp_2m'",
         lambda: ddim.DiffusersScheduler.from_config(config, solver="dpmpp_2m", eta=0.5)),
        (TypeError, "config must be a diffusers scheduler config (a mapping) or a scheduler, "
         "got str", lambda: ddim.DiffusersScheduler.from_config("ddim")),
    ]
    for kind, message, call in cases:
        with pytest.raises(kind, match=re.escape(message)):
            call()
    sched = ddim.DiffusersScheduler.from_config(config)
    with pytest.raises(ValueError, match=re.escape("steps must be an integer in [1, 1000], "
                                                   "got 0")):
        sched.set_timesteps(0)
    sched = ddim.DiffusersScheduler.from_config(config, timesteps=[999, 1])
    with pytest.raises(ValueError, match=re.escape(
            "timesteps were given to from_config already; pass them once")):
        sched.set_timesteps(timesteps=[10, 5])
    with pytest.raises(ValueError, match=re.escape(
            "num_inference_steps=50 contradicts the 2 timesteps given to from_config [999, 1]: "
            "call the pipeline with num_inference_steps=2")):
        sched.set_timesteps(50)
    sched.set_timesteps(2)
    assert sched.timesteps.tolist() == [999, 1]


def test_one_eta_per_run_and_bad_step_arguments():
    sched = ddim.DiffusersScheduler.from_config(DDIMScheduler().config)
    sched.set_timesteps(3)
    x = torch.zeros(2, 1, 2, 2)
    _stepped(sched, 999, eta=0.0)
    with pytest.raises(ValueError, match=re.escape(
            "eta=1.0 at timestep 666, but this run started with eta=0.0: η is one value per "
            "run")):
        sched.step(x[:1], 666, x[:1], eta=1.0)
    with pytest.raises(ValueError, match=re.escape(
            "sample has shape (2, 1, 2, 2) on cpu at timestep 666, but this run started with "
            "(1, 1, 2, 2) on cpu; call set_timesteps to start a new run")):
        sched.step(x, 666, x)
    with pytest.raises(TypeError, match=re.escape("timestep must be an integer, got 666.5")):
        sched.step(x, 666.5, x)
    with pytest.raises(ValueError, match=re.escape(
            "use_clipped_model_output=True: set rederive_eps in from_config (ddim applies it "
            "to the whole run)")):
        sched.step(x[:1], 666, x[:1], use_clipped_model_output=True)
    with pytest.raises(ValueError, match=re.escape("generator list must have one generator "
                                                   "per sample: batch size 1, got 2 generators")):
        sched.step(x[:1], 666, x[:1], generator=[torch.Generator()] * 2)
    with pytest.raises(TypeError, match=re.escape("model_output must be a floating "
                                                  "torch.Tensor, got torch.int64")):
        sched.step(torch.zeros(1, 1, 2, 2, dtype=torch.int64), 666, x[:1])
    with pytest.raises(ValueError, match=re.escape(
            "model output at step 1 (t=666) has shape (1, 3, 2, 2), expected the input's "
            "shape (1, 1, 2, 2)")):
        sched.step(torch.zeros(1, 3, 2, 2), 666, x[:1])
    ddpm = ddim.DiffusersScheduler.from_config(DDPMScheduler().config)
    ddpm.set_timesteps(1000)
    with pytest.raises(ValueError, match=re.escape("eta=5 is too large for this grid")):
        ddpm.step(x, 999, x, eta=5.0)
    with pytest.raises(ValueError, match=re.escape("timesteps must lie in [0, 999], got 1000")):
        ddpm.add_noise(x, x, 1000)
    with pytest.raises(TypeError, match=re.escape("timesteps must be an integer or 2 integers")):
        ddpm.add_noise(x, x, torch.tensor([0.5, 1.5]))
