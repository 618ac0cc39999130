"""ddim.images: uint8 conversion, grid layout, PIL/PNG/npz output, atomic writes (and what
every writer says about a missing folder, a file in its place or a full disk)."""

import errno
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.atomic import atomic_write_text
from ddim.generation.manifest import write_manifest
from ddim.generation.shards import write_shard
from ddim.images import make_grid, save_image_grid, save_npz, save_png, to_pil, to_uint8


# ---------------------------------------------------------------------------- to_uint8
def test_to_uint8_edges_and_rounding():
    x = torch.tensor([-1.0, 1.0, 0.0, -0.5, 0.5, -1.5, 3.0]).reshape(1, 1, 1, 7)
    # 0 -> 127.5 -> 128 (half up), -0.5 -> 63.75 -> 64, 0.5 -> 191.25 -> 191, clamped ends
    assert to_uint8(x).ravel().tolist() == [0, 255, 128, 64, 191, 0, 255]
    halves = torch.tensor([0.5, 1.5, 126.5, 254.5]).reshape(1, 1, 1, 4)  # half up, not to even
    assert to_uint8(halves, data_range=(0, 255)).ravel().tolist() == [1, 2, 127, 255]


def test_to_uint8_hits_every_level_exactly():
    levels = torch.arange(256, dtype=torch.float64)
    x = (levels / 255 * 2 - 1).reshape(1, 1, 16, 16).to(torch.float32)
    assert to_uint8(x).ravel().tolist() == list(range(256))
    nudged = x + (0.49 / 255 * 2) * torch.sign(torch.randn(x.shape))  # less than half a level
    assert to_uint8(nudged).ravel().tolist() == list(range(256))


def test_to_uint8_is_channels_last_and_keeps_dtype_inputs():
    x = torch.stack([torch.full((2, 3), v) for v in (-1.0, 0.0, 1.0)])[None]  # (1, 3, 2, 3)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3, 3)
    assert (out[0, :, :, 0] == 0).all() and (out[0, :, :, 1] == 128).all()
    assert (out[0, :, :, 2] == 255).all()
    np.testing.assert_array_equal(to_uint8(x.half()), out)
    np.testing.assert_array_equal(to_uint8(x.numpy()), out)
    np.testing.assert_array_equal(to_uint8((x + 1) / 2, data_range=(0, 1)), out)


