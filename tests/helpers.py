"""Plain helpers shared by several test files (fixtures live in conftest.py).

Test files import from here, never from one another.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).parents[1]

# A child Python that imports this checkout's ddim (src/ first on its path), single-threaded.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def python(code, **kwargs):
    """Run ``python -c code`` in a child process with SUBPROCESS_ENV; its CompletedProcess."""
    return subprocess.run([sys.executable, "-c", code], env=SUBPROCESS_ENV, capture_output=True,
                          text=True, timeout=300, **kwargs)


# ---------------------------------------------------------------------------- models
def make_tiny_unet(seed: int = 0, out_channels: int = 1):
    """The 8×8, 1-channel UNet2DModel of the benchmarks (block_out_channels (32, 64))."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=out_channels, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
    ).eval()


def make_tiny_vqvae(seed: int = 0, scaling_factor: float | None = 0.5):
    """A 16×16 RGB VQModel with 2 latent channels (f = 2, 16 codes): 8×8 latents.
    ``scaling_factor=None`` saves a config without the key (as CompVis' VQ models have)."""
    from diffusers import VQModel

    torch.manual_seed(seed)
    vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                 layers_per_block=1, latent_channels=2, num_vq_embeddings=16,
                 norm_num_groups=4, sample_size=16, scaling_factor=scaling_factor or 1.0)
    if scaling_factor is None:
        vq.register_to_config(scaling_factor=None)
    return vq.eval()


def make_tiny_vae(seed: int = 0):
    """A 16×16 RGB AutoencoderKL with 4 latent channels (f = 2), scaling_factor 0.18215."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                         layers_per_block=1, latent_channels=4, norm_num_groups=4,
                         sample_size=16).eval()


def make_tiny_latent_unet(seed: int = 0, channels: int = 2):
    """An 8×8 UNet2DModel on ``channels`` latent channels (block_out_channels (16, 32))."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=channels, out_channels=channels,
                       block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                       norm_num_groups=8).eval()


def make_tiny_cond_unet(seed: int = 0):
    """An 8×8, 4-channel UNet2DConditionModel with cross-attention on (B, L, 12) embeddings."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
        attention_head_dim=4, norm_num_groups=8).eval()


SD_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear",
                   beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's


def save_ldm_folder(folder, scaling_factor: float | None = 0.5):
    """A tiny LDMPipeline (VQModel, UNet2DModel, DDIMScheduler) saved in ``folder``."""
    from diffusers import DDIMScheduler, LDMPipeline

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    LDMPipeline(vqvae=make_tiny_vqvae(1, scaling_factor), unet=make_tiny_latent_unet(2),
                scheduler=sched).save_pretrained(folder)
    return folder


def save_sd_folder(folder):
    """A tiny Stable-Diffusion-style folder: vae/ (AutoencoderKL), unet/
    (UNet2DConditionModel), scheduler/ (PNDMScheduler as SD ships it); no text encoder."""
    import json

    from diffusers import PNDMScheduler

    make_tiny_vae(3).save_pretrained(folder / "vae")
    make_tiny_cond_unet(4).save_pretrained(folder / "unet")
    PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, steps_offset=1,
                  set_alpha_to_one=False).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "PNDMScheduler"]}))
    return folder


class Elementwise(torch.nn.Module):
    """A smooth per-pixel ε model: each sample's output depends on that sample only."""

    def __init__(self, nan: bool = False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(float("nan") if nan else 0.5))

    def forward(self, x, t):
        return self.w * torch.tanh(x) + t.to(x.dtype).reshape(-1, 1, 1, 1) / 2000


class TimestepRecorder:
    """Records the timestep of every call; returns a smooth function of x (or, given a
    ``model``, that model's output)."""

    def __init__(self, model=None):
        self.t, self.model = [], model

    def __call__(self, x, t):
        self.t.append(int(t[0]))
        return self.model(x, t) if self.model else 0.1 * torch.tanh(x)


def mixture_images(b=2, seed=0):
    """``b`` float32 samples (1×4×4) of a Gaussian mixture at 0 with std 0.5, drawn with
    ``seed``."""
    from ddim.testing import GaussianMixture

    mix = GaussianMixture(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5))
    return mix.sample(b, torch.Generator().manual_seed(seed)).float()


# ---------------------------------------------------------------------------- the CLI
def check_error(capsys, args, status, fragment):
    """main(args) exits with ``status`` after one ``ddim: error:`` line naming ``fragment``."""
    from ddim import cli

    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == status, err
    assert out == "" and "Traceback" not in err
    assert err.startswith("ddim: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert fragment in err, err


def load_npz(path):
    """{name: array} of an .npz file (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
