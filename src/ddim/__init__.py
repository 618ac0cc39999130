"""ddim: fast, exact, reproducible DDIM sampling for pretrained DDPMs.

``import ddim`` is cheap: it loads none of torch, numpy, diffusers, PIL or the command line.
Each public name is imported from its module when it is first used (``ddim.sample`` imports
the sampler, and with it torch), and ``ddim.<module>`` (``ddim.generate``, ``ddim.images``,
...) imports that module, so ``from ddim import sample`` and ``import ddim.shards`` work as
usual.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

# public name -> the module that defines it
_EXPORTS = {
    "BUNDLED_MODELS": "pretrained", "Pretrained": "pretrained",
    "PretrainedError": "pretrained", "load_pretrained": "pretrained",
    "NoiseSchedule": "schedule",
    "NonFiniteError": "models",
    "SampleStep": "sampler", "sample": "sampler", "sample_iter": "sampler",
    "StepOutput": "step", "ddim_sigma": "step", "ddim_step": "step",
    "img2img": "editing", "inpaint": "editing",
    "interpolation_strip": "interpolate", "slerp": "interpolate",
    "invert": "inversion",
    "make_grid": "images", "save_image_grid": "images", "to_pil": "images",
    "to_uint8": "images",
    "predict_x0_eps": "prediction",
    "strict_float32": "backends",
}

__all__ = [  # _EXPORTS and accelerate, spelt out for tools that read __all__
    "BUNDLED_MODELS", "NoiseSchedule", "NonFiniteError", "Pretrained", "PretrainedError",
    "SampleStep", "StepOutput", "accelerate", "ddim_sigma", "ddim_step", "img2img", "inpaint",
    "interpolation_strip", "invert", "load_pretrained", "make_grid", "predict_x0_eps",
    "sample", "sample_iter", "save_image_grid", "slerp", "strict_float32", "to_pil", "to_uint8",
]

if TYPE_CHECKING:  # for type checkers and editors; at run time the names load lazily
    from .accelerate import accelerate
    from .backends import strict_float32
    from .editing import img2img, inpaint
    from .images import make_grid, save_image_grid, to_pil, to_uint8
    from .interpolate import interpolation_strip, slerp
    from .inversion import invert
    from .models import NonFiniteError
    from .prediction import predict_x0_eps
    from .pretrained import BUNDLED_MODELS, Pretrained, PretrainedError, load_pretrained
    from .sampler import SampleStep, sample, sample_iter
    from .schedule import NoiseSchedule
    from .step import StepOutput, ddim_sigma, ddim_step


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


class _Package(types.ModuleType):
    """The ``ddim`` module's type. ``ddim.accelerate`` is the function of the module of the
    same name: importing that module (which makes Python set the package attribute to it)
    must not hide the function."""

    @property
    def accelerate(self) -> Any:
        return self.__dict__.get("_accelerate") or importlib.import_module(
            ".accelerate", __name__).accelerate

    @accelerate.setter
    def accelerate(self, value: Any) -> None:
        if not isinstance(value, types.ModuleType):  # a replacement (a test's monkeypatch)
            self.__dict__["_accelerate"] = value


sys.modules[__name__].__class__ = _Package
