"""What the ``ddim`` command needs before it imports anything heavy: the exit codes, the
error every subcommand raises, the argument parser's class, and count wording (``plural``).

Nothing here imports torch, numpy or the library, so that :func:`ddim.cli.main` can catch a
Ctrl-C that arrives while those load.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..checks import plural  # noqa: F401 (the subcommands' count wording)

PROG = "ddim"
EXIT_USAGE = 2  # bad arguments (argparse's convention)
EXIT_FAILURE = 1  # the run itself failed
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class CliError(Exception):
    """A problem to report as ``ddim: error: <message>`` with exit status ``status``."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse, but errors become a :class:`CliError` (one line, no usage block)."""

    def error(self, message: str) -> Any:
        raise CliError(f"{message} (see '{self.prog} --help')")

