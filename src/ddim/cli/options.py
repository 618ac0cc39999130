"""The options that several ``ddim`` subcommands share, each stated once.

An :class:`Option` holds an option's flag, help text, argparse settings (type, default,
choices), which subcommands take it and, in ``keyword``, the library parameter its value is
passed as. :func:`add_options` gives a subcommand's parser the options it takes, with help
texts that show the default; :func:`library_options` turns the parsed values into keyword
arguments for the library call. To give several subcommands a new option, add one entry to
:data:`OPTIONS` (and, with a ``keyword``, accept that parameter in the library calls).

The ``type`` functions here refuse bad values while parsing, before any model is loaded, with
messages such as ``argument --steps: must be an integer >= 1, got '0'``.

``--threads`` is applied by :func:`ddim.cli.main` before the subcommand runs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..loading.pretrained import BUNDLED_MODELS
from ..maths.grids import DEFAULT_SPACING, SPACING_CHOICES
from ..sampling.guidance import NULL_LABEL
from ..sampling.options import DEFAULT_STEPS
from ..sampling.solvers import SOLVER_NAMES, solver_help

COMMANDS = frozenset({"sample", "eval", "generate", "invert", "inpaint", "img2img",
                      "calibrate"})


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``low``, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def number_in(low: float, high: float = math.inf) -> Callable[[str], float]:
    """An argparse ``type`` accepting finite numbers in [low, high], with a message that says
    so (``high`` = inf: no upper bound)."""
    allowed = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a finite number {allowed}, got {text!r}")
        return value

    return parse


positive_int, natural_int = int_at_least(1), int_at_least(0)


def class_label(text: str) -> int | str:
    """An argparse ``type`` for one ``--class`` label: an integer >= 0, or the word ``null``
    (the model's null class, kept as the word until the model is known)."""
    if text == NULL_LABEL:
        return NULL_LABEL
    try:
        return natural_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a class (an integer >= 0) or {NULL_LABEL!r}, got {text!r}") from None


@dataclass(frozen=True)
class Option:
    """One command-line option.

    ``flag`` (``--batch-size``, read back as ``args.batch_size``); ``help``, to which the
    default is appended (``shown`` if given, else the value); ``parsing``, the keywords of
    ``add_argument`` (type, default, choices...); the ``commands`` that take it; and the
    library ``keyword`` its value is passed as (None: the CLI uses the value itself).
    """

    flag: str
    help: str
    parsing: Mapping[str, Any] = field(default_factory=dict)
    commands: frozenset[str] = COMMANDS
    keyword: str | None = None
    shown: str | None = None

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments: ``parsing["dest"]`` if given, else from the
        flag (``--batch-size`` -> ``batch_size``)."""
        return self.parsing.get("dest") or self.flag.removeprefix("--").replace("-", "_")


_MANY = frozenset({"sample", "eval", "generate"})  # many images, in batches
_PNG = frozenset({"sample", "invert", "inpaint", "img2img"})
_NOISY = COMMANDS - {"invert", "calibrate"}  # inversion and calibration are deterministic
_GRIDDED = COMMANDS - {"calibrate"}  # calibrate takes several --steps, and fits the spacing

OPTIONS: tuple[Option, ...] = (
    Option("--model", f"bundled model {BUNDLED_MODELS}, diffusers folder or hub id",
           dict(default="digits")),
    Option("--steps", "number of DDIM steps, 1..T (the model's training steps)",
           dict(type=positive_int, default=DEFAULT_STEPS), _GRIDDED, keyword="steps"),
    Option("--eta", "η >= 0: 0 deterministic DDIM, 1 DDPM-like",
           dict(type=number_in(0.0), default=0.0), _NOISY, keyword="eta"),
    Option("--solver", f"the update after each model call (η > 0 is ddim's only): "
           f"{solver_help()}", dict(choices=SOLVER_NAMES, default="ddim"),
           keyword="solver"),
    Option("--spacing", "where the steps go: trailing starts at T-1 for every step count; "
           "leading is the paper's uniform grid; karras, kl_optimal and log_snr are placed in "
           "the noise level; calibrated is the grid fitted to the model and solver (ddim "
           "calibrate), from the model folder's calibration.json or --calibration",
           dict(choices=SPACING_CHOICES, default=DEFAULT_SPACING), _GRIDDED,
           keyword="spacing"),
    Option("--calibration", "a calibration file (ddim calibrate --out) to take the grid "
           "from: the one fitted to the model for --solver and --steps",
           dict(type=Path, default=None, metavar="FILE"), _MANY,
           shown="the model folder's calibration.json, with --spacing calibrated"),
    Option("--seed", "seed of the run; image i uses seed (seed, i); calibrate: the seed of "
           "its calibration noises, a stream of its own",
           dict(type=natural_int, default=0)),
    Option("--class", "class label(s) for a class-conditional model: one for all images, or "
           "a list that image i takes entry i mod its length from (--class 0 1 2 3 4 5 6 7 "
           f"8 9: balanced classes); {NULL_LABEL} is the model's null class (unconditional)",
           dict(type=class_label, nargs="+", default=None, dest="class_labels",
                metavar="LABEL"), shown="none; required by class-conditional models"),
    Option("--guidance-scale", "classifier-free guidance weight w >= 0 with --class: 0 "
           "unconditional, 1 conditional, more follows the class more closely",
           dict(type=number_in(0.0), default=None, metavar="W"), keyword="guidance_scale",
           shown="none: no guidance"),
    Option("--device", "torch device, e.g. cpu or cuda:0", dict(default=None), shown="cpu"),
    Option("--batch-size", "images per model call; does not change the images",
           dict(type=positive_int, default=64), _MANY),
    Option("--progress", "show a progress bar",
           dict(action=argparse.BooleanOptionalAction, default=None), _MANY | {"calibrate"},
           shown="only when stderr is a terminal"),
    Option("--scale", "integer upscaling of the PNG grid, nearest neighbour",
           dict(type=positive_int, default=4), _PNG),
    Option("--threads", "CPU threads torch may use (torch.set_num_threads), set before any "
           "work; on a busy machine 1 or 2 can be much faster than the default",
           dict(type=positive_int, default=None, metavar="N"), shown="torch's own choice"),
)


def add_options(parser: argparse.ArgumentParser, command: str, *,
                defaults: Mapping[str, Any] | None = None,
                notes: Mapping[str, str] | None = None) -> None:
    """Add the :data:`OPTIONS` that ``command`` takes to its ``parser``, in table order.

    Args:
        defaults: other defaults for this command, by dest (``{"batch_size": 500}``).
        notes: text added to an option's help for this command, by dest.

    Raises:
        ValueError: ``command`` is unknown, or ``defaults``/``notes`` name an option that
        ``command`` does not take.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    options = {o.dest: o for o in OPTIONS if command in o.commands}
    unknown = set(defaults or {}).union(notes or {}).difference(options)
    if unknown:
        raise ValueError(f"{command} takes no option {sorted(unknown)}")
    for dest, option in options.items():
        settings = dict(option.parsing)
        if defaults and dest in defaults:
            settings["default"] = defaults[dest]
        note = f"; {notes[dest]}" if notes and dest in notes else ""
        shown = option.shown or "%(default)s"
        parser.add_argument(option.flag, help=f"{option.help}{note} (default: {shown})",
                            **settings)


def library_options(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The parsed values of ``command``'s options that have a library ``keyword``, by it:
    ``{"steps": 50, "eta": 0.0, "spacing": "trailing"}`` for ``sample``."""
    return {o.keyword: getattr(args, o.dest) for o in OPTIONS
            if command in o.commands and o.keyword is not None}
