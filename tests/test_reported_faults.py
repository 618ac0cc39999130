"""Faults from outside reports and a newcomer's walk-through (issue 12), each fixed as a kind.

Every kind has the reported example with its right value, plus further cases of the same kind
found at the other entry points (sample, sample_iter, invert, img2img, inpaint,
interpolation_strip, ddim_step, NoiseSchedule.timesteps).
"""

import math
import re

import numpy as np
import pytest
import torch

import ddim
from ddim import NoiseSchedule
from ddim.maths.grids import grid_levels, timesteps
from ddim.testing import GaussianMixture

SCHED = NoiseSchedule.linear()
MIX = GaussianMixture(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5))
ORACLE = MIX.model(SCHED)


class Recorder:
    """Records the timestep of every call; returns a smooth function of x."""

    def __init__(self, model=None):
        self.t, self.model = [], model

    def __call__(self, x, t):
        self.t.append(int(t[0]))
        return self.model(x, t) if self.model else 0.1 * torch.tanh(x)


def _image(b=2, seed=0):
    return MIX.sample(b, torch.Generator().manual_seed(seed)).float()


# ------------------------------------------------------------- 1. arguments ignored next to a grid
def test_img2img_honours_steps_offset_like_sample():
    rec = Recorder()
    ddim.sample(rec, 4, x_T=_image(), spacing="leading", steps_offset=1)
    assert rec.t == [751, 501, 251, 1]
    rec = Recorder()
    ddim.img2img(rec, _image(), 1.0, 4, spacing="leading", steps_offset=1)
    assert rec.t == [999, 751, 501, 251, 1]  # the same grid, below the start level t=999


IGNORED = r"has no effect with explicit timesteps \(they are used as given\); pass "


@pytest.mark.parametrize("extra,name", [(dict(spacing="leading"), "spacing='leading'"),
                                        (dict(steps_offset=1), "steps_offset=1"),
                                        (dict(spacing="trailing"), "spacing='trailing'")])
@pytest.mark.parametrize("call", [
    lambda **kw: ddim.sample(Recorder(), x_T=_image(), timesteps=[900, 500, 0], **kw),
    lambda **kw: ddim.sample_iter(Recorder(), x_T=_image(), timesteps=[900, 500, 0], **kw),
    lambda **kw: ddim.invert(Recorder(), _image(), timesteps=[900, 500, 0], **kw),
    lambda **kw: ddim.img2img(Recorder(), _image(), 0.5, timesteps=[900, 500, 0], **kw),
    lambda **kw: ddim.inpaint(Recorder(), _image(), torch.ones(1, 1, 4, 4),
                              timesteps=[900, 500, 0], **kw),
    lambda **kw: timesteps(SCHED, [900, 500, 0], **kw),
], ids=["sample", "sample_iter", "invert", "img2img", "inpaint", "schedule"])
def test_spacing_or_offset_next_to_explicit_timesteps_is_refused(call, extra, name):
    with pytest.raises(ValueError, match=rf"^{name} {IGNORED}"):
        call(**extra)


def test_steps_offset_with_the_default_trailing_spacing_is_refused():
    with pytest.raises(ValueError, match=r"steps_offset applies to spacing='leading' only, got "
                                         r"steps_offset=1 with spacing='trailing'"):
        ddim.sample(Recorder(), 4, x_T=_image(), steps_offset=1)


# ------------------------------------------------------------- 2. NaN the model did not return
def test_clean_first_level_with_x0_prediction_returns_the_last_x0():
    s = NoiseSchedule([1.0, 0.5, 0.1])  # ᾱ = 1 at t=0: ε̂ would be 0/0 there

    def quarter(x, t):
        return torch.full_like(x, 0.25)

    out = ddim.sample(quarter, 3, x_T=torch.ones(1, 1, 1, 1), schedule=s,
                      prediction_type="sample")
    assert out.flatten().tolist() == [0.25]
    latent = ddim.invert(quarter, torch.ones(1, 1, 1, 1), 3, schedule=s,
                         prediction_type="sample")
    assert torch.isfinite(latent).all()


@pytest.mark.parametrize("schedule", [
    NoiseSchedule([1.0, 0.5, 0.1]),
    NoiseSchedule([1.0, 0.9, 0.5, 0.0], allow_zero_terminal=True),
    NoiseSchedule.linear().rescale_zero_terminal_snr(),
], ids=["clean-first", "clean-first-zero-terminal", "zero-terminal"])
@pytest.mark.parametrize("ptype", ["sample", "v_prediction", "epsilon"])
@pytest.mark.parametrize("setting", [dict(eta=0.0), dict(eta=1.0), dict(sigma_hat=True),
                                     dict(final_alpha="first"), dict(clip_sample=1.0)])
