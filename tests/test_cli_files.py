"""Every file a command reads gives one clear line naming the flag, the file and what is wrong
(truncated, not an .npz, wrong keys, dtype, shape, values); bad devices are refused before
anything is written; a full disk under --pack and eval --json says what happened and what to
do.

Files are checked before the model is loaded (the loader fails the test), except what only
the model can tell (its sample shape), which is checked before any model call.
"""

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from ddim import cli
from ddim.cli import evaluate
from ddim.generation import packing
from tests.helpers import check_error

CHEAP = ["--steps", 2, "--num", 2]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Good and bad input files in the working directory."""
    monkeypatch.chdir(tmp_path)
    images = np.zeros((2, 4, 4, 1), np.uint8)
    np.savez("good.npz", images=images)
    Path("truncated.npz").write_bytes(Path("good.npz").read_bytes()[:60])
    np.save("array.npy", images)
    os.rename("array.npy", "array.npz")  # a .npy array under an .npz name
    Path("text.npz").write_text("images = 0\n")
    Path("empty.npz").write_bytes(b"")
    np.savez("floats.npz", images=images.astype(np.float64))
    np.savez("nokey.npz", pictures=images)
    np.savez("objects.npz", images=np.array([None, 1], dtype=object))
    np.savez("none.npz", images=np.zeros((0, 4, 4, 1), np.uint8))
    np.savez("one.npz", images=images[:1])
    np.savez("rgb.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    np.savez("big.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    np.savez("lat_rgb.npz", latents=np.zeros((2, 3, 4, 4), np.float32))
    np.savez("lat_flat.npz", latents=np.zeros((2, 16), np.float32))
    np.savez("lat_nan.npz", latents=np.full((2, 1, 4, 4), np.nan, np.float32))
    np.savez("lat_complex.npz", latents=np.zeros((2, 1, 4, 4), np.complex64))
    np.savez("mask_2.npz", mask=np.full((4, 4), 2.0))
    np.savez("mask_nan.npz", mask=np.full((4, 4), np.nan))
    np.savez("mask_text.npz", mask=np.array(["left"] * 16).reshape(4, 4))
    np.savez("mask_shape.npz", mask=np.ones((3, 4)))
    np.savez("mask_n.npz", mask=np.ones((3, 4, 4, 1)))
    return tmp_path


READERS = {  # flag: the command line that reads it, with {} for the file
    "eval --images": ["eval", "--images", "{}", "--reference", "good.npz"],
    "eval --reference": ["eval", "--images", "good.npz", "--reference", "{}"],
    "sample --latents": ["sample", "--latents", "{}", "--out", "o.png"],
    "invert --images": ["invert", "--images", "{}", "--out", "o.npz"],
    "img2img --images": ["img2img", "--images", "{}", "--strength", "0.5", "--out", "o.png"],
    "inpaint --images": ["inpaint", "--images", "{}", "--keep", "left", "--out", "o.png"],
    "inpaint --mask": ["inpaint", "--images", "good.npz", "--mask", "{}", "--out", "o.png"],
}
WHAT = {"--latents": "latents", "--mask": "the mask"}


def argv_for(reader, name):
    return [a.format(name) for a in READERS[reader]]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name, problem", [
    ("missing.npz", "cannot read {what} from missing.npz: No such file or directory"),
    ("truncated.npz", "cannot read {what} from truncated.npz: "),
    ("array.npz", "array.npz is not an .npz archive of named arrays (a .npy array; np.savez "
                  "writes those)"),
    ("text.npz", "text.npz is not an .npz archive of named arrays (not a zip file"),
    ("empty.npz", "empty.npz is not an .npz archive"),
    ("objects.npz", "cannot read {what} from objects.npz: Object arrays cannot be loaded"),
    ("nokey.npz", "nokey.npz has no {keys} array (found: ['pictures'])"),
])
@pytest.mark.usefixtures("no_loading")
def test_unreadable_files_are_one_line_naming_flag_and_file(reader, name, problem, files,
                                                            capsys):
    """The reported example: a truncated .npz raised zipfile.BadZipFile."""
    flag = reader.split()[1]
    keys = {"--latents": "'latents'", "--mask": "'mask' or 'images'"}.get(flag, "'images'")
    what = WHAT.get(flag, "images")
    before = sorted(os.listdir())
    check_error(capsys, argv_for(reader, name), 2,
                f"{flag}: {problem.format(what=what, keys=keys)}")
    assert sorted(os.listdir()) == before


@pytest.mark.parametrize("reader", [r for r in READERS if r != "sample --latents"
                                    and r != "inpaint --mask"])
@pytest.mark.parametrize("name, problem", [
    ("floats.npz", "floats.npz: images must be uint8 (N, H, W, C) with no empty dimension, "
                   "got float64 (2, 4, 4, 1)"),
    ("none.npz", "none.npz: images must be uint8 (N, H, W, C) with no empty dimension, got "
                 "uint8 (0, 4, 4, 1)"),
])
@pytest.mark.usefixtures("no_loading")
def test_images_of_the_wrong_dtype_or_shape(reader, name, problem, files, capsys):
    """The reported example: a float64 `images` array given to eval raised a traceback."""
    flag = reader.split()[1]
    check_error(capsys, argv_for(reader, name), 2, f"{flag}: {problem}")


@pytest.mark.parametrize("name, problem", [
    ("lat_flat.npz", "lat_flat.npz: latents must have shape (N, C, ...) with no empty "
                     "dimension, got (2, 16)"),
    ("lat_nan.npz", "lat_nan.npz: latents contain NaN or inf values"),
    ("lat_complex.npz", "lat_complex.npz: latents must be real numbers, got complex64"),
])
@pytest.mark.usefixtures("no_loading")
def test_latents_of_the_wrong_kind(name, problem, files, capsys):
    check_error(capsys, argv_for("sample --latents", name), 2, f"--latents: {problem}")


@pytest.mark.parametrize("name, problem", [
    ("mask_2.npz", "mask_2.npz: mask values must lie in [0, 1] (1 = keep, 0 = generate; "
                   "uint8: 0..255), got 2.0..2.0"),
    ("mask_nan.npz", "mask_nan.npz: mask values must lie in [0, 1]"),
    ("mask_text.npz", "mask_text.npz: the mask must be real numbers, got <U4"),
    ("mask_shape.npz", "mask_shape.npz: a mask of shape (3, 4) does not fit the 2 images of "
                       "shape (4, 4, 1): give (H, W), (N, H, W) or (N, H, W, C)"),
    ("mask_n.npz", "mask_n.npz: a mask of shape (3, 4, 4, 1) does not fit the 2 images"),
])
@pytest.mark.usefixtures("no_loading")
def test_masks_of_the_wrong_kind(name, problem, files, capsys):
    check_error(capsys, argv_for("inpaint --mask", name), 2, f"--mask: {problem}")


@pytest.mark.parametrize("reader, name, problem", [
    ("eval --images", "one.npz", "--images: one.npz holds 1 image; the Fréchet distance "
                                 "needs at least 2"),
    ("eval --reference", "one.npz", "--reference: one.npz holds 1 image; the Fréchet "
                                    "distance needs at least 2"),
    ("eval --images", "big.npz", "--images: big.npz holds images that have shape (1, 8, 8) "
                                 "(C, H, W), the reference images (1, 4, 4)"),
    ("eval --reference", "rgb.npz", "--images: good.npz holds images that have shape "
                                    "(1, 4, 4) (C, H, W), the reference images (3, 4, 4)"),
])
@pytest.mark.usefixtures("no_loading")
def test_eval_sets_that_cannot_be_compared(reader, name, problem, files, capsys):
    check_error(capsys, argv_for(reader, name), 2, problem)


@pytest.mark.usefixtures("no_loading")
def test_images_no_shipped_classifier_takes_need_other_features(files, capsys):
    check_error(capsys, ["eval", "--images", "rgb.npz", "--reference", "rgb.npz"], 2,
                "--images: rgb.npz holds images that have shape (3, 4, 4) (C, H, W); the "
                "default features (the shipped digits and MNIST classifiers) take (1, 8, 8) or "
                "(1, 28, 28): pass --features module:function")
    check_error(capsys, ["eval", "--images", "rgb.npz"], 2,
                "no default features or reference for images of shape (3, 4, 4) (C, H, W); the "
                "shipped ones take [(1, 8, 8), (1, 28, 28)]: pass your own: --reference "
                "FILE.npz and --features module:function")


@pytest.mark.parametrize("reader, name, problem", [
    ("sample --latents", "lat_rgb.npz", "--latents: lat_rgb.npz holds latents of shape "
                                        "(3, 4, 4) (C, H, W), the model makes (1, 4, 4)"),
    ("invert --images", "rgb.npz", "--images: rgb.npz holds images of shape (3, 4, 4) (C, H, "
                                   "W), the model makes (1, 4, 4)"),
    ("img2img --images", "big.npz", "--images: big.npz holds images of shape (1, 8, 8)"),
])
def test_shapes_the_model_cannot_take_are_refused_before_any_model_call(
        reader, name, problem, files, loads, capsys):
    check_error(capsys, [*argv_for(reader, name), "--model", "tiny"], 2, problem)
    assert loads == ["tiny"]


@pytest.mark.parametrize("argv", [
    ["sample"], ["eval"], ["generate", "--num", 2, "--out", "run"],
    ["invert", "--images", "good.npz", "--out", "l.npz"],
    ["img2img", "--images", "good.npz", "--strength", 0.5, "--out", "o.png"],
    ["inpaint", "--images", "good.npz", "--keep", "left", "--out", "o.png"],
])
@pytest.mark.parametrize("device, problem", [
    ("meta", "--device='meta' holds no data: use 'cpu' or 'cuda'"),
    ("bogus", "--device must be a device such as 'cpu', 'cuda' or 'cuda:1', got 'bogus'"),
])
@pytest.mark.usefixtures("no_loading")
def test_bad_devices_are_refused_before_anything_is_written(argv, device, problem, files,
                                                           capsys):
    """The reported example: `--device meta` gave a traceback after generate wrote run.json."""
    before = sorted(os.listdir())
    check_error(capsys, [*argv, "--device", device], 2, problem)
    assert sorted(os.listdir()) == before


def test_pack_on_a_full_disk_names_the_file_and_says_the_shards_are_complete(
        loads, capsys, tmp_path, monkeypatch):
    real = packing.save_npz

    def full_for_the_pack(path, *args, **kwargs):
        if Path(path).name == "p.npz":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(packing, "save_npz", full_for_the_pack)
    argv = ["generate", "--model", "tiny", "--num", 6, "--shard-size", 4, "--steps", 2,
            "--out", tmp_path / "run", "--pack", tmp_path / "p.npz"]
    check_error(capsys, argv, 1,
                f"cannot write {tmp_path / 'p.npz'}: No space left on device; no partial file "
                f"is left, and the 2 shards in {tmp_path / 'run'} are complete: free some "
                "space and pack again (rerun this command: it keeps the shards and only "
                "packs)")
    monkeypatch.setattr(packing, "save_npz", real)
    assert cli.main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert "(0 shards generated, 2 kept from before)" in out and "packed into" in out


def test_eval_json_on_a_full_disk_keeps_the_printed_result(capsys, tmp_path, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(evaluate, "atomic_write_text", full)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8))
    np.savez(tmp_path / "b.npz", images=rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8))
    status = cli.main(["eval", "--images", str(tmp_path / "a.npz"), "--reference",
                       str(tmp_path / "b.npz"), "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert status == 1 and out.startswith("FD ") and "Traceback" not in err
    assert err == (f"ddim: error: cannot write {tmp_path / 'r.json'}: No space left on device "
                   "(the result is printed above)\n")
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]


def test_an_unreadable_run_json_is_one_line_and_overwrite_starts_over(loads, capsys,
                                                                      tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"num": 4,')  # cut off by hand
    argv = ["generate", "--model", "tiny", "--num", 2, "--steps", 2, "--out", out]
    check_error(capsys, argv, 2, f"cannot read {out / 'run.json'}: Expecting")
    assert sorted(os.listdir(out)) == ["run.json", "run.lock"]
    assert cli.main([str(a) for a in [*argv, "--overwrite"]]) == 0
    assert "2 images in 1 shard" in capsys.readouterr().out
