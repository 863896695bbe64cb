"""Defining tools: ``FunctionTool``, the ``@function_tool`` decorator and ``ToolRegistry``.

This is the face of the tools package: what a user writes to give a model a tool. A
:class:`FunctionTool` is a function plus what the model is told about it (a name, a description
and the JSON schema of its arguments) and the ``prepare`` step that turns a call's JSON
arguments into the function's keyword arguments. :func:`function_tool` makes one from a plain
function: the description comes from the docstring (``_docstrings``), the schema and
``prepare`` from the signature (``_schema``, which uses ``_validate``). Running the calls is
``_execute``'s job; the loop that feeds results back to the model is ``_loop``'s.

Typing: ``FunctionTool`` is generic in the function's parameters and return type
(``FunctionTool[P, R]``), so a decorated function keeps its signature for type checkers:
``add(1, 2)`` and ``add.fn(1, 2)`` type-check, ``add("1", "2")`` does not. Code that holds
tools of any signature spells them ``FunctionTool[..., Any]``.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, overload

import attrs

from .._models import ToolSpec
from ._docstrings import parse_docstring
from ._schema import Prepare, compile_parameters, unwrap_partial

__all__ = [
    "FunctionTool",
    "ToolRegistry",
    "as_function_tool",
    "check_tool_name",
    "function_tool",
]

P = ParamSpec("P")
R = TypeVar("R")

#: OpenAI's rule for function names; most other servers accept a superset.
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


@attrs.frozen
class FunctionTool(Generic[P, R]):
    """A tool the model may call: ``fn`` plus what the model is told about it.

    ``fn`` may be sync (run in a worker thread) or async; it is called with the call's
    arguments, parsed from JSON, as keyword arguments. ``parameters`` is the JSON schema of
    those arguments (given by hand when the tool is made directly; :func:`function_tool`
    infers it). Calling the tool itself calls ``fn`` directly, with its own signature: no
    validation, conversion, thread or time limit — the tool is still the function.
    """

    fn: Callable[P, R]
    name: str
    description: str = ""
    parameters: Mapping[str, Any] = attrs.field(
        factory=lambda: {"type": "object", "properties": {}}
    )
    timeout: float | None = None
    #: Turns the parsed JSON arguments into the keyword arguments of ``fn``: validates them
    #: against ``parameters`` and converts values (enums, nested classes). Raises
    #: ``ToolArgumentError`` with a message meant for the model. None: passed as they are.
    prepare: Prepare | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


def check_tool_name(name: object) -> str:
    """Return ``name`` if it is a valid tool name (``^[a-zA-Z0-9_-]{1,64}$``), else raise
    ``ValueError`` saying why."""
    if not isinstance(name, str) or _TOOL_NAME.fullmatch(name) is None:
        raise ValueError(
            f"invalid tool name {name!r}: a tool name must be 1 to 64 characters, each a letter,"
            " digit, '_' or '-'"
        )
    return name


@overload
def function_tool(
    fn: Callable[P, R],
    /,
    *,
    name: str | None = ...,
    description: str | None = ...,
    timeout: float | None = ...,
    raw_schema: Mapping[str, Any] | None = ...,
) -> FunctionTool[P, R]: ...


@overload
def function_tool(
    fn: None = ...,
    /,
    *,
    name: str | None = ...,
    description: str | None = ...,
    timeout: float | None = ...,
    raw_schema: Mapping[str, Any] | None = ...,
) -> Callable[[Callable[P, R]], FunctionTool[P, R]]: ...


def function_tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    raw_schema: Mapping[str, Any] | None = None,
) -> FunctionTool[P, R] | Callable[[Callable[P, R]], FunctionTool[P, R]]:
    """Make a :class:`FunctionTool` from a sync or async function; usable bare or with options.

    ::

        @function_tool
        async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
            '''Current weather in a city.

            Args:
                city: City name, e.g. "Oslo".
                unit: Temperature unit.
            '''

    The decorated name is bound to the ``FunctionTool``, which is still callable as the
    function (``await get_weather("Oslo")``, or through ``get_weather.fn``) and keeps its
    signature for type checkers. The tool's ``parameters`` is the JSON schema
    inferred from the signature, and its ``prepare`` validates a call's parsed arguments
    against it and converts them into keyword arguments (raising ``ToolArgumentError`` with a
    message for the model). ``name`` defaults to the function's ``__name__``, ``description``
    to the docstring's first paragraph.

    With ``raw_schema`` the schema is not inferred: it is used as given, arguments are
    validated against it and passed on unconverted (names the function does not accept are
    rejected unless it takes ``**kwargs``).

    Raises ``TypeError`` for a parameter whose annotation has no JSON form (naming it) and
    ``ValueError`` for an invalid name or timeout.
    """
    if fn is None:

        def decorate(f: Callable[P, R]) -> FunctionTool[P, R]:
            return _make_tool(f, name, description, timeout, raw_schema)

        return decorate
    return _make_tool(fn, name, description, timeout, raw_schema)


class ToolRegistry:
    """A set of tools with unique, valid names, in the order they were added.

    Iterating gives the ``FunctionTool`` objects, so a registry can be passed wherever a list
    of tools is expected (``open_llm_stream(..., tools=registry)``); :meth:`as_mapping` gives
    the name-to-tool mapping ``run_tool_call`` takes, and :attr:`specs` what a request sends.
    """

    __slots__ = ("_tools",)

    def __init__(self, tools: Iterable[FunctionTool[..., Any] | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, FunctionTool[..., Any]] = {}
        self.extend(tools)

    def add(self, tool: Callable[P, R], /) -> FunctionTool[P, R]:
        """Add a tool (a plain function is decorated with :func:`function_tool`); return it.

        Usable as a decorator (the tool keeps the function's signature, as with
        ``@function_tool``). Raises ``ValueError`` if the name is invalid or already taken.
        """
        made = as_function_tool(tool)
        if made.name in self._tools:
            raise ValueError(
                f"duplicate tool name {made.name!r}: a tool by that name is registered"
            )
        self._tools[made.name] = made
        return made

    def extend(self, tools: Iterable[FunctionTool[..., Any] | Callable[..., Any]], /) -> None:
        """Add several tools; all or none (a duplicate name raises before any is added)."""
        made = [as_function_tool(t) for t in tools]
        seen = set(self._tools)
        for tool in made:
            if tool.name in seen:
                raise ValueError(
                    f"duplicate tool name {tool.name!r}: a tool by that name is registered"
                )
            seen.add(tool.name)
        for tool in made:
            self._tools[tool.name] = tool

    def remove(self, name: str, /) -> FunctionTool[..., Any]:
        """Remove and return the tool called ``name`` (``KeyError`` if there is none)."""
        return self._tools.pop(name)

    def get(self, name: str, /) -> FunctionTool[..., Any] | None:
        """The tool called ``name``, or None."""
        return self._tools.get(name)

    def __getitem__(self, name: str, /) -> FunctionTool[..., Any]:
        return self._tools[name]

    def __contains__(self, name: object, /) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[FunctionTool[..., Any]]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        """The tool names, in the order added."""
        return list(self._tools)

    @property
    def specs(self) -> list[ToolSpec]:
        """The ``ToolSpec`` of each tool, in the order added, for a request's ``tools``."""
        return [tool.spec for tool in self._tools.values()]

    def as_mapping(self) -> Mapping[str, FunctionTool[..., Any]]:
        """A read-only name-to-tool view (live: it follows later additions)."""
        return types.MappingProxyType(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names!r})"


