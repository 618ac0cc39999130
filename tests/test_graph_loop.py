"""The whole-loop CUDA graph: its loop over static buffers reproduces the eager loop bit for bit
(on any device), it falls back with a warning where it cannot run, and on a GPU its replays
equal the eager loop."""

import warnings

import pytest
import torch

import ddim
from ddim.acceleration.graph_loop import LoopGraphs, StaticLoop
from ddim.sampling.options import SampleOptions
from ddim.sampling.plan import make_plan
from tests.helpers import make_tiny_unet


def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("kw", [dict(eta=0.0), dict(eta=1.0), dict(sigma_hat=True),
                                 dict(eta=0.5, clip_sample=1.0), dict(solver="dpmpp_2m"),
                                 dict(solver="unipc"), dict(solver="dpmpp_2m_sde")],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("single", [False, True], ids=["per-sample", "one-generator"])
def test_static_loop_draws_ahead_exactly_what_the_eager_loop_draws(kw, single):
    unet = make_tiny_unet()
    gens = (lambda: torch.Generator().manual_seed(3)) if single else (lambda: _gens(3))
    eager = ddim.sample(unet, 8, batch_size=3, generator=gens(), **kw)
    plan = make_plan(unet, SampleOptions(steps=8, batch_size=3, generator=gens(), **kw))
    with torch.inference_mode():
        static = StaticLoop(plan)
        static.fill(plan)
        static.body()
        assert torch.equal(static.result(), eager)
        # a second fill (the next call's x_T and noise) reuses the same buffers
        other = make_plan(unet, SampleOptions(steps=8, batch_size=3, generator=_gens(3, 10),
                                              **kw))
        static.fill(other)
        static.body()
        again = static.result()
    assert torch.equal(again, ddim.sample(unet, 8, batch_size=3, generator=_gens(3, 10), **kw))


def test_static_loop_probes_name_the_bad_step():
    def bad(x, t):
        return torch.where(t.reshape(-1, 1, 1, 1) == 499, float("nan"), 0.1 * x)

    plan = make_plan(bad, SampleOptions(steps=4, shape=(1, 1, 2, 2)))
    static = StaticLoop(plan)
    static.fill(plan)
    static.body()
    with pytest.raises(ddim.NonFiniteError, match=r"at step 2 \(t=499\)"):
        static.result()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fall-back")
def test_graph_loop_on_cpu_warns_once_and_runs_the_eager_loop():
    digits = ddim.load_pretrained("digits")
    fast = ddim.accelerate(digits, "graph_loop")
    x_T = torch.randn(2, 1, 8, 8)
    with pytest.warns(RuntimeWarning, match=r"graph_loop is not used \(CUDA graphs need a "
                                            r"CUDA device\)"):
        out = ddim.sample(fast, 5, x_T=x_T)
    assert torch.equal(out, ddim.sample(digits, 5, x_T=x_T))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ddim.sample(fast, 5, x_T=x_T)  # said once
    assert fast.model.loop_graphs.fallbacks == ["CUDA graphs need a CUDA device"]


def test_graph_loop_and_cuda_graph_exclude_each_other():
    with pytest.raises(ValueError, match=r"modes 'graph_loop' and 'cuda_graph' exclude each "
                                         r"other"):
        ddim.accelerate(lambda x, t: x, "graph_loop", "cuda_graph")


def test_what_cannot_be_graphed_is_named():
    plan = make_plan(lambda x, t: x, SampleOptions(steps=3, shape=(1, 1, 2, 2),
                                                   callback=lambda *a: None))
    assert LoopGraphs._unsupported(plan) in ("CUDA graphs need a CUDA device",
                                             "a callback or progress bar runs between the steps")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kw", [dict(eta=0.0), dict(eta=1.0), dict(solver="dpmpp_2m"),
                                 dict(solver="dpmpp_2m_sde")])
def test_graph_loop_replays_equal_the_eager_loop_on_cuda(kw):
    digits = ddim.load_pretrained("digits", device="cuda")
    fast = ddim.accelerate(digits, "graph_loop")
    for seed in (0, 1):  # the first call captures, the second replays
        eager = ddim.sample(digits, 20, batch_size=4, generator=_gens(4, seed), **kw)
        graphed = ddim.sample(fast, 20, batch_size=4, generator=_gens(4, seed), **kw)
        err = (graphed - eager).abs().max().item() / eager.abs().max().item()
        assert err <= 1e-6, err
    assert len(fast.model.loop_graphs._graphs) == 1 and not fast.model.loop_graphs.fallbacks
    # per-sample generators: sample 3 of seed 1's batch, alone, is that sample
    one = ddim.sample(fast, 20, batch_size=1, generator=_gens(1, 4), **kw)
    torch.testing.assert_close(one[0], graphed[3], rtol=1e-5, atol=1e-5)
