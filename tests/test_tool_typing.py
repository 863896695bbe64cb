"""Type checkers see a tool's own signature: ``mypy --strict`` over two snippets.

``tests/typing/tools_ok.py`` must check clean; ``tests/typing/tools_errors.py`` must fail on
exactly the lines marked ``# E: <code>``, with those codes — no more (a false alarm) and no
fewer (a wrong call that type-checks, as ``add.fn("1", "2")`` did, returning ``"12"``). One
mypy run covers both files; it reuses the project's mypy cache, which ``.ci/run`` warms by
checking the package first (cold, the run takes several seconds).
"""

from __future__ import annotations

import collections
import pathlib
import re

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = pathlib.Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "tests" / "typing"
OK = SNIPPETS / "tools_ok.py"
ERRORS = SNIPPETS / "tools_errors.py"

_MARK = re.compile(r"#\s*E:\s*([a-z-]+)\s*$")
_REPORT = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


def expected_errors(path: pathlib.Path) -> set[tuple[int, str]]:
    marks = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _MARK.search(line)
        if match:
            marks.add((number, match.group(1)))
    return marks


@pytest.fixture(scope="module")
def mypy_errors() -> dict[str, set[tuple[int, str]]]:
    """``{file name: {(line, error code)}}`` from one ``mypy --strict`` run over both files."""
    with pytest.MonkeyPatch.context() as patch:
        # mypy looks for imports in the working directory first: this tree's package, not an
        # installed copy of another.
        patch.chdir(ROOT)
        stdout, stderr, status = mypy_api.run([
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--no-color-output",
            "--cache-dir", str(ROOT / ".mypy_cache"),
            str(OK),
            str(ERRORS),
        ])
    assert status in (0, 1), f"mypy failed to run (status {status}):\n{stderr}{stdout}"
    found: dict[str, set[tuple[int, str]]] = collections.defaultdict(set)
    for line in stdout.splitlines():
        match = _REPORT.match(line)
        if match:
            found[pathlib.Path(match["path"]).name].add((int(match["line"]), match["code"]))
        else:
            assert ": note: " in line, f"unexpected mypy output: {line}"
    return found


def test_the_error_snippet_marks_errors() -> None:
    # A snippet with no marks would make the test below vacuous.
    codes = collections.Counter(code for _, code in expected_errors(ERRORS))
    assert codes["arg-type"] >= 3
    assert codes["call-arg"] >= 2


def test_correct_uses_of_tools_type_check(mypy_errors: dict[str, set[tuple[int, str]]]) -> None:
    assert mypy_errors.get(OK.name, set()) == set()


def test_wrong_calls_of_tools_fail_to_type_check(
    mypy_errors: dict[str, set[tuple[int, str]]],
) -> None:
    assert mypy_errors.get(ERRORS.name, set()) == expected_errors(ERRORS)
