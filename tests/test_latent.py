"""Latent diffusion: LDMPipeline and Stable-Diffusion folders load as bundles that sample
latents and decode them (agreeing with diffusers in float64), the decode keyword, the edits on
latents (inversion round trip measured, img2img, inpainting, interpolation), generate's record,
the hub's download patterns, and every bad input refused before any model call.

Every model is a tiny random-init diffusers component built from a config here (nothing is
downloaded; see tests/helpers.py).
"""

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LDMPipeline
from diffusers.pipelines.deprecated.latent_diffusion_uncond import (
    pipeline_latent_diffusion_uncond as ldm_module,
)

import ddim
from ddim import PretrainedError
from ddim.loading import hub
from ddim.sampling.noise import sample_generators
from ddim.testing import GaussianMixture
from tests.helpers import load_npz, save_ldm_folder

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("quiet_diffusers")


def _randn(*shape, seed=0, dtype=F64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _images(b=2, seed=0, dtype=torch.float32):
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed),
                      dtype=dtype) * 2 - 1


def _float64_levels(sched, schedule):
    """A diffusers DDIMScheduler on the float64 levels of ``schedule`` (it keeps ᾱ in
    float32), so that both sides compute the same formulas in float64."""
    sched.alphas_cumprod = schedule.alphas_cumprod
    first = schedule.alphas_cumprod[0]
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=F64) if (
        sched.config.set_alpha_to_one) else first
    return sched


# ------------------------------------------------------------------ loading
def test_an_ldm_folder_loads_with_its_autoencoder(ldm, ldm_folder):
    assert type(ldm.autoencoder).__name__ == "VQModel" and ldm.scaling_factor == 0.5
    assert ldm.sample_shape == (2, 8, 8) and ldm.image_shape == (3, 16, 16)
    assert ldm.data_range == (-1.0, 1.0) and ldm.shift_factor == 0.0
    assert ldm.schedule == ddim.NoiseSchedule.linear()
    assert "autoencoder=VQModel, scaling_factor=0.5" in repr(ldm)
    assert not ldm.autoencoder.training and not any(p.requires_grad
                                                    for p in ldm.autoencoder.parameters())


def test_a_stable_diffusion_folder_loads_without_its_text_encoder(sd):
    assert type(sd.model).__name__ == "UNet2DConditionModel"
    assert type(sd.autoencoder).__name__ == "AutoencoderKL" and sd.scaling_factor == 0.18215
    assert sd.sample_shape == (4, 8, 8) and sd.image_shape == (3, 16, 16)
    assert sd.schedule == ddim.NoiseSchedule.named("scaled_linear", 1000, beta_start=0.00085,
                                                   beta_end=0.012)


def test_a_vq_config_without_scaling_factor_means_one(tmp_path):
    """CompVis' VQ models record no scaling_factor and were trained unscaled: 1.0 here.
    diffusers fills in VQModel's constructor default 0.18215 (what LDMPipeline divides by:
    its issue 6725, ldm-celebahq-256 decoding to noise)."""
    folder = save_ldm_folder(tmp_path / "ldm", scaling_factor=None)
    path = folder / "vqvae" / "config.json"
    assert json.loads(path.read_text())["scaling_factor"] is None
    assert ddim.load_pretrained(folder).scaling_factor == 1.0
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                                if k != "scaling_factor"}))
    assert ddim.load_pretrained(folder).scaling_factor == 1.0
    assert LDMPipeline.from_pretrained(folder).vqvae.config.scaling_factor == 0.18215


def test_shift_factor_of_an_autoencoder_kl(sd_folder, tmp_path):
    """z = scaling_factor·(E(x) - shift_factor), x = D(z/scaling_factor + shift_factor)."""
    folder = _copy(sd_folder, tmp_path)
    _edit_config(folder / "vae" / "config.json", shift_factor=0.25)
    shifted, plain = ddim.load_pretrained(folder), ddim.load_pretrained(sd_folder)
    assert shifted.shift_factor == 0.25
    x, z = _images(1), _randn(1, 4, 8, 8, dtype=torch.float32)
    s = plain.scaling_factor
    torch.testing.assert_close(shifted.encode(x), plain.encode(x) - 0.25 * s, rtol=0,
                               atol=1e-6)
    torch.testing.assert_close(shifted.decode(z), plain.decode(z + 0.25 * s), rtol=0,
                               atol=1e-6)


