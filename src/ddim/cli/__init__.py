"""The ``ddim`` command (also ``python -m ddim``).

::

    ddim sample --model digits --steps 50 --eta 0 --num 64 --seed 0 --out samples.png

One module per group of subcommands (:mod:`.sample`: sample; :mod:`.evaluate`: eval;
:mod:`.generate`; :mod:`.edit`: invert, inpaint and img2img), each with
``add_parsers(commands)`` and a ``run_<name>(args) -> int`` per subcommand; the options they
share are stated once in :mod:`.options`, the helpers they share in :mod:`.common` and
:mod:`.files`. Arguments are checked, and input files read, before the model is loaded.
Errors the user can fix are reported as one line on stderr (``ddim: error: ...``) with exit
status 2, runtime failures (the model returned NaN, the disk filled up) with status 1; no
traceback for either. Ctrl-C prints one line and exits with status 130, also while torch and
the library are still being imported (this module imports them only inside :func:`main`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .._version import __version__
from .base import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, PROG, CliError, Parser

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "CliError", "build_parser", "main"]

GROUPS = ("sample", "evaluate", "generate", "edit", "calibrate")  # in ``ddim --help``'s order


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ddim`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)  # imports torch and the library
        if args.threads is not None:  # before any work
            import torch

            torch.set_num_threads(args.threads)
        return args.run(args)
    except CliError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.status
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``ddim`` command, with the subcommands of every module in GROUPS
    (importing them imports torch and the library)."""
    parser = Parser(prog=PROG, description="DDIM sampling for pretrained DDPMs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        importlib.import_module(f".{group}", __name__).add_parsers(commands)
    return parser
