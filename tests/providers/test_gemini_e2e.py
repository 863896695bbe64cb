"""End to end: GeminiLLM + open_llm_stream against the loopback mock server.

Real HTTP on 127.0.0.1, Gemini transcripts (``trio_llmstream.testing``'s Gemini builders), the
retry rule around the commit point for Gemini's in-stream 503 (framed and raw), truncation, the
tool loop with results sent back as ``functionResponse`` parts, and the replay property: a
recorded turn sent back arrives with its thought signatures and arguments byte-equal.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_llmstream import (
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    ChatContext,
    FunctionCall,
    GeminiLLM,
    ProviderError,
    StreamInterrupted,
    StreamStatus,
    StreamTruncatedError,
    Timeouts,
    function_tool,
    open_llm_stream,
    open_tool_loop,
)
from trio_llmstream.testing import (
    ChunkEvent,
    MockLLMServer,
    StreamStep,
    gemini_blocked_stream,
    gemini_error_event,
    gemini_frame,
    gemini_text_stream,
    gemini_tool_call_stream,
    inject_fault,
    json_response,
    open_mock_server,
)

TEXT = "The quick brown fox jumps over the lazy dog."
KEY = "gm-e2e-secret-key-123456"
OPTIONS = APIConnectOptions(
    max_retry=2,
    retry_interval=0.01,
    max_retry_interval=0.02,
    timeouts=Timeouts(connect=2.0, first_token=2.0, idle=1.0),
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
async def llm(server: MockLLMServer) -> AsyncIterator[GeminiLLM]:
    async with GeminiLLM("gemini-2.5-flash", base_url=server.base_url, api_key=KEY) as p:
        yield p


async def test_text_thoughts_usage_and_the_request(server: MockLLMServer, llm: GeminiLLM) -> None:
    server.enqueue(gemini_text_stream(TEXT, thoughts="Simple.", crlf=True, cached_tokens=3))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS, n=None) as stream:
        result = await stream.collect()
    assert result.text == TEXT
    assert result.reasoning == "Simple."
    assert result.finish_reason == "stop"
    assert stream.status is StreamStatus.COMPLETED
    assert result.usage is not None
    assert result.usage.cached_tokens == 3
    assert result.usage.source == "provider"
    record = server.last_request
    assert record.path == "/v1/models/gemini-2.5-flash:streamGenerateContent"
    assert record.query == "alt=sse"
    assert record.headers["x-goog-api-key"] == KEY
    assert KEY not in record.path + record.query
    assert record.json["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert record.json["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


@pytest.mark.parametrize("framed", [True, False])
async def test_overloaded_before_text_is_retried(
    server: MockLLMServer, llm: GeminiLLM, framed: bool
) -> None:
    server.enqueue(
        (gemini_error_event(framed=framed),),
        gemini_text_stream(TEXT),
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        texts = [c.text async for c in stream]
    assert "".join(texts) == TEXT
    assert stream.status is StreamStatus.COMPLETED
    assert stream.metrics is not None
    assert [type(a.error) for a in stream.metrics.attempts] == [ProviderError, type(None)]
    assert len(server.chat_requests) == 2


@pytest.mark.parametrize("framed", [True, False])
async def test_overloaded_after_text_interrupts_and_is_not_retried(
    server: MockLLMServer, llm: GeminiLLM, framed: bool
) -> None:
    script = inject_fault(
        gemini_text_stream(TEXT, chunk_size=4), gemini_error_event(framed=framed), after=3
    )
    server.enqueue(script, gemini_text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert isinstance(info.value.cause, ProviderError)
    assert info.value.cause.retryable
    assert info.value.partial.text == TEXT[:12]
    assert len(server.chat_requests) == 1
    assert stream.metrics is not None
    usage = stream.metrics.attempts[0].usage
    assert usage is not None
    assert usage.source == "provider_partial"


async def test_invalid_argument_in_stream_is_not_retried(
    server: MockLLMServer, llm: GeminiLLM
) -> None:
    server.enqueue((gemini_error_event(400, "Bad field.", "INVALID_ARGUMENT", framed=False),))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(ProviderError, match="Bad field"):
            await stream.collect()
    assert len(server.chat_requests) == 1
    assert stream.status is StreamStatus.FAILED


async def test_truncation_is_never_complete(server: MockLLMServer, llm: GeminiLLM) -> None:
    cut = gemini_text_stream(TEXT, finish_reason=None)
    server.enqueue(cut, cut, cut)
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert isinstance(info.value.cause, StreamTruncatedError)
    assert stream.status is StreamStatus.TRUNCATED
    assert len(server.chat_requests) == 1


async def test_truncation_before_text_is_retried(server: MockLLMServer, llm: GeminiLLM) -> None:
    server.enqueue(
        inject_fault(gemini_text_stream(TEXT), "truncate", after=0), gemini_text_stream(TEXT)
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        result = await stream.collect()
    assert result.text == TEXT
    assert stream.metrics is not None
    assert [type(a.error) for a in stream.metrics.attempts] == [StreamTruncatedError, type(None)]


async def test_drop_before_commit_is_retried(server: MockLLMServer, llm: GeminiLLM) -> None:
    server.enqueue(
        inject_fault(gemini_text_stream(TEXT), "drop", after=0), gemini_text_stream(TEXT)
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        result = await stream.collect()
    assert result.text == TEXT
    assert stream.metrics is not None
    assert type(stream.metrics.attempts[0].error) is APIConnectionError


async def test_blocked_prompt_completes_as_content_filter(
    server: MockLLMServer, llm: GeminiLLM
) -> None:
    server.enqueue(gemini_blocked_stream("SAFETY"))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        result = await stream.collect()
    assert result.finish_reason == "content_filter"
    assert stream.status is StreamStatus.COMPLETED


async def test_status_errors_with_retry_info_and_no_key_leak(
    server: MockLLMServer, llm: GeminiLLM
) -> None:
    error = {
        "error": {
            "code": 429,
            "message": f"Quota exceeded for key {KEY}.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.01s"}
            ],
        }
    }
    server.enqueue(json_response(error, status=429), gemini_text_stream("ok"))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        result = await stream.collect()
    assert result.text == "ok"
    assert stream.metrics is not None
    first = stream.metrics.attempts[0].error
    assert isinstance(first, APIStatusError)
    assert first.retry_after == pytest.approx(0.01)
    assert "RESOURCE_EXHAUSTED" in str(first)
    assert KEY not in str(first)
    assert KEY not in json.dumps(first.body)
    bad = {"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}
    server.enqueue(json_response(bad, status=400))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(APIStatusError, match="INVALID_ARGUMENT"):
            await stream.collect()


async def test_json_error_with_200_is_a_provider_error(
    server: MockLLMServer, llm: GeminiLLM
) -> None:
    error = [{"error": {"code": 400, "message": "nope", "status": "FAILED_PRECONDITION"}}]
    server.enqueue(json_response(error))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(ProviderError, match="nope"):
            await stream.collect()


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: the city's name
    """
    return f"Sunny in {city}"


