"""Bad inputs get clear errors: the right exception type, and a message that names the
parameter, the bad value and what is allowed.

Models here are plain callables on tiny tensors, so the whole file runs in a few seconds on
one CPU core.
"""

import math
import re

import pytest
import torch

import ddim
import ddim.maths.ddim_coefficients  # the η limit: max_eta
from ddim import NoiseSchedule, NonFiniteError
from ddim.maths.grids import grid_levels, timesteps
from tests.helpers import TimestepRecorder, mixture_images

T = 1000
SCHED = NoiseSchedule.linear()


def zeros_model(x, t):
    return torch.zeros_like(x)


def eps_model(x, t):
    """A cheap ε-model that depends on both x and t (so a wrong t or x would show)."""
    return 0.1 * x + (t.to(x.dtype) / T).reshape((-1,) + (1,) * (x.ndim - 1))


@pytest.fixture
def x_T():
    return torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))


def _raises(exc, pattern, fn, *args, **kwargs):
    """Run fn, check the exception class exactly (not just a subclass) and the message."""
    with pytest.raises(exc, match=pattern) as info:
        fn(*args, **kwargs)
    assert type(info.value) is exc, f"expected {exc.__name__}, got {type(info.value).__name__}"
    return info.value


# --------------------------------------------------------------------------- steps
STEP_CASES = [
    (0, ValueError, r"steps must be an integer in \[1, 1000\], got 0$"),
    (-3, ValueError, r"steps must be an integer in \[1, 1000\], got -3$"),
    (1001, ValueError, r"steps must be an integer in \[1, 1000\], got 1001$"),
    (2.5, TypeError, r"steps must be an integer in \[1, 1000\], got 2\.5 \(float\)"),
    ("50", TypeError, r"steps must be an integer in \[1, 1000\], got '50' \(str\)"),
    (True, TypeError, r"steps must be an integer in \[1, 1000\], got True \(bool\)"),
]


@pytest.mark.parametrize(("steps", "exc", "pattern"), STEP_CASES)
def test_bad_steps_sample(steps, exc, pattern, x_T):
    _raises(exc, pattern, ddim.sample, zeros_model, steps, x_T=x_T)


@pytest.mark.parametrize(("steps", "exc", "pattern"), STEP_CASES)
def test_bad_steps_sample_iter_raises_at_call_not_iteration(steps, exc, pattern, x_T):
    _raises(exc, pattern, ddim.sample_iter, zeros_model, steps, x_T=x_T)


@pytest.mark.parametrize(("steps", "exc", "pattern"), STEP_CASES)
def test_bad_steps_invert(steps, exc, pattern, x_T):
    _raises(exc, pattern, ddim.invert, zeros_model, x_T, steps)


@pytest.mark.parametrize(("steps", "exc", "pattern"), STEP_CASES)
def test_bad_steps_schedule(steps, exc, pattern):
    _raises(exc, pattern, timesteps, NoiseSchedule.linear(), steps)


def test_steps_range_follows_T():
    _raises(ValueError, r"steps must be an integer in \[1, 10\], got 11",
            timesteps, NoiseSchedule.linear(10), 11)
    assert timesteps(NoiseSchedule.linear(10), 10).tolist() == list(range(9, -1, -1))


# --------------------------------------------------------------------------- eta
ETA_CASES = [
    (-0.1, ValueError, r"eta must be a finite number >= 0(\.0)?, got -0\.1"),
    (float("nan"), ValueError, r"eta must be a finite number >= 0(\.0)?, got nan"),
    (float("inf"), ValueError, r"eta must be a finite number >= 0(\.0)?, got inf"),
    ("0", TypeError, r"eta must be a real number >= 0(\.0)?, got '0' \(str\)"),
]


@pytest.mark.parametrize(("eta", "exc", "pattern"), ETA_CASES)
def test_bad_eta(eta, exc, pattern, x_T):
    _raises(exc, pattern, ddim.sample, zeros_model, 3, eta, x_T=x_T)
    _raises(exc, pattern, ddim.sample_iter, zeros_model, 3, eta, x_T=x_T)
    _raises(exc, pattern, ddim.ddim_step, x_T, x_T, 0.5, 0.8, eta, torch.zeros_like(x_T))


@pytest.mark.parametrize("eta", [1.2, 1e6])
def test_eta_above_the_grid_limit_is_refused(eta):
    levels = grid_levels(SCHED, timesteps(SCHED, 5))
    limit = float(ddim.maths.ddim_coefficients.max_eta(*levels).min())
    assert 1 < limit < 1.1
    with pytest.raises(ValueError, match=re.escape(f"eta={eta:g} is too large for this grid: ")
                       + ".* the largest eta this grid allows is " + f"{limit:.6g}"):
        ddim.sample(TimestepRecorder(), 5, eta, x_T=mixture_images())
    with pytest.raises(ValueError, match=r"largest eta"):
        ddim.img2img(TimestepRecorder(), mixture_images(), 0.8, 5, eta)
    with pytest.raises(ValueError, match=r"^eta=1\.4 is too large for this grid: at step 0 .* "
                                         r"the largest eta this grid allows is 1\.32288 "):
        ddim.ddim_step(torch.zeros(1, 1), torch.zeros(1, 1), 0.3, 0.5, 1.4, torch.zeros(1, 1))


