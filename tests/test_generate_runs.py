"""The kinds of fault of ``generate`` runs: settings checked once (by SampleOptions) and
recorded, a failed start leaves nothing behind, shards carry their run's identity, one writer
per folder.

Each kind has the reported example with its right value, and more cases of the same kind.
Runs use copies of the bundled models with 2 steps.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ddim
from ddim import cli
from ddim.cli import common
from ddim.generation.folder_lock import LOCK_FILE, FolderInUseError, lock_folder
from ddim.generation.generate import generate, make_shards, pack, prepare_run
from ddim.generation.manifest import (
    MANIFEST,
    RunMismatchError,
    make_manifest,
    run_identity,
    write_manifest,
)
from ddim.generation.settings import RunSettings, SamplingSettings
from ddim.generation.shards import read_shard, shard_name
from ddim.images import to_uint8
from ddim.loading.pretrained import bundled_path
from ddim.sampling.noise import sample_generators, sample_seed

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": str(ROOT / "src")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Copies of the bundled models (fixed weights while a training job may rewrite them)."""
    folder = tmp_path_factory.mktemp("models")
    for name in ("digits", "digits-cond"):
        shutil.copytree(bundled_path(name), folder / name)
    return folder


@pytest.fixture(scope="module")
def digits(models):
    return ddim.load_pretrained(models / "digits")


@pytest.fixture(scope="module")
def cond(models):
    return ddim.load_pretrained(models / "digits-cond")


def shard_arrays(out):
    """{file name: images} of the shard files in ``out``."""
    result = {}
    for path in sorted(Path(out).glob("shard-*.npz")):
        with np.load(path, allow_pickle=False) as data:
            result[path.name] = data["images"]
    return result


