"""A small, fast OpenAI-compatible streaming server for benchmarks, run in its own process.

    .venv/bin/python benchmarks/_loopback_server.py    # prints "PORT <n>", serves until stdin closes

It answers ``POST .../chat/completions`` (any prefix) on 127.0.0.1 with a pre-encoded
``chat.completion.chunk`` stream in ``Transfer-Encoding: chunked``, one HTTP chunk per SSE
event (as servers that flush per token send it), over keep-alive HTTP/1.1 connections. The
request's ``"model": "bench-<n>"`` picks a stream of ``n`` events (role chunk, content chunks of
a few characters, finish chunk, usage chunk, ``data: [DONE]``), built once per ``n`` and cached.
The whole response goes out in one write: the client still parses one HTTP chunk per event
(h11 yields each chunk on its own), and the server spends next to no CPU per request, so
the client's per-chunk costs are what the benchmark sees.

It is plain asyncio with a Protocol (no HTTP library), listens with a big backlog (thousands of
connections may open at once), and exits when its standard input closes, so it never outlives
the benchmark that started it, even one killed without a chance to clean up.

The module also provides the stream itself (:func:`build_events`), so the in-memory benchmarks
feed the clients the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import resource
import signal
import socket
import sys

# Mostly ASCII, some Latin-1, CJK, an emoji and typographic punctuation, as chat output has.
WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then", "some",
    "more", "text", "about", "streaming", "tokens", "from", "a", "large", "language", "model",
    "über", "naïve", "café", "東京", "😀", "—", "“quoted”", "words",
]  # fmt: skip

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def build_events(n: int, seed: int = 1234) -> list[bytes]:
    """``n`` SSE events of an OpenAI chat.completion.chunk stream, about 300 bytes each:
    a role chunk, ``n - 4`` content chunks of a word or two, a finish chunk, a usage chunk
    (``choices: []``) and ``data: [DONE]``. Deterministic for a given ``n`` and ``seed``."""
    if n < 4:
        raise ValueError("a stream has at least 4 events")
    rng = random.Random(seed)
    base = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_eb9dce56a8",
    }

    def event(choices: list[object], usage: object = None) -> bytes:
        # OpenAI pads each chunk with a random "obfuscation" string.
        pad = "".join(rng.choice(_ALNUM) for _ in range(rng.randint(1, 8)))
        obj = {**base, "choices": choices, "usage": usage, "obfuscation": pad}
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        return b"data: " + data.encode() + b"\n\n"

    def choice(delta: dict[str, object], finish: str | None = None) -> list[object]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    events = [event(choice({"role": "assistant", "content": "", "refusal": None}))]
    for _ in range(n - 4):
        text = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))
        events.append(event(choice({"content": text})))
    events.append(event(choice({}, finish="stop")))
    usage = {"prompt_tokens": 19, "completion_tokens": n - 3, "total_tokens": n + 16}
    events.append(event([], usage=usage))
    events.append(b"data: [DONE]\n\n")
    return events


def expected_text(events: list[bytes]) -> str:
    """The content text the stream carries (what every client must reassemble)."""
    parts: list[str] = []
    for ev in events:
        payload = ev[6:-2]
        if payload == b"[DONE]":
            break
        obj = json.loads(payload)
        if obj["choices"]:
            parts.append(obj["choices"][0]["delta"].get("content") or "")
    return "".join(parts)


def chunked_response(events: list[bytes]) -> bytes:
    """The whole HTTP/1.1 response: headers, one chunk per event, the last chunk."""
    head = (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: text/event-stream; charset=utf-8\r\n"
        b"cache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n"
        b"x-request-id: req_bench\r\n"
        b"\r\n"
    )
    body = b"".join(b"%x\r\n%s\r\n" % (len(ev), ev) for ev in events)
    return head + body + b"0\r\n\r\n"


_MODEL = re.compile(rb'"model"\s*:\s*"bench-(\d+)"')
_NOT_FOUND_BODY = b'{"error":{"message":"no such path"}}'
_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_NOT_FOUND_BODY), _NOT_FOUND_BODY)
)
_MAX_EVENTS = 1_000_000
_responses: dict[int, bytes] = {}


def _response_for(body: bytes) -> bytes:
    match = _MODEL.search(body)
    n = int(match.group(1)) if match else 200
    n = min(max(n, 4), _MAX_EVENTS)
    response = _responses.get(n)
    if response is None:
        response = _responses[n] = chunked_response(build_events(n))
    return response


class _HTTP(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one request at a time per connection, Content-Length bodies."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        transport = self.transport
        assert transport is not None
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    transport.close()
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buf) < end + 4 + length:
                return  # the body is not all here yet
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            if method == "POST" and path.endswith("/chat/completions"):
                transport.write(_response_for(body))
            else:
                transport.write(_NOT_FOUND)
            if close:
                transport.close()
                return


def raise_nofile() -> int:
    """Raise the soft limit on open files to the hard one (a socket per connection: the
    benchmark opens up to 10,000 at once); return the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(host: str = "127.0.0.1", port: int = 0, backlog: int = 65535) -> None:
    # The kernel caps the backlog at net.core.somaxconn (4096 here); connections beyond it
    # wait in SYN retransmission, which the clients' connect limits must allow for.
    raise_nofile()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = await loop.create_server(_HTTP, sock=sock, backlog=backlog)
    for n in (200, 10_000):  # the benchmark's streams, built before the first request
        _response_for(b'"model":"bench-%d"' % n)
    print(f"PORT {sock.getsockname()[1]}", flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Standard input closing (the parent exited, however it exited) stops the server too.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()
        stop.set()

    watcher = asyncio.create_task(watch_stdin())
    async with server:
        await stop.wait()
    watcher.cancel()


if __name__ == "__main__":
    asyncio.run(serve())
