"""The package as a whole: ``import ddim`` is lazy (nothing heavy until a name is used), its
public names (every one of the flat layout's) and modules, and a .gitignore that covers what
the examples and the README write. The tests that start a Python or git process are slow."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import ddim
from tests.helpers import ROOT, python

# ---------------------------------------------------------------------------- import and names
LAZY = """
import sys, ddim
heavy = ("torch", "numpy", "diffusers", "PIL", "ddim.cli.common", "ddim.sampling.sampler")
print([m for m in heavy if m in sys.modules])
ddim.NoiseSchedule
print([m for m in ("diffusers", "PIL", "ddim.cli.common") if m in sys.modules])
from ddim.images import to_uint8
print("PIL" in sys.modules)
"""


@pytest.mark.slow
def test_import_ddim_loads_nothing_heavy_until_used():
    done = python(LAZY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[]", "[]", "False"]


@pytest.mark.slow
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


# ---------------------------------------------------------------------------- the repository
@pytest.mark.slow
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
    written = {name.rstrip("`.,;)") for name in written}  # a command in inline code
    written = {name for name in written if not name.startswith("/")}  # in the repository
    assert {"quickstart.png", "samples.png", "digits-run", "digits-20.npz", "grid.png",
            "runs/cifar10-s50"} <= written
    for name in written:
        file = name if Path(name).suffix else f"{name}/shard-00000.npz"  # a run's folder
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", file], cwd=ROOT)
        assert done.returncode == 0, f"{name} is not ignored"

