"""OpenAILLM at the transport seam (httpx.MockTransport): requests, statuses, errors, secrets.

The end-to-end tests over a real loopback server are in test_openai_e2e.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import httpx
import pytest
import trio

from trio_llmstream import (
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    ChatContext,
    FunctionCall,
    NamedToolChoice,
    OpenAILLM,
    ProviderError,
    RetriesExhaustedError,
    StreamInterrupted,
    StreamProtocolError,
    StreamStatus,
    StreamTruncatedError,
    ToolSpec,
    open_llm_stream,
)
from trio_llmstream.providers._http import HTTPX_ERRORS, parse_retry_after, translate_httpx_error

SECRET = "sk-test-SECRET-do-not-leak"


def sse(*payloads: object, done: bool = True) -> bytes:
    out = b"".join(
        b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n"
        for p in payloads
    )
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(content: str | None = None, finish: str | None = None, **delta: object) -> dict:
    d = dict(delta)
    if content is not None:
        d["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    }


def usage_chunk() -> dict:
    return {
        "id": "chatcmpl-1",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="system", content="be brief")
    c.add_message(role="user", content="hi")
    return c


def make_llm(handler: Callable[[httpx.Request], httpx.Response], **kw: object) -> OpenAILLM:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAILLM(
        "gpt-test", base_url="http://mock/v1", api_key=SECRET, http_client=client, **kw
    )


FAST = APIConnectOptions(max_retry=2, retry_interval=0.001, max_retry_interval=0.001)


def stream_response(body: bytes, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, headers={"content-type": "text/event-stream", **headers}, content=body
    )


async def test_text_stream_with_usage() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = sse(chunk(role="assistant"), chunk("Hel"), chunk("lo"), chunk(finish="stop"),
                   usage_chunk())
        return stream_response(body, **{"x-request-id": "req_abc"})

    llm = make_llm(handler)
    async with open_llm_stream(llm, chat_ctx=ctx(), temperature=0.2) as stream:
        result = await stream.collect()
    assert result.text == "Hello"
    assert result.finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.total_tokens == 7
    assert stream.status is StreamStatus.COMPLETED
    body = json.loads(seen[0].content)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "gpt-test"
    assert body["temperature"] == 0.2
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert seen[0].headers["authorization"] == f"Bearer {SECRET}"
    assert seen[0].url == "http://mock/v1/chat/completions"


async def test_request_carries_tools_and_tool_history() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return stream_response(sse(chunk("ok", finish="stop")))

    c = ctx()
    call = FunctionCall("call_1", "weather", '{"city":"Oslo"}')
    c.add_message(role="assistant", tool_calls=[call])
    c.add_tool_result(call, "sunny")
    tool = ToolSpec("weather", "Get the weather", {"type": "object", "properties": {}})
    llm = make_llm(handler, extra_body={"seed": 7})
    async with open_llm_stream(
        llm, chat_ctx=c, tools=[tool], tool_choice=NamedToolChoice("weather"),
        parallel_tool_calls=False, n=1,
    ) as stream:
        await stream.collect()
    body = seen[0]
    assert body["messages"][2] == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}],
    }
    assert body["messages"][3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert body["tools"][0]["function"]["name"] == "weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["n"] == 1
    assert body["seed"] == 7


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after"),
    [
        (429, {"retry-after": "2"}, True, 2.0),
        (429, {"retry-after-ms": "1500"}, True, 1.5),
        (503, {}, True, None),
        (503, {"x-should-retry": "false"}, False, None),
        (400, {}, False, None),
        (400, {"x-should-retry": "true"}, True, None),
        (401, {}, False, None),
        (408, {}, True, None),
        (409, {}, True, None),
        (499, {}, False, None),
    ],
)
async def test_status_errors_are_classified(
    status: int, headers: dict[str, str], retryable: bool, retry_after: float | None
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": "nope", "type": "x", "code": None}}
        return httpx.Response(
            status, headers={"x-request-id": "req_9", **headers}, json=body
        )

    llm = make_llm(handler)
    opts = APIConnectOptions(max_retry=0)
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=opts) as stream:
        with pytest.raises(APIStatusError) as info:
            await stream.collect()
    err = info.value
    assert err.status_code == status
    assert err.retryable is retryable
    assert err.retry_after == retry_after
    assert err.request_id == "req_9"
    assert "nope" in str(err)


async def test_retry_after_429_then_success(autojump_clock: trio.abc.Clock) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(429, headers={"retry-after": "3"}, json={"error": "slow"})
        return stream_response(sse(chunk("fine", finish="stop")))

    llm = make_llm(handler)
    start = trio.current_time()
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        assert (await stream.collect()).text == "fine"
    assert calls == 2
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_in_stream_error_classified_by_type() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        err = {"error": {"message": "busy", "type": "overloaded_error"}}
        return stream_response(sse(chunk(role="assistant"), err))

    llm = make_llm(handler)
    async with open_llm_stream(
        llm, chat_ctx=ctx(), conn_options=APIConnectOptions(max_retry=1, retry_interval=0.001)
    ) as stream:
        with pytest.raises(RetriesExhaustedError) as info:
            await stream.collect()
    assert all(isinstance(e, ProviderError) for e in info.value.errors)
    assert info.value.attempts == 2


async def test_error_after_output_is_interrupted_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        err = {"error": {"message": "boom", "type": "server_error"}}
        return stream_response(sse(chunk("partial "), err))

    llm = make_llm(handler)
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=FAST) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert calls == 1
    assert info.value.partial.text == "partial "
    assert isinstance(info.value.cause, ProviderError)


async def test_truncated_body_is_never_complete() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return stream_response(sse(chunk("cut"), done=False))

    llm = make_llm(handler)
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=FAST) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert isinstance(info.value.cause, StreamTruncatedError)
    assert stream.status is StreamStatus.TRUNCATED


async def test_json_body_instead_of_stream() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": []})

    llm = make_llm(handler)
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=FAST) as stream:
        with pytest.raises(StreamProtocolError, match="expected text/event-stream"):
            await stream.collect()


@pytest.mark.parametrize(
    ("exc", "expected", "retryable"),
    [
        (httpx.ConnectError("refused"), APIConnectionError, True),
        (httpx.ConnectTimeout("slow"), APITimeoutError, True),
        (httpx.ReadError("reset"), APIConnectionError, True),
        (httpx.RemoteProtocolError("peer closed"), APIConnectionError, True),
        (httpx.UnsupportedProtocol("ftp"), APIConnectionError, False),
    ],
)
async def test_transport_errors_translated(
    exc: Exception, expected: type, retryable: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    llm = make_llm(handler)
    async with open_llm_stream(
        llm, chat_ctx=ctx(), conn_options=APIConnectOptions(max_retry=0)
    ) as stream:
        with pytest.raises(expected) as info:
            await stream.collect()
    assert info.value.retryable is retryable
    assert isinstance(info.value.__cause__, type(exc))
    assert SECRET not in str(info.value)


def test_every_httpx_exception_class_is_mapped() -> None:
    """Fails when httpx grows an exception class that the translation table does not name."""
    classes = {
        obj for obj in vars(httpx).values()
        if isinstance(obj, type) and issubclass(obj, Exception)
    }
    assert classes, "httpx exports no exception classes?"
    missing = sorted(c.__name__ for c in classes if c not in HTTPX_ERRORS)
    assert missing == []
    for cls in classes:
        if cls is httpx.HTTPStatusError:
            continue
        instance = cls.__new__(cls)
        Exception.__init__(instance, "x")
        assert translate_httpx_error(instance).__class__.__module__.startswith("trio_llmstream")


def test_retry_after_parsing() -> None:
    h = httpx.Headers
    assert parse_retry_after(h({"retry-after": "1.5"})) == 1.5
    assert parse_retry_after(h({"retry-after-ms": "250"})) == 0.25
    assert parse_retry_after(h({"retry-after": "soon"})) is None
    assert parse_retry_after(h({"retry-after": "-3"})) is None
    date = "Wed, 21 Oct 2015 07:28:30 GMT"
    assert parse_retry_after(h({"retry-after": date}), now=1445412480.0) == 30.0
    assert parse_retry_after(h({})) is None


async def test_api_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "bad key"}})

    llm = make_llm(handler)
    assert SECRET not in repr(llm)
    assert "api_key=set" in repr(llm)
    with caplog.at_level(logging.DEBUG):
        async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
            with pytest.raises(APIStatusError) as info:
                await stream.collect()
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert SECRET not in caplog.text
    assert SECRET not in repr(stream.metrics)


async def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return stream_response(sse(chunk("x", finish="stop")))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    llm = OpenAILLM("m", base_url="http://mock/v1", http_client=client)
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        await stream.collect()
    assert seen[0].headers["authorization"] == "Bearer sk-env"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert "api_key=none" in repr(OpenAILLM("m", http_client=client))


async def test_client_ownership() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    async with OpenAILLM("m", http_client=client) as llm:
        assert llm.http_client is client
    assert not client.is_closed  # the caller's client is the caller's to close
    await client.aclose()
    owned = OpenAILLM("m")
    await owned.aclose()
    assert owned.http_client.is_closed
