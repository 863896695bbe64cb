"""Benchmark: Gemini ``alt=sse`` bytes -> assembled ChatChunks, against the floor.

Run: ``.venv/bin/python benchmarks/bench_gemini.py`` (about 20 s; ``--quick`` for fewer rounds).

The body is what the live API sends for a long answer: 10,000 ``GenerateContentResponse``
frames of about 400 bytes (one text part, ``role: model``, the cumulative ``usageMetadata``
with its per-modality details on every frame, ``modelVersion``, ``responseId``), framed with
CRLF CRLF as Google's servers do; the last frame carries ``finishReason`` and safety ratings.
It is cut into 4 KiB reads (a typical socket read) and 64-byte reads (many reads per event).
Timed in the same run, best of several rounds each:

- ours: ``GeminiStreamParser.feed`` on each read, then ``end()``: the public ``ChatChunk``
  objects (the shared SSE decoder, the unframed-text watch, msgspec decoding into typed
  structs, assembly, object building, usage on the finishing chunk);
- ours, general path: the same parser with its byte-level shortcut off (the shared SSE
  decoder, events, the unframed-text watch): what irregular bodies cost;
- floor (msgspec): split the body on blank lines, ``msgspec.json.decode`` each payload
  (untyped), append the text of its parts. No SSE rules, no validation, no objects;
- floor (orjson): the same with ``orjson.loads``.

There is no official-SDK comparison for Gemini (the issue asks for one for anthropic and
openai Responses only). Every pipeline must produce the same text; checked before timing.
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
import orjson

from trio_llmstream import ChatChunk
from trio_llmstream._core._gemini import GeminiStreamParser

N_FRAMES = 10_000
READ_SIZES = (4096, 64)
_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "streaming",
    "tokens", "from", "a", "language", "model", "about", "trio", "nurseries", "cancellation",
)


def build_body(n_frames: int = N_FRAMES, seed: int = 7) -> tuple[bytes, str]:
    """The response body and the text it carries."""
    rng = random.Random(seed)
    texts: list[str] = []
    parts: list[bytes] = []
    for i in range(n_frames):
        text = " " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6)))
        texts.append(text)
        candidate: dict[str, object] = {
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        }
        if i == n_frames - 1:
            candidate["finishReason"] = "STOP"
            candidate["safetyRatings"] = [
                {"category": c, "probability": "NEGLIGIBLE"}
                for c in ("HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_HARASSMENT")
            ]
        frame = {
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": 42,
                "candidatesTokenCount": i + 1,
                "totalTokenCount": 43 + i,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 42}],
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "mK8zaZ2fJ4qM7M8PnvqB0Qk",
        }
        # Google's frames: ", " and ": " separators, CRLF framing.
        parts.append(b"data: " + json.dumps(frame).encode() + b"\r\n\r\n")
    return b"".join(parts), "".join(texts)


def cut(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def run_ours(reads: list[bytes], *, shortcut: bool = True) -> list[ChatChunk]:
    parser = GeminiStreamParser(shortcut=shortcut)
    chunks: list[ChatChunk] = []
    for data in reads:
        chunks += parser.feed(data)
    chunks += parser.end()
    if parser.error is not None:
        raise SystemExit(f"the parser failed: {parser.error!r}")
    return chunks


def run_general(reads: list[bytes]) -> list[ChatChunk]:
    return run_ours(reads, shortcut=False)


def _floor(loads: Callable[[bytes], object]) -> Callable[[list[bytes]], str]:
    def run(reads: list[bytes]) -> str:
        buffer = b""
        out: list[str] = []
        for data in reads:
            buffer += data
            if b"\r\n\r\n" not in buffer:
                continue
            blocks = buffer.split(b"\r\n\r\n")
            buffer = blocks.pop()
            for block in blocks:
                obj: dict[str, list[dict[str, dict[str, list[dict[str, str]]]]]]
                obj = loads(block[6:])  # type: ignore[assignment]
                for candidate in obj["candidates"]:
                    for part in candidate["content"]["parts"]:
                        out.append(part.get("text") or "")
        return "".join(out)

    return run


def text_of(result: object) -> str:
    if isinstance(result, str):
        return result
    assert isinstance(result, list)
    return "".join(chunk.text for chunk in result)


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
    body, text = build_body()
    print(
        f"{N_FRAMES} frames, {len(body) / N_FRAMES:.0f} bytes/frame on average, "
        f"{len(body) / 1e6:.2f} MB; best of several rounds; Python {sys.version.split()[0]}"
    )
    pipelines: dict[str, Callable[[list[bytes]], object]] = {
        "ours (GeminiStreamParser)": run_ours,
        "ours, general path (no shortcut)": run_general,
        "floor (split + msgspec + text)": _floor(msgspec.json.decode),
        "floor (split + orjson + text)": _floor(orjson.loads),
    }
    print(f"\n{'read size':>9}  {'pipeline':<32} {'us/frame':>9} {'frames/s':>12} {'/ floor':>8}")
    for size in READ_SIZES:
        reads = cut(body, size)
        for name, fn in pipelines.items():
            if text_of(fn(reads)) != text:
                raise SystemExit(f"{name} produced the wrong text")
        rounds = (5 if quick else 25) if size >= 1024 else (3 if quick else 9)
        results = best_of(pipelines, reads, rounds)
        floor = results["floor (split + msgspec + text)"]
        for name, seconds in results.items():
            us = seconds / N_FRAMES * 1e6
            print(
                f"{size:>9}  {name:<32} {us:>9.2f} {N_FRAMES / seconds:>12,.0f} "
                f"{seconds / floor:>7.2f}x"
            )
        print()


if __name__ == "__main__":
    main()
