"""Benchmark: bytes -> assembled ChatChunks, against a bare floor and httpx-sse + json.

Run: ``.venv/bin/python benchmarks/bench_assembly.py`` (about 20 s; ``--quick`` for fewer rounds).

The stream is an OpenAI-shaped chat-completions body of 10,000 content chunks (``data:`` events
of about 320 bytes: a realistic ``chat.completion.chunk`` with the ``obfuscation`` padding OpenAI
adds), after a role chunk and before a finish chunk, a usage-only chunk and ``[DONE]``. It is cut
into 4 KiB reads (a typical socket read) and 64-byte reads (many reads per event). Timed in the
same run, best of several rounds each:

- ours: ``ChatCompletionParser.feed`` on each read, then ``end()``; the result is the list of
  public ``ChatChunk`` objects (SSE framing, msgspec decoding, assembly, object building);
- ours without the parser's byte-level shortcut: ``SSEDecoder.feed`` -> ``ServerSentEvent``s ->
  ``ChatCompletionAssembler.feed_events`` (same result, for comparison);
- floor: split the body on blank lines, ``orjson.loads`` each payload, append the content text.
  Nothing else: no SSE rules, no validation, no objects. What the bare work costs;
- httpx-sse: httpx's incremental UTF-8 decode, ``httpx_sse``'s line and event decoders (as its
  ``EventSource`` drives them), then ``json.loads`` and appending the text: a common stack.

All three must produce the same text; the script checks that before timing.

Then the objects a chunk is made of (issue 16, cost 1 of benchmarks/PROFILE.md): the
GC-tracked allocations per chunk (gen-0 count growth with the collector off and every chunk
kept), and the parser's time with every chunk kept (a collected response: the collector runs,
collections counted) against chunks dropped after each read (a streaming consumer: they die
young). ``--ab PATH`` adds the parser of another checkout of this repository (say the commit
before a change, ``git archive <commit> | tar -x -C PATH``), imported alongside under another
name and timed in the same interleaved rounds: a before/after ratio from one run.
"""

from __future__ import annotations

import codecs
import gc
import importlib
import importlib.util
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder

from trio_llmstream import ChatChunk
from trio_llmstream._core._openai import ChatCompletionAssembler, ChatCompletionParser
from trio_llmstream._core._sse import SSEDecoder

N_CHUNKS = 10_000
READ_SIZES = (4096, 64)

_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "streaming",
    "tokens", "from", "a", "language", "model", "about", "trio", "nurseries", "cancellation",
    "scopes", "and", "structured", "concurrency", "in", "python",
)
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def build_body(n_chunks: int = N_CHUNKS, seed: int = 7) -> tuple[bytes, str]:
    """The response body and the text it carries."""
    rng = random.Random(seed)
    head = {
        "id": "chatcmpl-BxQv9kT3m2LzR8pWn4YcA1sHdF7eJ",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_7f6be3efb0",
    }

    def event(choices: list[object], usage: object = None) -> bytes:
        pad = "".join(rng.choice(_PAD) for _ in range(rng.randint(4, 20)))
        obj = {**head, "choices": choices, "usage": usage, "obfuscation": pad}
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def choice(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    parts = [event([choice({"role": "assistant", "content": "", "refusal": None})])]
    texts = []
    for _ in range(n_chunks):
        text = " " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 2)))
        texts.append(text)
        parts.append(event([choice({"content": text})]))
    parts.append(event([choice({}, "stop")]))
    usage = {
        "prompt_tokens": 42,
        "completion_tokens": n_chunks,
        "total_tokens": n_chunks + 42,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    parts.append(event([], usage))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts), "".join(texts)