@pytest.mark.parametrize("steps", [1, 2, 5, 50, 1000])
def test_eta_up_to_one_always_fits(steps):
    a_t, a_prev = grid_levels(SCHED, timesteps(SCHED, steps))
    assert (ddim.maths.ddim_coefficients.max_eta(a_t, a_prev) > 1).all()
    ddim.sample(TimestepRecorder(), steps, 1.0, x_T=mixture_images(1), generator=torch.Generator())
    ddim.sample(TimestepRecorder(), steps, x_T=mixture_images(1), sigma_hat=True,
                generator=torch.Generator())


# --------------------------------------------------------------------------- choices
@pytest.mark.parametrize(("kwargs", "pattern"), [
    (dict(spacing="uniform"),
     r"spacing must be one of \('leading', 'trailing', 'linspace', 'quad', 'time_quadratic', "
     r"'karras', 'kl_optimal', 'log_snr', 'calibrated'\), got 'uniform'"),
    (dict(prediction_type="eps"),
     r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\), got 'eps'"),
    (dict(final_alpha="zero"), r"final_alpha must be one of \('one', 'first'\), got 'zero'"),
])
def test_unknown_choice(kwargs, pattern, x_T):
    _raises(ValueError, pattern, ddim.sample, zeros_model, 3, x_T=x_T, **kwargs)
    _raises(ValueError, pattern, ddim.sample_iter, zeros_model, 3, x_T=x_T, **kwargs)
    _raises(ValueError, pattern, ddim.invert, zeros_model, x_T, 3, **kwargs)


def test_unknown_choice_in_schedule_methods():
    sched = NoiseSchedule.linear()
    _raises(ValueError, r"spacing must be one of .*got 'uniform'", timesteps, sched, 3, "uniform")
    _raises(ValueError, r"final_alpha must be one of \('one', 'first'\), got 'zero'",
            grid_levels, sched, torch.tensor([5, 3]), "zero")


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "quad"])
def test_steps_offset_only_with_leading(spacing, x_T):
    pattern = (r"steps_offset applies to spacing='leading' only, got steps_offset=1 with "
               rf"spacing='{spacing}'")
    _raises(ValueError, pattern, ddim.sample, zeros_model, 3, x_T=x_T, spacing=spacing,
            steps_offset=1)
    _raises(ValueError, pattern, timesteps, NoiseSchedule.linear(), 3, spacing, steps_offset=1)


def test_steps_offset_out_of_range(x_T):
    _raises(ValueError, r"steps_offset must be an integer in \[0, 999\], got -1",
            ddim.sample, zeros_model, 3, x_T=x_T, steps_offset=-1)
    _raises(TypeError, r"steps_offset must be an integer in \[0, 999\], got 0\.5 \(float\)",
            ddim.sample, zeros_model, 3, x_T=x_T, steps_offset=0.5)
    # checked before the memoised setup, so an unhashable value gets the same message
    _raises(TypeError, r"steps_offset must be an integer in \[0, 999\], got \[1\] \(list\)",
            ddim.sample, zeros_model, 3, x_T=x_T, steps_offset=[1])


def test_leading_offset_grid_leaves_range(x_T):
    pattern = (r"spacing='leading' with steps_offset=1 puts the last of 1000 steps at t=1000, "
               r"outside \[0, 999\]; use steps <= 999")
    _raises(ValueError, pattern, timesteps, NoiseSchedule.linear(), 1000, "leading",
            steps_offset=1)
    _raises(ValueError, pattern, ddim.sample, zeros_model, 1000, x_T=x_T, steps_offset=1,
            spacing="leading")
    # one step fewer fits: the grid ends at T-1
    assert timesteps(NoiseSchedule.linear(), 999, "leading", steps_offset=1)[0].item() == 999


# --------------------------------------------------------------------------- explicit timesteps
INTEGERS = (r"timesteps must be a 1-D sequence or array of integers \(a list, tuple, numpy array "
            r"or tensor\)")


@pytest.mark.parametrize(("ts", "exc", "pattern"), [
    ([10, 20, 5], ValueError,
     r"timesteps must be strictly decreasing.*not strictly decreasing at positions 0,1: 10, 20"),
    ([30, 10, 10, 5], ValueError,
     r"timesteps must be strictly decreasing.*duplicated at positions 1,2: 10, 10"),
    ([5, -1], ValueError, r"timesteps must lie in \[0, 999\], got \[5, -1\]"),
    ([1000, 5], ValueError, r"timesteps must lie in \[0, 999\], got \[1000, 5\]"),
    ([10.5, 5.0], TypeError, INTEGERS + r", got \[10\.5, 5\.0\] \(dtype float64\)"),
    (torch.tensor([9.0, 4.25]), TypeError, INTEGERS + r", got \[9\.0, 4\.25\] \(dtype float32\)"),
    ([], ValueError, r"timesteps must hold at least one timestep, got an empty sequence"),
    ([[10, 5], [4, 3]], TypeError, INTEGERS + r", got an array of shape \(2, 2\)"),
])
def test_bad_explicit_timesteps(ts, exc, pattern, x_T):
    _raises(exc, pattern, ddim.sample, zeros_model, x_T=x_T, timesteps=ts)
    _raises(exc, pattern, ddim.sample_iter, zeros_model, x_T=x_T, timesteps=ts)
    _raises(exc, pattern, ddim.invert, zeros_model, x_T, timesteps=ts)
    _raises(exc, pattern, timesteps, NoiseSchedule.linear(), ts)