async def test_tool_loop_sends_function_responses_and_signatures_back(
    server: MockLLMServer, llm: GeminiLLM
) -> None:
    args = '{"city":  "Z\\u00fcrich"}'
    server.enqueue(
        gemini_tool_call_stream([("get_weather", args)], text="Checking.", signature="U0lHLTE="),
        gemini_text_stream("It is sunny."),
    )
    chat = ctx()
    async with open_tool_loop(llm, chat, [get_weather], conn_options=OPTIONS) as loop:
        events = [e async for e in loop]
    assert loop.stop_reason == "no_tool_calls"
    assert len(events) > 0
    first, second = (r.json for r in server.chat_requests)
    declaration = first["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "get_weather"
    assert declaration["parametersJsonSchema"]["properties"]["city"]["type"] == "string"
    assert second["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Zürich"}},
                    "thoughtSignature": "U0lHLTE=",
                },
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"result": "Sunny in Zürich"},
                    }
                }
            ],
        },
    ]
    # The arguments went back byte-equal, as the model wrote them.
    assert b'"args":{"city":  "Z\\u00fcrich"}' in server.chat_requests[1].body


async def test_parallel_calls_results_travel_in_one_turn_with_server_ids(
    server: MockLLMServer, llm: GeminiLLM
) -> None:
    server.enqueue(
        gemini_tool_call_stream(
            [("get_weather", {"city": "A"}), ("get_weather", {"city": "B"})],
            call_ids=["srv-1", "srv-2"],
        ),
        gemini_text_stream("Done."),
    )
    async with open_tool_loop(llm, ctx(), [get_weather], conn_options=OPTIONS) as loop:
        async for _ in loop:
            pass
    second = server.chat_requests[1].json
    model, results = second["contents"][1:]
    assert [p["functionCall"]["id"] for p in model["parts"]] == ["srv-1", "srv-2"]
    assert results == {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "name": "get_weather",
                    "id": "srv-1",
                    "response": {"result": "Sunny in A"},
                }
            },
            {
                "functionResponse": {
                    "name": "get_weather",
                    "id": "srv-2",
                    "response": {"result": "Sunny in B"},
                }
            },
        ],
    }


