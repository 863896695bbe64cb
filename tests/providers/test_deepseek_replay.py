"""DeepSeek through chat completions: ``reasoning_content`` is sent back on tool-call turns.

DeepSeek answers 400 when an assistant turn with tool calls comes back without the
``reasoning_content`` it streamed. The chat assembler records the reasoning streamed in that
field as ``ProviderItem("openai.chat", "reasoning_content", text)`` on the choice's finish, and
``OpenAILLM`` sends it back on the assistant message that carries the item.
"""

from __future__ import annotations

import json

import pytest

from trio_llmstream import (
    ChatContext,
    ChatMessage,
    OpenAILLM,
    ProviderItem,
    StreamProtocolError,
    open_llm_stream,
)
from trio_llmstream._core import _openai
from trio_llmstream._core._openai import ChatCompletionParser
from trio_llmstream.providers.openai import _wire_message
from trio_llmstream.testing import ChunkEvent, DoneEvent, chat_chunk, open_mock_server, text_stream

REASONING = ["The user wants ", "the weather in ", "Paris — I'll call the tool."]


def deepseek_turn(field: str = "reasoning_content") -> tuple[ChunkEvent | DoneEvent, ...]:
    call = {"index": 0, "id": "call_0", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return (
        ChunkEvent(chat_chunk({"role": "assistant", "content": None, field: ""})),
        *(ChunkEvent(chat_chunk({field: piece})) for piece in REASONING),
        ChunkEvent(chat_chunk({"tool_calls": [call]})),
        ChunkEvent(chat_chunk({}, finish_reason="tool_calls")),
        DoneEvent(),
    )


def body(steps: tuple[ChunkEvent | DoneEvent, ...]) -> bytes:
    return b"".join(step._compile() for step in steps)


@pytest.mark.parametrize("reads", [None, 1, 7])
def test_reasoning_content_is_recorded_at_the_finish(reads: int | None) -> None:
    data = body(deepseek_turn())
    parser = ChatCompletionParser()
    chunks = []
    step = reads or len(data)
    for start in range(0, len(data), step):
        chunks += parser.feed(data[start : start + step])
    chunks += parser.end()
    assert parser.error is None
    items = [i for k in chunks for c in k.choices for i in c.delta.provider_items]
    assert items == [ProviderItem("openai.chat", "reasoning_content", "".join(REASONING))]
    [finish] = [c for k in chunks for c in k.choices if c.finish_reason]
    assert finish.delta.provider_items == tuple(items)
    # The reasoning is still streamed as reasoning, once.
    assert "".join(c.delta.reasoning or "" for k in chunks for c in k.choices) == "".join(
        REASONING
    )


def test_the_reasoning_field_is_not_recorded() -> None:
    # Ollama and newer vLLM stream ``reasoning``; nothing asks for it back.
    parser = ChatCompletionParser()
    chunks = parser.feed(body(deepseek_turn("reasoning"))) + parser.end()
    assert all(not c.delta.provider_items for k in chunks for c in k.choices)


def test_recorded_reasoning_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_openai, "DEFAULT_MAX_REASONING_BYTES", 20)
    parser = ChatCompletionParser()
    chunks = parser.feed(body(deepseek_turn())) + parser.end()
    assert isinstance(parser.error, StreamProtocolError)
    assert "reasoning_content exceeds 20 bytes" in str(parser.error)
    assert "".join(c.delta.reasoning or "" for k in chunks for c in k.choices) == REASONING[0]


def test_wire_message_sends_it_back_only_with_the_item() -> None:
    item = ProviderItem("openai.chat", "reasoning_content", "why")
    assert _wire_message(ChatMessage(role="assistant", content="a", provider_items=[item])) == {
        "role": "assistant", "content": "a", "reasoning_content": "why"}
    other = ProviderItem("openai.responses", "reasoning", "{}")
    assert "reasoning_content" not in _wire_message(
        ChatMessage(role="assistant", content="a", reasoning="why", provider_items=[other])
    )


async def test_a_recorded_deepseek_turn_replays_reasoning_content() -> None:
    async with open_mock_server(deepseek_turn(), text_stream("Sunny.")) as server:
        async with OpenAILLM("deepseek-reasoner", base_url=server.base_url, api_key="k") as llm:
            conversation = ChatContext()
            conversation.add_message(role="user", content="Weather in Paris?")
            async with open_llm_stream(llm, chat_ctx=conversation) as stream:
                result = await stream.collect()
            conversation.messages.append(result.message())
            conversation.add_tool_result(result.function_calls[0], "sunny")
            async with open_llm_stream(llm, chat_ctx=conversation) as stream:
                assert (await stream.collect()).text == "Sunny."
        sent = server.chat_requests[1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["reasoning_content"] == "".join(REASONING)
    assert sent[1]["tool_calls"][0]["id"] == "call_0"
    assert "reasoning_content" not in sent[0]
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
