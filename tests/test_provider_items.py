"""Provider-owned pieces of a turn travel with the stream, never commit it, and come back on
the assistant message verbatim."""

from __future__ import annotations

from trio_llmstream import (
    ChatChunk,
    ChatContext,
    ChatMessage,
    Choice,
    ChoiceDelta,
    FunctionCall,
    ProviderItem,
    StreamStatus,
    open_llm_stream,
)
from trio_llmstream.testing import Fault, ScriptedAttempt, ScriptedLLM, text_chunks

THINKING = ProviderItem(
    "anthropic", "thinking", '{"type":"thinking","thinking":"hm","signature":"c2ln\\u00e9"}'
)


def _item_chunk(item: ProviderItem) -> ChatChunk:
    return ChatChunk("req-1", [Choice(ChoiceDelta(provider_items=(item,)))])


def test_provider_items_are_not_visible_output() -> None:
    assert not _item_chunk(THINKING).is_visible


async def test_items_reach_the_collected_response_and_the_assistant_message() -> None:
    call = FunctionCall("call_1", "f", '{"x": 1}')
    chunks = text_chunks("Let me check.", tool_calls=[call], finish_reason="tool_calls")
    chunks.insert(1, _item_chunk(THINKING))
    llm = ScriptedLLM([ScriptedAttempt(chunks)])
    ctx = ChatContext()
    ctx.add_message(role="user", content="hi")
    async with open_llm_stream(llm, chat_ctx=ctx) as stream:
        response = await stream.collect()
    assert stream.status is StreamStatus.COMPLETED
    assert response.provider_items == (THINKING,)
    assert response.choices[0].provider_items == (THINKING,)
    message = response.message()
    assert message == ChatMessage(
        role="assistant", content="Let me check.", tool_calls=(call,), provider_items=(THINKING,)
    )
    assert message.provider_items[0].data == THINKING.data  # byte-equal, never re-encoded


async def test_a_failed_attempt_leaves_no_items_behind() -> None:
    first = [_item_chunk(ProviderItem("anthropic", "thinking", "{}"))]
    llm = ScriptedLLM([
        ScriptedAttempt(first, fault=Fault.retryable(after=1)),
        ScriptedAttempt([_item_chunk(THINKING), *text_chunks("ok")]),
    ])
    ctx = ChatContext()
    ctx.add_message(role="user", content="hi")
    async with open_llm_stream(llm, chat_ctx=ctx) as stream:
        response = await stream.collect()
    assert response.provider_items == (THINKING,)
