"""The command-line options of every command that samples: --solver, --class and
--guidance-scale, --threads, and latents decoded on their own grid only.

In-process runs use tiny stand-in bundles (elementwise networks on 1×4×4 samples, one of
them class-conditional), so results are bitwise independent of the batch; the bundled
digits-cond model is used where what its files declare matters.
"""

import argparse

import numpy as np
import pytest
import torch

import ddim
from ddim import cli
from ddim.cli import common
from ddim.cli.options import class_label
from ddim.images import to_uint8
from ddim.sampling.noise import sample_generators
from ddim.sampling.solvers import SOLVER_NAMES
from tests.helpers import Elementwise, check_error, load_npz


class ClassElementwise(Elementwise):
    """Elementwise, plus a term per class; 3 classes and the null class 3 (diffusers'
    convention, read from ``config``). Counts its calls."""

    config = {"num_class_embeds": 4}

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, class_labels=None):
        self.calls += 1
        return super().forward(x, t) + class_labels.to(x.dtype).reshape(-1, 1, 1, 1) / 20


@pytest.fixture
def fakes(monkeypatch):
    """The CLI's loader knows "tiny" and "tinycond" (which no file declares conditional);
    returns {name: bundle} of what it loaded, and the thread count at each load."""
    loaded, threads = {}, []

    def fake_load(name, *, device=None, torch_dtype=None, schedule=None):
        threads.append(torch.get_num_threads())
        if name not in ("tiny", "tinycond"):
            raise ddim.PretrainedError(f"model {name!r} not found")
        network = ClassElementwise() if name == "tinycond" else Elementwise()
        loaded[name] = ddim.Pretrained(model=network, schedule=ddim.NoiseSchedule.linear(),
                                       sample_shape=(1, 4, 4), name=name)
        return loaded[name]

    monkeypatch.setattr(common, "load_pretrained", fake_load)
    loaded["threads"] = threads
    return loaded


def sample(tmp_path, name, *args):
    path = tmp_path / name
    assert cli.main(["sample", "--steps", "2", *map(str, args), "--out", str(path)]) == 0
    return load_npz(path)


# ---------------------------------------------------------------- --class, a label per image
def test_class_list_is_cycled_over_the_images_whatever_the_batches(fakes, tmp_path, capsys):
    a = sample(tmp_path, "a.npz", "--model", "tinycond", "--class", 0, 1, 2, "--num", 7,
               "--batch-size", 2)
    b = sample(tmp_path, "b.npz", "--model", "tinycond", "--class", 0, 1, 2, "--num", 7,
               "--batch-size", 5)
    np.testing.assert_array_equal(a["images"], b["images"])
    assert a["class_labels"].tolist() == [0, 1, 2]
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])  # image i: --class[i % 3]
    x = ddim.sample(fakes["tinycond"], 2, class_labels=labels, batch_size=7,
                    generator=sample_generators(0, 0, 7))
    np.testing.assert_array_equal(a["images"], to_uint8(x))
    assert "classes 0 1 2" in capsys.readouterr().out


def test_null_is_the_models_null_class(fakes, tmp_path):
    null = sample(tmp_path, "n.npz", "--model", "tinycond", "--class", "null", "--num", 3)
    three = sample(tmp_path, "3.npz", "--model", "tinycond", "--class", 3, "--num", 3)
    np.testing.assert_array_equal(null["images"], three["images"])
    assert null["class_labels"].tolist() == [3]
    guided = sample(tmp_path, "g.npz", "--model", "tinycond", "--class", 1, "--num", 3,
                    "--guidance-scale", 2.5)
    assert float(guided["guidance_scale"]) == 2.5
    assert not np.array_equal(guided["images"], three["images"])


@pytest.mark.parametrize("argv", [
    ["sample"], ["eval"], ["generate", "--num", 4, "--out", "run"],
    ["invert", "--images", "in.npz", "--out", "l.npz"],
    ["img2img", "--images", "in.npz", "--strength", 0.5, "--out", "o.png"],
    ["inpaint", "--images", "in.npz", "--keep", "left", "--out", "o.png"],
])
@pytest.mark.usefixtures("no_loading")
def test_conditional_model_without_class_is_refused_before_loading(argv, capsys,
                                                                   tmp_path, monkeypatch):
    """The reported example: `ddim sample --model digits-cond` failed after 9 s with
    diffusers' text. Its files say it is conditional: refused before loading, one line."""
    monkeypatch.chdir(tmp_path)
    np.savez("in.npz", images=np.zeros((2, 8, 8, 1), np.uint8))
    check_error(capsys, [argv[0], "--model", "digits-cond", *argv[1:]], 2,
                "--model digits-cond is class-conditional: pass --class with one label for "
                "all images or a list that the images cycle through (0..9, or null for "
                "unconditional samples; --class 0 1 2 3 4 5 6 7 8 9 gives balanced classes)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


def test_conditional_model_unknown_until_loaded_is_refused_before_sampling(fakes, capsys,
                                                                           tmp_path):
    check_error(capsys, ["sample", "--model", "tinycond", "--out", tmp_path / "s.png"], 2,
                "--model tinycond is class-conditional: pass --class")
    assert fakes["tinycond"].model.calls == 0 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, fragment", [
    (["--model", "digits-cond", "--class", 11],
     "--class must lie in [0, 10] (10: the null class, unconditional), got [11] "
     "(--model digits-cond)"),
    (["--model", "digits", "--class", 3],
     "--class given, but the model is not class-conditional (--model digits)"),
    (["--model", "digits", "--guidance-scale", 2], "--guidance-scale 2 needs --class"),
    (["--class", "ten"], "argument --class: must be a class (an integer >= 0) or 'null', got "
                         "'ten'"),
    (["--class"], "argument --class: expected at least one argument"),
    (["--guidance-scale", -1], "argument --guidance-scale: must be a finite number >= 0"),
])
@pytest.mark.usefixtures("no_loading")
def test_bad_labels_are_refused_before_loading(args, fragment, capsys, tmp_path):
    check_error(capsys, ["sample", *args, "--out", tmp_path / "s.png"], 2, fragment)


