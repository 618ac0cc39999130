#!/usr/bin/env bash
# The README's test command: installs what the suite needs (CPU torch pinned for dev/CI
# through constraints-cpu.txt), checks the code (ruff) and the import contract of the wings
# (import-linter, from pyproject.toml), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt -e ".[test]"
ruff check src tests benchmarks examples scripts
lint-imports
python scripts/architecture.py --check
python -m pytest -q "$@"
