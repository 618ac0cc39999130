"""Print the house: the wings of ``src/ddim`` in the order of the import contract in
pyproject.toml (top to bottom), each with its modules, their sizes and what each is for (the
first line of its docstring). The README's architecture section is this script's output;
``lint-imports`` (import-linter, in the test extra) checks that no import runs up the order.

    python scripts/architecture.py            # print the section
    python scripts/architecture.py --check    # exit 1 if README.md's section differs
    python scripts/architecture.py --sizes    # with the lines of every module
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, as a package (the test extra has it)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ddim"
BEGIN, END = "<!-- architecture: begin -->", "<!-- architecture: end -->"


def layers() -> list[list[str]]:
    """The contract's layers, top first, each a list of the wings on it (``ddim.`` dropped)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [[w.strip().removeprefix("ddim.") for w in layer.split("|")]
            for layer in contract["layers"]]


def summary(path: Path, width: int = 110) -> str:
    """The first sentence of a module's docstring, as one line of at most ``width``
    characters (cut at a word, marked with …)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    # a sentence ends at ". " before a capital, not after "et al." or "eq."
    first = re.split(r"(?<!\bal)(?<!\beq)\.\s+(?=[A-Z])", text)[0].rstrip(".")
    if len(first) > width:
        first = first[:width].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    return first


def modules(wing: str) -> list[Path]:
    """The modules of a wing (a subpackage, or one module), ``__init__`` left out."""
    folder = PACKAGE / wing
    if folder.is_dir():
        return sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
    return [PACKAGE / f"{wing}.py"]


def section(sizes: bool = False) -> str:
    """The architecture section of the README, drawn from the contract and the tree
    (``sizes``: with each module's and wing's number of lines, for a review)."""
    rows = []
    for number, layer in enumerate(layers(), start=1):
        for wing in layer:
            files = modules(wing)
            lines = sum(len(f.read_text().splitlines()) for f in files)
            siblings = f" (beside {', '.join(w for w in layer if w != wing)})" if len(
                layer) > 1 else ""
            size = f", {lines} lines" if sizes else ""
            rows.append(f"**{wing}**{'/' if (PACKAGE / wing).is_dir() else '.py'} — layer "
                        f"{number}{siblings}, {len(files)} module{'s' * (len(files) > 1)}"
                        f"{size}")
            rows += [f"- `{f.name}`{f' ({len(f.read_text().splitlines())})' if sizes else ''}"
                     f": {summary(f)}" for f in files]
            rows.append("")
    return "\n".join(rows).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare with README.md's section")
    p.add_argument("--sizes", action="store_true", help="print the lines of each module too")
    args = p.parse_args(argv)
    text = section(sizes=args.sizes)
    if not args.check:
        print(text, end="")
        return 0
    readme = (ROOT / "README.md").read_text()
    if BEGIN not in readme or END not in readme:
        print(f"README.md has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    current = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    if current != text:
        print("README.md's architecture section is out of date: run "
              "python scripts/architecture.py and paste its output", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
