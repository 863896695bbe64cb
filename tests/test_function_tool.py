"""Function tools from signatures: inferred schemas, validation messages, conversion, registry.

The property tests generate annotation types from the supported set together with values of
them, and check the two promises that matter to a model: a value valid for the type passes and
comes back equal after JSON, and a value made wrong at one place is refused with a message that
names that place.
"""

import enum
import functools
import json
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NotRequired, Required, TypedDict

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream._models import FunctionCall, ToolSpec
from trio_llmstream._tools._execute import ToolCallHandle, ToolOutcomeKind, run_tool_call
from trio_llmstream._tools._function import (
    FunctionTool,
    ToolRegistry,
    check_tool_name,
    function_tool,
)
from trio_llmstream._tools._schema import Param
from trio_llmstream._tools._validate import ToolArgumentError, validate_arguments

# ---------------------------------------------------------------------------------------------
# Types used by the tests


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Leg:
    """One leg of a trip.

    Attributes:
        city: Where this leg goes.
    """

    city: str
    days: int = 1
    note: str = attrs.field(default="", metadata={"description": "Anything else."})


@attrs.frozen
class Trip:
    legs: list[Leg]
    name: str | None = None


@attrs.frozen
class Positive:
    n: int = attrs.field(validator=attrs.validators.gt(0))


class Point(TypedDict):
    x: float
    y: float
    label: NotRequired[str]


class Partial(TypedDict, total=False):
    a: int
    b: Required[str]


@attrs.frozen
class Node:
    children: "list[Node]"


def schema_of(tp: Any) -> Any:
    """The schema inferred for a lone parameter ``x: tp``."""
    return make_tool(tp).parameters["properties"]["x"]


def make_tool(tp: Any) -> FunctionTool:
    def f(x):  # type: ignore[no-untyped-def]
        return x

    f.__annotations__ = {"x": tp}
    return function_tool(f)


def prepare(tool: FunctionTool, arguments: dict[str, Any]) -> dict[str, Any]:
    assert tool.prepare is not None
    return tool.prepare(arguments)


def error_of(tool: FunctionTool, arguments: dict[str, Any]) -> str:
    with pytest.raises(ToolArgumentError) as info:
        prepare(tool, arguments)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Schemas


LEG_SCHEMA = {
    "type": "object",
    "description": "One leg of a trip.",
    "properties": {
        "city": {"type": "string", "description": "Where this leg goes."},
        "days": {"type": "integer", "default": 1},
        "note": {"type": "string", "description": "Anything else.", "default": ""},
    },
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("tp", "schema"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (None, {"type": "null"}),
        (Any, {}),
        (typing.Optional[int], {"type": ["integer", "null"]}),  # noqa: UP045
        (int | None, {"type": ["integer", "null"]}),
        (int | str | None, {"type": ["integer", "string", "null"]}),
        (typing.Union[str, list[int]], {  # noqa: UP007
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}]
        }),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (Literal["a", 1, True, None], {
            "type": ["string", "integer", "boolean", "null"], "enum": ["a", 1, True, None]
        }),
        (Literal[Color.RED], {"type": "string", "enum": ["red"]}),
        (Color, {"type": "string", "enum": ["red", "green"]}),
        (Level, {"type": "integer", "enum": [1, 2]}),
        (Color | None, {"anyOf": [{"type": "string", "enum": ["red", "green"]}, {"type": "null"}]}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (list, {"type": "array", "items": {}}),
        (Sequence[str], {"type": "array", "items": {"type": "string"}}),
        (tuple[float, ...], {"type": "array", "items": {"type": "number"}}),
        (tuple[int, str], {
            "type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
            "minItems": 2, "maxItems": 2,
        }),
        (tuple[()], {"type": "array", "maxItems": 0}),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (Mapping[str, list[bool]], {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "boolean"}},
        }),
        (Leg, LEG_SCHEMA),
        (Trip, {
            "type": "object",
            "properties": {
                "legs": {"type": "array", "items": LEG_SCHEMA},
                "name": {"type": ["string", "null"], "default": None},
            },
            "required": ["legs"],
            "additionalProperties": False,
        }),
        (Point, {
            "type": "object",
            "properties": {
                "x": {"type": "number"}, "y": {"type": "number"}, "label": {"type": "string"},
            },
            "required": ["x", "y"],
            "additionalProperties": False,
        }),
        (Partial, {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
            "required": ["b"],
            "additionalProperties": False,
        }),
        (Annotated[int, "how many"], {"type": "integer", "description": "how many"}),
        (Annotated[int, Param("days ahead", minimum=1, maximum=14)], {
            "type": "integer", "description": "days ahead", "minimum": 1, "maximum": 14,
        }),
        (Annotated[str, Param(min_length=2, max_length=5, pattern="^[a-z]+$")], {
            "type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$",
        }),
        (Annotated[list[int], Param(min_items=1, max_items=3, extra={"examples": [[1]]})], {
            "type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3,
            "examples": [[1]],
        }),
        (list[Annotated[int, "an id"]], {
            "type": "array", "items": {"type": "integer", "description": "an id"},
        }),
        (Annotated[int, "other metadata is skipped", object()], {
            "type": "integer", "description": "other metadata is skipped",
        }),
    ],
)
def test_schema_of_each_supported_type(tp: Any, schema: dict[str, Any]) -> None:
    assert schema_of(tp) == schema
    json.dumps(schema_of(tp))  # always JSON