@pytest.mark.parametrize(("ts", "shown"), [(900, "900"), ("900 500", "'900 500'"),
                                           ({900: 1}, "{900: 1}")])
def test_a_number_or_a_text_is_not_a_grid(ts, shown, x_T):
    for call in (ddim.sample, ddim.sample_iter):
        _raises(TypeError, INTEGERS + ", got " + re.escape(shown), call, zeros_model, x_T=x_T,
                timesteps=ts)


def test_whole_float_timesteps_are_accepted(x_T):
    a = ddim.sample(eps_model, x_T=x_T, timesteps=[700.0, 300.0, 0.0])
    b = ddim.sample(eps_model, x_T=x_T, timesteps=[700, 300, 0])
    assert torch.equal(a, b)


def test_steps_contradicting_timesteps(x_T):
    pattern = r"steps=2 contradicts the 3 explicit timesteps"
    _raises(ValueError, pattern, ddim.sample, zeros_model, 2, x_T=x_T, timesteps=[30, 20, 10])
    _raises(ValueError, pattern, ddim.invert, zeros_model, x_T, 2, timesteps=[30, 20, 10])
    # equal is fine, and so is None
    assert ddim.sample(zeros_model, 3, x_T=x_T, timesteps=[30, 20, 10]).shape == x_T.shape
    _raises(ValueError, r"steps must be an integer >= 1, got 0",
            ddim.sample, zeros_model, 0, x_T=x_T, timesteps=[30, 20, 10])


# --------------------------------------------------------------------------- x_T / shape
def test_x_T_integer_dtype():
    x = torch.zeros(1, 1, 2, 2, dtype=torch.int64)
    _raises(TypeError, r"x_T must be a floating tensor, got dtype torch\.int64",
            ddim.sample, zeros_model, 3, x_T=x)


def test_x_T_not_a_tensor():
    _raises(TypeError, r"x_T must be a torch\.Tensor, got list",
            ddim.sample, zeros_model, 3, x_T=[[0.0, 1.0]])
    _raises(TypeError, r"x0 must be a torch\.Tensor, got list",
            ddim.invert, zeros_model, [[0.0, 1.0]], 3)


