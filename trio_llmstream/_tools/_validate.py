"""The JSON-Schema validator: does a model's tool call fit the tool's schema, and if not, why.

A model calls a tool with a JSON object of arguments, and sometimes the object does not fit the
schema it was shown. The check happens *before* anything is converted or called, and its
message goes back to the model, which reads it and retries. So what matters here is less the
verdict than the message: each problem names the argument by its JSON path and says what was
expected and what came (``argument 'trip.legs[2].city' must be a string, got integer``), and
every problem found, up to :data:`MAX_ERRORS`, is reported at once, so that one retry can fix
them all. That is the reason for a validator of our own instead of a dependency on a complete
JSON-Schema library, whose messages are written for programmers.

What is checked. The keywords the schema compiler generates and the common ones of hand-written
schemas: ``type`` (a name or a list), ``properties``, ``required``, ``additionalProperties``,
``enum``, ``const``, ``anyOf``/``oneOf``/``allOf``, ``items``/``prefixItems`` (and the draft-4
tuple form ``items: [...]`` with ``additionalItems``), ``minimum``/``maximum`` and their
exclusive forms (the draft-4 boolean flags too), ``minLength``/``maxLength``,
``minItems``/``maxItems``, ``pattern`` and OpenAPI's ``nullable``. Every other keyword is
ignored, so a raw schema with ``$ref`` or ``format`` still works, only checked less; an invalid
``pattern`` in someone's schema is ignored too, as it is not the model's fault.

How. :func:`_check` walks the value and the schema together, depth first, appending one message
per problem to a list that stops growing at a limit. A value of the wrong type gets one message
and nothing else (what else is wrong with it hardly matters). Numbers follow JSON, not Python:
``true`` is not an integer, ``3`` is a valid number and ``3.0`` a valid integer, and equality
for ``enum``/``const`` is JSON equality. For ``anyOf``/``oneOf`` the branches are first tried
silently; if none (or, for ``oneOf``, more than one) matches, the message is chosen for the
model: when exactly one branch has the value's JSON type, its own specific complaint; when none
has, the forms that were allowed; otherwise the first complaint of each plausible branch.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_ERRORS",
    "ToolArgumentError",
    "at_path",
    "is_valid",
    "join_errors",
    "join_path",
    "json_equal",
    "scalar_kind",
    "validate_arguments",
]

#: How many problems one error message reports; more are summarized.
MAX_ERRORS = 8


class ToolArgumentError(ValueError):
    """The model's arguments for a tool call are invalid; the message is sent back to it."""


def validate_arguments(arguments: object, schema: Mapping[str, Any] | bool) -> None:
    """Check parsed JSON ``arguments`` against ``schema``; raise ``ToolArgumentError`` if not.

    The message lists every problem found (up to a few), each naming the argument by its path,
    e.g. ``missing required argument 'city'; argument 'days' must be an integer, got string``.
    Unknown schema keywords are ignored.
    """
    errors: list[str] = []
    _check(arguments, schema, "", errors, MAX_ERRORS + 1)
    if errors:
        raise ToolArgumentError(join_errors(errors))


def is_valid(value: Any, schema: Any) -> bool:
    """Whether ``value`` fits ``schema`` (the check stops at the first problem)."""
    errors: list[str] = []
    _check(value, schema, "", errors, 1)
    return not errors


def join_path(path: str, key: str) -> str:
    """The path of member ``key`` of the object at ``path`` (``""`` is the top level)."""
    return f"{path}.{key}" if path else key


def at_path(path: str, problem: str) -> str:
    """A message saying ``problem`` about the argument at ``path``."""
    return f"argument {path!r} {problem}" if path else f"arguments {problem}"


def join_errors(errors: list[str]) -> str:
    """One message from several problems: at most ``MAX_ERRORS`` of them, then "and more"."""
    if len(errors) > MAX_ERRORS:
        return "; ".join(errors[:MAX_ERRORS]) + "; and more"
    return "; ".join(errors)