def test_function_schema_required_and_defaults() -> None:
    sentinel = object()

    @function_tool
    def f(
        a: str,
        b: int = 3,
        c: Color = Color.GREEN,
        d: tuple[int, ...] = (1, 2),
        e: Leg = Leg("Oslo"),
        g: Any = sentinel,
        *,
        h: bool,
    ) -> None:
        """Do f."""

    assert f.name == "f"
    assert f.description == "Do f."
    assert f.parameters == {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "integer", "default": 3},
            "c": {"type": "string", "enum": ["red", "green"], "default": "green"},
            "d": {"type": "array", "items": {"type": "integer"}, "default": [1, 2]},
            "e": {**LEG_SCHEMA, "default": {"city": "Oslo", "days": 1, "note": ""}},
            "g": {},  # a default with no JSON form is not shown
            "h": {"type": "boolean"},
        },
        "required": ["a", "h"],
        "additionalProperties": False,
    }
    assert f.spec == ToolSpec("f", "Do f.", f.parameters)


def test_no_parameters() -> None:
    @function_tool
    async def ping() -> str:
        return "pong"

    assert ping.parameters == {"type": "object", "properties": {}, "additionalProperties": False}
    assert ping.is_async
    assert prepare(ping, {}) == {}
    assert error_of(ping, {"x": 1}) == "unexpected argument 'x' (this takes no arguments)"


def test_decorator_options_and_fn_kept() -> None:
    @function_tool(name="weather-now", description="Weather.", timeout=2.5)
    def get_weather(city: str) -> str:
        """Ignored for the description."""
        return f"sunny in {city}"

    assert isinstance(get_weather, FunctionTool)
    assert (get_weather.name, get_weather.description, get_weather.timeout) == (
        "weather-now", "Weather.", 2.5,
    )
    assert not get_weather.is_async
    assert get_weather.fn("Oslo") == "sunny in Oslo"  # the function itself stays reachable
    direct = function_tool(get_weather.fn, name="w2")
    assert direct.name == "w2"
    assert direct.parameters == get_weather.parameters


async def test_a_tool_is_still_its_function() -> None:
    # Calling the tool calls the function as is (the type checker sees its signature, see
    # tests/test_tool_typing.py); validation and conversion are for the model's calls only.
    @function_tool
    def add(a: int, b: int) -> int:
        return a + b

    @function_tool(name="twice")
    async def double(x: int) -> int:
        await trio.sleep(0)
        return 2 * x

    registry = ToolRegistry()

    @registry.add
    def negate(x: int) -> int:
        return -x

    assert add(1, 2) == 3
    assert add(a=2, b=5) == add.fn(2, 5) == 7
    assert await double(4) == 8
    assert double.is_async
    assert negate(3) == -3
    assert registry["negate"] is negate
    with pytest.raises(TypeError):
        add(1)  # type: ignore[call-arg]


def test_partials_work() -> None:
    def forecast(city: str, unit: str, days: int = 1) -> str:
        """Forecast for a city."""
        return f"{city}/{unit}/{days}"

    with pytest.raises(ValueError, match="has no __name__: pass name="):
        function_tool(functools.partial(forecast, unit="C"))
    tool = function_tool(functools.partial(forecast, unit="C"), name="forecast_c")
    assert tool.description == "Forecast for a city."
    assert tool.parameters["required"] == ["city"]
    assert tool.parameters["properties"]["unit"] == {"type": "string", "default": "C"}
    assert tool.fn(**prepare(tool, {"city": "Oslo"})) == "Oslo/C/1"


@attrs.define
class Settings:
    """Settings.

    Attributes:
        level: How loud.
    """

    _level: int
    tags: list[str] = attrs.field(factory=list)
    cached: int = attrs.field(init=False, default=0)


def test_attrs_aliases_factories_and_init_false() -> None:
    assert schema_of(Settings) == {
        "type": "object",
        "description": "Settings.",
        "properties": {
            "level": {"type": "integer", "description": "How loud."},
            "tags": {"type": "array", "items": {"type": "string"}},  # a factory is not run
        },
        "required": ["level"],
        "additionalProperties": False,
    }
    tool = make_tool(Settings)
    value = prepare(tool, {"x": {"level": 3}})["x"]
    assert (value._level, value.tags, value.cached) == (3, [], 0)
    assert error_of(tool, {"x": {"_level": 3}}).startswith("missing required argument 'x.level'")


