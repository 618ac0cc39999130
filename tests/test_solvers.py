"""The solvers' mathematics: the registry's coefficients and pure updates (ddim.maths), run by
their steppers on given data predictions. Step-for-step agreement with diffusers' multistep
schedulers in float64, DDIM as the first-order case, iPNDM against an independent float64
Adams–Bashforth, convergence on the closed-form Gaussian oracle, exactness of the true
third-order 3M, and the errors.

The stepper is driven with prediction_type "sample", so that the model output it is given is
the data prediction x̂0 itself.
"""

import copy
import math

import pytest
import torch

from ddim.maths.ddim_step import ddim_step
from ddim.maths.dpm_solver import dpmpp_3m_true_update, dpmpp_3m_update, first_order_update
from ddim.maths.grids import grid_levels, timesteps
from ddim.maths.ipndm import ADAMS_BASHFORTH, ipndm_steps
from ddim.maths.log_snr import check_levels, log_snr_steps
from ddim.sampling.solvers import SOLVERS, solver_help, solver_table
from ddim.sampling.steppers import X0Processing
from ddim.testing import GaussianMixture
from tests.float64_diffusers import float64_levels, float64_step

F64 = dict(dtype=torch.float64)
SHAPE = (2, 1, 8, 8)  # the tiny UNet's input
DIFFUSERS = ["dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde"]  # solvers diffusers also has
ODE_SOLVERS = [s for s in SOLVERS if not SOLVERS[s].stochastic]


def coefficients(solver, a_t, a_next, prediction_type="sample"):
    """The registry entry's per-step coefficients along the levels a_t, a_next."""
    return SOLVERS[solver].coefficients(
        torch.as_tensor(a_t, **F64), torch.as_tensor(a_next, **F64), eta=0.0,
        sigma_hat=False, prediction_type=prediction_type, fuse=True)


def make_stepper(solver, a_t, a_next, noise=None):
    """A stepper of ``solver`` whose model output is x̂0 (prediction_type "sample")."""
    entry = SOLVERS[solver]
    levels = tuple(float(a) for a in a_t)
    step = entry.stepper(entry, coefficients(solver, a_t, a_next), levels, "sample",
                         X0Processing(), noise)
    return lambda i, x, pred_x0: step(i, x, pred_x0, False).prev_sample


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
    models = {"oracle": lambda x, t: oracle(x, t.reshape(1).expand(x.shape[0]))}
    if tiny_unet is not None:
        unet = copy.deepcopy(tiny_unet).double()  # a random-init UNet predicts whatever

        def run_unet(x, t):
            with torch.no_grad():
                return unet(x, t).sample

        models["unet"] = run_unet
    return models


def _run_both(solver, steps, prediction_type, final_sigmas_type, model, schedule):
    """Drive diffusers' scheduler and our stepper, both in float64, with the same model;
    returns the worst max|ours - theirs| / max|theirs| over all intermediate samples."""
    sched = _scheduler(solver, prediction_type, final_sigmas_type)
    sched.set_timesteps(steps)
    float64_levels(sched, schedule.alphas_cumprod)
    float64_step(sched)
    t_grid = sched.timesteps
    final_alpha = "one" if final_sigmas_type == "zero" else "first"
    a_t, a_next = grid_levels(schedule, t_grid, final_alpha)
    # diffusers draws the SDE noise on every step (×0 on a step onto σ=0); ours only where
    # the noise scale is > 0, so twin generators stay in step
    gen_theirs, gen_ours = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    stepper = make_stepper(solver, a_t, a_next,
                           noise=lambda: torch.randn(SHAPE, generator=gen_ours).double())
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), **F64)
    theirs, ours, worst = x_T.clone(), x_T.clone(), 0.0
    for i, t in enumerate(t_grid):
        extra = {}
        if solver == "dpmpp_2m_sde":
            extra = dict(variance_noise=torch.randn(SHAPE, generator=gen_theirs).double())
        theirs = sched.step(model(theirs, t), t, theirs, **extra).prev_sample
        ours = stepper(i, ours, _pred_x0(ours, model(ours, t), a_t[i], prediction_type))
        assert ours.dtype == torch.float64 and theirs.dtype == torch.float64
        worst = max(worst, (ours - theirs).abs().max().item() / theirs.abs().max().item())
    return worst


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [5, 10, 25])
@pytest.mark.parametrize("solver", DIFFUSERS)
def test_agrees_with_diffusers_step_for_step(solver, steps, prediction_type, tiny_unet,
                                             schedule):
    """The same formulas, both sides in float64 (tests/float64_diffusers.py). Measured worst
    relative difference over all intermediate samples: at most 3e-14 for every solver, S and
    prediction type, on the oracle and on a random-init UNet."""
    for name, model in _models(tiny_unet, schedule, prediction_type).items():
        worst = _run_both(solver, steps, prediction_type, "zero", model, schedule)
        assert worst <= 1e-9, (name, worst)


