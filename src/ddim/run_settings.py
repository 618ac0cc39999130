"""The arguments of a :func:`ddim.generate.generate` run, checked before anything is written.

:class:`RunSettings` holds what determines the images; the functions check the rest (the
folder, the model and its device, the number of processes). Every check raises
``TypeError``/``ValueError`` naming the parameter, the value and what is allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._checks import check_choice, check_eta, check_int
from .grid import SPACINGS
from .images import PIL_MODES
from .models import model_device_dtype
from .noise import sample_generators
from .pretrained import Pretrained, load_pretrained
from .sampler import sample_iter
from .shards import count_shards


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What determines a run's images, checked when made: ``num`` >= 1 samples, ``steps``,
    ``eta``, ``spacing`` as in :func:`ddim.sample`, ``seed`` >= 0, ``shard_size`` >= 1 samples
    per file, ``batch_size`` >= 1 per model call (at most a shard's worth is used), ``png``.

    Raises:
        TypeError / ValueError naming the field and what is allowed.
    """

    num: int
    steps: int
    eta: float
    seed: int
    spacing: str
    shard_size: int
    batch_size: int
    png: bool

    def __post_init__(self) -> None:
        checked = dict(num=check_int("num", self.num, low=1),
                       steps=check_int("steps", self.steps, low=1), eta=check_eta(self.eta),
                       seed=check_int("seed", self.seed, low=0),
                       spacing=check_choice("spacing", self.spacing, SPACINGS),
                       shard_size=check_int("shard_size", self.shard_size, low=1),
                       png=check_bool("png", self.png))
        checked["batch_size"] = min(check_int("batch_size", self.batch_size, low=1),
                                    checked["shard_size"])
        for name, value in checked.items():  # normalised: eta=1 is recorded as 1.0
            object.__setattr__(self, name, value)

    def recorded(self) -> dict[str, Any]:
        """The settings that run.json records, in its order."""
        return dict(num=self.num, steps=self.steps, eta=self.eta, seed=self.seed,
                    spacing=self.spacing, shard_size=self.shard_size)

    def check_model(self, bundle: Pretrained, device: torch.device) -> None:
        """Everything :func:`ddim.sample_iter` checks against the model (steps <= T, ...),
        and that ``png`` has 1- or 3-channel samples. Raises TypeError / ValueError."""
        sample_iter(bundle, self.steps, self.eta, batch_size=1, spacing=self.spacing,
                    device=device, generator=sample_generators(self.seed, 0, 1))
        if self.png and bundle.sample_shape[0] not in PIL_MODES:
            raise ValueError(f"png=True needs 1- or 3-channel samples, this model makes "
                             f"{bundle.sample_shape[0]} channels")


def check_world_size(num: int, shard_size: int, world_size: int) -> None:
    """Refuse more processes than shards: the extra ones would idle (almost always a mistake).

    Raises:
        ValueError: world_size > ceil(num / shard_size), saying how many shards there are.
    """
    shards = count_shards(num, shard_size)
    if world_size > shards:
        raise ValueError(
            f"world_size={world_size} processes but the run has only {shards} shard"
            f"{'s' if shards > 1 else ''} ({num} samples, shard_size {shard_size}): "
            f"{world_size - shards} would idle; start at most {shards} processes or pass a "
            "smaller shard_size")


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is True or False. Raises TypeError naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_out_dir(out_dir: Any) -> Path:
    """``out_dir`` as a Path, which may be missing but not a file.

    Raises:
        TypeError: not a string or path. ValueError: it exists and is not a folder.
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a string or path, got {type(out_dir).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    return out


def bundle_on_device(model: Any, device: Any) -> tuple[Pretrained, torch.device]:
    """(bundle, the device it samples on): ``model`` as given, or loaded onto ``device`` when
    it is a name or folder; ``device`` None means where the network is (else the CPU).

    Raises:
        TypeError: model is neither a bundle nor a name. ValueError: device is not where the
        bundle's network is. :class:`ddim.PretrainedError` from loading.
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_pretrained(model, device=device)
    if not isinstance(model, Pretrained):
        raise TypeError("model must be a ddim.Pretrained bundle (ddim.load_pretrained) or a "
                        f"model name or folder, got {type(model).__name__}")
    model_device, _ = model_device_dtype(model)
    model_device = model_device or torch.device("cpu")
    if device is None:
        return model, model_device
    device = torch.device(device)
    if device.type != model_device.type or (
            device.index is not None and device.index != model_device.index):
        raise ValueError(f"device={str(device)!r} but the model is on {model_device}; move it "
                         "first (bundle.to(device)) or pass the model by name")
    return model, model_device