class Described(TypedDict):
    """A described dict.

    Attributes:
        a: From the docstring.
    """

    a: int
    b: NotRequired[Annotated[int, "inside NotRequired"]]
    c: Annotated[NotRequired[str], "outside NotRequired"]


def test_typeddict_descriptions() -> None:
    assert schema_of(Described) == {
        "type": "object",
        "description": "A described dict.",
        "properties": {
            "a": {"type": "integer", "description": "From the docstring."},
            "b": {"type": "integer", "description": "inside NotRequired"},
            "c": {"type": "string", "description": "outside NotRequired"},
        },
        "required": ["a"],
        "additionalProperties": False,
    }


def test_bare_generic_aliases() -> None:
    assert schema_of(typing.Tuple) == {"type": "array", "items": {}}  # noqa: UP006
    assert schema_of(typing.List) == {"type": "array", "items": {}}  # noqa: UP006
    assert schema_of(dict) == {"type": "object", "additionalProperties": {}}
    assert prepare(make_tool(typing.Tuple), {"x": [1, "a"]}) == {"x": (1, "a")}  # noqa: UP006


def test_bound_methods_work() -> None:
    class Service:
        def __init__(self) -> None:
            self.calls = 0

        def lookup(self, key: str) -> str:
            """Look a key up."""
            self.calls += 1
            return key.upper()

    service = Service()
    tool = function_tool(service.lookup)
    assert tool.name == "lookup"
    assert tool.parameters["required"] == ["key"]
    assert tool.fn(**prepare(tool, {"key": "k"})) == "K"


# ---------------------------------------------------------------------------------------------
# Docstrings


def test_google_docstring() -> None:
    @function_tool
    def f(city: str, days: int = 1, unit: Annotated[str, "Explicit wins."] = "C") -> None:
        """Get the forecast
        for a city.

        Uses the national service.

        Args:
            city (str): City name,
                e.g. "Oslo".
            days: How many days.
            unit: From the docstring.

        Returns:
            Text.
        """

    assert f.description == "Get the forecast for a city."
    props = f.parameters["properties"]
    assert props["city"]["description"] == 'City name, e.g. "Oslo".'
    assert props["days"]["description"] == "How many days."
    assert props["unit"]["description"] == "Explicit wins."


def test_rest_docstring() -> None:
    @function_tool
    def f(city: str, days: int) -> None:
        """Get the forecast.

        :param str city: City name,
            e.g. "Oslo".
        :param days: How many days.
        :returns: text
        """

    assert f.description == "Get the forecast."
    props = f.parameters["properties"]
    assert props["city"]["description"] == 'City name, e.g. "Oslo".'
    assert props["days"]["description"] == "How many days."


def test_numpy_docstring() -> None:
    @function_tool
    def f(city: str, days: int) -> None:
        """Get the forecast.

        Parameters
        ----------
        city : str
            City name.
        days : int
            How many
            days.

        Returns
        -------
        str
        """

    props = f.parameters["properties"]
    assert props["city"]["description"] == "City name."
    assert props["days"]["description"] == "How many days."


def test_no_docstring_and_sections_only() -> None:
    @function_tool
    def f(a: int) -> None:
        pass

    @function_tool
    def g(a: int) -> None:
        """Args:
        a: The a.
        """

    assert f.description == ""
    assert "description" not in f.parameters["properties"]["a"]
    assert g.description == ""


# ---------------------------------------------------------------------------------------------
# Errors at decoration time


def _no_annotation(a, b: int) -> None:  # type: ignore[no-untyped-def]
    pass


def _star_args(*items: int) -> None:
    pass


def _star_kwargs(**options: int) -> None:
    pass


def _positional_only(a: int, /) -> None:
    pass


class Opaque:
    pass


def _opaque(thing: Opaque) -> None:
    pass


def _int_keys(table: dict[int, str]) -> None:
    pass


def _recursive(tree: Node) -> None:
    pass


def _a_set(items: set[int]) -> None:
    pass


def _deep_bad(trip: list[dict[str, Opaque]]) -> None:
    pass


class Empty(enum.Enum):
    pass


class Shape(enum.Enum):
    POINT = (0, 0)


def _empty_enum(x: Empty) -> None:
    pass


def _tuple_enum(x: Shape) -> None:
    pass


def _bytes_literal(x: Literal[b"x"]) -> None:
    pass