_signature = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
    min_size=1,
    max_size=40,
)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    signatures=st.lists(_signature, min_size=1, max_size=3),
    args=st.lists(
        st.dictionaries(st.text(max_size=6), _json_value, max_size=3), min_size=1, max_size=3
    ),
    text=st.text(max_size=20),
    text_signature=st.none() | _signature,
    spaced=st.booleans(),
)
async def test_a_recorded_turn_replays_with_provider_fields_unchanged(
    signatures: list[str],
    args: list[dict[str, object]],
    text: str,
    text_signature: str | None,
    spaced: bool,
) -> None:
    separators = (", ", ":  ") if spaced else (",", ":")
    calls = [(f"tool_{i}", json.dumps(v, separators=separators)) for i, v in enumerate(args)]
    parts: list[dict[str, object]] = []
    for i, (name, raw) in enumerate(calls):
        part: dict[str, object] = {
            "functionCall": {"name": name, "args": msgspec.Raw(raw.encode())}
        }
        if i < len(signatures):
            part["thoughtSignature"] = signatures[i]
        parts.append(part)
    frames: list[StreamStep] = []
    if text or text_signature:
        text_part: dict[str, object] = {"text": text}
        if text_signature is not None:
            text_part["thoughtSignature"] = text_signature
        frames.append(ChunkEvent(gemini_frame([text_part])))
    frames.append(ChunkEvent(gemini_frame(parts, finish_reason="STOP")))
    async with open_mock_server() as server:
        server.enqueue(frames, gemini_text_stream("ok"))
        async with GeminiLLM("m", base_url=server.base_url, api_key=KEY) as llm:
            chat = ctx()
            async with open_llm_stream(llm, chat_ctx=chat, conn_options=OPTIONS) as stream:
                response = await stream.collect()
            chat.append(response.message())
            for call in response.function_calls:
                chat.add_tool_result(call, "done")
            async with open_llm_stream(llm, chat_ctx=chat, conn_options=OPTIONS) as stream:
                await stream.collect()
        replayed = server.chat_requests[1].json["contents"][1]["parts"]
        replayed_body = server.chat_requests[1].body
    assert response.function_calls == tuple(
        FunctionCall(f"call_{i}", name, raw) for i, (name, raw) in enumerate(calls)
    )
    sent_calls = [p for p in replayed if "functionCall" in p]
    assert [p["functionCall"]["name"] for p in sent_calls] == [name for name, _ in calls]
    for i, part in enumerate(sent_calls):
        assert part.get("thoughtSignature") == (signatures[i] if i < len(signatures) else None)
        # The args text went back byte for byte.
        assert b'"args":' + calls[i][1].encode() in replayed_body
    texts = [p for p in replayed if "text" in p]
    if text or text_signature:
        assert texts == [
            {"text": text, **({"thoughtSignature": text_signature} if text_signature else {})}
        ]
    else:
        assert texts == []