@pytest.mark.parametrize("shape", [(0, 1, 2, 2), (2, 0, 2, 2), (2, 1, 2, 0), (4,), ()])
def test_x_T_empty_or_too_few_dims(shape):
    x = torch.zeros(shape)
    dims = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
    pattern = (r"x_T must have shape \(B, C, \.\.\.\) with B >= 1 and no empty dimension, "
               rf"got \({dims}\)")
    _raises(ValueError, pattern, ddim.sample, zeros_model, 3, x_T=x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_x_T_not_finite(bad, x_T):
    x = x_T.clone()
    x[1, 0, 1, 0] = bad
    _raises(ValueError, r"x_T contains NaN or inf", ddim.sample, zeros_model, 3, x_T=x)


def test_x_T_contradicts_shape(x_T):
    _raises(ValueError, r"x_T has shape \(2, 1, 2, 2\) but shape=\(2, 1, 2, 3\)",
            ddim.sample, zeros_model, 3, x_T=x_T, shape=(2, 1, 2, 3))
    # agreeing is fine
    assert ddim.sample(zeros_model, 3, x_T=x_T, shape=(2, 1, 2, 2)).shape == x_T.shape


def test_x_T_contradicts_batch_size(x_T):
    _raises(ValueError, r"x_T has batch size 2 but batch_size=3",
            ddim.sample, zeros_model, 3, x_T=x_T, batch_size=3)


@pytest.mark.parametrize("shape", [(2,), (1, 0, 2), (1, -2, 2)])
def test_bad_shape(shape):
    _raises(ValueError, r"shape must be \(B, C, \.\.\.\) of positive integers, got \(",
            ddim.sample, zeros_model, 3, shape=shape)


def test_shape_contradicts_batch_size():
    _raises(ValueError, r"shape \(2, 1, 2\) contradicts batch_size=3",
            ddim.sample, zeros_model, 3, shape=(2, 1, 2), batch_size=3)


def test_bad_batch_size_with_model_sample_shape():
    class Bundle:
        sample_shape = (1, 2, 2)

        def __call__(self, x, t):
            return torch.zeros_like(x)

    _raises(ValueError, r"batch_size must be an integer >= 1, got 0",
            ddim.sample, Bundle(), 3, batch_size=0)
    _raises(TypeError, r"batch_size must be an integer >= 1, got 1\.5 \(float\)",
            ddim.sample, Bundle(), 3, batch_size=1.5)
    assert ddim.sample(Bundle(), 3, batch_size=2).shape == (2, 1, 2, 2)


def test_no_shape_for_plain_callable():
    pattern = r"cannot tell the sample shape of this model: pass x_T or shape="
    _raises(ValueError, pattern, ddim.sample, zeros_model, 3)
    _raises(ValueError, pattern, ddim.sample, zeros_model, 3, batch_size=2)
    _raises(ValueError, pattern, ddim.sample_iter, zeros_model, 3)


@pytest.mark.parametrize(("dtype", "pattern"), [
    (torch.int64, r"dtype must be torch\.float32 or torch\.float64 .*got torch\.int64"),
    (torch.bool, r"dtype must be torch\.float32 or torch\.float64 .*got torch\.bool"),
    ("float32", r"dtype must be torch\.float32 or torch\.float64 .*got 'float32'"),
    (torch.float16, r"dtype must be torch\.float32 or torch\.float64 .*got torch\.float16"),
])
def test_bad_dtype(dtype, pattern, x_T):
    _raises(TypeError, pattern, ddim.sample, zeros_model, 3, shape=(1, 1, 2, 2), dtype=dtype)
    _raises(TypeError, pattern, ddim.sample, zeros_model, 3, x_T=x_T, dtype=dtype)


# --------------------------------------------------------------------------- shapes the model takes
@pytest.mark.parametrize("call,name", [
    (lambda m: ddim.sample(m, 3, x_T=torch.randn(2, 3, 8, 8)), "x_T"),
    (lambda m: ddim.sample(m, 3, shape=(2, 3, 8, 8)), "shape"),
    (lambda m: list(ddim.sample_iter(m, 3, x_T=torch.randn(2, 3, 8, 8))), "x_T"),
    (lambda m: ddim.invert(m, torch.randn(2, 3, 8, 8), 3), "x0"),
    (lambda m: ddim.img2img(m, torch.randn(2, 3, 8, 8), 0.5, 3), "image"),
    (lambda m: ddim.inpaint(m, torch.randn(2, 3, 8, 8), torch.ones(1, 1, 8, 8), 3), "image"),
])
def test_wrong_channels_are_refused_before_any_model_call(call, name):
    digits = ddim.load_pretrained("digits")
    calls = []
    model = type(digits)(TimestepRecorder(digits), digits.schedule, digits.sample_shape)
    model.model.t = calls
    with pytest.raises(ValueError, match=rf"^{name} has shape \(2, 3, 8, 8\) but the model takes "
                                         r"samples of shape \(B, 1, 8, 8\)$"):
        call(digits)
    assert calls == []


def test_another_spatial_size_only_where_the_unet_allows_it():
    digits = ddim.load_pretrained("digits")
    out = ddim.sample(digits, 2, x_T=torch.randn(1, 1, 16, 12))  # fully convolutional
    assert out.shape == (1, 1, 16, 12)
    with pytest.raises(ValueError, match=r"x_T has shape \(1, 1, 7, 8\): this UNet takes any "
                                         r"spatial size divisible by 2"):
        ddim.sample(digits, 2, x_T=torch.randn(1, 1, 7, 8))


# --------------------------------------------------------------------------- model and its output
def test_model_not_callable(x_T):
    _raises(TypeError, r"model must be callable as model\(x, t\), got int",
            ddim.sample, 42, 3, x_T=x_T)


@pytest.mark.parametrize("out_shape", [(2, 3, 2, 2), (2, 1, 2, 3), (1, 1, 2, 2), (2, 1, 4),
                                       (2, 2, 2, 3)])
def test_model_output_wrong_shape(out_shape, x_T):
    def model(x, t):
        return torch.zeros(out_shape)

    grid = timesteps(NoiseSchedule.linear(), 3).tolist()
    shp = ", ".join(map(str, out_shape))
    pattern = (rf"model output at step 0 \(t={grid[0]}\) has shape \({shp}\), expected the "
               r"input's shape \(2, 1, 2, 2\)")
    _raises(ValueError, pattern, ddim.sample, model, 3, x_T=x_T)
    _raises(ValueError, pattern.replace("step 0", "step 2").replace(f"t={grid[0]}",
                                                                   f"t={grid[-1]}"),
            ddim.invert, model, x_T, 3)  # the inverter calls the model at the last t first


def test_model_output_wrong_shape_at_later_step(x_T):
    grid = timesteps(NoiseSchedule.linear(), 4, "trailing").tolist()
    k = 2

    def model(x, t):
        if int(t[0]) == grid[k]:
            return torch.zeros(2, 1, 3, 3)
        return torch.zeros_like(x)

    it = ddim.sample_iter(model, 4, x_T=x_T, spacing="trailing")
    assert [next(it).index for _ in range(k)] == [0, 1]
    with pytest.raises(ValueError, match=rf"model output at step {k} \(t={grid[k]}\) has shape "
                                         r"\(2, 1, 3, 3\), expected the input's shape "
                                         r"\(2, 1, 2, 2\)"):
        next(it)


def test_learned_variance_output_is_accepted_and_ignored(x_T):
    def model_2c(x, t):
        junk = torch.full_like(x, 1e6)  # the variance half must not be used
        return torch.cat([eps_model(x, t), junk], dim=1)

    for eta in (0.0, 1.0):
        kw = dict(x_T=x_T, eta=eta, generator=torch.Generator().manual_seed(1))
        a = ddim.sample(eps_model, 4, **kw)
        kw["generator"] = torch.Generator().manual_seed(1)
        b = ddim.sample(model_2c, 4, **kw)
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)
    # final_alpha="first": invert's default ("one") crashes today, see test_gap_invert_default
    kw = dict(final_alpha="first")
    assert torch.equal(ddim.invert(eps_model, x_T, 4, **kw), ddim.invert(model_2c, x_T, 4, **kw))


