"""End to end: OpenAILLM + open_llm_stream versus httpx-sse, a floor and openai-python, in one run,
printing every target of issue 16 with its figure and met/MISSED.

    .venv/bin/python benchmarks/bench_e2e.py            # everything; 20-40 minutes on 2 cores
    .venv/bin/python benchmarks/bench_e2e.py --quick    # fewer rounds, 200 concurrent streams,
                                                        # scaling at 100 and 1,000 only
    .venv/bin/python benchmarks/bench_e2e.py --only memory,loopback,sse
    .venv/bin/python benchmarks/bench_e2e.py --skip scaling --scales 100,1000 --default-scales 1000

Sections: memory, loopback, sse, concurrent, scaling (``--only`` / ``--skip``).

The workload is a realistic OpenAI ``chat.completion.chunk`` stream (role chunk, content chunks
of a word or two, finish chunk, usage chunk, ``data: [DONE]``; about 330 bytes per event),
pre-encoded once by ``_loopback_server.build_events`` and fed to every client. Every client's
reassembled text is checked against the stream's before its time counts.

1. In memory, a 10,000-event stream through a mock transport, delivered one SSE event per
   body chunk (as a server flushing per token sends it) and in 4 KiB chunks:
   - ours: ``OpenAILLM(http_client=httpx.AsyncClient(transport=httpx.MockTransport(...)))``
     streamed through ``open_llm_stream`` (default options) on trio, the consumer joining
     ``chunk.text``;
   - floor: the same httpx client, ``aiter_bytes()``, split on ``b"\\n\\n"``, one
     ``msgspec.json.decode`` per payload into a minimal typed Struct, text appended. No
     runtime, no conformance (no CR, comments, fields, limits, errors, tool calls): the least
     a Python client on httpx can do;
   - openai-python: ``AsyncOpenAI(http_client=httpx2.AsyncClient(transport=
     httpx2.MockTransport(...)))`` (openai 3.x runs on httpx2, a fork of httpx),
     ``chat.completions.create(stream=True)`` iterated; on asyncio (its home), and on trio
     (it runs there through anyio) to compare on the same event loop.
2. Over loopback HTTP, the same stream from ``_loopback_server.py`` in a separate process (one
   HTTP chunk per event, keep-alive; the client's socket reads hold many chunks, which h11
   hands over one by one), so the server's CPU is not counted: ours, httpx ``aiter_bytes`` +
   the floor parser, httpx-sse + ``json.loads``, openai-python, and for reference a raw trio
   socket with a minimal chunked-encoding reader + the floor parser (what httpx costs).
3. Concurrency: 1,000 streams of 200 events at once over loopback, one connection each, ours
   versus httpx-sse on trio (and the floor for reference), each variant in a fresh process:
   total wall time, CPU, and peak memory as the growth of the process's peak RSS
   (``ru_maxrss`` at the end) over its resident size after imports and client set-up; with
   ``--tracemalloc`` also, in a separate run since tracing slows everything down, the
   ``tracemalloc`` peak. Streams share one ``httpx.AsyncClient`` per 1,000 streams
   (``STREAMS_PER_CLIENT``), each with ``max_keepalive_connections=100`` (OpenAILLM's own
   default): httpcore's pool rescans every connection on every request start and end, which
   is O(N^2) in one client (keeping all 1,000 alive costs about 30 s of CPU in that scan; at
   5,000 streams on one client the scan is two thirds of any client's CPU).
4. Scaling: the same at 100 / 1,000 / 5,000 / 10,000 streams (wall, peak RSS growth, completed
   streams; ours against httpx-sse on trio), plus today's default options at 5,000 and 10,000
   to count how many complete. Ours runs the default options with retries off (see
   ``CONC_OPTIONS``). Both processes (client and server)
   raise their open-file soft limit to the hard limit; if that is below the largest scale, the
   scale is capped and a note says so. The kernel's listen backlog (``somaxconn``) is smaller
   than 10,000: the excess connections wait in SYN retransmission, as on a real server.
5. The SSE decoder alone on 4 KiB reads, ours versus httpx-sse's, with ``bench_sse.py``'s
   method (GC off inside a timing, interleaved rounds).

Rows indented under a table's reference decompose our cost: our sans-IO parser driven
directly from ``aiter_bytes`` in the consumer's task (no runtime), and the floor moved into a
producer task that hands each read to the consumer through a zero-buffer trio channel (the
runtime's one channel operation per read, and nothing else of it).

CPU is ``time.process_time()`` of the client process around the stream (set-up and a short
warm-up request happen before); wall is ``time.perf_counter()``. Rounds interleave the
variants, so a burst of load elsewhere hits all of them alike, and each figure is the best of
its rounds. The machine is shared and noisy (two cores, also running the server): only ratios
between figures measured in this same run mean anything. GC stays enabled (its cost is part
of a client's cost). openai and httpx2 are optional (``.venv/bin/pip install openai``):
without them their rows are skipped, with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import signal
import ssl
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import httpx_sse
import msgspec
import trio
from _loopback_server import build_events, expected_text

from trio_llmstream import APIConnectOptions, ChatContext, OpenAILLM, open_llm_stream
from trio_llmstream._core._openai import ChatCompletionParser

try:
    import httpx2
    import openai
except ImportError as exc:  # pragma: no cover - depends on the venv
    httpx2 = None  # type: ignore[assignment]
    openai = None  # type: ignore[assignment]
    OPENAI_MISSING = (
        f"openai-python not available ({exc}); its rows are skipped. "
        "Install with: .venv/bin/pip install openai   (openai 3.x brings httpx2)"
    )
else:
    OPENAI_MISSING = ""

SERVER = Path(__file__).resolve().parent / "_loopback_server.py"

N_LONG = 10_000
N_WARM = 8
CONC_STREAMS = 1_000
CONC_CHUNKS = 200
ROUNDS_FAST = 5  # variants costing a few µs per chunk
ROUNDS_SLOW = 2  # openai-python (~100-200 µs per chunk: 1 s or more per 10,000-event stream)
# Streams per httpx.AsyncClient in the concurrent runs (see concurrent_child): 1,000 streams
# share one client, as issue 16's 1,000-stream figures do; 10,000 use ten.
STREAMS_PER_CLIENT = 1_000
CONC_ROUNDS = 1  # a concurrent run takes 5-15 s; the ratios it is judged on are far from 1

MOCK_BASE = "http://bench.test/v1"
FLOOR_MEM = "floor, per event"
OURS_MEM = "ours, per event"
FLOOR_MEM_4K = "floor, 4 KiB chunks"
OURS_MEM_4K = "ours, 4 KiB chunks"
OPENAI_MEM = "openai-python, per event, asyncio"
OPENAI_MEM_TRIO = "openai-python, per event, trio"
FLOOR_LOOP = "httpx + floor"
OURS_LOOP = "ours"
OPENAI_LOOP = "openai-python (httpx2), asyncio"
SSE_HEADERS = {"content-type": "text/event-stream", "x-request-id": "req_bench"}
MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
CTX = ChatContext()
CTX.add_message(role="user", content="Tell me a long story.")
# Default limits for single streams, as a user would run them; no retries, so that any failure
# shows.
OPTIONS = APIConnectOptions(max_retry=0)
# Concurrent streams run the default options with retries off, as issue 16's targets say (the
# limits measure progress, so a stream waiting its turn for the CPU is not failed). The
# "ours-defaults" variant is the same options, kept as the column that counts completions.
CONC_OPTIONS = APIConnectOptions(max_retry=0)
CONC_DEFAULT_OPTIONS = APIConnectOptions(max_retry=0)

EVENTS: dict[int, list[bytes]] = {}
TEXTS: dict[int, str] = {}


def events(n: int) -> list[bytes]:
    if n not in EVENTS:
        EVENTS[n] = build_events(n)
        TEXTS[n] = expected_text(EVENTS[n])
    return EVENTS[n]


def request_body(n: int) -> dict[str, Any]:
    return {
        "model": f"bench-{n}",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def check(n: int, text: str, name: str) -> None:
    if text != TEXTS[n]:
        raise AssertionError(f"{name}: wrong text ({len(text)} chars, expected {len(TEXTS[n])})")


# -- the floor parser ----------------------------------------------------------------------------


class _FDelta(msgspec.Struct):
    content: str | None = None


class _FChoice(msgspec.Struct):
    delta: _FDelta


class _FChunk(msgspec.Struct):
    choices: list[_FChoice] = []


_floor_decoder = msgspec.json.Decoder(_FChunk)


class Floor:
    """Split on blank lines, strip ``data: ``, decode the JSON into a minimal Struct, keep the
    text. Not a conforming SSE or OpenAI parser: the bare work, as a floor."""

    __slots__ = ("done", "parts", "pending")

    def __init__(self) -> None:
        self.pending = b""
        self.parts: list[str] = []
        self.done = False

    def feed(self, data: bytes) -> None:
        blocks = (self.pending + data).split(b"\n\n")
        self.pending = blocks.pop()
        decode = _floor_decoder.decode
        for block in blocks:
            payload = block[6:]
            if payload == b"[DONE]":
                self.done = True
                return
            chunk = decode(payload)
            if chunk.choices:
                self.parts.append(chunk.choices[0].delta.content or "")

    def text(self) -> str:
        return "".join(self.parts)


# -- mock transports -----------------------------------------------------------------------------


class _Chunks:
    """An async iterator over pre-cut body chunks that is not an async generator (nothing to
    finalize if a client leaves early)."""

    __slots__ = ("_it",)

    def __init__(self, chunks: list[bytes]) -> None:
        self._it = iter(chunks)

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


_MODEL = re.compile(rb'"model"\s*:\s*"bench-(\d+)"')


def body_chunks(n: int, read_size: int | None) -> list[bytes]:
    evs = events(n)
    if read_size is None:
        return evs
    whole = b"".join(evs)
    return [whole[i : i + read_size] for i in range(0, len(whole), read_size)]


def _mock_handler(lib: Any, read_size: int | None) -> Callable[[Any], Any]:
    class Body(lib.AsyncByteStream):  # type: ignore[misc, name-defined]
        def __init__(self, chunks: list[bytes]) -> None:
            self._chunks = chunks

        def __aiter__(self) -> _Chunks:
            return _Chunks(self._chunks)

    def handler(request: Any) -> Any:
        match = _MODEL.search(request.content)
        assert match is not None
        chunks = body_chunks(int(match.group(1)), read_size)
        return lib.Response(200, headers=SSE_HEADERS, stream=Body(chunks))

    return handler


def mock_httpx_client(read_size: int | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(_mock_handler(httpx, read_size)))


def mock_httpx2_client(read_size: int | None) -> Any:
    return httpx2.AsyncClient(transport=httpx2.MockTransport(_mock_handler(httpx2, read_size)))


# -- one stream, each client -------------------------------------------------------------------
# Each returns the text it assembled; the callers time them.


async def stream_ours(llm: OpenAILLM, n: int, options: APIConnectOptions = OPTIONS) -> str:
    parts: list[str] = []
    async with open_llm_stream(
        llm, chat_ctx=CTX, conn_options=options, extra={"model": f"bench-{n}"}
    ) as stream:
        async for chunk in stream:
            parts.append(chunk.text)
    return "".join(parts)


async def stream_floor(client: httpx.AsyncClient, url: str, n: int) -> str:
    floor = Floor()
    content = json.dumps(request_body(n)).encode()
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    async with client.stream("POST", url, content=content, headers=headers) as response:
        response.raise_for_status()
        # Read to the end of the body ([DONE] is the last event), so the connection is reused.
        async for data in response.aiter_bytes():
            floor.feed(data)
    assert floor.done
    return floor.text()


async def stream_parser_only(client: httpx.AsyncClient, url: str, n: int) -> str:
    """Decomposition: our sans-IO parser fed from ``aiter_bytes`` in the consumer's own task,
    no runtime (no second task, channel, emitter, metrics)."""
    parser = ChatCompletionParser()
    parts: list[str] = []
    content = json.dumps(request_body(n)).encode()
    async with client.stream("POST", url, content=content) as response:
        response.raise_for_status()
        async for data in response.aiter_bytes():
            for chunk in parser.feed(data):
                parts.append(chunk.text)
    assert parser.finished
    assert parser.error is None
    return "".join(parts)


async def stream_floor_hop(client: httpx.AsyncClient, url: str, n: int) -> str:
    """Decomposition: the floor, parsed in a producer task that hands each read's text to the
    consumer through a zero-buffer trio channel: one channel operation per read, as the runtime
    does, and nothing else of it."""
    send, recv = trio.open_memory_channel[list[str]](0)
    parts: list[str] = []

    async def produce() -> None:
        async with send:
            floor = Floor()
            content = json.dumps(request_body(n)).encode()
            async with client.stream("POST", url, content=content) as response:
                async for data in response.aiter_bytes():
                    start = len(floor.parts)
                    floor.feed(data)
                    await send.send(floor.parts[start:])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        async for batch in recv:
            parts += batch
    return "".join(parts)


async def stream_httpx_sse(client: httpx.AsyncClient, url: str, n: int) -> str:
    parts: list[str] = []
    loads = json.loads
    async with httpx_sse.aconnect_sse(client, "POST", url, json=request_body(n)) as source:
        source.response.raise_for_status()
        async for sse in source.aiter_sse():
            if sse.data == "[DONE]":
                continue  # the body ends right after; reading to its end keeps the connection
            chunk = loads(sse.data)
            if chunk["choices"]:
                parts.append(chunk["choices"][0]["delta"].get("content") or "")
    return "".join(parts)


async def stream_openai(client: Any, n: int) -> str:
    parts: list[str] = []
    stream = await client.chat.completions.create(
        model=f"bench-{n}", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    return "".join(parts)


async def stream_raw(port: int, n: int) -> str:
    """A trio TCP stream, a minimal HTTP/1.1 chunked reader, the floor parser: what is left
    without httpx (reference only)."""
    content = json.dumps(request_body(n)).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(content), content)
    )
    floor = Floor()
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    async with sock:
        await sock.send_all(request)
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += await sock.receive_some(65536)
        assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
        buf = buf[end + 4 :]
        pos = 0
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end >= 0:
                size = int(buf[pos:line_end], 16)
                start = line_end + 2
                if size == 0:
                    break
                if len(buf) >= start + size + 2:
                    floor.feed(buf[start : start + size])
                    pos = start + size + 2
                    continue
            more = await sock.receive_some(65536)
            if not more:
                raise ConnectionError("body cut short")
            buf = buf[pos:] + more
            pos = 0
    assert floor.done
    return floor.text()


# -- measuring -----------------------------------------------------------------------------------

Measure = Callable[[], tuple[float, float]]  # runs one timed stream: (cpu seconds, wall seconds)


def _timed(
    setup: Callable[[], Any], run: Callable[[Any, int], Any], name: str, loop: str = "trio"
) -> Measure:
    """One event loop run: set-up and a short warm-up stream untimed (so a loopback
    connection is open and code paths are warm), then one timed 10,000-event stream."""

    async def main() -> tuple[float, float]:
        resource_ = setup()
        try:
            check(N_WARM, await run(resource_, N_WARM), name)
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            text = await run(resource_, N_LONG)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            check(N_LONG, text, name)
            return cpu, wall
        finally:
            await (getattr(resource_, "aclose", None) or resource_.close)()

    if loop == "asyncio":
        return lambda: asyncio.run(main())
    return lambda: trio.run(main)


class _Null:
    async def aclose(self) -> None:
        pass


def best_of(variants: dict[str, tuple[Measure, int]]) -> dict[str, tuple[float, float]]:
    """Interleaved rounds; each variant's best CPU and best wall (µs per chunk)."""
    best = {name: (float("inf"), float("inf")) for name in variants}
    for round_ in range(max(rounds for _, rounds in variants.values())):
        for name, (measure, rounds) in variants.items():
            if round_ >= rounds:
                continue
            cpu, wall = measure()
            old_cpu, old_wall = best[name]
            best[name] = (min(old_cpu, cpu / N_LONG * 1e6), min(old_wall, wall / N_LONG * 1e6))
    return best


