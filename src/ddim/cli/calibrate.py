"""``ddim calibrate``: fit grids to a model, one per solver and step count, into a file.

::

    ddim calibrate --model path/to/model --solver unipc --steps 4 5 6 8 10
    ddim sample --model path/to/model --solver unipc --steps 5 --spacing calibrated --out s.png

The grids go to ``--out`` (default: the model folder's ``calibration.json``, where
``--spacing calibrated`` finds them; a bundled model's file ships with the package and is not
rewritten by default: give ``--out``, then ``--calibration``); each is added atomically,
replacing an older grid of the same key. The search is
:func:`ddim.calibration.search.calibrate_timesteps`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..calibration.search import calibrate_timesteps
from ..checks import plural
from ..loading.calibrations import default_file, refuse_bundled
from .base import CliError
from .common import (
    check_class_options,
    check_device,
    check_output,
    library_error,
    load_model,
    model_labels,
    want_progress,
    writing,
)
from .options import add_options, positive_int


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the ``calibrate`` subcommand to ``commands``."""
    p = commands.add_parser(
        "calibrate", help="fit grids to a model and solver: the fewest calls for its quality",
        description="Fit a grid of each --steps to the model and --solver: the timesteps at "
                    "which the solver lands closest to a fine teacher solve of the ODE, from "
                    "calibration noises of their own. Use them with --spacing calibrated.")
    add_options(p, "calibrate")
    p.add_argument("--steps", type=positive_int, nargs="+", required=True, metavar="S",
                   help="the grid sizes (model calls) to fit, e.g. 4 5 6 8 10")
    p.add_argument("--noises", type=positive_int, default=64,
                   help="calibration noises the fit averages over (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.json",
                   help="the calibration file to add the grids to (default: the model "
                        "folder's calibration.json)")
    p.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    """``ddim calibrate``: checks, loads, fits each S, saves each grid as it is found."""
    start = time.perf_counter()
    if args.out is not None:
        check_output(args.out, (".json",))
    if args.noises < 2:
        raise CliError(f"--noises {args.noises}: the fit needs at least 2 noises")
    device = check_device(args.device)
    check_class_options(args)
    show_progress = want_progress(args.progress)
    bundle = load_model(args.model, device)
    out = args.out if args.out is not None else default_file(bundle.model)
    if out is None:
        raise CliError(f"--model {args.model} has no folder to keep its calibration in: "
                       "pass --out FILE.json")
    if args.out is None:
        try:
            refuse_bundled(out)
        except ValueError as err:
            raise CliError(f"--model {args.model}: {err}") from None
        check_output(out, (".json",), flag="--out (the model folder's calibration.json)")
    labels = model_labels(args, bundle)
    for steps in args.steps:
        try:
            result = calibrate_timesteps(
                bundle, steps, solver=args.solver, num_noises=args.noises, seed=args.seed,
                class_labels=None if labels is None else _cycled(labels, args.noises),
                guidance_scale=args.guidance_scale, progress=show_progress)
        except (TypeError, ValueError) as err:
            raise library_error(err, f" (--steps {steps})") from None
        with writing(out, note=" (the grids before it are saved)"):
            result.save(out)
        best = min(result.presets, key=result.presets.get)
        print(f"{args.solver}, {plural(steps, 'step')}: {list(result.timesteps)}, objective "
              f"{result.objective:.4g} (best preset {best}: {result.presets[best]:.4g}), "
              f"{result.evaluations} grids, {result.seconds:.1f} s")
    print(f"wrote {plural(len(args.steps), 'grid')} to {out} in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def _cycled(labels: tuple[int, ...], n: int):
    import torch

    return torch.tensor([labels[i % len(labels)] for i in range(n)], dtype=torch.int64)