@pytest.mark.parametrize(
    "x, kwargs, error, match",
    [
        (torch.zeros(2, 8, 8), {}, ValueError, r"x must have shape \(B, C, H, W\).*\(2, 8, 8\)"),
        (torch.zeros(0, 1, 8, 8), {}, ValueError, "no empty dimension"),
        (torch.tensor([0.0, float("nan")]).reshape(1, 1, 1, 2), {}, ValueError, "NaN or inf"),
        (torch.tensor([0.0, float("inf")]).reshape(1, 1, 1, 2), {}, ValueError, "NaN or inf"),
        (torch.zeros(1, 1, 2, 2, dtype=torch.uint8), {}, TypeError, "floating"),
        ([[0.0]], {}, TypeError, "torch.Tensor or numpy array"),
        (torch.zeros(1, 1, 2, 2), {"data_range": (1, 1)}, ValueError, "lo < hi"),
        (torch.zeros(1, 1, 2, 2), {"data_range": 1.0}, TypeError, "data_range"),
        (torch.zeros(1, 1, 2, 2), {"data_range": (0, float("inf"))}, ValueError,
         r"data_range\[1\]"),
    ],
)
def test_to_uint8_errors(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        to_uint8(x, **kwargs)


# ---------------------------------------------------------------------------- make_grid
def test_make_grid_known_layout():
    x = torch.arange(12.0).reshape(3, 1, 2, 2)  # images [[0,1],[2,3]], [[4,5],[6,7]], ...
    p = -1.0
    expected = torch.tensor([[
        [p, p, p, p, p, p, p],
        [p, 0, 1, p, 4, 5, p],
        [p, 2, 3, p, 6, 7, p],
        [p, p, p, p, p, p, p],
        [p, 8, 9, p, p, p, p],
        [p, 10, 11, p, p, p, p],
        [p, p, p, p, p, p, p],
    ]])
    torch.testing.assert_close(make_grid(x, nrow=2, padding=1, pad_value=p), expected)


def test_make_grid_without_padding_is_plain_tiling():
    x = torch.randn(6, 3, 4, 5)
    rows = [torch.cat(list(x[r * 3:(r + 1) * 3]), dim=2) for r in range(2)]  # (3, 4, 15)
    torch.testing.assert_close(make_grid(x, nrow=3, padding=0), torch.cat(rows, dim=1))


@pytest.mark.parametrize("b, nrow, padding", [(1, None, 1), (4, None, 2), (5, None, 1),
                                              (7, 3, 0), (3, 8, 1), (10, 1, 3)])
def test_make_grid_places_every_image_in_its_cell(b, nrow, padding):
    c, h, w = 2, 3, 5
    x = torch.randn(b, c, h, w)
    grid = make_grid(x, nrow=nrow, padding=padding, pad_value=7.0)
    ncol = min(nrow or int(np.ceil(np.sqrt(b))), b)
    rows = -(-b // ncol)
    assert grid.shape == (c, rows * (h + padding) + padding, ncol * (w + padding) + padding)
    mask = torch.ones_like(grid, dtype=torch.bool)  # what is not an image must be padding
    for i in range(b):
        top, left = padding + (i // ncol) * (h + padding), padding + (i % ncol) * (w + padding)
        torch.testing.assert_close(grid[:, top:top + h, left:left + w], x[i])
        mask[:, top:top + h, left:left + w] = False
    assert (grid[mask] == 7.0).all()


def test_make_grid_default_is_square_ish_and_keeps_dtype():
    assert make_grid(torch.zeros(64, 1, 8, 8)).shape == (1, 73, 73)
    assert make_grid(torch.zeros(5, 1, 8, 8)).shape == (1, 19, 28)  # 3 columns, 2 rows
    g = make_grid(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), pad_value=255)
    assert g.dtype == torch.uint8 and g.shape == (3, 7, 7) and g.max() == 255


@pytest.mark.parametrize(
    "kwargs, error, match",
    [({"nrow": 0}, ValueError, "nrow"), ({"nrow": 2.0}, TypeError, "nrow"),
     ({"padding": -1}, ValueError, "padding"), ({"pad_value": float("nan")}, ValueError,
                                                "pad_value")],
)
def test_make_grid_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_grid(torch.zeros(2, 1, 2, 2), **kwargs)


def test_make_grid_needs_4d_tensor():
    with pytest.raises(ValueError, match="shape"):
        make_grid(torch.zeros(1, 2, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        make_grid(np.zeros((1, 1, 2, 2)))


# ---------------------------------------------------------------------------- PIL and PNG
def test_to_pil_modes_and_pixels():
    grey, rgb = torch.rand(2, 1, 3, 4) * 2 - 1, torch.rand(2, 3, 3, 4) * 2 - 1
    for x, mode in ((grey, "L"), (rgb, "RGB")):
        pics = to_pil(x)
        assert len(pics) == 2 and all(p.mode == mode and p.size == (4, 3) for p in pics)
        np.testing.assert_array_equal(np.asarray(pics[1]).reshape(3, 4, -1), to_uint8(x)[1])


@pytest.mark.parametrize("channels", [2, 4])
def test_unsupported_channel_counts(channels, tmp_path):
    x = torch.zeros(1, channels, 2, 2)
    with pytest.raises(ValueError, match=f"1 .* or 3 .* channels, got {channels}"):
        to_pil(x)
    with pytest.raises(ValueError, match="channels"):
        save_image_grid(x, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip(channels, tmp_path):
    x = torch.rand(5, channels, 8, 8) * 2 - 1
    path = save_image_grid(x, tmp_path / "grid.png", nrow=2)
    expected = to_uint8(make_grid(x, nrow=2)[None])[0]  # (H', W', C)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == ("L" if channels == 1 else "RGB")
        np.testing.assert_array_equal(np.asarray(im).reshape(expected.shape), expected)
    save_image_grid(x, tmp_path / "big.png", nrow=2, scale=3)
    with Image.open(tmp_path / "big.png") as im:
        big = np.asarray(im).reshape(expected.shape[0] * 3, expected.shape[1] * 3, -1)
    np.testing.assert_array_equal(big, expected.repeat(3, axis=0).repeat(3, axis=1))
    assert sorted(os.listdir(tmp_path)) == ["big.png", "grid.png"]


def test_save_image_grid_argument_errors(tmp_path):
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"path must end in \.png, got '.*g\.jpg'"):
        save_image_grid(x, tmp_path / "g.jpg")
    with pytest.raises(ValueError, match="scale"):
        save_image_grid(x, tmp_path / "g.png", scale=0)
    with pytest.raises(ValueError, match="NaN"):
        save_image_grid(torch.full((1, 1, 2, 2), float("nan")), tmp_path / "g.png")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_save_png_round_trip(channels, mode, tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (5, 7, channels), dtype=np.uint8)
    path = save_png(tmp_path / "one.png", image)
    with Image.open(path) as im:
        assert (im.format, im.mode, im.size) == ("PNG", mode, (7, 5))
        np.testing.assert_array_equal(np.asarray(im).reshape(image.shape), image)
    assert os.listdir(tmp_path) == ["one.png"]


@pytest.mark.parametrize(
    "image, name, error, match",
    [(np.zeros((2, 2, 1), np.float32), "i.png", TypeError, "uint8"),
     (np.zeros((1, 2, 2, 1), np.uint8), "i.png", ValueError, r"\(H, W, C\)"),
     (np.zeros((2, 2, 2), np.uint8), "i.png", ValueError, r"1 \(greyscale\) or 3"),
     (np.zeros((2, 2, 1), np.uint8), "i.jpg", ValueError, r"path must end in \.png")],
)
def test_save_png_errors(image, name, error, match, tmp_path):
    with pytest.raises(error, match=match):
        save_png(tmp_path / name, image)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- npz
def test_npz_round_trip(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    path = save_npz(tmp_path / "s.NPZ", imgs, steps=50, eta=0.5, model="digits",
                    grid=np.arange(3))
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["eta", "grid", "images", "model", "steps"]
        np.testing.assert_array_equal(data["images"], imgs)
        assert data["steps"] == 50 and data["eta"] == 0.5 and str(data["model"]) == "digits"
        assert data["grid"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "imgs, kwargs, error, match",
    [(np.zeros((1, 2, 2, 1), np.float32), {}, TypeError, "uint8"),
     (np.zeros((2, 2, 1), np.uint8), {}, ValueError, r"\(N, H, W, C\)"),
     (np.zeros((1, 2, 2, 1), np.uint8), {"meta": {"a": 1}}, TypeError, "meta"),
     (np.zeros((1, 2, 2, 1), np.uint8), {"images": 1}, ValueError, "images")],
)
def test_npz_errors(imgs, kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        save_npz(tmp_path / "s.npz", imgs, **kwargs)
    assert os.listdir(tmp_path) == []


def test_npz_extension_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"path must end in \.npz, got '.*s\.png'"):
        save_npz(tmp_path / "s.png", np.zeros((1, 2, 2, 1), np.uint8))


# ---------------------------------------------------------------------------- atomic writes
def _write_both(folder):
    save_image_grid(torch.zeros(2, 1, 4, 4), folder / "g.png")
    save_npz(folder / "s.npz", np.zeros((2, 4, 4, 1), np.uint8))


def test_failed_rename_leaves_no_temp_file_and_no_target(tmp_path, monkeypatch):
    def fail(src, dst):
        assert os.path.getsize(src) > 0  # the data was written, only the rename fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        save_image_grid(torch.zeros(2, 1, 4, 4), tmp_path / "g.png")
    with pytest.raises(OSError, match="No space"):
        save_npz(tmp_path / "s.npz", np.zeros((2, 4, 4, 1), np.uint8))
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    _write_both(tmp_path)
    old_png, old_npz = (tmp_path / "g.png").read_bytes(), (tmp_path / "s.npz").read_bytes()

    def half_then_fail(self, f, *args, **kwargs):  # PIL's save, killed half way
        f.write(old_png[: len(old_png) // 2])
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    monkeypatch.setattr(np, "savez_compressed", lambda f, **a: half_then_fail(None, f))
    with pytest.raises(RuntimeError, match="mid-write"):
        save_image_grid(torch.ones(1, 1, 4, 4), tmp_path / "g.png")
    with pytest.raises(RuntimeError, match="mid-write"):
        save_npz(tmp_path / "s.npz", np.ones((2, 4, 4, 1), np.uint8))
    assert (tmp_path / "g.png").read_bytes() == old_png
    assert (tmp_path / "s.npz").read_bytes() == old_npz
    assert sorted(os.listdir(tmp_path)) == ["g.png", "s.npz"]


def test_successful_writes_replace_the_target_and_are_world_readable(tmp_path):
    _write_both(tmp_path)
    save_image_grid(torch.ones(3, 1, 4, 4), tmp_path / "g.png")  # replaces the first grid
    assert sorted(os.listdir(tmp_path)) == ["g.png", "s.npz"]
    with Image.open(tmp_path / "g.png") as im:
        assert np.asarray(im).min() == 255  # the new content: ones and white padding
    umask = os.umask(0)
    os.umask(umask)
    if os.name == "posix" and not umask & 0o044:  # not the 0o600 of a bare temporary file
        assert (tmp_path / "s.npz").stat().st_mode & 0o044 == 0o044


WRITERS = {
    "save_image_grid": lambda p: save_image_grid(torch.zeros(2, 1, 4, 4), p / "g.png"),
    "save_png": lambda p: save_png(p / "i.png", np.zeros((4, 4, 1), np.uint8)),
    "save_npz": lambda p: save_npz(p / "i.npz", np.zeros((1, 4, 4, 1), np.uint8)),
    "atomic_write_text": lambda p: atomic_write_text(p / "t.json", "{}"),
    "write_shard": lambda p: write_shard(p / "shard-00000.npz",
                                         np.zeros((1, 4, 4, 1), np.uint8), 0, "id"),
    "write_manifest": lambda p: write_manifest(p, {"num": 1}),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_writing_into_a_missing_folder_names_the_folder(writer, tmp_path):
    """The reported example: save_image_grid to a missing folder named an internal temp
    file (.g.png.x1y2.tmp)."""
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as info:
        WRITERS[writer](missing)
    assert f"its folder '{missing}' does not exist" in str(info.value)
    assert ".tmp" not in str(info.value)


def test_writing_into_a_file_or_a_full_disk_names_the_target(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match=r"its folder '.*file' is not a folder"):
        save_png(tmp_path / "file" / "i.png", np.zeros((4, 4, 1), np.uint8))

    def full(file, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(OSError) as info:
        save_npz(tmp_path / "i.npz", np.zeros((1, 4, 4, 1), np.uint8))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "i.npz")
    assert os.listdir(tmp_path) == ["file"]

