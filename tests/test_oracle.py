"""The sampler against exact oracles: the optimal ε of Gaussian(-mixture) data.

``ddim.testing.GaussianMixture`` supplies the ε that minimises the DDPM loss for such data, so
every error left is the sampler's own:

- η=0 is Euler's method for the probability-flow ODE, whose map a single Gaussian has in closed
  form: the error must halve when S doubles (first order).
- A model returning the very ε that built x_T puts every step on the line through x0: DDIM must
  return x0 to rounding, for every grid.
- Sample means, variances and mixture weights converge to the truth as S grows (η=0, η=1, the
  paper's σ̂ variant, and η=1 with S=T, i.e. ancestral DDPM), and η=1 from a fixed x_t samples
  the posterior q(x0 | x_t) (which η=0 cannot: it is deterministic).
- ε, x0 ("sample") and v outputs of the same oracle give the same trajectory.

Everything runs in float64 with fixed generators. x_T is drawn from the exact marginal
q(x_T) at the grid's first level, so that no prior mismatch hides in the results. The 20 000
sample checks were sized by experiment: at the small S the variance is off by 20-50 standard
errors, at the large S every statistic lands within 3 SE (five seeds tried per case, against a
limit of 4). Mutations of the core that this file was checked to catch (by 7-100 SE where
statistical): noise scaled by 1.2, by sqrt(2) or dropped, η ignored, noise reused across
steps, the ε̂ coefficient not shrunk by σ², ᾱ_prev taken one training step back instead of at
the next grid point, the final step omitted or ending at ᾱ_0 instead of 1, wrong x0/v
conversions. Caught only narrowly (~5 SE, by the σ̂ case): σ̂ ignored, and σ missing its
sqrt((1-ᾱ_prev)/(1-ᾱ_t)) factor; exact coefficient tests are the place for those.
"""

import math

import pytest
import torch

import ddim
from ddim.maths.grids import SPACINGS, grid_levels, timesteps
from ddim.testing import GaussianMixture

F64 = torch.float64
SCHED = ddim.NoiseSchedule.linear()  # the DDPM schedule, T=1000, β 1e-4 .. 0.02
# The same continuous schedule on fewer steps (β scaled up): S=T is affordable on them.
SCHED_500 = ddim.NoiseSchedule.linear(500, 2e-4, 0.04)
SCHED_250 = ddim.NoiseSchedule.linear(250, 4e-4, 0.08)

# 1-D, two well separated components of unequal weight and width.
MIXTURE = GaussianMixture(torch.tensor([[-1.5], [1.5]]), torch.tensor([[0.4], [0.5]]),
                          [0.35, 0.65])
N = 20_000
Z_LARGE = 4.0  # "within a few standard errors" for the large S
Z_SIGNIFICANT = 6.0  # a small-S error this large must shrink at the large S


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests make many small float64 ops: a second intra-op thread only adds sync costs
    (10-25x slower where the other core is busy), so run single-threaded and restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _first_alpha(schedule: ddim.NoiseSchedule, steps, spacing: str = "leading") -> float:
    return float(schedule.alpha_bar(int(timesteps(schedule, steps, spacing)[0])))


def _noised(x0: torch.Tensor, alpha_bar: float, gen: torch.Generator) -> torch.Tensor:
    eps = torch.randn(x0.shape, generator=gen, dtype=F64)
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps


# --------------------------------------------------------------------------- flow map
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_eta0_converges_to_the_probability_flow_map_at_first_order(spacing):
    """Euler on the PF-ODE: the max error over 256 starting points halves as S doubles."""
    gauss = GaussianMixture(torch.tensor([[1.0, -0.5]]), torch.tensor([[0.3, 0.7]]))
    model = gauss.model(SCHED)
    x_T = torch.randn(256, 2, generator=_gen(1), dtype=F64)
    errors = []
    for steps in (50, 100, 200):
        out = ddim.sample(model, steps, 0.0, x_T=x_T, schedule=SCHED, spacing=spacing)
        assert out.dtype == F64 and out.shape == x_T.shape
        # exact map from the grid's first level (T-1 for "trailing", T - T/S for "leading")
        exact = gauss.flow_map(x_T, _first_alpha(SCHED, steps, spacing), 1.0)
        errors.append((out - exact).abs().max().item())
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(1.8 <= r <= 2.2 for r in ratios), (errors, ratios)
    assert errors[-1] < 0.05, errors


