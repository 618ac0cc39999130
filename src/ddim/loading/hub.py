"""Hub ids (``owner/name``): a local snapshot from huggingface_hub's cache, downloaded when
online; offline, an error that names the download command the installed huggingface_hub has.

Only what :func:`ddim.load_pretrained` reads is downloaded (:data:`PATTERNS`): the configs and
safetensors weights of the network (flat or ``unet/``), of the autoencoder (``vqvae/``,
``vae/``) and the scheduler config; a ``.bin`` only for a part that has no safetensors. A
Stable Diffusion repository's text encoder, safety checker, fp16 and EMA variants are left on
the hub.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from .folders import WEIGHT_NAMES, PretrainedError

PARTS = ("", "unet/", "vqvae/", "vae/")  # the flat layout, the network, the autoencoders
PATTERNS = ["model_index.json", "scheduler/scheduler_config.json", "scheduler_config.json",
            *(f"{part}{name}" for part in PARTS
              for name in ("config.json", "diffusion_pytorch_model.safetensors"))]


def download_command(repo_id: str) -> str:
    """The shell command that downloads ``repo_id`` into ``./<name>`` with the command line
    tool of the installed huggingface_hub: ``hf download`` from version 1.0 on (which
    installs only ``hf``), ``huggingface-cli download`` before."""
    folder = f"./{repo_id.split('/')[-1]}"
    try:
        major = int(metadata.version("huggingface_hub").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        major = 1  # not installed (or an odd version): name the current tool
    tool = "hf" if major >= 1 else "huggingface-cli"
    return f"{tool} download {repo_id} --local-dir {folder}"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks huggingface_hub not to reach the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(repo_id: str) -> Path:
    """A local snapshot of hub repo ``repo_id``: from the cache, or downloaded when online.

    Raises:
        PretrainedError: offline and not cached, or the hub cannot be reached; the message
        names the download command to run where the hub is reachable.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - diffusers depends on it
        raise PretrainedError("loading hub ids needs huggingface_hub") from None
    how = (f"download it first where the hub is reachable (`{download_command(repo_id)}`) "
           "and pass that folder")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=PATTERNS, local_files_only=True))
    except Exception:
        if hub_offline():
            raise PretrainedError(f"cannot fetch {repo_id!r}: the hub is offline "
                                  f"(HF_HUB_OFFLINE is set) and it is not cached; {how}"
                                  ) from None
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=PATTERNS, etag_timeout=10))
        pickled = [f"{part}{WEIGHT_NAMES[1]}" for part in PARTS
                   if (folder / part / "config.json").is_file()
                   and not any((folder / part / w).is_file() for w in WEIGHT_NAMES)]
        if pickled:  # a part without safetensors: its .bin (loaded weights-only)
            folder = Path(snapshot_download(repo_id, allow_patterns=pickled, etag_timeout=10))
        return folder
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PretrainedError(f"cannot fetch {repo_id!r} from the hub ({reason}); {how}"
                              ) from None
