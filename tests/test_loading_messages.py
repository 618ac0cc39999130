"""Issue 12, the loading and message kinds: the eval extra (#8), the offline hint's command
(#11), rough edges (#14: repr, plurals, API/CLI wording, writers to a missing folder,
.gitignore, lazy imports) and messages (#22: differing sha256 values, state-dict errors,
refused pickles, Ctrl-C during import).
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

import ddim
from ddim import cli
from ddim.atomic import atomic_write_text
from ddim.evaluation.digits import load_digits_images
from ddim.generation.folder_lock import FolderInUseError
from ddim.generation.manifest import RunMismatchError, check_same_run, contrast, write_manifest
from ddim.generation.run_checks import TooManyProcessesError, check_world_size
from ddim.generation.shards import write_shard
from ddim.images import save_image_grid, save_npz, save_png
from ddim.loading import hub
from tests.conftest import make_tiny_unet
from tests.test_cli import Elementwise, check_error, loads  # noqa: F401 (a fixture)

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def python(code, **kwargs):
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                          text=True, timeout=300, **kwargs)


# ---------------------------------------------------------------- #8 the eval extra
@pytest.fixture
def no_sklearn(monkeypatch):
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError


def test_eval_without_scikit_learn_says_what_to_install_before_any_work(no_sklearn, loads,  # noqa: F811
                                                                        capsys):
    """The reported example: `ddim eval` sampled first, then failed with a 20-line traceback."""
    check_error(capsys, ["eval", "--model", "tiny"], 2,
                "the digits data needs scikit-learn, which is not installed: pip install "
                "'ddim[eval]' (or pass --reference FILE.npz)")
    assert loads == []


def test_digits_without_scikit_learn_is_one_line(no_sklearn):
    with pytest.raises(ImportError) as info:
        load_digits_images()
    assert str(info.value) == ("the digits data needs scikit-learn, which is not installed: "
                               "pip install 'ddim[eval]'")


def test_eval_with_a_reference_needs_no_scikit_learn(no_sklearn, capsys, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz",
                 images=rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8))
    assert cli.main(["eval", "--images", str(tmp_path / "a.npz"), "--reference",
                     str(tmp_path / "b.npz")]) == 0
    assert capsys.readouterr().out.startswith("FD ")


def test_the_eval_extra_is_declared_and_the_examples_that_need_it_say_so():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(r.startswith("scikit-learn") for r in extras["eval"])
    needing = [p for p in (ROOT / "examples").glob("*.py")
               if "ddim.evaluation.digits" in p.read_text()]
    assert len(needing) >= 2
    for path in needing:
        assert "pip install 'ddim[eval]'" in "".join(path.read_text().splitlines(True)[:4])


# ---------------------------------------------------------------- #11 the offline hint
@pytest.mark.parametrize("version, command", [
    ("0.36.0", "huggingface-cli download google/ddpm-cifar10-32 --local-dir ./ddpm-cifar10-32"),
    ("1.0.0", "hf download google/ddpm-cifar10-32 --local-dir ./ddpm-cifar10-32"),
    ("1.2.0rc1", "hf download google/ddpm-cifar10-32 --local-dir ./ddpm-cifar10-32"),
])
def test_the_hint_names_the_command_the_installed_hub_has(version, command, monkeypatch):
    monkeypatch.setattr(hub.metadata, "version", lambda name: version)
    assert hub.download_command("google/ddpm-cifar10-32") == command


def test_the_offline_message_names_the_installed_command(monkeypatch, tmp_path):
    """The reported example: it said `huggingface-cli download`, which huggingface-hub >= 1.0
    does not install. This machine's version decides."""
    from importlib import metadata

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    tool = "hf" if int(metadata.version("huggingface_hub").split(".")[0]) >= 1 else (
        "huggingface-cli")
    assert shutil.which(tool) or not shutil.which("hf"), f"{tool} is not on PATH"
    with pytest.raises(ddim.PretrainedError, match=rf"`{tool} download google/ddpm-cifar10-32 "
                                                  r"--local-dir \./ddpm-cifar10-32`"):
        ddim.load_pretrained("google/ddpm-cifar10-32")


