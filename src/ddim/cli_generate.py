"""``ddim generate``: many images as resumable shards, on one process or many under torchrun.

::

    ddim generate --model digits --num 50000 --out runs/digits --pack digits-50k.npz
    torchrun --standalone --nproc_per_node=8 -m ddim generate --device cuda --num-images 50000 ...

Under torchrun the count must be spelled ``--num-images``: torchrun parses the whole command
line with argparse, which reads ``--num`` as an ambiguous abbreviation of torchrun's own
``--numa-binding`` and stops. ``-m ddim`` runs ``python -m ddim`` (``ddim/__main__.py``).

The work is done by :func:`ddim.generate.generate` and :func:`ddim.generate.pack`; this module
only parses the command line and reports, as :mod:`ddim.cli` does for ``ddim sample`` (it
imports from there inside functions, because ``cli`` imports this module to register it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import distributed
from .generate import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, check_world_size, generate, pack
from .pretrained import BUNDLED_MODELS
from .sampler import DEFAULT_STEPS
from .schedule import SPACINGS

EXIT_INTERRUPTED = 130


def _add_generate_parser(commands: argparse._SubParsersAction) -> None:
    from .cli import _positive_int, _seed

    p = commands.add_parser(
        "generate", help="generate many images (e.g. 50k for FID) as resumable .npz shards",
        description="Generate exactly --num images into shard files under --out "
                    "(shard-00000.npz ...: uint8 images (n, H, W, C) and their indices), "
                    "with run.json recording the settings. Rerunning the same command resumes "
                    "an interrupted run. Under torchrun the shards are shared among the "
                    "processes: torchrun --nproc_per_node=K -m ddim generate ...")
    p.add_argument("--model", default="digits",
                   help=f"bundled model {BUNDLED_MODELS}, diffusers folder or hub id "
                        "(default: %(default)s)")
    p.add_argument("--num", "--num-images", dest="num", type=_positive_int, required=True,
                   help="number of images; under torchrun write --num-images (torchrun's own "
                        "parser takes --num for an abbreviation of its --numa-binding)")
    p.add_argument("--out", type=Path, required=True,
                   help="the run's folder (created if missing; one run per folder)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help="number of DDIM steps, 1..T (default: %(default)s)")
    p.add_argument("--eta", type=float, default=0.0,
                   help="η >= 0: 0 deterministic DDIM, 1 DDPM-like (default: %(default)s)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the run; image i uses seed (seed, i) (default: %(default)s)")
    p.add_argument("--spacing", choices=SPACINGS, default="leading",
                   help="timestep spacing; trailing suits few steps (default: %(default)s)")
    p.add_argument("--shard-size", type=_positive_int, default=DEFAULT_SHARD_SIZE,
                   help="images per shard file; the last one holds the rest "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                   help="images per model call (default: %(default)s)")
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu or cuda; under torchrun 'cuda' means "
                        "cuda:LOCAL_RANK (default: cpu)")
    p.add_argument("--png", action="store_true", help="also write png/<index>.png per image")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the shards of another (or the same) run in --out and start "
                        "over, instead of refusing (or resuming)")
    p.add_argument("--pack", type=Path, default=None, metavar="FILE.npz",
                   help="when all shards exist, also join them into FILE.npz: images "
                        "(num, H, W, C) uint8 in index order")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar with images/s on rank 0 (default: only when "
                        "stderr is a terminal)")
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """``ddim generate``: cheap checks, then join the process group, load, generate, pack."""
    from .cli import (
        EXIT_FAILURE,
        EXIT_USAGE,
        CliError,
        _check_device,
        _check_output,
        _want_progress,
        load_model,
    )

    try:
        rank, world_size, _ = distributed.from_env()
    except ValueError as err:
        raise CliError(str(err)) from None
    try:  # before joining the process group, where the other processes would wait
        check_world_size(args.num, args.shard_size, world_size)
    except ValueError as err:
        if rank != 0:
            return EXIT_USAGE  # rank 0 says it
        raise CliError(f"{err} (processes: torchrun's --nproc_per_node × --nnodes)") from None
    if args.pack is not None:
        _check_output(args.pack, (".npz",), flag="--pack")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out: '{args.out}' exists and is not a folder")
    show_progress = _want_progress(args.progress) and rank == 0
    _check_device(args.device)
    try:
        with distributed.launch(args.device) as proc:
            bundle = load_model(args.model, proc.device)
            result = generate(
                bundle, args.out, args.num, steps=args.steps, eta=args.eta, seed=args.seed,
                spacing=args.spacing, shard_size=args.shard_size, batch_size=args.batch_size,
                device=proc.device, png=args.png, overwrite=args.overwrite, rank=proc.rank,
                world_size=proc.world_size, progress=show_progress)
            if proc.rank == 0 and args.pack is not None:
                pack(args.out, args.pack)
    except KeyboardInterrupt:
        print(f"ddim: interrupted{_where(rank, world_size)}; finished shards are kept: rerun "
              "the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (TypeError, ValueError, OSError) as err:
        status = EXIT_FAILURE if isinstance(err, OSError) else EXIT_USAGE
        status = EXIT_FAILURE if type(err).__name__ == "NonFiniteError" else status
        shared = getattr(err, "same_on_all_ranks", False)
        if shared and rank != 0:
            return status  # rank 0 prints the same message
        message = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CliError(message + ("" if shared else _where(rank, world_size)), status) from None
    if rank == 0:
        resumed = f", {result.resumed} kept from before" if result.resumed else ""
        rate = ""
        if result.generated_images and result.seconds > 0:
            procs = f" over {world_size} processes" if world_size > 1 else ""
            rate = f", {result.generated_images / result.seconds:.1f} images/s{procs}"
        print(f"{result.num} images in {result.shards} shard{'s' * (result.shards > 1)} in "
              f"{args.out} ({result.generated} shards generated{resumed}) in "
              f"{result.seconds:.1f} s{rate}")
        if args.pack is not None:
            print(f"packed into {args.pack}")
    return 0


def _where(rank: int, world_size: int) -> str:
    return f" (rank {rank} of {world_size})" if world_size > 1 else ""
