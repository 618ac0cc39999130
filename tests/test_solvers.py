"""ddim.maths.multistep: step-for-step agreement with diffusers' multistep schedulers, DDIM as the
first-order case, convergence on the closed-form Gaussian oracle, and the errors."""

import math

import pytest
import torch

import ddim
from ddim.maths.ddim_step import ddim_step
from ddim.maths.multistep import (
    SOLVERS,
    MultistepStepper,
    StepCoefficients,
    dpmpp_3m_update,
    first_order_update,
    solver_coefficients,
)
from ddim.testing import GaussianMixture

F64 = dict(dtype=torch.float64)
SHAPE = (2, 1, 8, 8)  # the tiny UNet's input


@pytest.fixture(scope="module")
def schedule():
    return ddim.NoiseSchedule.linear()  # T=1000, β 1e-4 .. 0.02


def _scheduler(solver, prediction_type, final_sigmas_type="zero"):
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                  beta_schedule="linear", prediction_type=prediction_type,
                  lower_order_final=True, final_sigmas_type=final_sigmas_type)
    if solver == "unipc":
        return UniPCMultistepScheduler(predict_x0=True, solver_type="bh2", solver_order=2,
                                       **common)
    return DPMSolverMultistepScheduler(
        algorithm_type="sde-dpmsolver++" if solver == "dpmpp_2m_sde" else "dpmsolver++",
        solver_order=3 if solver == "dpmpp_3m" else 2, solver_type="midpoint", **common)


def _pred_x0(x, out, alpha_bar, prediction_type):
    """x̂0 in float64 from the model output (ε or v)."""
    a, x, out = float(alpha_bar), x.double(), out.double()
    if prediction_type == "epsilon":
        return (x - math.sqrt(1 - a) * out) / math.sqrt(a)
    return math.sqrt(a) * x - math.sqrt(1 - a) * out


def _models(tiny_unet, schedule, prediction_type):
    torch.manual_seed(0)
    mixture = GaussianMixture(0.5 * torch.randn(3, *SHAPE[1:], **F64), 0.3)
    oracle = mixture.model(schedule, prediction_type)

    def unet(x, t):  # a random-init UNet predicts whatever we call its output
        with torch.no_grad():
            return tiny_unet(x.float(), t).sample

    return {"unet": unet, "oracle": lambda x, t: oracle(x, t.reshape(1).expand(x.shape[0]))}


def _run_both(solver, steps, prediction_type, final_sigmas_type, model, schedule):
    """Drive diffusers' scheduler (float32) and our stepper (float64) with the same model;
    returns the worst max|ours - theirs| / max|theirs| over all intermediate samples."""
    sched = _scheduler(solver, prediction_type, final_sigmas_type)
    sched.set_timesteps(steps)
    t_grid = sched.timesteps
    final_alpha = "one" if final_sigmas_type == "zero" else "first"
    alpha_bar_t, alpha_bar_next = schedule.alpha_bars(t_grid, final_alpha)
    # diffusers 0.42.1 draws the SDE noise as randn_tensor(shape, generator, dtype=float32),
    # i.e. torch.randn on the CPU generator, on every step (×0 on a step onto σ=0); our stepper
    # draws only where the noise scale is > 0, so twin generators stay in step.
    gen_theirs, gen_ours = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    stepper = MultistepStepper(
        solver_coefficients(solver, alpha_bar_t, alpha_bar_next),
        noise=lambda: torch.randn(SHAPE, generator=gen_ours, dtype=torch.float32))
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    theirs, ours, worst = x_T.clone(), x_T.double(), 0.0
    for i, t in enumerate(t_grid):
        extra = {"generator": gen_theirs} if solver == "dpmpp_2m_sde" else {}
        theirs = sched.step(model(theirs, t), t, theirs, **extra).prev_sample
        pred_x0 = _pred_x0(ours, model(ours, t), alpha_bar_t[i], prediction_type)
        ours = stepper(i, ours, pred_x0)
        assert ours.dtype == torch.float64
        scale = theirs.abs().max().item()
        torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-5 * scale,
                                   msg=lambda m, i=i: f"step {i}: {m}")
        worst = max(worst, (ours - theirs.double()).abs().max().item() / scale)
    return worst


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [5, 10, 25])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde"])
def test_agrees_with_diffusers_step_for_step(solver, steps, prediction_type, tiny_unet,
                                             schedule):
    # Measured worst relative error over all intermediate samples: 2.3e-7 .. 8.8e-7 for every
    # solver, S and prediction type, on both models (diffusers computes in float32).
    for name, model in _models(tiny_unet, schedule, prediction_type).items():
        worst = _run_both(solver, steps, prediction_type, "zero", model, schedule)
        assert worst <= 1e-5, (name, worst)


