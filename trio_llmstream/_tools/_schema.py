"""The schema compiler: a function's signature → the JSON schema the model sees + a converter.

A model calls a tool by emitting a JSON object of arguments. Three things must agree for that
to work: the JSON schema the model is shown, the check that what it sent fits that schema, and
the conversion of the checked JSON into the Python values the function expects. Writing all
three by hand drifts; here all three come from one place, the function's signature, compiled
once, when the tool is made (the check itself is ``_validate``'s job).

**Compilation.** :func:`compile_parameters` walks each parameter's annotation once and compiles
it into a node: a JSON schema fragment plus a converter back to Python (``_Compiler``, one
method per kind of annotation, recursing into the parts). The supported annotations are exactly
those that have one obvious JSON form and one obvious way back — scalars, ``None``, ``Any``,
``Literal``, enums, unions, homogeneous sequences and tuples, string-keyed dicts, and records
(attrs classes and TypedDicts, recursively). Anything else (a bare class, ``*args``, a missing
annotation, a recursive type) is a ``TypeError`` when the tool is made, naming the parameter,
because a schema the model cannot satisfy — or one we would silently widen — fails far from its
cause, in the middle of a conversation. Descriptions come from ``Annotated[X, "text"]``,
:class:`Param` (which also adds bounds) or an attrs field's ``metadata["description"]``, else
from the docstring (a record's fields from the record's own docstring). A parameter with a
default is optional, and the default is shown to the model when it has a JSON form. The
parameters become one object schema with ``additionalProperties: false``.

**Conversion.** The compiled ``prepare`` validates a call's arguments against the whole schema
first and converts only validated data, so converters are simple: enum members are looked up by
value, attrs classes are built from their dicts (nested, in lists), tuples become tuples. A
union converts with the branch the value validates against, preferring an exact literal or enum
match, then ``int`` for JSON integers and ``float`` for JSON fractions. Arguments the model left
out are not passed at all, so Python fills the defaults — the schema's ``default`` is only
advice to the model. A class whose own validators refuse the data is reported like a schema
problem, by path.

**Raw schemas.** With a hand-written schema nothing is compiled: the schema is copied (it must
be JSON and describe an object), arguments are validated against it and passed on unconverted,
after a check that the function accepts every name given and gets every name it needs.
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
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from ._docstrings import parse_docstring
from ._validate import (
    ToolArgumentError,
    at_path,
    is_valid,
    join_errors,
    join_path,
    json_equal,
    scalar_kind,
    validate_arguments,
)

__all__ = ["Param", "Prepare", "compile_parameters", "unwrap_partial"]

#: ``FunctionTool.prepare``: parsed JSON arguments in, keyword arguments of the function out.
Prepare = Callable[[dict[str, Any]], dict[str, Any]]


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



def compile_parameters(
    name: str,
    fn: Callable[..., Any],
    param_docs: Mapping[str, str],
    raw_schema: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], Prepare]:
    """The parameters schema of tool ``name`` calling ``fn``, and its ``prepare``.

    ``param_docs`` describes parameters whose annotation does not; with ``raw_schema`` the
    schema is that (copied), not inferred. Raises ``TypeError`` naming the parameter whose
    annotation has no JSON form (or saying why the signature or the raw schema is unusable).
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"tool {name!r}: cannot read the signature of {fn!r}: {exc}") from None

    if raw_schema is not None:
        schema = _copy_raw_schema(name, raw_schema)
        raw = _RawPrepare(schema, _RawPrepare.accepted(signature), _RawPrepare.needed(signature))
        return schema, raw

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
    return parameters, _Prepare(parameters, tuple(plans))


def unwrap_partial(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function a (nested) ``functools.partial`` calls: where its docs and hints live."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _hints_target(fn: Callable[..., Any]) -> Any:
    fn = unwrap_partial(fn)
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
            raise ToolArgumentError(at_path(exc.path, exc.problem)) from None
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
            raise ToolArgumentError(join_errors(errors))
        return dict(arguments)



# ---------------------------------------------------------------------------------------------
# Compiling annotations: a JSON schema fragment plus a converter back to Python


_Converter = Callable[[Any, str], Any]  # (validated JSON value, its path) -> Python value


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
    convert: _Converter
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
            kind = scalar_kind(value)
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
                if json_equal(value, json_value):
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
                if json_equal(value, member.value):
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
                if rank < best_rank and is_valid(value, node.schema):
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
            return {k: value_convert(v, join_path(path, k)) for k, v in value.items()}

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
            summary, field_docs = parse_docstring(tp.__dict__.get("__doc__"))
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
                key: node.convert(value[key], join_path(path, key))
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

