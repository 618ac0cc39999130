"""Grids with one point left, and steps of length zero, with every solver and through every
entry point (sample, sample_iter, img2img, inpaint, interpolation_strip, generate, the CLI).

- A grid with one point is one step onto ᾱ = 1: whatever the solver, it returns x̂0 of the
  single model call and draws no noise (a stochastic solver included: diffusers runs it).
- A step from a level onto the same level (h = 0: leading spacing ending at t = 0 with
  final_alpha="first") is the identity, for DDIM and every multistep solver alike (diffusers'
  final_sigmas_type="sigma_min" runs it so for orders 2 and 3).
"""

import numpy as np
import pytest
import torch

import ddim
from ddim import cli
from ddim.maths.grids import grid_levels, timesteps
from ddim.sampling.solvers import SOLVERS
from ddim.testing import GaussianMixture

SCHED = ddim.NoiseSchedule.linear()
MIX = GaussianMixture(torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4), 0.5)


class Counted:
    """The Gaussian oracle (x0-prediction: its output is x̂0), counting its calls."""

    def __init__(self):
        self.oracle, self.t = MIX.model(SCHED, "sample"), []

    def __call__(self, x, t):
        self.t.append(int(t[0]))
        return self.oracle(x, t)


def _x_T(b=3, seed=0):
    return torch.randn(b, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


def _gens(b, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(b)]


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_one_point_returns_the_models_x0_for_every_solver(solver):
    """The reported case: dpmpp_2m_sde with steps=1 asked for a noise function. Right value:
    x̂0 of the one call, at t = T-1; no generator is drawn from."""
    model, x_T, gens = Counted(), _x_T(), _gens(3)
    states = [g.get_state() for g in gens]
    out = ddim.sample(model, 1, solver=solver, x_T=x_T, generator=gens, prediction_type="sample")
    assert model.t == [999]
    assert torch.equal(out, MIX.model(SCHED, "sample")(x_T, torch.full((3,), 999)))
    assert all(torch.equal(g.get_state(), s) for g, s in zip(gens, states, strict=True))
    steps = list(ddim.sample_iter(Counted(), 1, solver=solver, x_T=x_T, generator=_gens(3),
                                  prediction_type="sample"))
    assert len(steps) == 1 and torch.equal(steps[0].sample, out)


def test_one_point_on_the_bundled_model_with_the_stochastic_solver():
    digits = ddim.load_pretrained("digits")
    gens = _gens(2)
    out = ddim.sample(digits, 1, solver="dpmpp_2m_sde", batch_size=2, generator=gens)
    ref = ddim.sample(digits, 1, batch_size=2, generator=_gens(2))  # DDIM: x̂0 as well
    assert torch.equal(out, ref)


@pytest.mark.parametrize("solver", ["dpmpp_2m_sde", "dpmpp_3m", "unipc", "ipndm"])
def test_one_point_left_in_img2img_inpaint_and_interpolation(solver):
    """img2img at a low strength keeps only its start point; inpainting and the strip with one
    step: the same single step onto x̂0."""
    image = MIX.sample(2, torch.Generator().manual_seed(1)).float()
    model = Counted()
    low = ddim.img2img(model, image, 0.05, 10, solver=solver, generator=_gens(2),
                       prediction_type="sample")
    assert model.t == [round(0.05 * 999)] and torch.isfinite(low).all()
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    model = Counted()
    filled = ddim.inpaint(model, image, mask, 1, solver=solver, generator=_gens(2),
                          prediction_type="sample")
    assert model.t == [999] and torch.equal(filled[..., :2], image[..., :2])
    model = Counted()
    strip = ddim.interpolation_strip(model, _x_T(1), _x_T(1, seed=1), num=3, steps=1,
                                     solver=solver, prediction_type="sample")
    assert strip.shape == (3, 1, 4, 4) and model.t == [999]


def test_one_point_with_generate_and_the_cli(tmp_path, capsys):
    result = ddim.generate("digits", tmp_path / "run", 3, steps=1, solver="dpmpp_2m_sde",
                           shard_size=3)
    assert result.generated == 1
    argv = ["sample", "--model", "digits", "--steps", "1", "--solver", "dpmpp_2m_sde",
            "--num", "2", "--out", str(tmp_path / "s.npz")]
    assert cli.main(argv) == 0
    with np.load(tmp_path / "s.npz") as data:
        assert data["images"].shape == (2, 8, 8, 1)
    argv = ["generate", "--model", "digits", "--steps", "1", "--solver", "dpmpp_2m_sde",
            "--num", "2", "--out", str(tmp_path / "g")]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "run.json", "run.lock", "shard-00000.npz"]