@pytest.mark.parametrize("steps", [10, 20])  # below and above diffusers' "< 15 steps" rule
@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde"])
def test_agrees_with_diffusers_final_sigma_min(solver, steps):
    # final_alpha="first" (last step onto ᾱ(0)) is diffusers' final_sigmas_type="sigma_min".
    # diffusers holds ᾱ in float32, where 1 - ᾱ(0) = 1e-4 is off by 1.7e-4 relative; on our
    # float64 schedule that alone moves its final sample by up to 1.0e-5 (S=20, 2M SDE), so
    # here both run on diffusers' own levels. Measured: at most 9.3e-7.
    levels = ddim.NoiseSchedule(_scheduler(solver, "epsilon").alphas_cumprod.double())
    model = _models(None, levels, "epsilon")["oracle"]
    assert _run_both(solver, steps, "epsilon", "sigma_min", model, levels) <= 1e-5


@pytest.mark.parametrize("solver,steps,expected", [
    ("dpmpp_2m", 5, [1, 2, 2, 2, 1]),
    ("dpmpp_3m", 5, [1, 2, 3, 2, 1]),
    ("dpmpp_3m", 16, [1, 2] + [3] * 13 + [1]),  # ≥ 15 steps: only the step onto ᾱ=1 drops
    ("unipc", 5, [1, 2, 2, 2, 1]),
    ("dpmpp_2m_sde", 3, [1, 2, 1]),
    ("ddim", 4, [1, 1, 1, 1]),
])
def test_orders_follow_diffusers_lower_order_rules(solver, steps, expected, schedule):
    a_t, a_next = schedule.alpha_bars(schedule.timesteps(steps, "trailing"))
    assert [c.order for c in solver_coefficients(solver, a_t, a_next)] == expected


def test_orders_when_the_last_step_lands_on_alpha_bar_0(schedule):
    a_t, a_next = schedule.alpha_bars(schedule.timesteps(16, "trailing"), "first")
    orders = [c.order for c in solver_coefficients("dpmpp_3m", a_t, a_next)]
    assert orders[-2:] == [3, 3]  # sigma_min and ≥ 15 steps: no lower-order final steps
    orders = [c.order for c in solver_coefficients("unipc", a_t, a_next)]
    assert orders[-2:] == [2, 1]  # UniPC: min(order, S - i) whatever the end and S


@pytest.mark.parametrize("a_t,a_next", [(4e-5, 0.02), (0.3, 0.7), (0.9, 0.9999), (0.5, 1.0)])
def test_first_order_update_is_ddim_eta0(a_t, a_next):
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 2, 5, generator=g, **F64), torch.randn(3, 2, 5, generator=g, **F64)
    ddim_next = ddim_step(x, eps, a_t, a_next).prev_sample
    (c,) = solver_coefficients("dpmpp_2m", [a_t], [a_next])
    pred_x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    torch.testing.assert_close(first_order_update(x, pred_x0, c), ddim_next, rtol=1e-12,
                               atol=1e-12)


