"""Shared fixtures: small random-init diffusers UNets built on the fly (no downloads), and the
CLI's loader replaced by stand-ins."""

import pytest
import torch

from tests.helpers import Elementwise, make_tiny_unet

torch.set_num_threads(1)  # small models: threads cost more than they give


@pytest.fixture(autouse=True)
def _float32_on_cuda(request):
    """CUDA tests compare with the CPU: TF32 off (and restored) while each one runs."""
    if request.node.get_closest_marker("cuda") is None:
        yield
        return
    from ddim.acceleration.precision import strict_float32

    with strict_float32():
        yield


@pytest.fixture(scope="session")
def tiny_unet():
    return make_tiny_unet()


@pytest.fixture
def schedule():
    import ddim

    return ddim.NoiseSchedule.linear()


# ---------------------------------------------------------------------------- the CLI's loader
@pytest.fixture
def loads(monkeypatch):
    """Replace the CLI's loader: "tiny" and "nan" are known, anything else is unknown.

    Returns the list of names the CLI asked for (to check that no work started).
    """
    import ddim
    from ddim.cli import common

    calls = []

    def fake_load(name, *, device=None, torch_dtype=None, schedule=None):
        calls.append(name)
        if name not in ("tiny", "nan"):
            raise ddim.PretrainedError(f"model {name!r} not found")
        return ddim.Pretrained(model=Elementwise(nan=name == "nan"),
                               schedule=ddim.NoiseSchedule.linear(), sample_shape=(1, 4, 4),
                               name=name)

    monkeypatch.setattr(common, "load_pretrained", fake_load)
    return calls


@pytest.fixture
def no_loading(monkeypatch):
    """Every argument here can be checked without the model: loading it fails the test."""
    from ddim.cli import common

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(common, "load_pretrained", fail)
