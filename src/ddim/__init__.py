"""ddim: fast, exact, reproducible DDIM sampling for pretrained DDPMs.

The library is built in wings, each a subpackage, from the bottom up (``pyproject.toml``'s
import-linter contract states their order; an arrow never points up):

- :mod:`ddim.maths`: pure tensor functions: the schedule's marginals, the grids, x̂0/ε̂ from
  each prediction type, x̂0 processing, DDIM's equations and the multistep solvers' updates;
- :mod:`ddim.sampling`: the model contract, noise, guidance, the options (stated once), the
  solver registry, the plan, the steppers and the one sampling loop;
- :mod:`ddim.loading`: bundled models, diffusers folders, hub ids;
- :mod:`ddim.editing`: inversion, image-to-image, inpainting, interpolation;
- :mod:`ddim.acceleration`: trace, compile, CUDA graphs, the precision switch;
- :mod:`ddim.calibration`: grids fitted to one model and solver;
- :mod:`ddim.generation`: many samples as resumable shards, on one or many processes;
- :mod:`ddim.evaluation`: Fréchet distances, the shipped classifiers, the reference digits;
- :mod:`ddim.interop`: ddim inside other libraries (a diffusers scheduler);
- :mod:`ddim.cli`: the ``ddim`` command.

``import ddim`` is cheap: it loads none of torch, numpy, diffusers, PIL or the command line.
Each public name below is imported from its module when it is first used (``ddim.sample``
imports the sampling wing, and with it torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

# public name -> the module that defines it
_EXPORTS = {
    "BUNDLED_MODELS": "loading.pretrained", "Pretrained": "loading.pretrained",
    "PretrainedError": "loading.folders", "load_pretrained": "loading.pretrained",
    "NoiseSchedule": "maths.schedule",
    "StepOutput": "maths.ddim_step", "ddim_sigma": "maths.ddim_coefficients",
    "ddim_step": "maths.ddim_step",
    "predict_x0_eps": "maths.prediction",
    "NonFiniteError": "sampling.model_contract",
    "SampleStep": "sampling.sampler", "sample": "sampling.sampler",
    "sample_iter": "sampling.sampler",
    "img2img": "editing.img2img", "inpaint": "editing.inpaint",
    "interpolation_strip": "editing.interpolation", "slerp": "editing.interpolation",
    "invert": "editing.inversion",
    "accelerate": "acceleration.accelerate", "strict_float32": "acceleration.precision",
    "generate": "generation.generate", "pack": "generation.packing",
    "calibrate_timesteps": "calibration.search", "calibrated_timesteps": "loading.calibrations",
    "DiffusersScheduler": "interop.diffusers_scheduler",
    "make_grid": "images", "save_image_grid": "images", "to_pil": "images",
    "to_uint8": "images",
}

__all__ = [  # the keys of _EXPORTS, spelt out for tools that read __all__
    "BUNDLED_MODELS", "DiffusersScheduler", "NoiseSchedule", "NonFiniteError", "Pretrained",
    "PretrainedError", "SampleStep", "StepOutput", "accelerate", "calibrate_timesteps",
    "calibrated_timesteps", "ddim_sigma", "ddim_step", "generate", "img2img", "inpaint",
    "interpolation_strip", "invert", "load_pretrained", "make_grid", "pack", "predict_x0_eps",
    "sample", "sample_iter", "save_image_grid", "slerp", "strict_float32", "to_pil", "to_uint8",
]

if TYPE_CHECKING:  # for type checkers and editors; at run time the names load lazily
    from .acceleration.accelerate import accelerate
    from .acceleration.precision import strict_float32
    from .calibration.search import calibrate_timesteps
    from .editing.img2img import img2img
    from .editing.inpaint import inpaint
    from .editing.interpolation import interpolation_strip, slerp
    from .editing.inversion import invert
    from .generation.generate import generate
    from .generation.packing import pack
    from .images import make_grid, save_image_grid, to_pil, to_uint8
    from .interop.diffusers_scheduler import DiffusersScheduler
    from .loading.calibrations import calibrated_timesteps
    from .loading.folders import PretrainedError
    from .loading.pretrained import BUNDLED_MODELS, Pretrained, load_pretrained
    from .maths.ddim_coefficients import ddim_sigma
    from .maths.ddim_step import StepOutput, ddim_step
    from .maths.prediction import predict_x0_eps
    from .maths.schedule import NoiseSchedule
    from .sampling.model_contract import NonFiniteError
    from .sampling.sampler import SampleStep, sample, sample_iter


def __getattr__(name: str) -> Any:
    """Import a public name, or a submodule, on first use (PEP 562)."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":  # the module exists but an import inside failed
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