# --------------------------------------------------------------------------- exact noise
def _true_noise_cases():
    for spacing in SPACINGS:
        for steps in (1, 2, 7, 50):
            yield spacing, steps
    yield "trailing", 1000
    yield "quad", 999


@pytest.mark.parametrize("final_alpha", ["one", "first"])
@pytest.mark.parametrize(("spacing", "steps"), list(_true_noise_cases()))
def test_the_true_noise_returns_x0_exactly(spacing, steps, final_alpha):
    """ε̂ = the ε that built x_T keeps every step on x_t = sqrt(ᾱ)x0 + sqrt(1-ᾱ)ε."""
    gen = _gen(steps)
    x0 = 2 * torch.randn(6, 3, generator=gen, dtype=F64)
    eps = torch.randn(6, 3, generator=gen, dtype=F64)
    grid = timesteps(SCHED, steps, spacing)
    a_t, a_prev = grid_levels(SCHED, grid, final_alpha)
    x_T = a_t[0].sqrt() * x0 + (1 - a_t[0]).sqrt() * eps
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return eps

    outs = list(ddim.sample_iter(model, steps, 0.0, x_T=x_T, schedule=SCHED, spacing=spacing,
                                 final_alpha=final_alpha))
    assert seen == grid.tolist() and len(outs) == steps
    for out, a in zip(outs, a_prev.tolist(), strict=True):
        torch.testing.assert_close(out.pred_x0, x0, rtol=0, atol=1e-10)
        expected = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
        torch.testing.assert_close(out.sample, expected, rtol=0, atol=1e-10)
    if final_alpha == "one":
        assert (outs[-1].sample - x0).abs().max().item() <= 1e-10


# --------------------------------------------------------------------------- prediction types
@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_x0_and_v_oracles_give_the_epsilon_trajectory(prediction_type, eta):
    mix = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), 0.3, [0.4, 0.6])
    x_T = torch.randn(64, 2, generator=_gen(3), dtype=F64)

    def run(ptype):
        return list(ddim.sample_iter(mix.model(SCHED, ptype), 20, eta, x_T=x_T, schedule=SCHED,
                                     prediction_type=ptype, generator=_gen(4)))

    ref, other = run("epsilon"), run(prediction_type)
    assert len(ref) == len(other) == 20
    for a, b in zip(ref, other, strict=True):
        assert a.t == b.t
        for name in ("sample", "pred_x0", "pred_eps"):
            x, y = getattr(a, name), getattr(b, name)
            assert y.dtype == F64
            assert (x - y).abs().max().item() <= 1e-10, (name, a.index)


# --------------------------------------------------------------------------- distributions
def _assigned_to_first(x: torch.Tensor) -> torch.Tensor:
    """Whether each 1-D sample is most responsible to component 0 of the x0 mixture."""
    return MIXTURE.log_responsibilities(x[:, None], torch.tensor(1.0, dtype=F64)).argmax(1) == 0


def _truth(weights, means, variances) -> dict[str, float]:
    """Mean, variance and P(assigned to component 0) of a 1-D Gaussian mixture, by quadrature."""
    weights, means, variances = (torch.as_tensor(v, dtype=F64) for v in
                                 (weights, means, variances))
    mean = (weights * means).sum()
    var = (weights * (variances + means**2)).sum() - mean**2
    x = torch.linspace(-12, 12, 480_001, dtype=F64)
    dens = (weights * torch.exp(-0.5 * (x[:, None] - means) ** 2 / variances)
            / (2 * math.pi * variances).sqrt()).sum(1)
    p0 = torch.trapezoid(dens * _assigned_to_first(x), x)
    return {"mean": mean.item(), "var": var.item(), "w0": p0.item()}


def _errors(x: torch.Tensor, truth: dict[str, float]) -> dict[str, tuple[float, float]]:
    """(estimate - truth, its standard error) for each statistic of 1-D samples x."""
    n = x.numel()
    mean, var = x.mean(), x.var()
    fourth = ((x - mean) ** 4).mean()
    w0 = _assigned_to_first(x).to(F64).mean()
    p = truth["w0"]
    return {
        "mean": ((mean - truth["mean"]).item(), (var / n).sqrt().item()),
        "var": ((var - truth["var"]).item(), ((fourth - var**2) / n).sqrt().item()),
        "w0": ((w0 - p).item(), math.sqrt(p * (1 - p) / n)),
    }


