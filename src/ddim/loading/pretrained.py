"""Load pretrained DDPMs: the bundled models, diffusers folders and hub ids.

``load_pretrained`` returns a :class:`Pretrained` bundle (the network plus its schedule, the
shape of one sample and its prediction type) that :func:`ddim.sample` takes directly::

    model = ddim.load_pretrained("digits")          # bundled with the package, offline
    x = ddim.sample(model, steps=50, eta=0.0)

Accepted layouts of a local folder (both as diffusers writes them):

- a saved pipeline (``DDPMPipeline.save_pretrained``): ``model_index.json``,
  ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors`` (or ``.bin``),
  ``scheduler/scheduler_config.json``;
- a flat folder (the layout of ``google/ddpm-cifar10-32``): ``config.json``, the weights and
  ``scheduler_config.json`` side by side; or a bare ``UNet2DModel`` folder without a scheduler
  config, with ``schedule=`` given (default: the DDPM linear schedule);
- a latent diffusion pipeline: ``LDMPipeline``'s ``vqvae/`` (a ``VQModel``), ``unet/`` and
  ``scheduler/``, or Stable Diffusion's ``vae/`` (an ``AutoencoderKL``), ``unet/`` (a
  ``UNet2DConditionModel``) and ``scheduler/`` (its text encoder and tokenizer are not read:
  pass prompt embeddings as ``model_kwargs``). The bundle then samples latents and decodes them
  (:mod:`ddim.loading.autoencoder`).

Every problem is reported as a :class:`PretrainedError` that names the file at fault.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..maths.prediction import PREDICTION_TYPES
from ..maths.schedule import NoiseSchedule
from ..sampling.model_contract import as_model_fn, model_device_dtype
from . import autoencoder as ae
from . import folders as files
from .calibrations import calibrated_timesteps
from .folders import WEIGHT_NAMES, PretrainedError
from .hub import download
from .latent_bundle import LatentMethods

__all__ = ["BUNDLED_MODELS", "WEIGHT_NAMES", "Pretrained", "PretrainedError", "bundled_path",
           "declared_classes", "load_folder", "load_pretrained"]

BUNDLED_MODELS = ("digits", "digits-cond", "mnist", "mnist-cond")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Pretrained(LatentMethods):
    """A pretrained diffusion model with what sampling needs to know about it.

    Attributes:
        model: the network (a diffusers ``UNet2DModel``), in eval mode.
        schedule: its training :class:`NoiseSchedule`.
        sample_shape: (C, H, W) of one sample.
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        name: where it came from (bundled name, folder or hub id).
        data_range: the range of the images it makes, (-1, 1) (for a latent model: of the
            decoded images).
        autoencoder: a latent model's ``VQModel`` or ``AutoencoderKL`` (None: the model
            samples images); then ``sample_shape`` is the latents' shape, and
            :func:`ddim.sample` decodes (:meth:`decode`) after the loop.
        scaling_factor, shift_factor: latents z = scaling_factor·(E(x) - shift_factor).

    Calling the bundle calls the network: ``bundle(x, t) -> Tensor`` (ε for ε-models), with x
    (B, C, H, W) and t int64 (B,).
    """

    model: torch.nn.Module
    schedule: NoiseSchedule
    sample_shape: tuple[int, ...]
    prediction_type: str = "epsilon"
    name: str = ""
    data_range: tuple[float, float] = (-1.0, 1.0)
    autoencoder: torch.nn.Module | None = None
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    @property
    def model_fn(self):
        """The adapted network ``fn(x, t) -> Tensor`` (diffusers output unwrapped)."""
        return as_model_fn(self.model)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model_fn(x, t)

    def parameters(self):
        """The network's parameters (their device and dtype are the bundle's)."""
        return self.model.parameters()

    def __repr__(self) -> str:
        """A one-line summary (not the network's layers: print ``bundle.model`` for those)."""
        device, dtype = model_device_dtype(self)
        count = sum(p.numel() for p in self.model.parameters())
        latent = ("" if self.autoencoder is None else f", autoencoder="
                  f"{type(self.autoencoder).__name__}, scaling_factor={self.scaling_factor:g}")
        return (f"Pretrained(name={self.name!r}, model={type(self.model).__name__}, "
                f"parameters={count / 1e6:.2f}M, sample_shape={tuple(self.sample_shape)}"
                f"{latent}, prediction_type={self.prediction_type!r}, "
                f"schedule={self.schedule!r}, data_range={tuple(self.data_range)}, "
                f"device={device}, dtype={str(dtype).removeprefix('torch.')})")

    def calibrated_timesteps(self, solver: str, steps: int, *,
                             schedule: NoiseSchedule | None = None,
                             prediction_type: str | None = None) -> list[int]:
        """The grid fitted to this model for ``solver`` and ``steps``, from the calibration
        file of its folder (what ``spacing="calibrated"`` uses; see
        :mod:`ddim.loading.calibrations`).

        Raises:
            CalibrationError: no file, no grid for this solver and S, or one fitted to other
                weights, another schedule or prediction type (the message names it).
        """
        return calibrated_timesteps(None, self, solver, steps, schedule=schedule,
                                    prediction_type=prediction_type)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Pretrained:
        """The bundle with its network moved to ``device`` and/or cast to ``dtype``.

        As with ``nn.Module.to``, the network moves in place: this bundle and the returned one
        share it. Load twice (``load_pretrained(..., device=...)``) to keep one copy per device.
        An autoencoder moves with it, in ``dtype`` (float32 for half precision when its config
        sets ``force_upcast``, as Stable Diffusion's VAE does).
        """
        codec = self.autoencoder
        if codec is not None:
            codec = codec.to(device=device, dtype=ae.cast_dtype(codec, dtype))
        return replace(self, model=self.model.to(device=device, dtype=dtype), autoencoder=codec)


def bundled_path(name: str) -> Path:
    """The folder of a bundled model inside the installed package."""
    if name not in BUNDLED_MODELS:
        raise PretrainedError(f"unknown bundled model {name!r}; bundled: {BUNDLED_MODELS}")
    return Path(str(resources.files("ddim") / "weights" / name))


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    torch_dtype: torch.dtype | None = None,
    schedule: NoiseSchedule | None = None,
) -> Pretrained:
    """Load a pretrained DDPM as a :class:`Pretrained` bundle.

    Args:
        name_or_path: a bundled name (``"digits"``), a local folder in diffusers' layout
            (see the module docstring), or a hub id such as ``"google/ddpm-cifar10-32"``
            (downloaded through huggingface_hub when online, read from its cache otherwise).
        device: where to put the network (default CPU).
        torch_dtype: the network's dtype (e.g. ``torch.float16`` on a GPU); sampling keeps its
            own state in float32 and casts only the network's input and output. A latent
            model's autoencoder takes it too, but stays float32 in half precision when its
            config sets ``force_upcast`` (Stable Diffusion's VAE).
        schedule: override the schedule (required in spirit for a bare UNet folder; without it
            the DDPM linear schedule is used).

    Raises:
        PretrainedError: unknown name, missing folder or files, corrupt weights, invalid config,
            an autoencoder without a UNet or one that does not fit it, or a hub id that cannot
            be fetched (offline): the message says which and what to do.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a string or path, got "
                        f"{type(name_or_path).__name__}")
    if torch_dtype is not None and not (isinstance(torch_dtype, torch.dtype)
                                        and torch_dtype.is_floating_point):
        raise TypeError(f"torch_dtype must be a floating torch.dtype, got {torch_dtype!r}")
    name = os.fspath(name_or_path)
    if name in BUNDLED_MODELS:
        folder = bundled_path(name)
    elif Path(name).expanduser().exists():
        folder = Path(name).expanduser()
    elif _is_hub_id(name):
        folder = download(name)
    else:
        raise PretrainedError(
            f"model {name!r} not found: it is not a bundled model {BUNDLED_MODELS}, not an "
            "existing folder, and not a hub id of the form 'owner/name'")
    bundle = load_folder(folder, schedule=schedule, name=name)
    if device is not None or torch_dtype is not None:
        try:
            bundle = bundle.to(device=device, dtype=torch_dtype)
        except (RuntimeError, AssertionError, ValueError) as err:  # e.g. no CUDA here
            raise PretrainedError(f"cannot move {name!r} to device={device!r}, "
                                  f"dtype={torch_dtype}: {err}") from None
    return bundle


def load_folder(folder: Path, *, schedule: NoiseSchedule | None = None,
                name: str | None = None) -> Pretrained:
    """Load a local diffusers folder (pipeline or flat layout); see :func:`load_pretrained`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PretrainedError(f"model folder not found: {folder}")
    ae_dir = ae.autoencoder_folder(folder)
    if ae_dir is not None and not (folder / "unet" / "config.json").is_file():
        raise PretrainedError(
            f"{folder} has an autoencoder ({ae_dir.name}/) but no unet/config.json: a latent "
            "diffusion folder holds both (LDMPipeline: vqvae/, unet/, scheduler/; Stable "
            "Diffusion: vae/, unet/, scheduler/)")
    unet_dir = files.unet_folder(folder)
    config_file = unet_dir / "config.json"
    if not config_file.is_file():
        raise PretrainedError(
            f"no model config in {folder}: expected unet/config.json (a saved pipeline) or "
            "config.json (a bare UNet folder)")
    weights = next((unet_dir / w for w in WEIGHT_NAMES if (unet_dir / w).is_file()), None)
    if weights is None:
        raise PretrainedError(f"no weights in {unet_dir}: expected one of {WEIGHT_NAMES}")
    config = files.read_json(config_file)
    model_cls = files.model_class(config, config_file)
    files.check_model_config(config, model_cls, config_file)
    checked = (None if ae_dir is None else
               ae.check_autoencoder(ae_dir, config["in_channels"], config_file))
    if weights.suffix == ".safetensors":
        files.check_safetensors(weights)
    model = files.load_network(model_cls, unet_dir, weights)

    sched_config = files.scheduler_config(folder)
    prediction_type = "epsilon"
    if sched_config is not None:
        path, cfg = sched_config
        prediction_type = cfg.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise PretrainedError(f"{path}: prediction_type must be one of {PREDICTION_TYPES}, "
                                  f"got {prediction_type!r}")
        if schedule is None:
            try:
                schedule = NoiseSchedule.from_diffusers(cfg)
            except (TypeError, ValueError) as err:
                raise PretrainedError(f"{path}: invalid schedule: {err}") from None
    schedule = schedule if schedule is not None else NoiseSchedule.linear()
    size = config["sample_size"]
    hw = (size, size) if isinstance(size, int) else tuple(size)
    latent = {} if checked is None else ae.load_autoencoder(ae_dir, *checked)
    return Pretrained(model=model, schedule=schedule,
                      sample_shape=(int(config["in_channels"]), *map(int, hw)),
                      prediction_type=prediction_type, name=name or str(folder), **latent)


def declared_classes(name_or_path: str | os.PathLike) -> tuple[int | None, int | None] | None:
    """(number of real classes, null class) that a bundled model or local folder declares
    in its config, (None, None) when it is unconditional, None when that cannot be told
    without loading (a hub id, a missing folder). Cheap: reads one JSON file."""
    name = os.fspath(name_or_path)
    if name in BUNDLED_MODELS:
        return files.declared_classes(bundled_path(name))
    folder = Path(name).expanduser()
    return files.declared_classes(folder) if folder.is_dir() else None


def _is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))
