"""Inversion on a zero-terminal-SNR schedule (NoiseSchedule.rescale_zero_terminal_snr, v- or
x0-prediction): the step onto ᾱ = 0 is solved for x_T with x̂0,
x_T = (x_prev - sqrt(ᾱ_prev)·x̂0(x_T))/sqrt(1 - ᾱ_prev), where the ε-form is the identity
(ε̂(x_T) = x_T at ᾱ = 0). On the closed-form Gaussian model the implicit method then
reconstructs to rounding, where it was off by 4.7e-2 at S = 2 and 1.2e-3 at S = 10.
"""

import pytest
import torch

import ddim
from ddim import cli
from ddim.testing import GaussianMixture

F64 = dict(dtype=torch.float64)
ZSNR = ddim.NoiseSchedule.linear().rescale_zero_terminal_snr()
MIX = GaussianMixture(torch.linspace(-1, 1, 16, **F64).reshape(1, 1, 4, 4), 0.5)


class Oracle:
    """The exact v- (or x0-) prediction of a single Gaussian, counting its calls."""

    def __init__(self, prediction_type="v_prediction"):
        self.model, self.calls = MIX.model(ZSNR, prediction_type), []

    def __call__(self, x, t):
        self.calls.append(int(t[0]))
        return self.model(x, t)


def _x0():
    return MIX.sample(3, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
@pytest.mark.parametrize("steps", [2, 10])
def test_fixed_point_inversion_reconstructs_to_rounding(prediction_type, steps):
    """Measured max |decode(invert(x0)) - x0|: at most 6e-14 (it was 4.7e-2 at S = 2)."""
    x0, model = _x0(), Oracle(prediction_type)
    kw = dict(schedule=ZSNR, prediction_type=prediction_type)
    x_T = ddim.invert(model, x0, steps, method="fixed_point", max_iters=50, tol=1e-14, **kw)
    back = ddim.sample(Oracle(prediction_type), steps, x_T=x_T, **kw)
    assert (back - x0).abs().max() <= 1e-12
    assert model.calls[0] != 999 and 999 in model.calls  # the top step is solved at t = T-1


def test_the_top_step_is_no_longer_the_identity():
    """Plain inversion: x_T was the point of the grid's second level itself; now the top step
    moves it, one model call per step as before."""
    x0, model = _x0(), Oracle()
    kw = dict(schedule=ZSNR, prediction_type="v_prediction")
    second = ddim.invert(Oracle(), x0, timesteps=[500, 0], **kw)
    x_T = ddim.invert(model, x0, timesteps=[999, 500, 0], **kw)
    assert model.calls == [0, 500, 999]
    assert (x_T - second).abs().max() > 0.1
    a = float(ZSNR.alpha_bar(500))  # the right value: x_T = (x_500 - sqrt(ᾱ)·x̂0)/sqrt(1-ᾱ)
    x0_hat = MIX.x0(second, torch.tensor(0.0, **F64))
    torch.testing.assert_close(x_T, (second - a**0.5 * x0_hat) / (1 - a) ** 0.5, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m_true"])
def test_multistep_inversion_on_a_zero_snr_schedule(solver):
    x0 = _x0()
    kw = dict(schedule=ZSNR, prediction_type="v_prediction", solver=solver)
    x_T = ddim.invert(Oracle(), x0, 20, **kw)
    back = ddim.sample(Oracle(), 20, x_T=x_T, **kw)
    ddim_err = (ddim.sample(Oracle(), 20, x_T=ddim.invert(Oracle(), x0, 20, schedule=ZSNR,
                                                           prediction_type="v_prediction"),
                            schedule=ZSNR, prediction_type="v_prediction") - x0).abs().max()
    assert (back - x0).abs().max() < ddim_err


def test_a_step_from_zero_straight_to_one_is_refused_before_any_call():
    model = Oracle()
    with pytest.raises(ValueError, match=r"^this grid \(\[999\]\) steps from ᾱ = 0 \(zero "
                                         r"terminal SNR\) straight to ᾱ = 1, which cannot be "
                                         r"inverted"):
        ddim.invert(model, _x0(), 1, schedule=ZSNR, prediction_type="v_prediction")
    assert model.calls == []


def test_the_cli_inverts_a_zero_snr_folder(tmp_path, capsys):
    from diffusers import DDPMScheduler

    from tests.helpers import make_tiny_unet

    folder = tmp_path / "zsnr"
    make_tiny_unet().save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                  prediction_type="v_prediction", rescale_betas_zero_snr=True
                  ).save_pretrained(folder / "scheduler")
    import numpy as np

    np.savez(tmp_path / "in.npz", images=np.full((2, 8, 8, 1), 100, np.uint8))
    assert cli.main(["invert", "--model", str(folder), "--images", str(tmp_path / "in.npz"),
                     "--steps", "4", "--method", "fixed_point",
                     "--out", str(tmp_path / "lat.npz")]) == 0
    with np.load(tmp_path / "lat.npz") as data:
        assert np.isfinite(data["latents"]).all() and data["latents"].shape == (2, 1, 8, 8)