@pytest.mark.parametrize("steps", [10, 20])  # below and above diffusers' "< 15 steps" rule
@pytest.mark.parametrize("solver", DIFFUSERS)
def test_agrees_with_diffusers_final_sigma_min(solver, steps, schedule):
    """final_alpha="first" (last step onto ᾱ(0)) is diffusers' final_sigmas_type="sigma_min".
    Both in float64 on our schedule; measured: at most 2e-14."""
    model = _models(None, schedule, "epsilon")["oracle"]
    assert _run_both(solver, steps, "epsilon", "sigma_min", model, schedule) <= 1e-9


@pytest.mark.parametrize("solver,steps,expected", [
    ("dpmpp_2m", 5, [1, 2, 2, 2, 1]),
    ("dpmpp_3m", 5, [1, 2, 3, 2, 1]),
    ("dpmpp_3m", 16, [1, 2] + [3] * 13 + [1]),  # ≥ 15 steps: only the step onto ᾱ=1 drops
    ("dpmpp_3m_true", 5, [1, 2, 3, 2, 1]),  # the same rules as dpmpp_3m
    ("unipc", 5, [1, 2, 2, 2, 1]),
    ("dpmpp_2m_sde", 3, [1, 2, 1]),
    ("ipndm", 6, [1, 2, 3, 4, 4, 4]),  # warm-up only
    ("ipndm_v", 3, [1, 2, 3]),
])
def test_orders_follow_the_lower_order_rules(solver, steps, expected, schedule):
    a_t, a_next = grid_levels(schedule, timesteps(schedule, steps, "trailing"))
    assert [c.order for c in coefficients(solver, a_t, a_next)] == expected


def test_orders_when_the_last_step_lands_on_alpha_bar_0(schedule):
    a_t, a_next = grid_levels(schedule, timesteps(schedule, 16, "trailing"), "first")
    orders = [c.order for c in coefficients("dpmpp_3m", a_t, a_next)]
    assert orders[-2:] == [3, 3]  # sigma_min and ≥ 15 steps: no lower-order final steps
    orders = [c.order for c in coefficients("unipc", a_t, a_next)]
    assert orders[-2:] == [2, 1]  # UniPC: min(order, S - i) whatever the end and S


@pytest.mark.parametrize("a_t,a_next", [(4e-5, 0.02), (0.3, 0.7), (0.9, 0.9999), (0.5, 1.0)])
def test_first_order_update_is_ddim_eta0(a_t, a_next):
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 2, 5, generator=g, **F64), torch.randn(3, 2, 5, generator=g, **F64)
    ddim_next = ddim_step(x, eps, a_t, a_next).prev_sample
    (c,) = log_snr_steps([a_t], [a_next], [1])
    pred_x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    torch.testing.assert_close(first_order_update(x, [pred_x0], c), ddim_next, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "ipndm"])