def _forward(x: "Missing") -> None:  # type: ignore[name-defined]  # noqa: F821
    pass


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (_no_annotation, "parameter 'a' has no type annotation"),
        (_star_args, r"parameter 'items': \*items is not supported"),
        (_star_kwargs, r"parameter 'options': \*\*options is not supported"),
        (_positional_only, "parameter 'a' is positional-only"),
        (_opaque, "parameter 'thing': unsupported annotation Opaque"),
        (_int_keys, "parameter 'table'.*keys are strings"),
        (_recursive, "parameter 'tree'.*recursive types.*Node -> Node"),
        (_a_set, r"parameter 'items': unsupported annotation set\[int\]"),
        (_deep_bad, "parameter 'trip': unsupported annotation Opaque"),
        (_forward, "cannot resolve the type annotations"),
        (_empty_enum, "parameter 'x': unsupported annotation Empty: an enum with no members"),
        (_tuple_enum, r"unsupported annotation Shape: value \(0, 0\) has no JSON form"),
        (_bytes_literal, "value b'x' has no JSON form"),
    ],
)
def test_unsupported_signatures_fail_at_decoration(fn: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        function_tool(fn)


def test_bad_names_and_options() -> None:
    with pytest.raises(ValueError, match="invalid tool name '<lambda>'"):
        function_tool(lambda: None)
    with pytest.raises(ValueError, match="invalid tool name 'has space'"):
        function_tool(name="has space")(_star_args)
    with pytest.raises(ValueError, match="timeout must be positive"):
        function_tool(timeout=0)(_positional_only)
    tool = function_tool(_int_keys, raw_schema={"type": "object"})
    with pytest.raises(TypeError, match="already a FunctionTool"):
        function_tool(tool)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must describe an object"):
        function_tool(_int_keys, raw_schema={"type": "array"})
    with pytest.raises(TypeError, match="raw_schema is not JSON"):
        function_tool(_int_keys, raw_schema={"type": "object", "default": object()})
    with pytest.raises(re_error_type()):
        Param(pattern="(")


def re_error_type() -> type[Exception]:
    import re

    return re.error


@pytest.mark.parametrize(
    "name", ["a", "get_weather", "A-b_9", "x" * 64],
)
def test_valid_tool_names(name: str) -> None:
    assert check_tool_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 65, "a.b", "a b", "é", "a/b", 3, None, "a\n"])
def test_invalid_tool_names(name: Any) -> None:
    with pytest.raises(ValueError, match="1 to 64 characters"):
        check_tool_name(name)


# ---------------------------------------------------------------------------------------------
# Validation messages


@function_tool
def plan_trip(
    trip: Trip,
    days: int,
    mode: Literal["car", "train"] = "car",
    color: Color | None = None,
    budget: Annotated[float, Param(minimum=0)] = 100.0,
) -> str:
    """Plan a trip."""
    return "planned"


GOOD_TRIP = {"legs": [{"city": "Oslo"}, {"city": "Rome", "days": 2}]}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"trip": GOOD_TRIP}, "missing required argument 'days'"),
        ({"trip": GOOD_TRIP, "days": "3"}, "argument 'days' must be an integer, got string"),
        ({"trip": GOOD_TRIP, "days": True}, "argument 'days' must be an integer, got boolean"),
        ({"trip": GOOD_TRIP, "days": 2.5}, "argument 'days' must be an integer, got number"),
        (
            {"trip": GOOD_TRIP, "days": 1, "foo": 1},
            "unexpected argument 'foo' (allowed: trip, days, mode, color, budget)",
        ),
        (
            {"trip": {"legs": [{"city": "a"}, {"city": "b"}, {"city": 7}]}, "days": 1},
            "argument 'trip.legs[2].city' must be a string, got integer",
        ),
        (
            {"trip": {"legs": [{}]}, "days": 1},
            "missing required argument 'trip.legs[0].city'",
        ),
        (
            {"trip": {"legs": [{"city": "a", "stay": 1}]}, "days": 1},
            "unexpected argument 'trip.legs[0].stay' (allowed: city, days, note)",
        ),
        ({"trip": [], "days": 1}, "argument 'trip' must be an object, got array"),
        (
            {"trip": GOOD_TRIP, "days": 1, "mode": "plane"},
            'argument \'mode\' must be one of "car", "train", got "plane"',
        ),
        (
            {"trip": GOOD_TRIP, "days": 1, "color": "blue"},
            'argument \'color\' must be one of "red", "green", got "blue"',
        ),
        (
            {"trip": GOOD_TRIP, "days": 1, "color": 3},
            'argument \'color\' must be one of "red", "green" or null, got integer',
        ),
        ({"trip": GOOD_TRIP, "days": 1, "budget": -1}, "argument 'budget' must be >= 0, got -1"),
        ({"trip": GOOD_TRIP, "days": 1, "budget": None}, "argument 'budget' must be a number"),
    ],
)
def test_validation_messages(arguments: dict[str, Any], message: str) -> None:
    assert message in error_of(plan_trip, arguments)


