"""Benchmark: Anthropic Messages bytes -> ChatChunks, against the floor and the official SDK.

Run: ``.venv/bin/python benchmarks/bench_anthropic.py`` (about 30 s; ``--quick`` for fewer
rounds). The SDK rows need ``pip install anthropic`` and are skipped without it.

The body is an Anthropic stream as the API sends it: ``message_start``, a ``ping``, one text
block of 10,000 ``text_delta`` events (about 160 bytes each: an ``event:`` line and a
``data:`` line), ``content_block_stop``, ``message_delta`` and ``message_stop``. It is cut into
4 KiB reads (a typical socket read) and 64-byte reads. Timed in the same run, best of several
interleaved rounds:

- ours: ``AnthropicParser().feed`` on each read, then ``end()`` (what ``AnthropicLLM`` runs):
  SSE framing (its shortcut for Anthropic's two-line blocks), typed msgspec decoding,
  assembly, public ``ChatChunk``s;
- ours through the shared ``EventStreamParser`` (the same result, for comparison);
- floor: split the body on blank lines, decode each block's ``data:`` JSON with orjson or
  msgspec (the faster one is the floor), append the text. No SSE rules, no validation, no
  objects;
- SDK, raw events: ``anthropic.Anthropic().messages.create(stream=True)`` over an in-memory
  httpx transport yielding the same reads: the SDK's SSE decoder, ``json.loads`` and its
  pydantic event models, text appended from ``text_delta`` events;
- SDK, MessageStream: ``messages.stream()`` and its ``text_stream`` (the SDK's own
  accumulation of a message snapshot, the closest thing to our assembly).

Every pipeline must produce the same text; the script checks that before timing.
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
import orjson

from trio_llmstream import ChatChunk
from trio_llmstream._core._anthropic import AnthropicAssembler, AnthropicParser
from trio_llmstream._core._parser import EventStreamParser

N_CHUNKS = 10_000
READ_SIZES = (4096, 64)
_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "streaming",
    "tokens", "from", "a", "language", "model", "about", "trio", "nurseries", "cancellation",
    "scopes", "and", "structured", "concurrency", "in", "python",
)


def _event(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":"))
    return f"event: {obj['type']}\ndata: {data}\n\n".encode()


def build_body(n_chunks: int = N_CHUNKS, seed: int = 7) -> tuple[bytes, str]:
    rng = random.Random(seed)
    parts = [
        _event(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5-20250929",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 472,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                        "output_tokens": 2,
                        "service_tier": "standard",
                    },
                },
            }
        ),
        _event({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        _event({"type": "ping"}),
    ]
    texts = []
    for _ in range(n_chunks):
        text = " " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 2)))
        texts.append(text)
        parts.append(
            _event({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}})
        )
    parts += [
        _event({"type": "content_block_stop", "index": 0}),
        _event({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n_chunks}}),
        _event({"type": "message_stop"}),
    ]
    return b"".join(parts), "".join(texts)


def cut(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def run_ours(reads: list[bytes]) -> list[ChatChunk]:
    parser = AnthropicParser()
    chunks: list[ChatChunk] = []
    for data in reads:
        chunks += parser.feed(data)
        if parser.finished:
            break
    chunks += parser.end()
    if parser.error is not None:
        raise SystemExit(f"the parser failed: {parser.error!r}")
    return chunks


def run_shared(reads: list[bytes]) -> list[ChatChunk]:
    # The same assembler behind the shared EventStreamParser (no Anthropic framing shortcut).
    parser = EventStreamParser(AnthropicAssembler())
    chunks: list[ChatChunk] = []
    for data in reads:
        chunks += parser.feed(data)
        if parser.finished:
            break
    chunks += parser.end()
    if parser.error is not None:
        raise SystemExit(f"the parser failed: {parser.error!r}")
    return chunks


def _floor(loads: Callable[[bytes], Any]) -> Callable[[list[bytes]], str]:
    def run(reads: list[bytes]) -> str:
        buffer = b""
        parts = []
        for data in reads:
            buffer += data
            if b"\n\n" not in buffer:
                continue
            blocks = buffer.split(b"\n\n")
            buffer = blocks.pop()
            for block in blocks:
                obj = loads(block[block.index(b"data: ") + 6 :])
                if obj["type"] == "content_block_delta":
                    parts.append(obj["delta"].get("text") or "")
        return "".join(parts)

    return run


def _sdk_client(reads: list[bytes]) -> Any:
    import anthropic

    httpx_mod: Any
    try:  # the SDK's own HTTP library (httpx, or its fork httpx2 in newer releases)
        import httpx2 as httpx_mod
    except ImportError:
        import httpx as httpx_mod

    def handler(request: Any) -> Any:
        def body() -> Iterator[bytes]:
            yield from reads

        return httpx_mod.Response(
            200, headers={"content-type": "text/event-stream"}, content=body()
        )

    return anthropic.Anthropic(
        api_key="bench", base_url="http://bench.invalid",
        http_client=httpx_mod.Client(transport=httpx_mod.MockTransport(handler)),
        max_retries=0,
    )


_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5", "max_tokens": 1024,
    "messages": [{"role": "user", "content": "hi"}],
}


def run_sdk_raw(reads: list[bytes]) -> str:
    client = _sdk_client(reads)
    parts = []
    for event in client.messages.create(stream=True, **_REQUEST):
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            parts.append(event.delta.text)
    return "".join(parts)


def run_sdk_message_stream(reads: list[bytes]) -> str:
    client = _sdk_client(reads)
    with client.messages.stream(**_REQUEST) as stream:
        return "".join(stream.text_stream)


def text_of(result: object) -> str:
    if isinstance(result, str):
        return result
    assert isinstance(result, list)
    return "".join(chunk.text for chunk in result)


def best_of(
    pipelines: dict[str, Callable[[list[bytes]], object]], reads: list[bytes], rounds: int
) -> dict[str, float]:
    best = dict.fromkeys(pipelines, float("inf"))
    for _ in range(rounds):
        for name, fn in pipelines.items():
            gc.collect()
            start = time.perf_counter()
            fn(reads)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    quick = "--quick" in sys.argv
    body, text = build_body()
    n = N_CHUNKS + 6
    print(
        f"{N_CHUNKS} text deltas, {len(body) / n:.0f} bytes/event on average, "
        f"{len(body) / 1e6:.2f} MB; best of several rounds; Python {sys.version.split()[0]}"
    )
    pipelines: dict[str, Callable[[list[bytes]], object]] = {
        "ours (AnthropicParser)": run_ours,
        "ours, shared EventStreamParser": run_shared,
        "floor: split + orjson": _floor(orjson.loads),
        "floor: split + msgspec": _floor(msgspec.json.decode),
    }
    try:
        import anthropic

        pipelines[f"SDK {anthropic.__version__}, raw events"] = run_sdk_raw
        pipelines["SDK, MessageStream"] = run_sdk_message_stream
    except ImportError:
        print("(anthropic is not installed: no SDK rows)")
    print(f"\n{'read size':>9}  {'pipeline':<30} {'us/event':>9} {'events/s':>12} {'/ floor':>8}")
    for size in READ_SIZES:
        reads = cut(body, size)
        for name, fn in pipelines.items():
            if text_of(fn(reads)) != text:
                raise SystemExit(f"{name} produced the wrong text")
        rounds = (3 if quick else 15) if size >= 1024 else (2 if quick else 7)
        results = best_of(pipelines, reads, rounds)
        floor = min(results["floor: split + orjson"], results["floor: split + msgspec"])
        for name, seconds in results.items():
            us = seconds / n * 1e6
            print(
                f"{size:>9}  {name:<30} {us:>9.2f} {n / seconds:>12,.0f} {seconds / floor:>7.2f}x"
            )
        ours = results["ours (AnthropicParser)"]
        line = f"{'':>9}  ours / floor = {ours / floor:.2f}"
        sdk = [v for k, v in results.items() if k.startswith("SDK")]
        if sdk:
            line += f"; SDK (fastest) / ours = {min(sdk) / ours:.1f}"
        print(line + "\n")


if __name__ == "__main__":
    main()
