"""Inversion on the closed-form Gaussian-mixture model: plain DDIM converges with S, the
implicit (fixed-point) inversion reconstructs almost exactly."""

import pytest
import torch

import ddim
from ddim.testing import GaussianMixture

SCHED = ddim.NoiseSchedule.linear()
MIX = GaussianMixture(torch.tensor([[[0.5, -1.0]], [[-1.0, 1.0]]]),
                      torch.tensor([[[0.3, 0.7]], [[0.5, 0.5]]]))
MODEL = MIX.model(SCHED)
X0 = MIX.sample(100, torch.Generator().manual_seed(0))


def _mse(x_T, steps):
    return (ddim.sample(MODEL, steps, x_T=x_T) - X0).square().mean().item()


def test_plain_inversion_round_trip_converges_with_steps():
    errors = [_mse(ddim.invert(MODEL, X0, s), s) for s in (10, 20, 50, 100)]
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < errors[0] / 20


@pytest.mark.parametrize("steps", [10, 20])
def test_fixed_point_inversion_reconstructs_where_plain_does_not(steps):
    plain = ddim.sample(MODEL, steps, x_T=ddim.invert(MODEL, X0, steps))
    x_T = ddim.invert(MODEL, X0, steps, method="fixed_point", max_iters=10, tol=1e-9)
    implicit = ddim.sample(MODEL, steps, x_T=x_T)
    assert (plain - X0).abs().max() > 1e-2
    assert (implicit - X0).abs().max() <= 1e-6


def test_anderson_beats_plain_iteration_per_model_call():
    calls = {}

    def counted(tag):
        def fn(x, t):
            calls[tag] = calls.get(tag, 0) + 1
            return MODEL(x, t)
        return fn

    plain = _mse(ddim.invert(counted("plain"), X0, 10, method="fixed_point", max_iters=5,
                             anderson=0, tol=0), 10)
    mixed = _mse(ddim.invert(counted("anderson"), X0, 10, method="fixed_point", max_iters=5,
                             anderson=2, tol=0), 10)
    assert calls["plain"] == calls["anderson"] == 10 * 6  # 1 + 5 calls per step
    assert mixed < plain / 100


def test_tolerance_stops_early():
    calls = []

    def fn(x, t):
        calls.append(1)
        return MODEL(x, t)

    ddim.invert(fn, X0, 10, method="fixed_point", max_iters=50, tol=1e-6)
    assert len(calls) < 10 * 20


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="newton"), r"method must be one of \('ddim', 'fixed_point'\)"),
    (dict(max_iters=0), r"max_iters must be an integer >= 1, got 0"),
    (dict(tol=-1.0), r"tol must be a finite number >= 0.0, got -1.0"),
    (dict(anderson=-1), r"anderson must be an integer >= 0, got -1"),
])
def test_bad_inversion_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddim.invert(MODEL, X0, 10, **kwargs)


def test_non_finite_image_is_refused():
    bad = X0.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x0 contains NaN or inf"):
        ddim.invert(MODEL, bad, 10)


def test_a_multistep_inversion_reconstructs_better_than_plain_ddim():
    """30 held-out digits, S = 10, the trailing grid, encoded and decoded with one solver:
    dpmpp_2m and dpmpp_3m_true halve plain DDIM's round-trip MSE or better (measured over the
    300 held-out digits by benchmarks/beyond.py --only inversion-solvers: DDIM 1.53e-2,
    dpmpp_2m 6.51e-3, dpmpp_3m_true 8.11e-3)."""
    pytest.importorskip("sklearn")
    from ddim.evaluation.digits import digits_split

    model, x0 = ddim.load_pretrained("digits"), digits_split()[2][:30]

    def round_trip(solver):
        x_T = ddim.invert(model, x0, 10, solver=solver)
        return (ddim.sample(model, 10, x_T=x_T, solver=solver) - x0).square().mean().item()

    plain = round_trip("ddim")
    for solver in ("dpmpp_2m", "dpmpp_3m_true"):
        assert round_trip(solver) < plain / 1.5, solver
