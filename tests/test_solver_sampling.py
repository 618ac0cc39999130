"""The multistep solvers through ddim.sample: agreement with diffusers' schedulers on their own
timesteps, DDIM as the default, every sampling option with every solver, and the clear errors.

(The solver mathematics alone, its convergence orders and its step rules: test_solvers.py.)
"""

import copy

import pytest
import torch

import ddim
from ddim.sampling.solvers import SOLVERS
from tests.float64_diffusers import float64_levels, float64_step

MULTISTEP = [s for s in SOLVERS if s != "ddim"]
DIFFUSERS_SOLVERS = ["dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde"]  # its counterparts


def _scheduler(solver, prediction_type):
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                  beta_schedule="linear", prediction_type=prediction_type,
                  lower_order_final=True, final_sigmas_type="zero")
    if solver == "unipc":
        return UniPCMultistepScheduler(predict_x0=True, solver_type="bh2", solver_order=2,
                                       **common)
    return DPMSolverMultistepScheduler(
        algorithm_type="sde-dpmsolver++" if solver == "dpmpp_2m_sde" else "dpmsolver++",
        solver_order=3 if solver == "dpmpp_3m" else 2, **common)


def _diffusers_run(unet, solver, prediction_type, steps, x_T, seed):
    """diffusers' own loop in float64 (its levels and step made float64:
    tests/float64_diffusers.py): its timesteps and every intermediate sample; the SDE's noise
    is drawn in float32 from a CPU generator, one randn of the batch per step, as ours."""
    sched = _scheduler(solver, prediction_type)
    sched.set_timesteps(steps)
    float64_levels(sched, ddim.NoiseSchedule.linear().alphas_cumprod)
    float64_step(sched)
    gen = torch.Generator().manual_seed(seed)
    x, traj = x_T.clone(), []
    with torch.no_grad():
        for t in sched.timesteps:
            noise = {}
            if solver == "dpmpp_2m_sde":
                noise = dict(variance_noise=torch.randn(x.shape, generator=gen).double())
            x = sched.step(unet(x, t).sample, t, x, **noise).prev_sample
            traj.append(x)
    return sched.timesteps.tolist(), traj


@pytest.fixture(scope="module")
def digits():
    return ddim.load_pretrained("digits")


@pytest.fixture(scope="module")
def digits64():
    return ddim.load_pretrained("digits", torch_dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny_unet64(tiny_unet):
    return copy.deepcopy(tiny_unet).double()


@pytest.mark.parametrize("steps", [5, 10, 25])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("solver", DIFFUSERS_SOLVERS)
def test_agrees_with_diffusers_on_its_timesteps(tiny_unet64, solver, prediction_type, steps):
    """Every intermediate sample, both sides in float64 (a random-init UNet): the same
    formulas. Measured: at most 2e-14 of the trajectory's scale over the 24 cases."""
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3),
                      dtype=torch.float64)
    grid, ref = _diffusers_run(tiny_unet64, solver, prediction_type, steps, x_T, seed=5)
    ours = list(ddim.sample_iter(tiny_unet64, solver=solver, timesteps=grid, x_T=x_T,
                                 prediction_type=prediction_type,
                                 generator=torch.Generator().manual_seed(5)))
    assert [s.t for s in ours] == grid
    scale = max(x.abs().max().item() for x in ref)
    err = max((a.sample - b).abs().max().item() for a, b in zip(ours, ref, strict=True))
    assert err <= 1e-9 * scale, f"{err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("steps", [5, 10, 25])
