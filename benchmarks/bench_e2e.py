"""End to end: OpenAILLM + open_llm_stream versus openai-python and a floor, in one run.

    .venv/bin/python benchmarks/bench_e2e.py            # about 3 minutes
    .venv/bin/python benchmarks/bench_e2e.py --quick    # fewer rounds, 200 concurrent streams
    .venv/bin/python benchmarks/bench_e2e.py --skip concurrent    # or memory, loopback

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
   total wall time, and peak memory as the growth of the process's peak RSS (``ru_maxrss``,
   from after imports and client set-up to the end) and, in a separate run since tracing
   slows everything down, the ``tracemalloc`` peak. All share one ``httpx.AsyncClient``
   allowing 1,000 connections with ``max_keepalive_connections=100`` (OpenAILLM's own default):
   httpcore's pool rescans every connection for each idle one on every request start and end,
   so keeping all 1,000 alive costs any client about 30 s of CPU in that scan alone.

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
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
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

from trio_llmstream import APIConnectOptions, ChatContext, OpenAILLM, Timeouts, open_llm_stream
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
# Default limits (connect 10 s, idle 10 s) for single streams, as a user would run them; no
# retries, so that any failure shows.
OPTIONS = APIConnectOptions(max_retry=0)
CONC_OPTIONS = APIConnectOptions(max_retry=0, timeouts=Timeouts(connect=120.0, idle=120.0))

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


def concurrent_child(variant: str, port: int, streams: int, chunks: int, trace: bool) -> None:
    """Run ``streams`` streams of ``chunks`` events at once; print one JSON line."""
    _die_with_parent()
    base = f"http://127.0.0.1:{port}/v1"
    url = f"{base}/chat/completions"
    events(chunks)

    async def main() -> dict[str, Any]:
        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=streams, max_keepalive_connections=100),
            timeout=httpx.Timeout(120.0),
        )
        llm = OpenAILLM("bench", base_url=base, api_key="sk-bench", http_client=client)
        run: Callable[[], Any]
        if variant == "ours":
            run = lambda: stream_ours(llm, chunks, CONC_OPTIONS)  # noqa: E731
        elif variant == "httpx-sse":
            run = lambda: stream_httpx_sse(client, url, chunks)  # noqa: E731
        else:
            run = lambda: stream_floor(client, url, chunks)  # noqa: E731
        failures: list[str] = []

        async def one() -> None:
            try:
                text = await run()
                if text != TEXTS[chunks]:
                    failures.append("wrong text")
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

        gc.collect()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if trace:
            tracemalloc.start()
        c0, t0 = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(one)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        tracemalloc.stop()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        await client.aclose()
        return {
            "wall": wall,
            "cpu": cpu,
            "rss_delta": (rss1 - rss0) * 1024,  # ru_maxrss is in KiB on Linux
            "rss_peak": rss1 * 1024,
            "traced_peak": peak,
            "failures": len(failures),
            "first_failure": failures[0] if failures else None,
        }

    print(json.dumps(trio.run(main)))


def run_concurrent(variant: str, port: int, streams: int, chunks: int, trace: bool) -> dict[str, Any]:
    args = [
        sys.executable, __file__, "--child", variant, "--port", str(port),
        "--streams", str(streams), "--chunks", str(chunks),
    ]  # fmt: skip
    if trace:
        args.append("--trace")
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} child failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["failures"]:
        raise RuntimeError(f"{variant}: {result['failures']} streams failed: {result['first_failure']}")
    return result


# -- report --------------------------------------------------------------------------------------


def print_table(title: str, best: dict[str, tuple[float, float]], ref: str) -> None:
    print(f"\n{title}")
    print(f"  {'variant':<42} {'CPU µs/chunk':>13} {'wall µs/chunk':>14}  CPU vs {ref}")
    for name, (cpu, wall) in best.items():
        print(f"  {name:<42} {cpu:>13.2f} {wall:>14.2f}  {cpu / best[ref][0]:>6.2f}x")


def main() -> None:
    global CONC_STREAMS, ROUNDS_FAST, ROUNDS_SLOW, CONC_ROUNDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 200 concurrent streams")
    parser.add_argument("--skip", default="", help="comma-separated: memory,loopback,concurrent")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=CONC_STREAMS, help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=CONC_CHUNKS, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        concurrent_child(args.child, args.port, args.streams, args.chunks, args.trace)
        return
    if args.quick:
        CONC_STREAMS, ROUNDS_FAST, ROUNDS_SLOW, CONC_ROUNDS = 200, 3, 1, 1
    skip = set(filter(None, args.skip.split(",")))

    started = time.perf_counter()
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
        f"({ROUNDS_SLOW} for openai-python); {os.cpu_count()} CPUs"
    )
    if OPENAI_MISSING:
        print(f"NOTE: {OPENAI_MISSING}")

    targets: list[tuple[str, str, bool | None]] = []
    if "memory" not in skip:
        mem = best_of(in_memory_variants())
        print_table("In memory (mock transport), 10,000-event stream, trio unless noted", mem,
                    FLOOR_MEM)  # fmt: skip
        ours, floor = mem[OURS_MEM][0], mem[FLOOR_MEM][0]
        ours4, floor4 = mem[OURS_MEM_4K][0], mem[FLOOR_MEM_4K][0]
        targets.append(("in memory: ours / floor, per event (<= 2x)", f"{ours / floor:.2f}x",
                        ours <= 2 * floor))  # fmt: skip
        targets.append(("in memory: ours / floor, 4 KiB chunks (<= 2x)", f"{ours4 / floor4:.2f}x",
                        ours4 <= 2 * floor4))  # fmt: skip
        for name in (OPENAI_MEM, OPENAI_MEM_TRIO):
            if name in mem:
                oa = mem[name][0]
                targets.append((f"in memory: {name.replace(', per event', '')} / ours (>= 20x)",
                                f"{oa / ours:.1f}x", oa >= 20 * ours))  # fmt: skip

    if not {"loopback", "concurrent"} <= skip:
        with loopback_server() as port:
            if "loopback" not in skip:
                loop = best_of(loopback_variants(port))
                print_table(
                    "Over loopback HTTP (server in its own process), 10,000-event stream, "
                    "trio unless noted",
                    loop,
                    FLOOR_LOOP,
                )
                ours, hf = loop[OURS_LOOP][0], loop[FLOOR_LOOP][0]
                targets.append(("loopback: ours / httpx + floor (<= 1.2x)", f"{ours / hf:.2f}x",
                                ours <= 1.2 * hf))  # fmt: skip
                if OPENAI_LOOP in loop:
                    oa = loop[OPENAI_LOOP][0]
                    targets.append(("loopback: openai-python / ours (no target)",
                                    f"{oa / ours:.1f}x", None))  # fmt: skip
            if "concurrent" not in skip:
                concurrency(port, targets)

    print("\nTargets")
    for what, value, ok in targets:
        print(f"  {what:<55} {value:>8}  {'-' if ok is None else 'met' if ok else 'MISSED'}")
    print(f"\n(total run time {time.perf_counter() - started:.0f} s)")


def concurrency(port: int, targets: list[tuple[str, str, bool | None]]) -> None:
    # Each variant in a fresh process; rounds interleave. The floor is a reference (one round).
    timed: dict[str, dict[str, Any]] = {}
    for round_ in range(CONC_ROUNDS):
        for variant in ("ours", "httpx-sse", "floor"):
            if variant == "floor" and round_:
                continue
            result = run_concurrent(variant, port, CONC_STREAMS, CONC_CHUNKS, trace=False)
            old = timed.setdefault(variant, result)
            for key in ("wall", "cpu", "rss_delta"):  # best of rounds, each figure on its own
                old[key] = min(old[key], result[key])
    traced = {
        v: run_concurrent(v, port, CONC_STREAMS, CONC_CHUNKS, trace=True)["traced_peak"]
        for v in ("ours", "httpx-sse")
    }
    n = CONC_STREAMS * CONC_CHUNKS
    print(
        f"\nConcurrency: {CONC_STREAMS:,} streams x {CONC_CHUNKS} events at once over loopback, "
        f"trio, one shared httpx.AsyncClient\n(max_connections={CONC_STREAMS}, "
        "max_keepalive_connections=100); each variant in a fresh process, "
        + (f"best of {CONC_ROUNDS} (floor: 1)" if CONC_ROUNDS > 1 else "one run each")
    )
    print(
        f"  {'variant':<12} {'wall s':>7} {'CPU s':>7} {'CPU µs/chunk':>13} "
        f"{'peak RSS growth':>16} {'tracemalloc peak':>17}"
    )
    mib = 1024 * 1024
    for variant, r in timed.items():
        peak = f"{traced[variant] / mib:>13.1f} MiB" if variant in traced else f"{'-':>17}"
        print(
            f"  {variant:<12} {r['wall']:>7.2f} {r['cpu']:>7.2f} {r['cpu'] / n * 1e6:>13.2f} "
            f"{r['rss_delta'] / mib:>12.1f} MiB {peak}"
        )
    ours, sse = timed["ours"], timed["httpx-sse"]
    targets.append(("concurrent: wall, ours / httpx-sse (<= 1x)",
                    f"{ours['wall'] / sse['wall']:.2f}x", ours["wall"] <= sse["wall"]))  # fmt: skip
    targets.append(("concurrent: peak RSS growth, ours / httpx-sse (<= 1x)",
                    f"{ours['rss_delta'] / sse['rss_delta']:.2f}x",
                    ours["rss_delta"] <= sse["rss_delta"]))  # fmt: skip
    targets.append(("concurrent: tracemalloc peak, ours / httpx-sse (<= 1x)",
                    f"{traced['ours'] / traced['httpx-sse']:.2f}x",
                    traced["ours"] <= traced["httpx-sse"]))  # fmt: skip


if __name__ == "__main__":
    main()
