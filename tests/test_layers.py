"""The layers of docs/architecture.md hold: no import cycle except type-only ones, and no
arrow from a lower layer to a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "trio_llmstream"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The package modules ``path`` imports at run time (not under TYPE_CHECKING)."""
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(nodes: list[ast.stmt], depth: int) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse, depth)
                continue
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node)
                if target.startswith("trio_llmstream"):
                    found.add(target)
                    for alias in node.names:  # `from . import x` imports a module x
                        candidate = f"{target}.{alias.name}"
                        if _exists(candidate):
                            found.add(candidate)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("trio_llmstream"))
            if top_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.AST):
                    visit(inner, depth + 1)  # type: ignore[arg-type]

    visit(ast.parse(path.read_text(encoding="utf-8")).body, 0)
    found.discard(module)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    return {
        _module_name(p): {m for m in _imports(p, top_level_only=top_level_only) if _exists(m)}
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts
    }


def test_no_import_cycle_at_import_time() -> None:
    graph = _graph(top_level_only=True)
    # Package __init__ files re-export their children: the edge child -> parent package is
    # how Python imports a submodule anyway, so cycles through an __init__ are not counted.
    packages = {m for m in graph if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in packages:
                continue
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state and node not in packages:
            visit(node)


# Who may not import whom (prefixes of module names), lazy imports included.
FORBIDDEN = {
    "trio_llmstream._core": (
        "trio_llmstream._stream", "trio_llmstream._pipe", "trio_llmstream._llm",
        "trio_llmstream._tools", "trio_llmstream.providers", "trio_llmstream.journal",
        "trio_llmstream.testing", "trio_llmstream._segments", "trio_llmstream._telemetry",
        "trio_llmstream.__main__", "trio_llmstream._demo",
    ),
    "trio_llmstream._stream": (
        "trio_llmstream.providers", "trio_llmstream.journal", "trio_llmstream.testing",
        "trio_llmstream._segments", "trio_llmstream._tools._loop", "trio_llmstream.__main__",
        "trio_llmstream._demo",
    ),
    "trio_llmstream.providers": (
        "trio_llmstream.journal", "trio_llmstream.testing", "trio_llmstream._tools._loop",
        "trio_llmstream._segments", "trio_llmstream.__main__", "trio_llmstream._demo",
    ),
    "trio_llmstream.journal": (
        "trio_llmstream.providers", "trio_llmstream.testing", "trio_llmstream.__main__",
        "trio_llmstream._demo",
    ),
    "trio_llmstream.testing": ("trio_llmstream.__main__", "trio_llmstream._demo"),
    "trio_llmstream._demo": ("trio_llmstream.__main__",),
}


def test_no_arrow_from_a_lower_layer_to_a_higher_one() -> None:
    graph = _graph(top_level_only=False)
    wrong = [
        f"{src} imports {dst}"
        for src, targets in sorted(graph.items())
        for lower, higher in FORBIDDEN.items()
        if src == lower or src.startswith(lower + ".")
        for dst in sorted(targets)
        if any(dst == h or dst.startswith(h + ".") for h in higher)
    ]
    assert not wrong, wrong
