"""The identity of a model's weights: a sha256 that tells two checkpoints apart."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from .folders import WEIGHT_NAMES


def weights_identity(network: Any) -> dict[str, Any] | None:
    """The identity of a network's weights: ``{"file": name, "sha256": ...}`` of the weights
    file it was loaded from (a diffusers folder's safetensors or bin), else
    ``{"state_dict_sha256": ...}`` of its parameters' bytes (names, dtypes, shapes, values);
    None for a plain function. What run.json and the calibrated grids record.
    """
    config = getattr(network, "config", None)
    folder = getattr(config, "_name_or_path", None) if config is not None else None
    if folder and Path(folder).is_dir():
        for name in WEIGHT_NAMES:
            file = Path(folder) / name
            if file.is_file():
                digest = hashlib.sha256()
                with open(file, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                return {"file": name, "sha256": digest.hexdigest()}
    if isinstance(network, torch.nn.Module):
        digest = hashlib.sha256()
        for key, tensor in network.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return {"state_dict_sha256": digest.hexdigest()}
    return None