def test_class_label_type():
    assert class_label("0") == 0 and class_label("null") == "null"
    for bad in ("-1", "1.5", "None"):
        with pytest.raises(argparse.ArgumentTypeError, match="an integer >= 0"):
            class_label(bad)


def test_digits_cond_samples_the_asked_classes(tmp_path):
    """The bundled conditional model, end to end: guided samples of 0 and 1 are classified
    mostly as 0 and 1 by the shipped digits classifier."""
    got = sample(tmp_path, "c.npz", "--model", "digits-cond", "--class", 0, 1, "--num", 8,
                 "--steps", 10, "--guidance-scale", 2)
    from ddim.evaluation.classifiers import load_digits_classifier
    from ddim.images import from_uint8

    predicted = load_digits_classifier()(from_uint8(got["images"])).argmax(1)
    assert (predicted == torch.tensor([0, 1] * 4)).sum() >= 6


# ---------------------------------------------------------------- --solver
@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc", "dpmpp_2m_sde"])
def test_solver_gives_the_librarys_samples(solver, fakes, tmp_path):
    got = sample(tmp_path, "s.npz", "--model", "tiny", "--solver", solver, "--num", 3)
    x = ddim.sample(fakes["tiny"], 2, solver=solver, batch_size=3,
                    generator=sample_generators(0, 0, 3))
    np.testing.assert_array_equal(got["images"], to_uint8(x))
    assert str(got["solver"]) == solver


