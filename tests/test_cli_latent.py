"""The command line on a latent folder (the tiny LDMPipeline of conftest.py): sample, generate,
invert, sample --latents, img2img and inpaint write images (invert: latents), run.json
records the autoencoder, and what the command line cannot do is said in one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import ddim
from ddim import cli
from ddim.sampling.noise import sample_generators
from tests.helpers import SUBPROCESS_ENV, check_error, load_npz


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Three 16×16 RGB images as the CLI reads them (uint8 .npz), and one 15×16 image."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    np.savez(folder / "in.npz", images=rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    np.savez(folder / "odd.npz", images=rng.integers(0, 256, (1, 15, 16, 3), dtype=np.uint8))
    return folder


def _images(path):
    return load_npz(path)["images"]


def test_sample_writes_decoded_images(ldm_folder, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert cli.main(["sample", "--model", str(ldm_folder), "--steps", "3", "--num", "3",
                     "--batch-size", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 3 images ({ldm_folder}, 3 steps")
    images = _images(out)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    expected = ddim.to_uint8(ddim.sample(ddim.load_pretrained(ldm_folder), 3, batch_size=3,
                                         generator=sample_generators(0, 0, 3)))
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1  # float32 batches
    png = tmp_path / "s.png"
    assert cli.main(["sample", "--model", str(ldm_folder), "--steps", "2", "--num", "1",
                     "--scale", "1", "--out", str(png)]) == 0
    with Image.open(png) as im:
        assert im.mode == "RGB" and im.size == (18, 18)  # one 16×16 image, 1-pixel border


def test_invert_writes_latents_that_sample_decodes(ldm_folder, pictures, tmp_path, capsys):
    lat, back = tmp_path / "lat.npz", tmp_path / "back.npz"
    assert cli.main(["invert", "--model", str(ldm_folder), "--images",
                     str(pictures / "in.npz"), "--steps", "4", "--out", str(lat)]) == 0
    latents = load_npz(lat)
    assert latents["latents"].shape == (3, 2, 8, 8) and latents["latents"].dtype == np.float32
    assert int(latents["steps"]) == 4
    bundle = ddim.load_pretrained(ldm_folder)
    x = ddim.images.from_uint8(_images(pictures / "in.npz"))
    np.testing.assert_allclose(latents["latents"], ddim.invert(bundle, x, steps=4).numpy(),
                               rtol=0, atol=1e-5)
    assert cli.main(["sample", "--model", str(ldm_folder), "--latents", str(lat), "--steps",
                     "4", "--out", str(back)]) == 0
    decoded = ddim.to_uint8(ddim.sample(bundle, 4, x_T=ddim.invert(bundle, x, steps=4)))
    assert _images(back).shape == (3, 16, 16, 3)
    assert np.abs(_images(back).astype(int) - decoded.astype(int)).max() <= 1
    assert "wrote 3 latents" in capsys.readouterr().out


def test_img2img_and_inpaint_write_images(ldm_folder, pictures, tmp_path):
    i2i, inp = tmp_path / "i2i.npz", tmp_path / "inp.npz"
    assert cli.main(["img2img", "--model", str(ldm_folder), "--images",
                     str(pictures / "in.npz"), "--strength", "0.5", "--steps", "4", "--out",
                     str(i2i)]) == 0
    assert _images(i2i).shape == (3, 16, 16, 3)
    assert cli.main(["inpaint", "--model", str(ldm_folder), "--images",
                     str(pictures / "in.npz"), "--keep", "left", "--steps", "4", "--out",
                     str(inp)]) == 0
    kept, given = _images(inp), _images(pictures / "in.npz")
    assert np.array_equal(kept[:, :, :8], given[:, :, :8])  # restored in pixel space


def test_generate_records_the_autoencoder(ldm_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["generate", "--model", str(ldm_folder), "--num", "3", "--steps", "2",
                     "--shard-size", "2", "--out", str(out), "--pack",
                     str(tmp_path / "all.npz"), "--png"]) == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["autoencoder"]["class"] == "VQModel"
    assert len(manifest["autoencoder"]["weights"]["sha256"]) == 64
    assert _images(tmp_path / "all.npz").shape == (3, 16, 16, 3)
    with Image.open(out / "png" / "000000.png") as im:
        assert im.mode == "RGB" and im.size == (16, 16)
    capsys.readouterr()
    assert cli.main(["generate", "--model", str(ldm_folder), "--num", "3", "--steps", "2",
                     "--shard-size", "2", "--out", str(out)]) == 0  # resumes: same run
    assert "2 kept from before" in capsys.readouterr().out


def test_what_the_command_line_refuses(ldm_folder, sd_folder, pictures, tmp_path, capsys):
    check_error(capsys, ["img2img", "--model", ldm_folder, "--images", pictures / "odd.npz",
                         "--strength", "0.5", "--out", tmp_path / "o.npz"], 2,
                f"--images {pictures / 'odd.npz'} has size 15×16: the autoencoder (VQModel) "
                "takes images (B, 3, H, W) with H and W multiples of 2 (its 2 blocks), e.g. "
                "16×16")
    check_error(capsys, ["sample", "--model", sd_folder, "--out", tmp_path / "o.png"], 2,
                f"--model {sd_folder}: its UNet2DConditionModel is conditioned on prompt "
                "embeddings (encoder_hidden_states), which the command line does not pass; "
                "sample it from Python with model_kwargs (see docs/latent-diffusion.md)")
    lonely = tmp_path / "lonely"
    (lonely / "vqvae").mkdir(parents=True)
    (lonely / "vqvae" / "config.json").write_text("{}")
    check_error(capsys, ["sample", "--model", lonely, "--out", tmp_path / "o.png"], 2,
                f"{lonely} has an autoencoder (vqvae/) but no unet/config.json")
    check_error(capsys, ["sample", "--model", ldm_folder, "--latents", pictures / "in.npz",
                         "--out", tmp_path / "o.png"], 2, "has no 'latents' array")


@pytest.mark.slow
def test_python_m_ddim_samples_a_latent_folder(ldm_folder, tmp_path):
    out = tmp_path / "s.npz"
    proc = subprocess.run([sys.executable, "-m", "ddim", "sample", "--model", str(ldm_folder),
                           "--steps", "2", "--num", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**SUBPROCESS_ENV, "HF_HUB_OFFLINE": "1"}, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote 2 images") and proc.stderr == ""
    assert _images(out).shape == (2, 16, 16, 3)