def test_all_problems_are_reported_at_once() -> None:
    text = error_of(plan_trip, {"trip": {"legs": [{"city": 1}]}, "days": "x", "zz": 0})
    assert text == (
        "argument 'trip.legs[0].city' must be a string, got integer"
        "; argument 'days' must be an integer, got string"
        "; unexpected argument 'zz' (allowed: trip, days, mode, color, budget)"
    )
    many = {f"k{i}": i for i in range(20)}
    text = error_of(plan_trip, many)
    assert text.endswith("; and more")
    assert text.count(";") == 8


def test_json_numbers_follow_json() -> None:
    args = prepare(plan_trip, {"trip": GOOD_TRIP, "days": 3.0, "budget": 5})
    assert args["days"] == 3
    assert type(args["days"]) is int
    assert args["budget"] == 5.0
    assert type(args["budget"]) is float
    assert "got boolean" in error_of(plan_trip, {"trip": GOOD_TRIP, "days": 1, "budget": True})
    huge = error_of(plan_trip, {"trip": GOOD_TRIP, "days": 1, "budget": 10**400})
    assert huge == "argument 'budget' is too large for a float"
    nan = error_of(plan_trip, {"trip": GOOD_TRIP, "days": 1, "budget": float("nan")})
    assert "must be a number, got a non-finite number" in nan


def test_validate_arguments_hand_written_keywords() -> None:
    schema = {
        "type": "object",
        "properties": {
            "kind": {"const": "box"},
            "size": {"type": ["integer", "string"], "exclusiveMinimum": 0},
            "tags": {"type": "array", "items": {"type": "string", "minLength": 1},
                     "minItems": 1, "maxItems": 2},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$", "format": "whatever"},
            "note": {"type": "string", "nullable": True, "maxLength": 3},
            "pick": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 10}]},
            "any": {"anyOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]},
            ]},
            "both": {"allOf": [{"type": "integer"}, {"maximum": 5}]},
            "pair": {"type": "array", "items": [{"type": "integer"}, {"type": "string"}],
                     "additionalItems": False},
            "never": False,
            "free": True,
        },
        "additionalProperties": {"type": "integer"},
        "$defs": {"unknown": "keywords are ignored"},
    }
    validate_arguments(
        {"kind": "box", "size": "L", "tags": ["a"], "code": "ABC", "note": None, "pick": 3,
         "any": {"b": 1}, "both": 5, "pair": [1, "x"], "free": [{}], "extra": 4},
        schema,
    )
    cases = [
        ({"kind": "bag"}, 'argument \'kind\' must be "box", got "bag"'),
        ({"size": 0}, "argument 'size' must be > 0, got 0"),
        ({"size": False}, "argument 'size' must be an integer or a string, got boolean"),
        ({"tags": ["a", "b", "c"]}, "argument 'tags' must have at most 2 items, got 3"),
        ({"tags": [""]}, "argument 'tags[0]' must be at least 1 characters long, got 0"),
        ({"tags": []}, "argument 'tags' must have at least 1 item, got 0"),
        ({"code": "abc"}, 'argument \'code\' must match the pattern "^[A-Z]{3}$"'),
        ({"note": "long"}, "argument 'note' must be at most 3 characters long, got 4"),
        ({"note": 1}, "argument 'note' must be a string or null, got integer"),
        ({"pick": 12}, "argument 'pick' matches more than one of the allowed forms"),
        ({"pick": "x"}, "argument 'pick' must be an integer or a number, got string"),
        ({"any": {"c": 1}}, (
            "argument 'any' matches none of the allowed forms (missing required argument "
            "'any.a' | missing required argument 'any.b')"
        )),
        ({"both": 6}, "argument 'both' must be <= 5, got 6"),
        ({"pair": [1, 2]}, "argument 'pair[1]' must be a string, got integer"),
        ({"pair": [1, "a", 3]}, "argument 'pair[2]' is not allowed"),
        ({"never": 1}, "argument 'never' is not allowed"),
        ({"extra": "x"}, "argument 'extra' must be an integer, got string"),
    ]
    for arguments, message in cases:
        with pytest.raises(ToolArgumentError) as info:
            validate_arguments(arguments, schema)
        assert str(info.value) == message, arguments
    with pytest.raises(ToolArgumentError, match=r"^arguments must be an object, got array$"):
        validate_arguments([], {"type": "object"})
    validate_arguments({"x": 1}, {})
    validate_arguments({"x": 1}, True)
    validate_arguments("s", {"type": "string", "pattern": "("})  # a broken pattern is ignored


# ---------------------------------------------------------------------------------------------
# Conversion


def test_conversion_builds_python_values() -> None:
    args = prepare(plan_trip, {
        "trip": {"legs": [{"city": "Oslo"}, {"city": "Rome", "days": 2, "note": "x"}],
                 "name": "tour"},
        "days": 2,
        "color": "green",
    })
    assert args == {
        "trip": Trip([Leg("Oslo"), Leg("Rome", 2, "x")], "tour"),
        "days": 2,
        "color": Color.GREEN,
    }
    # Missing optional arguments are left to Python's defaults, not filled in here.
    assert "mode" not in args
    assert plan_trip.fn(**args) == "planned"