# ---------------------------------------------------------------- steps of length zero
def _leading_onto_the_first_level(steps=10):
    grid = timesteps(SCHED, steps, "leading")
    a_t, a_prev = grid_levels(SCHED, grid, "first")
    assert grid[-1] == 0 and a_prev[-1] == a_t[-1]  # the last step: ᾱ_0 onto ᾱ_0
    return grid


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_a_zero_length_last_step_is_the_identity(solver):
    """The reported case: dpmpp_2m on leading spacing with final_alpha="first" was refused
    with an internal message. Right value: the last step leaves x as the step before left
    it; every grid point is still one model call."""
    _leading_onto_the_first_level()
    model = Counted()
    kw = dict(solver=solver, spacing="leading", final_alpha="first", x_T=_x_T(),
              prediction_type="sample", generator=_gens(3))
    steps = list(ddim.sample_iter(model, 10, **kw))
    assert len(steps) == 10 and model.t == list(range(900, -1, -100))
    if SOLVERS[solver].corrector is None:  # UniPC still corrects x_9 with x̂0_9 (diffusers too)
        assert torch.equal(steps[-1].sample, steps[-2].sample)
    assert torch.isfinite(steps[-1].pred_x0).all()  # its x̂0 is still formed
    assert torch.equal(ddim.sample(Counted(), 10, **dict(kw, generator=_gens(3))),
                       steps[-1].sample)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde", "ipndm"])
def test_a_zero_length_step_through_img2img_inpaint_and_generate(solver, tmp_path):
    image = MIX.sample(2, torch.Generator().manual_seed(1)).float()
    kw = dict(solver=solver, spacing="leading", final_alpha="first", prediction_type="sample")
    out = ddim.img2img(Counted(), image, 0.7, 10, generator=_gens(2), **kw)
    mask = torch.ones(1, 1, 4, 4)
    mask[..., 2:] = 0
    filled = ddim.inpaint(Counted(), image, mask, 10, generator=_gens(2), **kw)
    assert torch.isfinite(out).all() and torch.isfinite(filled).all()
    digits = ddim.load_pretrained("digits")
    a = ddim.sample(digits, 10, solver=solver, spacing="leading", final_alpha="first",
                    batch_size=2, generator=_gens(2))
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m"])
def test_the_zero_length_step_matches_diffusers_sigma_min(solver):
    """diffusers' multistep schedulers with final_sigmas_type="sigma_min" on the same grid end
    with the same step (both float64: tests/float64_diffusers.py). Measured: at most 4e-16
    of the sample's scale."""
    from diffusers import DPMSolverMultistepScheduler

    from tests.float64_diffusers import float64_levels, float64_step

    common = dict(num_train_timesteps=1000, beta_schedule="linear",
                  final_sigmas_type="sigma_min", lower_order_final=True)
    sched = DPMSolverMultistepScheduler(solver_order=3 if solver == "dpmpp_3m" else 2, **common)
    grid = _leading_onto_the_first_level()
    sched.set_timesteps(timesteps=grid.tolist())
    float64_levels(sched, SCHED.alphas_cumprod)
    float64_step(sched)
    oracle = MIX.model(SCHED, "epsilon")
    x = _x_T().double()
    ours = ddim.sample(oracle, timesteps=grid, final_alpha="first", solver=solver, x_T=x)
    for t in sched.timesteps:
        x = sched.step(oracle(x, t.expand(x.shape[0])), t, x).prev_sample
    assert (ours - x).abs().max() <= 1e-12 * x.abs().max()
