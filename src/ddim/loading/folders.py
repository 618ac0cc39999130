"""Reading a model folder in diffusers' layout: its configs, checked before the weights are
read, and its weights, read safely (safetensors, or a pickle that holds only tensors).

Every problem is a :class:`PretrainedError` naming the file at fault in one line.
:func:`declared_classes` reads what a folder's config says about classes without loading
anything heavy.
"""

from __future__ import annotations

import inspect
import json
import pickle
from pathlib import Path

import torch

from ..sampling.guidance import config_classes

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class PretrainedError(ValueError):
    """A model could not be loaded; the message names the file or id and what to do."""


def unet_folder(folder: Path) -> Path:
    """Where the network's config and weights are: ``unet/`` of a saved pipeline, else the
    folder itself (the flat layout)."""
    return folder / "unet" if (folder / "unet" / "config.json").is_file() else folder


def declared_classes(folder: Path) -> tuple[int | None, int | None] | None:
    """(number of real classes, null class) that the network config in ``folder`` declares,
    (None, None) for an unconditional network, None when there is no readable config (see
    :func:`ddim.sampling.guidance.config_classes`). Reads one JSON file; loads no weights."""
    try:
        config = read_json(unet_folder(folder) / "config.json")
    except PretrainedError:
        return None
    return config_classes(config)


def read_json(path: Path) -> dict:
    """The JSON object in ``path``. Raises PretrainedError naming it otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PretrainedError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise PretrainedError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def model_class(config: dict, path: Path) -> type:
    """The diffusers model class that ``config`` (read from ``path``) names."""
    import diffusers

    class_name = config.get("_class_name", "UNet2DModel")
    cls = getattr(diffusers, str(class_name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise PretrainedError(f"{path}: _class_name {class_name!r} is not a diffusers model "
                              "class (expected e.g. 'UNet2DModel')")
    return cls


def check_model_config(config: dict, cls: type, path: Path) -> None:
    """Refuse unknown keys, and a sample size or channel count the network cannot have."""
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


def check_safetensors(path: Path) -> None:
    """Read the header and every tensor, so that truncation or corruption is caught here."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except Exception as err:  # safetensors raises its own error types
        raise PretrainedError(f"corrupt or truncated weights file {path}: {err}") from None


def load_network(cls: type, unet_dir: Path, weights: Path) -> torch.nn.Module:
    """``cls.from_pretrained(unet_dir)`` in eval mode without gradients.

    Raises:
        PretrainedError naming ``weights``: a pickle (.bin) that holds more than tensors is
        refused for safety (torch's weights-only unpickler), with how to convert a trusted
        one to safetensors; weights that do not fit the config (e.g. another
        ``in_channels``) list the parameters that differ; other failures give their reason.
    """
    try:
        model = cls.from_pretrained(str(unet_dir), use_safetensors=weights.suffix ==
                                    ".safetensors", low_cpu_mem_usage=False)
    except Exception as err:  # diffusers wraps many causes; name the file, keep one line
        refused = _refused_pickle(err)
        if refused is not None:
            target = weights.with_suffix(".safetensors")
            raise PretrainedError(
                f"refused to load {weights} for safety: it is a pickle that holds more than "
                f"tensors ({refused}), and unpickling it could run any code. Only if you "
                "trust its source, convert it to safetensors: python -c \"import torch; from "
                "safetensors.torch import save_file; save_file(torch.load('"
                f"{weights}', weights_only=False), '{target}')\" and remove the .bin"
            ) from None
        raise PretrainedError(f"cannot load weights {weights}: {_useful_lines(err)}") from None
    return model.eval().requires_grad_(False)


def _refused_pickle(err: BaseException) -> str | None:
    """What torch's weights-only unpickler refused, if that is what ``err`` comes from."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, pickle.UnpicklingError) and "Weights only load failed" in str(
                cause):
            lines = [line.strip() for line in str(cause).splitlines()]
            return next((line.rstrip(".") for line in lines if "unsupported" in line),
                        "objects other than tensors")
        cause = cause.__cause__ or cause.__context__
    return None


def _useful_lines(err: BaseException, limit: int = 4) -> str:
    """The informative lines of an error, joined into one line: a state-dict error's
    header and its advice to ignore mismatched sizes are left out, and the lines that say
    what differs ("size mismatch for conv_in.weight: ...") are kept, ``limit`` at most."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Error(s) in loading state_dict",
                                                             "You may consider adding"))]
    if not useful:
        return lines[0] if lines else type(err).__name__
    more = f" (and {len(useful) - limit} more)" if len(useful) > limit else ""
    return "; ".join(useful[:limit]) + more


def scheduler_config(folder: Path) -> tuple[Path, dict] | None:
    """(path, contents) of the folder's scheduler config, pipeline or flat layout; None."""
    for path in (folder / "scheduler" / "scheduler_config.json",
                 folder / "scheduler_config.json"):
        if path.is_file():
            return path, read_json(path)
    return None