def _show(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scalar_kind(value: Any) -> str | None:
    """The JSON type name of a scalar ``value`` (None for containers and non-JSON values)."""
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
    kind = scalar_kind(value)
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


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is None and b is None


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None  # an invalid pattern in someone's schema is not the model's fault


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
        out.append(at_path(path, "is not allowed"))
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
            out.append(at_path(path, f"must be {_describe_types(names)}, got {_kind(value)}"))
            return  # nothing else is worth saying about a value of the wrong type
    if "const" in schema and not json_equal(value, schema["const"]):
        out.append(at_path(path, f"must be {_show(schema['const'])}, got {_show(value)}"))
        return
    options = schema.get("enum")
    if isinstance(options, list) and not any(json_equal(value, o) for o in options):
        shown = ", ".join(_show(o) for o in options)
        out.append(at_path(path, f"must be one of {shown}, got {_show(value)}"))
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
        out.append(at_path(path, f"must be >= {low}, got {_show(value)}"))
    if _is_number(ex_low) and value <= ex_low:
        out.append(at_path(path, f"must be > {ex_low}, got {_show(value)}"))
    if _is_number(high) and value > high:
        out.append(at_path(path, f"must be <= {high}, got {_show(value)}"))
    if _is_number(ex_high) and value >= ex_high:
        out.append(at_path(path, f"must be < {ex_high}, got {_show(value)}"))


def _check_string(value: str, schema: Mapping[str, Any], path: str, out: list[str]) -> None:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(value) < low:
        out.append(at_path(path, f"must be at least {low} characters long, got {len(value)}"))
    if isinstance(high, int) and len(value) > high:
        out.append(at_path(path, f"must be at most {high} characters long, got {len(value)}"))
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        regex = _regex(pattern)
        if regex is not None and regex.search(value) is None:
            out.append(at_path(path, f"must match the pattern {_show(pattern)}"))


def _check_array(
    value: list[Any] | tuple[Any, ...], schema: Mapping[str, Any], path: str,
    out: list[str], limit: int,
) -> None:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(value) < low:
        noun = "item" if low == 1 else "items"
        out.append(at_path(path, f"must have at least {low} {noun}, got {len(value)}"))
    if isinstance(high, int) and len(value) > high:
        noun = "item" if high == 1 else "items"
        out.append(at_path(path, f"must have at most {high} {noun}, got {len(value)}"))
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
            out.append(f"missing required argument {join_path(path, key)!r}")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if len(out) >= limit:
            return
        if key in properties:
            _check(item, properties[key], join_path(path, str(key)), out, limit)
        elif extra is False:
            allowed = ", ".join(properties)
            hint = f" (allowed: {allowed})" if allowed else " (this takes no arguments)"
            out.append(f"unexpected argument {join_path(path, str(key))!r}{hint}")
        elif isinstance(extra, Mapping):
            _check(item, extra, join_path(path, str(key)), out, limit)


def _check_any(
    value: Any, branches: list[Any], path: str, out: list[str], limit: int, *, one: bool,
) -> None:
    matches = sum(1 for b in branches if is_valid(value, b))
    if matches == 1 or (matches > 1 and not one):
        return
    if matches > 1:
        out.append(at_path(path, "matches more than one of the allowed forms"))
        return
    candidates = [b for b in branches if _type_admits(b, value)]
    if len(candidates) == 1:
        # Only one form has the right JSON type: its specific complaint helps most.
        _check(value, candidates[0], path, out, limit)
        return
    if not candidates:
        forms = " or ".join(dict.fromkeys(_describe(b) for b in branches))
        out.append(at_path(path, f"must be {forms}, got {_kind(value)}"))
        return
    reasons: list[str] = []
    for branch in candidates:
        errors: list[str] = []
        _check(value, branch, path, errors, 1)
        reasons.extend(errors)
    out.append(at_path(path, "matches none of the allowed forms (" + " | ".join(reasons) + ")"))