def _ours_mock(size: int | None) -> Callable[[], OpenAILLM]:
    return lambda: OpenAILLM(
        "bench", base_url=MOCK_BASE, api_key="sk-bench", http_client=mock_httpx_client(size)
    )


def _with_url(
    fn: Callable[[httpx.AsyncClient, str, int], Any], url: str
) -> Callable[[httpx.AsyncClient, int], Any]:
    return lambda client, n: fn(client, url, n)


def in_memory_variants() -> dict[str, tuple[Measure, int]]:
    url = f"{MOCK_BASE}/chat/completions"
    per_event = lambda: mock_httpx_client(None)  # noqa: E731
    variants: dict[str, tuple[Measure, int]] = {
        FLOOR_MEM: (_timed(per_event, _with_url(stream_floor, url), "floor"), ROUNDS_FAST),
        "  our parser alone, no runtime": (
            _timed(per_event, _with_url(stream_parser_only, url), "parser"), ROUNDS_FAST
        ),
        "  floor + 1 channel hop per read": (
            _timed(per_event, _with_url(stream_floor_hop, url), "hop"), ROUNDS_FAST
        ),
        OURS_MEM: (_timed(_ours_mock(None), stream_ours, "ours"), ROUNDS_FAST),
        FLOOR_MEM_4K: (
            _timed(lambda: mock_httpx_client(4096), _with_url(stream_floor, url), "floor"),
            ROUNDS_FAST,
        ),
        "  our parser alone, no runtime, 4 KiB": (
            _timed(lambda: mock_httpx_client(4096), _with_url(stream_parser_only, url), "parser"),
            ROUNDS_FAST,
        ),
        OURS_MEM_4K: (_timed(_ours_mock(4096), stream_ours, "ours"), ROUNDS_FAST),
    }
    if openai is not None:

        def openai_client() -> Any:
            return openai.AsyncOpenAI(
                api_key="sk-bench", base_url=MOCK_BASE, max_retries=0,
                http_client=mock_httpx2_client(None),
            )  # fmt: skip

        variants[OPENAI_MEM] = (_timed(openai_client, stream_openai, "openai", "asyncio"), ROUNDS_SLOW)
        variants[OPENAI_MEM_TRIO] = (
            _timed(openai_client, stream_openai, "openai"), ROUNDS_SLOW
        )
    return variants


