"""The DDIM step's algebra in float64: PF-ODE Euler step, DDPM posterior variance, exact x0;
x̂0 processing (clipping, to a range or the model's data range, dynamic thresholding); a step
at a clean level (ᾱ = 1) stays finite."""

import math

import pytest
import torch

import ddim
from ddim.maths.ddim_coefficients import ddim_sigma, fused_coefficients, step_coefficients
from ddim.maths.ddim_step import ddim_step
from ddim.maths.grids import grid_levels, timesteps
from ddim.maths.prediction import output_coefficients, predict_x0_eps
from ddim.maths.thresholding import process_x0

F64 = dict(dtype=torch.float64)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), **F64)


@pytest.mark.parametrize("a_t,a_prev", [(0.3, 0.7), (4e-5, 0.02), (0.9, 0.9999), (0.5, 1.0)])
def test_eta0_step_is_euler_step_of_probability_flow_ode(a_t, a_prev):
    # x̄ = x/sqrt(ᾱ), σ̄ = sqrt((1-ᾱ)/ᾱ): dx̄ = ε dσ̄, one Euler step from σ̄_t to σ̄_prev
    x, eps = _rand(4, 3, 5, 5), _rand(4, 3, 5, 5, seed=1)
    prev = ddim_step(x, eps, a_t, a_prev).prev_sample
    sb_t, sb_prev = math.sqrt((1 - a_t) / a_t), math.sqrt((1 - a_prev) / a_prev)
    euler = x / math.sqrt(a_t) + (sb_prev - sb_t) * eps
    torch.testing.assert_close(prev / math.sqrt(a_prev), euler, rtol=1e-12, atol=1e-12)


def test_eta1_consecutive_steps_give_ddpm_posterior_variance_everywhere():
    s = ddim.NoiseSchedule.linear()
    a, beta = s.alphas_cumprod, s.betas
    a_t, a_prev = grid_levels(s, timesteps(s, 1000))
    sigma2 = ddim_sigma(a_t, a_prev, 1.0) ** 2
    t = torch.arange(999, -1, -1)
    a_prev_ddpm = torch.cat([torch.ones(1, **F64), a[:-1]])[t]
    beta_tilde = (1 - a_prev_ddpm) / (1 - a[t]) * beta[t]
    torch.testing.assert_close(sigma2, beta_tilde, rtol=1e-12, atol=1e-15)
    assert sigma2[-1] == 0  # the last step (to ᾱ=1) is noise-free, as in DDPM


def test_eta1_mean_is_ddpm_posterior_mean():
    # with η=1, S=T the deterministic part is μ̃_t(x_t, x̂0) of DDPM (eq. 7 of Ho et al.)
    s = ddim.NoiseSchedule.linear()
    a, beta = s.alphas_cumprod, s.betas
    x, eps = _rand(2, 1, 4, 4), _rand(2, 1, 4, 4, seed=3)
    for t in [999, 500, 37, 1]:
        out = ddim_step(x, eps, float(a[t]), float(a[t - 1]), eta=1.0,
                        noise=torch.zeros_like(x))
        mu = (math.sqrt(a[t - 1]) * beta[t] / (1 - a[t]) * out.pred_x0
              + math.sqrt(1 - beta[t]) * (1 - a[t - 1]) / (1 - a[t]) * x)
        torch.testing.assert_close(out.prev_sample, mu, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "quad"])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_true_eps_recovers_x0_exactly(spacing, steps):
    s = ddim.NoiseSchedule.linear()
    x0, eps = _rand(3, 2, 4, 4), _rand(3, 2, 4, 4, seed=5)
    grid = timesteps(s, steps, spacing)
    a_T = s.alphas_cumprod[grid[0]]
    x_T = a_T.sqrt() * x0 + (1 - a_T).sqrt() * eps
    out = ddim.sample(lambda x, t: eps, steps, x_T=x_T, spacing=spacing)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-10)


