"""docs/architecture.md is the map of the tree: every module is on it, and nothing else is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trio_llmstream"
DOC = ROOT / "docs" / "architecture.md"


def _map_section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("## Map of the tree")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _modules() -> set[str]:
    return {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_every_module_is_on_the_map() -> None:
    section = _map_section()
    named = set(re.findall(r"`([\w/]+\.py)`", section))
    missing = sorted(_modules() - named)
    assert not missing, f"docs/architecture.md's map does not name: {missing}"


def test_the_map_names_only_modules_that_exist() -> None:
    named = set(re.findall(r"`([\w/]+\.py)`", _map_section()))
    stale = sorted(named - _modules())
    assert not stale, f"docs/architecture.md's map names modules that do not exist: {stale}"


def test_readme_and_package_link_only_to_shipped_files() -> None:
    # ../shared/ and the like exist on no user's machine.
    for path in [ROOT / "README.md", *PACKAGE.rglob("*.py")]:
        assert "shared/" not in path.read_text(encoding="utf-8"), path
    for target in re.findall(r"\]\(([^)#]+)\)", (ROOT / "README.md").read_text("utf-8")):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to missing {target}"
