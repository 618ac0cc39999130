"""Classifier-free guidance and conditioning, on the exact Gaussian-mixture oracle."""

import numpy as np
import pytest
import torch

import ddim
from ddim.testing import GaussianMixture

SCHED = ddim.NoiseSchedule.linear()
MIX = GaussianMixture(torch.tensor([[-2.0], [2.0]]), torch.tensor([[0.5], [0.5]]), [0.5, 0.5])
F64 = dict(dtype=torch.float64)


def _x_T(n=400, seed=0):
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), **F64)


def test_w1_is_conditional_and_w0_unconditional_exactly():
    model = MIX.conditional_model(SCHED)
    labels = torch.tensor([0, 1] * 200)
    x_T = _x_T()
    cond = ddim.sample(lambda x, t: model(x, t, labels), 20, x_T=x_T)
    uncond = ddim.sample(lambda x, t: model(x, t, torch.full_like(labels, 2)), 20, x_T=x_T)
    assert torch.equal(ddim.sample(model, 20, x_T=x_T, class_labels=labels,
                                   guidance_scale=1.0), cond)
    assert torch.equal(ddim.sample(model, 20, x_T=x_T, class_labels=labels,
                                   guidance_scale=0.0), uncond)
    assert torch.equal(ddim.sample(model, 20, x_T=x_T, class_labels=labels), cond)


def test_guided_output_is_one_batched_forward_of_both_halves():
    model = MIX.conditional_model(SCHED)
    labels = torch.tensor([0, 1, 1])
    x_T = _x_T(3)
    w = 3.0
    out = ddim.sample(model, 5, x_T=x_T, class_labels=labels, guidance_scale=w)
    assert model.calls == [6] * 5  # 2B rows per call, one call per step

    def manual(x, t):
        e_c, e_u = model(x, t, labels), model(x, t, torch.full_like(labels, 2))
        return e_u + w * (e_c - e_u)

    torch.testing.assert_close(out, ddim.sample(manual, 5, x_T=x_T), rtol=0, atol=1e-12)


def test_guidance_sharpens_classes():
    model = MIX.conditional_model(SCHED)
    labels = torch.zeros(400, dtype=torch.int64)
    spread = {}
    for w in (1.0, 4.0):
        x = ddim.sample(model, 50, x_T=_x_T(), class_labels=labels, guidance_scale=w)
        spread[w] = x.std().item()
        assert (x < 0).float().mean() > 0.99  # all in component 0's mode
    assert spread[4.0] < 0.7 * spread[1.0]  # guidance narrows the class (std 0.47 -> 0.27)


def test_guidance_with_inversion_round_trip():
    model = MIX.conditional_model(SCHED)
    labels = torch.tensor([0, 1])
    x0 = torch.tensor([[-2.1], [1.8]], **F64)
    kw = dict(class_labels=labels, guidance_scale=2.0)
    x_T = ddim.invert(model, x0, 200, **kw)
    back = ddim.sample(model, 200, x_T=x_T, **kw)
    assert (back - x0).abs().max() < 0.05


def test_chunks_keep_the_labels_with_their_samples():
    model = MIX.conditional_model(SCHED)
    labels = torch.tensor([0, 1, 0, 1, 1])
    x_T = _x_T(5)
    whole = ddim.sample(model, 5, x_T=x_T, class_labels=labels, guidance_scale=2.0)
    chunked = ddim.sample(model, 5, x_T=x_T, class_labels=labels, guidance_scale=2.0,
                          max_batch_size=2)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


def test_model_kwargs_and_uncond_kwargs():
    seen = []

    def model(x, t, context):
        seen.append(context.shape)
        return 0.1 * x + context

    ctx, null = torch.ones(2, 1, 3), torch.zeros(2, 1, 3)
    x_T = torch.randn(2, 1, 3)
    out = ddim.sample(model, 3, x_T=x_T, model_kwargs={"context": ctx},
                      uncond_kwargs={"context": null}, guidance_scale=2.0)
    assert seen[0] == (4, 1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(class_labels=[0, 3]), ValueError, r"class_labels must lie in \[0, 2\] \(2: the null "
     r"class, unconditional\), got \[0, 3\]"),
    (dict(class_labels=[0, -1]), ValueError, r"class_labels must lie in \[0, 2\]"),
    (dict(class_labels=[0]), ValueError, r"one label per sample \(2\), got 1"),
    (dict(class_labels=[0.5, 1.0]), ValueError, r"class_labels must be integers"),
    (dict(class_labels=[0, 1], guidance_scale=-1.0), ValueError,
     r"guidance_scale must be a finite number >= 0, got -1\.0"),
    (dict(class_labels=[0, 1], guidance_scale=float("nan")), ValueError, "guidance_scale"),
])
def test_bad_conditioning(kwargs, error, match):
    with pytest.raises(error, match=match):
        ddim.sample(MIX.conditional_model(SCHED), 3, x_T=_x_T(2), **kwargs)


def test_numpy_and_tensor_integer_labels_are_one_label():
    cond = ddim.load_pretrained("digits-cond")
    x_T = torch.randn(2, 1, 8, 8)
    ref = ddim.sample(cond, 2, x_T=x_T, class_labels=3)
    for label in (np.int64(3), np.int32(3), torch.tensor(3)):
        assert torch.equal(ddim.sample(cond, 2, x_T=x_T, class_labels=label), ref)


@pytest.mark.parametrize("scale", [torch.tensor(2.0), "2", [2.0]])
def test_guidance_scale_of_the_wrong_type_is_a_type_error(scale):
    cond = ddim.load_pretrained("digits-cond")
    with pytest.raises(TypeError, match=r"guidance_scale must be a finite number >= 0, got"):
        ddim.sample(cond, 2, class_labels=3, guidance_scale=scale)


def test_guidance_on_an_unconditional_model():
    with pytest.raises(ValueError, match="guidance_scale needs conditioning"):
        ddim.sample(lambda x, t: x, 3, x_T=_x_T(2), guidance_scale=2.0)
    with pytest.raises(ValueError, match="not class-conditional"):
        ddim.sample(ddim.load_pretrained("digits"), 3, batch_size=2, class_labels=[1, 2])


def test_bundled_conditional_model():
    model = ddim.load_pretrained("digits-cond")
    from ddim.sampling.guidance import class_info

    assert class_info(model) == (10, 10)
    labels = torch.arange(4)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    plain = ddim.sample(model, 5, class_labels=labels, generator=gens(), batch_size=4)
    w1 = ddim.sample(model, 5, class_labels=labels, guidance_scale=1.0, generator=gens(),
                     batch_size=4)
    assert torch.equal(plain, w1)
    w3 = ddim.sample(model, 5, class_labels=labels, guidance_scale=3.0, generator=gens(),
                     batch_size=4)
    assert torch.isfinite(w3).all() and not torch.equal(w3, w1)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 10\] \(10: the null "
                                         r"class, unconditional\), got \[0, 11\]"):
        ddim.sample(model, 3, class_labels=[0, 11], batch_size=2)
    # the null class is the unconditional model: as w = 0 with any label
    null = ddim.sample(model, 5, class_labels=10, generator=gens(), batch_size=4)
    w0 = ddim.sample(model, 5, class_labels=labels, guidance_scale=0.0, generator=gens(),
                     batch_size=4)
    assert torch.equal(null, w0)
