"""The tools package's layout: one module per job, its map true, no reaching into privates."""

from __future__ import annotations

import ast
import pathlib
import re

import trio_llmstream
from trio_llmstream import _tools

TOOLS = pathlib.Path(_tools.__file__).parent


def modules() -> list[pathlib.Path]:
    return sorted(p for p in TOOLS.glob("*.py") if p.name != "__init__.py")


def test_the_package_map_names_every_module_and_only_those() -> None:
    doc = _tools.__doc__ or ""
    listed = set(re.findall(r"^- ``(_\w+)``:", doc, flags=re.MULTILINE))
    present = {p.stem for p in modules()}
    assert present, "no modules found"
    assert listed == present


def test_every_module_says_its_job() -> None:
    for path in modules():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path.name} has no module docstring"
        assert len(doc.splitlines()[0]) > 20, f"{path.name}: the first line should say the job"


def test_the_package_init_imports_nothing() -> None:
    # Re-exports here would import the loop (and so the runtime) with any tools module, and
    # make a cycle with _stream, which imports _tools._execute.
    tree = ast.parse((TOOLS / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


#: Underscored names that are a documented protocol of the package, not a module's privates:
#: ``Cls._create(...)``, how the library builds a ``NoPublicConstructor`` class (``_util.py``).
PROTOCOL = frozenset({"_create"})


def _private(name: str) -> bool:
    dunder = name.startswith("__") and name.endswith("__")
    return name.startswith("_") and not dunder and name not in PROTOCOL


def private_reaches(source: str) -> list[str]:
    """Private names ``source`` uses that it does not define itself: ``from m import _x``, and
    ``obj._x`` (read or set) where ``source`` defines no name ``_x`` and sets no ``self._x``."""
    tree = ast.parse(source)
    defined: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif (
            isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
        ):
            defined.add(node.attr)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found += [f"from {module} import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in defined:
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


def test_the_checker_sees_a_reach_into_the_stream() -> None:
    # What the tool loop did before it had a hook: set a private attribute of LLMStream.
    assert private_reaches("stream._on_tool_start = on_start") == ["line 1: ._on_tool_start"]
    assert private_reaches("x = handle._outcome") == ["line 1: ._outcome"]
    assert private_reaches("from .._stream import _PRIVATE") == ["from .._stream import _PRIVATE"]
    assert private_reaches("loop = ToolLoop._create()") == []
    own = "class A:\n    def f(self):\n        self._x = 1\nA()._x\n_y = 2\nprint(_y)"
    assert private_reaches(own) == []


def test_no_tools_module_reaches_into_another_modules_privates() -> None:
    for path in modules():
        assert private_reaches(path.read_text()) == [], path.name


def test_public_tool_names_come_from_the_package() -> None:
    names = {
        "FunctionTool", "Param", "StepEnd", "ToolArgumentError", "ToolCallHandle", "ToolLoop",
        "ToolOptions", "ToolOutcome", "ToolOutcomeKind", "ToolRegistry", "check_tool_name",
        "function_tool", "open_tool_loop", "validate_arguments",
    }
    for name in names:
        assert getattr(trio_llmstream, name).__module__.startswith("trio_llmstream._tools."), name


#: What each module of the package may import from the package (siblings as ``_name``, the
#: rest of trio_llmstream as ``.._name``): the layers of the package map, checked.
ALLOWED_IMPORTS = {
    "_docstrings": set(),
    "_validate": set(),
    "_schema": {"_docstrings", "_validate"},
    "_function": {"_docstrings", "_schema", ".._models"},
    "_execute": {"_function", ".._models"},
    "_loop": {"_execute", "_function", ".._llm", ".._models", ".._options", ".._stream",
              ".._util"},
}


def package_imports(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            prefix = "" if node.level == 1 else "." * node.level
            found.add(prefix + (node.module or ""))
    return found


def test_each_module_imports_only_what_its_layer_allows() -> None:
    assert set(ALLOWED_IMPORTS) == {p.stem for p in modules()}
    for path in modules():
        extra = package_imports(path) - ALLOWED_IMPORTS[path.stem]
        assert not extra, f"{path.name} imports {sorted(extra)}"