def loopback_variants(port: int) -> dict[str, tuple[Measure, int]]:
    base = f"http://127.0.0.1:{port}/v1"
    url = f"{base}/chat/completions"
    variants: dict[str, tuple[Measure, int]] = {
        "raw trio socket + floor (reference)": (
            _timed(_Null, lambda _, n: stream_raw(port, n), "raw"), ROUNDS_FAST
        ),
        FLOOR_LOOP: (
            _timed(httpx.AsyncClient, _with_url(stream_floor, url), "floor"), ROUNDS_FAST
        ),
        "  httpx + our parser alone, no runtime": (
            _timed(httpx.AsyncClient, _with_url(stream_parser_only, url), "parser"),
            ROUNDS_FAST,
        ),
        "  httpx + floor + 1 channel hop per read": (
            _timed(httpx.AsyncClient, _with_url(stream_floor_hop, url), "hop"), ROUNDS_FAST
        ),
        OURS_LOOP: (
            _timed(
                lambda: OpenAILLM("bench", base_url=base, api_key="sk-bench"), stream_ours, "ours"
            ),
            ROUNDS_FAST,
        ),
        "httpx-sse + json": (
            _timed(httpx.AsyncClient, _with_url(stream_httpx_sse, url), "httpx-sse"),
            ROUNDS_FAST,
        ),
    }
    if openai is not None:
        variants[OPENAI_LOOP] = (
            _timed(
                lambda: openai.AsyncOpenAI(api_key="sk-bench", base_url=base, max_retries=0),
                stream_openai,
                "openai",
                "asyncio",
            ),
            ROUNDS_SLOW,
        )
    return variants


