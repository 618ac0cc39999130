"""The house: the import contract of the wings holds and catches an import that runs up, every
module stays small, and the README's architecture section is the one the code draws."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ddim"


def _lint_imports(source_root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contract, on the package found under
    ``source_root``."""
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    env = {"PYTHONPATH": str(source_root), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run([lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_wings_keep_their_order():
    done = _lint_imports(ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 1 kept, 0 broken." in done.stdout


@pytest.mark.slow
def test_an_import_running_up_breaks_the_contract(tmp_path):
    """A deliberately wrong import (the maths importing the command line) in a copy of the
    package: the contract names it and fails."""
    shutil.copytree(PACKAGE, tmp_path / "ddim", ignore=shutil.ignore_patterns("weights",
                                                                              "__pycache__"))
    schedule = tmp_path / "ddim" / "maths" / "schedule.py"
    text = schedule.read_text()
    schedule.write_text(text.replace("from ..checks import check_int\n",
                                     "from ..checks import check_int\nfrom ..cli import base\n"))
    done = _lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and "ddim.maths.schedule -> ddim.cli.base" in done.stdout


def test_every_module_has_at_most_300_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 300, {k: v for k, v in sizes.items() if v > 300}


def test_the_readmes_architecture_section_is_current():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import architecture
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert architecture.main(["--check"]) == 0
    for wing in ("maths", "sampling", "editing", "loading", "acceleration", "generation",
                 "evaluation", "cli"):
        assert f"**{wing}**/" in architecture.section()