# ---------------------------------------------------------------- #14 rough edges
def test_repr_of_a_bundle_is_a_short_summary():
    """The reported example: repr(Pretrained) printed the whole UNet, 5846 characters."""
    text = repr(ddim.load_pretrained("digits"))
    assert len(text) < 300 and "\n" not in text
    for part in ("Pretrained(name='digits', model=UNet2DModel, parameters=0.", "M, "
                 "sample_shape=(1, 8, 8), prediction_type='epsilon', schedule=NoiseSchedule(T=1000",
                 "data_range=(-1.0, 1.0), device=cpu, dtype=float32)"):
        assert part in text
    small = ddim.Pretrained(model=Elementwise(), schedule=ddim.NoiseSchedule.linear(),
                            sample_shape=(1, 4, 4), name="tiny").to(dtype=torch.bfloat16)
    assert "model=Elementwise, parameters=0.00M" in repr(small)
    assert "dtype=bfloat16" in repr(small)


def test_counts_of_one_are_singular(loads, capsys, tmp_path):  # noqa: F811
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


def test_gitignore_covers_what_the_examples_and_the_readme_write():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    written = set()
    for path in (ROOT / "examples").glob("*.py"):
        written |= set(re.findall(r'save_image_grid\([^"]*"([^"]+)"', path.read_text()))
    readme = (ROOT / "README.md").read_text()
    written |= set(re.findall(r"--(?:out|pack) (\S+)", readme))  # the commands' outputs
    written |= set(re.findall(r'generate\(\w+, "([^"]+)"', readme))
    written |= set(re.findall(r'pack\("[^"]+", "([^"]+)"', readme))
    written |= set(re.findall(r'save_image_grid\(\w+, "([^"]+)"', readme))
    written = {name for name in written if not name.startswith("/")}  # in the repository
    assert {"quickstart.png", "samples.png", "digits-run", "digits-20.npz", "grid.png",
            "runs/cifar10-s50"} <= written
    for name in written:
        file = name if Path(name).suffix else f"{name}/shard-00000.npz"  # a run's folder
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", file], cwd=ROOT)
        assert done.returncode == 0, f"{name} is not ignored"


LAZY = """
import sys, ddim
heavy = ("torch", "numpy", "diffusers", "PIL", "ddim.cli.common", "ddim.sampling.sampler")
print([m for m in heavy if m in sys.modules])
ddim.NoiseSchedule
print([m for m in ("diffusers", "PIL", "ddim.cli.common") if m in sys.modules])
from ddim.images import to_uint8
print("PIL" in sys.modules)
"""


