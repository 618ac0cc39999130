"""``run.json``, the record of a :func:`ddim.generation.generate.generate` run, and the run's
identity.

run.json holds everything that determines the images: the model's identity (name, sha256 of
its weights, schedule, prediction type, sample shape, data range; for a latent model also its
autoencoder's class, weights' sha256, scaling and shift, and the images' shape), the sampling
settings (:meth:`ddim.generation.settings.RunSettings.recorded`), the seed rule and the ddim
version. Its
:func:`run_identity`, the sha256 of its canonical JSON, is stored in every shard the run
writes (:mod:`ddim.generation.shards`), so that a shard can always be traced to the run that made
it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._version import __version__
from ..atomic import atomic_write_text
from ..loading.identity import weights_identity
from ..loading.pretrained import BUNDLED_MODELS, Pretrained
from ..sampling.model_contract import model_device_dtype
from ..sampling.noise import SEED_RULE
from .run_files import MANIFEST, write_run_file

FORMAT = "ddim-generate/3"  # 3: the settings in one entry; 2: shards carry their run's identity


class RunMismatchError(ValueError):
    """The folder holds another run's files, or shards without a run.json to check them by.

    ``fields`` names the run.json entries that differ (none without a run.json). The message
    names the folder ``out_dir`` and the remedy ``overwrite=True``; :meth:`message` spells
    them for another interface."""

    def __init__(self, folder: str, problem: str, fields: tuple[str, ...] = ()) -> None:
        self.folder, self.problem, self.fields = folder, problem, tuple(fields)
        super().__init__(self.message())

    def message(self, overwrite: str = "overwrite=True", out_dir: str = "out_dir") -> str:
        """The error message, with the option that starts over spelt ``overwrite`` and the
        folder's parameter ``out_dir``."""
        where = f"{out_dir} {self.folder!r} {self.problem}"
        if self.fields:
            return (f"{where}. Rerun with its arguments to resume it, use another folder, or "
                    f"pass {overwrite} to delete its shards and start over")
        return f"{where}; pass {overwrite} to delete them, or use another folder"

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (broadcast to other ranks)
        return type(self), (self.folder, self.problem, self.fields)


def make_manifest(bundle: Pretrained, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The contents of run.json: the model's identity (with ``autoencoder`` and
    ``image_shape`` for a latent model: its samples are latents that the autoencoder decodes),
    then ``settings`` (num, steps, eta, solver, seed, spacing, class_labels, guidance_scale,
    shard_size), the seed rule and the ddim version; JSON types only."""
    _, model_dtype = model_device_dtype(bundle)
    schedule = bundle.schedule.alphas_cumprod.numpy().astype("<f8").tobytes()
    manifest = {
        "format": FORMAT,
        "model": _model_name(bundle),
        "weights": weights_identity(bundle.model),
        "model_dtype": str(model_dtype).removeprefix("torch.") if model_dtype else None,
        "schedule_sha256": hashlib.sha256(schedule).hexdigest(),
        "prediction_type": bundle.prediction_type,
        "sample_shape": list(bundle.sample_shape),
        "data_range": [float(v) for v in bundle.data_range],
        **_autoencoder(bundle),
        "settings": dict(settings),
        "seed_rule": SEED_RULE,
        "ddim_version": __version__,
    }
    return json.loads(json.dumps(manifest))  # as it will read back


def _autoencoder(bundle: Pretrained) -> dict[str, Any]:
    """run.json's entries for a latent bundle's autoencoder ({} for a pixel model, whose
    record stays as it was)."""
    codec = bundle.autoencoder
    if codec is None:
        return {}
    _, dtype = model_device_dtype(codec)
    return {"autoencoder": {"class": type(codec).__name__, "weights": weights_identity(codec),
                            "dtype": str(dtype).removeprefix("torch.") if dtype else None,
                            "scaling_factor": bundle.scaling_factor,
                            "shift_factor": bundle.shift_factor},
            "image_shape": list(bundle.image_shape)}


def run_identity(manifest: Mapping[str, Any]) -> str:
    """The identity of the run that ``manifest`` (run.json's contents) describes: the sha256
    (64 hex digits) of its canonical JSON (sorted keys, no spaces), so equal contents give
    the same identity whatever the layout of the file."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def read_manifest(path: Path) -> dict[str, Any] | None:
    """run.json as a dict; None if it does not exist. Raises ValueError if it cannot be
    read or is not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write run.json into ``out`` atomically (OSError: see :func:`write_run_file`)."""
    text = json.dumps(manifest, indent=2) + "\n"
    write_run_file(out / MANIFEST, lambda p: atomic_write_text(p, text))


def check_same_run(out: Path, old: dict[str, Any] | None, new: dict[str, Any],
                   has_shards: bool) -> None:
    """Raise :class:`RunMismatchError` unless folder ``out``, whose run.json reads ``old``
    (None: none) and which holds shard files if ``has_shards``, can hold the run ``new``:
    the same run, or no run and no shard files. The message shows each differing entry's two
    values, from where they first differ when they are long."""
    if old is None and has_shards:
        raise RunMismatchError(str(out), f"holds shard files but no {MANIFEST}, so they "
                                         "cannot be checked")
    if old is None or old == new:
        return
    old, new = _flat(old), _flat(new)
    fields = tuple(k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k))
    shown = ", ".join("{} ({} there, {} now)".format(k, *contrast(old.get(k), new.get(k)))
                      for k in fields)
    raise RunMismatchError(str(out), f"holds another run: its {MANIFEST} differs in {shown}",
                           fields)


def _flat(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """run.json's entries with its settings among them (each setting by its own name)."""
    settings = manifest.get("settings")
    if not isinstance(settings, Mapping):
        return dict(manifest)
    return {**{k: v for k, v in manifest.items() if k != "settings"}, **settings}


def contrast(a: Any, b: Any, width: int = 60) -> tuple[str, str]:
    """Two JSON values as texts of at most about ``width`` characters that show where they
    differ: whole when short, else cut around their first difference (``…`` marks a cut), so
    that two long values never look equal."""
    ta, tb = json.dumps(a), json.dumps(b)
    if max(len(ta), len(tb)) <= width:
        return ta, tb
    pairs = enumerate(zip(ta, tb, strict=False))
    first = next((i for i, (x, y) in pairs if x != y), min(len(ta), len(tb)))
    start = max(0, min(first - width // 3, max(len(ta), len(tb)) - width))

    def cut(text: str) -> str:
        end = start + width
        return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")

    return cut(ta), cut(tb)


def _model_name(bundle: Pretrained) -> str:
    name = bundle.name
    # a folder: recorded absolute, so that it reads the same from any working directory
    if name and name not in BUNDLED_MODELS and Path(name).is_dir():
        return str(Path(name).resolve())
    return name