# -- the loopback server -------------------------------------------------------------------------


@contextlib.contextmanager
def loopback_server() -> Iterator[int]:
    """Start ``_loopback_server.py`` in its own process; stop it on the way out, however it
    goes (it also exits by itself when its standard input closes, should we die harder)."""
    proc = subprocess.Popen(
        [sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"loopback server did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- concurrency (each variant in a fresh process) ---------------------------------------------


def _die_with_parent() -> None:
    """Linux: have the kernel end this child if the benchmark dies without cleaning up."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before that took effect
            sys.exit(1)


def current_rss_kib() -> int:
    """This process's resident set size now, in KiB (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft limit on open files to the hard limit (10,000 streams need
    10,000 sockets in the client and as many in the server); return (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft, hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


CHILD_VARIANTS = ("ours", "ours-defaults", "httpx-sse", "floor")


def concurrent_child(variant: str, port: int, streams: int, chunks: int, trace: bool) -> None:
    """Run ``streams`` streams of ``chunks`` events at once; print one JSON line.

    Failures are counted, not raised: how many streams complete is a result (today's default
    limits fail most streams at 5,000 and more)."""
    _die_with_parent()
    raise_nofile()
    base = f"http://127.0.0.1:{port}/v1"
    url = f"{base}/chat/completions"
    events(chunks)

    async def main() -> dict[str, Any]:
        # One client per STREAMS_PER_CLIENT streams (one for up to 1,000), the same for every
        # variant. httpx-sse and the floor get limits as generous as ours (600 s); ours sets its
        # own per request from its options (connect, pool and write from ``connect``, no read
        # limit: the runtime enforces idle itself). Why shards: httpcore's pool rescans all its
        # connections on every request start and end, O(N^2) in one client: at 5,000 streams
        # on one client that scan is two thirds of any client's CPU (py-spy), which would bury
        # what this measures. Shards share one SSL context (unused on http://, and costly to
        # build per client).
        ssl_context = ssl.create_default_context()
        shards = max(1, -(-streams // STREAMS_PER_CLIENT))
        per = -(-streams // shards)
        clients = [
            httpx.AsyncClient(
                limits=httpx.Limits(max_connections=per, max_keepalive_connections=100),
                timeout=httpx.Timeout(600.0),
                verify=ssl_context,
            )
            for _ in range(shards)
        ]
        llms = [
            OpenAILLM("bench", base_url=base, api_key="sk-bench", http_client=client)
            for client in clients
        ]
        runs: list[Callable[[], Any]] = []
        for client, llm in zip(clients, llms, strict=True):
            if variant == "ours":
                runs.append(partial(stream_ours, llm, chunks, CONC_OPTIONS))
            elif variant == "ours-defaults":
                runs.append(partial(stream_ours, llm, chunks, CONC_DEFAULT_OPTIONS))
            elif variant == "httpx-sse":
                runs.append(partial(stream_httpx_sse, client, url, chunks))
            elif variant == "floor":
                runs.append(partial(stream_floor, client, url, chunks))
            else:
                raise ValueError(f"unknown variant {variant!r}")
        failures: Counter[str] = Counter()
        completed = 0

        async def one(run: Callable[[], Any]) -> None:
            nonlocal completed
            try:
                text = await run()
            except Exception as exc:
                failures[f"{type(exc).__name__}: {str(exc)[:160]}"] += 1
                return
            if text == TEXTS[chunks]:
                completed += 1
            else:
                failures["wrong text"] += 1

        gc.collect()
        # The baseline is the resident size now (after imports and set-up), not ru_maxrss:
        # a peak reached earlier (imports) would hide part of the growth.
        rss0 = current_rss_kib()
        if trace:
            tracemalloc.start()
        c0, t0 = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(streams):
                nursery.start_soon(one, runs[i % shards])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        tracemalloc.stop()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for client in clients:
            await client.aclose()
        return {
            "variant": variant,
            "streams": streams,
            "clients": shards,
            "wall": wall,
            "cpu": cpu,
            "rss_base": rss0 * 1024,  # ru_maxrss is in KiB on Linux
            "rss_delta": (rss1 - rss0) * 1024,
            "rss_peak": rss1 * 1024,
            "traced_peak": peak,
            "completed": completed,
            "failures": sum(failures.values()),
            "failure_kinds": failures.most_common(3),
        }

    print(json.dumps(trio.run(main)))


def run_concurrent(
    variant: str, port: int, streams: int, chunks: int, trace: bool = False
) -> dict[str, Any]:
    args = [
        sys.executable, __file__, "--child", variant, "--port", str(port),
        "--streams", str(streams), "--chunks", str(chunks),
    ]  # fmt: skip
    if trace:
        args.append("--trace")
    done = subprocess.run(args, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} child failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- report --------------------------------------------------------------------------------------

Targets = list[tuple[str, str, bool | None]]
MIB = 1024 * 1024


def print_table(title: str, best: dict[str, tuple[float, float]], ref: str) -> None:
    print(f"\n{title}")
    print(f"  {'variant':<42} {'CPU µs/chunk':>13} {'wall µs/chunk':>14}  CPU vs {ref}")
    for name, (cpu, wall) in best.items():
        print(f"  {name:<42} {cpu:>13.2f} {wall:>14.2f}  {cpu / best[ref][0]:>6.2f}x")


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


SECTIONS = ("memory", "loopback", "sse", "concurrent", "scaling")


def main() -> None:
    global CONC_STREAMS, ROUNDS_FAST, ROUNDS_SLOW, CONC_ROUNDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds, 200 concurrent streams, scaling at 100 and 1,000")  # fmt: skip
    parser.add_argument("--skip", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--only", default="", help="comma-separated sections to run (the rest skip)")
    parser.add_argument("--scales", default=None,
                        help="streams per scaling row (default 100,1000,5000,10000)")  # fmt: skip
    parser.add_argument("--default-scales", default=None,
                        help="scaling rows that also run today's default options "
                        "(default 5000,10000)")  # fmt: skip
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also measure the tracemalloc peak of the 1,000-stream runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=CONC_STREAMS, help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=CONC_CHUNKS, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        concurrent_child(args.child, args.port, args.streams, args.chunks, args.trace)
        return
    scales = [100, 1_000, 5_000, 10_000]
    default_scales = [5_000, 10_000]
    sse_rounds = 60
    if args.quick:
        CONC_STREAMS, ROUNDS_FAST, ROUNDS_SLOW, CONC_ROUNDS = 200, 3, 1, 1
        scales, default_scales, sse_rounds = [100, 1_000], [], 20
    if args.scales is not None:
        scales = _ints(args.scales)
    if args.default_scales is not None:
        default_scales = _ints(args.default_scales)
    unknown = set(filter(None, (args.skip + "," + args.only).split(","))) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    run = set(filter(None, args.only.split(","))) or set(SECTIONS)
    run -= set(filter(None, args.skip.split(",")))

    started = time.perf_counter()
    soft, hard = raise_nofile()
    # Each stream is one socket in this process's children and one in the server.
    fd_room = 200
    if hard != resource.RLIM_INFINITY and max([*scales, CONC_STREAMS]) + fd_room > soft:
        capped = [n for n in scales if n + fd_room <= soft] or [max(1, soft - fd_room)]
        print(f"NOTE: open-file limit {soft} (hard {hard}) is too low for {max(scales):,} "
              f"streams; scaling capped at {max(capped):,}")  # fmt: skip
        scales = capped
        default_scales = [n for n in default_scales if n + fd_room <= soft]
        CONC_STREAMS = min(CONC_STREAMS, max(capped))
    events(N_WARM)
    events(N_LONG)
    print(
        f"Python {sys.version.split()[0]}, trio {trio.__version__}, httpx {httpx.__version__}, "
        f"httpx-sse {version('httpx-sse')}, msgspec {msgspec.__version__}"
        + (f", openai {openai.__version__} on httpx2 {httpx2.__version__}" if openai else "")
    )
    print(
        f"stream: {N_LONG:,} events, {sum(map(len, EVENTS[N_LONG])) / N_LONG:.0f} B/event; "
        f"CPU = client process time; best of {ROUNDS_FAST} rounds "
        f"({ROUNDS_SLOW} for openai-python); {os.cpu_count()} CPUs; open files {soft}/{hard}; "
        f"sections: {', '.join(s for s in SECTIONS if s in run)}"
    )
    if OPENAI_MISSING:
        print(f"NOTE: {OPENAI_MISSING}")

    targets: Targets = []
    if "memory" in run:
        mem = best_of(in_memory_variants())
        print_table("In memory (mock transport), 10,000-event stream, trio unless noted", mem,
                    FLOOR_MEM)  # fmt: skip
        ours, floor = mem[OURS_MEM][0], mem[FLOOR_MEM][0]
        ours4, floor4 = mem[OURS_MEM_4K][0], mem[FLOOR_MEM_4K][0]
        # Issue 16's figure for this row (1.78x "today") is against the per-event floor (this
        # table's reference column), so the target is judged on that basis; the like-for-like
        # ratio (the floor on the same 4 KiB pieces, which is cheaper per chunk) is shown too.
        targets.append(("in memory, 4 KiB pieces: ours / floor per event (<= 1.5x)",
                        f"{ours4 / floor:.2f}x", ours4 <= 1.5 * floor))  # fmt: skip
        targets.append(("in memory, 4 KiB pieces: ours / floor on 4 KiB pieces (info)",
                        f"{ours4 / floor4:.2f}x", None))  # fmt: skip
        targets.append(("in memory, one event per piece: ours / floor (<= 2.0x)",
                        f"{ours / floor:.2f}x", ours <= 2.0 * floor))  # fmt: skip
        for name in (OPENAI_MEM, OPENAI_MEM_TRIO):
            if name in mem:
                oa = mem[name][0]
                targets.append((f"in memory: {name.replace(', per event', '')} / ours (info)",
                                f"{oa / ours:.1f}x", None))  # fmt: skip

    if "sse" in run:
        sse_decoder(targets, sse_rounds)

    if run & {"loopback", "concurrent", "scaling"}:
        with loopback_server() as port:
            if "loopback" in run:
                loop = best_of(loopback_variants(port))
                print_table(
                    "Over loopback HTTP (server in its own process), 10,000-event stream, "
                    "trio unless noted",
                    loop,
                    FLOOR_LOOP,
                )
                ours, hf = loop[OURS_LOOP][0], loop[FLOOR_LOOP][0]
                targets.append(("loopback, 1 HTTP chunk per event: ours / (httpx + floor) "
                                "(<= 1.15x)", f"{ours / hf:.2f}x", ours <= 1.15 * hf))  # fmt: skip
                if OPENAI_LOOP in loop:
                    oa = loop[OPENAI_LOOP][0]
                    targets.append(("loopback: openai-python / ours (info)",
                                    f"{oa / ours:.1f}x", None))  # fmt: skip
            conc: dict[str, dict[str, Any]] = {}
            if "concurrent" in run:
                conc = concurrency(port, targets, args.tracemalloc)
            if "scaling" in run:
                scaling(port, scales, default_scales, conc, targets)

    print("\nTargets (issue 16)")
    for what, value, ok in targets:
        print(f"  {what:<68} {value:>14}  {'-' if ok is None else 'met' if ok else 'MISSED'}")
    if "scaling" in run and 10_000 not in scales:
        print("  (the 10,000-stream targets need the scaling section at 10,000: not run)")
    print(f"\n(total run time {time.perf_counter() - started:.0f} s)")


def sse_decoder(targets: Targets, rounds: int) -> None:
    """The SSE decoder alone on 4 KiB reads, ours versus httpx-sse's, as bench_sse.py measures
    it (same stream, same drivers, GC off inside a timing, interleaved rounds, best of)."""
    import bench_sse

    stream = bench_sse.build_stream()
    chunks = bench_sse.cut(stream, 4096)
    decoders = {
        "ours": bench_sse.run_ours,
        "httpx-sse": bench_sse.run_httpx_sse,
        "floor (split only)": bench_sse.run_floor,
    }
    reference = bench_sse.datas(bench_sse.run_ours(chunks))
    for name, fn in decoders.items():
        assert bench_sse.datas(fn(chunks)) == reference, name
    times = bench_sse.best_times(decoders, chunks, rounds)
    n = bench_sse.N_EVENTS
    print(f"\nSSE decoder alone (bench_sse.py's method), {n:,} events in 4 KiB reads, "
          f"best of {rounds}")  # fmt: skip
    print(f"  {'decoder':<20} {'µs/event':>9}  vs httpx-sse")
    for name, seconds in times.items():
        print(f"  {name:<20} {seconds / n * 1e6:>9.3f}  {seconds / times['httpx-sse']:>6.2f}x")
    ratio = times["ours"] / times["httpx-sse"]
    targets.append(("SSE decoder alone, 4 KiB reads: ours / httpx-sse (<= 0.5x)",
                    f"{ratio:.3f}x", ratio <= 0.5))  # fmt: skip


def concurrency(port: int, targets: Targets, trace: bool) -> dict[str, dict[str, Any]]:
    # Each variant in a fresh process; rounds interleave. The floor is a reference (one round).
    timed: dict[str, dict[str, Any]] = {}
    for round_ in range(CONC_ROUNDS):
        for variant in ("ours", "httpx-sse", "floor"):
            if variant == "floor" and round_:
                continue
            result = run_concurrent(variant, port, CONC_STREAMS, CONC_CHUNKS)
            old = timed.setdefault(variant, result)
            for key in ("wall", "cpu", "rss_delta"):  # best of rounds, each figure on its own
                old[key] = min(old[key], result[key])
    traced: dict[str, int] = {}
    if trace:
        for v in ("ours", "httpx-sse"):
            traced[v] = run_concurrent(v, port, CONC_STREAMS, CONC_CHUNKS, True)["traced_peak"]
    n = CONC_STREAMS * CONC_CHUNKS
    print(
        f"\nConcurrency: {CONC_STREAMS:,} streams x {CONC_CHUNKS} events at once over loopback, "
        f"trio, one httpx.AsyncClient per {STREAMS_PER_CLIENT:,} streams\n"
        "(max_keepalive_connections=100 each); ours with default options, retries off; each variant in "
        "a fresh process, "
        + (f"best of {CONC_ROUNDS} (floor: 1)" if CONC_ROUNDS > 1 else "one run each")
    )
    print(
        f"  {'variant':<12} {'done':>6} {'wall s':>7} {'CPU s':>7} {'CPU µs/chunk':>13} "
        f"{'RSS base':>9} {'peak RSS growth':>16} {'tracemalloc peak':>17}"
    )
    for variant, r in timed.items():
        peak = f"{traced[variant] / MIB:>13.1f} MiB" if variant in traced else f"{'-':>17}"
        print(
            f"  {variant:<12} {r['completed']:>6} {r['wall']:>7.2f} {r['cpu']:>7.2f} "
            f"{r['cpu'] / n * 1e6:>13.2f} {r['rss_base'] / MIB:>5.0f} MiB "
            f"{r['rss_delta'] / MIB:>12.1f} MiB {peak}"
        )
        _print_failures(r)
    ours, sse = timed["ours"], timed["httpx-sse"]
    label = f"{CONC_STREAMS:,} x {CONC_CHUNKS} concurrent"
    targets.append((f"{label}: all complete (ours; default options)",
                    f"{ours['completed']:,}/{CONC_STREAMS:,}",
                    ours["completed"] == CONC_STREAMS))  # fmt: skip
    targets.append((f"{label}: wall, ours / httpx-sse (<= 1.0x)",
                    f"{ours['wall'] / sse['wall']:.2f}x", ours["wall"] <= sse["wall"]))  # fmt: skip
    targets.append((f"{label}: peak RSS growth, ours / httpx-sse (<= 1.2x)",
                    ratio(ours["rss_delta"], sse["rss_delta"]),
                    ours["rss_delta"] <= 1.2 * sse["rss_delta"]))  # fmt: skip
    targets.append((f"{label}: CPU, ours / httpx-sse (info: wall is at the mercy of load)",
                    ratio(ours["cpu"], sse["cpu"]), None))  # fmt: skip
    targets.append((f"{label}: peak RSS, ours / httpx-sse (info)",
                    f"{ours['rss_peak'] / sse['rss_peak']:.2f}x", None))  # fmt: skip
    if traced:
        targets.append((f"{label}: tracemalloc peak, ours / httpx-sse (info)",
                        f"{traced['ours'] / traced['httpx-sse']:.2f}x", None))  # fmt: skip
    return timed


def _print_failures(r: dict[str, Any]) -> None:
    for kind, count in r["failure_kinds"]:
        print(f"      {count:>6} x {kind}")


def scaling(
    port: int,
    scales: list[int],
    default_scales: list[int],
    conc: dict[str, dict[str, Any]],
    targets: Targets,
) -> None:
    """Wall and peak RSS growth at each scale, ours (default options)
    versus httpx-sse on trio, one fresh process per run; today's defaults at ``default_scales``
    for their completed count."""
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    for n in scales:
        row = rows[n] = {}
        for variant in ("ours", "httpx-sse"):
            if n == CONC_STREAMS and CONC_CHUNKS == 200 and variant in conc:
                row[variant] = conc[variant]  # the concurrency section ran exactly this
            else:
                row[variant] = run_concurrent(variant, port, n, CONC_CHUNKS)
            print(f"  [scaling] {n:>6,} {variant:<13} {row[variant]['wall']:7.1f} s "
                  f"{row[variant]['completed']:>6,} done", flush=True)  # fmt: skip
        if n in default_scales:
            row["ours-defaults"] = run_concurrent("ours-defaults", port, n, CONC_CHUNKS)
            print(f"  [scaling] {n:>6,} ours-defaults {row['ours-defaults']['wall']:7.1f} s "
                  f"{row['ours-defaults']['completed']:>6,} done", flush=True)  # fmt: skip
    print(
        f"\nScaling: N streams x {CONC_CHUNKS} events at once over loopback, trio, one client per "
        f"{STREAMS_PER_CLIENT:,} streams (max_keepalive_connections=100 each), one fresh process "
        "per run;\n"
        "ours with default options and retries off; "
        "'defaults' = today's APIConnectOptions(max_retry=0)"
    )
    print(
        f"  {'streams':>7} | {'ours wall':>9} {'RSS+ MiB':>9} {'done':>6} | "
        f"{'sse wall':>9} {'RSS+ MiB':>9} {'done':>6} | {'wall x':>6} {'RSS+ x':>6} | "
        f"{'defaults: done':>15} {'wall':>6}"
    )
    for n, row in rows.items():
        o, s = row["ours"], row["httpx-sse"]
        d = row.get("ours-defaults")
        dtext = f"{d['completed']:>15,} {d['wall']:>6.1f}" if d else f"{'-':>15} {'-':>6}"
        print(
            f"  {n:>7,} | {o['wall']:>9.1f} {o['rss_delta'] / MIB:>9.1f} {o['completed']:>6,} | "
            f"{s['wall']:>9.1f} {s['rss_delta'] / MIB:>9.1f} {s['completed']:>6,} | "
            f"{ratio(o['wall'], s['wall']):>6} {ratio(o['rss_delta'], s['rss_delta']):>6} | {dtext}"
        )
    for n, row in rows.items():
        for variant, r in row.items():
            if r["failures"]:
                print(f"    {n:,} {variant}: {r['failures']:,} failed")
                _print_failures(r)
    if 10_000 in rows:
        o, s = rows[10_000]["ours"], rows[10_000]["httpx-sse"]
        targets.append(("10,000 concurrent, retries off: all complete (ours; default options)",
                        f"{o['completed']:,}/10,000", o["completed"] == 10_000))  # fmt: skip
        targets.append(("10,000 concurrent: peak RSS growth, ours / httpx-sse (<= 1.5x)",
                        ratio(o["rss_delta"], s["rss_delta"]),
                        o["rss_delta"] <= 1.5 * s["rss_delta"]))  # fmt: skip
        targets.append(("10,000 concurrent: wall, ours / httpx-sse (info)",
                        ratio(o["wall"], s["wall"]), None))  # fmt: skip
        targets.append(("10,000 concurrent: CPU, ours / httpx-sse (info)",
                        ratio(o["cpu"], s["cpu"]), None))  # fmt: skip
    for n in sorted(default_scales):
        d = rows.get(n, {}).get("ours-defaults")
        if d is not None:
            targets.append((f"{n:,} concurrent, today's default options: all complete",
                            f"{d['completed']:,}/{n:,}", d["completed"] == n))  # fmt: skip


if __name__ == "__main__":
    main()
