"""Calibrated grids on file: a small JSON that holds, for one model, the grids that
:func:`ddim.calibration.search.calibrate_timesteps` fitted to it, one per solver and step count.

Each grid is keyed by what it was fitted to: the weights' sha256
(:func:`ddim.loading.identity.weights_identity`), the schedule's sha256, the prediction type,
the solver and S. A grid is handed out only for the same key; asked for another model, schedule
or prediction type it is refused, naming what differs (a stale file is never used quietly).

A model folder's own file is ``calibration.json`` beside its ``model_index.json`` (or its
``config.json`` for a flat folder): ``spacing="calibrated"`` finds it there.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..maths.schedule import NoiseSchedule
from .folders import PretrainedError
from .identity import weights_identity

FORMAT = "ddim-calibration/1"
FILE_NAME = "calibration.json"
KEY = ("weights", "schedule_sha256", "prediction_type", "solver", "steps")


class CalibrationError(PretrainedError):
    """A calibration file that cannot be used: missing, unreadable, without a grid for the
    solver and step count asked for, or fitted to another model; the message says which."""


def schedule_sha256(schedule: NoiseSchedule) -> str:
    """The sha256 of a schedule's float64 ᾱ_t (little-endian bytes), as run.json records it."""
    data = schedule.alphas_cumprod.numpy().astype("<f8").tobytes()
    return hashlib.sha256(data).hexdigest()


def grid_key(network: Any, schedule: NoiseSchedule, prediction_type: str, solver: str,
             steps: int) -> dict[str, Any]:
    """What a calibrated grid is fitted to, as JSON values (see the module docstring).

    Raises:
        CalibrationError: the network has no identity (a plain function: pass its grid as
            ``timesteps=`` instead).
    """
    identity = weights_identity(network)
    if identity is None:
        raise CalibrationError("a calibrated grid is keyed by the model's weights, and this "
                               "model has none (a plain function): pass its grid as "
                               "timesteps=")
    return {"weights": identity, "schedule_sha256": schedule_sha256(schedule),
            "prediction_type": prediction_type, "solver": solver, "steps": int(steps)}


def default_file(network: Any) -> Path | None:
    """The calibration file of the folder ``network`` was loaded from (it may not exist
    yet), or None for a network that was not loaded from a folder."""
    config = getattr(network, "config", None)
    folder = getattr(config, "_name_or_path", None) if config is not None else None
    if not folder or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    root = folder.parent if (folder.parent / "model_index.json").is_file() else folder
    return root / FILE_NAME


def refuse_bundled(path: str | os.PathLike) -> None:
    """Refuse ``path`` as the default file of a save when it lies inside the models that ship
    with the package (``ddim/weights``): their calibration files are part of the release.

    Raises:
        ValueError: naming the file and the two ways out.
    """
    shipped = Path(str(resources.files("ddim") / "weights")).resolve()
    if Path(path).resolve().is_relative_to(shipped):
        raise ValueError(f"{path} ships with the ddim package (a bundled model): a default "
                         "save does not rewrite it; give a file of your own (save(path) / "
                         "ddim calibrate --out FILE) and read it with "
                         "ddim.calibrated_timesteps(path, ...) or --calibration FILE")


def read_calibrations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The grids in a calibration file.

    Raises:
        CalibrationError: missing, unreadable, not a calibration file or of another format.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"no calibration file {path}: fit one with `ddim calibrate` "
                               "(or ddim.calibrate_timesteps)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CalibrationError(f"cannot read calibration file {path}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(
            data.get("grids"), list):
        raise CalibrationError(f"{path} is not a calibration file of format {FORMAT!r}")
    return data["grids"]


