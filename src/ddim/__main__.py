"""``python -m ddim ...``: the ``ddim`` command (see :mod:`ddim.cli`)."""

from .cli import main

raise SystemExit(main())
