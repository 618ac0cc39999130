"""load_pretrained: the bundled model, diffusers folders, hub ids offline (and the download
command the offline message names), the bundle's repr, and bad files: state-dict mismatches
shown in one line, pickles with code refused for safety and never run."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

import ddim
from ddim import NoiseSchedule, PretrainedError
from ddim.loading import hub
from ddim.loading.pretrained import bundled_path
from tests.helpers import Elementwise, make_tiny_unet


@pytest.fixture(scope="module")
def digits():
    return ddim.load_pretrained("digits")


@pytest.fixture
def saved_pipeline(tmp_path):
    """A random-init DDPMPipeline saved in diffusers' layout."""
    unet = make_tiny_unet(seed=3)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe", unet


def test_bundled_model_one_line_use(digits):
    assert digits.sample_shape == (1, 8, 8) and digits.prediction_type == "epsilon"
    assert digits.schedule == NoiseSchedule.linear()
    x = ddim.sample(digits, steps=5, eta=0.0)
    assert x.shape == (1, 1, 8, 8) and torch.isfinite(x).all()


def test_bundled_folder_is_small_and_in_diffusers_layout():
    folder = bundled_path("digits")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 5 * 2**20
    for rel in ["model_index.json", "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]:
        assert (folder / rel).is_file(), rel
    config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    assert config["clip_sample"] is False and config["prediction_type"] == "epsilon"


def test_bundled_model_agrees_with_diffusers_ddim_pipeline(digits):
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                              clip_sample=False, set_alpha_to_one=True, steps_offset=0)
    pipe = DDIMPipeline(unet=digits.model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    for eta in (0.0, 1.0):
        ref = pipe(batch_size=4, num_inference_steps=20, eta=eta, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
        x = ddim.sample(digits, 20, eta, batch_size=4, generator=torch.Generator().manual_seed(0),
                        spacing="leading")  # DDIMScheduler's default spacing
        ours = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        # float32 rounding only (over 20 steps): ddim applies the step as a_x·x + a_out·ε̂,
        # diffusers through x̂0; both lie within ~1e-5 of a float64 run
        assert np.abs(ours - ref).max() <= 3e-5


def test_round_trip_saved_random_pipeline(saved_pipeline):
    folder, unet = saved_pipeline
    bundle = ddim.load_pretrained(folder)
    assert bundle.sample_shape == (1, 8, 8) and bundle.name == str(folder)
    x_T = torch.randn(2, 1, 8, 8)
    ours = ddim.sample(bundle, 10, x_T=x_T)
    direct = ddim.sample(unet, 10, x_T=x_T)
    torch.testing.assert_close(ours, direct, rtol=0, atol=1e-6)


def test_flat_layout_and_bare_unet_with_schedule(tmp_path, saved_pipeline):
    folder, unet = saved_pipeline
    flat = tmp_path / "flat"
    shutil.copytree(folder / "unet", flat)
    bare = ddim.load_pretrained(flat)  # no scheduler config: the DDPM linear schedule
    assert bare.schedule == NoiseSchedule.linear()
    custom = NoiseSchedule.linear(1000, 1e-4, 0.03)
    assert ddim.load_pretrained(flat, schedule=custom).schedule == custom
    DDIMScheduler(beta_end=0.03, prediction_type="v_prediction").save_pretrained(flat)
    loaded = ddim.load_pretrained(flat)  # google/ddpm-* layout: configs side by side
    assert loaded.schedule == custom and loaded.prediction_type == "v_prediction"


def test_bin_weights_are_loaded(tmp_path, saved_pipeline):
    folder, unet = saved_pipeline
    unet.save_pretrained(tmp_path / "binunet", safe_serialization=False)
    _assert_same_model(ddim.load_pretrained(tmp_path / "binunet"), unet)


def _assert_same_model(bundle, unet):
    """The loaded network has exactly the weights, and computes the function, of ``unet``."""
    mine, theirs = bundle.model.state_dict(), unet.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    # equal up to float32 kernel choice (~1e-6 per forward; the default grid starts at t=999,
    # where x̂0 magnifies that 1/sqrt(ᾱ_999) = 156 times)
    x_T = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ddim.sample(bundle, 3, x_T=x_T), ddim.sample(unet, 3, x_T=x_T),
                               rtol=1e-4, atol=1e-4)


def test_learned_variance_folder(tmp_path):
    unet = make_tiny_unet(seed=1, out_channels=2)
    unet.save_pretrained(tmp_path / "lv")
    bundle = ddim.load_pretrained(tmp_path / "lv")
    assert torch.isfinite(ddim.sample(bundle, 3, batch_size=2)).all()


def test_device_and_dtype_options(saved_pipeline):
    folder, _ = saved_pipeline
    bundle = ddim.load_pretrained(folder, device="cpu", torch_dtype=torch.bfloat16)
    assert next(bundle.parameters()).dtype == torch.bfloat16
    x = ddim.sample(bundle, 3, batch_size=1)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_hub_id_offline_fails_fast_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    import time

    start = time.perf_counter()
    with pytest.raises(PretrainedError) as info:
        ddim.load_pretrained("google/ddpm-cifar10-32")
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    assert "google/ddpm-cifar10-32" in msg and "offline" in msg and "download" in msg
    assert "\n" not in msg


def test_hub_id_from_the_cache(monkeypatch, tmp_path, saved_pipeline):
    """With the repo in the local cache, a hub id loads offline through huggingface_hub."""
    folder, unet = saved_pipeline
    snapshot = tmp_path / "hub" / "models--someone--tiny-ddpm" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    _assert_same_model(ddim.load_pretrained("someone/tiny-ddpm"), unet)


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


# ------------------------------------------------------------------ bad folders and files
def test_unknown_name_and_missing_folder(tmp_path):
    with pytest.raises(PretrainedError, match=r"model 'digitz' not found.*bundled"):
        ddim.load_pretrained("digitz")
    with pytest.raises(PretrainedError, match="not found"):
        ddim.load_pretrained(str(tmp_path / "nope"))
    with pytest.raises(TypeError, match="name_or_path"):
        ddim.load_pretrained(3)


def test_folder_without_config_or_weights(tmp_path, saved_pipeline):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match=r"no model config in .*empty"):
        ddim.load_pretrained(tmp_path / "empty")
    folder, _ = saved_pipeline
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PretrainedError, match=r"no weights in .*unet"):
        ddim.load_pretrained(folder)


