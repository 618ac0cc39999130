"""Acceleration modes compute the same function as the eager model, or warn and fall back."""

import warnings

import pytest
import torch

import ddim
import ddim.acceleration.precision


def _sample(model, steps, x_T):
    """A sample on the leading grid: the trailing default starts at t=999, where x̂0 magnifies
    the ~1e-7 float32 differences between kernels 156-fold (1/sqrt(ᾱ_999))."""
    return ddim.sample(model, steps, x_T=x_T, spacing="leading")


@pytest.fixture(scope="module")
def digits():
    return ddim.load_pretrained("digits")


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# What another float32 kernel order may change in a sample: the network's own float32 noise.
# Measured on digits (S = 10, leading): an input scaled by 1 + 1e-7 moves the sample by 5.1e-6
# of its scale; channels_last moves it by 2.3e-6 to 5.0e-6 (S = 5, three x_T), trace by 0 on
# the development CPU. The bound is 20x that noise (a CPU that sums in another order), still
# far below what a wrong function gives (bf16 autocast: ~1e-2).
FLOAT32_NOISE = 1e-4


def test_trace_matches_eager_for_each_batch_shape(digits):
    fast = ddim.accelerate(digits, "trace")
    assert fast.schedule == digits.schedule and fast.sample_shape == digits.sample_shape
    for batch in (1, 5):
        x_T = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fall-back, no warning
            ours = _sample(fast, 10, x_T)
        assert _max_rel(ours, _sample(digits, 10, x_T)) <= FLOAT32_NOISE
    assert len(fast.model._forwards) == 2 and not fast.model.fallbacks


def test_channels_last_matches_and_leaves_the_callers_network_alone(digits):
    fast = ddim.accelerate(digits, "channels_last")
    x_T = torch.randn(3, 1, 8, 8)
    assert _max_rel(_sample(fast, 5, x_T), _sample(digits, 5, x_T)) <= FLOAT32_NOISE
    weight = next(p for p in digits.parameters() if p.ndim == 4)
    assert weight.is_contiguous()  # the original is still NCHW


def test_bf16_autocast_within_its_stated_tolerance(digits):
    fast = ddim.accelerate(digits, "autocast_bf16")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 1000, (8,), generator=g)
    with torch.no_grad():
        assert _max_rel(fast(x, t), digits(x, t)) <= 5e-2  # the stated per-call tolerance
    x_T = torch.randn(4, 1, 8, 8, generator=g)
    out = _sample(fast, 10, x_T)
    assert out.dtype == torch.float32 and not fast.model.fallbacks
    assert _max_rel(out, _sample(digits, 10, x_T)) <= 0.1  # after 10 steps


@pytest.mark.slow
def test_compile_matches_eager():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(4, 1, 3, padding=1)).eval()

    def model(x, t):
        return net(x) * (1 + t[:, None, None, None].float() / 1000)

    model.parameters = net.parameters
    fast = ddim.accelerate(model, "compile")
    x_T = torch.randn(2, 1, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _sample(fast, 4, x_T)
    assert not fast.fallbacks, fast.fallbacks
    assert not [w for w in caught if "ddim.accelerate" in str(w.message)]
    assert _max_rel(out, _sample(model, 4, x_T)) <= FLOAT32_NOISE


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fall-back")
def test_cuda_graph_on_cpu_warns_and_falls_back(digits):
    fast = ddim.accelerate(digits, "cuda_graph")
    x_T = torch.randn(2, 1, 8, 8)
    with pytest.warns(RuntimeWarning, match="cuda_graph is not used .*CUDA graphs need a CUDA"):
        out = _sample(fast, 3, x_T)
    torch.testing.assert_close(out, _sample(digits, 3, x_T))


def test_untraceable_model_warns_and_falls_back():
    def model(x, t):  # leaves torch: cannot be traced into a graph
        return torch.from_numpy(x.numpy() * 0.1)

    fast = ddim.accelerate(model, "trace")
    x_T = torch.randn(1, 1, 4, 4)
    with pytest.warns(RuntimeWarning, match="trace is not used"):
        out = _sample(fast, 3, x_T)
    torch.testing.assert_close(out, _sample(model, 3, x_T))


def test_wrong_result_is_refused_not_used(monkeypatch, digits):
    from ddim.acceleration.accelerate import Accelerated

    monkeypatch.setattr(Accelerated, "_trace", staticmethod(lambda fn, x, t: lambda x, t:
                                                           fn(x, t) + 1.0))
    fast = ddim.accelerate(digits, "trace")
    x_T = torch.randn(1, 1, 8, 8)
    with pytest.warns(RuntimeWarning, match="differs from the float32 model"):
        out = _sample(fast, 3, x_T)
    torch.testing.assert_close(out, _sample(digits, 3, x_T))


def test_bad_modes():
    with pytest.raises(ValueError, match=r"mode must be one of .*got 'turbo'"):
        ddim.accelerate(lambda x, t: x, "turbo")
    with pytest.raises(ValueError, match="at least one mode"):
        ddim.accelerate(lambda x, t: x)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_matches_eager():
    gpu = ddim.load_pretrained("digits", device="cuda")  # not the CPU fixture: .to moves in place
    fast = ddim.accelerate(gpu, "cuda_graph")
    x_T = torch.randn(2, 1, 8, 8, device="cuda")
    assert _max_rel(_sample(fast, 10, x_T), _sample(gpu, 10, x_T)) <= FLOAT32_NOISE
    assert not fast.model.fallbacks


def test_a_wrong_compiled_graph_still_falls_back(digits, monkeypatch):
    from ddim.acceleration.accelerate import Accelerated

    def wrong(fn, x, t):  # "compiles" to a graph that is off by 1e-2 of the output's scale
        return lambda x, t: fn(x, t) * 1.01

    monkeypatch.setattr(Accelerated, "_compile", staticmethod(wrong))
    fast = ddim.accelerate(digits, "compile")
    with pytest.warns(RuntimeWarning, match=r"compile is not used .*output differs from the "
                                            r"float32 model by 1\.0\de-02"):
        _sample(fast, 3, torch.randn(2, 1, 8, 8))
    assert fast.model.fallbacks and fast.model.noise == 0.0  # CPU: no device noise


def test_the_tolerance_follows_the_devices_own_noise():
    from ddim.acceleration.accelerate import tolerance

    assert tolerance(1e-4, 0.0) == 1e-4  # CPU float32: as before
    # TF32 on a GPU: eager itself errs by ~6.5e-4 (measured, H200); compiled graphs by about
    # as much must pass, a wrong graph (O(1e-2) and more) must not
    assert tolerance(1e-4, 6.5e-4) > 9.9e-4
    assert tolerance(1e-4, 6.5e-4) < 1e-2


def test_strict_float32_restores_the_flags_even_on_error():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32, torch.get_float32_matmul_precision(),
              cudnn.deterministic, cudnn.benchmark)
    with pytest.raises(KeyError), ddim.acceleration.precision.strict_float32():
        assert not cudnn.allow_tf32 and not matmul.allow_tf32 and cudnn.deterministic
        assert torch.get_float32_matmul_precision() == "highest"
        raise KeyError
    assert (cudnn.allow_tf32, matmul.allow_tf32, torch.get_float32_matmul_precision(),
            cudnn.deterministic, cudnn.benchmark) == before
