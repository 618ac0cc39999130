"""The sampler loop: recorded model calls, randomness, callbacks, dtypes and devices; no NaN at
clean or zero-SNR levels that the model did not return."""

import pytest
import torch

import ddim
from ddim import NoiseSchedule
from ddim.maths.grids import SPACINGS, grid_levels, timesteps


class Recorder:
    """A model that records every call and returns a smooth function of its input."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((t.clone(), x.device, x.dtype))
        return 0.1 * torch.tanh(x) + 1e-4 * t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 10, 37, 1000])
def test_recorded_calls_match_the_grid(spacing, steps):
    rec = Recorder()
    x_T = torch.randn(3, 2, 4, 4)
    ddim.sample(rec, steps, x_T=x_T, spacing=spacing)
    grid = timesteps(NoiseSchedule.linear(), steps, spacing)
    assert len(rec.calls) == steps
    for (t, device, dtype), expected in zip(rec.calls, grid.tolist(), strict=True):
        assert t.dtype == torch.int64 and t.shape == (3,) and device == x_T.device
        assert dtype == torch.float32 and t.tolist() == [expected] * 3


def test_explicit_timesteps_are_used_as_given():
    rec = Recorder()
    ddim.sample(rec, x_T=torch.randn(1, 1, 2, 2), timesteps=[999, 500, 1])
    assert [c[0].item() for c in rec.calls] == [999, 500, 1]


def test_eta0_draws_no_random_numbers():
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 1, 4, 4)
    state, global_state = g.get_state(), torch.get_rng_state()
    ddim.sample(Recorder(), 10, 0.0, x_T=x_T, generator=g)
    assert torch.equal(g.get_state(), state) and torch.equal(torch.get_rng_state(), global_state)


def test_eta_gt_0_uses_the_generator_not_global_rng():
    x_T = torch.randn(2, 1, 4, 4)
    global_state = torch.get_rng_state()
    a = ddim.sample(Recorder(), 10, 1.0, x_T=x_T, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), global_state)
    b = ddim.sample(Recorder(), 10, 1.0, x_T=x_T, generator=torch.Generator().manual_seed(5))
    c = ddim.sample(Recorder(), 10, 1.0, x_T=x_T, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_per_sample_generators_make_samples_batch_independent(eta):
    model = Recorder()
    seeds = [11, 12, 13, 14]
    whole = ddim.sample(model, 8, eta, shape=(4, 1, 4, 4),
                        generator=[torch.Generator().manual_seed(s) for s in seeds])
    for j, s in enumerate(seeds):
        alone = ddim.sample(model, 8, eta, shape=(1, 1, 4, 4),
                            generator=[torch.Generator().manual_seed(s)])
        torch.testing.assert_close(alone[0], whole[j], rtol=0, atol=1e-6)
    pair = ddim.sample(model, 8, eta, shape=(2, 1, 4, 4),
                       generator=[torch.Generator().manual_seed(s) for s in seeds[2:]])
    torch.testing.assert_close(pair, whole[2:], rtol=0, atol=1e-6)


def test_single_generator_draws_x_T_like_torch_randn():
    out = list(ddim.sample_iter(lambda x, t: torch.zeros_like(x), 1, shape=(2, 1, 3, 3),
                                generator=torch.Generator().manual_seed(3), spacing="leading"))
    x_T = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(3))
    # with ε=0 and one step to ᾱ_prev=1, x0 = x_T/sqrt(ᾱ_t)
    a = NoiseSchedule.linear().alpha_bar(0).item()
    torch.testing.assert_close(out[0].sample, x_T / a**0.5)


def test_callback_and_iterator_see_every_step():
    seen = []
    steps = list(ddim.sample_iter(Recorder(), 5, x_T=torch.randn(1, 1, 2, 2),
                                  callback=lambda i, t, x, x0: seen.append((i, t, x.shape))))
    grid = timesteps(NoiseSchedule.linear(), 5).tolist()
    assert [(s.index, s.t) for s in steps] == list(enumerate(grid))
    assert [(i, t) for i, t, _ in seen] == list(enumerate(grid))
    assert torch.equal(steps[-1].sample, steps[-1].pred_x0)  # ᾱ_prev=1: the last step is x̂0


def test_progress_bar(capsys):
    pytest.importorskip("tqdm")
    out = ddim.sample(Recorder(), 4, x_T=torch.randn(1, 1, 2, 2), progress=True)
    assert out.shape == (1, 1, 2, 2)
    assert "4/4" in capsys.readouterr().err


def test_diffusers_unet_sample_shape_device_and_learned_variance(tiny_unet):
    torch.manual_seed(0)
    out = ddim.sample(tiny_unet, 3, batch_size=2)
    assert out.shape == (2, 1, 8, 8) and out.dtype == torch.float32
    from tests.helpers import make_tiny_unet

    lv = make_tiny_unet(out_channels=2)  # learned variance: ε and a variance channel
    x_T = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        full = ddim.sample(lv, 3, x_T=x_T)
        first = ddim.sample(lambda x, t: lv(x, t).sample[:, :1], 3, x_T=x_T)
    assert torch.equal(full, first)


def test_half_precision_model_keeps_float32_state():
    calls = []

    def half_model(x, t):
        calls.append(x.dtype)
        return (0.1 * x).to(torch.bfloat16)

    x_T = torch.randn(2, 1, 4, 4)
    out = ddim.sample(half_model, 5, x_T=x_T)
    ref = ddim.sample(lambda x, t: (0.1 * x).to(torch.bfloat16).float(), 5, x_T=x_T)
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_bfloat16_module_gets_input_in_its_dtype():
    net = torch.nn.Conv2d(1, 1, 3, padding=1).to(torch.bfloat16)

    def model(x, t):
        assert x.dtype == torch.bfloat16
        return net(x)

    model.parameters = net.parameters  # a module-like callable: dtype read from parameters
    out = ddim.sample(model, 3, x_T=torch.randn(1, 1, 4, 4))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_float64_x_T_keeps_float64():
    out = ddim.sample(Recorder(), 3, x_T=torch.randn(1, 1, 2, 2, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_x_T_is_not_modified_in_place():
    x_T = torch.randn(2, 1, 4, 4)
    before = x_T.clone()
    ddim.sample(Recorder(), 5, 1.0, x_T=x_T, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_T, before)


def test_sigma_hat_runs_and_differs_from_eta1():
    x_T = torch.randn(2, 1, 4, 4)
    a = ddim.sample(Recorder(), 10, 1.0, x_T=x_T, generator=torch.Generator().manual_seed(0))
    b = ddim.sample(Recorder(), 10, x_T=x_T, sigma_hat=True,
                    generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(b).all() and not torch.equal(a, b)


def test_invert_then_sample_round_trip_with_true_eps():
    # a model that returns the same ε everywhere makes inversion exact
    s = NoiseSchedule.linear()
    eps = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    x_T = ddim.invert(lambda x, t: eps, x0, 20)
    grid = timesteps(s, 20)
    a_T = s.alphas_cumprod[grid[0]]
    torch.testing.assert_close(x_T, a_T.sqrt() * x0 + (1 - a_T).sqrt() * eps,
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(ddim.sample(lambda x, t: eps, 20, x_T=x_T), x0,
                               rtol=0, atol=1e-12)


def test_invert_evaluates_the_decoder_timesteps():
    rec = Recorder()
    ddim.invert(rec, torch.randn(1, 1, 2, 2), 5, spacing="trailing")
    grid = timesteps(NoiseSchedule.linear(), 5, "trailing").tolist()
    assert [c[0].item() for c in rec.calls] == grid[::-1]


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_memory_is_flat_in_steps(spacing):
    import tracemalloc

    def peak(steps):
        tracemalloc.start()
        ddim.sample(lambda x, t: 0.1 * x, steps, 1.0, x_T=torch.randn(1, 1, 2, 2),
                    generator=torch.Generator().manual_seed(0), spacing=spacing)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    peak(50)
    # nothing per step is kept but a few Python scalars of the grid and its coefficients
    # (< 400 bytes a step); no tensor, no trajectory
    assert peak(1000) - peak(50) < 400 * 950


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_cpu_generator_gives_the_same_result_on_cuda(eta):
    from tests.helpers import make_tiny_unet

    # TF32 is off here (the conftest fixture): with it on, cuDNN's convolutions differ from
    # the CPU's by ~1e-3 per forward and this differs by 0.025 (measured on an H200); off,
    # by 1.2e-4 on the leading grid: bounded at 1e-3, 8x that, far below what another
    # noise stream gives at η = 1 (order 1)
    unet = make_tiny_unet()
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    kw = dict(batch_size=2, spacing="leading")
    cpu = ddim.sample(unet, 10, eta, generator=gens(), **kw)
    gpu = ddim.sample(unet.cuda(), 10, eta, generator=gens(), **kw)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
@cuda
def test_cpu_noise_reaches_a_lagging_gpu_intact():
    # the GPU runs far behind the host here (each call queues 20 large matmuls), so a pinned
    # staging buffer reused before its asynchronous copy ran would hand the GPU later draws
    heavy = torch.randn(2048, 2048, device="cuda")

    def slow(x, t):
        y = heavy
        for _ in range(20):
            y = y @ heavy / 64
        return 0.1 * x + 0 * y[:1, :1].reshape(1, 1, 1, 1)

    def run(device):
        gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
        x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5)).to(device)
        model = slow if device == "cuda" else (lambda x, t: 0.1 * x)
        return ddim.sample(model, 25, 1.0, x_T=x_T, generator=gens)

    torch.testing.assert_close(run("cuda").cpu(), run("cpu"), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@cuda
def test_cuda_recorded_calls_and_no_host_sync():
    rec = Recorder()
    x_T = torch.randn(2, 1, 4, 4, device="cuda")
    # the setup (argument checks, x_T's finiteness) may sync; the steps must not
    it = ddim.sample_iter(rec, 10, 1.0, x_T=x_T, generator=torch.Generator("cuda"))
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(10):
            next(it)  # the 10 steps run without a host sync; the final check syncs once
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(t.device.type == "cuda" and t.dtype == torch.int64 for t, _, _ in rec.calls)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_max_batch_size_with_per_sample_generators_is_identical(eta):
    model = Recorder()
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(7)]  # noqa: E731
    whole = ddim.sample(model, 6, eta, shape=(7, 1, 3, 3), generator=gens())
    for k in (1, 3, 7, 50):
        chunked = ddim.sample(model, 6, eta, shape=(7, 1, 3, 3), generator=gens(),
                              max_batch_size=k)
        assert torch.equal(chunked, whole), k


def test_max_batch_size_bounds_the_model_batch_and_keeps_x_T():
    sizes = []

    def model(x, t):
        sizes.append(x.shape[0])
        return 0.1 * x

    x_T = torch.randn(10, 1, 2, 2)
    out = ddim.sample(model, 4, x_T=x_T, max_batch_size=4)
    assert set(sizes) == {4, 2} and len(sizes) == 4 * 3
    torch.testing.assert_close(out, ddim.sample(model, 4, x_T=x_T), rtol=0, atol=1e-6)
    one = ddim.sample(model, 4, 1.0, x_T=x_T, max_batch_size=3,
                      generator=torch.Generator().manual_seed(0))
    two = ddim.sample(model, 4, 1.0, x_T=x_T, max_batch_size=3,
                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(one, two)
    with pytest.raises(ValueError, match=r"max_batch_size must be an integer >= 1, got 0"):
        ddim.sample(model, 4, x_T=x_T, max_batch_size=0)


@pytest.mark.parametrize("ptype", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("options", [dict(eta=0.0), dict(eta=1.0), dict(sigma_hat=True),
                                     dict(eta=0.5, clip_sample=1.0), dict(final_alpha="first")])
def test_looking_at_the_steps_does_not_change_the_samples(ptype, options):
    # sample() skips x̂0/ε̂ when nobody looks; a callback, sample_iter or chunks must not change
    # a single bit of the result
    def run(**kw):
        return dict(x_T=torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1)),
                    generator=[torch.Generator().manual_seed(i) for i in range(4)],
                    prediction_type=ptype, **options, **kw)

    model = Recorder()
    plain = ddim.sample(model, 12, **run())
    seen = []
    with_callback = ddim.sample(model, 12, **run(callback=lambda i, t, x, x0: seen.append(x0)))
    steps = list(ddim.sample_iter(model, 12, **run()))
    chunked = ddim.sample(model, 12, max_batch_size=3, **run())
    assert len(seen) == 12 and all(isinstance(x0, torch.Tensor) for x0 in seen)
    for other in (with_callback, steps[-1].sample, chunked):
        assert torch.equal(plain, other)
    assert all(s.pred_x0 is not None and s.pred_eps is not None for s in steps)
    with torch.enable_grad():
        assert torch.equal(plain, ddim.sample(model, 12, **run()))


def test_setup_is_memoised_but_never_shared_mutably():
    # the per-step numbers of a (schedule, S, spacing, η, ...) setup are computed once; the
    # schedule hashes by value, so an equal schedule built anew hits the same entry
    from ddim.maths.grids import GridSpec
    from ddim.sampling.plan import step_table

    x_T = torch.randn(2, 1, 4, 4)

    def vandal(x, t):  # a model that scribbles on its timestep tensor (B=1: writable)
        out = 0.1 * x + 1e-4 * t.to(x.dtype).reshape(-1, 1, 1, 1)
        t.fill_(7)
        return out

    first = ddim.sample(Recorder(), 13, 0.3, x_T=x_T, generator=torch.Generator().manual_seed(0),
                        schedule=NoiseSchedule.linear(), spacing="trailing")
    hits = step_table.cache_info().hits
    ddim.sample(vandal, 13, 0.3, x_T=x_T[:1], generator=torch.Generator().manual_seed(0),
                schedule=NoiseSchedule.linear(), spacing="trailing")
    rec = Recorder()
    again = ddim.sample(rec, 13, 0.3, x_T=x_T, generator=torch.Generator().manual_seed(0),
                        schedule=NoiseSchedule.from_betas(NoiseSchedule.linear().betas),
                        spacing="trailing")
    assert step_table.cache_info().hits >= hits + 2
    assert torch.equal(first, again)
    assert [c[0][0].item() for c in rec.calls] == timesteps(NoiseSchedule.linear(),
        13, "trailing").tolist()
    table = step_table(NoiseSchedule.linear(), GridSpec(13, "trailing"), "ddim", "one", 0.3,
                       False, "epsilon", True)
    assert all(isinstance(v, tuple) for v in (table.grid, table.alpha_bar_t, table.coefficients))
    # other settings are other entries
    other = ddim.sample(Recorder(), 13, 0.0, x_T=x_T, schedule=NoiseSchedule.linear(),
                        spacing="trailing")
    assert not torch.equal(first, other)


def test_signatures_list_every_sampling_option():
    # the options are stated once (SampleOptions); every public entry point shows them all
    import inspect
    from dataclasses import fields

    from ddim.sampling.options import SampleOptions

    options = {f.name for f in fields(SampleOptions)} - {"x_name"}
    assert options <= set(inspect.signature(ddim.sample).parameters)
    assert options - {"max_batch_size"} <= set(inspect.signature(ddim.sample_iter).parameters)
    for fn in (ddim.sample, ddim.sample_iter):
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds


@pytest.mark.parametrize("fn", [ddim.sample, ddim.sample_iter])
def test_misspelt_keyword_names_the_public_function(fn):
    with pytest.raises(TypeError, match=rf"^{fn.__name__}\(\) got an unexpected keyword "
                                        r"argument 'stpes'"):
        fn(Recorder(), stpes=10, x_T=torch.randn(1, 1, 2, 2))


@pytest.mark.parametrize("call", [
    lambda m, x: ddim.img2img(m, x, 0.5, 4, stpes=3),
    lambda m, x: ddim.inpaint(m, x, torch.ones_like(x), 4, stpes=3),
    lambda m, x: ddim.interpolation_strip(m, x[:1], x[1:], 3, 4, stpes=3),
])
def test_misspelt_keyword_in_editing_names_the_function(call):
    with pytest.raises(TypeError, match=r"(img2img|inpaint|interpolation_strip)\(\) got an "
                                        r"unexpected keyword argument 'stpes'; its sampling "
                                        r"options are \["):
        call(Recorder(), torch.randn(2, 1, 2, 2))


def test_editing_refuses_options_it_sets_itself():
    x = torch.randn(2, 1, 2, 2)
    with pytest.raises(TypeError, match=r"img2img\(\) got an unexpected keyword argument "
                                        r"'x_T' \(it sets that itself\)"):
        ddim.img2img(Recorder(), x, 0.5, 4, x_T=x)


@pytest.mark.parametrize("context", ["plain", "no_grad", "enable_grad", "inference_mode"])
def test_result_is_an_ordinary_tensor_in_every_grad_mode(context):
    # the loop runs under inference_mode; what comes back must work wherever the caller uses it
    ctx = {"plain": torch.enable_grad, "no_grad": torch.no_grad,
           "enable_grad": torch.enable_grad, "inference_mode": torch.inference_mode}[context]
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    reference = ddim.sample(Recorder(), 5, x_T=x_T)
    with ctx():
        for out in (ddim.sample(Recorder(), 5, x_T=x_T),
                    ddim.sample(Recorder(), 5, x_T=x_T, max_batch_size=1),
                    ddim.img2img(Recorder(), x_T, 0.5, 5),
                    ddim.invert(Recorder(), x_T, 5),
                    ddim.inpaint(Recorder(), x_T, torch.ones(1, 1, 4, 4), 5)):
            assert out.is_inference() == (context == "inference_mode")
    out = ddim.sample(Recorder(), 5, x_T=x_T)
    assert torch.equal(out, reference) and not out.requires_grad
    w = torch.ones(1, requires_grad=True)
    (out * w).square().sum().backward()  # saved for backward: fails on an inference tensor
    assert torch.allclose(w.grad, 2 * out.square().sum())
    out.add_(1)  # in-place outside inference mode: fails on an inference tensor


# ---------------------------------------------------------------------- clean and zero-SNR levels
def test_clean_first_level_with_x0_prediction_returns_the_last_x0():
    s = NoiseSchedule([1.0, 0.5, 0.1])  # ᾱ = 1 at t=0: ε̂ would be 0/0 there

    def quarter(x, t):
        return torch.full_like(x, 0.25)

    out = ddim.sample(quarter, 3, x_T=torch.ones(1, 1, 1, 1), schedule=s,
                      prediction_type="sample")
    assert out.flatten().tolist() == [0.25]
    latent = ddim.invert(quarter, torch.ones(1, 1, 1, 1), 3, schedule=s,
                         prediction_type="sample")
    assert torch.isfinite(latent).all()


@pytest.mark.parametrize("schedule", [
    NoiseSchedule([1.0, 0.5, 0.1]),
    NoiseSchedule([1.0, 0.9, 0.5, 0.0], allow_zero_terminal=True),
    NoiseSchedule.linear().rescale_zero_terminal_snr(),
], ids=["clean-first", "clean-first-zero-terminal", "zero-terminal"])
@pytest.mark.parametrize("ptype", ["sample", "v_prediction", "epsilon"])
@pytest.mark.parametrize("setting", [dict(eta=0.0), dict(eta=1.0), dict(sigma_hat=True),
                                     dict(final_alpha="first"), dict(clip_sample=1.0)])
def test_no_schedule_and_prediction_type_makes_a_nan(schedule, ptype, setting):
    if ptype == "epsilon" and schedule.zero_terminal_snr:
        pytest.skip("refused with a clear message (test_errors)")
    T = schedule.num_train_timesteps
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    for steps in sorted({1, 2, T}):
        def model(x, t):
            return 0.3 * x + 0.1

        out = list(ddim.sample_iter(model, steps, x_T=torch.randn(2, 1, 3, 3), schedule=schedule,
                                    prediction_type=ptype, generator=gens, spacing="linspace",
                                    **setting))
        for step in out:
            for value in (step.sample, step.pred_x0, step.pred_eps):
                assert torch.isfinite(value).all(), (steps, step.index)
        if setting == dict(eta=0.0):
            kw = dict(schedule=schedule, prediction_type=ptype, spacing="linspace")
            a = grid_levels(schedule, timesteps(schedule, steps, "linspace"))
            if a[0][0] == 0 and a[1][0] == 1:  # from ᾱ = 0 to 1: x_T enters through x̂0 only
                with pytest.raises(ValueError, match=r"steps from ᾱ = 0 .* straight to ᾱ = 1"):
                    ddim.invert(model, out[-1].sample, steps, **kw)
            else:
                assert torch.isfinite(ddim.invert(model, out[-1].sample, steps, **kw)).all()