def test_import_ddim_loads_nothing_heavy_until_used():
    done = python(LAZY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[]", "[]", "False"]


def test_public_names_and_modules_still_work():
    assert set(ddim.__all__) == set(ddim._EXPORTS)
    assert set(BEFORE_WINGS) <= set(ddim.__all__)  # every name of the flat layout's __all__
    assert all(getattr(ddim, name) is not None for name in ddim.__all__)
    assert {"sample", "accelerate", "load_pretrained", "generate"} <= set(dir(ddim))
    assert ddim.generation.generate.generate is ddim.generate
    with pytest.raises(AttributeError, match="has no attribute 'smaple'"):
        ddim.smaple  # noqa: B018
    done = python("import ddim.acceleration.accelerate, ddim, inspect\n"
                  "print(inspect.isfunction(ddim.accelerate), ddim.accelerate.__module__)\n"
                  "from ddim import sample, accelerate\nprint(accelerate is ddim.accelerate)")
    assert done.stdout.split() == ["True", "ddim.acceleration.accelerate", "True"], done.stderr


BEFORE_WINGS = (  # ddim.__all__ at bc30d1e, before the modules moved into subpackages
    "BUNDLED_MODELS", "NoiseSchedule", "NonFiniteError", "Pretrained", "PretrainedError",
    "SampleStep", "StepOutput", "accelerate", "ddim_sigma", "ddim_step", "img2img", "inpaint",
    "interpolation_strip", "invert", "load_pretrained", "make_grid", "predict_x0_eps",
    "sample", "sample_iter", "save_image_grid", "slerp", "strict_float32", "to_pil", "to_uint8",
)


# ---------------------------------------------------------------- #22 messages
def test_differing_sha256_values_are_shown_where_they_differ(tmp_path):
    """The reported example: both values cut at the same place, so they looked equal."""
    old = {"weights": {"file": "diffusion_pytorch_model.safetensors", "sha256": "ab" * 31 + "01"}}
    new = {"weights": {"file": "diffusion_pytorch_model.safetensors", "sha256": "ab" * 31 + "02"}}
    with pytest.raises(RunMismatchError) as info:
        check_same_run(tmp_path, old, new, False)
    there, now = re.search(r"weights \((.*) there, (.*) now\)", str(info.value)).groups()
    assert there != now and there.endswith('01"}') and now.endswith('02"}')


@pytest.mark.parametrize("a, b", [
    (list(range(100)), list(range(99)) + [100]),  # long lists that differ at the end
    ("x" * 200, "x" * 200 + "y"),  # one a prefix of the other
    ({"sha256": "0" * 64}, {"sha256": "1" + "0" * 63}),  # a difference at the start
])
def test_long_values_are_contrasted_around_their_first_difference(a, b):
    ta, tb = contrast(a, b)
    assert ta != tb and max(len(ta), len(tb)) <= 62
    assert contrast(3, 4) == ("3", "4")  # short values whole


def save_pipeline(folder):
    unet = make_tiny_unet(seed=3)
    unet.save_pretrained(folder)
    return unet


def test_in_channels_mismatch_shows_what_differs(tmp_path):
    """The reported example: only the first line of the state-dict error was shown."""
    save_pipeline(tmp_path / "u")
    config = json.loads((tmp_path / "u" / "config.json").read_text())
    (tmp_path / "u" / "config.json").write_text(json.dumps(config | {"in_channels": 3}))
    with pytest.raises(ddim.PretrainedError) as info:
        ddim.load_pretrained(tmp_path / "u")
    msg = str(info.value)
    assert ("size mismatch for conv_in.weight: copying a param with shape torch.Size([32, 1, "
            "3, 3]) from checkpoint, the shape in current model is torch.Size([32, 3, 3, 3])"
            ) in msg
    assert "\n" not in msg and "ignore_mismatched_sizes" not in msg


def test_another_architecture_lists_a_few_mismatches_and_counts_the_rest(tmp_path):
    save_pipeline(tmp_path / "u")
    config = json.loads((tmp_path / "u" / "config.json").read_text())
    (tmp_path / "u" / "config.json").write_text(json.dumps(config | {
        "block_out_channels": [16, 32], "norm_num_groups": 4}))
    with pytest.raises(ddim.PretrainedError, match=r"size mismatch for .*; size mismatch for "
                                                   r".* \(and \d+ more\)$"):
        ddim.load_pretrained(tmp_path / "u")


class Payload:
    """A pickle that would run a command when loaded."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("payload, named", [
    (lambda marker: Payload(f"touch {marker}"), "posix.system"),
    (lambda marker: {"conv_in.weight": Payload(f"touch {marker}")}, "posix.system"),
])
def test_a_pickle_with_code_is_refused_for_safety_and_never_runs(payload, named, tmp_path):
    """The reported example: the refusal did not say it was refused for safety."""
    save_pipeline(tmp_path / "u")
    (tmp_path / "u" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    torch.save(payload(marker), tmp_path / "u" / "diffusion_pytorch_model.bin")
    with pytest.raises(ddim.PretrainedError) as info:
        ddim.load_pretrained(tmp_path / "u")
    msg = str(info.value)
    assert not marker.exists()
    assert msg.startswith(f"refused to load {tmp_path / 'u' / 'diffusion_pytorch_model.bin'} "
                          "for safety: it is a pickle that holds more than tensors")
    assert named in msg and "Only if you trust its source, convert it to safetensors" in msg
    assert "save_file(torch.load(" in msg and "\n" not in msg


def test_a_truncated_pickle_is_not_called_unsafe(tmp_path):
    unet = save_pipeline(tmp_path / "u")
    (tmp_path / "u" / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(tmp_path / "b", safe_serialization=False)
    data = (tmp_path / "b" / "diffusion_pytorch_model.bin").read_bytes()
    (tmp_path / "u" / "diffusion_pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ddim.PretrainedError, match=r"cannot load weights .*\.bin: ") as info:
        ddim.load_pretrained(tmp_path / "u")
    assert "safety" not in str(info.value)


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


def test_ctrl_c_while_the_command_imports_is_one_line():
    """The reported example: Ctrl-C during import printed a traceback."""
    done = python(INTERRUPTED_IMPORT)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "ddim: interrupted\n")


def test_a_real_sigint_during_the_imports_is_one_line(tmp_path):
    code = ("import sys\nprint('started', flush=True)\nfrom ddim.cli import main\n"
            "sys.exit(main(['sample', '--steps', '2', '--num', '2']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == "started\n"
    time.sleep(0.2)  # inside torch's import, which takes seconds
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (130, "", "ddim: interrupted\n")
    assert list(tmp_path.iterdir()) == []