def test_conversion_of_containers_and_unions() -> None:
    @function_tool
    def f(
        pairs: list[tuple[int, str]],
        levels: dict[str, Level],
        lit: Literal[Color.RED, 2],
        num: int | float,
        num2: float | int,
        mixed: str | Color,
        point: Point | None = None,
    ) -> None:
        pass

    args = prepare(f, {
        "pairs": [[1, "a"], [2, "b"]], "levels": {"x": 1, "y": 2}, "lit": "red",
        "num": 1.5, "num2": 2, "mixed": "green", "point": {"x": 1, "y": 2.5},
    })
    assert args == {
        "pairs": [(1, "a"), (2, "b")], "levels": {"x": Level.LOW, "y": Level.HIGH},
        "lit": Color.RED, "num": 1.5, "num2": 2, "mixed": Color.GREEN,
        "point": {"x": 1.0, "y": 2.5},
    }
    assert type(args["num"]) is float
    assert type(args["num2"]) is int  # a JSON integer prefers the int member
    assert type(args["point"]["x"]) is float
    assert prepare(f, {**args, "pairs": [], "levels": {}, "lit": 2, "num": 3, "mixed": "blue",
                       "point": None}) == {
        "pairs": [], "levels": {}, "lit": 2, "num": 3, "num2": 2, "mixed": "blue", "point": None,
    }


def test_attrs_validators_report_with_the_path() -> None:
    @function_tool
    def f(items: list[Positive]) -> None:
        pass

    assert prepare(f, {"items": [{"n": 1}]}) == {"items": [Positive(1)]}
    message = error_of(f, {"items": [{"n": 1}, {"n": 0}]})
    assert message.startswith("argument 'items[1]' is invalid: ")
    assert "'n' must be > 0: 0" in message


# ---------------------------------------------------------------------------------------------
# Raw schemas and hand-built tools

RAW = {
    "type": "object",
    "properties": {"q": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}},
    "required": ["q"],
}