@pytest.mark.parametrize("out", ["not a tensor", 3.0, None, [1.0]])
def test_model_returns_non_tensor(out, x_T):
    pattern = rf"the model must return a tensor \(or an object with \.sample\), got " \
              rf"{type(out).__name__}"
    _raises(TypeError, pattern, ddim.sample, lambda x, t: out, 3, x_T=x_T)
    _raises(TypeError, pattern, ddim.invert, lambda x, t: out, x_T, 3)


def test_model_returning_tuple_or_sample_object_is_accepted(x_T):
    class Out:
        def __init__(self, sample):
            self.sample = sample

    ref = ddim.sample(eps_model, 3, x_T=x_T)
    assert torch.equal(ddim.sample(lambda x, t: (eps_model(x, t),), 3, x_T=x_T), ref)
    assert torch.equal(ddim.sample(lambda x, t: Out(eps_model(x, t)), 3, x_T=x_T), ref)


# --------------------------------------------------------------------------- non-finite output
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("k", [0, 2, 4])
def test_non_finite_output_at_step_k(bad, k, x_T):
    steps = 5
    grid = timesteps(NoiseSchedule.linear(), steps).tolist()
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        out = eps_model(x, t)
        return torch.full_like(x, bad) if int(t[0]) == grid[k] else out

    pattern = rf"the model returned NaN or inf at step {k} \(t={grid[k]}\)"
    err = _raises(NonFiniteError, pattern, ddim.sample, model, steps, x_T=x_T)
    assert isinstance(err, ValueError)
    assert (err.step, err.timestep) == (k, grid[k])
    assert calls == grid  # ran to the end: the check is once, after the loop

    # sample_iter yields every step, then raises
    calls.clear()
    it = ddim.sample_iter(model, steps, x_T=x_T)
    seen = []
    with pytest.raises(NonFiniteError, match=pattern):
        for out in it:
            seen.append((out.index, out.t))
    assert seen == list(enumerate(grid))


def test_non_finite_output_first_step_is_named(x_T):
    grid = timesteps(NoiseSchedule.linear(), 5).tolist()

    def model(x, t):  # NaN at steps 1 and 3: the first one is named
        return torch.full_like(x, math.nan) if int(t[0]) in (grid[1], grid[3]) else \
            torch.zeros_like(x)

    err = _raises(NonFiniteError, rf"at step 1 \(t={grid[1]}\)", ddim.sample, model, 5, x_T=x_T)
    assert (err.step, err.timestep) == (1, grid[1])


def test_non_finite_output_in_invert_names_t(x_T):
    grid = timesteps(NoiseSchedule.linear(), 5).tolist()

    def model(x, t):
        return torch.full_like(x, math.nan) if int(t[0]) == grid[1] else torch.zeros_like(x)

    err = _raises(NonFiniteError, rf"the model returned NaN or inf at step \d+ \(t={grid[1]}\)",
                  ddim.invert, model, x_T, 5, final_alpha="first")
    assert err.timestep == grid[1]


def test_non_finite_error_is_catchable_as_value_error(x_T):
    with pytest.raises(ValueError):
        ddim.sample(lambda x, t: torch.full_like(x, math.nan), 2, x_T=x_T)


def test_a_large_finite_output_is_not_reported_as_nan():
    # a float32 sum of 1e37s overflows; the probe keeps max |out| instead
    out = ddim.sample(lambda x, t: torch.full_like(x, 1e37), 3, x_T=torch.ones(1, 1, 4, 4),
                      prediction_type="sample")
    assert torch.isfinite(out).all()
    with pytest.raises(ddim.NonFiniteError, match=r"at step 2 \(t=332\)"):
        ddim.sample(lambda x, t: torch.where(t.reshape(-1, 1, 1, 1) == 332, math.nan, x), 3,
                    x_T=torch.ones(1, 1, 4, 4))


def test_an_overflowing_sample_is_named():
    # finite outputs whose step overflows float32 are reported, not returned as inf
    with pytest.raises(ddim.NonFiniteError, match=r"the sample overflowed to inf \(the model's "
                                                  r"outputs were finite, up to 3e\+38"):
        ddim.sample(lambda x, t: torch.full_like(x, 3e38), 2, x_T=torch.ones(1, 1, 2, 2))


# --------------------------------------------------------------------------- generators
def test_generator_list_wrong_length(x_T):
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    _raises(ValueError, r"generator list must have one generator per sample: batch size 2, "
                        r"got 3 generators", ddim.sample, zeros_model, 3, 1.0, x_T=x_T,
            generator=gens)
    _raises(ValueError, r"batch size 1, got 0 generators",
            ddim.sample, zeros_model, 3, 1.0, shape=(1, 1, 2, 2), generator=[])


