"""Timestep grids: every step count and spacing, agreement with diffusers, known grids, the
levels a grid gives, and explicit timesteps, which no spacing or offset may silently modify."""

import pytest
import torch
from diffusers import DDIMScheduler

import ddim
from ddim import NoiseSchedule
from ddim.maths.grids import SPACINGS, grid_levels, timesteps
from tests.helpers import TimestepRecorder, mixture_images

SCHED = NoiseSchedule.linear()


# ---------------------------------------------------------------------------- spacings
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


# ---------------------------------------------------------------------------- explicit timesteps
def test_explicit_timesteps_returned_as_given():
    s = NoiseSchedule.linear()
    assert timesteps(s, [999, 500, 1]).tolist() == [999, 500, 1]
    assert timesteps(s, torch.tensor([10, 3])).tolist() == [10, 3]


IGNORED = r"has no effect with explicit timesteps \(they are used as given\); pass "


@pytest.mark.parametrize("extra,name", [(dict(spacing="leading"), "spacing='leading'"),
                                        (dict(steps_offset=1), "steps_offset=1"),
                                        (dict(spacing="trailing"), "spacing='trailing'")])
@pytest.mark.parametrize("call", [
    lambda **kw: ddim.sample(TimestepRecorder(), x_T=mixture_images(), timesteps=[900, 500, 0],
                             **kw),
    lambda **kw: ddim.sample_iter(TimestepRecorder(), x_T=mixture_images(),
                                  timesteps=[900, 500, 0], **kw),
    lambda **kw: ddim.invert(TimestepRecorder(), mixture_images(), timesteps=[900, 500, 0], **kw),
    lambda **kw: ddim.img2img(TimestepRecorder(), mixture_images(), 0.5,
                              timesteps=[900, 500, 0], **kw),
    lambda **kw: ddim.inpaint(TimestepRecorder(), mixture_images(), torch.ones(1, 1, 4, 4),
                              timesteps=[900, 500, 0], **kw),
    lambda **kw: timesteps(SCHED, [900, 500, 0], **kw),
], ids=["sample", "sample_iter", "invert", "img2img", "inpaint", "schedule"])
def test_spacing_or_offset_next_to_explicit_timesteps_is_refused(call, extra, name):
    with pytest.raises(ValueError, match=rf"^{name} {IGNORED}"):
        call(**extra)


# ---------------------------------------------------------------------------- steps_offset
def test_img2img_honours_steps_offset_like_sample():
    rec = TimestepRecorder()
    ddim.sample(rec, 4, x_T=mixture_images(), spacing="leading", steps_offset=1)
    assert rec.t == [751, 501, 251, 1]
    rec = TimestepRecorder()
    ddim.img2img(rec, mixture_images(), 1.0, 4, spacing="leading", steps_offset=1)
    assert rec.t == [999, 751, 501, 251, 1]  # the same grid, below the start level t=999


def test_steps_offset_with_the_default_trailing_spacing_is_refused():
    with pytest.raises(ValueError, match=r"steps_offset applies to spacing='leading' only, got "
                                         r"steps_offset=1 with spacing='trailing'"):
        ddim.sample(TimestepRecorder(), 4, x_T=mixture_images(), steps_offset=1)


# ---------------------------------------------------------------------------- levels
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

