"""Gemini ``streamGenerateContent?alt=sse`` transcripts for the mock server.

Each builder returns stream steps (or one step) in Gemini's documented wire format: every
frame is one ``GenerateContentResponse`` as a ``data:`` event, with no ``[DONE]``; the last
frame of a candidate carries its ``finishReason``; ``usageMetadata`` is cumulative and (as the
live API does) repeated on every frame. Frames are :class:`~trio_llmstream.testing.ChunkEvent`
steps, so :func:`~trio_llmstream.testing.inject_fault` counts them; with ``crlf=True`` they are
:class:`~trio_llmstream.testing.RawBytes` ending in ``\\r\\n\\r\\n``, the framing Google's
servers use. Point a ``GeminiLLM`` at ``server.base_url``: the server answers
``/v1/models/{m}:streamGenerateContent``.

::

    server.enqueue(gemini_text_stream("Hello world", thoughts="Greeting."))
    server.enqueue(inject_fault(gemini_text_stream("Hi"), gemini_error_event(), after=1))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ._script import ChunkEvent, RawBytes, StreamStep

__all__ = [
    "DEFAULT_GEMINI_MODEL",
    "DEFAULT_GEMINI_RESPONSE_ID",
    "gemini_blocked_stream",
    "gemini_error_event",
    "gemini_frame",
    "gemini_text_stream",
    "gemini_tool_call_stream",
    "gemini_usage",
]

DEFAULT_GEMINI_MODEL = "gemini-mock"
"""The ``modelVersion`` the builders put in frames."""
DEFAULT_GEMINI_RESPONSE_ID = "gemini-resp-mock"
"""The ``responseId`` the builders put in frames (fixed, so tests are deterministic)."""

_encode = msgspec.json.Encoder().encode


def gemini_usage(
    prompt_tokens: int,
    candidates_tokens: int,
    *,
    thoughts_tokens: int | None = None,
    cached_tokens: int | None = None,
) -> dict[str, Any]:
    """A ``usageMetadata`` object (``totalTokenCount`` is the sum of the counts)."""
    usage: dict[str, Any] = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": candidates_tokens,
        "totalTokenCount": prompt_tokens + candidates_tokens + (thoughts_tokens or 0),
    }
    if thoughts_tokens is not None:
        usage["thoughtsTokenCount"] = thoughts_tokens
    if cached_tokens is not None:
        usage["cachedContentTokenCount"] = cached_tokens
    return usage


def gemini_frame(
    parts: Sequence[Mapping[str, Any]] | None = None,
    *,
    finish_reason: str | None = None,
    index: int = 0,
    usage: Mapping[str, Any] | None = None,
    response_id: str = DEFAULT_GEMINI_RESPONSE_ID,
    model_version: str = DEFAULT_GEMINI_MODEL,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``GenerateContentResponse`` with one candidate holding ``parts``.

    A part is a dict such as ``{"text": "Hi"}``, ``{"text": "...", "thought": True}`` or
    ``{"functionCall": {"name": "f", "args": {...}}, "thoughtSignature": "..."}``; an ``args``
    given as a ``msgspec.Raw`` is sent byte for byte. A finishing frame also carries
    ``safetyRatings`` as the live API does.
    """
    candidate: dict[str, Any] = {
        "content": {"parts": [dict(p) for p in parts or ()], "role": "model"},
        "index": index,
    }
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
        candidate["safetyRatings"] = [
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}
        ]
    frame: dict[str, Any] = {"candidates": [candidate]}
    if usage is not None:
        frame["usageMetadata"] = dict(usage)
    frame["modelVersion"] = model_version
    frame["responseId"] = response_id
    if extra:
        frame.update(extra)
    return frame


def _step(frame: Mapping[str, Any], crlf: bool) -> StreamStep:
    if crlf:
        return RawBytes(b"data: " + _encode(frame) + b"\r\n\r\n")
    return ChunkEvent(frame)


def _pieces(text: str | Sequence[str], size: int) -> list[str]:
    if isinstance(text, str):
        if size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {size}")
        return [text[i : i + size] for i in range(0, len(text), size)]
    return list(text)


