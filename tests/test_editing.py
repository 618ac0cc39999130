"""Inpainting keeps the known pixels exactly; img2img interpolates between copy and sample."""

import pytest
import torch

import ddim
from ddim.testing import GaussianMixture

SCHED = ddim.NoiseSchedule.linear()
MIX = GaussianMixture(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5))
MODEL = MIX.model(SCHED)


def _image(seed=0):
    return MIX.sample(3, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("eta,resample", [(0.0, 0), (1.0, 0), (0.0, 2)])
def test_inpaint_keeps_known_pixels_exactly(eta, resample):
    image = _image()
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1  # left half known
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    out = ddim.inpaint(MODEL, image, mask, 10, eta, resample=resample, generator=gens)
    assert torch.equal(out[..., :2], image[..., :2])
    assert not torch.allclose(out[..., 2:], image[..., 2:])
    assert torch.isfinite(out).all()


def test_inpaint_is_deterministic_and_resample_costs_calls():
    calls = []

    def model(x, t):
        calls.append(1)
        return MODEL(x, t)

    image, mask = _image(), torch.ones(3, 1, 4, 4)
    mask[:, :, 2:] = 0
    a = ddim.inpaint(model, image, mask, 5, resample=2,
                     generator=torch.Generator().manual_seed(0))
    assert len(calls) == 5 * 3
    b = ddim.inpaint(MODEL, image, mask, 5, resample=2,
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_img2img_strength_ends():
    image = _image()
    assert torch.equal(ddim.img2img(MODEL, image, 0.0, 10), image)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    z = torch.randn(image.shape, generator=g()).double()  # noise is drawn in float32
    a = SCHED.alphas_cumprod[999]  # strength 1: from t = T-1 whatever the spacing
    grids = {"trailing": list(range(999, 0, -100)), "leading": [999, *range(900, -1, -100)]}
    for spacing, grid in grids.items():
        full = ddim.img2img(MODEL, image, 1.0, 10, generator=g(), spacing=spacing)
        ref = ddim.sample(MODEL, x_T=a.sqrt() * image + (1 - a).sqrt() * z, timesteps=grid)
        torch.testing.assert_close(full, ref)


def test_img2img_stays_closer_to_the_image_at_low_strength():
    image = _image()
    dist = {s: (ddim.img2img(MODEL, image, s, 20, generator=torch.Generator().manual_seed(2))
                - image).square().mean().item() for s in (0.2, 0.5, 1.0)}
    assert dist[0.2] < dist[0.5] < dist[1.0]


@pytest.mark.parametrize("mask,match", [
    (torch.ones(1, 1, 4, 5), "does not broadcast"),
    (torch.full((1, 1, 4, 4), 2.0), r"mask values must lie in \[0, 1\]"),
    (torch.full((1, 1, 4, 4), float("nan")), r"mask values must lie in \[0, 1\]"),
])
def test_bad_masks(mask, match):
    with pytest.raises(ValueError, match=match):
        ddim.inpaint(MODEL, _image(), mask, 5)


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_bad_strength(strength):
    with pytest.raises(ValueError, match="strength must be a finite number in"):
        ddim.img2img(MODEL, _image(), strength, 5)


def test_non_finite_image():
    image = _image()
    image[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="image contains NaN or inf"):
        ddim.img2img(MODEL, image, 0.5, 5)
    with pytest.raises(ValueError, match="image contains NaN or inf"):
        ddim.inpaint(MODEL, image, torch.ones(1, 1, 4, 4), 5)