def test_casting_keeps_an_upcast_vae_in_float32(ldm_folder, sd_folder):
    """torch_dtype=bfloat16: the UNet and the VQModel in bfloat16, Stable Diffusion's VAE
    (force_upcast) in float32, as diffusers' pipelines do; the samples stay float32."""
    vq = ddim.load_pretrained(ldm_folder, torch_dtype=torch.bfloat16)
    assert next(vq.autoencoder.parameters()).dtype == torch.bfloat16
    kl = ddim.load_pretrained(sd_folder, torch_dtype=torch.bfloat16)
    assert next(kl.model.parameters()).dtype == torch.bfloat16
    assert next(kl.autoencoder.parameters()).dtype == torch.float32
    x = ddim.sample(vq, 3, batch_size=2)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


# ------------------------------------------------------------------ agreement with diffusers
def test_sample_equals_ldm_pipeline_in_float64(ldm_folder, monkeypatch):
    """ddim.sample(bundle, 10, spacing="leading", x_T=z) against LDMPipeline with
    DDIMScheduler(clip_sample=False) on the same latents, both in float64 (diffusers' ᾱ
    replaced by the float64 levels of the same schedule). Measured: the latents LDMPipeline
    hands its VQModel agree to 1.7e-13 (|z| up to 255: 7e-16 relative), the images are
    bit-equal (the quantiser picks the same codes); with diffusers' float32 ᾱ the latents
    differ by 2.8e-5 (1e-7 relative)."""
    bundle = ddim.load_pretrained(ldm_folder, torch_dtype=F64)
    z = _randn(2, 2, 8, 8, seed=1)
    monkeypatch.setattr(ldm_module, "randn_tensor", lambda *a, **k: z.clone())
    seen = {}
    decode = bundle.autoencoder.decode

    def recording(h, *args, **kwargs):
        out = decode(h, *args, **kwargs)
        seen.update(latents=h, images=out.sample)
        return out

    monkeypatch.setattr(bundle.autoencoder, "decode", recording)
    sched = _float64_levels(DDIMScheduler(clip_sample=False), bundle.schedule)
    pipe = LDMPipeline(vqvae=bundle.autoencoder, unet=bundle.model, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, num_inference_steps=10, output_type="np").images
    monkeypatch.setattr(bundle.autoencoder, "decode", decode)

    latents = ddim.sample(bundle, steps=10, spacing="leading", x_T=z, decode=False)
    images = ddim.sample(bundle, steps=10, spacing="leading", x_T=z)
    scale = latents.abs().max().item()
    assert (seen["latents"] * bundle.scaling_factor - latents).abs().max() <= 1e-12 * scale
    assert images.dtype == F64 and images.shape == (2, 3, 16, 16)
    torch.testing.assert_close(images, seen["images"], rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.from_numpy(ref), (images / 2 + 0.5).clamp(0, 1).permute(
        0, 2, 3, 1), rtol=0, atol=1e-12)
    assert (seen["latents"] - latents / bundle.scaling_factor).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_stable_diffusion_with_guidance_equals_a_hand_loop(sd_folder, eta):
    """The Stable-Diffusion layout with prompt embeddings (random tensors standing for
    encode_prompt's prompt_embeds and negative_prompt_embeds) and guidance w = 7.5, against
    StableDiffusionPipeline's loop written out over diffusers' DDIMScheduler with SD's config
    (leading, steps_offset 1, set_alpha_to_one False), float64 on both sides; η = 1 with the
    step noise ddim draws passed as variance_noise. Measured: the latents 2.1e-14 (η = 0) and
    4.3e-14 (η = 1) apart at |z| up to 30 and 41 (1e-15 relative), the images 2.0e-15 and
    2.3e-15."""
    bundle = ddim.load_pretrained(sd_folder, torch_dtype=F64)
    cond, uncond = _randn(2, 5, 12, seed=2), _randn(2, 5, 12, seed=3)
    z, w, steps = _randn(2, 4, 8, 8, seed=4), 7.5, 8
    config = json.loads((sd_folder / "scheduler" / "scheduler_config.json").read_text())
    sched = _float64_levels(DDIMScheduler.from_config(config, clip_sample=False),
                            bundle.schedule)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(9)
    latents = z * sched.init_noise_sigma
    with torch.inference_mode():
        for t in sched.timesteps:
            both = sched.scale_model_input(torch.cat([latents] * 2), t)
            out = bundle.model(both, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            out_u, out_c = out.chunk(2)
            noise = torch.randn(z.shape, generator=g).to(F64) if eta else None
            latents = sched.step(out_u + w * (out_c - out_u), t, latents, eta=eta,
                                 variance_noise=noise).prev_sample
        images = bundle.autoencoder.decode(latents / bundle.scaling_factor).sample

    kw = dict(spacing="leading", steps_offset=1, final_alpha="first", eta=eta, x_T=z,
              generator=torch.Generator().manual_seed(9), guidance_scale=w,
              model_kwargs={"encoder_hidden_states": cond},
              uncond_kwargs={"encoder_hidden_states": uncond})
    ours = ddim.sample(bundle, steps, decode=False, **kw)
    kw["generator"] = torch.Generator().manual_seed(9)
    ours_images = ddim.sample(bundle, steps, **kw)
    torch.testing.assert_close(ours, latents, rtol=0, atol=1e-12 * latents.abs().max().item())
    torch.testing.assert_close(ours_images, images, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ the decode keyword
def test_decode_false_returns_the_latents_that_decode_to_the_images(ldm):
    z = _randn(3, 2, 8, 8, dtype=torch.float32)
    latents = ddim.sample(ldm, 5, x_T=z, decode=False)
    images = ddim.sample(ldm, 5, x_T=z)
    steps = list(ddim.sample_iter(ldm, 5, x_T=z))
    assert latents.shape == (3, 2, 8, 8) and images.shape == (3, 3, 16, 16)
    assert all(s.sample.shape == (3, 2, 8, 8) for s in steps)  # sample_iter stays latent
    torch.testing.assert_close(steps[-1].sample, latents, rtol=0, atol=0)
    torch.testing.assert_close(ldm.decode(latents), images, rtol=0, atol=0)
    torch.testing.assert_close(ddim.sample(ldm, 5, x_T=z, decode=True), images, rtol=0,
                               atol=0)
    assert not images.is_inference()


def test_decoding_in_chunks_gives_the_same_images(ldm):
    """max_batch_size bounds the decoder's batch too; with per-sample generators the images
    are those of one batch (float64: float32 convolutions depend on the batch size)."""
    ldm = ldm.to(dtype=F64)
    gens = [torch.Generator().manual_seed(i) for i in range(5)]
    whole = ddim.sample(ldm, 4, batch_size=5, generator=gens, dtype=F64)
    gens = [torch.Generator().manual_seed(i) for i in range(5)]
    calls = []
    decode = ldm.autoencoder.decode

    def counting(z, *args, **kwargs):
        calls.append(z.shape[0])
        return decode(z, *args, **kwargs)

    ldm.autoencoder.decode = counting
    try:
        chunked = ddim.sample(ldm, 4, batch_size=5, generator=gens, max_batch_size=2,
                              dtype=F64)
    finally:
        del ldm.autoencoder.decode
    assert calls == [2, 2, 1]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


def test_the_decode_keyword_is_checked(tiny_unet, ldm):
    with pytest.raises(ValueError, match=re.escape(
            "decode=True, but the model has no autoencoder: its samples are images already "
            "(decode applies to latent models)")):
        ddim.sample(tiny_unet, 2, decode=True)
    with pytest.raises(TypeError, match=re.escape(
            "decode must be None, True or False, got 'yes' (str)")):
        ddim.sample(ldm, 2, decode="yes")
    x = ddim.sample(tiny_unet, 2, decode=False)  # a pixel model's samples, as they are
    assert x.shape == (1, 1, 8, 8)


def test_clip_sample_true_is_refused_for_latents(ldm):
    with pytest.raises(ValueError, match=re.escape(
            "clip_sample=True clips x̂0 to the model's data range, but this is a latent model: "
            "x̂0 is a latent, not an image in (-1.0, 1.0); pass the latents' own bound (a "
            "number c or a range (lo, hi)) or leave clipping off")):
        ddim.sample(ldm, 3, clip_sample=True)
    x = ddim.sample(ldm, 3, clip_sample=4.0, decode=False)
    assert x.abs().max() <= 4.0


# ------------------------------------------------------------------ editing on latents
def _oracle_bundle(folder):
    """The folder's autoencoder with the exact ε of a Gaussian fitted to the latents of
    8 images (ddim.testing), in float64, scaling_factor set so that the latents have unit
    variance (Rombach et al. 2022, section 4.3.2): a smooth ε field, as a trained model has,
    where the random-init UNet's is not (its inversion is off by its latents' own size)."""
    bundle = ddim.load_pretrained(folder, torch_dtype=F64)
    x = _images(8, dtype=F64)
    scale = float(1 / (bundle.encode(x) / bundle.scaling_factor).std())
    bundle = dataclasses.replace(bundle, scaling_factor=scale)
    z = bundle.encode(x)
    mix = GaussianMixture(z.mean(0, keepdim=True), z.std(0, keepdim=True).clamp(min=0.1))
    return dataclasses.replace(bundle, model=mix.model(bundle.schedule), name="oracle"), x


@pytest.mark.parametrize("layout, method, steps, latent_err, image_err", [
    ("ldm", "ddim", 10, 0.30, 0.008), ("ldm", "fixed_point", 10, 2e-3, 1e-12),
    ("ldm", "ddim", 50, 0.09, 1e-12), ("ldm", "fixed_point", 50, 5e-6, 1e-12),
    ("sd", "ddim", 10, 0.14, 0.29), ("sd", "fixed_point", 10, 0.011, 0.0055),
    ("sd", "ddim", 50, 0.035, 0.065), ("sd", "fixed_point", 50, 1.5e-5, 1e-5),
])
def test_inversion_round_trip_through_the_autoencoder(layout, method, steps, latent_err,
                                                      image_err, request):
    """encode → invert → sample → decode, against the autoencoder's own reconstruction
    D(E(x)) (the random autoencoders cannot reconstruct the images themselves: 2.4 off),
    measured in float64 on 3 images (max abs errors; latents relative to their largest):

    ======  ===========  =====  ============  ==================
    layout  method       steps  latents       images vs D(E(x))
    ======  ===========  =====  ============  ==================
    ldm     ddim         10     0.289         0.00714
    ldm     fixed_point  10     1.72e-3       0 (the quantiser snaps back)
    ldm     ddim         50     0.0807        0
    ldm     fixed_point  50     3.93e-6       0
    sd      ddim         10     0.126         0.276
    sd      fixed_point  10     9.82e-3       4.99e-3
    sd      ddim         50     0.0326        0.0614
    sd      fixed_point  50     1.36e-5       8.5e-6
    ======  ===========  =====  ============  ==================
    """
    bundle, x = _oracle_bundle(request.getfixturevalue(f"{layout}_folder"))
    x = x[:3]
    z0 = bundle.encode(x)
    x_T = ddim.invert(bundle, x, steps=steps, method=method)
    assert x_T.shape == z0.shape and x_T.dtype == F64
    z = ddim.sample(bundle, steps=steps, x_T=x_T, decode=False)
    images = ddim.sample(bundle, steps=steps, x_T=x_T)
    assert (z - z0).abs().max() <= latent_err * z0.abs().max()
    assert (images - bundle.decode(z0)).abs().max() <= image_err


def test_inversion_encodes_then_inverts_the_latents(sd):
    """invert(bundle, images) is invert on the latents E(x)·scaling_factor (the posterior
    mean) by the same network without its autoencoder."""
    x, e = _images(2), {"encoder_hidden_states": _randn(2, 5, 12, dtype=torch.float32)}
    bare = dataclasses.replace(sd, autoencoder=None)
    with torch.inference_mode():
        mean = sd.autoencoder.encode(x).latent_dist.mean * sd.scaling_factor
    torch.testing.assert_close(sd.encode(x), mean, rtol=0, atol=0)
    x_T = ddim.invert(sd, x, steps=6, model_kwargs=e)
    torch.testing.assert_close(x_T, ddim.invert(bare, mean, steps=6, model_kwargs=e), rtol=0,
                               atol=0)


def test_img2img_on_latents(ldm):
    """Images in, images out: the same as img2img on the latents (the quantised code times
    scaling_factor) by the bare network, decoded; strength 0 returns the image."""
    x = _images(2)
    bare = dataclasses.replace(ldm, autoencoder=None)
    out = ddim.img2img(ldm, x, 0.6, steps=10, generator=torch.Generator().manual_seed(3))
    by_hand = ddim.img2img(bare, ldm.encode(x), 0.6, steps=10,
                           generator=torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    torch.testing.assert_close(out, ldm.decode(by_hand), rtol=0, atol=0)
    torch.testing.assert_close(ddim.img2img(ldm, x, 0.0, steps=10), x, rtol=0, atol=0)


def test_inpaint_on_latents_keeps_the_known_pixels_exactly(ldm):
    """The mask goes to the latent grid by area (min over channels, mean over 2×2 blocks),
    the latents are inpainted, and the known pixels are put back after decoding."""
    x = _images(2)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :7] = 1  # columns 0-6: the latent column 3 is half known
    out = ddim.inpaint(ldm, x, mask, steps=8, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    torch.testing.assert_close(out[..., :7], x[..., :7], rtol=0, atol=0)
    small = torch.zeros(2, 1, 8, 8, dtype=F64)
    small[..., :3], small[..., 3] = 1, 0.5
    from ddim.editing.inpaint import latent_mask

    torch.testing.assert_close(latent_mask(mask.double(), x, torch.zeros(2, 2, 8, 8)), small)
    bare = dataclasses.replace(ldm, autoencoder=None)
    z = ddim.inpaint(bare, ldm.encode(x), small.float(), steps=8,
                     generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, mask * x + (1 - mask) * ldm.decode(z), rtol=0, atol=1e-6)


def test_interpolation_strip_on_latents_decodes(ldm):
    """Latents in, images out; its ends are the images of the two latents (float64: float32
    convolutions depend on the batch size)."""
    ldm = ldm.to(dtype=F64)
    z0, z1 = _randn(1, 2, 8, 8, seed=5), _randn(1, 2, 8, 8, seed=6)
    strip = ddim.interpolation_strip(ldm, z0, z1, num=3, steps=5)
    assert strip.shape == (3, 3, 16, 16)
    torch.testing.assert_close(strip[0], ddim.sample(ldm, 5, x_T=z0)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(strip[2], ddim.sample(ldm, 5, x_T=z1)[0], rtol=0, atol=1e-12)
    assert ddim.interpolation_strip(ldm, z0, z1, num=3, steps=5, decode=False).shape == (
        3, 2, 8, 8)


# ------------------------------------------------------------------ bad input
def test_image_sizes_the_autoencoder_cannot_take(ldm, sd):
    e = {"encoder_hidden_states": torch.zeros(1, 5, 12)}
    cases = [
        (ldm, torch.zeros(1, 3, 15, 16), "image has size 15×16: the autoencoder (VQModel) "
         "takes images (B, 3, H, W) with H and W multiples of 2 (its 2 blocks), e.g. 16×16"),
        (ldm, torch.zeros(1, 1, 16, 16), "image has shape (1, 1, 16, 16): the autoencoder "
         "(VQModel) takes images (B, 3, H, W) with H and W multiples of 2 (its 2 blocks)"),
        (sd, torch.zeros(1, 3, 18, 18), "image has shape (1, 3, 18, 18): its latent has shape "
         "(1, 4, 9, 9): this UNet takes any spatial size divisible by 2 (its 2 down blocks), "
         "trained at (B, 4, 8, 8)"),
    ]
    for bundle, image, message in cases:
        kw = dict(model_kwargs=e if bundle is sd else None)
        _refuse_model_calls(bundle)
        with pytest.raises(ValueError, match=re.escape(message)):
            ddim.img2img(bundle, image, 0.5, **kw)
        with pytest.raises(ValueError, match=re.escape(message)):
            ddim.inpaint(bundle, image, torch.ones_like(image), **kw)
        with pytest.raises(ValueError, match=re.escape(message.replace("image", "x0", 1))):
            ddim.invert(bundle, image, **kw)


def _refuse_model_calls(bundle):
    """Make every call of the bundle's UNet or autoencoder fail the test."""
    def fail(*args, **kwargs):
        raise AssertionError("a model was called before the arguments were checked")

    bundle.model.register_forward_pre_hook(fail)
    for name in ("encode", "decode"):
        setattr(bundle.autoencoder, name, fail)


def test_a_mask_of_the_wrong_size_is_refused(ldm):
    with pytest.raises(ValueError, match=re.escape(
            "mask of shape (1, 1, 8, 8) does not broadcast to the image's shape "
            "(2, 3, 16, 16)")):
        ddim.inpaint(ldm, _images(2), torch.ones(1, 1, 8, 8))


def test_cross_attention_needs_prompt_embeddings(sd):
    with pytest.raises(ValueError, match=re.escape(
            "this UNet2DConditionModel is conditioned on encoder_hidden_states (B, L, 12): "
            "pass model_kwargs={'encoder_hidden_states': ...} (for Stable Diffusion the prompt "
            "embeddings of its pipeline's encode_prompt; see docs/latent-diffusion.md)")):
        ddim.sample(sd, 3)
    with pytest.raises(ValueError, match=re.escape(
            "model_kwargs['encoder_hidden_states'] must have shape (B, L, 12), got (1, 5, 7)")):
        ddim.sample(sd, 3, model_kwargs={"encoder_hidden_states": torch.zeros(1, 5, 7)})


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def _edit_config(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_an_autoencoder_without_a_unet(ldm_folder, tmp_path):
    folder = _copy(ldm_folder, tmp_path)
    shutil.rmtree(folder / "unet")
    with pytest.raises(PretrainedError, match=re.escape(
            f"{folder} has an autoencoder (vqvae/) but no unet/config.json: a latent diffusion "
            "folder holds both (LDMPipeline: vqvae/, unet/, scheduler/; Stable Diffusion: "
            "vae/, unet/, scheduler/)")):
        ddim.load_pretrained(folder)


@pytest.mark.parametrize("changes, message", [
    (dict(latent_channels=3), "latent_channels 3 differs from the UNet's in_channels 2"),
    (dict(_class_name="UNet2DModel"), "_class_name 'UNet2DModel' is not an autoencoder ddim "
     "can use ('VQModel', 'AutoencoderKL')"),
    (dict(scaling_factor=-1), "scaling_factor must be a positive number, got -1"),
    (dict(shift_factor="0.1"), "shift_factor must be a number or null, got '0.1'"),
    (dict(latents_mean=[0.0] * 4), "vae/config.json: latents_mean is set; ddim does not "
     "normalise latents per channel (only scaling_factor and shift_factor)"),
])
def test_bad_autoencoder_configs(ldm_folder, sd_folder, tmp_path, changes, message):
    kl = bool({"latents_mean", "shift_factor"} & set(changes))  # AutoencoderKL keys
    folder = _copy(sd_folder if kl else ldm_folder, tmp_path)
    _edit_config(folder / ("vae" if kl else "vqvae") / "config.json", **changes)
    with pytest.raises(PretrainedError, match=re.escape(message)):
        ddim.load_pretrained(folder)


def test_two_autoencoders_and_missing_weights(ldm_folder, tmp_path):
    folder = _copy(ldm_folder, tmp_path)
    shutil.copytree(folder / "vqvae", folder / "vae")
    with pytest.raises(PretrainedError, match=re.escape(
            f"{folder} holds two autoencoders (vqvae/ and vae/); keep the one its UNet was "
            "trained with")):
        ddim.load_pretrained(folder)
    shutil.rmtree(folder / "vae")
    (folder / "vqvae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PretrainedError, match=re.escape(f"no weights in {folder / 'vqvae'}")):
        ddim.load_pretrained(folder)


# ------------------------------------------------------------------ generate and the hub
def test_generate_records_the_autoencoder_and_writes_images(ldm_folder, tmp_path):
    result = ddim.generate(ldm_folder, tmp_path / "run", 3, steps=3, shard_size=2,
                           batch_size=2)
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    codec = manifest["autoencoder"]
    assert codec["class"] == "VQModel" and codec["scaling_factor"] == 0.5
    assert codec["weights"]["file"] == "diffusion_pytorch_model.safetensors"
    assert len(codec["weights"]["sha256"]) == 64 and codec["weights"] != manifest["weights"]
    assert manifest["image_shape"] == [3, 16, 16] and manifest["sample_shape"] == [2, 8, 8]
    assert result.num == 3
    packed = ddim.pack(tmp_path / "run", tmp_path / "all.npz")
    images = load_npz(packed)["images"]
    assert images.shape == (3, 16, 16, 3) and images.dtype == "uint8"
    expected = ddim.to_uint8(ddim.sample(ddim.load_pretrained(ldm_folder), 3, batch_size=3,
                                         generator=sample_generators(0, 0, 3)))
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1


def test_hub_downloads_the_autoencoder_and_nothing_else(monkeypatch, tmp_path, sd_folder):
    """The patterns name each part's config and safetensors (vae/ and vqvae/ among them), not
    SD's text encoder; a part without safetensors gets its .bin in a second call."""
    calls = []
    snapshot = shutil.copytree(sd_folder, tmp_path / "snap")
    (snapshot / "vae" / "diffusion_pytorch_model.safetensors").unlink()

    def fake(repo_id, allow_patterns, local_files_only=False, **kwargs):
        calls.append((local_files_only, list(allow_patterns)))
        if local_files_only:
            raise OSError("not cached")
        return str(snapshot)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
    assert hub.download("someone/tiny-sd") == snapshot
    patterns = calls[1][1]
    assert {"vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vqvae/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json"} <= set(patterns)
    assert not any("text_encoder" in p or "*" in p for p in patterns)
    assert calls[2] == (False, ["vae/diffusion_pytorch_model.bin"])
