"""The examples run as a user would run them (each imports the library; none re-implements
the loop)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def _run(name, cwd, **env):
    return subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                       **env})


@pytest.mark.slow
@pytest.mark.parametrize("name,output", [("quickstart.py", "quickstart.png"),
                                         ("eta_steps_grid.py", "eta_steps_grid.png"),
                                         ("inversion.py", "inversion.png"),
                                         ("guidance.py", "guidance.png"),
                                         ("inpainting.py", "inpainting.png")])
def test_example_writes_its_image(tmp_path, name, output):
    done = _run(name, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / output).stat().st_size > 100


@pytest.mark.slow
def test_cifar10_example_offline_says_so(tmp_path):
    done = _run("cifar10_pretrained.py", tmp_path, HF_HUB_OFFLINE="1",
                HF_HOME=str(tmp_path / "hf"))
    assert done.returncode != 0
    assert "cannot run this example offline" in done.stderr
    assert "google/ddpm-cifar10-32" in done.stderr and "Traceback" not in done.stderr


def test_every_example_imports_ddim_and_has_no_loop_of_its_own():
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        assert "import ddim" in text, path.name
        assert "ddim_step" not in text and "alphas_cumprod" not in text, path.name
