"""``ddim generate``: many images as resumable shards, on one process or many under torchrun.

::

    ddim generate --model digits --num 50000 --out runs/digits --pack digits-50k.npz
    torchrun --standalone --nproc_per_node=8 -m ddim generate --device cuda --num-images 50000 ...

Under torchrun the count must be spelled ``--num-images``: torchrun parses the whole command
line with argparse, which reads ``--num`` as an ambiguous abbreviation of torchrun's own
``--numa-binding`` and stops. ``-m ddim`` runs ``python -m ddim`` (``ddim/__main__.py``).

The work is done by :mod:`ddim.generation.generate` (:func:`~ddim.generation.generate.prepare_run`,
then
:func:`~ddim.generation.generate.make_shards`) and :func:`ddim.generation.shards.pack`; this module
parses the command line and reports. Everything that can be checked (arguments, labels, device,
number of processes, the model) is checked before the folder or run.json is written. An error that
every process raises alike (bad arguments, a folder that holds another run or is in use by
another process) is printed once, by rank 0; an error of one process names its rank.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..generation import distributed
from ..generation.folder_lock import FolderInUseError, check_unlocked
from ..generation.generate import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARD_SIZE,
    GenerateResult,
    make_shards,
    prepare_run,
)
from ..generation.packing import pack
from ..generation.run_checks import TooManyProcessesError, check_world_size
from ..generation.settings import RunSettings
from .base import EXIT_INTERRUPTED, CliError, plural
from .common import (
    check_class_options,
    check_device,
    check_folder,
    check_output,
    library_error,
    load_model,
    sampling_settings,
    settings_for_model,
    want_progress,
)
from .options import add_options, positive_int


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the ``generate`` subcommand to ``commands``."""
    p = commands.add_parser(
        "generate", help="generate many images (e.g. 50k for FID) as resumable .npz shards",
        description="Generate exactly --num images into shard files under --out "
                    "(shard-00000.npz ...: uint8 images (n, H, W, C) and their indices), "
                    "with run.json recording the settings. Rerunning the same command resumes "
                    "an interrupted run. Under torchrun the shards are shared among the "
                    "processes: torchrun --nproc_per_node=K -m ddim generate ...")
    add_options(p, "generate", defaults={"batch_size": DEFAULT_BATCH_SIZE},
                notes={"device": "under torchrun 'cuda' means cuda:LOCAL_RANK",
                       "progress": "with images/s, on rank 0"})
    p.add_argument("--num", "--num-images", dest="num", type=positive_int, required=True,
                   help="number of images; under torchrun write --num-images (torchrun's own "
                        "parser takes --num for an abbreviation of its --numa-binding)")
    p.add_argument("--out", type=Path, required=True,
                   help="the run's folder (created if missing; one run per folder)")
    p.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE,
                   help="images per shard file; the last one holds the rest "
                        "(default: %(default)s)")
    p.add_argument("--png", action="store_true", help="also write png/<index>.png per image")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the shards of another (or the same) run in --out and start "
                        "over, instead of refusing (or resuming)")
    p.add_argument("--pack", type=Path, default=None, metavar="FILE.npz",
                   help="when all shards exist, also join them into FILE.npz: images "
                        "(num, H, W, C) uint8 in index order")
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """``ddim generate``: cheap checks, then join the process group, load, generate, pack."""
    try:
        rank, world_size, _ = distributed.from_env()
    except ValueError as err:
        raise CliError(str(err)) from None
    try:  # before joining the process group, where the other processes would wait
        check_world_size(args.num, args.shard_size, world_size)
    except TooManyProcessesError as err:
        return _report_once(CliError(err.message(
            "{} processes (torchrun's --nproc_per_node × --nnodes)", "--shard-size")), rank)
    try:
        settings = _checked_settings(args)
    except CliError as err:
        return _report_once(err, rank)
    show_progress = want_progress(args.progress) and rank == 0
    try:
        with distributed.launch(args.device) as proc:
            bundle = load_model(args.model, proc.device)
            try:
                resolved = settings_for_model(args, settings, bundle)
            except CliError as err:  # alike on every rank
                return _report_once(err, proc.rank)
            try:
                run = prepare_run(bundle, args.out, resolved, device=proc.device,
                                  overwrite=args.overwrite, rank=proc.rank,
                                  world_size=proc.world_size)
            except (TypeError, ValueError, OSError) as err:  # alike on every rank
                return _report_once(library_error(err), proc.rank)
            with run:
                result = make_shards(run, progress=show_progress)
            if proc.rank == 0 and args.pack is not None:
                _pack(args)
    except KeyboardInterrupt:
        print(f"ddim: interrupted{_where(rank, world_size)}; finished shards are kept: rerun "
              "the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (TypeError, ValueError, OSError) as err:  # this process's own
        raise library_error(err, _where(rank, world_size)) from None
    if rank == 0:
        _report(result, args, world_size)
    return 0


def _checked_settings(args: argparse.Namespace) -> RunSettings:
    """The run's settings, after every check that needs no model (raises CliError)."""
    settings = sampling_settings(args, "generate", RunSettings, num=args.num,
                                 shard_size=args.shard_size, batch_size=args.batch_size,
                                 png=args.png)
    if args.pack is not None:
        check_output(args.pack, (".npz",), flag="--pack")
    check_folder(args.out)
    check_device(args.device)
    check_class_options(args)
    try:  # before the model is loaded; prepare_run takes the lock itself
        check_unlocked(args.out)
    except FolderInUseError as err:
        raise library_error(err) from None
    return settings


def _pack(args: argparse.Namespace) -> None:
    """--pack: join the finished shards; a failure says that the shards are complete."""
    try:
        pack(args.out, args.pack)
    except OSError as err:
        raise library_error(err, " (rerun this command: it keeps the shards and only "
                                 "packs)") from None


def _report_once(error: CliError, rank: int) -> int:
    """An error that every rank has alike: rank 0 raises it to be printed, the others return
    its exit status quietly."""
    if rank != 0:
        return error.status
    raise error


def _report(result: GenerateResult, args: argparse.Namespace, world_size: int) -> None:
    resumed = f", {result.resumed} kept from before" if result.resumed else ""
    rate = ""
    if result.generated_images and result.seconds > 0:
        procs = f" over {world_size} processes" if world_size > 1 else ""
        rate = f", {result.generated_images / result.seconds:.1f} images/s{procs}"
    print(f"{plural(result.num, 'image')} in {plural(result.shards, 'shard')} in {args.out} "
          f"({plural(result.generated, 'shard')} generated{resumed}) in "
          f"{result.seconds:.1f} s{rate}")
    if args.pack is not None:
        print(f"packed into {args.pack}")


def _where(rank: int, world_size: int) -> str:
    return f" (rank {rank} of {world_size})" if world_size > 1 else ""