def test_prediction_types_are_consistent():
    x, eps = _rand(2, 3, 4, 4), _rand(2, 3, 4, 4, seed=7)
    a_t, a_prev = 0.2, 0.6
    ref = ddim_step(x, eps, a_t, a_prev, eta=0.7, noise=_rand(2, 3, 4, 4, seed=8))
    x0 = ref.pred_x0
    v = math.sqrt(a_t) * eps - math.sqrt(1 - a_t) * x0
    for ptype, output in [("sample", x0), ("v_prediction", v)]:
        got = ddim_step(x, output, a_t, a_prev, eta=0.7, noise=_rand(2, 3, 4, 4, seed=8),
                        prediction_type=ptype)
        for g, r in zip(got, ref, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_per_sample_alpha_bars_broadcast():
    x, eps = _rand(3, 2, 4), _rand(3, 2, 4, seed=2)
    a_t = torch.tensor([0.1, 0.4, 0.8], **F64)
    a_prev = torch.tensor([0.3, 0.5, 0.9], **F64)
    got = ddim_step(x, eps, a_t, a_prev).prev_sample
    for i in range(3):
        one = ddim_step(x[i:i + 1], eps[i:i + 1], float(a_t[i]), float(a_prev[i])).prev_sample
        torch.testing.assert_close(got[i:i + 1], one, rtol=1e-14, atol=1e-14)


def test_no_noise_read_when_sigma_zero_and_sigma_hat_variant():
    x, eps = _rand(1, 1, 3, 3), _rand(1, 1, 3, 3, seed=1)
    assert torch.equal(ddim_step(x, eps, 0.3, 0.5, eta=0.0).prev_sample,
                       ddim_step(x, eps, 0.3, 0.5, eta=0.0, noise=x * float("nan")).prev_sample)
    c_x0, c_eps, c_noise = step_coefficients(0.3, 0.5, sigma_hat=True)
    _, c_eps1, c_noise1 = step_coefficients(0.3, 0.5, 1.0)
    assert c_eps == c_eps1 and c_noise == pytest.approx(math.sqrt(1 - 0.3 / 0.5), rel=1e-15)
    assert c_noise > c_noise1
    assert step_coefficients(0.3, 1.0, sigma_hat=True)[2] == 0.0  # no noise on the x0 step


def test_half_precision_model_output_is_upcast():
    x, eps = _rand(2, 1, 4, 4).float(), _rand(2, 1, 4, 4, seed=1).float()
    out = ddim_step(x, eps.half(), 0.3, 0.6)
    assert out.prev_sample.dtype == torch.float32
    out16 = ddim_step(x.half(), eps.half(), 0.3, 0.6)
    assert out16.prev_sample.dtype == torch.float32


def test_clipping_and_rederived_eps():
    x = torch.tensor([[[3.0, -0.2]]], **F64)
    eps = torch.tensor([[[-1.0, 0.1]]], **F64)
    a_t, a_prev = 0.5, 0.9
    plain = ddim_step(x, eps, a_t, a_prev)
    clipped = ddim_step(x, eps, a_t, a_prev, clip_sample=1.0)
    assert clipped.pred_x0.abs().max() <= 1.0
    assert torch.equal(clipped.pred_eps, eps)  # ε kept unless asked to re-derive
    rederived = ddim_step(x, eps, a_t, a_prev, clip_sample=1.0, rederive_eps=True)
    # re-derived ε is consistent with the clipped x̂0 and x_t
    back = (x - math.sqrt(1 - a_t) * rederived.pred_eps) / math.sqrt(a_t)
    torch.testing.assert_close(back, rederived.pred_x0, rtol=1e-12, atol=1e-12)
    assert not torch.equal(plain.prev_sample, clipped.prev_sample)


def test_dynamic_thresholding():
    x0 = torch.tensor([[0.5, -3.0, 2.0, 0.1], [0.2, 0.3, -0.4, 0.9]], **F64)
    out = process_x0(x0, dynamic_threshold=0.5, dynamic_threshold_max=10.0)
    s0 = torch.quantile(x0[0].abs(), 0.5).clamp(min=1)
    torch.testing.assert_close(out[0], x0[0].clamp(-s0, s0) / s0)
    torch.testing.assert_close(out[1], x0[1])  # s clamps to 1: within [-1, 1], unchanged


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


def test_predict_x0_eps_round_trip():
    x, out = _rand(2, 2, 3), _rand(2, 2, 3, seed=4)
    for ptype in ["epsilon", "sample", "v_prediction"]:
        x0, eps = predict_x0_eps(x, out, 0.37, ptype)
        torch.testing.assert_close(math.sqrt(0.37) * x0 + math.sqrt(0.63) * eps, x,
                                   rtol=1e-12, atol=1e-12)


def test_single_step_at_a_clean_level_is_finite():
    x, out = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.25)
    step = ddim.ddim_step(x, out, 1.0, 1.0, prediction_type="sample")
    assert step.prev_sample.flatten().tolist() == [0.25] * 8
    assert torch.equal(step.pred_eps, torch.zeros_like(x))
    x0, eps = ddim.predict_x0_eps(x, out, torch.tensor([1.0, 0.5]), "sample")
    assert torch.isfinite(eps).all() and torch.equal(eps[0], torch.zeros_like(eps[0]))


@pytest.mark.parametrize("ptype", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("a_t,a_prev", [(4e-5, 0.02), (0.3, 0.7), (0.9, 0.9999), (0.5, 1.0)])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_fused_step_equals_the_x0_form(ptype, a_t, a_prev, eta):
    # the sampler's a_x·x_t + a_out·out + c_noise·z is the paper's step with x̂0, ε̂ substituted
    x, out, z = _rand(3, 2, 4, 4), _rand(3, 2, 4, 4, seed=1), _rand(3, 2, 4, 4, seed=2)
    ref = ddim_step(x, out, a_t, a_prev, eta=eta, noise=z, prediction_type=ptype).prev_sample
    coefficients = step_coefficients(a_t, a_prev, eta)
    a_x, a_out = fused_coefficients(a_t, coefficients, ptype)
    fused = a_x * x + a_out * out + coefficients[2] * z
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    p, q, r, s_ = output_coefficients(a_t, ptype)
    x0, eps = predict_x0_eps(x, out, a_t, ptype)
    torch.testing.assert_close(p * x + q * out, x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r * x + s_ * out, eps, rtol=1e-12, atol=1e-12)


def test_fused_coefficients_vectorise_over_steps():
    # once per sampling call, for the whole grid, in float64
    s = ddim.NoiseSchedule.linear()
    a_t, a_prev = grid_levels(s, timesteps(s, 20), "one")
    coefficients = step_coefficients(a_t, a_prev, 0.3)
    a_x, a_out = fused_coefficients(a_t, coefficients, "epsilon")
    assert a_x.dtype == torch.float64 and a_x.shape == (20,)
    torch.testing.assert_close(a_x, (a_prev / a_t).sqrt(), rtol=1e-13, atol=0)  # sqrt(ᾱ_prev/ᾱ_t)
    for i in (0, 7, 19):
        one = fused_coefficients(float(a_t[i]), tuple(float(c[i]) for c in coefficients))
        assert one == pytest.approx((float(a_x[i]), float(a_out[i])), rel=1e-13, abs=1e-15)
