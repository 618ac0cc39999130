"""Dynamic thresholding of samples of any size: torch.quantile refuses more than 2^24 values
per call ("quantile() input tensor is too large"), which a 3×2400×2400 image or a short video
clip is over. The quantile is found with two order statistics instead (row_quantile), equal
to torch.quantile's linear interpolation bit for bit where torch can compute it, through every
entry point that processes x̂0 and with every solver."""

import pytest
import torch

import ddim
from ddim.maths.thresholding import process_x0, row_quantile
from ddim.sampling.solvers import SOLVERS


@pytest.mark.parametrize("n", [1, 2, 3, 100, 4097])
@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 0.995, 1.0, 1 / 3])
def test_row_quantile_is_torch_quantile_bit_for_bit(n, q):
    values = torch.randn(4, n, generator=torch.Generator().manual_seed(n)).abs()
    assert torch.equal(row_quantile(values, q), torch.quantile(values, q, dim=1))
    assert torch.equal(row_quantile(values.double(), q),
                       torch.quantile(values.double(), q, dim=1))


def test_row_quantile_beyond_torchs_limit_matches_a_sorted_float64_reference():
    n = 2**24 + 5
    values = torch.rand(1, n, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="quantile\\(\\) input tensor is too large"):
        torch.quantile(values, 0.995, dim=1)
    ordered = values.double().sort(dim=1).values[0]
    rank = 0.995 * (n - 1)
    lo = int(rank)
    want = ordered[lo] + (rank - lo) * (ordered[lo + 1] - ordered[lo])
    assert abs(float(row_quantile(values, 0.995)) - float(want)) <= 1e-7


def test_the_reported_call_runs_and_gives_the_thresholded_x0():
    """4097×4097 zeros ε-model, one step: the result is x̂0 = x_T/sqrt(ᾱ) thresholded: each
    sample scaled by its 0.995 quantile of |x̂0| (clamped to [1, 1])."""
    x_T = torch.randn(1, 1, 4097, 4097, generator=torch.Generator().manual_seed(0))
    out = ddim.sample(lambda x, t: torch.zeros_like(x), 1, x_T=x_T, dynamic_threshold=0.995)
    a = ddim.NoiseSchedule.linear().alpha_bar(999)
    want = process_x0(x_T / a.sqrt().float(), dynamic_threshold=0.995)
    assert out.abs().max() <= 1.0 and torch.equal(out, want)


@pytest.mark.slow  # 6 s per solver
@pytest.mark.parametrize("solver", [s for s in SOLVERS if s != "ddim"] + ["ddim"])
def test_large_samples_through_every_solver_and_the_editors(solver):
    x = torch.randn(1, 1, 4200, 4200, generator=torch.Generator().manual_seed(1))
    kw = dict(solver=solver, dynamic_threshold=0.99, dynamic_threshold_max=3.0,
              generator=torch.Generator().manual_seed(0), prediction_type="sample")

    def wild(x, t):  # an x0-model far outside the data range
        return 4 * torch.tanh(x)

    out = ddim.sample(wild, 2, x_T=x, **kw)
    assert torch.isfinite(out).all()
    steps = list(ddim.sample_iter(wild, 2, x_T=x, **kw))
    assert all(s.pred_x0.abs().max() <= 1 + 1e-6 for s in steps)
    image = torch.tanh(x)
    assert torch.isfinite(ddim.img2img(wild, image, 0.5, 2, **kw)).all()
