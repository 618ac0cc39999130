"""`ddim invert` / `sample --latents` / `inpaint` / `img2img` on the bundled model."""

import numpy as np
import pytest
from PIL import Image

import ddim
from ddim import cli
from ddim.evaluation.digits import digits_split


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit")
    x = digits_split()[2][:4]
    np.savez(folder / "held.npz", images=ddim.to_uint8(x))
    Image.fromarray(ddim.to_uint8(x)[0, :, :, 0]).save(folder / "one.png")
    return folder


def test_invert_then_decode_round_trip(held, capsys):
    lat, back = held / "lat.npz", held / "back.npz"
    assert cli.main(["invert", "--images", str(held / "held.npz"), "--steps", "10",
                     "--method", "fixed_point", "--out", str(lat)]) == 0
    latents = np.load(lat)["latents"]
    assert latents.shape == (4, 1, 8, 8) and latents.dtype == np.float32
    assert cli.main(["sample", "--latents", str(lat), "--steps", "10", "--out", str(back)]) == 0
    a = np.load(held / "held.npz")["images"].astype(float)
    b = np.load(back)["images"].astype(float)
    assert np.abs(a - b).mean() < 3  # uint8 levels: the reconstruction is close
    assert "wrote 4 latents" in capsys.readouterr().out


def test_inpaint_keeps_the_known_half(held):
    out = held / "inp.npz"
    assert cli.main(["inpaint", "--images", str(held / "held.npz"), "--keep", "left",
                     "--steps", "5", "--out", str(out)]) == 0
    a = np.load(held / "held.npz")["images"]
    b = np.load(out)["images"]
    assert np.array_equal(a[:, :, :4], b[:, :, :4])


def test_img2img_and_png_input(held):
    out = held / "i2i.png"
    assert cli.main(["img2img", "--images", str(held / "one.png"), "--strength", "0.3",
                     "--steps", "5", "--out", str(out)]) == 0
    assert Image.open(out).size == (40, 40)  # one 8x8 image, 1-pixel border, scale 4


@pytest.mark.parametrize("args,message", [
    (["img2img", "--strength", "1.5"], "argument --strength: must be a finite number in [0, 1]"),
    (["inpaint"], "one of the arguments --mask --keep is required"),
    (["inpaint", "--mask", "MISSING.png"], "cannot read images from"),
    (["invert", "--method", "newton"], "invalid choice: 'newton'"),
    (["invert", "--out", "lat.png"], "--out must end in .npz"),
])
def test_edit_errors(held, capsys, args, message):
    argv = [args[0], "--images", str(held / "held.npz"), "--steps", "3",
            *args[1:]]
    if "--out" not in argv:
        argv += ["--out", str(held / "x.npz")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_wrong_image_shape(held, capsys):
    np.savez(held / "rgb.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    assert cli.main(["img2img", "--images", str(held / "rgb.npz"), "--strength", "0.5",
                     "--out", str(held / "x.npz")]) == 2
    assert "the model makes (1, 8, 8)" in capsys.readouterr().err


def test_sample_latents_errors(held, capsys):
    np.savez(held / "nolat.npz", other=np.zeros(2))
    assert cli.main(["sample", "--latents", str(held / "nolat.npz"), "--out",
                     str(held / "y.png")]) == 2
    assert "has no 'latents' array" in capsys.readouterr().err
    np.savez(held / "rgb_lat.npz", latents=np.zeros((2, 3, 8, 8), np.float32))
    assert cli.main(["sample", "--latents", str(held / "rgb_lat.npz"), "--out",
                     str(held / "y.png")]) == 2
    err = capsys.readouterr().err
    assert "holds latents of shape (3, 8, 8) (C, H, W), the model makes (1, 8, 8)" in err