def test_truncated_safetensors(saved_pipeline):
    folder, _ = saved_pipeline
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedError, match=r"corrupt or truncated weights file .*safetensors"):
        ddim.load_pretrained(folder)


def test_garbage_safetensors(saved_pipeline):
    folder, _ = saved_pipeline
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00" * 64 + b"not a safetensors file")
    with pytest.raises(PretrainedError, match=r"corrupt or truncated weights file .*safetensors"):
        ddim.load_pretrained(folder)


def test_weights_of_another_architecture(saved_pipeline):
    folder, _ = saved_pipeline
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["block_out_channels"] = [16, 32]
    config_file.write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match=r"cannot load weights .*safetensors"):
        ddim.load_pretrained(folder)


def test_config_with_unknown_keys(saved_pipeline):
    folder, _ = saved_pipeline
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["num_heads_typo"] = 4
    config_file.write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match=r"config\.json: unknown keys .*num_heads_typo"):
        ddim.load_pretrained(folder)


@pytest.mark.parametrize("size", [7, 0, "8", [8, 8, 8]])
def test_config_with_mismatched_sample_size(saved_pipeline, size):
    folder, _ = saved_pipeline
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["sample_size"] = size
    config_file.write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match=r"config\.json: sample_size"):
        ddim.load_pretrained(folder)


def test_invalid_json_and_scheduler_config(saved_pipeline):
    folder, _ = saved_pipeline
    sched_file = folder / "scheduler" / "scheduler_config.json"
    sched_file.write_text(json.dumps({"prediction_type": "score"}))
    with pytest.raises(PretrainedError, match=r"scheduler_config\.json: prediction_type"):
        ddim.load_pretrained(folder)
    sched_file.write_text("{not json")
    with pytest.raises(PretrainedError, match=r"cannot read .*scheduler_config\.json"):
        ddim.load_pretrained(folder)


def save_unet(folder):
    unet = make_tiny_unet(seed=3)
    unet.save_pretrained(folder)
    return unet


def test_in_channels_mismatch_shows_what_differs(tmp_path):
    """The reported example: only the first line of the state-dict error was shown."""
    save_unet(tmp_path / "u")
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
    save_unet(tmp_path / "u")
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
    save_unet(tmp_path / "u")
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
    unet = save_unet(tmp_path / "u")
    (tmp_path / "u" / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(tmp_path / "b", safe_serialization=False)
    data = (tmp_path / "b" / "diffusion_pytorch_model.bin").read_bytes()
    (tmp_path / "u" / "diffusion_pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ddim.PretrainedError, match=r"cannot load weights .*\.bin: ") as info:
        ddim.load_pretrained(tmp_path / "u")
    assert "safety" not in str(info.value)


# ------------------------------------------------------------------ the bundle
def test_to_moves_the_network_in_place_like_nn_module():
    a = ddim.load_pretrained("digits")
    b = a.to(dtype=torch.float64)
    assert b.model is a.model and next(a.parameters()).dtype == torch.float64
    assert b.schedule == a.schedule and b.sample_shape == a.sample_shape


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

