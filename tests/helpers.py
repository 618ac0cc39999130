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