@pytest.mark.parametrize("solver", DIFFUSERS_SOLVERS)
def test_bundled_model_agrees_with_diffusers(digits64, solver, steps):
    """The same formulas: the bundled network and diffusers' scheduler both in float64
    (tests/float64_diffusers.py), so that neither side depends on how a CPU sums a float32
    convolution.

    Before, with the float32 network against diffusers' float32 step and a 1e-5 bound: on one
    x86 CPU unipc-10 gave 1.53e-5 and dpmpp_2m_sde-25 1.17e-5, on another less than 1e-5.
    Measured now: at most 6.4e-15 over the 12 cases (unipc-10: 3.0e-15, dpmpp_2m_sde-25:
    6.1e-15).
    """
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)
    grid, ref = _diffusers_run(digits64.model, solver, "epsilon", steps, x_T, seed=1)
    ours = ddim.sample(digits64, solver=solver, timesteps=grid, x_T=x_T,
                       generator=torch.Generator().manual_seed(1))
    assert ours.dtype == torch.float64
    err = (ours - ref[-1].double()).abs().max().item() / ref[-1].abs().max().item()
    assert err <= 1e-9


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_solver_is_the_default_bit_for_bit(tiny_unet, prediction_type, eta):
    kw = dict(x_T=torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)),
              prediction_type=prediction_type)
    a = ddim.sample(tiny_unet, 7, eta, generator=torch.Generator().manual_seed(4), **kw)
    b = ddim.sample(tiny_unet, 7, eta, solver="ddim", generator=torch.Generator().manual_seed(4),
                    **kw)
    assert torch.equal(a, b)


# ---------------------------------------------------------------- every option, every solver
def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def smooth(x, t):
    """An elementwise model: its arithmetic does not depend on the batch (a UNet's kernels
    do, which would hide what is tested here)."""
    return 0.1 * torch.tanh(x) + 1e-4 * t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("solver", MULTISTEP)
def test_chunks_callbacks_and_details_change_no_bit(solver, ptype):
    x_T = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(solver=solver, x_T=x_T, prediction_type=ptype)
    plain = ddim.sample(smooth, 8, generator=_gens(5), **kw)
    chunked = ddim.sample(smooth, 8, generator=_gens(5), max_batch_size=2, **kw)
    seen = []
    called = ddim.sample(smooth, 8, generator=_gens(5), **kw,
                         callback=lambda i, t, x, x0: seen.append((t, x0)))
    steps = list(ddim.sample_iter(smooth, 8, generator=_gens(5), **kw))
    for other in (chunked, called, steps[-1].sample):
        assert torch.equal(plain, other)
    assert [t for t, _ in seen] == [s.t for s in steps] and len(steps) == 8
    assert all(s.pred_x0.shape == x_T.shape and s.pred_eps.shape == x_T.shape for s in steps)
    if SOLVERS[solver].data == "x0":  # first order onto ᾱ=1: the step returns its x̂0
        assert torch.equal(steps[-1].pred_x0, steps[-1].sample)


@pytest.mark.parametrize("solver", MULTISTEP)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "quad"])
def test_every_spacing_and_prediction_type(tiny_unet, solver, spacing):
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for ptype in ("epsilon", "sample", "v_prediction"):
        out = ddim.sample(tiny_unet, 6, solver=solver, spacing=spacing, x_T=x_T,
                          prediction_type=ptype, generator=_gens(2))
        assert out.shape == x_T.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("solver", MULTISTEP)
def test_x0_processing_applies_to_the_data_prediction(solver):
    def wild(x, t):  # an x0-model far outside the data range
        return torch.full_like(x, 5.0)

    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(solver=solver, x_T=x_T, prediction_type="sample", generator=_gens(2))
    clipped = list(ddim.sample_iter(wild, 6, clip_sample=(0.0, 1.0), **kw))
    assert all(0 <= s.pred_x0.min() and s.pred_x0.max() <= 1.0 for s in clipped)
    if SOLVERS[solver].data == "x0":  # the last step returns its (clipped) x̂0
        assert clipped[-1].sample.max() <= 1.0
    else:  # iPNDM extrapolates the ε̂s of the clipped x̂0s: near the range, not inside it
        assert clipped[-1].sample.max() <= 1.5
    steps = list(ddim.sample_iter(wild, 6, dynamic_threshold=0.9, dynamic_threshold_max=2.0,
                                  **kw))
    assert all(s.pred_x0.abs().max() <= 1.0 + 1e-6 for s in steps)


