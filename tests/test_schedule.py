"""NoiseSchedule: constructors against diffusers, the zero-terminal-SNR rescale, immutability,
and σ(η) at diffusers' reference values. The grids over a schedule: test_grids.py."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import ddim
from ddim import NoiseSchedule


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_named_schedules_match_diffusers(name):
    kw = dict(beta_start=0.00085, beta_end=0.012) if name == "scaled_linear" else {}
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kw).alphas_cumprod
    ours = NoiseSchedule.named(name, 1000, **kw).alphas_cumprod
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours.float(), ref, rtol=2e-6, atol=1e-7)


def test_from_diffusers_object_config_and_trained_betas():
    sched = DDIMScheduler(num_train_timesteps=500, beta_start=2e-4, beta_end=0.03)
    ours = NoiseSchedule.from_diffusers(sched)
    assert ours == NoiseSchedule.from_diffusers(dict(sched.config))
    assert ours == NoiseSchedule.linear(500, 2e-4, 0.03)
    betas = np.linspace(1e-3, 0.05, 20)
    trained = NoiseSchedule.from_diffusers({"trained_betas": betas.tolist()})
    torch.testing.assert_close(trained.alphas_cumprod, torch.tensor(np.cumprod(1 - betas)),
                               rtol=1e-15, atol=0)
    torch.testing.assert_close(trained.betas, torch.tensor(betas), rtol=1e-12, atol=1e-15)


def test_zero_terminal_snr_rescale_matches_diffusers():
    ref = DDIMScheduler(rescale_betas_zero_snr=True).alphas_cumprod
    ours = NoiseSchedule.linear().rescale_zero_terminal_snr()
    assert ours.zero_terminal_snr and ours.alphas_cumprod[-1] == 0
    assert torch.isclose(ours.alphas_cumprod[0], NoiseSchedule.linear().alphas_cumprod[0])
    # diffusers clamps the last ᾱ to 2**-24 to avoid its own division by zero
    torch.testing.assert_close(ours.alphas_cumprod[:-1].float(), ref[:-1], rtol=1e-5, atol=1e-7)
    assert NoiseSchedule.from_diffusers({"rescale_betas_zero_snr": True}) == ours


def test_schedule_is_immutable():
    s = NoiseSchedule.linear()
    a = s.alphas_cumprod
    a[:] = 0.5
    assert s.alphas_cumprod[0] == pytest.approx(0.9999)
    with pytest.raises(AttributeError):
        s.foo = 1  # __slots__: no new attributes


def test_sigma_reference_value():
    # diffusers' test_variance: σ² for (t, t_prev) = (420, 400) with η=1 is 0.14771
    s = NoiseSchedule.linear()

    def sigma(t, t_prev, eta):
        a = s.alpha_bar([t, t_prev])
        return float(ddim.ddim_sigma(a[0], a[1], eta))

    assert sigma(420, 400, eta=1.0) ** 2 == pytest.approx(0.14771, abs=1e-5)
    assert sigma(980, 960, eta=1.0) ** 2 == pytest.approx(0.32460, abs=1e-5)
    assert sigma(487, 486, eta=1.0) ** 2 == pytest.approx(0.00979, abs=1e-5)
    assert sigma(999, 998, eta=1.0) ** 2 == pytest.approx(0.02, abs=1e-5)
    assert sigma(420, 400, eta=0.0) == 0.0