def test_first_order_runs_are_ddim_eta0_on_a_whole_grid(solver, schedule):
    """DDIM's stepper, and the first-order update of the others (max_order 1: every step of
    a 1-step-history run), against ddim_step on the oracle: the same Euler step."""
    mixture = GaussianMixture(torch.randn(2, 1, 3, 3, **F64), 0.4)
    a_t, a_next = grid_levels(schedule, timesteps(schedule, 8, "trailing"))
    ours = ref = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(2), **F64)
    steps = (coefficients(solver, a_t, a_next) if solver == "ddim" else
             log_snr_steps(a_t.tolist(), a_next.tolist(), [1] * 8) if solver == "dpmpp_2m" else
             ipndm_steps(a_t.tolist(), a_next.tolist(), max_order=1))
    entry = SOLVERS[solver]
    stepper = entry.stepper(entry, steps, tuple(a_t.tolist()), "sample", X0Processing(), None)
    for i in range(8):
        eps = mixture.eps(ours, a_t[i])
        ours = stepper(i, ours, (ours - (1 - a_t[i]).sqrt() * eps) / a_t[i].sqrt(),
                       False).prev_sample
        ref = ddim_step(ref, mixture.eps(ref, a_t[i]), a_t[i], a_next[i]).prev_sample
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- iPNDM: Adams–Bashforth
def _adams_bashforth(eps_fn, x_T, a_t, a_next, variable):
    """An independent float64 Adams–Bashforth in x̄ = x/α, σ̄ = σ/α: at step i with k =
    min(4, i+1) past ε's, x̄ += Δσ̄·Σ b_j ε_{i-j}, b the equal-step weights, or (variable) the
    integral of the Lagrange polynomial through (σ̄_{i-j}, ε_{i-j}) over [σ̄_i, σ̄_{i+1}],
    computed here by 8-point Gauss–Legendre quadrature of the interpolant."""
    sb = [math.sqrt((1 - a) / a) for a in a_t] + [math.sqrt((1 - a_next[-1]) / a_next[-1])]
    nodes, weights = (torch.tensor(v, **F64) for v in _gauss_legendre(8))
    xbar, history = x_T / math.sqrt(a_t[0]), []
    for i in range(len(a_t)):
        history.insert(0, eps_fn(xbar * math.sqrt(a_t[i]), a_t[i]))
        k = min(4, i + 1)
        lo, hi = sb[i], sb[i + 1]
        if variable and k > 1:
            s = (hi - lo) / 2 * nodes + (hi + lo) / 2  # quadrature points in [σ̄_{i+1}, σ̄_i]
            past = sb[i - k + 1:i + 1][::-1]
            total = 0
            for j in range(k):
                basis = torch.ones_like(s)
                for m in range(k):
                    if m != j:
                        basis = basis * (s - past[m]) / (past[j] - past[m])
                total = total + (weights * basis).sum() / 2 * history[j]
            xbar = xbar + (hi - lo) * total
        else:
            xbar = xbar + (hi - lo) * sum(b * e for b, e in zip(ADAMS_BASHFORTH[k - 1],
                                                               history, strict=False))
    return xbar * math.sqrt(a_next[-1])


def _gauss_legendre(n):
    import numpy as np

    return np.polynomial.legendre.leggauss(n)


@pytest.mark.parametrize("solver", ["ipndm", "ipndm_v"])
def test_ipndm_is_adams_bashforth_on_uneven_grids(solver, schedule):
    """Both iPNDMs against the independent float64 Adams–Bashforth above, on the oracle, on an
    uneven explicit grid and on a karras grid, onto ᾱ = 1 and onto ᾱ(0). Measured: at most
    4e-15 of the sample's scale."""
    mixture = GaussianMixture(torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(4),
                                          **F64), 0.3)
    x_T = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(5), **F64)
    for grid in (torch.tensor([999, 870, 610, 402, 300, 121, 60, 9]),
                 timesteps(schedule, 7, "karras")):
        for final_alpha in ("one", "first"):
            a_t, a_next = grid_levels(schedule, grid, final_alpha)
            stepper, x = make_stepper(solver, a_t, a_next), x_T
            for i in range(len(grid)):
                eps = mixture.eps(x, a_t[i])
                x = stepper(i, x, (x - (1 - a_t[i]).sqrt() * eps) / a_t[i].sqrt())
            ref = _adams_bashforth(lambda y, a: mixture.eps(y, torch.tensor(a, **F64)), x_T,
                                   a_t.tolist(), a_next.tolist(), solver == "ipndm_v")
            assert (x - ref).abs().max() <= 1e-12 * ref.abs().max(), (solver, final_alpha)


def test_ipndm_v_has_the_fixed_weights_on_equal_steps():
    sb = [3.0, 2.5, 2.0, 1.5, 1.0]  # equal steps in σ̄
    a = [1 / (1 + s * s) for s in sb]
    steps = ipndm_steps(a[:-1], a[1:], variable=True)
    fixed = ipndm_steps(a[:-1], a[1:], variable=False)
    for c, f in zip(steps, fixed, strict=True):
        assert c.eps_weights == pytest.approx(f.eps_weights, rel=1e-13, abs=1e-15)