def test_no_schedule_and_prediction_type_makes_a_nan(schedule, ptype, setting):
    if ptype == "epsilon" and schedule.zero_terminal_snr:
        pytest.skip("refused with a clear message (test_errors)")
    T = schedule.num_train_timesteps
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    for steps in sorted({1, 2, T}):
        def model(x, t):
            return 0.3 * x + 0.1

        out = list(ddim.sample_iter(model, steps, x_T=torch.randn(2, 1, 3, 3), schedule=schedule,
                                    prediction_type=ptype, generator=gens, spacing="linspace",
                                    **setting))
        for step in out:
            for value in (step.sample, step.pred_x0, step.pred_eps):
                assert torch.isfinite(value).all(), (steps, step.index)
        if setting == dict(eta=0.0):
            kw = dict(schedule=schedule, prediction_type=ptype, spacing="linspace")
            a = grid_levels(schedule, timesteps(schedule, steps, "linspace"))
            if a[0][0] == 0 and a[1][0] == 1:  # from ᾱ = 0 to 1: x_T enters through x̂0 only
                with pytest.raises(ValueError, match=r"steps from ᾱ = 0 .* straight to ᾱ = 1"):
                    ddim.invert(model, out[-1].sample, steps, **kw)
            else:
                assert torch.isfinite(ddim.invert(model, out[-1].sample, steps, **kw)).all()


def test_single_step_at_a_clean_level_is_finite():
    x, out = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.25)
    step = ddim.ddim_step(x, out, 1.0, 1.0, prediction_type="sample")
    assert step.prev_sample.flatten().tolist() == [0.25] * 8
    assert torch.equal(step.pred_eps, torch.zeros_like(x))
    x0, eps = ddim.predict_x0_eps(x, out, torch.tensor([1.0, 0.5]), "sample")
    assert torch.isfinite(eps).all() and torch.equal(eps[0], torch.zeros_like(eps[0]))


def test_a_large_finite_output_is_not_reported_as_nan():
    # a float32 sum of 1e37s overflows; the probe keeps max |out| instead
    out = ddim.sample(lambda x, t: torch.full_like(x, 1e37), 3, x_T=torch.ones(1, 1, 4, 4),
                      prediction_type="sample")
    assert torch.isfinite(out).all()
    with pytest.raises(ddim.NonFiniteError, match=r"at step 2 \(t=332\)"):
        ddim.sample(lambda x, t: torch.where(t.reshape(-1, 1, 1, 1) == 332, math.nan, x), 3,
                    x_T=torch.ones(1, 1, 4, 4))


def test_an_overflowing_sample_is_named():
    # finite outputs whose step overflows float32 are reported, not returned as inf
    with pytest.raises(ddim.NonFiniteError, match=r"the sample overflowed to inf \(the model's "
                                                  r"outputs were finite, up to 3e\+38"):
        ddim.sample(lambda x, t: torch.full_like(x, 3e38), 2, x_T=torch.ones(1, 1, 2, 2))


# ------------------------------------------------------------- 3. img2img strength is a level
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "quad"])
@pytest.mark.parametrize("steps", [1, 4, 10, 50])
def test_strength_one_starts_from_noise_for_every_spacing(spacing, steps):
    rec = Recorder()
    ddim.img2img(rec, _image(), 1.0, steps, spacing=spacing)
    assert rec.t[0] == 999
    rec = Recorder()
    ddim.img2img(rec, _image(), 0.5, steps, spacing=spacing)
    assert rec.t[0] == 500  # round(0.5 * 999)
    assert all(b < a for a, b in zip(rec.t, rec.t[1:], strict=False))


def test_strength_one_ignores_the_image():
    a, b = _image(seed=1), _image(seed=2)
    gen = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    out_a = ddim.img2img(ORACLE, a, 1.0, 1, generator=gen(), spacing="leading")
    out_b = ddim.img2img(ORACLE, b, 1.0, 1, generator=gen(), spacing="leading")
    sensitivity = (out_a - out_b).norm() / (a - b).norm()
    assert sensitivity < 0.02  # sqrt(ᾱ_999) = 0.0064 before the flow; was 0.9999
    near = ddim.img2img(ORACLE, a, 0.05, 10, generator=gen())
    assert (near - a).norm() < 0.3 * (out_a - a).norm()


# ------------------------------------------------------------- 4. clipping to a range
def test_clip_sample_to_an_asymmetric_range():
    def x0_model(x, t):
        return torch.tensor([-3.0, 0.5, 3.0]).reshape(1, 3, 1, 1).expand_as(x)

    out = ddim.sample(x0_model, 3, x_T=torch.zeros(1, 3, 1, 1), prediction_type="sample",
                      clip_sample=(0.0, 1.0))
    assert out.flatten().tolist() == [0.0, 0.5, 1.0]
    out = ddim.sample(x0_model, 3, x_T=torch.zeros(1, 3, 1, 1), prediction_type="sample",
                      clip_sample=2.0)
    assert out.flatten().tolist() == [-2.0, 0.5, 2.0]
    step = ddim.ddim_step(torch.zeros(1, 3, 1, 1), x0_model(torch.zeros(1, 3, 1, 1), None), 0.5,
                          1.0, prediction_type="sample", clip_sample=(0.0, 1.0))
    assert step.prev_sample.flatten().tolist() == [0.0, 0.5, 1.0]