@pytest.mark.parametrize("solver", MULTISTEP)
def test_guidance_is_one_batched_forward_per_step(solver):
    from ddim.testing import GaussianMixture

    schedule = ddim.NoiseSchedule.linear()
    mix = GaussianMixture(torch.tensor([[-2.0], [2.0]]).reshape(2, 1, 1, 1), 0.3)
    oracle = mix.conditional_model(schedule)
    labels = torch.tensor([0, 1, 1])
    out = ddim.sample(oracle, 10, solver=solver, shape=(3, 1, 1, 1), class_labels=labels,
                      guidance_scale=1.5, schedule=schedule, generator=_gens(3))
    assert oracle.calls == [6] * 10  # both halves in one forward of 2B
    assert (out[0] < 0).all() and (out[1:] > 0).all()


@pytest.mark.parametrize("solver", MULTISTEP)
def test_float64_state_and_the_nan_step_is_named(solver):
    out = ddim.sample(lambda x, t: 0.1 * x, 5, solver=solver, shape=(1, 1, 2, 2),
                      dtype=torch.float64, generator=_gens(1))
    assert out.dtype == torch.float64

    def bad(x, t):
        return torch.where(t.reshape(-1, 1, 1, 1) == 599, float("nan"), 0.1 * x)

    with pytest.raises(ddim.NonFiniteError, match=r"at step 2 \(t=599\)"):
        ddim.sample(bad, 5, solver=solver, shape=(1, 1, 2, 2), generator=_gens(1))


def test_deterministic_solvers_draw_nothing_and_the_sde_uses_the_generator():
    x_T = torch.randn(2, 1, 4, 4)
    for solver in (s for s in MULTISTEP if not SOLVERS[s].stochastic):
        g, state = torch.Generator().manual_seed(0), torch.get_rng_state()
        ddim.sample(lambda x, t: 0.1 * x, 6, solver=solver, x_T=x_T, generator=g)
        assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
        assert torch.equal(torch.get_rng_state(), state)
    a = ddim.sample(lambda x, t: 0.1 * x, 6, solver="dpmpp_2m_sde", x_T=x_T, generator=_gens(2))
    b = ddim.sample(lambda x, t: 0.1 * x, 6, solver="dpmpp_2m_sde", x_T=x_T[1:],
                    generator=_gens(1, seed=1))
    assert torch.equal(a[1:], b)  # per-sample generators: independent of the batch


def test_img2img_and_inpaint_run_the_solvers(digits):
    image = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    for solver in MULTISTEP:
        edited = ddim.img2img(digits, image, 0.6, 10, solver=solver, generator=_gens(2))
        filled = ddim.inpaint(digits, image, mask, 10, solver=solver, generator=_gens(2))
        assert torch.isfinite(edited).all() and torch.equal(filled[..., :4], image[..., :4])


# ---------------------------------------------------------------- combinations that make no sense
@pytest.mark.parametrize("solver", MULTISTEP)
@pytest.mark.parametrize("option,value", [("eta", 0.5), ("sigma_hat", True),
                                          ("rederive_eps", True)])
def test_ddim_only_options_with_another_solver_are_refused(solver, option, value):
    why = ("its noise is set by the SDE" if SOLVERS[solver].stochastic else
           "it is deterministic; dpmpp_2m_sde is the stochastic multistep solver")
    with pytest.raises(ValueError, match=rf"^{option}={value!r} applies to solver='ddim' only, "
                                         rf"got solver='{solver}' \({why}\)$"):
        ddim.sample(lambda x, t: x, 5, solver=solver, x_T=torch.ones(1, 1, 2, 2),
                    **{option: value})


def test_unknown_solver_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"^solver must be one of \('ddim', 'dpmpp_2m', "
                                         r"'dpmpp_3m', 'dpmpp_3m_true', 'unipc', 'dpmpp_2m_sde', "
                                         r"'ipndm', 'ipndm_v'\), got 'dpm'$"):
        ddim.sample(lambda x, t: x, 5, solver="dpm", x_T=torch.ones(1, 1, 2, 2))


def test_resampled_inpainting_needs_ddim():
    with pytest.raises(ValueError, match=r"resample=2 repeats steps, which a multistep solver "
                                         r"cannot .*got solver='unipc'"):
        ddim.inpaint(lambda x, t: x, torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), 5,
                     resample=2, solver="unipc")