def gemini_text_stream(
    text: str | Sequence[str],
    *,
    chunk_size: int = 4,
    thoughts: str | Sequence[str] | None = None,
    signature: str | None = None,
    finish_reason: str | None = "STOP",
    usage: bool = True,
    prompt_tokens: int = 10,
    cached_tokens: int | None = None,
    crlf: bool = False,
    response_id: str = DEFAULT_GEMINI_RESPONSE_ID,
) -> tuple[StreamStep, ...]:
    """A streamed answer: thought-summary frames (``thoughts``, one frame per
    ``chunk_size`` characters or per item), then one text frame per piece of ``text``; the last
    frame carries ``finishReason`` (none if None: a truncated stream) and, if ``signature``, a
    ``thoughtSignature`` on its text part. With ``usage`` every frame carries the cumulative
    ``usageMetadata`` (one candidate token per text frame, one thought token per thought frame).
    """
    thought_pieces = _pieces(thoughts, chunk_size) if thoughts is not None else []
    pieces = _pieces(text, chunk_size) or [""]
    steps: list[StreamStep] = []
    frames: list[tuple[dict[str, Any], int, int]] = []
    for i, piece in enumerate(thought_pieces):
        frames.append(({"text": piece, "thought": True}, 0, i + 1))
    for i, piece in enumerate(pieces):
        frames.append(({"text": piece}, i + 1, len(thought_pieces)))
    for n, (part, cand, thought) in enumerate(frames):
        last = n == len(frames) - 1
        if last and signature is not None:
            part = {**part, "thoughtSignature": signature}
        counts = None
        if usage:
            counts = gemini_usage(
                prompt_tokens,
                cand,
                thoughts_tokens=thought or None,
                cached_tokens=cached_tokens,
            )
        frame = gemini_frame(
            [part],
            finish_reason=finish_reason if last else None,
            usage=counts,
            response_id=response_id,
        )
        steps.append(_step(frame, crlf))
    return tuple(steps)


def gemini_tool_call_stream(
    calls: Sequence[tuple[str, Mapping[str, Any] | str]],
    *,
    text: str | None = None,
    signature: str | None = "c2lnbmF0dXJlLW1vY2s=",
    call_ids: Sequence[str] | None = None,
    parallel: bool = True,
    finish_reason: str | None = "STOP",
    usage: bool = True,
    prompt_tokens: int = 10,
    crlf: bool = False,
    response_id: str = DEFAULT_GEMINI_RESPONSE_ID,
) -> tuple[StreamStep, ...]:
    """A response that calls functions: an optional ``text`` frame, then the calls — all in
    one frame (``parallel``, as Gemini sends parallel calls) or one frame each — the first call
    part carrying ``signature`` as its ``thoughtSignature`` (as Gemini 2.5+ does). ``calls``
    holds ``(name, args)``, args a mapping or its exact JSON text (sent byte for byte).
    ``call_ids`` adds an ``id`` to each call; the last frame carries ``finishReason``.
    """
    if call_ids is not None and len(call_ids) != len(calls):
        raise ValueError("call_ids must have one id per call")
    parts: list[dict[str, Any]] = []
    for i, (name, args) in enumerate(calls):
        raw = msgspec.Raw(args.encode()) if isinstance(args, str) else dict(args)
        call: dict[str, Any] = {"name": name, "args": raw}
        if call_ids is not None:
            call["id"] = call_ids[i]
        part: dict[str, Any] = {"functionCall": call}
        if i == 0 and signature is not None:
            part["thoughtSignature"] = signature
        parts.append(part)
    groups: list[list[dict[str, Any]]] = []
    if text:
        groups.append([{"text": text}])
    if parallel:
        groups.append(parts)
    else:
        groups.extend([p] for p in parts)
    steps: list[StreamStep] = []
    for n, group in enumerate(groups):
        last = n == len(groups) - 1
        counts = gemini_usage(prompt_tokens, n + 1) if usage else None
        frame = gemini_frame(
            group,
            finish_reason=finish_reason if last else None,
            usage=counts,
            response_id=response_id,
        )
        steps.append(_step(frame, crlf))
    return tuple(steps)


def gemini_blocked_stream(
    block_reason: str = "SAFETY", *, prompt_tokens: int = 10, crlf: bool = False
) -> tuple[StreamStep, ...]:
    """A refused prompt: one frame with ``promptFeedback.blockReason`` and no candidates."""
    frame = {
        "promptFeedback": {"blockReason": block_reason},
        "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
        "modelVersion": DEFAULT_GEMINI_MODEL,
        "responseId": DEFAULT_GEMINI_RESPONSE_ID,
    }
    return (_step(frame, crlf),)


def gemini_error_event(
    code: int = 503,
    message: str = "The model is overloaded. Please try again later.",
    status: str = "UNAVAILABLE",
    *,
    framed: bool = True,
) -> StreamStep:
    """Gemini's error object after some frames: ``{"error": {"code", "message", "status"}}``,
    as a ``data:`` frame (``framed``) or as the raw, pretty-printed JSON tail that is not
    SSE-framed at all (``framed=False``), both of which the live API sends."""
    error = {"error": {"code": code, "message": message, "status": status}}
    if framed:
        return ChunkEvent(error)
    text = (
        "{\n"
        '  "error": {\n'
        f'    "code": {code},\n'
        f'    "message": {_encode(message).decode()},\n'
        f'    "status": {_encode(status).decode()}\n'
        "  }\n"
        "}\n"
    )
    return RawBytes(text.encode())
