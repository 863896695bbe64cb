"""GeminiLLM against hostile upstreams: bounded memory, typed errors, early exits, secrets."""

from __future__ import annotations

import gzip
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import trio

from trio_llmstream import (
    APIConnectOptions,
    APITimeoutError,
    ChatContext,
    GeminiLLM,
    LLMMetrics,
    ProviderError,
    StreamInterrupted,
    StreamProtocolError,
    StreamStatus,
    Timeouts,
    open_llm_stream,
)
from trio_llmstream.testing import (
    Delay,
    ResponseOutcome,
    gemini_error_event,
    gemini_text_stream,
    inject_fault,
    open_mock_server,
)

from .hostile_server import Request, Send, body, serve, start

MiB = 1 << 20
BOUND = 12 * MiB
KEY = "AIzaSy-hostile-secret-0123456789"
NO_RETRY = APIConnectOptions(max_retry=0, timeouts=Timeouts(connect=2.0, idle=1.0))
OPTIONS = APIConnectOptions(
    max_retry=1,
    retry_interval=0.01,
    max_retry_interval=0.02,
    timeouts=Timeouts(connect=2.0, first_token=2.0, idle=0.3),
)


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hi")
    return c


async def measure(fn: Callable[[], Awaitable[object]]) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        error: BaseException | None = None
        try:
            await fn()
        except Exception as exc:
            error = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return error, peak - base


async def collect(llm: GeminiLLM, options: APIConnectOptions = NO_RETRY) -> str:
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=options) as stream:
        return (await stream.collect()).text


class _Reads(httpx.AsyncByteStream):
    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for data in self._reads:
            yield data


def in_process(reads: list[bytes], content_type: str = "text/event-stream") -> GeminiLLM:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, stream=_Reads(reads))

    client = httpx.AsyncClient(transport=httpx.MockTransport(respond))
    return GeminiLLM("m", base_url="http://gemini.test/v1beta", api_key=KEY, http_client=client)


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (b"\n" * (32 * MiB), "without a complete event"),
        (b"x" * (32 * MiB), "line"),
        ((b'{"error": "' + b"y" * 1000 + b'"}\n') * (32 * 1024), "without a complete event"),
    ],
)
async def test_a_huge_single_read_is_bounded_and_typed(read: bytes, message: str) -> None:
    llm = in_process([read])
    error, peak = await measure(lambda: collect(llm))
    assert isinstance(error, StreamProtocolError), error
    assert message in str(error)
    assert peak < BOUND, f"peak growth {peak / MiB:.1f} MiB"


async def test_a_gzip_bomb_over_loopback_is_bounded() -> None:
    payload = gzip.compress(b"\r\n" * (32 * MiB), 9)

    async def handler(request: Request, send: Send) -> None:
        headers = [("content-type", "text/event-stream"), ("content-encoding", "gzip")]
        await start(send, 200, headers)
        for i in range(0, len(payload), 16 * 1024):
            await body(send, payload[i : i + 16 * 1024], more=True)
        await body(send, b"")

    async with serve(handler) as url, GeminiLLM("m", base_url=url, api_key=KEY) as llm:
        error, peak = await measure(lambda: collect(llm))
    assert isinstance(error, StreamProtocolError), error
    assert peak < BOUND, f"peak growth {peak / MiB:.1f} MiB"


@pytest.mark.parametrize("framed", [True, False])
async def test_a_key_echoed_in_an_in_stream_error_is_redacted(framed: bool) -> None:
    step = gemini_error_event(
        403, f"API key {KEY} is not allowed.", "PERMISSION_DENIED", framed=framed
    )
    async with open_mock_server((step,)) as server:
        llm = GeminiLLM("m", base_url=server.base_url, api_key=KEY)
        async with llm:
            with pytest.raises(ProviderError) as info:
                await collect(llm)
    assert KEY not in str(info.value)
    assert "[REDACTED]" in str(info.value)
    assert not info.value.retryable
    assert KEY not in server.last_request.path + server.last_request.query


async def test_a_200_that_is_html_is_a_protocol_error() -> None:
    llm = in_process([b"<html>Gateway</html>"], content_type="text/html")
    with pytest.raises(StreamProtocolError, match="text/html"):
        await collect(llm)


async def test_idle_stall_is_caught_and_the_request_closed() -> None:
    async with open_mock_server() as server:
        server.enqueue(
            inject_fault(gemini_text_stream("Hello world", chunk_size=2), "stall", after=2)
        )
        async with GeminiLLM("m", base_url=server.base_url, api_key=KEY) as llm:
            async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
                with pytest.raises(StreamInterrupted) as info:
                    await stream.collect()
            assert isinstance(info.value.cause, APITimeoutError)
            assert info.value.cause.limit == "idle"
            with trio.fail_after(2):
                outcome = await server.last_request.wait_finished()
    assert outcome is ResponseOutcome.DISCONNECTED


async def test_break_mid_stream_closes_the_connection() -> None:
    metrics: list[LLMMetrics] = []
    async with open_mock_server() as server:
        slow = [s for step in gemini_text_stream("Hello world " * 40) for s in (Delay(0.01), step)]
        server.enqueue(slow)
        async with GeminiLLM("m", base_url=server.base_url, api_key=KEY) as llm:
            async with open_llm_stream(
                llm, chat_ctx=ctx(), conn_options=OPTIONS, on_metrics=metrics.append
            ) as stream:
                async for chunk in stream:
                    if chunk.text:
                        break
            with trio.fail_after(2):
                outcome = await server.last_request.wait_finished()
    assert outcome is ResponseOutcome.DISCONNECTED
    assert server.open_responses == 0
    assert [m.status for m in metrics] == [StreamStatus.CANCELLED]