def as_function_tool(tool: Callable[P, R]) -> FunctionTool[P, R]:
    """``tool`` if it is a ``FunctionTool`` (its name checked), else ``function_tool(tool)``."""
    if isinstance(tool, FunctionTool):
        check_tool_name(tool.name)
        return tool
    if not callable(tool):
        raise TypeError(f"a tool must be a FunctionTool or a function, not {type(tool).__name__}")
    return function_tool(tool)



def _make_tool(
    fn: Callable[P, R],
    name: str | None,
    description: str | None,
    timeout: float | None,
    raw_schema: Mapping[str, Any] | None,
) -> FunctionTool[P, R]:
    if isinstance(fn, FunctionTool):
        raise TypeError(f"{fn.name!r} is already a FunctionTool")
    if not callable(fn):
        raise TypeError(f"function_tool needs a function, not {type(fn).__name__}")
    if name is None:
        name = getattr(fn, "__name__", None)
        if name is None:
            raise ValueError(f"{fn!r} has no __name__: pass name=")
    check_tool_name(name)
    if timeout is not None and not timeout > 0:
        raise ValueError(f"tool {name!r}: timeout must be positive, got {timeout!r}")
    summary, param_docs = parse_docstring(inspect.getdoc(unwrap_partial(fn)))
    if description is None:
        description = summary
    parameters, prepare = compile_parameters(name, fn, param_docs, raw_schema)
    return FunctionTool(
        fn=fn, name=name, description=description, parameters=parameters,
        timeout=timeout, prepare=prepare,
    )
