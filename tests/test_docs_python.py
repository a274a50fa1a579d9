"""Every Python example in docs/python.md runs as written (except a block that says it is not run; a
block that says it is slow runs with --runslow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", [pytest.param(i, marks=pytest.mark.slow) if "(slow:" in block else i
                                   for i, block in enumerate(BLOCKS)])
def test_example_runs(index, tmp_path, monkeypatch, capsys):
    code = BLOCKS[index]
    if "not run by the test suite" in code:
        compile(code, f"docs/python.md block {index}", "exec")  # still valid Python
        return
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"docs/python.md block {index}", "exec"), {"__name__": f"docs_python_{index}"})
    assert capsys.readouterr().out.strip()  # every example shows its result