def test_raw_schema_is_used_as_given_and_checked() -> None:
    @function_tool(raw_schema=RAW)
    def search(q, limit=10):  # type: ignore[no-untyped-def]
        """Search things."""
        return [q] * limit

    assert search.parameters == RAW
    assert search.description == "Search things."
    assert prepare(search, {"q": "x", "limit": 2}) == {"q": "x", "limit": 2}
    assert error_of(search, {"limit": 0}) == (
        "missing required argument 'q'; argument 'limit' must be >= 1, got 0"
    )
    # The schema allows extra properties, but the function cannot take them.
    assert error_of(search, {"q": "x", "other": 1}) == (
        "unexpected argument 'other' (allowed: limit, q)"
    )

    @function_tool(raw_schema={"type": "object", "properties": {}})
    def loose(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    assert prepare(loose, {"anything": [1]}) == {"anything": [1]}

    @function_tool(raw_schema={"type": "object", "properties": {}})
    def needs(a: int) -> None:
        pass

    assert error_of(needs, {}) == "missing required argument 'a'"


async def test_run_tool_call_gives_error_or_result() -> None:
    @function_tool
    def add(a: int, b: int = 1) -> int:
        """Add two numbers."""
        return a + b

    @function_tool
    async def greet(who: Trip) -> str:
        await trio.sleep(0)
        return f"hi {who.legs[0].city}"

    by_hand = FunctionTool(fn=lambda x: x * 2, name="double", parameters=RAW)
    tools = ToolRegistry([add, greet, by_hand]).as_mapping()

    async def run(name: str, arguments: str) -> Any:
        handle = ToolCallHandle(FunctionCall("call_1", name, arguments))
        await run_tool_call(handle, tools)
        assert handle.outcome is not None
        return handle.outcome

    ok = await run("add", '{"a": 2}')
    assert (ok.kind, ok.value, ok.output) == (ToolOutcomeKind.RESULT, 3, "3")
    bad = await run("add", '{"a": "2", "c": 1}')
    assert bad.kind is ToolOutcomeKind.ERROR
    assert isinstance(bad.error, ToolArgumentError)
    assert bad.message == (
        "invalid arguments for 'add': argument 'a' must be an integer, got string; "
        "unexpected argument 'c' (allowed: a, b)"
    )
    assert bad.output.startswith("error: invalid arguments for 'add'")

    ok = await run("greet", '{"who": {"legs": [{"city": "Oslo"}]}}')
    assert (ok.kind, ok.value) == (ToolOutcomeKind.RESULT, "hi Oslo")
    bad = await run("greet", '{"who": {"legs": [{"city": "Oslo", "days": "2"}]}}')
    assert bad.kind is ToolOutcomeKind.ERROR
    assert bad.message.endswith("argument 'who.legs[0].days' must be an integer, got string")

    # prepare=None: arguments pass through unchecked.
    ok = await run("double", '{"x": 4}')
    assert (ok.kind, ok.value) == (ToolOutcomeKind.RESULT, 8)


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry() -> None:
    registry = ToolRegistry([plan_trip])

    @registry.add
    def lookup(key: str) -> str:
        """Look up a key."""
        return key

    assert isinstance(lookup, FunctionTool)
    assert registry.names == ["plan_trip", "lookup"]
    assert list(registry) == [plan_trip, lookup]
    assert len(registry) == 2
    assert "lookup" in registry
    assert "nope" not in registry
    assert registry["lookup"] is lookup
    assert registry.get("nope") is None
    assert registry.specs == [plan_trip.spec, lookup.spec]
    assert registry.specs[1] == ToolSpec(
        "lookup", "Look up a key.",
        {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"],
         "additionalProperties": False},
    )
    view = registry.as_mapping()
    assert dict(view) == {"plan_trip": plan_trip, "lookup": lookup}
    assert registry.remove("lookup") is lookup
    assert "lookup" not in view
    assert repr(registry) == "ToolRegistry(['plan_trip'])"
    with pytest.raises(KeyError):
        registry["lookup"]


def test_registry_rejects_duplicates_and_bad_names() -> None:
    def lookup(key: str) -> str:
        return key

    registry = ToolRegistry([lookup])
    with pytest.raises(ValueError, match="duplicate tool name 'lookup'"):
        registry.add(function_tool(lookup))
    with pytest.raises(ValueError, match="duplicate tool name 'other'"):
        registry.extend([function_tool(name="other")(lookup), function_tool(name="other")(lookup)])
    assert registry.names == ["lookup"]  # extend is all or nothing
    with pytest.raises(ValueError, match="invalid tool name 'a b'"):
        registry.add(FunctionTool(fn=lookup, name="a b"))
    with pytest.raises(TypeError, match="a tool must be a FunctionTool or a function"):
        registry.add(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Properties: generated types and values


Token = int | str  # a list index or an object key
Slot = tuple[tuple[Token, ...], frozenset[str]]  # a place in a value, the JSON kinds it accepts


@attrs.frozen
class Sample:
    py: Any
    js: Any
    slots: tuple[Slot, ...]


@attrs.frozen
class Case:
    tp: Any
    kinds: frozenset[str]
    samples: st.SearchStrategy[Sample]


def _leaf(tp: Any, kinds: set[str], values: st.SearchStrategy[Any], to_js: Any = None) -> Case:
    frozen = frozenset(kinds)
    return Case(
        tp, frozen,
        values.map(lambda v: Sample(v, to_js(v) if to_js else v, (((), frozen),))),
    )


def _below(token: Token, sample: Sample) -> tuple[Slot, ...]:
    return tuple(((token, *path), kinds) for path, kinds in sample.slots)


def _array(tp: Any, build: Any, items: st.SearchStrategy[list[Sample]]) -> Case:
    kinds = frozenset({"array"})

    def sample(parts: list[Sample]) -> Sample:
        slots: list[Slot] = [((), kinds)]
        for i, part in enumerate(parts):
            slots.extend(_below(i, part))
        return Sample(build(p.py for p in parts), [p.js for p in parts], tuple(slots))

    return Case(tp, kinds, items.map(sample))


LEAVES = [
    _leaf(str, {"string"}, st.text(max_size=8)),
    _leaf(int, {"integer"}, st.integers()),
    _leaf(float, {"integer", "number"}, st.floats(allow_nan=False, allow_infinity=False)),
    _leaf(bool, {"boolean"}, st.booleans()),
    _leaf(None, {"null"}, st.none()),
    _leaf(Literal["a", "b", 3], {"string", "integer"}, st.sampled_from(["a", "b", 3])),
    _leaf(Color, {"string"}, st.sampled_from(Color), lambda c: c.value),
    _leaf(Level, {"integer"}, st.sampled_from(Level), lambda c: c.value),
]

KEYS = st.text("abcxyz", min_size=1, max_size=3)


@st.composite
def cases(draw: st.DrawFn, depth: int = 3) -> Case:
    if depth == 0:
        return draw(st.sampled_from(LEAVES))
    shape = draw(st.sampled_from(
        ["leaf", "leaf", "list", "tuple", "fixed", "dict", "union", "attrs", "typeddict"]
    ))
    if shape == "leaf":
        return draw(st.sampled_from(LEAVES))
    inner = draw(cases(depth - 1))
    if shape == "list":
        return _array(list[inner.tp], list, st.lists(inner.samples, max_size=3))
    if shape == "tuple":
        return _array(tuple[inner.tp, ...], tuple, st.lists(inner.samples, max_size=3))
    if shape == "fixed":
        other = draw(cases(depth - 1))
        return _array(tuple[inner.tp, other.tp], tuple,
                      st.tuples(inner.samples, other.samples).map(list))
    if shape == "dict":
        kinds = frozenset({"object"})

        def from_dict(parts: dict[str, Sample]) -> Sample:
            slots: list[Slot] = [((), kinds)]
            for key, part in parts.items():
                slots.extend(_below(key, part))
            return Sample(
                {k: p.py for k, p in parts.items()}, {k: p.js for k, p in parts.items()},
                tuple(slots),
            )

        return Case(dict[str, inner.tp], kinds,
                    st.dictionaries(KEYS, inner.samples, max_size=3).map(from_dict))
    if shape == "union":
        # Members whose JSON kinds do not overlap, so every value has one reading.
        members = [inner]
        taken = set(inner.kinds)
        for extra in draw(st.lists(cases(depth - 1), min_size=1, max_size=2)):
            if not (extra.kinds & taken) and extra.tp not in [m.tp for m in members]:
                members.append(extra)
                taken |= extra.kinds
        if len(members) == 1:
            return inner
        tp = typing.Union[tuple(m.tp for m in members)]  # noqa: UP007
        return Case(tp, frozenset(taken), st.one_of([m.samples for m in members]).map(
            lambda s: Sample(s.py, s.js, (((), frozenset(taken)), *s.slots[1:]))
        ))
    # Records: attrs classes and TypedDicts with one to three fields, some optional.
    fields = [inner, *draw(st.lists(cases(depth - 1), max_size=2))]
    optional = draw(st.lists(st.booleans(), min_size=len(fields), max_size=len(fields)))
    names = [f"f{i}" for i in range(len(fields))]
    kinds = frozenset({"object"})
    if shape == "attrs":
        cls = attrs.make_class("Rec", {
            name: attrs.field(type=typing.Optional[case.tp], default=None) if opt  # noqa: UP045
            else attrs.field(type=type(None) if case.tp is None else case.tp)
            for name, case, opt in zip(names, fields, optional, strict=True)
        }, frozen=True, kw_only=True)
    else:
        cls = TypedDict("TD", {  # type: ignore[operator]
            name: NotRequired[case.tp] if opt else case.tp
            for name, case, opt in zip(names, fields, optional, strict=True)
        })

    @st.composite
    def records(draw2: st.DrawFn) -> Sample:
        py: dict[str, Any] = {}
        js: dict[str, Any] = {}
        slots: list[Slot] = [((), kinds)]
        for name, case, opt in zip(names, fields, optional, strict=True):
            if opt and draw2(st.booleans()):
                if shape == "attrs":
                    py[name] = None  # left out: the attrs default fills it
                continue
            part = draw2(case.samples)
            py[name], js[name] = part.py, part.js
            if opt and shape == "attrs":  # the field is Optional: null is fine there too
                root = ((), part.slots[0][1] | {"null"})
                part = Sample(part.py, part.js, (root, *part.slots[1:]))
            slots.extend(_below(name, part))
        return Sample(cls(**py) if shape == "attrs" else py, js, tuple(slots))

    return Case(cls, kinds, records())


def _path(tokens: tuple[Token, ...]) -> str:
    text = "x"
    for token in tokens:
        text += f"[{token}]" if isinstance(token, int) else f".{token}"
    return text


def _replace(value: Any, tokens: tuple[Token, ...], new: Any) -> Any:
    if not tokens:
        return new
    copy = list(value) if isinstance(value, list) else dict(value)
    head, rest = tokens[0], tokens[1:]
    copy[head] = _replace(value[head], rest, new)  # type: ignore[index]
    return copy


# (a replacement value, the JSON kinds that would accept it)
WRONG = [
    ("text", {"string"}), (True, {"boolean"}), (None, {"null"}), ([], {"array"}),
    ({}, {"object"}), (1.5, {"number"}), (7, {"integer", "number"}),
]


@given(data=st.data())
def test_generated_values_round_trip(data: st.DataObject) -> None:
    case = data.draw(cases())
    tool = make_tool(case.tp)
    json.dumps(tool.parameters)
    sample = data.draw(case.samples)
    arguments = json.loads(json.dumps({"x": sample.js}))
    validate_arguments(arguments, tool.parameters)
    assert prepare(tool, arguments) == {"x": sample.py}


@given(data=st.data())
def test_generated_mistakes_are_named_by_path(data: st.DataObject) -> None:
    case = data.draw(cases())
    tool = make_tool(case.tp)
    sample = data.draw(case.samples)
    tokens, kinds = data.draw(st.sampled_from(sample.slots))
    wrong = [value for value, accepted in WRONG if not accepted & kinds]
    new = data.draw(st.sampled_from(wrong))
    arguments = json.loads(json.dumps({"x": _replace(sample.js, tokens, new)}))
    with pytest.raises(ToolArgumentError) as info:
        prepare(tool, arguments)
    assert f"'{_path(tokens)}'" in str(info.value)
