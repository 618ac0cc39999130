"""The ``ddim`` command: outputs, batch-size independence, and one-line errors with exit codes.

In-process tests run ``ddim.cli.main`` on a tiny stand-in bundle (an elementwise network on
1×4×4 samples, so results are bitwise independent of the batch; the ``loads`` fixture of
conftest.py); the subprocess tests (marked slow) run ``python -m ddim`` on the bundled digits
model, and Ctrl-C while the command still imports.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
from ddim import cli
from ddim.generation.folder_lock import FolderInUseError
from ddim.generation.manifest import RunMismatchError
from ddim.generation.run_checks import TooManyProcessesError, check_world_size
from ddim.sampling import noise
from tests.helpers import SUBPROCESS_ENV, check_error, load_npz, python


def run(capsys, *args):
    """main(["sample", ...]) -> (exit status, stdout, stderr)."""
    status = cli.main(["sample", "--model", "tiny", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------------------- outputs
def test_png_grid(loads, capsys, tmp_path):
    status, out, err = run(capsys, "--steps", 2, "--num", 5, "--scale", 2,
                           "--out", tmp_path / "s.png")
    assert (status, err) == (0, "")
    with Image.open(tmp_path / "s.png") as im:  # 3 columns, 2 rows of 4×4, padding 1, ×2
        assert (im.format, im.mode, im.size) == ("PNG", "L", (32, 22))
    assert out.startswith(f"wrote 5 images (tiny, 2 steps, eta 0, trailing spacing) to "
                          f"{tmp_path / 's.png'} in ") and out.endswith(" s\n")
    assert os.listdir(tmp_path) == ["s.png"]


def test_npz_images_and_metadata(loads, capsys, tmp_path):
    status, out, _ = run(capsys, "--steps", 3, "--num", 6, "--eta", 0.5, "--seed", 7,
                         "--spacing", "trailing", "--out", tmp_path / "s.npz")
    assert status == 0 and "wrote 6 images" in out
    data = load_npz(tmp_path / "s.npz")
    assert data["images"].shape == (6, 4, 4, 1) and data["images"].dtype == np.uint8
    assert {k: data[k].item() for k in ("model", "steps", "eta", "num", "seed", "spacing")} == {
        "model": "tiny", "steps": 3, "eta": 0.5, "num": 6, "seed": 7, "spacing": "trailing"}
    assert str(data["seed_rule"]) == noise.SEED_RULE


def test_images_do_not_depend_on_batch_size(loads, capsys, tmp_path):
    common = ("--steps", 3, "--eta", 1.0, "--seed", 3)  # η=1: noise drawn at every step
    for bs in (3, 8):
        assert run(capsys, *common, "--num", 8, "--batch-size", bs,
                   "--out", tmp_path / f"b{bs}.npz")[0] == 0
    a, b = load_npz(tmp_path / "b3.npz"), load_npz(tmp_path / "b8.npz")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # a shorter run is a prefix of a longer one; another seed gives other images
    assert run(capsys, *common, "--num", 5, "--out", tmp_path / "n5.npz")[0] == 0
    np.testing.assert_array_equal(load_npz(tmp_path / "n5.npz")["images"], a["images"][:5])
    assert run(capsys, "--steps", 3, "--eta", 1.0, "--seed", 4, "--num", 8,
               "--out", tmp_path / "s4.npz")[0] == 0
    assert not np.array_equal(load_npz(tmp_path / "s4.npz")["images"], a["images"])


def test_sample_seed_derivation_is_pinned():
    # changing these changes every image made with a given --seed: keep them fixed
    assert noise.sample_seed(0, 0) == 15793235383387715774
    assert noise.sample_seed(0, 1) == 5836529245451711556
    assert noise.sample_seed(1, 0) == 7434755675892716031
    assert noise.sample_seed(0, 1_000_003) != noise.sample_seed(1, 0)  # unlike seed*K + i


def test_progress_bar_is_opt_in_when_not_a_terminal(loads, capsys, tmp_path):
    assert run(capsys, "--steps", 2, "--num", 2, "--out", tmp_path / "a.png")[2] == ""
    status, _, err = run(capsys, "--steps", 2, "--num", 3, "--batch-size", 2, "--progress",
                         "--out", tmp_path / "b.png")
    assert status == 0 and "sampling 3 images" in err and "4/4" in err  # 2 chunks × 2 steps


def test_help_and_version(capsys):
    assert cli.main(["sample", "--help"]) == 0
    assert "--batch-size" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ddim {ddim.__version__}"


@pytest.mark.parametrize("command", ["sample", "eval", "generate", "invert", "inpaint",
                                     "img2img"])
def test_every_subcommand_shows_the_shared_options_with_defaults(command, capsys):
    assert cli.main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for fragment in ["--model MODEL bundled model ('digits', 'digits-cond', 'mnist', "
                     "'mnist-cond'), diffusers folder or hub id (default: digits)",
                     "--steps STEPS number of DDIM steps, 1..T", "(default: 50)",
                     "where the steps go: trailing starts at T-1 for every step count; "
                     "leading is the paper's uniform grid;", "(default: trailing)",
                     "--seed SEED seed of the run; image i uses seed (seed, i)",
                     "--device DEVICE torch device, e.g. cpu or cuda:0"]:
        assert fragment in text, (command, fragment)
    if command != "invert":  # deterministic: it takes no η
        assert "η >= 0: 0 deterministic DDIM, 1 DDPM-like (default: 0.0)" in text


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "nope"], "model 'nope' not found"),
        (["--steps", 0], "argument --steps: must be an integer >= 1, got '0'"),
        (["--steps", 1001], "steps must be an integer in [1, 1000], got 1001"),
        (["--steps", 2.5], "argument --steps: must be an integer >= 1, got '2.5'"),
        (["--eta", -0.5], "argument --eta: must be a finite number >= 0, got '-0.5'"),
        (["--eta", "nan"], "argument --eta: must be a finite number >= 0, got 'nan'"),
        (["--spacing", "uniform"], "argument --spacing: invalid choice: 'uniform'"),
        (["--num", 0], "argument --num: must be an integer >= 1, got '0'"),
        (["--num", 2.5], "argument --num: must be an integer >= 1, got '2.5'"),
        (["--batch-size", -2], "argument --batch-size: must be an integer >= 1, got '-2'"),
        (["--seed", -1], "argument --seed: must be an integer >= 0, got '-1'"),
        (["--scale", 0], "argument --scale: must be an integer >= 1, got '0'"),
        (["--device", "gpu7"], "--device must be a device such as 'cpu', 'cuda' or 'cuda:1', "
         "got 'gpu7'"),
        (["--colour"], "unrecognized arguments: --colour"),
    ],
)
def test_bad_arguments(args, fragment, loads, capsys, tmp_path):
    check_error(capsys, ["sample", "--model", "tiny", "--num", 2, "--steps", 2, *args,
                         "--out", tmp_path / "s.png"], 2, fragment)
    assert os.listdir(tmp_path) == []


def test_no_subcommand(capsys):
    check_error(capsys, [], 2, "the following arguments are required: COMMAND")
    check_error(capsys, ["smaple"], 2, "invalid choice: 'smaple'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(loads, capsys, tmp_path):
    check_error(capsys, ["sample", "--device", "cuda", "--out", tmp_path / "s.png"], 2,
                "--device='cuda': cuda is not available on this machine")
    assert loads == []


def test_unknown_model_with_the_real_loader(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    check_error(capsys, ["sample", "--model", missing, "--out", tmp_path / "s.png"], 2,
                f"model '{missing}' not found")


def bad_outputs(tmp_path):
    (tmp_path / "folder.png").mkdir()
    return {
        "extension": (tmp_path / "s.jpg", "--out must end in .png or .npz, got"),
        "no folder": (tmp_path / "missing" / "s.png", "does not exist"),
        "a folder": (tmp_path / "folder.png", "is a directory"),
    }


@pytest.mark.parametrize("case", ["extension", "no folder", "a folder"])
def test_bad_output_path_is_refused_before_loading(case, loads, capsys, tmp_path):
    path, fragment = bad_outputs(tmp_path)[case]
    check_error(capsys, ["sample", "--model", "tiny", "--out", path], 2, fragment)
    assert loads == []  # refused before the model was even loaded
    assert sorted(os.listdir(tmp_path)) == ["folder.png"]


def test_unwritable_output_folder(loads, capsys, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root ignores permissions: make access() say no
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(
                folder) else real_access(p, mode))
        check_error(capsys, ["sample", "--model", "tiny", "--out", folder / "s.png"], 2,
                    f"--out: folder '{folder}' is not writable")
    finally:
        folder.chmod(0o700)
    assert loads == [] and os.listdir(folder) == []


def test_nan_model_fails_with_status_1(loads, capsys, tmp_path):
    check_error(capsys, ["sample", "--model", "nan", "--steps", 2, "--num", 2,
                         "--out", tmp_path / "s.png"], 1, "NaN or inf at step 0")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv", [
    ["generate", "--num", 2, "--out", "run"],
    ["img2img", "--images", "in.npz", "--strength", 1, "--out", "o.png"],
])
def test_nan_model_fails_with_status_1_in_every_command(argv, loads, capsys, tmp_path,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("in.npz", images=np.zeros((2, 4, 4, 1), np.uint8))
    check_error(capsys, [argv[0], "--model", "nan", "--steps", 2, *argv[1:]], 1,
                "NaN or inf at step 0")


def test_write_failure_fails_with_status_1(loads, capsys, tmp_path, monkeypatch):
    def full_disk(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ddim.images, "atomic_write", full_disk)
    check_error(capsys, ["sample", "--model", "tiny", "--steps", 2, "--num", 2,
                         "--out", tmp_path / "s.npz"], 1, "cannot write")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- fail fast
@pytest.mark.parametrize("argv, fragment", [
    (["sample", "--steps", 0], "argument --steps: must be an integer >= 1, got '0'"),
    (["sample", "--eta", -1], "argument --eta: must be a finite number >= 0, got '-1'"),
    (["sample", "--eta", "inf"], "argument --eta: must be a finite number >= 0, got 'inf'"),
    (["sample", "--device", "gpu7"], "--device must be a device such as 'cpu', 'cuda' or 'cuda:1', "
         "got 'gpu7'"),
    (["sample", "--out", "missing/s.png"], "--out: folder 'missing' does not exist"),
    (["sample", "--latents", "missing.npz"], "cannot read latents from missing.npz"),
    (["sample", "--latents", "truncated.npz"], "cannot read latents from truncated.npz"),
    (["sample", "--latents", "in.npz"], "in.npz has no 'latents' array (found: ['images'])"),
    (["eval", "--steps", 0], "argument --steps: must be an integer >= 1, got '0'"),
    (["eval", "--json", "r.txt"], "--json must end in .json, got 'r.txt'"),
    (["eval", "--reference", "truncated.npz"], "cannot read images from truncated.npz"),
    (["eval", "--reference", "floats.npz"], "floats.npz: images must be uint8 (N, H, W, C)"),
    (["generate", "--num", 4, "--out", "run", "--steps", 0], "argument --steps: must be"),
    (["generate", "--num", 4, "--out", "run", "--eta", "nan"], "argument --eta: must be"),
    (["generate", "--num", 4, "--out", "run", "--pack", "p.png"], "--pack must end in .npz"),
    (["generate", "--num", 4, "--out", "in.npz"], "--out: 'in.npz' exists and is not a folder"),
    (["invert", "--images", "missing.npz", "--out", "l.npz"], "cannot read images from"),
    (["invert", "--images", "in.npz", "--steps", 0, "--out", "l.npz"], "--steps: must be"),
    (["invert", "--images", "in.npz", "--out", "l.png"], "--out must end in .npz"),
    (["inpaint", "--images", "in.npz", "--mask", "missing.png", "--out", "o.png"],
     "cannot read images from missing.png"),
    (["inpaint", "--images", "in.npz", "--mask", "in.npz", "--out", "o.png", "--eta", -1],
     "argument --eta: must be a finite number >= 0"),
    (["inpaint", "--images", "in.npz", "--mask", "truncated.npz", "--out", "o.png"],
     "cannot read the mask from truncated.npz"),
    (["inpaint", "--images", "in.npz", "--keep", "left", "--resample", -1, "--out", "o.png"],
     "argument --resample: must be an integer >= 0, got '-1'"),
    (["img2img", "--images", "in.npz", "--strength", 1.5, "--out", "o.png"],
     "argument --strength: must be a finite number in [0, 1], got '1.5'"),
    (["img2img", "--images", "truncated.npz", "--strength", 0.5, "--out", "o.png"],
     "cannot read images from truncated.npz"),
])
def test_bad_arguments_fail_before_the_model_is_loaded(argv, fragment, no_loading, capsys,
                                                       tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("in.npz", images=np.zeros((2, 4, 4, 1), np.uint8))
    np.savez("floats.npz", images=np.zeros((2, 4, 4, 1)))
    Path("truncated.npz").write_bytes(Path("in.npz").read_bytes()[:60])
    before = sorted(os.listdir())
    check_error(capsys, argv, 2, fragment)
    assert sorted(os.listdir()) == before  # nothing written


# ---------------------------------------------------------------------------- wording
def test_counts_of_one_are_singular(loads, capsys, tmp_path):
    """The reported example: "1 steps", "(1 shards generated)"."""
    assert cli.main(["sample", "--model", "tiny", "--steps", "1", "--num", "1", "--out",
                     str(tmp_path / "s.png")]) == 0
    assert "wrote 1 image (tiny, 1 step, eta 0, trailing spacing)" in capsys.readouterr().out
    assert cli.main(["generate", "--model", "tiny", "--steps", "1", "--num", "1", "--out",
                     str(tmp_path / "run")]) == 0
    assert re.match(r"1 image in 1 shard in .* \(1 shard generated\) in ",
                    capsys.readouterr().out)
    np.savez(tmp_path / "one.npz", images=np.zeros((1, 4, 4, 1), np.uint8))
    assert cli.main(["invert", "--model", "tiny", "--steps", "1", "--images",
                     str(tmp_path / "one.npz"), "--out", str(tmp_path / "l.npz")]) == 0
    assert "wrote 1 latent to" in capsys.readouterr().out
    with pytest.raises(TooManyProcessesError, match=r"only 1 shard \(1 sample, shard_size 4\): "
                                                    r"1 would idle; start at most 1 process or"):
        check_world_size(1, 4, 2)


def test_library_messages_have_no_cli_words_and_the_cli_no_api_words():
    """The reported example: "pass overwrite=True (--overwrite)" mixed the two."""
    errors = [RunMismatchError("D", "holds another run: its run.json differs in eta", ("eta",)),
              FolderInUseError("D", {"pid": 7, "host": "h", "since": "now"}),
              TooManyProcessesError(4, 3, 10, 4)]
    cli_words = [e.message("--overwrite", "--out") if isinstance(e, RunMismatchError) else
                 e.message("--out") if isinstance(e, FolderInUseError) else
                 e.message("{} processes", "--shard-size") for e in errors]
    for err, words in zip(errors, cli_words, strict=True):
        assert "--" not in str(err)
        assert not re.search(r"\b(out_dir|overwrite=|shard_size|world_size)\b", words), words
    assert "pass overwrite=True to delete" in str(errors[0])
    assert cli_words[0].startswith("--out 'D' holds another run") and "--overwrite" in (
        cli_words[0])


# ---------------------------------------------------------------------------- subprocesses
@pytest.mark.slow
@pytest.mark.skipif(not hasattr(ddim, "load_pretrained"), reason="ddim.load_pretrained missing")
def test_python_m_ddim_with_the_bundled_model(tmp_path):
    out = tmp_path / "s.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ddim", "sample", "--model", "digits", "--steps", "2",
         "--num", "4", "--out", str(out)], capture_output=True, text=True, env=env,
        timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote 4 images (digits, 2 steps") and proc.stderr == ""
    images = load_npz(out)["images"]
    assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8
    assert len({im.tobytes() for im in images}) == 4  # four different samples


INTERRUPTED_IMPORT = """
import builtins, sys
real = builtins.__import__
def interrupting(name, *args, **kwargs):
    if name == "torch":
        raise KeyboardInterrupt
    return real(name, *args, **kwargs)
builtins.__import__ = interrupting
from ddim.cli import main
sys.exit(main(["sample", "--steps", "2"]))
"""


@pytest.mark.slow
def test_ctrl_c_while_the_command_imports_is_one_line():
    """The reported example: Ctrl-C during import printed a traceback."""
    done = python(INTERRUPTED_IMPORT)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "ddim: interrupted\n")


@pytest.mark.slow
def test_a_real_sigint_during_the_imports_is_one_line(tmp_path):
    code = ("import sys\nprint('started', flush=True)\nfrom ddim.cli import main\n"
            "sys.exit(main(['sample', '--steps', '2', '--num', '2']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=SUBPROCESS_ENV, cwd=tmp_path,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == "started\n"
    time.sleep(0.2)  # inside torch's import, which takes seconds
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (130, "", "ddim: interrupted\n")
    assert list(tmp_path.iterdir()) == []
