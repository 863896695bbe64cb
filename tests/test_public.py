"""The public surface: one door, sorted exports, a sans-IO core, the error tree."""

from __future__ import annotations

import ast
import inspect
import pathlib

import trio_llmstream
from trio_llmstream import _exceptions

PACKAGE = pathlib.Path(trio_llmstream.__file__).parent


def test_all_is_sorted_and_complete() -> None:
    names = trio_llmstream.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(trio_llmstream, name), name
    public = {n for n in vars(trio_llmstream) if not n.startswith("_")}
    public -= {"sse", "testing", "providers", "journal"}  # submodules
    assert public <= set(names) | {"annotations"}


def test_core_imports_no_io_library() -> None:
    forbidden = {"trio", "httpx", "httpcore", "anyio", "asyncio", "socket", "hypercorn"}
    for path in (PACKAGE / "_core").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] not in forbidden, f"{path.name} imports {mod}"


def test_every_exception_has_one_root_and_is_in_the_tree_drawing() -> None:
    doc = _exceptions.__doc__ or ""
    classes = [
        obj for obj in vars(_exceptions).values()
        if inspect.isclass(obj) and issubclass(obj, Exception)
        and obj.__module__ == _exceptions.__name__
    ]
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, trio_llmstream.LLMStreamError)
        assert cls.__name__ in doc, f"{cls.__name__} missing from the tree drawing"
        assert isinstance(cls.retryable, bool)


def test_timeout_error_names_its_limit() -> None:
    err = trio_llmstream.APITimeoutError("first_token", 0.5)
    assert err.limit == "first_token"
    assert err.retryable
    assert "first_token" in str(err)


def test_every_public_enum_says_what_it_is() -> None:
    import enum

    import trio_llmstream.testing as testing

    for module in (trio_llmstream, testing):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, enum.Enum):
                doc = obj.__doc__ or ""
                assert doc, name
                assert not doc.startswith("An enumeration"), name