@pytest.mark.parametrize(("gen", "pattern"), [
    (42, r"generator must be a torch\.Generator or a list of them, got int"),
    ("seed", r"generator must be a torch\.Generator or a list of them, got str"),
    ([torch.Generator(), 3], r"generator\[1\] must be a torch\.Generator, got int"),
    ([torch.Generator(), None], r"generator\[1\] must be a torch\.Generator, got NoneType"),
])
def test_generator_not_a_generator(gen, pattern, x_T):
    _raises(TypeError, pattern, ddim.sample, zeros_model, 3, 1.0, x_T=x_T, generator=gen)


def test_generator_list_right_length_is_accepted(x_T):
    gens = (torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    assert torch.isfinite(ddim.sample(eps_model, 3, 1.0, x_T=x_T, generator=gens)).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generator_list_mixed_devices(x_T):
    gens = [torch.Generator("cpu").manual_seed(0), torch.Generator("cuda").manual_seed(1)]
    _raises(ValueError, r"all generators in the list must be on one device, got "
                        r"\['cpu', 'cuda(:0)?'\]",
            ddim.sample, zeros_model, 3, 1.0, x_T=x_T, generator=gens)
    _raises(ValueError, r"generator is on cuda(:0)? but samples are on cpu",
            ddim.sample, zeros_model, 3, 1.0, x_T=x_T, generator=torch.Generator("cuda"))


# --------------------------------------------------------------------------- zero terminal SNR
def test_zero_terminal_snr_with_epsilon_is_refused(x_T):
    zt = NoiseSchedule.linear().rescale_zero_terminal_snr()
    assert zt.zero_terminal_snr
    pattern = r"zero terminal SNR \(ᾱ=0 at t=999\) and prediction_type='epsilon'"
    for ptype in (None, "epsilon"):
        kw = dict(x_T=x_T, schedule=zt, spacing="trailing", prediction_type=ptype)
        _raises(ValueError, pattern, ddim.sample, zeros_model, 4, **kw)
        _raises(ValueError, pattern, ddim.sample_iter, zeros_model, 4, **kw)
    _raises(ValueError, pattern, ddim.invert, zeros_model, x_T, 4, schedule=zt,
            spacing="trailing")
    _raises(ValueError, pattern, ddim.sample, zeros_model, x_T=x_T, schedule=zt,
            timesteps=[999, 500])


@pytest.mark.parametrize("ptype", ["v_prediction", "sample"])
def test_zero_terminal_snr_works_with_v_and_sample(ptype, x_T):
    zt = NoiseSchedule.linear().rescale_zero_terminal_snr()
    for eta in (0.0, 1.0):
        out = ddim.sample(eps_model, 4, eta, x_T=x_T, schedule=zt, spacing="trailing",
                          prediction_type=ptype, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out).all()


def test_zero_terminal_snr_epsilon_without_terminal_step_works(x_T):
    zt = NoiseSchedule.linear().rescale_zero_terminal_snr()
    out = ddim.sample(eps_model, 4, x_T=x_T, schedule=zt, spacing="leading")  # top t=750
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(("values", "pattern"), [
    ([0.9, 0.95, 0.5], r"alphas_cumprod must be strictly decreasing, got alphas_cumprod\[0\]="
                       r"0\.9 <= alphas_cumprod\[1\]=0\.95"),
    ([0.9, 0.5, 0.5], r"alphas_cumprod must be strictly decreasing, got alphas_cumprod\[1\]="
                      r"0\.5 <= alphas_cumprod\[2\]=0\.5"),
    ([1.5, 0.5], r"alphas_cumprod must lie in \(0, 1\], got values such as \[1\.5\]"),
    ([0.9, -0.1, -0.2], r"alphas_cumprod must lie in \(0, 1\], got values such as "
                        r"\[-0\.1, -0\.2\]"),
    ([0.9, 0.0, -0.5], r"alphas_cumprod must lie in \(0, 1\], got values such as \[0\.0, -0\.5\]"),
    ([0.9, 0.5, 0.0], r"alphas_cumprod must lie in \(0, 1\], got values such as \[0\.0\] "
                      r"\(a zero terminal value needs allow_zero_terminal=True\)"),
    ([0.9, math.nan, 0.1], r"alphas_cumprod must be finite, got NaN or inf"),
    ([0.9, math.inf], r"alphas_cumprod must be finite, got NaN or inf"),
    ([[0.9, 0.5], [0.4, 0.1]], r"alphas_cumprod must be a 1-D sequence with at least one value, "
                               r"got shape \(2, 2\)"),
    ([], r"alphas_cumprod must be a 1-D sequence with at least one value, got shape \(0,\)"),
    (0.5, r"alphas_cumprod must be a 1-D sequence with at least one value, got shape \(\)"),
])
def test_bad_alphas_cumprod(values, pattern):
    _raises(ValueError, pattern, NoiseSchedule, values)


def test_zero_non_terminal_refused_even_with_allow_zero_terminal():
    _raises(ValueError, r"alphas_cumprod must lie in \(0, 1\], got values such as \[0\.0, 0\.0\]",
            NoiseSchedule, [0.9, 0.0, 0.0], allow_zero_terminal=True)
    assert NoiseSchedule([0.9, 0.5, 0.0], allow_zero_terminal=True).zero_terminal_snr


@pytest.mark.parametrize(("betas", "pattern"), [
    ([0.1, 1.5], r"betas must lie in \(0, 1\], got min 0\.1, max 1\.5"),
    ([0.0, 0.1], r"betas must lie in \(0, 1\], got min 0, max 0\.1"),
    ([-0.1, 0.1], r"betas must lie in \(0, 1\], got min -0\.1, max 0\.1"),
    ([0.1, math.nan], r"betas must lie in \(0, 1\]"),
    ([0.1, 1.0], r"betas equal to 1 give ᾱ = 0 \(zero terminal SNR\); pass "
                 r"allow_zero_terminal=True"),
    ([[0.1, 0.2]], r"betas must be a 1-D sequence, got shape \(1, 2\)"),
    ([], r"betas must be a 1-D sequence, got shape \(0,\)"),
])
def test_bad_betas(betas, pattern):
    _raises(ValueError, pattern, NoiseSchedule.from_betas, betas)


def test_bad_betas_through_named_and_diffusers():
    _raises(ValueError, r"betas must lie in \(0, 1\], got min -0\.01",
            NoiseSchedule.linear, 10, -0.01, 0.02)
    _raises(ValueError, r"betas must lie in \(0, 1\]",
            NoiseSchedule.from_diffusers, {"trained_betas": [0.1, 2.0]})


@pytest.mark.parametrize(("call", "exc", "pattern"), [
    (lambda: NoiseSchedule.named("sigmoid"), ValueError,
     r"beta schedule must be one of \('linear', 'scaled_linear', 'squaredcos_cap_v2', "
     r"'cosine'\), got 'sigmoid'"),
    (lambda: NoiseSchedule.from_diffusers({"beta_schedule": "sigmoid"}), ValueError,
     r"beta schedule must be one of .*got 'sigmoid'"),
    (lambda: NoiseSchedule.named("linear", 0), ValueError,
     r"num_train_timesteps must be an integer >= 1, got 0"),
    (lambda: NoiseSchedule.from_diffusers({"num_train_timesteps": "1000"}), TypeError,
     r"num_train_timesteps must be an integer >= 1, got '1000' \(str\)"),
    (lambda: NoiseSchedule.from_diffusers(42), TypeError,
     r"from_diffusers expects a diffusers scheduler or its config dict, got int"),
    (lambda: NoiseSchedule.from_diffusers("scheduler_config.json"), TypeError,
     r"from_diffusers expects a diffusers scheduler or its config dict, got str"),
    (lambda: NoiseSchedule.from_diffusers([("beta_schedule", "linear")]), TypeError,
     r"from_diffusers expects a diffusers scheduler or its config dict, got list"),
])
def test_bad_schedule_constructors(call, exc, pattern):
    _raises(exc, pattern, call)


def test_schedule_argument_must_be_a_schedule(x_T):
    _raises(TypeError, r"schedule must be a ddim\.NoiseSchedule, got list",
            ddim.sample, zeros_model, 3, x_T=x_T, schedule=[0.9, 0.5])


def test_alpha_bar_bad_timesteps():
    _raises(ValueError, r"timesteps must lie in \[-1, 999\], got \[1000, 5\]",
            NoiseSchedule.linear().alpha_bar, [1000, 5])


# --------------------------------------------------------------------------- x0 processing
CLIP_ALLOWED = (r"clip_sample must be None or False \(off\), True \(the model's data range\), "
                r"a number c > 0 \(\[-c, c\]\) or a pair \(lo, hi\) with lo < hi, got ")


@pytest.mark.parametrize("value", [0, 0.0, -1.0, math.nan, math.inf, (1.0, 0.0), (0.0, 0.0),
                                   (0.0, math.inf), (math.nan, 1.0)])
def test_bad_clip_sample(value, x_T):
    _raises(ValueError, CLIP_ALLOWED + re.escape(repr(value)) + "$",
            ddim.sample, zeros_model, 3, x_T=x_T, clip_sample=value)


@pytest.mark.parametrize("value", ["1", (0.0,), (0.0, 1.0, 2.0), ("0", "1"), (True, 1.0)])
def test_clip_sample_of_the_wrong_type(value, x_T):
    _raises(TypeError, CLIP_ALLOWED + re.escape(repr(value)), ddim.sample, zeros_model, 3,
            x_T=x_T, clip_sample=value)


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 1.5, -0.1, math.nan])
def test_bad_dynamic_threshold(value, x_T):
    _raises(ValueError, rf"dynamic_threshold must be a quantile in \(0, 1\).*got {value!r}",
            ddim.sample, zeros_model, 3, x_T=x_T, dynamic_threshold=value)


