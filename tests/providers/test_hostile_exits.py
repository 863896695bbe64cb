"""OpenAILLM under hostile timing: leaving early reads no further byte, response headers that
never come, and only complete data events count as progress (``emit.send``)."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    APIConnectOptions,
    APITimeoutError,
    ChatContext,
    OpenAILLM,
    RetriesExhaustedError,
    Timeouts,
    open_llm_stream,
)
from trio_llmstream._llm import AttemptInfo
from trio_llmstream._models import ChatChunk, ChatMessage, ChatRequest

from .hostile_server import Request, Send, body, serve, start

DONE = b"data: [DONE]\n\n"


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hi")
    return c


def chunk(content: str, finish: str | None = None) -> bytes:
    payload = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class CountedBody(httpx.AsyncByteStream):
    """A transport body that does not stop at ``aclose()`` (like ``httpx.MockTransport``
    bodies and in-process apps), counting the reads it produced; ``delay`` before each. Without
    a delay every read is ready at once (no checkpoint), so the provider is held up in
    ``emit.send``, never inside a read, when the consumer leaves."""

    def __init__(self, reads: Sequence[bytes], *, delay: float = 0.0) -> None:
        self.reads = list(reads)
        self.delay = delay
        self.produced = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for data in self.reads:
            if self.delay:
                await trio.sleep(self.delay)
            self.produced += 1
            yield data

    async def aclose(self) -> None:
        self.closed = True


def mock_llm(transport: httpx.AsyncBaseTransport) -> OpenAILLM:
    client = httpx.AsyncClient(transport=transport)
    return OpenAILLM("m", base_url="http://mock/v1", api_key="sk-unit", http_client=client)


def sse_llm(body_: CountedBody) -> OpenAILLM:
    return mock_llm(
        httpx.MockTransport(
            lambda r: httpx.Response(
                200, headers={"content-type": "text/event-stream"}, stream=body_
            )
        )
    )


TWO_HUNDRED = [chunk(f"w{i} ") for i in range(200)] + [chunk("", "stop"), DONE]


# -- leaving early reads nothing more --------------------------------------------------------------


async def test_break_reads_no_further_byte_on_a_transport_that_ignores_aclose() -> None:
    # Before: the unwinding drained the body generator for up to 1 s: all 202 reads happened.
    body_ = CountedBody(TWO_HUNDRED)
    seen = 0
    at_break = -1
    async with open_llm_stream(sse_llm(body_), chat_ctx=ctx()) as stream:
        async for c in stream:
            if c.text:
                seen += 1
            if seen == 20:
                at_break = body_.produced
                break
    gc.collect()  # an unfinished inner generator would be reported (filterwarnings=error)
    assert 20 <= at_break < 202
    assert body_.produced == at_break
    assert body_.closed


async def test_cancellation_reads_no_further_byte() -> None:
    body_ = CountedBody(TWO_HUNDRED)
    at_cancel = -1
    with trio.CancelScope() as scope:
        async with open_llm_stream(sse_llm(body_), chat_ctx=ctx()) as stream:
            async for c in stream:
                if c.text == "w19 ":
                    at_cancel = body_.produced
                    scope.cancel()
                    await trio.lowlevel.checkpoint()
    gc.collect()
    assert scope.cancelled_caught
    assert body_.produced == at_cancel


async def test_an_error_mid_body_reads_no_further_byte() -> None:
    error = b'data: {"error": {"message": "boom", "type": "invalid_request_error"}}\n\n'
    reads = [chunk("a"), error]
    body_ = CountedBody(reads + TWO_HUNDRED)
    emit = RecordingEmitter()
    with pytest.raises(Exception, match="boom"):
        await sse_llm(body_).run_attempt(REQUEST, AttemptInfo(0, Timeouts()), emit)
    gc.collect()
    assert body_.produced == 2


class CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, counting the body reads that reach the client."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.reads = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Counted(response.stream, self),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Counted(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, owner: CountingTransport) -> None:
        self.inner = inner
        self.owner = owner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data in self.inner:
            self.owner.reads += 1
            yield data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_break_over_loopback_reads_no_further_byte_and_disconnects() -> None:
    disconnected = trio.Event()

    async def handler(request: Request, send: Send) -> None:
        await start(send, 200, [("content-type", "text/event-stream")])
        try:
            for data in TWO_HUNDRED:
                await body(send, data, more=True)
                await trio.sleep(0.002)
            await body(send, b"")
        finally:
            disconnected.set()

    transport = CountingTransport()
    async with serve(handler) as url:
        client = httpx.AsyncClient(transport=transport)
        async with OpenAILLM("m", base_url=url, api_key="sk-x", http_client=client) as llm:
            seen = 0
            async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
                async for c in stream:
                    seen += bool(c.text)
                    if seen == 20:
                        at_break = transport.reads
                        break
            after = transport.reads
        await client.aclose()
        gc.collect()
    assert after == at_break < 202


# -- the headers limit -----------------------------------------------------------------------------


def the_timeout(exc: BaseException) -> APITimeoutError:
    if isinstance(exc, RetriesExhaustedError):
        exc = exc.errors[-1]
    assert isinstance(exc, APITimeoutError), exc
    return exc


async def test_headers_that_never_come_fail_at_the_headers_limit(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(3600)
        raise AssertionError("unreachable")

    llm = mock_llm(httpx.MockTransport(handler))
    options = APIConnectOptions(max_retry=0, timeouts=Timeouts(headers=5.0, idle=None))
    t0 = trio.current_time()
    with pytest.raises(Exception) as info:  # RetriesExhaustedError or the timeout itself
        async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=options) as stream:
            await stream.collect()
    error = the_timeout(info.value)
    assert error.limit == "headers"
    assert error.seconds == 5.0
    assert error.retryable
    assert trio.current_time() - t0 == pytest.approx(5.0)


async def test_headers_limit_over_loopback() -> None:
    async def handler(request: Request, send: Send) -> None:
        await trio.sleep(5)

    async with serve(handler) as url, OpenAILLM("m", base_url=url, api_key="sk-x") as llm:
        emit = RecordingEmitter()
        t0 = trio.current_time()
        with pytest.raises(APITimeoutError) as info:
            await llm.run_attempt(REQUEST, AttemptInfo(0, Timeouts(headers=0.3)), emit)
        assert trio.current_time() - t0 < 2.0
    assert info.value.limit == "headers"
    assert emit.sends == []


async def test_no_headers_limit_waits(autojump_clock: trio.abc.Clock) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await trio.sleep(900)  # a reasoning model silent for 15 minutes
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=chunk("late", "stop") + DONE,
        )

    emit = RecordingEmitter()
    await mock_llm(httpx.MockTransport(handler)).run_attempt(
        REQUEST, AttemptInfo(0, Timeouts(headers=None, idle=None)), emit
    )
    assert [c.text for _, cs in emit.sends for c in cs] == ["late"]


# -- progress: only complete data events call emit.send ------------------------------------------


class RecordingEmitter:
    def __init__(self) -> None:
        self.sends: list[tuple[float, list[ChatChunk]]] = []

    async def send(self, chunks: Sequence[ChatChunk]) -> None:
        self.sends.append((trio.current_time(), list(chunks)))


REQUEST = ChatRequest(messages=(ChatMessage(role="user", content="hi"),))


@pytest.mark.parametrize(
    "trickle",
    [
        b": keep-alive comment, one byte a second\n\n",
        b"\n" * 40,
        b'data: {"id": "c1", "choices": [{"index": 0, "delta": {"content": "slow"}}]}',
        b"retry: 1000\n\nevent: ping\n\n",
    ],
    ids=["comment", "blank-lines", "partial-data-line", "fields-without-data"],
)
async def test_a_byte_a_second_never_calls_send(
    trickle: bytes, autojump_clock: trio.abc.Clock
) -> None:
    reads = [trickle[i : i + 1] for i in range(len(trickle))]
    end = b"\n\n" if trickle.startswith(b"data:") else b""
    body_ = CountedBody([*reads, end + chunk("hi", "stop"), DONE], delay=1.0)
    emit = RecordingEmitter()
    await sse_llm(body_).run_attempt(REQUEST, AttemptInfo(0, Timeouts()), emit)
    silent_until = float(len(reads))
    assert all(t > silent_until for t, _ in emit.sends), emit.sends
    assert len(emit.sends) == 2  # the read completing "hi" (and "slow"), the [DONE] read


async def test_a_comment_byte_a_second_over_loopback_never_calls_send() -> None:
    async def handler(request: Request, send: Send) -> None:
        await start(send, 200, [("content-type", "text/event-stream")])
        for byte in b": ping\n\n":
            await body(send, bytes([byte]), more=True)
            await trio.sleep(0.05)
        await body(send, chunk("hi", "stop") + DONE)

    async with serve(handler) as url, OpenAILLM("m", base_url=url, api_key="sk-x") as llm:
        emit = RecordingEmitter()
        await llm.run_attempt(REQUEST, AttemptInfo(0, Timeouts()), emit)
    assert len(emit.sends) == 1
    assert [c.text for c in emit.sends[0][1]] == ["hi"]


_BLOCKS = st.one_of(
    st.builds(lambda t: chunk(t), st.text(max_size=8)),
    st.just(b": ping\n\n"),
    st.just(b"\n"),
    st.just(b"retry: 5\n\n"),
    st.just(b":a\n:b\n\n"),
)


@given(
    blocks=st.lists(_BLOCKS, max_size=25),
    cuts=st.lists(st.integers(min_value=1, max_value=64), max_size=60),
)
async def test_send_is_called_once_per_read_that_completes_a_data_event(
    blocks: list[bytes], cuts: list[int]
) -> None:
    blocks = [*blocks, DONE]
    wire = b"".join(blocks)
    # Where each data event completes: the offset just past its terminating blank line.
    completions: list[int] = []
    offset = 0
    for block in blocks:
        offset += len(block)
        if block.startswith(b"data:"):
            completions.append(offset)
    reads: list[tuple[int, int]] = []
    pos = 0
    for cut in cuts:
        if pos >= len(wire):
            break
        reads.append((pos, min(len(wire), pos + cut)))
        pos += cut
    if pos < len(wire):
        reads.append((pos, len(wire)))
    expected = sum(any(a < e <= b for e in completions) for a, b in reads)
    body_ = CountedBody([wire[a:b] for a, b in reads])
    emit = RecordingEmitter()
    await sse_llm(body_).run_attempt(REQUEST, AttemptInfo(0, Timeouts()), emit)
    assert len(emit.sends) == expected