def cut(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def run_ours(reads: list[bytes]) -> list[ChatChunk]:
    return run_ours_with(ChatCompletionParser, reads)


def run_ours_with(parser_class: type, reads: list[bytes]) -> list[ChatChunk]:
    parser = parser_class()
    chunks = []
    for data in reads:
        chunks.extend(parser.feed(data))
        if parser.finished:
            break
    chunks.extend(parser.end())
    if parser.error is not None or not parser.done:
        raise SystemExit(f"the parser failed: {parser.error!r}")
    return chunks


def run_ours_via_events(reads: list[bytes]) -> list[ChatChunk]:
    # The same assembly without the parser's byte-level shortcut: SSEDecoder -> ServerSentEvent
    # -> ChatCompletionAssembler.feed_events. Shows what the shortcut buys.
    decoder = SSEDecoder()
    assembler = ChatCompletionAssembler()
    chunks = []
    for data in reads:
        chunks.extend(assembler.feed_events(decoder.feed(data)))
        if assembler.finished:
            break
    chunks.extend(assembler.end())
    if assembler.error is not None or not assembler.done:
        raise SystemExit(f"the assembler failed: {assembler.error!r}")
    return chunks


def run_ours_dropped(reads: list[bytes], parser_class: type = ChatCompletionParser) -> str:
    # A streaming consumer: each read's chunks are looked at (their text) and dropped.
    parser = parser_class()
    parts = []
    for data in reads:
        for chunk in parser.feed(data):
            parts.append(chunk.text)
        if parser.finished:
            break
    for chunk in parser.end():
        parts.append(chunk.text)
    if parser.error is not None or not parser.done:
        raise SystemExit(f"the parser failed: {parser.error!r}")
    return "".join(parts)


def load_other_parser(root: str) -> type:
    """``ChatCompletionParser`` of the checkout at ``root``, imported as ``trio_llmstream_ab``
    (the package imports itself only relatively, so it loads under another name)."""
    init = Path(root) / "trio_llmstream" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "trio_llmstream_ab", init, submodule_search_locations=[str(init.parent)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"--ab: no trio_llmstream package under {root}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["trio_llmstream_ab"] = module
    spec.loader.exec_module(module)
    parser: type = importlib.import_module("trio_llmstream_ab._core._openai").ChatCompletionParser
    return parser


def tracked_per_chunk(parser_class: type, reads: list[bytes]) -> float:
    """GC-tracked allocations per chunk: the gen-0 count's growth with the collector off and
    every chunk kept (a tracked object counts when allocated, and uncounts when freed)."""
    gc.collect()
    gc.disable()
    try:
        parser = parser_class()
        kept = []
        start = gc.get_count()[0]
        for data in reads:
            kept.append(parser.feed(data))
        kept.append(parser.end())
        grown = gc.get_count()[0] - start
    finally:
        gc.enable()
    chunks = sum(len(batch) for batch in kept)
    return (grown - len(kept)) / chunks  # minus the list each feed returns


class Collections:
    """gc.callbacks: collections per generation while active."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            self.count[info["generation"]] += 1

    def __enter__(self) -> Collections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def text_of(result: object) -> str:
    if isinstance(result, str):
        return result
    assert isinstance(result, list)
    return "".join(chunk.text for chunk in result)


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
            payload = block[6:]
            if payload == b"[DONE]":
                return "".join(parts)
            obj = orjson.loads(payload)
            for choice in obj["choices"]:
                parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


def run_httpx_sse(reads: list[bytes]) -> str:
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    line_decoder = SSELineDecoder()
    sse_decoder = HttpxSSEDecoder()
    parts = []
    for data in reads:
        for line in line_decoder.decode(text_decoder.decode(data)):
            sse = sse_decoder.decode(line.rstrip("\n"))
            if sse is None:
                continue
            if sse.data == "[DONE]":
                return "".join(parts)
            obj = json.loads(sse.data)
            for choice in obj["choices"]:
                parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


def best_of(
    pipelines: dict[str, Callable[[list[bytes]], object]], reads: list[bytes], rounds: int
) -> dict[str, float]:
    # Rounds interleave the pipelines, so that a noisy neighbour hurts them alike.
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
    other = sys.argv[sys.argv.index("--ab") + 1] if "--ab" in sys.argv else None
    other_parser = load_other_parser(other) if other else None
    body, text = build_body()
    n = N_CHUNKS + 3  # + role, finish and usage chunks
    print(
        f"{N_CHUNKS} content chunks, {len(body) / (N_CHUNKS + 4):.0f} bytes/event on average, "
        f"{len(body) / 1e6:.2f} MB; best of several rounds; Python {sys.version.split()[0]}"
    )
    pipelines: dict[str, Callable[[list[bytes]], object]] = {
        "ours (ChatCompletionParser)": run_ours,
        "ours, SSEDecoder + feed_events": run_ours_via_events,
        "floor (split + orjson + text)": run_floor,
        "httpx-sse + json.loads": run_httpx_sse,
    }
    if other_parser is not None:
        pipelines["--ab tree (ChatCompletionParser)"] = lambda reads: run_ours_with(
            other_parser, reads
        )
    print(f"\n{'read size':>9}  {'pipeline':<32} {'us/chunk':>9} {'chunks/s':>12} {'/ floor':>8}")
    for size in READ_SIZES:
        reads = cut(body, size)
        for name, fn in pipelines.items():
            if text_of(fn(reads)) != text:
                raise SystemExit(f"{name} produced the wrong text")
        rounds = (5 if quick else 25) if size >= 1024 else (3 if quick else 9)
        results = best_of(pipelines, reads, rounds)
        floor = results["floor (split + orjson + text)"]
        for name, seconds in results.items():
            us = seconds / n * 1e6
            print(
                f"{size:>9}  {name:<32} {us:>9.2f} {n / seconds:>12,.0f} {seconds / floor:>7.2f}x"
            )
        ours = results["ours (ChatCompletionParser)"]
        print(f"{'':>9}  ours / floor = {ours / floor:.2f}")
        if other_parser is not None:
            ab = results["--ab tree (ChatCompletionParser)"]
            print(f"{'':>9}  ours / --ab tree = {ours / ab:.3f}")
        print()
    objects(body, text, n, other_parser, quick)


def objects(body: bytes, text: str, n: int, other_parser: type | None, quick: bool) -> None:
    """Tracked allocations per chunk; the parser with chunks kept (GC on) or dropped."""
    reads = cut(body, 4096)
    parsers: dict[str, type] = {"ours": ChatCompletionParser}
    if other_parser is not None:
        parsers["--ab tree"] = other_parser
    pipelines: dict[str, Callable[[list[bytes]], object]] = {}
    for name, cls in parsers.items():
        pipelines[f"{name}, chunks kept"] = lambda reads, cls=cls: run_ours_with(cls, reads)
        pipelines[f"{name}, chunks dropped"] = lambda reads, cls=cls: run_ours_dropped(reads, cls)
    for name, fn in pipelines.items():
        if text_of(fn(reads)) != text:
            raise SystemExit(f"{name} produced the wrong text")
    rounds = 5 if quick else 25
    best = dict.fromkeys(pipelines, float("inf"))
    collections: dict[str, list[int]] = {}
    for _ in range(rounds):
        for name, fn in pipelines.items():
            gc.collect()
            with Collections() as counted:
                start = time.perf_counter()
                fn(reads)
                seconds = time.perf_counter() - start
            if seconds < best[name]:
                best[name], collections[name] = seconds, counted.count
    print("Objects: 4 KiB reads; GC-tracked allocations per chunk (collector off, chunks kept);")
    print("the parser with every chunk kept (GC on: collections in its best round) or dropped")
    print(f"{'parser':<10} {'tracked/chunk':>13}   {'kept us/chunk':>13} {'collections':>15}"
          f"   {'dropped us/chunk':>16} {'collections':>12}")  # fmt: skip
    for name, cls in parsers.items():
        kept, dropped = f"{name}, chunks kept", f"{name}, chunks dropped"
        print(f"{name:<10} {tracked_per_chunk(cls, reads):>13.2f}   "
              f"{best[kept] / n * 1e6:>13.2f} {collections[kept]!s:>15}   "
              f"{best[dropped] / n * 1e6:>16.2f} {collections[dropped]!s:>12}")  # fmt: skip
    if other_parser is not None:
        for what in ("kept", "dropped"):
            ratio = best[f"ours, chunks {what}"] / best[f"--ab tree, chunks {what}"]
            print(f"ours / --ab tree, chunks {what}: {ratio:.3f}")


if __name__ == "__main__":
    main()