@pytest.mark.parametrize("value", [0.5, 0, math.nan])
def test_bad_dynamic_threshold_max(value, x_T):
    _raises(ValueError, rf"dynamic_threshold_max must be >= 1, got {value!r}",
            ddim.sample, zeros_model, 3, x_T=x_T, dynamic_threshold=0.9,
            dynamic_threshold_max=value)


def test_callback_not_callable(x_T):
    _raises(TypeError, r"callback must be callable as callback\(i, t, x, pred_x0\), got int",
            ddim.sample_iter, zeros_model, 3, x_T=x_T, callback=3)


# --------------------------------------------------------------------------- ddim_step
def test_ddim_step_model_output_shape():
    x = torch.zeros(2, 1, 2, 2)
    _raises(ValueError, r"model_output must have x_t's shape \(2, 1, 2, 2\), got \(2, 2, 2, 2\)",
            ddim.ddim_step, x, torch.zeros(2, 2, 2, 2), 0.5, 0.8)


def test_ddim_step_noise_missing():
    x = torch.zeros(2, 1, 2, 2)
    _raises(ValueError, r"noise is required when the step's noise scale σ_t > 0 "
                        r"\(eta=1\.0, sigma_hat=False\)",
            ddim.ddim_step, x, x, 0.5, 0.8, 1.0)
    _raises(ValueError, r"noise is required .*\(eta=0\.0, sigma_hat=True\)",
            ddim.ddim_step, x, x, 0.5, 0.8, sigma_hat=True)
    # no noise needed at η=0, nor on the final step (ᾱ_prev = 1: σ_t = 0)
    ddim.ddim_step(x, x, 0.5, 0.8)
    ddim.ddim_step(x, x, 0.5, 1.0, 1.0)


