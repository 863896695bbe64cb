"""The data model: validation, helpers, conveniences."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from typing import Any

import attrs
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    APIConnectOptions,
    ChatChunk,
    ChatContext,
    ChatMessage,
    Choice,
    ChoiceDelta,
    CompletionUsage,
    FunctionCall,
    Timeouts,
)
from trio_llmstream._models import NO_CALLS, NO_CHOICES
from trio_llmstream.journal._entry import decode_chunk, encode_chunk


def test_roles_are_validated() -> None:
    with pytest.raises(ValueError, match="role must be one of"):
        ChatMessage(role="robot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tool_call_id"):
        ChatMessage(role="tool", content="x")
    with pytest.raises(ValueError, match="only assistant"):
        ChatMessage(role="user", tool_calls=[FunctionCall("c", "f", "{}")])


def test_context_helpers() -> None:
    ctx = ChatContext()
    ctx.add_message(role="system", content="be brief")
    call = FunctionCall("call_1", "weather", '{"city": "Oslo"}')
    ctx.add_message(role="assistant", tool_calls=[call])
    ctx.add_tool_result(call, "sunny")
    assert [m.role for m in ctx.messages] == ["system", "assistant", "tool"]
    assert ctx.messages[2].tool_call_id == "call_1"
    assert ctx.messages[2].name == "weather"
    copy = ctx.copy()
    copy.add_message(role="user", content="more")
    assert len(ctx.messages) == 3


def test_models_are_frozen() -> None:
    chunk = ChatChunk("r", [Choice(ChoiceDelta(content="hi"))])
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        chunk.request_id = "other"  # type: ignore[misc]


def test_chunk_conveniences() -> None:
    assert ChatChunk("r", [Choice(ChoiceDelta(content="hi"))]).text == "hi"
    usage_only = ChatChunk("r", [], usage=CompletionUsage(1, 2, 3))
    assert usage_only.text == ""
    assert usage_only.delta is None
    assert not usage_only.is_visible
    assert not ChatChunk("r", [Choice(ChoiceDelta(role="assistant"))]).is_visible
    assert ChatChunk("r", [Choice(ChoiceDelta(reasoning="hmm"))]).is_visible
    call = FunctionCall("c", "f", "{}")
    assert ChatChunk("r", [Choice(ChoiceDelta(tool_calls=[call]))]).is_visible


def test_timeouts_validated_and_per_attempt() -> None:
    with pytest.raises(ValueError, match="positive"):
        Timeouts(idle=0)
    options = APIConnectOptions(timeouts=lambda a: Timeouts(first_token=0.5 * 2**a))
    assert [options.timeouts_for(a).first_token for a in range(3)] == [0.5, 1.0, 2.0]
    assert APIConnectOptions(timeout=3).timeouts_for(0) == Timeouts(
        connect=3, first_event=3, idle=3
    )
    assert APIConnectOptions().timeouts_for(0) == Timeouts()
    bad = APIConnectOptions(timeouts=lambda a: 5)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="expected a Timeouts"):
        bad.timeouts_for(0)


# -- the shared read-only empty list (issue 16: one GC-tracked object fewer per chunk) ---------


def test_empty_lists_of_the_chunk_model_are_the_shared_one() -> None:
    assert ChoiceDelta().tool_calls is NO_CALLS
    assert ChatChunk("r").choices is NO_CHOICES
    assert NO_CALLS is NO_CHOICES  # type: ignore[comparison-overlap]  # one object: empty
    mine: list[FunctionCall] = []
    assert ChoiceDelta(tool_calls=mine).tool_calls is mine  # what a caller passes is kept


def test_the_shared_empty_list_reads_as_an_empty_list() -> None:
    assert NO_CALLS == []
    assert [] == NO_CALLS  # noqa: SIM300 (the other side's __eq__, on purpose)
    assert [FunctionCall("c", "f", "{}")] != NO_CALLS
    assert isinstance(NO_CALLS, list)
    assert not NO_CALLS
    assert len(NO_CALLS) == 0
    assert list(NO_CALLS) == []
    assert repr(NO_CALLS) == "[]"
    assert json.dumps(NO_CALLS) == "[]"
    # A chunk holding it is equal to, and shows like, one built with a fresh list.
    shared = ChatChunk("r", [Choice(ChoiceDelta(content="hi"))])
    fresh = ChatChunk("r", [Choice(ChoiceDelta(content="hi", tool_calls=[]))])
    assert shared == fresh
    assert repr(shared) == repr(fresh)
    assert ChatChunk("r") == ChatChunk("r", [])
    assert attrs.evolve(shared, usage=None) == fresh
    assert attrs.asdict(shared) == attrs.asdict(fresh)
    assert msgspec.json.encode(shared) == msgspec.json.encode(fresh)
    assert msgspec.json.decode(encode_chunk(shared)) == msgspec.json.decode(encode_chunk(fresh))
    assert decode_chunk(encode_chunk(shared)) == shared


_ADDING: dict[str, Callable[[list[Any], list[Any]], object]] = {
    "append": lambda x, items: x.append(items[0]),
    "extend": lambda x, items: x.extend(items),
    "insert": lambda x, items: x.insert(0, items[0]),
    "item": lambda x, items: x.__setitem__(0, items[0]),
    "slice": lambda x, items: x.__setitem__(slice(0, 0), items),
    "+=": lambda x, items: x.__iadd__(items),
    "__init__": lambda x, items: x.__init__(items),  # type: ignore[misc]
}


@given(
    op=st.sampled_from(sorted(_ADDING)),
    items=st.lists(st.builds(FunctionCall, st.text(), st.text(), st.text()), min_size=1),
)
def test_the_shared_empty_list_refuses_to_grow(op: str, items: list[FunctionCall]) -> None:
    # Shared by every chunk: an item added through one chunk would show in all of them.
    chunk = ChatChunk("r", [Choice(ChoiceDelta(content="hi"))])
    calls = chunk.choices[0].delta.tool_calls
    with pytest.raises(TypeError, match="shared by every chunk and read-only"):
        _ADDING[op](calls, items)
    assert NO_CALLS == []
    assert ChoiceDelta().tool_calls == []


def test_removing_from_the_shared_empty_list_finds_nothing() -> None:
    NO_CALLS.clear()
    NO_CALLS.sort()
    NO_CALLS.reverse()
    with pytest.raises(IndexError):
        NO_CALLS.pop()
    with pytest.raises(ValueError):
        NO_CALLS.remove(FunctionCall("c", "f", "{}"))
    assert NO_CALLS == []


def test_copies_of_the_shared_empty_list_are_ordinary_lists() -> None:
    call = FunctionCall("c", "f", "{}")
    copies = [
        list(NO_CALLS),
        NO_CALLS.copy(),
        NO_CALLS[:],
        NO_CALLS + [],  # noqa: RUF005 (concatenation is one of the copies checked)
        copy.copy(NO_CALLS),
        copy.deepcopy(NO_CALLS),
        pickle.loads(pickle.dumps(NO_CALLS)),
    ]
    for c in copies:
        assert type(c) is list
        assert c == []
        c.append(call)
        assert c == [call]
    assert NO_CALLS == []
    # A copied or unpickled chunk is equal to the original; its list is its own.
    chunk = ChatChunk("r", [Choice(ChoiceDelta(content="hi"))])
    for twin in (copy.deepcopy(chunk), pickle.loads(pickle.dumps(chunk))):
        assert twin == chunk
        assert twin.choices[0].delta.tool_calls is not NO_CALLS
        assert type(twin.choices[0].delta.tool_calls) is list
    assert b"_EmptyList" not in pickle.dumps(chunk)  # no private name in a pickle
