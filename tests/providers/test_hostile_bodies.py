"""OpenAILLM against hostile bodies: compression bombs, huge reads, wrong content types,
unsupported encodings; the request asks for identity; compressed streams still decode.

Memory is measured with tracemalloc (every Python allocation, deterministic) around one
attempt, and once as peak RSS in a fresh process.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_llmstream import (
    APIConnectOptions,
    APIError,
    APIStatusError,
    ChatChunk,
    ChatContext,
    OpenAILLM,
    StreamProtocolError,
    StreamTruncatedError,
    Timeouts,
    open_llm_stream,
)
from trio_llmstream._llm import AttemptInfo
from trio_llmstream._models import ChatMessage, ChatRequest
from trio_llmstream.providers._http import MAX_QUIET_BYTES

from .hostile_server import Request, Send, body, respond, serve, start

MiB = 1 << 20
# Peak growth allowed for one attempt, whatever the body: a few MiB above the parser's
# line/event limits (1 MiB each). Most of it is the parser's: when a 1 MiB unfinished block
# leaves its fast path, the SSE decoder splits it into line objects at once (about 7.7 MiB for
# 1 MiB of ":" comment lines, 10.4 MiB for one event growing by "data: x" lines, measured with
# the parser alone); the provider adds one 64 KiB read window.
BOUND = 12 * MiB
NO_RETRY = APIConnectOptions(max_retry=0)


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


def stream_body(parts: Sequence[str]) -> bytes:
    return b"".join(chunk(p) for p in parts) + chunk("", "stop") + b"data: [DONE]\n\n"


def compress(data: bytes | Iterator[bytes], encoding: str) -> bytes:
    """``data`` encoded as ``encoding`` (gzip, deflate = zlib-wrapped, raw-deflate)."""
    wbits = {"gzip": 16 + 15, "deflate": 15, "raw-deflate": -15}[encoding]
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    pieces = [data] if isinstance(data, bytes) else data
    return b"".join(c.compress(p) for p in pieces) + c.flush()


def filler(prefix: bytes, unit: bytes, total: int) -> Iterator[bytes]:
    yield prefix
    block = unit * (MiB // len(unit))
    for _ in range(total // len(block)):
        yield block


@functools.cache
def bomb(kind: str, encoding: str = "gzip", size: int = 64 * MiB) -> bytes:
    """A small compressed body that inflates to ``size`` bytes of nothing useful."""
    prefix, unit = {
        "nul-data": (b"data: ", b"\0"),
        "blank-lines": (b"", b"\n"),
        "comments": (b"", b":\n"),
        "one-event": (b"", b"data: x\n"),
    }[kind]
    return compress(filler(prefix, unit, size), encoding)


class _Reads(httpx.AsyncByteStream):
    """A transport body of fixed reads, counting how many were produced."""

    def __init__(self, reads: Sequence[bytes], *, delay: float = 0.0) -> None:
        self.reads = list(reads)
        self.delay = delay
        self.produced = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for data in self.reads:
            if self.delay:
                await trio.sleep(self.delay)
            self.produced += 1
            yield data


def mock_llm(handler: httpx.MockTransport) -> OpenAILLM:
    client = httpx.AsyncClient(transport=handler)
    return OpenAILLM("m", base_url="http://mock/v1", api_key="sk-unit", http_client=client)


async def measure(fn: object) -> tuple[BaseException | None, int]:
    """Run ``await fn()``; return (its exception, peak traced growth in bytes)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        error: BaseException | None = None
        try:
            await fn()  # type: ignore[operator]
        except Exception as exc:
            error = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return error, peak - base


async def collect(llm: OpenAILLM, options: APIConnectOptions = NO_RETRY) -> str:
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=options) as stream:
        return (await stream.collect()).text


# -- compression bombs over real loopback HTTP ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "encoding", "message"),
    [
        ("nul-data", "gzip", "line"),
        ("blank-lines", "gzip", "without a complete event"),
        ("comments", "deflate", "without a complete event"),
        ("one-event", "raw-deflate", "event"),
    ],
)
async def test_a_compression_bomb_is_a_protocol_error_in_bounded_memory(
    kind: str, encoding: str, message: str
) -> None:
    payload = bomb(kind, encoding)
    header = "deflate" if encoding == "raw-deflate" else encoding

    async def handler(request: Request, send: Send) -> None:
        headers = [("content-type", "text/event-stream"), ("content-encoding", header)]
        await start(send, 200, headers)
        for i in range(0, len(payload), 16 * 1024):
            await body(send, payload[i : i + 16 * 1024], more=True)
        await body(send, b"")

    async with serve(handler) as url, OpenAILLM("m", base_url=url, api_key="sk-x") as llm:
        error, peak = await measure(lambda: collect(llm))
    assert len(payload) < 100 * 1024  # < 0.1 MiB on the wire, 64 MiB inflated
    assert isinstance(error, StreamProtocolError), error
    assert message in str(error)
    assert not error.retryable
    assert peak < BOUND, f"peak growth {peak / MiB:.1f} MiB"