def test_clip_sample_true_is_the_models_data_range():
    digits = ddim.load_pretrained("digits")
    unit = type(digits)(digits.model, digits.schedule, digits.sample_shape, digits.prediction_type,
                        "unit", data_range=(0.0, 1.0))
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = ddim.sample(unit, 5, x_T=x_T, clip_sample=True)
    assert out.min() >= 0.0 and out.max() <= 1.0
    plain = ddim.sample(digits.model, 5, x_T=x_T, clip_sample=True)  # no range: [-1, 1]
    assert plain.min() >= -1.0 and plain.max() <= 1.0 and plain.min() < 0


# ------------------------------------------------------------- 5. shapes checked before any call
@pytest.mark.parametrize("call,name", [
    (lambda m: ddim.sample(m, 3, x_T=torch.randn(2, 3, 8, 8)), "x_T"),
    (lambda m: ddim.sample(m, 3, shape=(2, 3, 8, 8)), "shape"),
    (lambda m: list(ddim.sample_iter(m, 3, x_T=torch.randn(2, 3, 8, 8))), "x_T"),
    (lambda m: ddim.invert(m, torch.randn(2, 3, 8, 8), 3), "x0"),
    (lambda m: ddim.img2img(m, torch.randn(2, 3, 8, 8), 0.5, 3), "image"),
    (lambda m: ddim.inpaint(m, torch.randn(2, 3, 8, 8), torch.ones(1, 1, 8, 8), 3), "image"),
])
def test_wrong_channels_are_refused_before_any_model_call(call, name):
    digits = ddim.load_pretrained("digits")
    calls = []
    model = type(digits)(Recorder(digits), digits.schedule, digits.sample_shape)
    model.model.t = calls
    with pytest.raises(ValueError, match=rf"^{name} has shape \(2, 3, 8, 8\) but the model takes "
                                         r"samples of shape \(B, 1, 8, 8\)$"):
        call(digits)
    assert calls == []


def test_another_spatial_size_only_where_the_unet_allows_it():
    digits = ddim.load_pretrained("digits")
    out = ddim.sample(digits, 2, x_T=torch.randn(1, 1, 16, 12))  # fully convolutional
    assert out.shape == (1, 1, 16, 12)
    with pytest.raises(ValueError, match=r"x_T has shape \(1, 1, 7, 8\): this UNet takes any "
                                         r"spatial size divisible by 2"):
        ddim.sample(digits, 2, x_T=torch.randn(1, 1, 7, 8))


# ------------------------------------------------------------- 21. η above what the grid allows
@pytest.mark.parametrize("eta", [1.2, 1e6])
def test_eta_above_the_grid_limit_is_refused(eta):
    levels = grid_levels(SCHED, timesteps(SCHED, 5))
    limit = float(ddim.maths.ddim_coefficients.max_eta(*levels).min())
    assert 1 < limit < 1.1
    with pytest.raises(ValueError, match=re.escape(f"eta={eta:g} is too large for this grid: ")
                       + ".* the largest eta this grid allows is " + f"{limit:.6g}"):
        ddim.sample(Recorder(), 5, eta, x_T=_image())
    with pytest.raises(ValueError, match=r"largest eta"):
        ddim.img2img(Recorder(), _image(), 0.8, 5, eta)
    with pytest.raises(ValueError, match=r"^eta=1\.4 is too large for this grid: at step 0 .* "
                                         r"the largest eta this grid allows is 1\.32288 "):
        ddim.ddim_step(torch.zeros(1, 1), torch.zeros(1, 1), 0.3, 0.5, 1.4, torch.zeros(1, 1))


@pytest.mark.parametrize("steps", [1, 2, 5, 50, 1000])
def test_eta_up_to_one_always_fits(steps):
    a_t, a_prev = grid_levels(SCHED, timesteps(SCHED, steps))
    assert (ddim.maths.ddim_coefficients.max_eta(a_t, a_prev) > 1).all()
    ddim.sample(Recorder(), steps, 1.0, x_T=_image(1), generator=torch.Generator())
    ddim.sample(Recorder(), steps, x_T=_image(1), sigma_hat=True, generator=torch.Generator())


# ------------------------------------------------------------- 22. messages
def test_numpy_and_tensor_integer_labels_are_one_label():
    cond = ddim.load_pretrained("digits-cond")
    x_T = torch.randn(2, 1, 8, 8)
    ref = ddim.sample(cond, 2, x_T=x_T, class_labels=3)
    for label in (np.int64(3), np.int32(3), torch.tensor(3)):
        assert torch.equal(ddim.sample(cond, 2, x_T=x_T, class_labels=label), ref)


@pytest.mark.parametrize("scale", [torch.tensor(2.0), "2", [2.0]])
def test_guidance_scale_of_the_wrong_type_is_a_type_error(scale):
    cond = ddim.load_pretrained("digits-cond")
    with pytest.raises(TypeError, match=r"guidance_scale must be a finite number >= 0, got"):
        ddim.sample(cond, 2, class_labels=3, guidance_scale=scale)