def test_ddim_solver_runs_ddim_eta0_whole_grid(schedule):
    mixture = GaussianMixture(torch.randn(2, 1, 3, 3, **F64), 0.4)
    a_t, a_next = schedule.alpha_bars(schedule.timesteps(8, "trailing"))
    stepper = MultistepStepper(solver_coefficients("ddim", a_t, a_next))
    ours = ref = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(2), **F64)
    for i in range(8):
        eps = mixture.eps(ours, a_t[i])
        ours = stepper(i, ours, (ours - (1 - a_t[i]).sqrt() * eps) / a_t[i].sqrt())
        ref = ddim_step(ref, mixture.eps(ref, a_t[i]), a_t[i], a_next[i]).prev_sample
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def _final_errors(schedule, solvers, grid, steps_list):
    """max |x_S - exact flow map| for a single Gaussian, per solver and S (float64)."""
    g = torch.Generator().manual_seed(0)
    mixture = GaussianMixture(torch.randn(1, 1, 4, 4, generator=g, **F64), 0.5)
    x_T = torch.randn(8, 1, 4, 4, generator=g, **F64)
    errors = {}
    for solver in solvers:
        errors[solver] = []
        for steps in steps_list:
            a_t, a_next = grid(steps)
            stepper, x = MultistepStepper(solver_coefficients(solver, a_t, a_next)), x_T
            for i, a in enumerate(a_t):
                eps = mixture.eps(x, torch.tensor(a, **F64))
                x = stepper(i, x, (x - math.sqrt(1 - a) * eps) / math.sqrt(a))
            exact = mixture.flow_map(x_T, a_t[0], a_next[-1])
            errors[solver].append((x - exact).abs().max().item())
    return errors


