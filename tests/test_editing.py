"""Inpainting keeps the known pixels exactly; img2img interpolates between copy and sample, its
strength a level of the schedule (strength 1 starts from noise whatever the spacing)."""

import pytest
import torch

import ddim
from ddim.testing import GaussianMixture
from tests.helpers import TimestepRecorder, mixture_images

SCHED = ddim.NoiseSchedule.linear()
MIX = GaussianMixture(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5))
MODEL = MIX.model(SCHED)


def _image(seed=0):
    return MIX.sample(3, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- inpaint
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


# ---------------------------------------------------------------------------- img2img
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


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "quad"])
@pytest.mark.parametrize("steps", [1, 4, 10, 50])
def test_strength_one_starts_from_noise_for_every_spacing(spacing, steps):
    rec = TimestepRecorder()
    ddim.img2img(rec, mixture_images(), 1.0, steps, spacing=spacing)
    assert rec.t[0] == 999
    rec = TimestepRecorder()
    ddim.img2img(rec, mixture_images(), 0.5, steps, spacing=spacing)
    assert rec.t[0] == 500  # round(0.5 * 999)
    assert all(b < a for a, b in zip(rec.t, rec.t[1:], strict=False))


def test_strength_one_ignores_the_image():
    a, b = mixture_images(seed=1), mixture_images(seed=2)
    gen = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    out_a = ddim.img2img(MODEL, a, 1.0, 1, generator=gen(), spacing="leading")
    out_b = ddim.img2img(MODEL, b, 1.0, 1, generator=gen(), spacing="leading")
    sensitivity = (out_a - out_b).norm() / (a - b).norm()
    assert sensitivity < 0.02  # sqrt(ᾱ_999) = 0.0064 before the flow; was 0.9999
    near = ddim.img2img(MODEL, a, 0.05, 10, generator=gen())
    assert (near - a).norm() < 0.3 * (out_a - a).norm()


# ---------------------------------------------------------------------------- bad arguments
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