def test_ddim_step_noise_wrong_shape():
    x = torch.zeros(2, 1, 2, 2)
    _raises(ValueError, r"noise must have x_t's shape \(2, 1, 2, 2\), got \(1, 1, 2, 2\)",
            ddim.ddim_step, x, x, 0.5, 0.8, 1.0, torch.zeros(1, 1, 2, 2))


def test_ddim_step_bad_prediction_type():
    x = torch.zeros(2, 1, 2, 2)
    _raises(ValueError, r"prediction_type must be one of \('epsilon', 'sample', "
                        r"'v_prediction'\), got 'x0'",
            ddim.ddim_step, x, x, 0.5, 0.8, prediction_type="x0")
    _raises(ValueError, r"prediction_type must be one of .*got 'x0'",
            ddim.predict_x0_eps, x, x, 0.5, "x0")


# --------------------------------------------------------------------------- more cases
def test_generator_list_names_bad_element(x_T):
    _raises(TypeError, r"generator\[1\].*int", ddim.sample, zeros_model, 3, 1.0, x_T=x_T,
            generator=[torch.Generator(), 3])


def test_invert_names_x0(x_T):
    _raises(TypeError, r"x0 must be a floating tensor, got dtype torch\.int64",
            ddim.invert, zeros_model, torch.zeros(1, 1, 2, 2, dtype=torch.int64), 3)


def test_invert_names_x0_nan(x_T):
    _raises(ValueError, r"x0 contains NaN or inf", ddim.invert, zeros_model,
            torch.full((1, 1, 2, 2), math.nan), 3)


def test_a_step_count_is_any_integer_scalar_and_nothing_else(x_T):
    import numpy as np

    want = ddim.sample(eps_model, 10, x_T=x_T)
    for steps in (np.int64(10), torch.tensor(10), np.array(10)):
        assert torch.equal(ddim.sample(eps_model, steps, x_T=x_T), want)
    for steps in (torch.tensor([10]), torch.tensor(10.0), np.bool_(True)):
        _raises(TypeError, r"^steps must be an integer in \[1, 1000\], got ", ddim.sample,
                zeros_model, steps, x_T=x_T)


def test_string_timesteps_named_timesteps(x_T):
    _raises(TypeError, r"^timesteps", ddim.sample, zeros_model, x_T=x_T, timesteps="999,500")


def test_batch_size_type_with_x_T(x_T):
    _raises(TypeError, r"batch_size must be an integer", ddim.sample, zeros_model, 3, x_T=x_T,
            batch_size="2")


def test_dynamic_threshold_non_number(x_T):
    _raises(TypeError, r"dynamic_threshold", ddim.sample, zeros_model, 3, x_T=x_T,
            dynamic_threshold="0.9")


def test_ddim_step_non_tensor_output():
    x = torch.zeros(1, 1, 2, 2)
    _raises(TypeError, r"model_output", ddim.ddim_step, x, "eps", 0.5, 0.8)


def test_ddim_step_alpha_bar_out_of_range():
    x = torch.zeros(1, 1, 2, 2)
    _raises(ValueError, r"alpha_bar_t", ddim.ddim_step, x, x, 1.5, 0.8)


def test_alphas_cumprod_non_numeric():
    _raises(TypeError, r"alphas_cumprod", NoiseSchedule, "0.9,0.5")


def test_empty_prediction_type(x_T):
    _raises(ValueError, r"prediction_type must be one of .*got ''", ddim.sample, zeros_model, 3,
            x_T=x_T, prediction_type="")


def test_invert_default(x_T):
    out = ddim.invert(eps_model, x_T, 4)
    assert out.shape == x_T.shape and torch.isfinite(out).all()