def cli_generate(capsys, *args):
    status = cli.main(["generate", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------ the settings, checked once
def test_run_settings_are_checked_by_sample_options_with_its_messages():
    with pytest.raises(ValueError) as from_settings:
        RunSettings(num=4, shard_size=4, batch_size=4, eta=0.5, solver="dpmpp_2m")
    with pytest.raises(ValueError) as from_sample:
        ddim.sample(lambda x, t: x, 2, 0.5, solver="dpmpp_2m", shape=(1, 1))
    assert str(from_settings.value) == str(from_sample.value)
    assert "eta=0.5 applies to solver='ddim' only" in str(from_settings.value)
    for kwargs, match in [(dict(solver="euler"), "solver must be one of"),
                          (dict(spacing="uniform"), "spacing must be one of"),
                          (dict(eta=-1.0), "eta must be"),
                          (dict(class_labels=[1.5]), "class_labels must be a label or")]:
        with pytest.raises((TypeError, ValueError), match=match):
            RunSettings(num=4, shard_size=4, batch_size=4, **kwargs)


def test_keywords_of_a_range_cycle_the_labels_and_seed_each_sample():
    settings = SamplingSettings(steps=3, seed=7, class_labels=range(10), guidance_scale=2)
    kw = settings.keywords(8, 13)
    assert kw["class_labels"].tolist() == [8, 9, 0, 1, 2]  # sample i: labels[i % 10]
    assert kw["batch_size"] == 5 and kw["guidance_scale"] == 2 and kw["solver"] == "ddim"
    first = torch.randn(1, generator=kw["generator"][0])
    assert torch.equal(first, torch.randn(1, generator=torch.Generator().manual_seed(
        sample_seed(7, 8))))
    # balanced classes whatever the batches are
    labels = torch.cat([settings.keywords(lo, min(lo + 7, 50))["class_labels"]
                        for lo in range(0, 50, 7)])
    assert torch.bincount(labels).tolist() == [5] * 10


def test_generate_records_solver_labels_and_guidance_and_matches_sample(cond, tmp_path):
    out = tmp_path / "run"
    result = generate(cond, out, 6, steps=2, solver="dpmpp_2m", class_labels=[0, 1, "null"],
                      guidance_scale=2.0, shard_size=4, batch_size=4)
    assert result.generated == 2
    manifest = json.loads((out / MANIFEST).read_text())
    assert {k: manifest["settings"][k] for k in ("solver", "class_labels", "guidance_scale")} == {
        "solver": "dpmpp_2m", "class_labels": [0, 1, 10], "guidance_scale": 2.0}
    images = np.concatenate(list(shard_arrays(out).values()))
    for lo, hi in ((0, 4), (4, 6)):  # the shards' batches
        labels = torch.tensor([0, 1, 10] * 2)[lo:hi]
        x = ddim.sample(cond, 2, solver="dpmpp_2m", class_labels=labels, guidance_scale=2.0,
                        batch_size=hi - lo, generator=sample_generators(0, lo, hi))
        np.testing.assert_array_equal(images[lo:hi], to_uint8(x))


@pytest.mark.parametrize("change, fields", [(dict(solver="unipc"), ("solver",)),
                                            (dict(class_labels=[0, 2]), ("class_labels",)),
                                            (dict(guidance_scale=3.0), ("guidance_scale",))])
def test_resuming_with_another_solver_or_labels_is_refused(cond, tmp_path, change, fields):
    args = dict(steps=2, solver="dpmpp_2m", class_labels=[0, 1], guidance_scale=2.0,
                shard_size=4)
    generate(cond, tmp_path, 4, **args)
    with pytest.raises(RunMismatchError) as info:
        generate(cond, tmp_path, 4, **(args | change))
    assert info.value.fields == fields


# ------------------------------------------------------------ a failed start leaves nothing
def test_conditional_model_without_labels_leaves_no_folder(models, capsys, tmp_path):
    """The reported example: `ddim generate --model digits-cond` left an orphan run.json."""
    out = tmp_path / "D"
    status, _, err = cli_generate(capsys, "--model", models / "digits-cond", "--num", 4,
                                  "--out", out)
    assert status == 2 and "is class-conditional: pass --class" in err
    assert not out.exists()


@pytest.mark.parametrize("args, fragment", [
    (["--class", 12], "--class must lie in [0, 10]"),
    (["--class", 3, "--device", "meta"], "--device='meta' holds no data"),
    (["--class", 3, "--solver", "dpmpp_2m", "--eta", 0.5], "eta=0.5 applies to solver"),
    (["--class", 3, "--steps", 1001], "steps must be an integer in [1, 1000], got 1001"),
    (["--guidance-scale", 2], "--guidance-scale 2 needs --class"),
    (["--class", 3, "--num-images", 9], "3 shards (9 samples, --shard-size 4)"),
])
def test_every_failed_start_leaves_nothing(models, capsys, tmp_path, monkeypatch, args,
                                           fragment):
    if "--num-images" in args:
        monkeypatch.setenv("WORLD_SIZE", "4")
        monkeypatch.setenv("RANK", "0")
    out = tmp_path / "a" / "D"
    status, _, err = cli_generate(capsys, "--model", models / "digits-cond", "--num", 4,
                                  "--shard-size", 4, "--out", out, *args)
    assert status == 2 and fragment in err and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []  # not even the parent folder


@pytest.mark.parametrize("kwargs, error", [
    (dict(model="digits", class_labels=3), "the model is not class-conditional"),
    (dict(model="digits-cond"), "the model is class-conditional: pass class_labels"),
    (dict(model="digits-cond", class_labels=[0, 11]), r"class_labels must lie in \[0, 10\]"),
    (dict(model="digits-cond", class_labels=3, device="meta"), "device='meta' holds no data"),
    (dict(model="digits", png=True, guidance_scale=1.0), "guidance_scale needs conditioning"),
])
def test_the_library_checks_everything_before_writing(models, digits, cond, tmp_path, kwargs,
                                                      error):
    model = {"digits": digits, "digits-cond": cond}[kwargs.pop("model")]
    if kwargs.get("device") == "meta":
        model = models / "digits-cond"  # by name: loaded onto the device
    with pytest.raises(ValueError, match=error):
        generate(model, tmp_path / "D", 4, steps=2, shard_size=4, **kwargs)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ shards carry their run
def test_shards_of_a_replaced_run_are_regenerated_and_never_packed(digits, tmp_path):
    """The reported data loss: an η=0.5 run goes on writing shards after an `--overwrite`
    run with η=0 rewrote run.json and was killed. Its shards have the right shape, dtype and
    indices; resume took them for the η=0 run's and pack accepted them."""
    out, half = tmp_path / "D", RunSettings(num=12, steps=2, eta=0.5, shard_size=4,
                                            batch_size=4)
    zero = RunSettings(num=12, steps=2, eta=0.0, shard_size=4, batch_size=4)
    with prepare_run(digits, out, half) as first:
        write_manifest(out, make_manifest(digits, zero.recorded()))  # the killed rewrite
        make_shards(first)  # the first run goes on writing its η=0.5 shards
    stale = shard_arrays(out)
    assert len(stale) == 3

    with pytest.raises(ValueError, match=r"cannot pack .*: 3 of 3 shards .*shard-00000\.npz "
                                         r"\(written by another run\)"):
        pack(out, tmp_path / "p.npz")
    assert not (tmp_path / "p.npz").exists()
    result = generate(digits, out, 12, steps=2, eta=0.0, shard_size=4, batch_size=4)
    assert (result.generated, result.resumed) == (3, 0)
    generate(digits, tmp_path / "ref", 12, steps=2, eta=0.0, shard_size=4, batch_size=4)
    fresh, ref = shard_arrays(out), shard_arrays(tmp_path / "ref")
    for name in ref:
        np.testing.assert_array_equal(fresh[name], ref[name])
    assert all(not np.array_equal(stale[name], fresh[name]) for name in stale)
    pack(out, tmp_path / "p.npz")


def test_one_foreign_shard_among_good_ones_is_named_and_remade(digits, tmp_path):
    generate(digits, tmp_path / "a", 8, steps=2, seed=0, shard_size=4)
    generate(digits, tmp_path / "b", 8, steps=2, seed=1, shard_size=4)
    shutil.copy(tmp_path / "b" / shard_name(1), tmp_path / "a" / shard_name(1))
    with pytest.raises(ValueError, match=r"1 of 2 shards .*: shard-00001\.npz \(written by "
                                         r"another run\); rerun"):
        pack(tmp_path / "a", tmp_path / "p.npz")
    result = generate(digits, tmp_path / "a", 8, steps=2, seed=0, shard_size=4)
    assert (result.generated, result.resumed) == (1, 1)


def test_a_shard_without_identity_is_remade(digits, tmp_path):
    """Shards of ddim-generate/1 (no run_id) cannot be traced to a run: remade, not kept."""
    generate(digits, tmp_path, 4, steps=2, shard_size=4)
    path = tmp_path / shard_name(0)
    with np.load(path) as data:
        np.savez(path, images=data["images"], indices=data["indices"])
    with pytest.raises(ValueError, match=r"written by another run"):
        pack(tmp_path, tmp_path / "p.npz")
    assert generate(digits, tmp_path, 4, steps=2, shard_size=4).generated == 1


def test_run_identity_is_the_content_not_the_layout():
    a = {"num": 3, "eta": 0.5, "weights": {"sha256": "ab"}}
    b = json.loads(json.dumps(dict(reversed(list(a.items())))))
    assert run_identity(a) == run_identity(b) and len(run_identity(a)) == 64
    assert run_identity(a) != run_identity(a | {"eta": 0.0})


# ------------------------------------------------------------ one writer per folder
LOCKER = ("import sys, time\nfrom ddim.generation.folder_lock import lock_folder\n"
          "lock = lock_folder(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(300)\n")


@pytest.mark.slow
def test_a_second_writer_is_refused_at_once_naming_the_holder(digits, tmp_path):
    """Another live process holds the folder (here a small one that only locks it): generate
    is refused at once, naming its pid, and leaves that process's temporary files alone; once
    it is killed (SIGKILL: no clean-up), its lock does not block the next run."""
    out = tmp_path / "D"
    out.mkdir()
    theirs = out / ".shard-00000.npz.a1b2c3.tmp"
    theirs.write_bytes(b"being written by the other process")
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(out)], env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(FolderInUseError, match=rf"out_dir '{out}' is in use by another "
                                                   rf"process \(pid {holder.pid} on "):
            generate(digits, out, 4, steps=2, shard_size=4)
        assert theirs.exists() and sorted(os.listdir(out)) == [theirs.name, LOCK_FILE]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert generate(digits, out, 4, steps=2, shard_size=4).generated == 1
    assert sorted(os.listdir(out)) == [MANIFEST, LOCK_FILE, shard_name(0)]  # temp file cleared


def test_the_cli_names_the_holder_in_one_line_before_loading(digits, models, capsys,
                                                             tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the lock was looked at")

    out = tmp_path / "D"
    out.mkdir()
    with lock_folder(out), monkeypatch.context() as patch:  # held through another open file
        patch.setattr(common, "load_pretrained", no_loading)
        status, _, err = cli_generate(capsys, "--model", models / "digits", "--num", 4,
                                      "--steps", 2, "--out", out)
        assert status == 2 and err.count("\n") == 1
        assert f"--out '{out}' is in use by another process (pid {os.getpid()} on " in err
        assert MANIFEST not in os.listdir(out)
    assert cli_generate(capsys, "--model", models / "digits", "--num", 4, "--steps", 2,
                        "--out", out)[0] == 0


def test_the_lock_is_held_from_prepare_run_until_the_run_is_closed(digits, tmp_path):
    settings = RunSettings(num=4, steps=2, shard_size=4, batch_size=4)
    with prepare_run(digits, tmp_path, settings) as run:
        with pytest.raises(FolderInUseError, match=f"pid {os.getpid()} on "):
            lock_folder(tmp_path)
        make_shards(run)
        with pytest.raises(FolderInUseError):
            lock_folder(tmp_path)
    lock_folder(tmp_path).release()  # free again
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert set(holder) == {"pid", "host", "since"} and holder["pid"] == os.getpid()


@pytest.mark.slow
def test_two_generate_processes_one_refused_and_a_killed_one_resumable(digits, models,
                                                                      tmp_path):
    """Two identical `ddim generate` commands: the second is refused at once (each used to
    make all 30 shards); the first, killed with SIGKILL, leaves a lock that blocks nobody,
    and its shards are kept by the next run."""
    out = tmp_path / "D"
    args = [sys.executable, "-m", "ddim", "generate", "--model", str(models / "digits"),
            "--num", "400", "--shard-size", "4", "--steps", "50", "--batch-size", "4",
            "--out", str(out), "--no-progress", "--threads", "1"]
    first = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(lambda: (out / MANIFEST).exists(), first)  # it holds the lock from then on
        second = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second was refused"
        assert second.returncode == 2 and f"(pid {first.pid} on " in second.stderr
        assert second.stderr.count("\n") == 1 and second.stdout == ""
        wait_for(lambda: list(out.glob("shard-*.npz")), first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    made = sorted(out.glob("shard-*.npz"))
    settings = RunSettings(num=400, steps=50, shard_size=4, batch_size=4)
    with prepare_run(digits, out, settings) as run:  # not blocked by the killed run's lock
        for path in made:
            k = int(path.stem.split("-")[1])
            read_shard(path, 4 * k, 4 * k + 4, (8, 8, 1), run.run_id)  # kept on resume


def wait_for(condition, proc, seconds=240):
    """Poll ``condition()`` until it holds, while ``proc`` runs."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"not after {seconds} s"
        time.sleep(0.05)
