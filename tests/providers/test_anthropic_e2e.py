"""End to end: AnthropicLLM + open_llm_stream against the loopback mock server (real HTTP).

In-stream errors before and after the commit point, truncation, status errors, pings as
progress, early exit, the tool loop with Anthropic's tool format, and the replay of recorded
thinking blocks byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio

from trio_llmstream import (
    AnthropicLLM,
    APIConnectOptions,
    APIStatusError,
    ChatContext,
    LLMMetrics,
    ProviderError,
    StreamInterrupted,
    StreamStatus,
    StreamTruncatedError,
    Timeouts,
    open_llm_stream,
)
from trio_llmstream.testing import (
    AnthropicErrorEvent,
    AnthropicEvent,
    Delay,
    MockLLMServer,
    ResponseOutcome,
    StreamStep,
    anthropic_stream,
    anthropic_text_stream,
    error_response,
    inject_fault,
    open_mock_server,
)

THOUGHT = 'Two cities: "Oslo" & Lima \u2713 \\ done'
TEXT = "The quick brown fox jumps over the lazy dog."
KEY = "sk-ant-e2e-0123456789abcdef"
OPTIONS = APIConnectOptions(
    max_retry=2,
    retry_interval=0.01,
    max_retry_interval=0.02,
    timeouts=Timeouts(connect=2.0, first_token=1.0, idle=0.3),
)


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="system", content="Be brief.")
    c.add_message(role="user", content="hi")
    return c


@pytest.fixture
async def server() -> AsyncIterator[MockLLMServer]:
    async with open_mock_server() as srv:
        yield srv


@pytest.fixture
async def llm(server: MockLLMServer) -> AsyncIterator[AnthropicLLM]:
    async with AnthropicLLM("claude-mock", base_url=server.origin, api_key=KEY) as provider:
        yield provider


async def test_full_stream_with_thinking(server: MockLLMServer, llm: AnthropicLLM) -> None:
    server.enqueue(
        anthropic_text_stream(
            TEXT, thinking="Short answer.", signature="EqQBCg==", parts=6,
            input_tokens=20, cache_read_input_tokens=5, output_tokens=[4, 30],
        )
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        result = await stream.collect()
    assert result.text == TEXT
    assert result.reasoning == "Short answer."
    assert result.finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (25, 30)
    assert result.usage.cached_tokens == 5
    assert result.usage.source == "provider"
    assert [i.kind for i in result.provider_items] == ["thinking"]
    assert stream.status is StreamStatus.COMPLETED
    assert stream.metrics.completion_tokens == 30
    request = server.last_request
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.json == {
        "model": "claude-mock",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "system": "Be brief.",
    }


async def test_overloaded_before_text_is_retried_once(
    server: MockLLMServer, llm: AnthropicLLM
) -> None:
    # message_start and a ping went out, then the error: nothing visible, so retried.
    failing = [*anthropic_text_stream(TEXT)[:2], AnthropicErrorEvent("overloaded_error")]
    server.enqueue(failing, anthropic_text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        texts = [c.text async for c in stream]
    assert "".join(texts) == TEXT
    attempts = stream.metrics.attempts
    assert [type(a.error) for a in attempts] == [ProviderError, type(None)]
    first_error = attempts[0].error
    assert isinstance(first_error, ProviderError)
    assert first_error.type == "overloaded_error"
    # The failed attempt keeps the usage message_start reported, flagged partial.
    assert attempts[0].usage is not None
    assert attempts[0].usage.source == "provider_partial"
    assert len(server.chat_requests) == 2


async def test_overloaded_after_text_interrupts_and_is_never_regenerated(
    server: MockLLMServer, llm: AnthropicLLM
) -> None:
    steps = inject_fault(
        anthropic_text_stream(TEXT, parts=4), AnthropicErrorEvent("overloaded_error"), after=6
    )
    server.enqueue(steps, anthropic_text_stream("SHOULD NOT BE ASKED"))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    cause = info.value.cause
    assert isinstance(cause, ProviderError)
    assert cause.type == "overloaded_error"
    assert cause.retryable  # retryable in itself; the commit point forbids the retry
    assert info.value.partial.text == TEXT[:33]  # three of four text deltas
    assert len(server.chat_requests) == 1
    assert stream.status is StreamStatus.FAILED


async def test_invalid_request_error_is_not_retried(
    server: MockLLMServer, llm: AnthropicLLM
) -> None:
    server.enqueue(
        [*anthropic_text_stream(TEXT)[:1], AnthropicErrorEvent("invalid_request_error", "bad")],
        anthropic_text_stream(TEXT),
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(ProviderError, match="bad") as info:
            await stream.collect()
    assert info.value.type == "invalid_request_error"
    assert len(server.chat_requests) == 1


async def test_truncation_before_and_after_commit(
    server: MockLLMServer, llm: AnthropicLLM
) -> None:
    server.enqueue(anthropic_text_stream(TEXT, stop=False))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert isinstance(info.value.cause, StreamTruncatedError)
    assert info.value.partial.text == TEXT
    assert stream.status is StreamStatus.TRUNCATED
    # Cut right after message_start: nothing visible yet, retried.
    server.enqueue(anthropic_text_stream(TEXT)[:1], anthropic_text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        assert (await stream.collect()).text == TEXT
    assert isinstance(stream.metrics.attempts[0].error, StreamTruncatedError)


async def test_status_529_retried_and_400_not(server: MockLLMServer, llm: AnthropicLLM) -> None:
    server.enqueue(error_response(529, "Overloaded", type="overloaded_error"),
                   anthropic_text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        assert (await stream.collect()).text == TEXT
    err = stream.metrics.attempts[0].error
    assert isinstance(err, APIStatusError)
    assert err.status_code == 529
    server.enqueue(error_response(400, "bad max_tokens", type="invalid_request_error"))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(APIStatusError, match="bad max_tokens"):
            await stream.collect()


async def test_pings_are_progress_for_the_idle_clock(
    server: MockLLMServer, llm: AnthropicLLM
) -> None:
    # Idle limit 0.3 s; pings every 0.1 s for 0.8 s before the first text: not idle.
    pinging: list[StreamStep] = list(anthropic_text_stream(TEXT)[:1])
    for _ in range(8):
        pinging += [Delay(0.1), AnthropicEvent({"type": "ping"})]
    pinging += anthropic_text_stream(TEXT)[1:]
    server.enqueue(pinging)
    options = APIConnectOptions(max_retry=0, timeouts=Timeouts(first_token=5.0, idle=0.3))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=options) as stream:
        assert (await stream.collect()).text == TEXT


async def test_break_mid_stream_closes_the_connection(
    server: MockLLMServer, llm: AnthropicLLM
) -> None:
    metrics: list[LLMMetrics] = []
    server.enqueue(anthropic_text_stream(TEXT * 10, parts=200, delay=0.005))
    async with open_llm_stream(
        llm, chat_ctx=ctx(), conn_options=OPTIONS, on_metrics=metrics.append
    ) as stream:
        async for chunk in stream:
            if chunk.text:
                break
    with trio.fail_after(2):
        assert await server.last_request.wait_finished() is ResponseOutcome.DISCONNECTED
    assert [m.status for m in metrics] == [StreamStatus.CANCELLED]


async def test_the_key_never_leaks_from_an_echoing_error(
    server: MockLLMServer, llm: AnthropicLLM
) -> None:
    server.enqueue(
        [*anthropic_text_stream(TEXT)[:1],
         AnthropicErrorEvent("invalid_request_error", f"bad key x-api-key: {KEY}")]
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(ProviderError) as info:
            await stream.collect()
    assert KEY not in str(info.value)
    assert KEY not in repr(stream.metrics)


async def test_tool_loop_and_byte_equal_replay(server: MockLLMServer, llm: AnthropicLLM) -> None:
    from trio_llmstream import ChatChunk, FunctionTool, ToolOutcome, open_tool_loop

    async def get_weather(city: str) -> str:
        return f"sunny in {city}"

    tool = FunctionTool(
        get_weather, "get_weather", "Weather for a city",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    first = anthropic_stream(
        [
            {"type": "thinking", "thinking": THOUGHT, "signature": "Eq/+=="},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "toolu_o", "name": "get_weather",
             "input_json": '{"city": "Oslo"}'},
            {"type": "tool_use", "id": "toolu_l", "name": "get_weather",
             "input_json": '{"city":"Lima"}'},
        ],
        stop_reason="tool_use",
        parts=4,
    )
    server.enqueue(first, anthropic_text_stream("Oslo and Lima are sunny."))
    conversation = ctx()
    events: list[object] = []
    async with open_tool_loop(llm, conversation, [tool], conn_options=OPTIONS) as loop:
        async for event in loop:
            events.append(event)
    assert loop.stop_reason == "no_tool_calls"
    outcomes = [e for e in events if isinstance(e, ToolOutcome)]
    assert sorted(o.output for o in outcomes) == ["sunny in Lima", "sunny in Oslo"]
    assert "".join(e.text for e in events if isinstance(e, ChatChunk)).endswith("sunny.")
    one, two = server.chat_requests
    assert one.json["tools"] == [  # type: ignore[index]
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {
                "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]
            },
        }
    ]
    # The recorded items went back exactly as the assembler stored them.
    assistant = conversation.messages[2]
    assert assistant.role == "assistant"
    for item in assistant.provider_items:
        assert item.data.encode() in two.body
    messages = json.loads(two.body)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    blocks = messages[1]["content"]
    assert [b["type"] for b in blocks] == [
        "thinking", "redacted_thinking", "text", "tool_use", "tool_use"
    ]
    assert blocks[0] == {"type": "thinking", "thinking": THOUGHT, "signature": "Eq/+=="}
    assert blocks[1] == {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}
    assert b'"input":{"city": "Oslo"}' in two.body  # arguments spliced verbatim
    assert [(b["tool_use_id"], b["content"]) for b in messages[2]["content"]] == [
        ("toolu_o", "sunny in Oslo"), ("toolu_l", "sunny in Lima")
    ]


async def test_json_error_on_a_200_keeps_its_type(
    server: MockLLMServer, llm: AnthropicLLM
) -> None:
    from trio_llmstream.testing import json_response

    server.enqueue(
        json_response({"type": "error", "error": {"type": "overloaded_error",
                                                  "message": "Overloaded"}}),
        anthropic_text_stream(TEXT),
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        assert (await stream.collect()).text == TEXT
    first = stream.metrics.attempts[0].error
    assert isinstance(first, ProviderError)
    assert first.type == "overloaded_error"


async def test_an_html_page_is_a_protocol_error_not_retried(
    server: MockLLMServer, llm: AnthropicLLM
) -> None:
    from trio_llmstream import StreamProtocolError
    from trio_llmstream.testing import MockResponse, RawBytes

    page = MockResponse(
        headers={"content-type": "text/html"}, steps=[RawBytes(b"<html>login</html>")]
    )
    server.enqueue(page, anthropic_text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamProtocolError, match="text/html"):
            await stream.collect()
    assert len(server.chat_requests) == 1


async def test_a_gzip_body_is_decoded_and_identity_is_asked(
    server: MockLLMServer, llm: AnthropicLLM
) -> None:
    import gzip

    from trio_llmstream.testing import MockResponse, RawBytes, sse_response

    raw = sse_response(anthropic_text_stream(TEXT)).body_bytes()
    server.enqueue(
        MockResponse(headers={"content-encoding": "gzip"}, steps=[RawBytes(gzip.compress(raw))])
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        assert (await stream.collect()).text == TEXT
    assert server.last_request.headers["accept-encoding"] == "identity"


async def test_a_caller_client_is_used_and_not_closed(server: MockLLMServer) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        async with AnthropicLLM("m", base_url=server.origin, api_key=KEY,
                                http_client=client) as llm:
            server.enqueue(anthropic_text_stream(TEXT))
            async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
                assert (await stream.collect()).text == TEXT
        assert not client.is_closed
