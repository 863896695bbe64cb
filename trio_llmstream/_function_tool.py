"""Function tools from plain Python functions: schema inference, validation, conversion.

A model calls a tool by emitting a JSON object of arguments. Three things must agree for that
to work: the JSON schema the model is shown, the check that what it sent fits that schema, and
the conversion of the checked JSON into the Python values the function expects. Writing all
three by hand drifts; here all three come from one place, the function's signature.

**Inference.** :func:`function_tool` walks each parameter's annotation once, at decoration
time, and compiles it into a node: a JSON schema fragment plus a converter. The supported
annotations are exactly those that have one obvious JSON form and one obvious way back —
scalars, ``None``, ``Literal``, enums, unions, homogeneous sequences and tuples, string-keyed
dicts, and records (attrs classes and TypedDicts, recursively). Anything else (a bare class,
``*args``, a missing annotation, a recursive type) is a ``TypeError`` at decoration, naming
the parameter, because a schema the model cannot satisfy — or one we would silently widen —
fails far from its cause, in the middle of a conversation. Descriptions come from
``Annotated[X, "text"]`` or :class:`Param`, else from the docstring (Google, reST or numpy
style); the tool description is the docstring's first paragraph.

**Validation.** A small validator checks the parsed arguments against the schema *before*
anything is converted or called. It understands the keywords we generate and the common ones
of hand-written schemas (``type``, ``properties``, ``required``, ``additionalProperties``,
``enum``, ``const``, ``anyOf``/``oneOf``/``allOf``, ``items``/``prefixItems``, the numeric,
length and item-count bounds, ``pattern``, ``nullable``) and ignores the rest, so a raw schema
with ``$ref`` or ``format`` still works, just checked less. Numbers follow JSON, not Python:
``true`` is not an integer, ``3`` is a valid number and ``3.0`` a valid integer. The point of
doing this ourselves instead of depending on a full JSON-schema library is the messages: the
model reads them and retries, so each names the argument by its JSON path and says what was
expected and what came (``argument 'trip.legs[2].city' must be a string, got integer``), and
all problems (up to a few) are reported at once so one retry can fix them all.

**Conversion.** Only validated data is converted, so converters are simple: enum members are
looked up by value, attrs classes are built from their dicts (nested, in lists), tuples become
tuples. A union converts with the branch the value validates against, preferring an exact
literal or enum match, then ``int`` for JSON integers and ``float`` for JSON fractions.
Arguments the model left out are not passed at all, so Python fills the defaults — the schema's
``default`` is only advice to the model.
"""

from __future__ import annotations

import collections.abc
import contextlib
import enum
import functools
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, overload

import attrs

from ._models import ToolSpec
from ._tools import FunctionTool, ToolArgumentError

__all__ = [
    "Param",
    "ToolRegistry",
    "check_tool_name",
    "function_tool",
    "validate_arguments",
]

#: OpenAI's rule for function names; most other servers accept a superset.
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")

#: How many problems one error message reports; more are summarized.
_MAX_ERRORS = 8


# ---------------------------------------------------------------------------------------------
# Public API


@attrs.frozen
class Param:
    """Schema details for one parameter or field, given as ``Annotated[X, Param(...)]``.

    ``Annotated[int, "how many days"]`` is the short form for a description alone. The bounds
    are added to the schema (so the model sees them) and enforced by the validation::

        def forecast(days: Annotated[int, Param("days ahead", minimum=1, maximum=14)]) -> str:
            ...

    ``extra`` is merged into the schema as is (for keywords without a field here, such as
    ``"examples"``); keywords the validator does not know are shown to the model but not
    enforced.
    """

    description: str | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    min_length: int | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    pattern: str | None = attrs.field(default=None)
    extra: Mapping[str, Any] = attrs.field(factory=dict, hash=False)

    @pattern.validator
    def _check_pattern(self, _attr: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None:
            re.compile(value)  # re.error (a ValueError) if invalid

    def keywords(self) -> dict[str, Any]:
        """The JSON-schema keywords this marker adds."""
        out: dict[str, Any] = {}
        pairs = (
            ("description", self.description),
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
            ("minItems", self.min_items),
            ("maxItems", self.max_items),
            ("pattern", self.pattern),
        )
        for key, value in pairs:
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out


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
    fn: Callable[..., Any],
    /,
    *,
    name: str | None = ...,
    description: str | None = ...,
    timeout: float | None = ...,
    raw_schema: Mapping[str, Any] | None = ...,
) -> FunctionTool: ...


