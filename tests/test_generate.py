"""``ddim generate``: exact counts, shards that do not depend on batch size or process count,
resuming after a real SIGINT, torchrun with two CPU processes, and every refusal (another
run's run.json is shown where it differs).

All runs use a copy of the bundled digits model (8×8, 0.65 M parameters) with 2-3 steps: the
copy keeps the weights fixed while a training job may rewrite the bundled file.
"""

import errno
import json
import os
import re
import shutil
import signal
import socket
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
from ddim.generation import distributed
from ddim.generation.folder_lock import LOCK_FILE
from ddim.generation.generate import generate, pack
from ddim.generation.manifest import MANIFEST, RunMismatchError, check_same_run, contrast
from ddim.generation.shards import count_shards, shard_name
from ddim.loading.pretrained import bundled_path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "digits"
    shutil.copytree(bundled_path("digits"), folder)
    return folder


@pytest.fixture(scope="module")
def bundle(digits_dir):
    return ddim.load_pretrained(digits_dir)


def shards(out):
    """{file name: (images, indices)} of the shard files in ``out``."""
    result = {}
    for path in sorted(Path(out).glob("shard-*.npz")):
        with np.load(path, allow_pickle=False) as data:
            result[path.name] = (data["images"], data["indices"])
    return result


def assert_same_shards(a, b):
    sa, sb = shards(a), shards(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        np.testing.assert_array_equal(sa[name][0], sb[name][0], err_msg=name)
        np.testing.assert_array_equal(sa[name][1], sb[name][1], err_msg=name)


def temp_files(out):
    return [p for p in Path(out).rglob(".*") if p.name.endswith(".tmp")]


def run_cli(capsys, *args):
    status = cli.main(["generate", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------------------- outputs
def test_exact_count_partial_last_shard_pack_and_pngs(bundle, tmp_path):
    out = tmp_path / "run"
    result = generate(bundle, out, 21, steps=3, shard_size=8, batch_size=5, png=True)
    assert (result.num, result.shards, result.generated, result.resumed,
            result.generated_images) == (21, 3, 3, 0, 21)
    got = shards(out)
    assert list(got) == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    assert [len(i) for _, i in got.values()] == [8, 8, 5]  # 21, not floored to batches
    indices = np.concatenate([i for _, i in got.values()])
    np.testing.assert_array_equal(indices, np.arange(21))
    images = np.concatenate([im for im, _ in got.values()])
    assert images.shape == (21, 8, 8, 1) and images.dtype == np.uint8
    assert len({im.tobytes() for im in images}) == 21

    manifest = json.loads((out / MANIFEST).read_text())
    assert {k: manifest["settings"][k] for k in ("num", "steps", "eta", "seed", "spacing",
                                                 "shard_size")
            } == dict(num=21, steps=3, eta=0.0, seed=0, spacing="trailing", shard_size=8)
    assert manifest["seed_rule"] == ddim.sampling.noise.SEED_RULE
    assert manifest["model"] == str(bundle.name) and len(manifest["weights"]["sha256"]) == 64
    assert manifest["data_range"] == [-1.0, 1.0] and manifest["ddim_version"] == ddim.__version__

    pngs = sorted((out / "png").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(21)]
    with Image.open(pngs[20]) as im:
        np.testing.assert_array_equal(np.asarray(im), images[20, :, :, 0])

    packed = pack(out, tmp_path / "all.npz")
    with np.load(packed, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["images"], images)
        assert json.loads(str(data["manifest"])) == manifest and int(data["num"]) == 21
    assert temp_files(tmp_path) == []


def test_shards_do_not_depend_on_batch_size(bundle, tmp_path):
    for batch_size in (3, 7):
        generate(bundle, tmp_path / f"b{batch_size}", 17, steps=3, eta=0.5, seed=5,
                 shard_size=8, batch_size=batch_size)
    assert_same_shards(tmp_path / "b3", tmp_path / "b7")


def test_cli_writes_packs_and_reports(digits_dir, capsys, tmp_path, bundle):
    status, out, err = run_cli(capsys, "--model", digits_dir, "--num", 9, "--shard-size", 4,
                               "--steps", 2, "--out", tmp_path / "run", "--pack",
                               tmp_path / "p.npz", "--no-progress")
    assert (status, err) == (0, "")
    assert out.startswith(f"9 images in 3 shards in {tmp_path / 'run'} (3 shards generated) in")
    assert out.endswith(f"images/s\npacked into {tmp_path / 'p.npz'}\n")
    status, out, _ = run_cli(capsys, "--model", digits_dir, "--num", 9, "--shard-size", 4,
                             "--steps", 2, "--out", tmp_path / "run", "--no-progress")
    assert status == 0 and "(0 shards generated, 3 kept from before)" in out
    with np.load(tmp_path / "p.npz") as data:
        assert data["images"].shape == (9, 8, 8, 1)


# ---------------------------------------------------------------------------- resuming
def test_resume_keeps_valid_shards_and_remakes_missing_or_corrupt_ones(bundle, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    generate(bundle, ref, 14, steps=2, shard_size=4, batch_size=4)
    generate(bundle, out, 14, steps=2, shard_size=4, batch_size=4)
    (out / shard_name(1)).unlink()
    (out / shard_name(2)).write_bytes((out / shard_name(2)).read_bytes()[:100])  # truncated
    (out / ".shard-00001.npz.x1y2.tmp").write_bytes(b"left by a killed process")
    kept = (out / shard_name(0)).stat().st_mtime_ns, (out / shard_name(3)).stat().st_mtime_ns

    result = generate(bundle, out, 14, steps=2, shard_size=4, batch_size=3)
    assert (result.generated, result.resumed, result.generated_images) == (2, 2, 8)
    assert kept == ((out / shard_name(0)).stat().st_mtime_ns,
                    (out / shard_name(3)).stat().st_mtime_ns)
    assert_same_shards(out, ref)
    assert temp_files(out) == []


@pytest.mark.slow
def test_sigint_then_resume_gives_the_uninterrupted_result(bundle, digits_dir, capsys,
                                                          tmp_path):
    args = ["--model", digits_dir, "--num", 32, "--shard-size", 4, "--steps", 20,
            "--out", tmp_path / "run", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "ddim", "generate", *map(str, args),
                             "--batch-size", "2"], env=ENV, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "run").glob("shard-*.npz")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no shard after 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "rerun the same command to resume" in stderr
    left = shards(tmp_path / "run")
    assert 1 <= len(left) < 8, "the run finished before the signal arrived"
    assert temp_files(tmp_path / "run") == []

    status, out, _ = run_cli(capsys, *args, "--batch-size", 4)
    assert status == 0 and f"{len(left)} kept from before" in out
    generate(bundle, tmp_path / "ref", 32, steps=20, shard_size=4, batch_size=8)
    assert_same_shards(tmp_path / "run", tmp_path / "ref")
    indices = np.concatenate([i for _, i in shards(tmp_path / "run").values()])
    np.testing.assert_array_equal(np.sort(indices), np.arange(32))
    assert temp_files(tmp_path / "run") == []


# ---------------------------------------------------------------------------- torchrun
def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_two_processes_match_one_process(bundle, digits_dir, tmp_path):
    cmd = ["torchrun", "--nnodes=1", "--nproc_per_node=2", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=localhost:{free_port()}", "-m", "ddim", "generate",
           "--model", str(digits_dir), "--num-images", "10", "--shard-size", "4", "--steps", "2",
           "--batch-size", "3", "--out", str(tmp_path / "run"), "--pack",
           str(tmp_path / "packed.npz"), "--no-progress"]
    proc = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "10 images in 3 shards" in proc.stdout and "over 2 processes" in proc.stdout

    generate(bundle, tmp_path / "ref", 10, steps=2, shard_size=4, batch_size=7)
    assert_same_shards(tmp_path / "run", tmp_path / "ref")
    with np.load(tmp_path / "packed.npz") as data:
        ref = np.concatenate([im for im, _ in shards(tmp_path / "ref").values()])
        np.testing.assert_array_equal(data["images"], ref)


def test_launch_reads_torchrun_environment():
    assert distributed.from_env({}) == (0, 1, 0)
    assert distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(ValueError, match="RANK=4, WORLD_SIZE=4"):
        distributed.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        distributed.from_env({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="names one GPU for all 2 processes"):
        distributed.process_device("cuda:1", 2, 0)
    with distributed.launch("cpu", environ={}) as proc:  # one process: no group
        assert proc == distributed.Process(0, 1, 0, torch.device("cpu"))
        assert not distributed.is_initialized()


# ---------------------------------------------------------------------------- refusals
def test_another_run_is_refused_unless_overwrite(bundle, digits_dir, capsys, tmp_path):
    out = tmp_path / "run"
    generate(bundle, out, 6, steps=2, seed=0, shard_size=4)
    before = shards(out)
    with pytest.raises(RunMismatchError, match=r"differs in seed \(0 there, 1 now\)") as info:
        generate(bundle, out, 6, steps=2, seed=1, shard_size=4)
    assert info.value.fields == ("seed",)
    assert "pass overwrite=True to delete" in str(info.value) and "--" not in str(info.value)
    status, _, err = run_cli(capsys, "--model", digits_dir, "--num", 6, "--shard-size", 4,
                             "--steps", 3, "--eta", 1, "--out", out)
    assert status == 2 and err.startswith("ddim: error: --out ") and err.count("\n") == 1
    assert "differs in steps (2 there, 3 now), eta (0.0 there, 1.0 now)" in err
    assert "pass --overwrite to delete" in err and "overwrite=True" not in err
    for name, (images, _) in shards(out).items():  # nothing touched
        np.testing.assert_array_equal(images, before[name][0])

    generate(bundle, out, 6, steps=2, seed=1, shard_size=4, overwrite=True, png=True)
    assert json.loads((out / MANIFEST).read_text())["settings"]["seed"] == 1
    assert not np.array_equal(shards(out)[shard_name(0)][0], before[shard_name(0)][0])
    assert len(list((out / "png").iterdir())) == 6


def test_another_model_is_refused(bundle, tiny_unet, tmp_path):
    generate(bundle, tmp_path, 4, steps=2, shard_size=4)
    other = ddim.Pretrained(model=tiny_unet, schedule=bundle.schedule, sample_shape=(1, 8, 8),
                            name="tiny")
    with pytest.raises(RunMismatchError, match="differs in model") as info:
        generate(other, tmp_path, 4, steps=2, shard_size=4)
    assert info.value.fields == ("model", "weights")


def test_shards_without_manifest_are_refused(bundle, tmp_path):
    (tmp_path / shard_name(0)).write_bytes(b"?")
    with pytest.raises(ValueError, match="holds shard files but no run.json"):
        generate(bundle, tmp_path, 4, steps=2, shard_size=4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num=0), "num must be an integer >= 1, got 0"),
    (dict(num=-5), "num must be an integer >= 1, got -5"),
    (dict(shard_size=0), "shard_size must be an integer >= 1, got 0"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(steps=1001), r"steps must be an integer in \[1, 1000\], got 1001"),
    (dict(eta=-1.0), "eta must be"),
    (dict(spacing="uniform"), "spacing must be one of"),
    (dict(world_size=4), r"world_size=4 processes but the run has only 3 shards \(10 samples, "
                         r"shard_size 4\)"),
    (dict(world_size=2), "needs a torch.distributed process group"),
])
def test_bad_arguments(bundle, tmp_path, kwargs, match):
    args = dict(num=10, shard_size=4, steps=2) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(bundle, tmp_path / "run", args.pop("num"), **args)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("args, fragment", [
    (["--num", "0"], "argument --num/--num-images: must be an integer >= 1, got '0'"),
    (["--shard-size", "0"], "argument --shard-size: must be an integer >= 1"),
    (["--pack", "x.png"], "--pack must end in .npz"),
])
def test_cli_bad_arguments(args, fragment, digits_dir, capsys, tmp_path):
    status, _, err = run_cli(capsys, "--model", digits_dir, "--num", 8, "--out",
                             tmp_path / "run", *args)
    assert status == 2 and fragment in err and err.startswith("ddim: error: ")
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_cli_world_size_above_shards_is_refused_before_joining(digits_dir, capsys, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    status, _, err = run_cli(capsys, "--model", digits_dir, "--num", 10, "--shard-size", 4,
                             "--out", tmp_path / "run")
    assert status == 2 and "run has only 3 shards" in err
    monkeypatch.setenv("RANK", "2")  # the other ranks exit quietly: rank 0 says it
    assert run_cli(capsys, "--model", digits_dir, "--num", 10, "--shard-size", 4,
                   "--out", tmp_path / "run") == (2, "", "")


def test_unwritable_folder(bundle, tmp_path, monkeypatch):
    # chmod stops no writes by root (how CI runs): the folder is made unwritable by patching
    # what a read-only folder would answer, os.access and the mkdir of a folder inside it
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access, real_mkdir = os.access, Path.mkdir

    def access(path, mode, *args, **kwargs):
        return False if os.fspath(path) == str(locked) else real_access(path, mode, *args,
                                                                          **kwargs)

    def mkdir(self, *args, **kwargs):
        if self.parent == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(ValueError, match="out_dir .* is not writable"):
        generate(bundle, locked, 4, steps=2, shard_size=4)
    with pytest.raises(ValueError, match="out_dir: cannot create .*Permission denied"):
        generate(bundle, locked / "run", 4, steps=2, shard_size=4)


def test_full_disk_leaves_no_partial_shard_and_resumes(bundle, digits_dir, capsys, tmp_path,
                                                      monkeypatch):
    real = np.savez_compressed
    calls = []

    def fills_the_disk(file, *args, **kwargs):  # the first shard fits, the second does not
        calls.append(file)
        if len(calls) == 1:
            return real(file, *args, **kwargs)
        file.write(b"PK\x03\x04 half a shard")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez_compressed", fills_the_disk)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="No space left on device") as info:
        generate(bundle, out, 12, steps=2, shard_size=4)
    assert info.value.errno == errno.ENOSPC and "rerun with the same arguments" in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, LOCK_FILE, shard_name(0)]

    status, _, err = run_cli(capsys, "--model", digits_dir, "--num", 12, "--shard-size", 4,
                             "--steps", 2, "--out", out)
    assert status == 1 and "No space left on device" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, LOCK_FILE, shard_name(0)]

    monkeypatch.setattr(np, "savez_compressed", real)
    result = generate(bundle, out, 12, steps=2, shard_size=4)
    assert (result.generated, result.resumed) == (2, 1)
    assert count_shards(12, 4) == len(shards(out))


def test_pack_lists_missing_shards(bundle, tmp_path):
    generate(bundle, tmp_path / "run", 12, steps=2, shard_size=4)
    (tmp_path / "run" / shard_name(1)).unlink()
    with pytest.raises(ValueError, match=r"1 of 3 shards missing, unreadable or not of the run "
                                         r"its run.json describes: shard-00001.npz \(missing\); "
                                         r"rerun"):
        pack(tmp_path / "run", tmp_path / "all.npz")
    assert not (tmp_path / "all.npz").exists()
    with pytest.raises(ValueError, match="holds no run.json"):
        pack(tmp_path, tmp_path / "all.npz")


# ---------------------------------------------------------------------------- run.json differences
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

