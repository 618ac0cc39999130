"""Shared fixtures: small random-init diffusers UNets built on the fly (no downloads)."""

import pytest
import torch

torch.set_num_threads(1)  # small models: threads cost more than they give


def make_tiny_unet(seed: int = 0, out_channels: int = 1):
    """The 8×8, 1-channel UNet2DModel of the benchmarks (block_out_channels (32, 64))."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=out_channels, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
    ).eval()


@pytest.fixture(autouse=True)
def _float32_on_cuda(request):
    """CUDA tests compare with the CPU: TF32 off (and restored) while each one runs."""
    if request.node.get_closest_marker("cuda") is None:
        yield
        return
    from ddim.acceleration.precision import strict_float32

    with strict_float32():
        yield


@pytest.fixture(scope="session")
def tiny_unet():
    return make_tiny_unet()


@pytest.fixture
def schedule():
    import ddim

    return ddim.NoiseSchedule.linear()
