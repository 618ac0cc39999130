"""slerp keeps the norm statistics of Gaussian noise; the strip decodes its end points."""

import math

import pytest
import torch

import ddim


def test_slerp_end_points_and_norms():
    g = torch.Generator().manual_seed(0)
    d = 3 * 16 * 16
    z0, z1 = torch.randn(512, 3, 16, 16, generator=g), torch.randn(512, 3, 16, 16, generator=g)
    torch.testing.assert_close(ddim.slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(ddim.slerp(z0, z1, 1.0), z1)
    mid = ddim.slerp(z0, z1, 0.5)
    lerp = 0.5 * (z0 + z1)
    norms = mid.flatten(1).norm(dim=1) / math.sqrt(d)
    # N(0, I) in d dims: |z|/sqrt(d) ≈ 1 ± 1/sqrt(2d); slerp keeps it, lerp shrinks by 1/sqrt(2)
    assert abs(norms.mean().item() - 1) < 0.01
    # the spread: between two near-orthogonal latents |mid|² ≈ (|z0|² + |z1|²)/2, which
    # averages two norms: their spread shrinks by about sqrt(2), never grows
    spread = norms.std().item() * math.sqrt(2 * d)
    assert 0.6 < spread < 0.85
    assert abs(lerp.flatten(1).norm(dim=1).mean().item() / math.sqrt(d) - 1 / math.sqrt(2)) < 0.01
    # per coordinate the slerp midpoint is still standard normal
    assert abs(mid.mean().item()) < 0.01 and abs(mid.std().item() - 1) < 0.01


def test_slerp_vector_alpha_and_parallel_latents():
    z0 = torch.randn(1, 2, 4, 4)
    pts = ddim.slerp(z0, z0, torch.linspace(0, 1, 5))  # θ = 0: falls back to lerp
    assert pts.shape == (5, 2, 4, 4) and torch.allclose(pts, z0.expand(5, -1, -1, -1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=1.5), "alpha must be"), (dict(alpha=math.nan), "alpha must be"),
    (dict(z1=torch.zeros(1, 2, 4, 5)), "one shape"),
])
def test_slerp_errors(kwargs, match):
    args = dict(z0=torch.randn(1, 2, 4, 4), z1=torch.randn(1, 2, 4, 4), alpha=0.5) | kwargs
    with pytest.raises(ValueError, match=match):
        ddim.slerp(**args)


def test_interpolation_strip_decodes_end_points():
    model = lambda x, t: 0.1 * x  # noqa: E731
    a, b = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    strip = ddim.interpolation_strip(model, a, b, num=4, steps=5)
    assert strip.shape == (4, 1, 4, 4)
    torch.testing.assert_close(strip[0:1], ddim.sample(model, 5, x_T=a))
    torch.testing.assert_close(strip[3:4], ddim.sample(model, 5, x_T=b))
    with pytest.raises(ValueError, match="num must be an integer >= 2"):
        ddim.interpolation_strip(model, a, b, num=1)