# ---------------------------------------------------------------- convergence on the oracle
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
            stepper, x = make_stepper(solver, a_t, a_next), x_T
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
    2M 1.96 (1.89, 1.98, 1.99), 3M 2.20 (2.43, 2.15, 2.05), 3M true 3.99 (3.98, 4.00, 3.98),
    UniPC 2.96 (2.87, 2.98, 3.02), iPNDM 2.06 (2.10, 2.05, 2.02), iPNDM-v 3.41 (3.01, 3.48,
    3.73).

    dpmpp_3m converges at order 2, not 3, even from exact starting values: its D2 term
    carries h·φ_3(-h) while D2 ≈ h²x̂0''/2, half the weight of a third-order rule (diffusers'
    and the DPM-Solver reference code's coefficient, kept for step-for-step agreement);
    dpmpp_3m_true has the full weight (and on this smooth oracle even reaches order 4).
    iPNDM's fixed weights are those of equal steps in σ̄; on a λ-uniform grid the σ̄ steps
    shrink geometrically and the fixed weights leave it second order; iPNDM-v's variable
    weights tend to its fourth order.
    """
    a0, a1 = float(schedule.alphas_cumprod[999]), float(schedule.alphas_cumprod[0])
    lam0, lam1 = (0.5 * math.log(a / (1 - a)) for a in (a0, a1))

    def grid(steps):
        lam = [lam0 + (lam1 - lam0) * k / steps for k in range(steps + 1)]
        a = [1 / (1 + math.exp(-2 * v)) for v in lam]
        return a[:-1], a[1:]

    steps_list = (20, 40, 80, 160)
    errors = _final_errors(schedule, ODE_SOLVERS, grid, steps_list)
    orders = {s: _fitted_order(steps_list, e) for s, e in errors.items()}
    assert 0.9 < orders["ddim"] < 1.1, orders
    assert 1.8 < orders["dpmpp_2m"] < 2.2, orders
    assert 1.8 < orders["dpmpp_3m"] < 2.6, orders
    assert 2.8 <= orders["dpmpp_3m_true"] < 4.3, orders
    assert 2.7 < orders["unipc"] < 3.3, orders
    assert 1.8 < orders["ipndm"] < 2.4, orders
    assert 3.2 < orders["ipndm_v"] < 4.3, orders


def test_convergence_to_the_clean_sample_on_trailing_grids(schedule):
    """The sampler's default end: trailing grids onto ᾱ = 1, S = 5, 10, 20, 40. Fitted orders
    (measured): DDIM 0.91, 2M 2.62, 3M 1.70, UniPC 2.20; errors at S = 40: 1.1e-1, 2.8e-3,
    2.3e-2, 7.3e-3. The last step x = x̂0 from t = T/S - 1 is first order for the log-SNR
    solvers, with an error of about σ̄²/(2s²)·|x̄ - μ| (σ̄² = (1-ᾱ)/ᾱ there, s the data std), so
    these slopes mix the solvers' own order with that step's and with cancellation between
    them (2M's error grows again at S = 80); the λ-uniform test measures the orders cleanly.
    """
    steps_list = (5, 10, 20, 40)

    def grid(steps):
        a_t, a_next = grid_levels(schedule, timesteps(schedule, steps, "trailing"))
        return a_t.tolist(), a_next.tolist()

    errors = _final_errors(schedule, ODE_SOLVERS, grid, steps_list)
    orders = {s: _fitted_order(steps_list, e) for s, e in errors.items()}
    assert 0.8 < orders["ddim"] < 1.1, orders
    for solver in ODE_SOLVERS[1:]:
        assert orders[solver] > orders["ddim"] + 0.5, orders
        assert errors[solver][-1] < errors["ddim"][-1] / 3, errors


def test_true_third_order_3m_integrates_a_quadratic_data_prediction_exactly():
    """x̂0(λ) = λ² (independent of x): exact x_t = (σ_t/σ_s)x_s + σ_t ∫ e^λ λ² dλ. A
    third-order rule with a full history integrates it exactly; dpmpp_3m (diffusers' D2
    weight) is off by 1e-3, dpmpp_3m_true agrees to rounding. The same two solvers through
    their steppers on a whole grid: after the warm-up every step of dpmpp_3m_true is exact
    (to rounding: 1 - ᾱ loses digits as ᾱ -> 1), every step of dpmpp_3m off."""
    lam = [-1.0, -0.6, -0.1, 0.3]  # non-uniform steps
    a = [1 / (1 + math.exp(-2 * v)) for v in lam]
    (c,) = log_snr_steps(a[2:3], a[3:4], [1])  # the step λ = -0.1 -> 0.3, as a 3M step:
    c = c._replace(order=3, r0=0.5 / 0.4, r1=0.4 / 0.4)  # h = 0.4, past steps 0.5 and 0.4
    sigma = [math.sqrt(1 - v) for v in a]
    F = lambda v: math.exp(v) * (v * v - 2 * v + 2)  # noqa: E731  (∫ e^λ λ² dλ)
    x = torch.tensor([0.7], **F64)
    exact = sigma[3] / sigma[2] * x + sigma[3] * (F(lam[3]) - F(lam[2]))
    history = [torch.tensor([v * v], **F64) for v in (lam[2], lam[1], lam[0])]
    assert abs((dpmpp_3m_update(x, history, c) - exact).item()) > 1e-3
    torch.testing.assert_close(dpmpp_3m_true_update(x, history, c), exact, rtol=0, atol=1e-14)

    # 19 uneven steps (S ≥ 15: full order to the end), λ in [-2.5, 5.1] as on DDPM grids
    lam = [-2.5 + 0.25 * k + 0.008 * k * k for k in range(20)]
    a = [1 / (1 + math.exp(-2 * v)) for v in lam]
    sigma = [math.sqrt(1 - v) for v in a]
    for solver, off in (("dpmpp_3m", True), ("dpmpp_3m_true", False)):
        stepper, y = make_stepper(solver, a[:-1], a[1:]), torch.tensor([0.7], **F64)
        orders = [c.order for c in coefficients(solver, a[:-1], a[1:])]
        errors = []
        for i in range(19):
            exact = sigma[i + 1] / sigma[i] * y + sigma[i + 1] * (F(lam[i + 1]) - F(lam[i]))
            y = stepper(i, y, torch.tensor([lam[i] ** 2], **F64))
            if orders[i] == 3:
                errors.append(abs((y - exact).item()) / abs(exact.item()))
        # measured: dpmpp_3m 6.1e-4 .. 1.2e-2, dpmpp_3m_true at most 5.3e-13 (rounding)
        assert (min(errors) > 1e-5) if off else (max(errors) < 1e-10), (solver, errors)


# ---------------------------------------------------------------- the coefficients
@pytest.mark.parametrize("final_alpha", ["one", "first"])
@pytest.mark.parametrize("solver", [s for s in SOLVERS if s != "ddim"])
def test_coefficients_finite_hashable_float64(solver, final_alpha, schedule):
    a_t, a_next = grid_levels(schedule, timesteps(schedule, 6, "trailing"), final_alpha)
    coeffs = coefficients(solver, a_t, a_next)
    assert coeffs == coefficients(solver, tuple(a_t.tolist()), tuple(a_next.tolist()))
    assert hash(coeffs) == hash(coefficients(solver, a_t, a_next))
    for c in coeffs:
        values = [v for name, v in c._asdict().items() if name != "h"]
        flat = [w for v in values for w in (v if isinstance(v, tuple) else (v,))]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in flat), c
    last = coeffs[-1]
    assert (last.noise_scale > 0) == (solver == "dpmpp_2m_sde" and final_alpha == "first")
    if final_alpha == "one" and SOLVERS[solver].data == "x0":  # onto σ=0: x = x̂0
        assert (last.h, last.sigma_ratio, last.exp_neg_h, last.h_phi_1) == (math.inf, 0, 0, 1)
        assert last.alpha_next == 1


def test_phi_coefficients_are_accurate_for_tiny_steps():
    # h·φ_2(-h) = 1 - (1-e^{-h})/h and h·φ_3(-h) cancel catastrophically as h → 0 (series)
    (c,) = log_snr_steps([0.5], [0.5 + 1e-9], [1])
    assert c.h == pytest.approx(2e-9, rel=1e-6)
    assert c.h_phi_1 == pytest.approx(c.h, rel=1e-8)
    assert c.h_phi_2 == pytest.approx(c.h / 2, rel=1e-8)
    assert c.h_phi_3 == pytest.approx(c.h / 6, rel=1e-8)


def test_zero_terminal_snr_start_is_finite(schedule):
    # ᾱ = 0 at the first point (λ = -∞, σ̄ = ∞): the first step is DDIM's x_1 = σ_1·x_0 +
    # α_1·x̂0; for the log-SNR solvers r0 = ∞ makes the next step's difference term vanish,
    # iPNDM starts its warm-up again
    zsnr = schedule.rescale_zero_terminal_snr()
    a_t, a_next = grid_levels(zsnr, timesteps(zsnr, 6, "trailing"))
    assert a_t[0] == 0
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), **F64)
    for solver in ODE_SOLVERS[1:]:
        stepper, y = make_stepper(solver, a_t, a_next), x
        first = 0.1 * x + 0.2
        y = stepper(0, y, first)
        torch.testing.assert_close(y, math.sqrt(1 - a_next[0]) * x + math.sqrt(a_next[0]) * first,
                                   rtol=1e-13, atol=1e-14)
        for i in range(1, 6):
            y = stepper(i, y, 0.1 * y + 0.2)  # any x̂0 rule
            assert torch.isfinite(y).all(), solver
    assert [c.order for c in coefficients("ipndm", a_t, a_next)] == [1, 1, 2, 3, 4, 4]


def test_dtypes_shapes_and_noise_draws(schedule):
    a_t, a_next = grid_levels(schedule, timesteps(schedule, 5, "trailing"))

    def no_noise():
        raise AssertionError("a deterministic solver drew noise")

    for solver in ODE_SOLVERS:
        stepper = make_stepper(solver, a_t, a_next, noise=no_noise)
        x = torch.randn(3, 7)  # any (B, ...) shape; float32 state, float64 x̂0
        for i in range(5):
            x = stepper(i, x, x.double() * 0.5)
            assert x.dtype == torch.float32 and x.shape == (3, 7)
    draws = []
    stepper = make_stepper("dpmpp_2m_sde", a_t, a_next,
                           noise=lambda: draws.append(1) or torch.randn(3, 7, **F64))
    x = torch.randn(3, 7, **F64)
    for i in range(5):
        x = stepper(i, x, x * 0.5)
    assert len(draws) == 4 and x.dtype == torch.float64  # no draw on the step onto ᾱ=1


def test_the_readme_table_and_the_help_come_from_the_registry():
    table = solver_table()
    assert table.count("\n") == len(SOLVERS) + 1
    for name, entry in SOLVERS.items():
        assert f"| `{name}` | {entry.max_order} | {entry.method} |" in table
        assert f"{name}: {entry.method}" in solver_help()
    readme = (__import__("pathlib").Path(__file__).parents[1] / "README.md").read_text()
    assert table in readme, "README's solver table: paste ddim.sampling.solvers.solver_table()"


def test_errors_name_the_parameter_and_the_allowed_values(schedule):
    a_t, a_next = grid_levels(schedule, timesteps(schedule, 4, "trailing"))
    with pytest.raises(ValueError, match="same length"):
        check_levels(a_t, a_next[:-1])
    with pytest.raises(ValueError, match=r"alpha_bar_next\[0\] must equal alpha_bar_t\[1\]"):
        check_levels(a_t, torch.cat([a_next[:1] * 0.99, a_next[1:]]))
    with pytest.raises(ValueError, match="step 2: need 0 <= alpha_bar_t < alpha_bar_next"):
        check_levels(a_t, torch.cat([a_next[:2], a_t[2:3], a_next[3:]]))
    with pytest.raises(TypeError, match="alpha_bar_t must be a sequence of real numbers"):
        check_levels("0.1", a_next)
    with pytest.raises(ValueError, match=r"max_order must lie in \[1, 4\], got 5"):
        ipndm_steps(a_t, a_next, max_order=5)
    stepper = make_stepper("unipc", a_t, a_next)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="step index i must be 0"):
        stepper(1, x, x)
    sde = make_stepper("dpmpp_2m_sde", a_t, a_next)  # no noise source
    with pytest.raises(ValueError, match="step 0 draws noise but this stepper has no noise"):
        sde(0, x, x)
