"""The data model: validation, helpers, conveniences."""

from __future__ import annotations

import attrs
import pytest

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