def _fitted_order(steps_list, errors):
    """-slope of the least-squares line through (log S, log error)."""
    xs, ys = [math.log(s) for s in steps_list], [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    covariance = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return -covariance / sum((x - mx) ** 2 for x in xs)


def test_convergence_orders_on_log_snr_grid(schedule):
    """Orders against the exact flow map, on grids uniform in λ from ᾱ(999) (where trailing
    grids start) to ᾱ(0), ending there (final_alpha="first"; S ≥ 15, so at full order to the
    end). Measured, S = 20, 40, 80, 160 (fit; pairwise): DDIM 0.98 (0.96, 0.98, 0.99),
    2M 1.96 (1.89, 1.98, 1.99), 3M 2.20 (2.43, 2.15, 2.05), UniPC 2.96 (2.87, 2.98, 3.02).

    3M converges at order 2, not 3, even from exact starting values: its D2 term carries
    h·φ_3(-h) while D2 ≈ h²x̂0''/2, half the weight of a third-order rule. This is diffusers'
    (and the DPM-Solver reference code's) coefficient, kept for step-for-step agreement;
    see test_dpmpp_3m_d2_weight_is_diffusers.
    """
    a0, a1 = float(schedule.alphas_cumprod[999]), float(schedule.alphas_cumprod[0])
    lam0, lam1 = (0.5 * math.log(a / (1 - a)) for a in (a0, a1))

    def grid(steps):
        lam = [lam0 + (lam1 - lam0) * k / steps for k in range(steps + 1)]
        a = [1 / (1 + math.exp(-2 * v)) for v in lam]
        return a[:-1], a[1:]

    steps_list = (20, 40, 80, 160)
    errors = _final_errors(schedule, ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc"), grid,
                           steps_list)
    orders = {s: _fitted_order(steps_list, e) for s, e in errors.items()}
    assert 0.9 < orders["ddim"] < 1.1, orders
    assert 1.8 < orders["dpmpp_2m"] < 2.2, orders
    assert 1.8 < orders["dpmpp_3m"] < 2.6, orders
    assert 2.7 < orders["unipc"] < 3.3, orders


def test_convergence_to_the_clean_sample_on_trailing_grids(schedule):
    """The sampler's default end: trailing grids onto ᾱ = 1, S = 5, 10, 20, 40. Fitted orders
    (measured): DDIM 0.91, 2M 2.62, 3M 1.70, UniPC 2.20; errors at S = 40: 1.1e-1, 2.8e-3,
    2.3e-2, 7.3e-3. The last step x = x̂0 from t = T/S - 1 is first order for every solver,
    with an error of about σ̄²/(2s²)·|x̄ - μ| (σ̄² = (1-ᾱ)/ᾱ there, s the data std), so these
    slopes mix the solvers' own order with that step's and with cancellation between them
    (2M's error grows again at S = 80); the λ-uniform test measures the orders cleanly.
    """
    steps_list = (5, 10, 20, 40)

    def grid(steps):
        a_t, a_next = schedule.alpha_bars(schedule.timesteps(steps, "trailing"))
        return a_t.tolist(), a_next.tolist()

    errors = _final_errors(schedule, ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc"), grid,
                           steps_list)
    orders = {s: _fitted_order(steps_list, e) for s, e in errors.items()}
    assert 0.8 < orders["ddim"] < 1.1, orders
    for solver in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        assert orders[solver] > orders["ddim"] + 0.5, orders
        assert errors[solver][-1] < errors["ddim"][-1] / 3, errors


def test_dpmpp_3m_d2_weight_is_diffusers():
    # x̂0(λ) = λ² (independent of x): exact x_t = (σ_t/σ_s)x_s + σ_t ∫ e^λ λ² dλ. A third-order
    # rule integrates it exactly; with diffusers' D2 weight 3M does not, with twice it does.
    lam = [-1.0, -0.6, -0.1, 0.3]  # non-uniform steps
    a = [1 / (1 + math.exp(-2 * v)) for v in lam]
    c = solver_coefficients("dpmpp_3m", a[:3], a[1:])[2]  # order 1 here (last of 3 steps):
    c = c._replace(order=3, r0=0.5 / 0.4, r1=0.4 / 0.4)  # use it as an interior 3M step
    sigma = [math.sqrt(1 - v) for v in a]
    F = lambda v: math.exp(v) * (v * v - 2 * v + 2)  # noqa: E731  (∫ e^λ λ² dλ)
    x = torch.tensor([0.7], **F64)
    exact = sigma[3] / sigma[2] * x + sigma[3] * (F(lam[3]) - F(lam[2]))
    history = [torch.tensor([v * v], **F64) for v in (lam[2], lam[1], lam[0])]
    assert abs((dpmpp_3m_update(x, history, c) - exact).item()) > 1e-3
    doubled = c._replace(h_phi_3=2 * c.h_phi_3)
    torch.testing.assert_close(dpmpp_3m_update(x, history, doubled), exact, rtol=0,
                               atol=1e-14)


@pytest.mark.parametrize("final_alpha", ["one", "first"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_coefficients_finite_hashable_float64(solver, final_alpha, schedule):
    a_t, a_next = schedule.alpha_bars(schedule.timesteps(6, "trailing"), final_alpha)
    coeffs = solver_coefficients(solver, a_t, a_next)
    assert coeffs == solver_coefficients(solver, tuple(a_t.tolist()), tuple(a_next.tolist()))
    assert hash(coeffs) == hash(solver_coefficients(solver, a_t, a_next))
    for c in coeffs:
        values = [v for name, v in c._asdict().items() if name not in ("solver", "h", "rho_c")]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), c
        assert all(math.isfinite(v) for v in c.rho_c)
    last = coeffs[-1]
    if final_alpha == "one":  # onto σ=0: x = x̂0, written with finite ratios
        assert (last.h, last.sigma_ratio, last.exp_neg_h, last.h_phi_1) == (math.inf, 0, 0, 1)
        assert last.alpha_next == 1 and last.noise_scale == 0
    else:
        assert math.isfinite(last.h) and (last.noise_scale > 0) == (solver == "dpmpp_2m_sde")


def test_phi_coefficients_are_accurate_for_tiny_steps():
    # h·φ_2(-h) = 1 - (1-e^{-h})/h and h·φ_3(-h) cancel catastrophically as h → 0 (series)
    (c,) = solver_coefficients("dpmpp_2m", [0.5], [0.5 + 1e-9])
    assert c.h == pytest.approx(2e-9, rel=1e-6)
    assert c.h_phi_1 == pytest.approx(c.h, rel=1e-8)
    assert c.h_phi_2 == pytest.approx(c.h / 2, rel=1e-8)
    assert c.h_phi_3 == pytest.approx(c.h / 6, rel=1e-8)


def test_zero_terminal_snr_start_is_finite(schedule):
    # ᾱ = 0 at the first point (λ = -∞): the first step is DDIM's x_1 = σ_1·x_0 + α_1·x̂0, and
    # r0 = ∞ makes the next step's difference term vanish instead of dividing ∞ by ∞.
    zsnr = schedule.rescale_zero_terminal_snr()
    a_t, a_next = zsnr.alpha_bars(zsnr.timesteps(6, "trailing"))
    assert a_t[0] == 0
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), **F64)
    for solver in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        coeffs = solver_coefficients(solver, a_t, a_next)
        assert coeffs[0].sigma_ratio == pytest.approx(math.sqrt(1 - a_next[0]), rel=1e-15)
        stepper, y = MultistepStepper(coeffs), x
        for i in range(6):
            y = stepper(i, y, 0.1 * y + 0.2)  # any x̂0 rule
            assert torch.isfinite(y).all()