def find_grid(path: str | os.PathLike, key: Mapping[str, Any]) -> list[int]:
    """The calibrated timesteps in file ``path`` for ``key`` (:func:`grid_key`).

    Raises:
        CalibrationError: no grid for the key's solver and S (listing those the file has),
            or one fitted to other weights, another schedule or prediction type (naming what
            differs, both values).
    """
    grids = read_calibrations(path)
    same = [g for g in grids if g.get("solver") == key["solver"] and g.get("steps") ==
            key["steps"]]
    if not same:
        have = sorted({(g.get("solver"), g.get("steps")) for g in grids}, key=str)
        listed = ", ".join(f"{s}/{n}" for s, n in have) or "none"
        raise CalibrationError(
            f"{path} holds no calibrated grid for solver={key['solver']!r}, steps="
            f"{key['steps']} (it has solver/steps: {listed}); fit one with `ddim calibrate "
            f"--solver {key['solver']} --steps {key['steps']}`")
    for grid in same:
        if all(grid.get(k) == key[k] for k in KEY):
            return [int(t) for t in grid["timesteps"]]
    grid = same[0]
    differs = [f"{k} ({_short(grid.get(k))} there, {_short(key[k])} now)" for k in KEY
               if grid.get(k) != key[k]]
    raise CalibrationError(
        f"the calibrated grid for solver={key['solver']!r}, steps={key['steps']} in {path} "
        f"was fitted to another model: {'; '.join(differs)}; fit it again for this one")


def save_grid(path: str | os.PathLike, entry: Mapping[str, Any]) -> Path:
    """Add ``entry`` (a key of :func:`grid_key` plus ``timesteps`` and what the search
    recorded) to the calibration file ``path``, replacing a grid of the same key; written
    atomically (a new file if there is none).

    Raises:
        CalibrationError: ``path`` holds something that is not a calibration file.
        OSError: it cannot be written (no partial file is left).
    """
    path = Path(path)
    grids = read_calibrations(path) if path.exists() else []
    grids = [g for g in grids if any(g.get(k) != entry[k] for k in KEY)] + [dict(entry)]
    grids.sort(key=lambda g: (str(g.get("solver")), int(g.get("steps", 0))))
    text = json.dumps({"format": FORMAT, "grids": grids}, indent=1) + "\n"
    return atomic_write_text(path, text)


def calibrated_timesteps(path: str | os.PathLike | None, model: Any, solver: str,
                         steps: int, *, schedule: NoiseSchedule | None = None,
                         prediction_type: str | None = None) -> list[int]:
    """The grid fitted to ``model`` for ``solver`` and ``steps``, from calibration file
    ``path`` (None: the file of the model's own folder), for ``timesteps=``.

    Args:
        path: a calibration file, or None.
        model: a :class:`ddim.Pretrained` bundle (or a diffusers network loaded from a folder).
        solver, steps: the solver and S the grid was fitted for.
        schedule, prediction_type: default the bundle's.

    Raises:
        CalibrationError: as :func:`find_grid`, or no file (the model has no folder: pass
            ``path``).
    """
    network = getattr(model, "model", model)
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    prediction_type = prediction_type or getattr(model, "prediction_type", "epsilon")
    if schedule is None:
        raise CalibrationError("a calibrated grid is keyed by the model's schedule: pass "
                               "schedule= (or a ddim.Pretrained bundle)")
    path = default_file(network) if path is None else Path(path)
    if path is None:
        raise CalibrationError("this model was not loaded from a folder, so it has no "
                               "calibration file of its own: pass the file")
    return find_grid(path, grid_key(network, schedule, prediction_type, solver, steps))


def _short(value: Any) -> str:
    """A key's value in a few characters: a weights identity by its sha256's first 12 hex
    digits, a schedule's sha256 likewise, anything else as JSON."""
    if isinstance(value, Mapping):
        digest = value.get("sha256") or value.get("state_dict_sha256")
        if digest:
            return f"sha256 {digest[:12]}…"
    if isinstance(value, str) and len(value) == 64:
        return f"sha256 {value[:12]}…"
    return json.dumps(value)
