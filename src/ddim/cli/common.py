"""What the ``ddim`` subcommands share: library errors as CLI errors, checks of outputs,
devices and class labels, the sampling settings, model loading, the progress bar, writing.

Errors the user can fix are raised as :class:`~.base.CliError` with status 2, failed runs
(the model returned NaN, the disk filled up) with status 1; ``ddim.cli.main`` prints them as
one line. Every check here that needs no model runs before the model is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..checks import check_device as check_library_device
from ..generation.folder_lock import FolderInUseError
from ..generation.manifest import RunMismatchError
from ..generation.settings import SamplingSettings
from ..images import save_image_grid, save_npz, to_uint8
from ..loading.pretrained import (
    BUNDLED_MODELS,
    Pretrained,
    PretrainedError,
    declared_classes,
    load_pretrained,
)
from ..sampling.guidance import NULL_LABEL, class_info, resolve_labels
from ..sampling.model_contract import NonFiniteError
from .base import EXIT_FAILURE, EXIT_USAGE, CliError, plural
from .options import library_options


def library_error(err: Exception, where: str = "") -> CliError:
    """The :class:`CliError` for an error a library call raised, ``where`` appended.

    Status 1 for a failed run (OSError: a file could not be written; NonFiniteError: the model
    returned NaN or inf), 2 for anything else (arguments the library refused, a folder in use
    by another process). OSErrors show their reason only; a
    :class:`ddim.generation.manifest.RunMismatchError` or
    :class:`ddim.generation.folder_lock.FolderInUseError` names ``--out`` (and ``--overwrite``).
    """
    if isinstance(err, RunMismatchError):
        message = err.message("--overwrite", "--out")
    elif isinstance(err, FolderInUseError):
        message = err.message("--out")
    elif isinstance(err, OSError) and err.strerror:
        message = err.strerror
    else:
        message = str(err)
    failed = isinstance(err, (OSError, NonFiniteError))
    return CliError(message + where, EXIT_FAILURE if failed else EXIT_USAGE)


# ---------------------------------------------------------------------------- checks
def check_output(path: Path, suffixes: Sequence[str], flag: str = "--out") -> Path:
    """``path`` if a file with one of ``suffixes`` can be written there.

    Raises:
        CliError: another suffix, a missing or unwritable folder, or a directory at ``path``.
    """
    if path.suffix.lower() not in suffixes:
        raise CliError(f"{flag} must end in {' or '.join(suffixes)}, got '{path}'")
    folder = path.parent
    if not folder.is_dir():
        raise CliError(f"{flag}: folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CliError(f"{flag}: folder '{folder}' is not writable")
    if path.is_dir():
        raise CliError(f"{flag}: '{path}' is a directory")
    return path


def check_folder(path: Path, flag: str = "--out") -> Path:
    """``path`` if it is a writable folder, or one that can be made (its nearest existing
    parent is a writable folder).

    Raises:
        CliError: it is a file, or it (or the parent it would be made in) is not writable.
    """
    if path.exists() and not path.is_dir():
        raise CliError(f"{flag}: '{path}' exists and is not a folder")
    writable = os.W_OK | os.X_OK
    if path.is_dir():
        if not os.access(path, writable):
            raise CliError(f"{flag}: folder '{path}' is not writable")
        return path
    existing = next(p for p in path.absolute().parents if p.exists())
    if not (existing.is_dir() and os.access(existing, writable)):
        raise CliError(f"{flag}: cannot make folder '{path}': '{existing}' is not a writable "
                       "folder")
    return path


def check_device(name: str | None) -> torch.device | None:
    """``--device`` as a torch.device (None stays None: the default, CPU), checked as the
    library checks ``device=``.

    Raises:
        CliError: an unknown device, one this machine does not have, or ``meta``.
    """
    try:
        return check_library_device("--device", name)
    except (TypeError, ValueError) as err:
        raise CliError(str(err)) from None


def sampling_settings(args: argparse.Namespace, command: str,
                      settings: type[SamplingSettings] = SamplingSettings,
                      **more: Any) -> SamplingSettings:
    """The :class:`~ddim.generation.settings.SamplingSettings` (or ``settings``, with ``more``) of
    ``command``'s options, checked before the model is loaded.

    Raises:
        CliError: options the library refuses (e.g. --eta with a deterministic --solver).
    """
    try:
        return settings(seed=args.seed, class_labels=args.class_labels,
                        **library_options(args, command), **more)
    except (TypeError, ValueError) as err:
        raise library_error(err) from None


def check_class_options(args: argparse.Namespace) -> None:
    """Before loading: --guidance-scale needs --class, and where the model's files say
    whether it is class-conditional (a bundled model, a local folder), --class must fit it.

    Raises:
        CliError: saying what to pass.
    """
    if args.guidance_scale is not None and args.class_labels is None:
        raise CliError(f"--guidance-scale {args.guidance_scale:g} needs --class: guidance "
                       "mixes the class-conditional and the unconditional prediction")
    classes = declared_classes(args.model)
    if classes is not None:
        _resolve(args, *classes)


def model_labels(args: argparse.Namespace, bundle: Pretrained) -> tuple[int, ...] | None:
    """--class for the loaded ``bundle``, ``null`` replaced by its null class.

    Raises:
        CliError: no --class for a class-conditional model (saying what to pass), a label it
        does not have, or --class for an unconditional one.
    """
    return _resolve(args, *class_info(bundle))


def settings_for_model(args: argparse.Namespace, settings: SamplingSettings,
                       bundle: Pretrained) -> SamplingSettings:
    """``settings`` for the loaded ``bundle``: --class resolved, and the grid fitted to it
    (--calibration FILE, or --spacing calibrated and the folder's file) made explicit, so
    that the files written record the grid itself.

    Raises:
        CliError: labels the model does not take; no calibrated grid (saying why).
    """
    settings = settings.replaced(class_labels=model_labels(args, bundle))
    try:
        if getattr(args, "calibration", None) is not None:
            settings = settings.with_calibrated_grid(bundle, args.calibration)
        return settings.for_model(bundle)
    except (TypeError, ValueError) as err:
        raise library_error(err) from None


def _resolve(args: argparse.Namespace, num_classes: int | None,
             null: int | None) -> tuple[int, ...] | None:
    if args.class_labels is None:
        if num_classes is None:
            return None
        unconditional = f", or {NULL_LABEL} for unconditional samples" if null is not None else ""
        balanced = (f"; --class {' '.join(map(str, range(num_classes)))} gives balanced "
                    "classes" if num_classes <= 10 else "")
        raise CliError(f"--model {args.model} is class-conditional: pass --class with one label "
                       f"for all images or a list that the images cycle through (0.."
                       f"{num_classes - 1}{unconditional}{balanced})")
    try:
        return resolve_labels(args.class_labels, num_classes, null, name="--class")
    except ValueError as err:
        twin = f"{args.model}-cond"
        hint = (f"; its class-conditional twin is --model {twin}"
                if num_classes is None and twin in BUNDLED_MODELS else "")
        raise CliError(f"{err} (--model {args.model}){hint}") from None


def describe(settings: SamplingSettings) -> str:
    """The settings in a few words: ``10 steps, eta 0, trailing spacing``, then the solver,
    classes and guidance when they are not the defaults."""
    o = settings.options
    grid = (f"{o['spacing']} spacing" if o.get("timesteps") is None
            else f"timesteps {' '.join(map(str, o['timesteps']))}")
    words = [plural(o["steps"], "step"), f"eta {o['eta']:g}", grid]
    if o["solver"] != "ddim":
        words.append(f"solver {o['solver']}")
    if settings.class_labels is not None:
        labels = settings.class_labels
        words.append(f"class{'es' * (len(labels) > 1)} {' '.join(map(str, labels))}")
    if o.get("guidance_scale") is not None:
        words.append(f"guidance {o['guidance_scale']:g}")
    return ", ".join(words)


def want_progress(flag: bool | None) -> bool:
    """--progress forces a bar (tqdm must be installed), --no-progress none, default: tty.

    Raises:
        CliError: --progress without tqdm installed.
    """
    wanted = sys.stderr.isatty() if flag is None else flag
    if not wanted:
        return False
    try:
        import tqdm  # noqa: F401  (an optional dependency: imported only when asked for)
    except ImportError:
        if flag:
            raise CliError("--progress needs tqdm: pip install 'ddim[progress]'") from None
        return False
    return True


def progress_bar(total_steps: int, num: int) -> Any:
    """A tqdm bar on stderr over ``total_steps`` model calls that make ``num`` images."""
    from tqdm.auto import tqdm

    return tqdm(total=total_steps, desc=f"sampling {plural(num, 'image')}", unit="step",
                file=sys.stderr)


def load_model(name: str, device: torch.device | None) -> Pretrained:
    """``ddim.load_pretrained(name, device=device)``; its errors become one-line CliErrors.

    Raises:
        CliError: the model cannot be loaded, or it is conditioned on text (a
        cross-attention UNet such as Stable Diffusion's), which no option of the command
        passes.
    """
    try:
        bundle = load_pretrained(name, device=device)
    except PretrainedError as err:
        raise CliError(str(err)) from None
    config = getattr(bundle.model, "config", None)
    if hasattr(config, "get") and config.get("cross_attention_dim") is not None:
        raise CliError(f"--model {name}: its {type(bundle.model).__name__} is conditioned on "
                       "prompt embeddings (encoder_hidden_states), which the command line does "
                       "not pass; sample it from Python with model_kwargs (see "
                       "docs/latent-diffusion.md)")
    return bundle


# ---------------------------------------------------------------------------- writing
@contextmanager
def writing(out: Path, note: str = "") -> Iterator[None]:
    """Run the block that writes ``out``; an OSError (a full disk) becomes a CliError with
    status 1 naming ``out``, ``note`` appended (the library's atomic writes leave no partial
    file)."""
    try:
        yield
    except OSError as err:
        raise CliError(f"cannot write {out}: {err.strerror or err}{note}", EXIT_FAILURE
                       ) from None


def write_images(out: Path, images: torch.Tensor, data_range: Sequence[float], scale: int,
                 **meta: Any) -> None:
    """Float ``images`` (N, C, H, W) in ``data_range`` as a PNG grid upscaled ``scale`` times,
    or as an .npz of uint8 images (N, H, W, C) plus the ``meta`` that are not None,
    atomically.

    Raises:
        CliError: with status 1 when the file cannot be written.
    """
    with writing(out):
        if out.suffix.lower() == ".png":
            save_image_grid(images, out, scale=scale, data_range=data_range)
        else:
            save_npz(out, to_uint8(images, data_range), ddim_version=__version__,
                     **{k: v for k, v in meta.items() if v is not None})

