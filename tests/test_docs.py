"""The Python examples in docs/ run as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_doc_examples_run(path):
    blocks = _blocks(path)
    assert blocks, f"{path.name} has no python examples"
    namespace: dict = {}
    for code in blocks:  # later blocks may use names from earlier ones, as a reader would
        exec(compile(code, str(path), "exec"), namespace)
