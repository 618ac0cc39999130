"""Whole trajectories agree with diffusers' DDIMScheduler under matched settings.

The same formulas, so both sides run in float64: a float64 copy of the random-init UNet, and
DDIMScheduler given the float64 ᾱ of the same linear schedule (diffusers keeps it in float32)
and its η-noise drawn in float32 and cast up, as ddim's noise source draws it. Tolerance:
max |ours - diffusers| <= 1e-9 x the largest magnitude of the reference trajectory; measured
at most 2.0e-15 over the 42 cases.

Before, with the float32 network and diffusers' float32 levels at 1e-5: 4.7e-6 on the
development CPU, a margin of 2× that another CPU's float32 sums need not leave (the multistep
tests of this kind failed on CI at 1.5e-5).
"""

import copy

import pytest
import torch
from diffusers import DDIMScheduler

import ddim
from ddim.maths.grids import timesteps
from ddim.maths.schedule import NoiseSchedule


def _reference(unet, x_T, steps, eta, seed, **config):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                          **config)
    sched.set_timesteps(steps)
    sched.alphas_cumprod = NoiseSchedule.linear().alphas_cumprod.double()
    sched.final_alpha_cumprod = (torch.tensor(1.0, dtype=torch.float64)
                                 if sched.config.set_alpha_to_one else sched.alphas_cumprod[0])
    g = torch.Generator().manual_seed(seed)
    x, traj = x_T.clone(), []
    with torch.inference_mode():
        for t in sched.timesteps:
            out = unet(x, t).sample
            noise = torch.randn(x.shape, generator=g).double() if eta > 0 else None
            x = sched.step(out, t, x, eta=eta, variance_noise=noise).prev_sample
            traj.append(x)
    return sched.timesteps.tolist(), traj


def _ours(unet, x_T, steps, eta, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        out = list(ddim.sample_iter(unet, steps, eta, x_T=x_T, generator=g, **kw))
    return [o.t for o in out], [o.sample for o in out]


def _assert_trajectories_agree(ref, ours):
    (t_ref, x_ref), (t_ours, x_ours) = ref, ours
    assert t_ref == t_ours
    scale = max(x.abs().max().item() for x in x_ref)
    err = max((a - b).abs().max().item() for a, b in zip(x_ref, x_ours, strict=True))
    assert err <= 1e-9 * scale, f"max abs diff {err:.3g} vs scale {scale:.3g}"


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(42),
                       dtype=torch.float64)


@pytest.fixture(scope="module")
def unet64(tiny_unet):
    return copy.deepcopy(tiny_unet).double()


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_leading_grid_all_prediction_types(unet64, x_T, steps, eta, prediction_type):
    ref = _reference(unet64, x_T, steps, eta, 7, prediction_type=prediction_type)
    ours = _ours(unet64, x_T, steps, eta, 7, prediction_type=prediction_type,
                 spacing="leading")
    _assert_trajectories_agree(ref, ours)


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("grid", ["leading0", "leading1", "trailing"])
def test_spacings_offsets_and_final_alpha(unet64, x_T, steps, eta, set_alpha_to_one, grid):
    spacing = "trailing" if grid == "trailing" else "leading"
    offset = 1 if grid == "leading1" else 0
    ref = _reference(unet64, x_T, steps, eta, 3, timestep_spacing=spacing,
                     steps_offset=offset, set_alpha_to_one=set_alpha_to_one)
    ours = _ours(unet64, x_T, steps, eta, 3, spacing=spacing, steps_offset=offset,
                 final_alpha="one" if set_alpha_to_one else "first")
    _assert_trajectories_agree(ref, ours)


def test_prev_timestep_comes_from_the_grid_where_diffusers_formula_is_wrong():
    """diffusers' step uses prev = t - T//S, wrong for linspace (its issues 12633, 11347).

    Ours follows the grid: a recording model sees the grid, and each step uses ᾱ of the next
    grid point, checked against ddim_step driven by hand with grid-based values.
    """
    s = NoiseSchedule.linear()
    grid = timesteps(s, 10, "linspace")  # 999, 888, ..., 0: T//S = 100 != 111
    assert (grid[:-1] - 100 != grid[1:]).any()
    a = s.alphas_cumprod
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64)

    def model(x, t):
        return torch.sin(x + t[:, None, None, None].to(x.dtype) / 100)

    ours = ddim.sample(model, 10, spacing="linspace", x_T=x_T)
    x = x_T.clone()
    for i, t in enumerate(grid.tolist()):
        a_prev = float(a[grid[i + 1]]) if i + 1 < len(grid) else 1.0
        x = ddim.ddim_step(x, model(x, torch.full((2,), t)), float(a[t]), a_prev).prev_sample
    # float64 rounding only: the sampler applies the step in its fused form (x̂0 substituted)
    torch.testing.assert_close(ours, x, rtol=1e-12, atol=1e-12)
