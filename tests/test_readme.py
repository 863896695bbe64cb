"""The README's promises to a newcomer: its Python example type-checks as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _use_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Use") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the README's Use section has no Python example"
    return match.group(1)


def test_the_use_example_passes_mypy_strict(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    example = tmp_path / "readme_use.py"
    example.write_text(_use_example(), encoding="utf-8")
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(example)]
    )
    assert status == 0, out + err
