"""ddim: fast, exact, reproducible DDIM sampling for pretrained DDPMs."""

from ._version import __version__ as __version__
from .accelerate import accelerate
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

__all__ = [
    "BUNDLED_MODELS",
    "Pretrained",
    "PretrainedError",
    "load_pretrained",
    "NoiseSchedule",
    "NonFiniteError",
    "SampleStep",
    "StepOutput",
    "accelerate",
    "ddim_sigma",
    "ddim_step",
    "img2img",
    "inpaint",
    "interpolation_strip",
    "make_grid",
    "save_image_grid",
    "to_pil",
    "to_uint8",
    "invert",
    "predict_x0_eps",
    "sample",
    "sample_iter",
    "slerp",
]