@pytest.mark.parametrize("argv", [
    ["sample"], ["eval"], ["generate", "--num", 4, "--out", "run"],
    ["img2img", "--images", "in.npz", "--strength", 0.5, "--out", "o.png"],
    ["inpaint", "--images", "in.npz", "--keep", "left", "--out", "o.png"],
])
@pytest.mark.usefixtures("no_loading")
def test_solver_with_eta_is_refused_before_loading_everywhere(argv, capsys,
                                                              tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("in.npz", images=np.zeros((2, 4, 4, 1), np.uint8))
    check_error(capsys, [*argv, "--solver", "unipc", "--eta", 0.5], 2,
                "eta=0.5 applies to solver='ddim' only, got solver='unipc'")


@pytest.mark.usefixtures("no_loading")
def test_invert_refuses_what_does_not_invert_and_inpaint_resample_a_multistep_solver(
        capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("in.npz", images=np.zeros((2, 4, 4, 1), np.uint8))
    check_error(capsys, ["invert", "--images", "in.npz", "--out", "l.npz", "--solver",
                         "unipc"], 2, "--solver/--method: solver='unipc' cannot invert: its "
                "corrector, run upwards, amplifies the error")
    check_error(capsys, ["invert", "--images", "in.npz", "--out", "l.npz", "--solver",
                         "dpmpp_2m", "--method", "fixed_point"], 2, "--solver/--method: "
                "method='fixed_point' solves one step at a time")
    check_error(capsys, ["inpaint", "--images", "in.npz", "--keep", "left", "--resample", 2,
                         "--solver", "dpmpp_2m", "--out", "o.png"], 2,
                "--resample/--solver: resample=2 repeats steps, which a multistep solver cannot")


@pytest.mark.parametrize("command", ["sample", "eval", "generate", "invert", "inpaint",
                                     "img2img"])
def test_every_subcommand_documents_class_guidance_threads_and_solver(command, capsys):
    assert cli.main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ["--class LABEL [LABEL ...] class label(s)", "null is the model's null "
                     "class", "--guidance-scale W classifier-free guidance weight",
                     "--threads N CPU threads torch may use (torch.set_num_threads), set "
                     "before any work", "(default: torch's own choice)"]:
        assert fragment in text, (command, fragment)
    assert "--solver {" + ",".join(SOLVER_NAMES) + "}" in text  # every command, invert too


# ---------------------------------------------------------------- --threads
def test_threads_are_set_before_any_work(fakes, tmp_path):
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            sample(tmp_path, f"t{n}.npz", "--model", "tiny", "--num", 2, "--threads", n)
            assert fakes["threads"][-1] == n == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.usefixtures("no_loading")
def test_threads_must_be_positive(capsys, tmp_path):
    check_error(capsys, ["generate", "--num", 4, "--out", tmp_path / "r", "--threads", 0], 2,
                "argument --threads: must be an integer >= 1, got '0'")


# ---------------------------------------------------------------- latents and their grid
@pytest.fixture
def latents(fakes, tmp_path):
    """Latents of 2 images inverted by `ddim invert` at 5 steps (trailing spacing)."""
    np.savez(tmp_path / "in.npz", images=np.full((2, 4, 4, 1), 100, np.uint8))
    assert cli.main(["invert", "--model", "tiny", "--images", str(tmp_path / "in.npz"),
                     "--steps", "5", "--out", str(tmp_path / "lat.npz")]) == 0
    return tmp_path / "lat.npz"


def test_latents_record_their_grid_and_another_is_refused(latents, capsys, tmp_path):
    """The reported example: latents inverted at 50 steps decoded with --steps 10 without a
    word. The file records steps, spacing and solver; another grid (or solver) is refused
    naming both."""
    data = load_npz(latents)
    assert (int(data["steps"]), str(data["spacing"]), str(data["solver"]),
            str(data["method"])) == (5, "trailing", "ddim", "ddim")
    capsys.readouterr()
    check_error(capsys, ["sample", "--model", "tiny", "--latents", latents, "--steps", 3,
                         "--out", tmp_path / "s.png"], 2,
                f"--latents: {latents} was inverted on the grid of steps 5, spacing trailing, "
                "solver ddim, but this run uses steps 3, spacing trailing, solver ddim: "
                "decoding on another grid does not reconstruct the images; pass --steps 5 "
                "--spacing trailing --solver ddim, or --latents-any-grid to decode them anyway")
    check_error(capsys, ["sample", "--model", "tiny", "--latents", latents, "--steps", 5,
                         "--spacing", "leading", "--out", tmp_path / "s.png"], 2,
                "but this run uses steps 5, spacing leading, solver ddim")
    check_error(capsys, ["sample", "--model", "tiny", "--latents", latents, "--steps", 5,
                         "--solver", "ipndm", "--out", tmp_path / "s.png"], 2,
                "but this run uses steps 5, spacing trailing, solver ipndm")


def test_latents_of_another_model_are_refused(latents, capsys, tmp_path):
    """The reported case: latents inverted with digits decoded by digits-cond without a
    word. The file records the model; another one is refused, before it is loaded, naming
    both, unless --latents-any-grid."""
    assert str(load_npz(latents)["model"]) == "tiny"
    capsys.readouterr()
    check_error(capsys, ["sample", "--model", "tinycond", "--class", 1, "--latents", latents,
                         "--steps", 5, "--out", tmp_path / "s.png"], 2,
                f"--latents: {latents} was inverted with --model tiny, but this run uses "
                "--model tinycond: another model does not reconstruct the images; pass "
                "--model tiny, or --latents-any-grid to decode them anyway")
    other = sample(tmp_path, "other.npz", "--model", "tinycond", "--class", 1, "--latents",
                   latents, "--steps", 5, "--latents-any-grid")
    assert other["images"].shape == (2, 4, 4, 1)


def test_num_with_latents_must_be_their_count(latents, capsys, tmp_path):
    """The reported case: --num 3 with 2 latents wrote 2 images without a word."""
    capsys.readouterr()
    check_error(capsys, ["sample", "--model", "tiny", "--latents", latents, "--steps", 5,
                         "--num", 3, "--out", tmp_path / "s.png"], 2,
                f"--num 3: {latents} holds 2 latents, one image each; leave --num out")
    same = sample(tmp_path, "same.npz", "--model", "tiny", "--latents", latents,
                  "--steps", 5, "--num", 2)
    assert same["images"].shape == (2, 4, 4, 1)


def test_latents_on_their_grid_or_any_grid_when_asked(latents, tmp_path):
    same = sample(tmp_path, "same.npz", "--model", "tiny", "--latents", latents,
                  "--steps", 5)
    assert same["images"].shape == (2, 4, 4, 1)
    other = sample(tmp_path, "other.npz", "--model", "tiny", "--latents", latents,
                   "--steps", 3, "--latents-any-grid")
    assert other["images"].shape == (2, 4, 4, 1) and int(other["steps"]) == 3


def test_latents_without_a_recorded_grid_or_with_a_bad_one(fakes, capsys, tmp_path):
    np.savez(tmp_path / "bare.npz", latents=np.zeros((2, 1, 4, 4), np.float32))
    assert sample(tmp_path, "s.npz", "--model", "tiny", "--latents", tmp_path / "bare.npz",
                  "--steps", 3)["images"].shape == (2, 4, 4, 1)
    capsys.readouterr()
    np.savez(tmp_path / "bad.npz", latents=np.zeros((2, 1, 4, 4), np.float32), steps="ten")
    check_error(capsys, ["sample", "--model", "tiny", "--latents", tmp_path / "bad.npz",
                         "--out", tmp_path / "t.png"], 2,
                f"--latents: {tmp_path / 'bad.npz'}: 'steps' must be an integer, got <U3 ()")