@overload
def function_tool(
    fn: None = ...,
    /,
    *,
    name: str | None = ...,
    description: str | None = ...,
    timeout: float | None = ...,
    raw_schema: Mapping[str, Any] | None = ...,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def function_tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    raw_schema: Mapping[str, Any] | None = None,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a :class:`FunctionTool` from a sync or async function; usable bare or with options.

    ::

        @function_tool
        async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
            '''Current weather in a city.

            Args:
                city: City name, e.g. "Oslo".
                unit: Temperature unit.
            '''

    The decorated name is bound to the ``FunctionTool``, not to the function: call the function
    directly through ``get_weather.fn(...)``. The tool's ``parameters`` is the JSON schema
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

        def decorate(f: Callable[..., Any]) -> FunctionTool:
            return _make_tool(f, name, description, timeout, raw_schema)

        return decorate
    return _make_tool(fn, name, description, timeout, raw_schema)


def validate_arguments(arguments: object, schema: Mapping[str, Any] | bool) -> None:
    """Check parsed JSON ``arguments`` against ``schema``; raise ``ToolArgumentError`` if not.

    The message lists every problem found (up to a few), each naming the argument by its path,
    e.g. ``missing required argument 'city'; argument 'days' must be an integer, got string``.
    Unknown schema keywords are ignored.
    """
    errors: list[str] = []
    _check(arguments, schema, "", errors, _MAX_ERRORS + 1)
    if errors:
        raise ToolArgumentError(_join_errors(errors))


class ToolRegistry:
    """A set of tools with unique, valid names, in the order they were added.

    Iterating gives the ``FunctionTool`` objects, so a registry can be passed wherever a list
    of tools is expected (``open_llm_stream(..., tools=registry)``); :meth:`as_mapping` gives
    the name-to-tool mapping ``run_tool_call`` takes, and :attr:`specs` what a request sends.
    """

    __slots__ = ("_tools",)

    def __init__(self, tools: Iterable[FunctionTool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, FunctionTool] = {}
        self.extend(tools)

    def add(self, tool: FunctionTool | Callable[..., Any], /) -> FunctionTool:
        """Add a tool (a plain function is decorated with :func:`function_tool`); return it.

        Usable as a decorator. Raises ``ValueError`` if the name is invalid or already taken.
        """
        made = as_function_tool(tool)
        if made.name in self._tools:
            raise ValueError(
                f"duplicate tool name {made.name!r}: a tool by that name is registered"
            )
        self._tools[made.name] = made
        return made

    def extend(self, tools: Iterable[FunctionTool | Callable[..., Any]], /) -> None:
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

    def remove(self, name: str, /) -> FunctionTool:
        """Remove and return the tool called ``name`` (``KeyError`` if there is none)."""
        return self._tools.pop(name)

    def get(self, name: str, /) -> FunctionTool | None:
        """The tool called ``name``, or None."""
        return self._tools.get(name)

    def __getitem__(self, name: str, /) -> FunctionTool:
        return self._tools[name]

    def __contains__(self, name: object, /) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[FunctionTool]:
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

    def as_mapping(self) -> Mapping[str, FunctionTool]:
        """A read-only name-to-tool view (live: it follows later additions)."""
        return types.MappingProxyType(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names!r})"


def as_function_tool(tool: FunctionTool | Callable[..., Any]) -> FunctionTool:
    """``tool`` if it is a ``FunctionTool`` (its name checked), else ``function_tool(tool)``."""
    if isinstance(tool, FunctionTool):
        check_tool_name(tool.name)
        return tool
    if not callable(tool):
        raise TypeError(f"a tool must be a FunctionTool or a function, not {type(tool).__name__}")
    return function_tool(tool)


# ---------------------------------------------------------------------------------------------
# Building a tool


def _make_tool(
    fn: Callable[..., Any],
    name: str | None,
    description: str | None,
    timeout: float | None,
    raw_schema: Mapping[str, Any] | None,
) -> FunctionTool:
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
    summary, param_docs = _parse_docstring(inspect.getdoc(_unwrap_partial(fn)))
    if description is None:
        description = summary
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"tool {name!r}: cannot read the signature of {fn!r}: {exc}") from None

    if raw_schema is not None:
        schema = _copy_raw_schema(name, raw_schema)
        prepare: Callable[[dict[str, Any]], dict[str, Any]] = _RawPrepare(
            schema, _RawPrepare.accepted(signature), _RawPrepare.needed(signature)
        )
        return FunctionTool(
            fn=fn, name=name, description=description, parameters=schema,
            timeout=timeout, prepare=prepare,
        )

    hints = _type_hints(_hints_target(fn), f"tool {name!r}")
    properties: dict[str, Any] = {}
    required: list[str] = []
    plans: list[tuple[str, _Node]] = []
    for param in signature.parameters.values():
        where = f"tool {name!r}: parameter {param.name!r}"
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(f"{where} is positional-only; tool arguments are passed by keyword")
        if param.kind is param.VAR_POSITIONAL:
            raise TypeError(f"{where}: *{param.name} is not supported; list the arguments")
        if param.kind is param.VAR_KEYWORD:
            raise TypeError(
                f"{where}: **{param.name} is not supported; list the arguments, "
                "or pass raw_schema="
            )
        if param.name not in hints:
            raise TypeError(f"{where} has no type annotation")
        node = _Compiler(where).compile(hints[param.name])
        schema = dict(node.schema)
        if not node.described and param.name in param_docs:
            schema["description"] = param_docs[param.name]
        if param.default is param.empty:
            required.append(param.name)
        else:
            _add_default(schema, param.default)
        properties[param.name] = schema
        plans.append((param.name, node))
    parameters = _object_schema(properties, required)
    return FunctionTool(
        fn=fn, name=name, description=description, parameters=parameters,
        timeout=timeout, prepare=_Prepare(parameters, tuple(plans)),
    )


