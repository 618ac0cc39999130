"""NoiseSchedule: constructors against diffusers, grids for every S and spacing, immutability."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import ddim
from ddim import NoiseSchedule
from ddim.maths.grids import SPACINGS, grid_levels, timesteps


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_named_schedules_match_diffusers(name):
    kw = dict(beta_start=0.00085, beta_end=0.012) if name == "scaled_linear" else {}
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kw).alphas_cumprod
    ours = NoiseSchedule.named(name, 1000, **kw).alphas_cumprod
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours.float(), ref, rtol=2e-6, atol=1e-7)


def test_from_diffusers_object_config_and_trained_betas():
    sched = DDIMScheduler(num_train_timesteps=500, beta_start=2e-4, beta_end=0.03)
    ours = NoiseSchedule.from_diffusers(sched)
    assert ours == NoiseSchedule.from_diffusers(dict(sched.config))
    assert ours == NoiseSchedule.linear(500, 2e-4, 0.03)
    betas = np.linspace(1e-3, 0.05, 20)
    trained = NoiseSchedule.from_diffusers({"trained_betas": betas.tolist()})
    torch.testing.assert_close(trained.alphas_cumprod, torch.tensor(np.cumprod(1 - betas)),
                               rtol=1e-15, atol=0)
    torch.testing.assert_close(trained.betas, torch.tensor(betas), rtol=1e-12, atol=1e-15)


def test_zero_terminal_snr_rescale_matches_diffusers():
    ref = DDIMScheduler(rescale_betas_zero_snr=True).alphas_cumprod
    ours = NoiseSchedule.linear().rescale_zero_terminal_snr()
    assert ours.zero_terminal_snr and ours.alphas_cumprod[-1] == 0
    assert torch.isclose(ours.alphas_cumprod[0], NoiseSchedule.linear().alphas_cumprod[0])
    # diffusers clamps the last ᾱ to 2**-24 to avoid its own division by zero
    torch.testing.assert_close(ours.alphas_cumprod[:-1].float(), ref[:-1], rtol=1e-5, atol=1e-7)
    assert NoiseSchedule.from_diffusers({"rescale_betas_zero_snr": True}) == ours


def test_schedule_is_immutable():
    s = NoiseSchedule.linear()
    a = s.alphas_cumprod
    a[:] = 0.5
    assert s.alphas_cumprod[0] == pytest.approx(0.9999)
    with pytest.raises(AttributeError):
        s.foo = 1  # __slots__: no new attributes


@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_step_count_gives_exactly_s_distinct_decreasing_steps(spacing):
    s = NoiseSchedule.linear()
    for steps in range(1, 1001):
        t = timesteps(s, steps, spacing)
        assert t.dtype == torch.int64 and t.shape == (steps,), (spacing, steps)
        assert int(t.min()) >= 0 and int(t.max()) <= 999, (spacing, steps)
        assert bool((t[1:] < t[:-1]).all()), (spacing, steps)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_grids_match_diffusers(spacing):
    s = NoiseSchedule.linear()
    for steps in [1, 2, 3, 7, 10, 20, 50, 100, 250, 500, 999]:
        if spacing == "trailing" and 1000 % steps:
            continue  # diffusers' float arange can give a different rounding here
        ref = DDIMScheduler(timestep_spacing=spacing)
        ref.set_timesteps(steps)
        assert timesteps(s, steps, spacing).tolist() == ref.timesteps.tolist(), (spacing, steps)


def test_leading_offset_matches_diffusers_and_refuses_overflow():
    s = NoiseSchedule.linear()
    ref = DDIMScheduler(steps_offset=1)
    ref.set_timesteps(50)
    assert timesteps(s, 50, "leading", steps_offset=1).tolist() == ref.timesteps.tolist()
    assert timesteps(s, 999, "leading", steps_offset=1)[0] == 999
    with pytest.raises(ValueError, match="steps_offset=1"):
        timesteps(s, 1000, "leading", steps_offset=1)


def test_known_grids():
    s = NoiseSchedule.linear()
    assert timesteps(s, 10, "leading").tolist() == list(range(900, -1, -100))
    assert timesteps(s, 10).tolist() == timesteps(s, 10, "trailing").tolist()  # the default
    assert timesteps(s, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert timesteps(s, 3, "trailing").tolist() == [999, 666, 332]
    assert timesteps(s, 1, "trailing").tolist() == [999]
    # quadratic in time from T-1 to T/100: 10 + 989·(1 - i/5)²
    assert timesteps(s, 6, "time_quadratic").tolist() == [999, 643, 366, 168, 50, 10]
    assert timesteps(s, 1, "time_quadratic").tolist() == [999]
    # the paper's quadratic CIFAR10 grid: int((i * sqrt(800) / (S-1))**2)
    assert timesteps(s, 10, "quad").tolist()[::-1] == [
        i * i * 800 // 81 for i in range(10)]
    # ermongroup's uniform grid runs 334 steps for 300; ours runs 300
    assert len(timesteps(s, 300, "leading")) == 300


def test_quad_repeats_are_resolved_upwards():
    s = NoiseSchedule.linear()
    t = timesteps(s, 100, "quad").flip(0).tolist()
    raw = [i * i * 800 // 99**2 for i in range(100)]
    assert len(set(raw)) < 100  # the raw parabola repeats at its flat start
    assert t[:5] == [0, 1, 2, 3, 4]
    assert t[-1] == raw[-1] == 800
    steep = [i for i in range(1, 100) if raw[i] - raw[i - 1] >= 2 and raw[i] > t[i - 1]]
    assert all(t[i] == raw[i] for i in steep)


def test_explicit_timesteps_returned_as_given():
    s = NoiseSchedule.linear()
    assert timesteps(s, [999, 500, 1]).tolist() == [999, 500, 1]
    assert timesteps(s, torch.tensor([10, 3])).tolist() == [10, 3]


def test_alpha_bars_take_prev_from_the_grid():
    s = NoiseSchedule.linear()
    a = s.alphas_cumprod
    grid = timesteps(s, 7, "trailing")  # 1000 % 7 != 0: diffusers' t - T//S is wrong here
    a_t, a_prev = grid_levels(s, grid)
    assert a_t.tolist() == a[grid].tolist()
    assert a_prev[:-1].tolist() == a[grid[1:]].tolist() and a_prev[-1] == 1
    formula_prev = (grid - 1000 // 7)[:-1]
    assert (formula_prev != grid[1:]).any()  # the formula disagrees with the grid
    _, a_prev0 = grid_levels(s, grid, final_alpha="first")
    assert a_prev0[-1] == a[0]


def test_sigma_reference_value():
    # diffusers' test_variance: σ² for (t, t_prev) = (420, 400) with η=1 is 0.14771
    s = NoiseSchedule.linear()

    def sigma(t, t_prev, eta):
        a = s.alpha_bar([t, t_prev])
        return float(ddim.ddim_sigma(a[0], a[1], eta))

    assert sigma(420, 400, eta=1.0) ** 2 == pytest.approx(0.14771, abs=1e-5)
    assert sigma(980, 960, eta=1.0) ** 2 == pytest.approx(0.32460, abs=1e-5)
    assert sigma(487, 486, eta=1.0) ** 2 == pytest.approx(0.00979, abs=1e-5)
    assert sigma(999, 998, eta=1.0) ** 2 == pytest.approx(0.02, abs=1e-5)
    assert sigma(420, 400, eta=0.0) == 0.0