def _check_convergence(small: torch.Tensor, large: torch.Tensor, truth: dict[str, float]):
    """Large S within Z_LARGE SE of the truth; significant small-S errors at least halved."""
    e_small, e_large = _errors(small, truth), _errors(large, truth)
    report = {k: (f"small {e_small[k][0] / e_small[k][1]:+.1f} SE",
                  f"large {e_large[k][0] / e_large[k][1]:+.1f} SE") for k in truth}
    for k in truth:
        (err_s, se_s), (err_l, se_l) = e_small[k], e_large[k]
        assert abs(err_l) <= Z_LARGE * se_l, (k, report)
        if abs(err_s) >= Z_SIGNIFICANT * se_s:
            assert abs(err_l) <= 0.5 * abs(err_s), (k, report)
    # the check has power: at the small S the variance is off by many standard errors
    assert abs(e_small["var"][0]) >= 10 * e_small["var"][1], report


MARGINAL_CASES = {
    # name: (schedule, eta, sigma_hat, spacing, small S, large S)
    "ddim-eta0": (SCHED, 0.0, False, "trailing", 10, 250),
    "ddim-eta1": (SCHED, 1.0, False, "trailing", 10, 500),
    "sigma-hat": (SCHED_250, 1.0, True, "trailing", 10, 125),
    "ddpm-S=T": (SCHED_500, 1.0, False, "leading", 10, 500),
}


@pytest.mark.parametrize("case", list(MARGINAL_CASES))
def test_sample_moments_and_weights_converge_to_the_mixture(case):
    schedule, eta, sigma_hat, spacing, s_small, s_large = MARGINAL_CASES[case]
    model = MIXTURE.model(schedule)

    def draw(steps):
        gen = _gen(0)
        x0 = MIXTURE.sample(N, generator=gen)
        x_T = _noised(x0, _first_alpha(schedule, steps, spacing), gen)
        out = ddim.sample(model, steps, eta, x_T=x_T, schedule=schedule, spacing=spacing,
                          sigma_hat=sigma_hat, generator=gen)
        assert out.dtype == F64 and out.shape == (N, 1)
        return out[:, 0]

    truth = _truth(MIXTURE.weights, MIXTURE.means[:, 0], MIXTURE.stds[:, 0] ** 2)
    assert abs(truth["w0"] - 0.35) < 1e-3  # the components barely overlap
    _check_convergence(draw(s_small), draw(s_large), truth)


def test_eta1_from_a_fixed_x_t_samples_the_posterior():
    """η=1 is ancestral sampling: from one x_t its x0 follow q(x0 | x_t); η=0 gives one point."""
    t0, x_t = 399, -0.13  # ᾱ ≈ 0.195; responsibilities ≈ (0.40, 0.60) there
    a = float(SCHED.alpha_bar(t0))
    s2, mu = MIXTURE.stds[:, 0] ** 2, MIXTURE.means[:, 0]
    resp = MIXTURE.log_responsibilities(torch.tensor([[x_t]], dtype=F64),
                                        torch.tensor(a, dtype=F64)).exp()[0]
    denom = a * s2 + 1 - a  # per component: x0 | x_t ~ N(mu + s²·√ᾱ(x_t - √ᾱ·mu)/denom, ...)
    truth = _truth(resp, mu + s2 * math.sqrt(a) * (x_t - math.sqrt(a) * mu) / denom,
                   s2 * (1 - a) / denom)
    model = MIXTURE.model(SCHED)
    start = torch.full((N, 1), x_t, dtype=F64)

    def draw(steps, eta):
        grid = [round((t0 + 1) * (steps - i) / steps) - 1 for i in range(steps)]
        assert grid[0] == t0
        return ddim.sample(model, x_T=start, schedule=SCHED, timesteps=grid, eta=eta,
                           generator=_gen(0))[:, 0]

    _check_convergence(draw(10, 1.0), draw(200, 1.0), truth)
    deterministic = draw(10, 0.0)
    assert torch.equal(deterministic, deterministic[:1].expand(N))
