"""Shared fixtures: small random-init diffusers UNets built on the fly (no downloads), and the
CLI's loader replaced by stand-ins."""

import pytest
import torch

from tests.helpers import Elementwise, make_tiny_unet

torch.set_num_threads(1)  # small models: threads cost more than they give


@pytest.fixture(autouse=True)
def _float32_on_cuda(request):
    """CUDA tests compare with the CPU: TF32 off (and restored) while each one runs."""
    if request.node.get_closest_marker("cuda") is None:
        yield
        return
    from ddim.acceleration.precision import strict_float32

    with strict_float32():
        yield


@pytest.fixture
def quiet_diffusers():
    """diffusers warns on every ``.to(dtype)`` of a model; where the casts are deliberate."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    yield
    diffusers_logging.set_verbosity(level)


@pytest.fixture(scope="session")
def tiny_unet():
    return make_tiny_unet()


@pytest.fixture
def schedule():
    import ddim

    return ddim.NoiseSchedule.linear()


# ---------------------------------------------------------------------------- the CLI's loader
@pytest.fixture
def loads(monkeypatch):
    """Replace the CLI's loader: "tiny" and "nan" are known, anything else is unknown.

    Returns the list of names the CLI asked for (to check that no work started).
    """
    import ddim
    from ddim.cli import common

    calls = []

    def fake_load(name, *, device=None, torch_dtype=None, schedule=None):
        calls.append(name)
        if name not in ("tiny", "nan"):
            raise ddim.PretrainedError(f"model {name!r} not found")
        return ddim.Pretrained(model=Elementwise(nan=name == "nan"),
                               schedule=ddim.NoiseSchedule.linear(), sample_shape=(1, 4, 4),
                               name=name)

    monkeypatch.setattr(common, "load_pretrained", fake_load)
    return calls


@pytest.fixture
def no_loading(monkeypatch):
    """Every argument here can be checked without the model: loading it fails the test."""
    from ddim.cli import common

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(common, "load_pretrained", fail)


# ---------------------------------------------------------------------------- latent models
@pytest.fixture(scope="session")
def ldm_folder(tmp_path_factory):
    """A tiny LDMPipeline saved in diffusers' layout: vqvae/ (VQModel, scaling_factor 0.5,
    16×16 RGB images, 2×8×8 latents), unet/ (UNet2DModel), scheduler/ (DDIMScheduler)."""
    from tests.helpers import save_ldm_folder

    return save_ldm_folder(tmp_path_factory.mktemp("latent") / "ldm")


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """A tiny Stable-Diffusion-style folder: vae/ (AutoencoderKL, 4×8×8 latents), unet/
    (UNet2DConditionModel, cross-attention width 12), scheduler/ (SD's PNDMScheduler config),
    and a text_encoder/ that must be ignored."""
    from tests.helpers import save_sd_folder

    folder = save_sd_folder(tmp_path_factory.mktemp("latent") / "sd")
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "config.json").write_text('{"_class_name": "CLIPTextModel"}')
    return folder


@pytest.fixture
def ldm(ldm_folder):
    """The tiny LDM folder loaded (a fresh bundle: tests may cast it)."""
    import ddim

    return ddim.load_pretrained(ldm_folder)


@pytest.fixture
def sd(sd_folder):
    """The tiny Stable-Diffusion-style folder loaded (a fresh bundle)."""
    import ddim

    return ddim.load_pretrained(sd_folder)
