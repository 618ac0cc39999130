"""The frame of a :func:`ddim.generation.generate.generate` run, checked before anything is
written: the number of processes against the number of shards, the output folder, and the
model bundle on its device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..checks import check_device, plural
from ..loading.pretrained import Pretrained, load_pretrained
from ..sampling.model_contract import model_device_dtype
from .shards import count_shards


class TooManyProcessesError(ValueError):
    """More processes than shards. :meth:`message` words it for another interface."""

    def __init__(self, world_size: int, shards: int, num: int, shard_size: int) -> None:
        self.world_size, self.shards, self.num, self.shard_size = (world_size, shards, num,
                                                                    shard_size)
        super().__init__(self.message())

    def message(self, processes: str = "world_size={} processes",
                shard_size: str = "shard_size") -> str:
        """The message, with ``processes`` (formatted with the count) and ``shard_size``
        naming the two settings."""
        shards = self.shards
        return (f"{processes.format(self.world_size)} but the run has only "
                f"{plural(shards, 'shard')} ({plural(self.num, 'sample')}, {shard_size} "
                f"{self.shard_size}): {self.world_size - shards} would idle; start at most "
                f"{plural(shards, 'process', 'processes')} or pass a smaller {shard_size}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (broadcast to other ranks)
        return type(self), (self.world_size, self.shards, self.num, self.shard_size)


def check_world_size(num: int, shard_size: int, world_size: int) -> None:
    """Refuse more processes than shards: the extra ones would idle (almost always a mistake).

    Raises:
        TooManyProcessesError (a ValueError): world_size > ceil(num / shard_size).
    """
    shards = count_shards(num, shard_size)
    if world_size > shards:
        raise TooManyProcessesError(world_size, shards, num, shard_size)


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
    device = check_device("device", device)
    if isinstance(model, (str, os.PathLike)):
        model = load_pretrained(model, device=device)
    if not isinstance(model, Pretrained):
        raise TypeError("model must be a ddim.Pretrained bundle (ddim.load_pretrained) or a "
                        f"model name or folder, got {type(model).__name__}")
    model_device, _ = model_device_dtype(model)
    model_device = model_device or torch.device("cpu")
    if device is None:
        return model, model_device
    if device.type != model_device.type or (
            device.index is not None and device.index != model_device.index):
        raise ValueError(f"device={str(device)!r} but the model is on {model_device}; move it "
                         "first (bundle.to(device)) or pass the model by name")
    return model, model_device