def _unwrap_partial(fn: Callable[..., Any]) -> Callable[..., Any]:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _hints_target(fn: Callable[..., Any]) -> Any:
    fn = _unwrap_partial(fn)
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn):
        return fn
    if inspect.isclass(fn):
        return fn.__init__
    return type(fn).__call__


def _type_hints(obj: Any, where: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception as exc:  # NameError for unresolvable strings, and worse
        raise TypeError(f"{where}: cannot resolve the type annotations: {exc}") from None


def _object_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    return schema


def _copy_raw_schema(name: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise TypeError(f"tool {name!r}: raw_schema must be a mapping, not {type(raw).__name__}")
    try:
        schema = json.loads(json.dumps(raw, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"tool {name!r}: raw_schema is not JSON: {exc}") from None
    kind = schema.get("type")
    if kind is not None and kind != "object":
        raise TypeError(f"tool {name!r}: raw_schema must describe an object, not {kind!r}")
    return typing.cast(dict[str, Any], schema)


def _add_default(schema: dict[str, Any], default: Any) -> None:
    # If the default has no JSON form, Python still fills it; the model is just not told.
    with contextlib.suppress(_NotJSON):
        schema["default"] = _to_json(default)


class _NotJSON(Exception):
    pass


def _to_json(value: Any) -> Any:
    """``value`` in JSON form (the inverse of conversion), or raise _NotJSON."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return _to_json(value.value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJSON
        return float(value)
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise _NotJSON
        return {k: _to_json(v) for k, v in value.items()}
    if attrs.has(type(value)):
        return {
            f.alias: _to_json(getattr(value, f.name))
            for f in attrs.fields(type(value)) if f.init
        }
    raise _NotJSON


# ---------------------------------------------------------------------------------------------
# Preparing a call's arguments


class _ConvertError(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


@attrs.frozen
class _Prepare:
    """``FunctionTool.prepare`` for an inferred schema: validate, then convert."""

    schema: Mapping[str, Any]
    plans: tuple[tuple[str, _Node], ...]

    def __call__(self, arguments: dict[str, Any]) -> dict[str, Any]:
        validate_arguments(arguments, self.schema)
        out: dict[str, Any] = {}
        try:
            for name, node in self.plans:
                if name in arguments:
                    out[name] = node.convert(arguments[name], name)
        except _ConvertError as exc:
            raise ToolArgumentError(_at(exc.path, exc.problem)) from None
        return out


@attrs.frozen
class _RawPrepare:
    """``FunctionTool.prepare`` for a raw schema: validate, check names, pass through."""

    schema: Mapping[str, Any]
    accepts: frozenset[str] | None  # None: the function takes **kwargs
    needs: tuple[str, ...]

    @staticmethod
    def accepted(signature: inspect.Signature) -> frozenset[str] | None:
        params = signature.parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return frozenset(
            p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )

    @staticmethod
    def needed(signature: inspect.Signature) -> tuple[str, ...]:
        return tuple(
            p.name for p in signature.parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )

    def __call__(self, arguments: dict[str, Any]) -> dict[str, Any]:
        validate_arguments(arguments, self.schema)
        errors = [f"missing required argument {n!r}" for n in self.needs if n not in arguments]
        if self.accepts is not None:
            allowed = ", ".join(sorted(self.accepts))
            errors += [
                f"unexpected argument {k!r}" + (f" (allowed: {allowed})" if allowed else "")
                for k in arguments if k not in self.accepts
            ]
        if errors:
            raise ToolArgumentError(_join_errors(errors))
        return dict(arguments)


# ---------------------------------------------------------------------------------------------
# Compiling annotations: a JSON schema fragment plus a converter back to Python


Converter = Callable[[Any, str], Any]  # (validated JSON value, its path) -> Python value


def _same(value: Any, _path: str) -> Any:
    return value


def _to_int(value: Any, _path: str) -> int:
    return int(value)


def _to_float(value: Any, path: str) -> float:
    try:
        return float(value)
    except OverflowError:
        raise _ConvertError(path, "is too large for a float") from None


@attrs.frozen
class _Node:
    schema: dict[str, Any]
    convert: Converter
    #: What a union prefers: "choice" (enum/literal), "int", "float" or "other".
    tag: str = "other"
    #: Whether an explicit description was given (Annotated/Param), which beats docstrings.
    described: bool = False


_SEQUENCES: frozenset[Any] = frozenset(
    {list, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable,
     collections.abc.Collection}
)
_MAPPINGS: frozenset[Any] = frozenset(
    {dict, collections.abc.Mapping, collections.abc.MutableMapping}
)
_REQUIRED_MARKERS = frozenset({"Required", "NotRequired", "ReadOnly"})

_SUPPORTED = (
    "str, int, float, bool, None, Any, Literal[...], Enum subclasses, unions/Optional, "
    "list[X], Sequence[X], tuple[X, ...], tuple[X, Y], dict[str, X], attrs classes, TypedDicts"
    " and Annotated[X, ...] of these"
)


class _Compiler:
    """Compiles annotations for one parameter; ``where`` names it in errors."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.active: list[type] = []  # records being compiled, to refuse recursive types

    def fail(self, tp: Any, why: str = "") -> TypeError:
        shown = tp.__qualname__ if isinstance(tp, type) else repr(tp)
        text = f"{self.where}: unsupported annotation {shown}"
        return TypeError(f"{text}: {why}" if why else f"{text} (supported: {_SUPPORTED})")

    def compile(self, tp: Any) -> _Node:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            return self._annotated(args[0], tp.__metadata__)
        if tp is Any:
            return _Node({}, _same)
        if tp is None or tp is type(None):
            return _Node({"type": "null"}, _same)
        if tp is str:
            return _Node({"type": "string"}, _same)
        if tp is bool:
            return _Node({"type": "boolean"}, _same)
        if tp is int:
            return _Node({"type": "integer"}, _to_int, tag="int")
        if tp is float:
            return _Node({"type": "number"}, _to_float, tag="float")
        if origin is Literal:
            return self._literal(tp, args)
        if origin is typing.Union or origin is types.UnionType:
            return self._union(args)
        if _member(tp, _SEQUENCES) or _member(origin, _SEQUENCES):
            return self._sequence(args[0] if args else Any, list)
        if tp is tuple or origin is tuple:
            return self._tuple(tp, args)
        if _member(tp, _MAPPINGS) or _member(origin, _MAPPINGS):
            return self._mapping(tp, args)
        if isinstance(tp, str | typing.ForwardRef):
            raise self.fail(tp, "unresolved forward reference")
        if isinstance(tp, type) and origin is None:
            if issubclass(tp, enum.Enum):
                return self._enum(tp)
            if attrs.has(tp):
                return self._record(tp, self._attrs_fields)
            if issubclass(tp, dict) and hasattr(tp, "__required_keys__"):
                return self._record(tp, self._typeddict_fields)
        raise self.fail(tp)

    def _annotated(self, base: Any, metadata: tuple[Any, ...]) -> _Node:
        node = self.compile(base)
        schema = dict(node.schema)
        described = node.described
        for item in metadata:
            if isinstance(item, str):
                schema["description"] = item
                described = True
            elif isinstance(item, Param):
                keywords = item.keywords()
                schema.update(keywords)
                described = described or "description" in keywords
            # Other metadata belongs to other libraries; not ours to judge.
        return attrs.evolve(node, schema=schema, described=described)

    def _choice_schema(self, tp: Any, values: list[Any]) -> dict[str, Any]:
        kinds: list[str] = []
        for value in values:
            kind = _scalar_kind(value)
            if kind is None:
                raise self.fail(tp, f"value {value!r} has no JSON form")
            if kind not in kinds:
                kinds.append(kind)
        return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": values}

    def _literal(self, tp: Any, options: tuple[Any, ...]) -> _Node:
        wire = [o.value if isinstance(o, enum.Enum) else o for o in options]
        schema = self._choice_schema(tp, wire)
        pairs = tuple(zip(wire, options, strict=True))

        def convert(value: Any, _path: str) -> Any:
            for json_value, option in pairs:
                if _json_equal(value, json_value):
                    return option
            raise AssertionError("validated literal matched no option")  # pragma: no cover

        return _Node(schema, convert, tag="choice")

    def _enum(self, tp: type[enum.Enum]) -> _Node:
        members = list(tp)
        if not members:
            raise self.fail(tp, "an enum with no members")
        schema = self._choice_schema(tp, [m.value for m in members])

        def convert(value: Any, _path: str) -> Any:
            for member in members:
                if _json_equal(value, member.value):
                    return member
            raise AssertionError("validated enum value matched no member")  # pragma: no cover

        return _Node(schema, convert, tag="choice")

    def _union(self, members: tuple[Any, ...]) -> _Node:
        nodes = [self.compile(m) for m in members]
        bare = all(set(n.schema) == {"type"} and isinstance(n.schema["type"], str) for n in nodes)
        if bare:
            kinds = list(dict.fromkeys(n.schema["type"] for n in nodes))
            schema: dict[str, Any] = {"type": kinds[0] if len(kinds) == 1 else kinds}
        else:
            schema = {"anyOf": [n.schema for n in nodes]}

        def convert(value: Any, path: str) -> Any:
            best: _Node | None = None
            best_rank = 99
            for node in nodes:
                rank = _preference(node, value)
                if rank < best_rank and _is_valid(value, node.schema):
                    best, best_rank = node, rank
            assert best is not None, "validated union value matched no member"
            return best.convert(value, path)

        return _Node(schema, convert)

    def _sequence(self, item_tp: Any, build: Callable[[list[Any]], Any]) -> _Node:
        item = self.compile(item_tp)
        item_convert = item.convert

        def convert(value: Any, path: str) -> Any:
            return build([item_convert(v, f"{path}[{i}]") for i, v in enumerate(value)])

        return _Node({"type": "array", "items": item.schema}, convert)

    def _tuple(self, tp: Any, args: tuple[Any, ...]) -> _Node:
        if tp is tuple or tp is typing.Tuple:  # noqa: UP006
            return self._sequence(Any, tuple)
        if len(args) == 2 and args[1] is Ellipsis:
            return self._sequence(args[0], tuple)
        if not args or args == ((),):  # tuple[()]
            return _Node({"type": "array", "maxItems": 0}, lambda v, p: ())
        if Ellipsis in args:
            raise self.fail(tp)
        nodes = [self.compile(a) for a in args]
        schema = {
            "type": "array",
            "prefixItems": [n.schema for n in nodes],
            "minItems": len(nodes),
            "maxItems": len(nodes),
        }

        def convert(value: Any, path: str) -> Any:
            pairs = enumerate(zip(nodes, value, strict=True))
            return tuple(n.convert(v, f"{path}[{i}]") for i, (n, v) in pairs)

        return _Node(schema, convert)

    def _mapping(self, tp: Any, args: tuple[Any, ...]) -> _Node:
        key_tp, value_tp = args if args else (str, Any)
        if key_tp is not str:
            raise self.fail(tp, "JSON object keys are strings; use dict[str, X]")
        node = self.compile(value_tp)
        value_convert = node.convert

        def convert(value: Any, path: str) -> Any:
            return {k: value_convert(v, _join(path, k)) for k, v in value.items()}

        return _Node({"type": "object", "additionalProperties": node.schema}, convert)

    # Records: attrs classes and TypedDicts share everything but how fields are listed.

    def _record(
        self,
        tp: type,
        list_fields: Callable[[type], list[tuple[str, str, Any, bool, Any]]],
    ) -> _Node:
        if tp in self.active:
            chain = " -> ".join(t.__qualname__ for t in [*self.active, tp])
            raise self.fail(tp, f"recursive types have no finite schema ({chain})")
        self.active.append(tp)
        try:
            summary, field_docs = _parse_docstring(tp.__dict__.get("__doc__"))
            properties: dict[str, Any] = {}
            required: list[str] = []
            plans: list[tuple[str, str, _Node]] = []
            for key, attr_name, field_tp, is_required, default in list_fields(tp):
                node = self.compile(field_tp)
                schema = dict(node.schema)
                doc = field_docs.get(key) or field_docs.get(attr_name)
                if not node.described and doc:
                    schema["description"] = doc
                if is_required:
                    required.append(key)
                elif default is not attrs.NOTHING:
                    _add_default(schema, default)
                properties[key] = schema
                plans.append((key, attr_name, node))
        finally:
            self.active.pop()
        schema = _object_schema(properties, required)
        if summary:
            schema["description"] = summary
        is_attrs = attrs.has(tp)

        def convert(value: Any, path: str) -> Any:
            kwargs = {
                key: node.convert(value[key], _join(path, key))
                for key, _name, node in plans if key in value
            }
            if not is_attrs:
                return kwargs
            try:
                return tp(**kwargs)
            except (TypeError, ValueError) as exc:  # the class's own validators said no
                raise _ConvertError(path, f"is invalid: {exc}") from None

        return _Node(schema, convert)

    def _attrs_fields(self, tp: type) -> list[tuple[str, str, Any, bool, Any]]:
        hints = _type_hints(tp, f"{self.where}: class {tp.__qualname__}")
        out: list[tuple[str, str, Any, bool, Any]] = []
        for field in attrs.fields(tp):
            if not field.init:
                continue
            field_tp = hints.get(field.name, field.type)
            if field_tp is None:
                raise self.fail(tp, f"field {field.name!r} has no type annotation")
            if isinstance(field_tp, str):
                raise self.fail(tp, f"field {field.name!r}: unresolved annotation {field_tp!r}")
            desc = field.metadata.get("description")
            if isinstance(desc, str):
                field_tp = typing.Annotated[field_tp, desc]
            default = field.default
            is_required = default is attrs.NOTHING
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = attrs.NOTHING  # not evaluated: a factory may have effects
            out.append((field.alias, field.name, field_tp, is_required, default))
        return out

    def _typeddict_fields(self, tp: type) -> list[tuple[str, str, Any, bool, Any]]:
        hints = _type_hints(tp, f"{self.where}: TypedDict {tp.__qualname__}")
        required_keys: frozenset[str] = getattr(tp, "__required_keys__", frozenset())
        out: list[tuple[str, str, Any, bool, Any]] = []
        for key, field_tp in hints.items():
            out.append((key, key, _strip_required(field_tp), key in required_keys, attrs.NOTHING))
        return out


def _member(tp: Any, group: frozenset[Any]) -> bool:
    try:
        return tp in group
    except TypeError:  # an unhashable annotation is in no group
        return False


def _strip_required(tp: Any) -> Any:
    """``Required[X]``/``NotRequired[X]``/``ReadOnly[X]`` -> X, also inside Annotated."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return typing.Annotated[(_strip_required(typing.get_args(tp)[0]), *tp.__metadata__)]
    if origin is not None and getattr(origin, "_name", None) in _REQUIRED_MARKERS:
        return _strip_required(typing.get_args(tp)[0])
    return tp


def _preference(node: _Node, value: Any) -> int:
    """Lower is preferred when several union members accept ``value``."""
    if node.tag == "choice":
        return 0
    if node.tag == "int":
        return 1 if isinstance(value, int) else 3
    if node.tag == "float":
        return 1 if isinstance(value, float) else 2
    return 2


# ---------------------------------------------------------------------------------------------
# Docstrings


_GOOGLE_SECTIONS = frozenset(
    {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments",
     "kwargs", "other parameters", "attributes"}
)
_GOOGLE_HEADER = re.compile(r"([A-Za-z][A-Za-z ]*):")
_GOOGLE_ENTRY = re.compile(r"\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:(.*)")
_REST_FIELD = re.compile(
    r":(?:param|parameter|arg|argument|key|keyword|ivar|var|cvar)\s+(?:[^:]*?\s)?\*{0,2}(\w+)"
    r"\s*:(.*)"
)
_NUMPY_RULE = re.compile(r"-{3,}")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(first paragraph, {parameter name: description}) of a docstring.

    Understands Google (``Args:`` / ``Attributes:`` sections), reST (``:param name: text``)
    and numpy (``Parameters`` underlined with dashes) styles.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    params: dict[str, str] = {}
    summary: list[str] = []
    for line in lines:
        text = line.strip()
        if not text or _starts_section(text) or _REST_FIELD.match(text):
            break
        summary.append(text)
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        header = _GOOGLE_HEADER.fullmatch(text)
        if header and header.group(1).lower() in _GOOGLE_SECTIONS:
            i = _google_section(lines, i, params)
            continue
        if (
            text.lower() in _GOOGLE_SECTIONS and i + 1 < len(lines)
            and _NUMPY_RULE.fullmatch(lines[i + 1].strip())
        ):
            i = _numpy_section(lines, i, params)
            continue
        field = _REST_FIELD.match(text)
        if field:
            field_indent = _indent(lines[i])
            parts = [field.group(2).strip()]
            i += 1
            while (
                i < len(lines) and lines[i].strip() and _indent(lines[i]) > field_indent
                and not lines[i].strip().startswith(":")
            ):
                parts.append(lines[i].strip())
                i += 1
            params.setdefault(field.group(1), _words(parts))
            continue
        i += 1
    return " ".join(summary), params


def _starts_section(text: str) -> bool:
    header = _GOOGLE_HEADER.fullmatch(text)
    return bool(header) or text.lower() in _GOOGLE_SECTIONS


def _words(parts: list[str]) -> str:
    return " ".join(p for p in parts if p)


def _google_section(lines: list[str], start: int, params: dict[str, str]) -> int:
    base = _indent(lines[start])
    i = start + 1
    entry_indent: int | None = None
    name: str | None = None
    parts: list[str] = []

    def flush() -> None:
        if name is not None:
            params.setdefault(name, _words(parts))

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        indent = _indent(line)
        if indent <= base:
            break
        if entry_indent is None:
            entry_indent = indent
        entry = _GOOGLE_ENTRY.fullmatch(line.strip()) if indent <= entry_indent else None
        if entry:
            flush()
            name, parts = entry.group(1), [entry.group(2).strip()]
        elif name is not None:
            parts.append(line.strip())
        i += 1
    flush()
    return i


def _numpy_section(lines: list[str], start: int, params: dict[str, str]) -> int:
    base = _indent(lines[start])
    i = start + 2
    names: list[str] = []
    parts: list[str] = []

    def flush() -> None:
        for name in names:
            params.setdefault(name, _words(parts))

    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and _NUMPY_RULE.fullmatch(lines[i + 1].strip()):
            break  # the next section's header
        if not line.strip():
            i += 1
            continue
        if _indent(line) <= base:
            flush()
            head = line.strip().split(":", 1)[0]
            names = [n.strip().lstrip("*") for n in head.split(",") if n.strip()]
            parts = []
        else:
            parts.append(line.strip())
        i += 1
    flush()
    return i


# ---------------------------------------------------------------------------------------------
# Validation


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _at(path: str, problem: str) -> str:
    return f"argument {path!r} {problem}" if path else f"arguments {problem}"


def _join_errors(errors: list[str]) -> str:
    if len(errors) > _MAX_ERRORS:
        return "; ".join(errors[:_MAX_ERRORS]) + "; and more"
    return "; ".join(errors)


def _show(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scalar_kind(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number" if math.isfinite(value) else None
    if isinstance(value, str):
        return "string"
    return None


def _kind(value: Any) -> str:
    """The JSON type of ``value``, for "got ..." in messages."""
    kind = _scalar_kind(value)
    if kind is not None:
        return kind
    if isinstance(value, float):
        return "a non-finite number"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _has_type(value: Any, name: Any) -> bool:
    if name == "string":
        return isinstance(value, str)
    if name == "integer":
        if isinstance(value, float):
            return math.isfinite(value) and value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return _is_number(value)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if name == "array":
        return isinstance(value, list | tuple)
    if name == "object":
        return isinstance(value, Mapping)
    return True  # an unknown type name: not ours to enforce


_ARTICLES = {
    "string": "a string", "integer": "an integer", "number": "a number",
    "boolean": "a boolean", "null": "null", "array": "an array", "object": "an object",
}


def _describe_types(names: list[Any]) -> str:
    words = [_ARTICLES.get(n, repr(n)) for n in names]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _describe(schema: Any) -> str:
    """A short phrase for what ``schema`` accepts, for an anyOf that matched nothing."""
    if not isinstance(schema, Mapping):
        return "anything" if schema is not False else "nothing"
    if "const" in schema:
        return _show(schema["const"])
    if isinstance(schema.get("enum"), list):
        return "one of " + ", ".join(_show(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else list(kind)
        if schema.get("nullable") is True:
            names.append("null")
        return _describe_types(names)
    return "another form"


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is None and b is None


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None  # an invalid pattern in someone's schema is not the model's fault


def _is_valid(value: Any, schema: Any) -> bool:
    errors: list[str] = []
    _check(value, schema, "", errors, 1)
    return not errors


def _type_admits(schema: Any, value: Any) -> bool:
    if not isinstance(schema, Mapping):
        return schema is not False
    if value is None and schema.get("nullable") is True:
        return True
    kind = schema.get("type")
    if kind is None:
        return True
    names = [kind] if isinstance(kind, str) else kind
    return any(_has_type(value, n) for n in names)


def _check(value: Any, schema: Any, path: str, out: list[str], limit: int) -> None:
    """Append to ``out`` (up to ``limit`` entries) what is wrong with ``value``."""
    if len(out) >= limit or schema is True:
        return
    if schema is False:
        out.append(_at(path, "is not allowed"))
        return
    if not isinstance(schema, Mapping):
        return
    if value is None and schema.get("nullable") is True:
        return

    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else list(kind)
        if schema.get("nullable") is True:
            names.append("null")
        if not any(_has_type(value, n) for n in names):
            out.append(_at(path, f"must be {_describe_types(names)}, got {_kind(value)}"))
            return  # nothing else is worth saying about a value of the wrong type
    if "const" in schema and not _json_equal(value, schema["const"]):
        out.append(_at(path, f"must be {_show(schema['const'])}, got {_show(value)}"))
        return
    options = schema.get("enum")
    if isinstance(options, list) and not any(_json_equal(value, o) for o in options):
        shown = ", ".join(_show(o) for o in options)
        out.append(_at(path, f"must be one of {shown}, got {_show(value)}"))
        return

    if _is_number(value):
        _check_number(value, schema, path, out)
    elif isinstance(value, str):
        _check_string(value, schema, path, out)
    elif isinstance(value, list | tuple):
        _check_array(value, schema, path, out, limit)
    elif isinstance(value, Mapping):
        _check_object(value, schema, path, out, limit)

    for sub in schema.get("allOf") or ():
        _check(value, sub, path, out, limit)
    if "anyOf" in schema:
        _check_any(value, list(schema["anyOf"]), path, out, limit, one=False)
    if "oneOf" in schema:
        _check_any(value, list(schema["oneOf"]), path, out, limit, one=True)


def _check_number(value: float, schema: Mapping[str, Any], path: str, out: list[str]) -> None:
    low: Any = schema.get("minimum")
    high: Any = schema.get("maximum")
    ex_low: Any = schema.get("exclusiveMinimum")
    ex_high: Any = schema.get("exclusiveMaximum")
    if ex_low is True:  # draft 4: a flag on minimum
        ex_low, low = low, None
    if ex_high is True:
        ex_high, high = high, None
    if _is_number(low) and value < low:
        out.append(_at(path, f"must be >= {low}, got {_show(value)}"))
    if _is_number(ex_low) and value <= ex_low:
        out.append(_at(path, f"must be > {ex_low}, got {_show(value)}"))
    if _is_number(high) and value > high:
        out.append(_at(path, f"must be <= {high}, got {_show(value)}"))
    if _is_number(ex_high) and value >= ex_high:
        out.append(_at(path, f"must be < {ex_high}, got {_show(value)}"))


def _check_string(value: str, schema: Mapping[str, Any], path: str, out: list[str]) -> None:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(value) < low:
        out.append(_at(path, f"must be at least {low} characters long, got {len(value)}"))
    if isinstance(high, int) and len(value) > high:
        out.append(_at(path, f"must be at most {high} characters long, got {len(value)}"))
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        regex = _regex(pattern)
        if regex is not None and regex.search(value) is None:
            out.append(_at(path, f"must match the pattern {_show(pattern)}"))


def _check_array(
    value: list[Any] | tuple[Any, ...], schema: Mapping[str, Any], path: str,
    out: list[str], limit: int,
) -> None:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(value) < low:
        out.append(_at(path, f"must have at least {low} item{'s' * (low != 1)}, got {len(value)}"))
    if isinstance(high, int) and len(value) > high:
        out.append(_at(path, f"must have at most {high} item{'s' * (high != 1)}, got {len(value)}"))
    prefix = schema.get("prefixItems")
    items = schema.get("items")
    if isinstance(items, list):  # draft 4 tuple form
        prefix, items = items, schema.get("additionalItems")
    if not isinstance(prefix, list):
        prefix = []
    for i, item in enumerate(value):
        sub = prefix[i] if i < len(prefix) else items
        if sub is not None:
            _check(item, sub, f"{path}[{i}]", out, limit)
        if len(out) >= limit:
            return


def _check_object(
    value: Mapping[str, Any], schema: Mapping[str, Any], path: str, out: list[str], limit: int,
) -> None:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        properties = {}
    for key in schema.get("required") or ():
        if key not in value:
            out.append(f"missing required argument {_join(path, key)!r}")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if len(out) >= limit:
            return
        if key in properties:
            _check(item, properties[key], _join(path, str(key)), out, limit)
        elif extra is False:
            allowed = ", ".join(properties)
            hint = f" (allowed: {allowed})" if allowed else " (this takes no arguments)"
            out.append(f"unexpected argument {_join(path, str(key))!r}{hint}")
        elif isinstance(extra, Mapping):
            _check(item, extra, _join(path, str(key)), out, limit)


def _check_any(
    value: Any, branches: list[Any], path: str, out: list[str], limit: int, *, one: bool,
) -> None:
    matches = sum(1 for b in branches if _is_valid(value, b))
    if matches == 1 or (matches > 1 and not one):
        return
    if matches > 1:
        out.append(_at(path, "matches more than one of the allowed forms"))
        return
    candidates = [b for b in branches if _type_admits(b, value)]
    if len(candidates) == 1:
        # Only one form has the right JSON type: its specific complaint helps most.
        _check(value, candidates[0], path, out, limit)
        return
    if not candidates:
        forms = " or ".join(dict.fromkeys(_describe(b) for b in branches))
        out.append(_at(path, f"must be {forms}, got {_kind(value)}"))
        return
    reasons: list[str] = []
    for branch in candidates:
        errors: list[str] = []
        _check(value, branch, path, errors, 1)
        reasons.extend(errors)
    out.append(_at(path, "matches none of the allowed forms (" + " | ".join(reasons) + ")"))
