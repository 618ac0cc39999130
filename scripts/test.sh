#!/usr/bin/env bash
# The README's test command: installs what the suite needs (CPU torch pinned for dev/CI
# through constraints-cpu.txt), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt -e ".[test]"
python -m pytest -q "$@"