async def test_a_huge_single_read_is_parsed_in_windows() -> None:
    # An in-process transport hands over one 32 MiB read of blank lines: fed to the parser at
    # once it peaked at about +1.2 GB; in windows it stops at the quiet-bytes bound.
    data = b"\n" * (32 * MiB)
    llm = mock_llm(
        httpx.MockTransport(
            lambda r: httpx.Response(
                200, headers={"content-type": "text/event-stream"}, stream=_Reads([data])
            )
        )
    )
    error, peak = await measure(lambda: collect(llm))
    assert isinstance(error, StreamProtocolError), error
    assert peak < BOUND, f"peak growth {peak / MiB:.1f} MiB"


def test_peak_rss_of_a_gzip_bomb_in_a_fresh_process() -> None:
    # RSS, not just Python allocations: zlib's and the parser's C buffers count too.
    script = textwrap.dedent(
        """
        import resource, sys, zlib
        import httpx, trio
        from trio_llmstream import APIConnectOptions, ChatContext, OpenAILLM, open_llm_stream
        from trio_llmstream import StreamProtocolError

        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        block = b"\\0" * (1 << 20)
        body = c.compress(b"data: ") + b"".join(c.compress(block) for _ in range(256))
        body += c.flush()

        class Body(httpx.AsyncByteStream):
            async def __aiter__(self):
                for i in range(0, len(body), 16384):
                    yield body[i:i + 16384]

        def handler(request):
            return httpx.Response(200, stream=Body(), headers={
                "content-type": "text/event-stream", "content-encoding": "gzip"})

        async def main():
            ctx = ChatContext()
            ctx.add_message(role="user", content="hi")
            client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
            llm = OpenAILLM("m", base_url="http://mock/v1", http_client=client)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                async with open_llm_stream(
                    llm, chat_ctx=ctx, conn_options=APIConnectOptions(max_retry=0)
                ) as stream:
                    await stream.collect()
            except StreamProtocolError:
                pass
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(len(body), (after - before) * 1024)

        trio.run(main)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    wire, growth = map(int, proc.stdout.split())
    assert wire < 300 * 1024
    assert growth < 16 * MiB, f"peak RSS grew {growth / MiB:.1f} MiB"


# -- compressed streams are still read correctly -------------------------------------------------


@given(
    parts=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=20),
    encoding=st.sampled_from(["identity", "gzip", "deflate", "raw-deflate"]),
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=30),
    flush_each_event=st.booleans(),
)
async def test_any_encoding_and_any_reads_give_the_same_text(
    parts: list[str], encoding: str, cuts: list[int], flush_each_event: bool
) -> None:
    raw = stream_body(parts)
    if encoding == "identity":
        wire = raw
    elif flush_each_event:
        # A proxy compressing on the fly flushes after each event (Z_SYNC_FLUSH).
        wbits = {"gzip": 31, "deflate": 15, "raw-deflate": -15}[encoding]
        c = zlib.compressobj(6, zlib.DEFLATED, wbits)
        events = [e + b"\n\n" for e in raw.split(b"\n\n") if e]
        wire = b"".join(c.compress(e) + c.flush(zlib.Z_SYNC_FLUSH) for e in events) + c.flush()
    else:
        wire = compress(raw, encoding)
    reads: list[bytes] = []
    pos = 0
    for cut in cuts:
        if pos >= len(wire):
            break
        reads.append(wire[pos : pos + cut])
        pos += cut
    if pos < len(wire):
        reads.append(wire[pos:])
    headers = {"content-type": "text/event-stream"}
    if encoding != "identity":
        headers["content-encoding"] = "deflate" if encoding == "raw-deflate" else encoding
    llm = mock_llm(
        httpx.MockTransport(lambda r: httpx.Response(200, headers=headers, stream=_Reads(reads)))
    )
    assert await collect(llm) == "".join(parts)


async def test_the_request_asks_for_identity_encoding() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=stream_body(["ok"])
        )

    assert await collect(mock_llm(httpx.MockTransport(handler))) == "ok"
    assert seen[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip", "compress"])
async def test_an_unsupported_encoding_is_a_protocol_error_naming_it(encoding: str) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream", "content-encoding": encoding},
            stream=_Reads([b"\x8b\x00garbage"]),
        )

    with pytest.raises(StreamProtocolError, match="unsupported content-encoding") as info:
        await collect(mock_llm(httpx.MockTransport(handler)), APIConnectOptions(max_retry=2))
    assert repr(encoding) in str(info.value)
    assert calls == 1


async def test_a_corrupt_gzip_body_is_a_protocol_error() -> None:
    good = gzip.compress(stream_body(["hello"]))
    corrupt = good[:20] + bytes(b ^ 0x55 for b in good[20:40]) + good[40:]
    llm = mock_llm(
        httpx.MockTransport(
            lambda r: httpx.Response(
                200,
                headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
                stream=_Reads([corrupt]),
            )
        )
    )
    with pytest.raises(StreamProtocolError, match="not valid gzip"):
        await collect(llm)


async def test_a_gzip_error_body_is_read_bounded_and_quoted() -> None:
    doc = {"error": {"message": "model overloaded", "type": "server_error"}}
    wire = gzip.compress(json.dumps(doc).encode() + b" " * (64 * MiB))

    async def handler(request: Request, send: Send) -> None:
        await respond(
            send,
            400,
            [("content-type", "application/json"), ("content-encoding", "gzip")],
            wire,
        )

    async with serve(handler) as url, OpenAILLM("m", base_url=url, api_key="sk-x") as llm:
        error, peak = await measure(lambda: collect(llm))
    assert isinstance(error, APIStatusError)
    assert error.status_code == 400
    # Cut at 64 KiB of 64 MiB: no JSON document, but the start of the text is quoted.
    assert "model overloaded" in str(error)
    assert peak < BOUND


# -- content types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/html; charset=utf-8", "text/plain", "application/octet-stream", "application/x-ndjson"],
)
async def test_a_200_that_is_not_an_event_stream_is_a_protocol_error(content_type: str) -> None:
    page = b"<html><head><title>Sign in to the proxy</title></head><body>...</body></html>"

    async def handler(request: Request, send: Send) -> None:
        await respond(send, 200, [("content-type", content_type)], page)

    requests = 0

    async def counting(request: Request, send: Send) -> None:
        nonlocal requests
        requests += 1
        await handler(request, send)

    async with serve(counting) as url, OpenAILLM("m", base_url=url, api_key="sk-x") as llm:
        with pytest.raises(StreamProtocolError) as info:
            await collect(llm, APIConnectOptions(max_retry=3, retry_interval=0.01))
    assert f"got {content_type!r}" in str(info.value)
    assert "Sign in to the proxy" in str(info.value)
    assert not info.value.retryable
    assert requests == 1


@pytest.mark.parametrize(
    "content_type",
    ["text/event-stream", "text/event-stream; charset=utf-8", "Text/Event-Stream ; x=y", None],
)
async def test_event_stream_types_and_a_missing_type_are_accepted(
    content_type: str | None,
) -> None:
    async def handler(request: Request, send: Send) -> None:
        headers = [] if content_type is None else [("content-type", content_type)]
        await respond(send, 200, headers, stream_body(["Hello", " there"]))

    async with serve(handler) as url, OpenAILLM("m", base_url=url, api_key="sk-x") as llm:
        assert await collect(llm) == "Hello there"


# -- 429 insufficient_quota ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        ({"type": "insufficient_quota", "code": "insufficient_quota"}, False),
        ({"type": "requests", "code": "insufficient_quota"}, False),
        ({"type": "Insufficient_Quota"}, False),
        ({"type": "requests", "code": "rate_limit_exceeded"}, True),
    ],
)
async def test_a_429_for_an_exhausted_quota_is_not_retried(
    error: dict[str, str], retried: bool
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls > 1:
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=stream_body(["ok"])
            )
        return httpx.Response(
            429,
            headers={"retry-after": "0"},
            json={"error": {"message": "You exceeded your current quota.", **error}},
        )

    llm = mock_llm(httpx.MockTransport(handler))
    options = APIConnectOptions(max_retry=1, retry_interval=0.001)
    if retried:
        assert await collect(llm, options) == "ok"
        assert calls == 2
    else:
        with pytest.raises(APIStatusError) as info:
            await collect(llm, options)
        assert info.value.status_code == 429
        assert not info.value.retryable
        assert info.value.retry_after == 0.0  # still parsed, for the caller
        assert calls == 1


# -- the provider's read loop, driven directly ---------------------------------------------------


class RecordingEmitter:
    def __init__(self) -> None:
        self.sends: list[tuple[float, list[ChatChunk]]] = []

    async def send(self, chunks: Sequence[ChatChunk]) -> None:
        self.sends.append((trio.current_time(), list(chunks)))


REQUEST = ChatRequest(messages=(ChatMessage(role="user", content="hi"),))


async def run_once(llm: OpenAILLM) -> tuple[RecordingEmitter, BaseException | None]:
    emit = RecordingEmitter()
    try:
        await llm.run_attempt(REQUEST, AttemptInfo(number=0, timeouts=Timeouts()), emit)
    except Exception as exc:
        return emit, exc
    return emit, None


async def test_quiet_bytes_bound_holds_without_compression() -> None:
    reads = [b": keep-alive\n" * 1000] * (MAX_QUIET_BYTES // 13000 + 2)
    llm = mock_llm(
        httpx.MockTransport(
            lambda r: httpx.Response(
                200, headers={"content-type": "text/event-stream"}, stream=_Reads(reads)
            )
        )
    )
    emit, error = await run_once(llm)
    assert isinstance(error, StreamProtocolError)
    assert emit.sends == []


async def test_a_truncated_compressed_stream_is_truncated() -> None:
    rng = random.Random(7)  # incompressible text: half the gzip holds whole events
    whole = gzip.compress(stream_body([rng.randbytes(30).hex() for _ in range(100)]))
    wire = whole[: len(whole) // 2]
    llm = mock_llm(
        httpx.MockTransport(
            lambda r: httpx.Response(
                200,
                headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
                stream=_Reads([wire]),
            )
        )
    )
    emit, error = await run_once(llm)
    assert isinstance(error, StreamTruncatedError), error
    delivered = [c for _, chunks in emit.sends for c in chunks]
    assert 10 < len(delivered) < 100  # what was inflated before the cut was delivered


class CountingEmitter:
    """Counts what it is handed and keeps none of it (so only the provider's memory counts)."""

    def __init__(self) -> None:
        self.sends = 0
        self.chunks = 0

    async def send(self, chunks: Sequence[ChatChunk]) -> None:
        self.sends += 1
        self.chunks += len(chunks)


@settings(max_examples=40)  # each example inflates 3 MiB under tracemalloc
@given(
    prefix=st.sampled_from([b"", b"data: ", b"data: {", b": ", b"event: error\ndata: "]),
    unit=st.binary(min_size=1, max_size=12),
    encoding=st.sampled_from(["identity", "gzip", "deflate", "raw-deflate"]),
)
async def test_any_repeated_body_in_any_encoding_stays_bounded_and_typed(
    prefix: bytes, unit: bytes, encoding: str
) -> None:
    # 3 MiB of one short pattern repeated, after a prefix: beyond the line and event limits
    # whatever the pattern is, so every branch of the parser's bounds is reached; sent as one
    # read when uncompressed (an in-process transport), as 16 KiB compressed reads otherwise.
    raw = prefix + unit * (3 * MiB // len(unit))
    if encoding == "identity":
        reads, headers = [raw], {"content-type": "text/event-stream"}
    else:
        wire = compress(raw, encoding)
        reads = [wire[i : i + 16384] for i in range(0, len(wire), 16384)]
        headers = {
            "content-type": "text/event-stream",
            "content-encoding": "deflate" if encoding == "raw-deflate" else encoding,
        }
    del raw
    llm = mock_llm(
        httpx.MockTransport(lambda r: httpx.Response(200, headers=headers, stream=_Reads(reads)))
    )
    emit = CountingEmitter()

    async def attempt() -> None:
        await llm.run_attempt(REQUEST, AttemptInfo(number=0, timeouts=Timeouts()), emit)

    error, peak = await measure(attempt)
    assert error is None or isinstance(error, APIError), repr(error)
    assert peak < BOUND, f"peak growth {peak / MiB:.1f} MiB"
