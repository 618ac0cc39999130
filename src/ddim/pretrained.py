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
  config, with ``schedule=`` given (default: the DDPM linear schedule).

Every problem is reported as a :class:`PretrainedError` that names the file at fault.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .models import as_model_fn
from .schedule import NoiseSchedule
from .step import PREDICTION_TYPES

BUNDLED_MODELS = ("digits", "digits-cond")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PretrainedError(ValueError):
    """A model could not be loaded; the message names the file or id and what to do."""


@dataclass(frozen=True)
class Pretrained:
    """A pretrained diffusion model with what sampling needs to know about it.

    Attributes:
        model: the network (a diffusers ``UNet2DModel``), in eval mode.
        schedule: its training :class:`NoiseSchedule`.
        sample_shape: (C, H, W) of one sample.
        prediction_type: ``epsilon``, ``sample`` or ``v_prediction``.
        name: where it came from (bundled name, folder or hub id).
        data_range: the range of the data it was trained on, (-1, 1) for images.

    Calling the bundle calls the network: ``bundle(x, t) -> Tensor`` (ε for ε-models), with x
    (B, C, H, W) and t int64 (B,).
    """

    model: torch.nn.Module
    schedule: NoiseSchedule
    sample_shape: tuple[int, ...]
    prediction_type: str = "epsilon"
    name: str = ""
    data_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def model_fn(self):
        """The adapted network ``fn(x, t) -> Tensor`` (diffusers output unwrapped)."""
        return as_model_fn(self.model)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model_fn(x, t)

    def parameters(self):
        """The network's parameters (their device and dtype are the bundle's)."""
        return self.model.parameters()

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Pretrained:
        """The bundle with its network moved to ``device`` and/or cast to ``dtype``.

        As with ``nn.Module.to``, the network moves in place: this bundle and the returned one
        share it. Load twice (``load_pretrained(..., device=...)``) to keep one copy per device.
        """
        return replace(self, model=self.model.to(device=device, dtype=dtype))


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
            own state in float32 and casts only the network's input and output.
        schedule: override the schedule (required in spirit for a bare UNet folder; without it
            the DDPM linear schedule is used).

    Raises:
        PretrainedError: unknown name, missing folder or files, corrupt weights, invalid config,
            or a hub id that cannot be fetched (offline): the message says which and what to do.
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
    elif _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        folder = _download(name)
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
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    config_file = unet_dir / "config.json"
    if not config_file.is_file():
        raise PretrainedError(
            f"no model config in {folder}: expected unet/config.json (a saved pipeline) or "
            "config.json (a bare UNet folder)")
    weights = next((unet_dir / w for w in WEIGHT_NAMES if (unet_dir / w).is_file()), None)
    if weights is None:
        raise PretrainedError(f"no weights in {unet_dir}: expected one of {WEIGHT_NAMES}")
    config = _read_json(config_file)
    model_cls = _model_class(config, config_file)
    _check_model_config(config, model_cls, config_file)
    if weights.suffix == ".safetensors":
        _check_safetensors(weights)
    model = _load_model(model_cls, unet_dir, weights)

    sched_config = _scheduler_config(folder)
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
    return Pretrained(model=model, schedule=schedule,
                      sample_shape=(int(config["in_channels"]), *map(int, hw)),
                      prediction_type=prediction_type, name=name or str(folder))


# ---------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PretrainedError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise PretrainedError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _model_class(config: dict, path: Path) -> type:
    import diffusers

    class_name = config.get("_class_name", "UNet2DModel")
    cls = getattr(diffusers, str(class_name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise PretrainedError(f"{path}: _class_name {class_name!r} is not a diffusers model "
                              "class (expected e.g. 'UNet2DModel')")
    return cls


def _check_model_config(config: dict, cls: type, path: Path) -> None:
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(k for k in config if not k.startswith("_") and k not in allowed)
    if unknown:
        raise PretrainedError(f"{path}: unknown keys for {cls.__name__}: {unknown}")
    for key in ("sample_size", "in_channels"):
        if key not in config:
            raise PretrainedError(f"{path}: missing {key!r}")
    size = config["sample_size"]
    sizes = [size] if isinstance(size, int) else size
    if (not isinstance(sizes, list) or len(sizes) not in (1, 2)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)):
        raise PretrainedError(f"{path}: sample_size must be a positive integer or a pair of "
                              f"them, got {size!r}")
    factor = 2 ** max(len(config.get("down_block_types", ())) - 1, 0)
    if any(s % factor for s in sizes):
        raise PretrainedError(
            f"{path}: sample_size {size} does not match the network: its "
            f"{len(config['down_block_types'])} down blocks need a multiple of {factor}")
    if not isinstance(config["in_channels"], int) or config["in_channels"] < 1:
        raise PretrainedError(f"{path}: in_channels must be a positive integer, got "
                              f"{config['in_channels']!r}")


def _check_safetensors(path: Path) -> None:
    """Read the header and every tensor, so that truncation or corruption is caught here."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except Exception as err:  # safetensors raises its own error types
        raise PretrainedError(f"corrupt or truncated weights file {path}: {err}") from None


def _load_model(cls: type, unet_dir: Path, weights: Path) -> torch.nn.Module:
    try:
        model = cls.from_pretrained(str(unet_dir), use_safetensors=weights.suffix ==
                                    ".safetensors", low_cpu_mem_usage=False)
    except Exception as err:  # diffusers wraps many causes; name the file, keep one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PretrainedError(f"cannot load weights {weights}: {first}") from None
    return model.eval().requires_grad_(False)


def _scheduler_config(folder: Path) -> tuple[Path, dict] | None:
    for path in (folder / "scheduler" / "scheduler_config.json",
                 folder / "scheduler_config.json"):
        if path.is_file():
            return path, _read_json(path)
    return None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _download(repo_id: str) -> Path:
    """A local snapshot of a hub repo: from the cache, or downloaded when online."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - diffusers depends on it
        raise PretrainedError("loading hub ids needs huggingface_hub") from None
    patterns = ["*.json", "*.safetensors", "*.bin"]
    how = (f"download it first where the hub is reachable (e.g. `huggingface-cli download "
           f"{repo_id} --local-dir ./{repo_id.split('/')[-1]}`) and pass that folder")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        if _hub_offline():
            raise PretrainedError(f"cannot fetch {repo_id!r}: the hub is offline "
                                  f"(HF_HUB_OFFLINE is set) and it is not cached; {how}"
                                  ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PretrainedError(f"cannot fetch {repo_id!r} from the hub ({reason}); {how}"
                              ) from None
