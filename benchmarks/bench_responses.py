"""Benchmark: OpenAI Responses stream bytes -> ChatChunks, against the floor and openai-python.

Run: ``.venv/bin/python benchmarks/bench_responses.py`` (about 30 s; ``--quick`` for fewer
rounds). openai-python is optional (``.venv/bin/pip install openai``; openai 3.x brings its
httpx fork, httpx2): without it its rows are skipped.

The stream is a realistic Responses body of 10,000 ``response.output_text.delta`` events (each
``event: ...`` plus ``data: {"type", "sequence_number", "item_id", "output_index",
"content_index", "delta", "logprobs": [], "obfuscation"}``, about 230 bytes), between the
lifecycle events (``response.created``, ``in_progress``, ``output_item.added``,
``content_part.added``) and the ``.done`` events and ``response.completed`` with usage, whose
response repeats the whole text. Cut into 4 KiB reads (a socket read) and 64-byte reads. Timed
in the same run, best of several rounds each, rounds interleaved:

- ours: ``ResponsesParser``: its framing shortcut for ``event:``/``data:`` blocks, one msgspec
  decode per event into a typed Struct, public ``ChatChunk`` objects; and the same assembler
  with every event framed by the shared ``SSEDecoder`` (``EventStreamParser``), for comparison;
- floor: split the body on blank lines, take each block's ``data:`` line, decode it with
  msgspec into a two-field Struct (type, delta), append the text deltas. No SSE rules, no
  validation, no objects: the bare work. Also the chat benchmark's floor (``orjson.loads`` to a
  dict per event) for comparison with ``bench_assembly.py``;
- openai-python, parsing only: its ``SSEDecoder.iter_bytes`` over the same reads, ``sse.json()``
  and ``construct_type(ResponseStreamEvent)`` per event (what its ``Stream`` does per event);
- openai-python, the client: ``OpenAI(http_client=httpx2.Client(transport=MockTransport))``,
  ``responses.create(stream=True)`` iterated, the body served in the same reads.

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
from trio_llmstream._core._parser import EventStreamParser
from trio_llmstream._core._responses import ResponsesAssembler, ResponsesParser

try:
    import httpx2
    import openai
    from openai._models import construct_type
    from openai._streaming import SSEDecoder as OpenAISSEDecoder
    from openai.types.responses import ResponseStreamEvent
except ImportError:  # pragma: no cover - optional
    openai = None  # type: ignore[assignment]

N_DELTAS = 10_000
READ_SIZES = (4096, 64)

_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "streaming",
    "tokens", "from", "a", "language", "model", "about", "trio", "nurseries", "cancellation",
    "scopes", "and", "structured", "concurrency", "in", "python",
)
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def build_body(n: int = N_DELTAS, seed: int = 7) -> tuple[bytes, str]:
    """The response body and the text it carries."""
    rng = random.Random(seed)
    seq = 0
    parts: list[bytes] = []

    def event(data: dict[str, Any]) -> None:
        nonlocal seq
        data = {"type": data["type"], "sequence_number": seq, **data}
        seq += 1
        parts.append(
            b"event: " + data["type"].encode() + b"\ndata: "
            + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
        )

    rid = "resp_68b9e0b2c4a08190a7a3f1d2e5b6c7d80e1f2a3b4c5d6e7f"
    mid = "msg_68b9e0b35c6c8190b1c2d3e4f5a6b7c80d1e2f3a4b5c6d7e"
    response: dict[str, Any] = {
        "id": rid, "object": "response", "created_at": 1767225600, "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None, "instructions": None,
        "max_output_tokens": None, "model": "gpt-5-mini-2025-08-07", "output": [],
        "parallel_tool_calls": True, "previous_response_id": None,
        "reasoning": {"effort": "minimal", "summary": None}, "store": False,
        "temperature": 1.0, "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": None, "user": None, "metadata": {},
    }
    event({"type": "response.created", "response": response})
    event({"type": "response.in_progress", "response": response})
    item = {"id": mid, "type": "message", "status": "in_progress", "content": [],
            "role": "assistant"}
    event({"type": "response.output_item.added", "output_index": 0, "item": item})
    empty = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    event({"type": "response.content_part.added", "item_id": mid, "output_index": 0,
           "content_index": 0, "part": empty})
    texts = []
    for _ in range(n):
        text = " " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 2)))
        texts.append(text)
        pad = "".join(rng.choice(_PAD) for _ in range(rng.randint(4, 20)))
        event({"type": "response.output_text.delta", "item_id": mid, "output_index": 0,
               "content_index": 0, "delta": text, "logprobs": [], "obfuscation": pad})
    full = "".join(texts)
    event({"type": "response.output_text.done", "item_id": mid, "output_index": 0,
           "content_index": 0, "text": full, "logprobs": []})
    part = dict(empty, text=full)
    event({"type": "response.content_part.done", "item_id": mid, "output_index": 0,
           "content_index": 0, "part": part})
    done_item = dict(item, status="completed", content=[part])
    event({"type": "response.output_item.done", "output_index": 0, "item": done_item})
    usage = {"input_tokens": 42, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": n, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": n + 42}
    event({"type": "response.completed",
           "response": dict(response, status="completed", output=[done_item], usage=usage)})
    return b"".join(parts), full


def cut(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def run_ours(reads: list[bytes]) -> list[ChatChunk]:
    return _run(ResponsesParser(), reads)


def run_ours_via_decoder(reads: list[bytes]) -> list[ChatChunk]:
    # The same assembly with every event framed by the shared SSEDecoder (no shortcut).
    return _run(EventStreamParser(ResponsesAssembler()), reads)


def _run(parser: ResponsesParser | EventStreamParser, reads: list[bytes]) -> list[ChatChunk]:
    chunks: list[ChatChunk] = []
    for data in reads:
        chunks += parser.feed(data)
        if parser.finished:
            break
    chunks += parser.end()
    if parser.error is not None:
        raise SystemExit(f"the parser failed: {parser.error!r}")
    return chunks


class _FloorEvent(msgspec.Struct):
    type: str = ""
    delta: str = ""


_floor_decode = msgspec.json.Decoder(_FloorEvent).decode


def run_floor(reads: list[bytes]) -> str:
    buffer = b""
    parts = []
    for data in reads:
        buffer += data
        if b"\n\n" not in buffer:
            continue
        blocks = buffer.split(b"\n\n")
        buffer = blocks.pop()
        for block in blocks:
            event = _floor_decode(block[block.index(b"data: ") + 6 :])
            if event.type == "response.output_text.delta":
                parts.append(event.delta)
            elif event.type == "response.completed":
                return "".join(parts)
    return "".join(parts)


def run_floor_orjson(reads: list[bytes]) -> str:
    # The chat benchmark's floor (bench_assembly.py): a dict per event, for comparison.
    buffer = b""
    parts = []
    for data in reads:
        buffer += data
        if b"\n\n" not in buffer:
            continue
        blocks = buffer.split(b"\n\n")
        buffer = blocks.pop()
        for block in blocks:
            event = orjson.loads(block[block.index(b"data: ") + 6 :])
            kind = event["type"]
            if kind == "response.output_text.delta":
                parts.append(event["delta"])
            elif kind == "response.completed":
                return "".join(parts)
    return "".join(parts)


def run_sdk_parse(reads: list[bytes]) -> str:
    parts = []
    for sse in OpenAISSEDecoder().iter_bytes(iter(reads)):
        event: Any = construct_type(type_=ResponseStreamEvent, value=sse.json())
        if event.type == "response.output_text.delta":
            parts.append(event.delta)
    return "".join(parts)


def run_sdk_client(reads: list[bytes]) -> str:
    def handler(request: Any) -> Any:
        def body() -> Iterator[bytes]:
            yield from reads

        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=body()
        )

    client = openai.OpenAI(
        api_key="sk-bench", http_client=httpx2.Client(transport=httpx2.MockTransport(handler))
    )
    parts = []
    with client.responses.create(model="gpt-5-mini", input="hi", stream=True) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                parts.append(event.delta)
    client.close()
    return "".join(parts)


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
    events = body.count(b"\n\n")
    print(
        f"{N_DELTAS} text deltas, {events} events, {len(body) / events:.0f} bytes/event on "
        f"average, {len(body) / 1e6:.2f} MB; best of several rounds; "
        f"Python {sys.version.split()[0]}"
        + (f", openai {openai.__version__}" if openai else ", openai not installed")
    )
    pipelines: dict[str, Callable[[list[bytes]], object]] = {
        "ours (ResponsesParser)": run_ours,
        "ours, SSEDecoder framing": run_ours_via_decoder,
        "floor (split + msgspec)": run_floor,
        "split + orjson dict": run_floor_orjson,
    }
    if openai is not None:
        pipelines["openai-python, parse only"] = run_sdk_parse
        pipelines["openai-python, client"] = run_sdk_client
    print(f"\n{'read size':>9}  {'pipeline':<28} {'us/delta':>9} {'deltas/s':>12} "
          f"{'/ floor':>8} {'SDK / ours':>10}")
    for size in READ_SIZES:
        reads = cut(body, size)
        for name, fn in pipelines.items():
            got = text_of(fn(reads))
            if got != text:
                raise SystemExit(f"{name} produced the wrong text")
        slow = {"openai-python, parse only", "openai-python, client"}
        fast = {k: v for k, v in pipelines.items() if k not in slow}
        best = best_of(fast, reads, 3 if quick else 9)
        best.update(best_of({k: v for k, v in pipelines.items() if k in slow}, reads,
                            1 if quick else 3))
        floor = best["floor (split + msgspec)"]
        ours = best["ours (ResponsesParser)"]
        for name, seconds in best.items():
            ratio = f"{seconds / ours:>10.1f}" if name in slow else " " * 10
            print(
                f"{size:>9}  {name:<28} {seconds / N_DELTAS * 1e6:>9.2f} "
                f"{N_DELTAS / seconds:>12,.0f} {seconds / floor:>8.2f} {ratio}"
            )


if __name__ == "__main__":
    main()