def test_dtypes_shapes_and_noise_draws(schedule):
    a_t, a_next = schedule.alpha_bars(schedule.timesteps(5, "trailing"))

    def no_noise():
        raise AssertionError("a deterministic solver drew noise")

    for solver in ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc"):
        stepper = MultistepStepper(solver_coefficients(solver, a_t, a_next), noise=no_noise)
        x = torch.randn(3, 7)  # any (B, ...) shape; float32 state, float64 x̂0
        for i in range(5):
            x = stepper(i, x, x.double() * 0.5)
            assert x.dtype == torch.float32 and x.shape == (3, 7)
    draws = []
    stepper = MultistepStepper(solver_coefficients("dpmpp_2m_sde", a_t, a_next),
                               noise=lambda: draws.append(1) or torch.randn(3, 7, **F64))
    x = torch.randn(3, 7, **F64)
    for i in range(5):
        x = stepper(i, x, x * 0.5)
    assert len(draws) == 4 and x.dtype == torch.float64  # no draw on the step onto ᾱ=1


def test_errors_name_the_parameter_and_the_allowed_values(schedule):
    a_t, a_next = schedule.alpha_bars(schedule.timesteps(4, "trailing"))
    with pytest.raises(ValueError, match=r"solver must be one of \('ddim', 'dpmpp_2m', "
                                         r"'dpmpp_3m', 'unipc', 'dpmpp_2m_sde'\), got 'dpm'"):
        solver_coefficients("dpm", a_t, a_next)
    with pytest.raises(ValueError, match="same length"):
        solver_coefficients("dpmpp_2m", a_t, a_next[:-1])
    with pytest.raises(ValueError, match=r"alpha_bar_next\[0\] must equal alpha_bar_t\[1\]"):
        solver_coefficients("dpmpp_2m", a_t, torch.cat([a_next[:1] * 0.99, a_next[1:]]))
    with pytest.raises(ValueError, match="step 3: need 0 <= alpha_bar_t < alpha_bar_next"):
        solver_coefficients("dpmpp_2m", a_t, torch.cat([a_next[:3], a_t[3:]]))
    with pytest.raises(TypeError, match="alpha_bar_t must be a sequence of real numbers"):
        solver_coefficients("dpmpp_2m", "0.1", a_next)
    coeffs = solver_coefficients("dpmpp_2m_sde", a_t, a_next)
    with pytest.raises(ValueError, match="noise is required for solver 'dpmpp_2m_sde'"):
        MultistepStepper(coeffs)
    with pytest.raises(TypeError, match="StepCoefficients"):
        MultistepStepper([(1, 2)])
    with pytest.raises(ValueError, match="one solver"):
        MultistepStepper(coeffs[:2] + solver_coefficients("unipc", a_t, a_next)[2:])
    stepper = MultistepStepper(solver_coefficients("unipc", a_t, a_next))
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="step index i must be 0"):
        stepper(1, x, x)
    with pytest.raises(TypeError, match="x must be float32 or float64, got torch.float16"):
        stepper(0, x.half(), x.half())
    with pytest.raises(ValueError, match=r"pred_x0 must have x's shape \(2, 3\)"):
        stepper(0, x, x[:1])
    assert isinstance(coeffs[0], StepCoefficients)
