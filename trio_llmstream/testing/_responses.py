"""Transcripts of the OpenAI Responses API's streaming wire format, for the mock server.

Each builder returns a script (a tuple of steps) the mock server plays as a ``/v1/responses``
body, composed from the documented events::

    event: response.output_text.delta
    data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_mock",
           "output_index":0,"content_index":0,"delta":"Hel","logprobs":[]}

Events are :class:`ResponsesEvent` steps, a kind of :class:`ChunkEvent`, so
:func:`inject_fault` counts them and the usual faults (drops, stalls, truncation, delays) splice
into a transcript as into a chat-completions script. Every event carries the next
``sequence_number``; ids and timestamps are fixed, so transcripts are deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import msgspec

from ._script import DEFAULT_CREATED, DEFAULT_MODEL, ChunkEvent, Delay, StreamStep

__all__ = [
    "DEFAULT_RESPONSE_ID",
    "ResponsesEvent",
    "responses_error_event",
    "responses_failed_event",
    "responses_stream",
    "responses_text_stream",
    "responses_tool_call_stream",
]

DEFAULT_RESPONSE_ID = "resp_mock"
"""The response ``id`` the builders use unless told otherwise."""

_encode = msgspec.json.Encoder().encode

ResponsesEnding = Literal["completed", "max_output_tokens", "content_filter", "failed"] | None


@attrs.frozen(eq=False)
class ResponsesEvent(ChunkEvent):
    """One Responses event: ``event: <data["type"]>`` then ``data: <data as compact JSON>``."""

    def _compile(self) -> bytes:
        name = str(self.data.get("type", "message"))
        return b"event: " + name.encode() + b"\ndata: " + _encode(self.data) + b"\n\n"


def responses_error_event(
    message: str = "The server had an error while processing your request.",
    *,
    type: str | None = "server_error",
    code: str | int | None = None,
    nested: bool = True,
    sequence_number: int | None = None,
) -> ResponsesEvent:
    """An ``error`` event. ``nested`` (the live API's shape):
    ``{"type": "error", "error": {"type", "code", "message", "param"}}``; otherwise the flat
    shape of the documentation, ``{"type": "error", "code", "message", "param"}``, where the
    error's own ``type`` cannot be said (``code`` carries it)."""
    data: dict[str, Any] = {"type": "error"}
    if nested:
        data["error"] = {"type": type, "code": code, "message": message, "param": None}
    else:
        data.update({"code": code if code is not None else type, "message": message, "param": None})
    if sequence_number is not None:
        data["sequence_number"] = sequence_number
    return ResponsesEvent(data)


def responses_failed_event(
    message: str = "The server had an error while processing your request.",
    *,
    code: str = "server_error",
    response_id: str = DEFAULT_RESPONSE_ID,
    sequence_number: int | None = None,
) -> ResponsesEvent:
    """A ``response.failed`` event whose response carries ``error: {"code", "message"}``."""
    data: dict[str, Any] = {
        "type": "response.failed",
        "response": {
            "id": response_id,
            "object": "response",
            "status": "failed",
            "error": {"code": code, "message": message},
            "output": [],
            "usage": None,
        },
    }
    if sequence_number is not None:
        data["sequence_number"] = sequence_number
    return ResponsesEvent(data)


class _Numbered:
    # Hands out sequence numbers in order.
    def __init__(self) -> None:
        self.steps: list[StreamStep] = []
        self.n = 0

    def add(self, data: dict[str, Any], *, delay: float = 0.0) -> None:
        if delay > 0:
            self.steps.append(Delay(delay))
        data["sequence_number"] = self.n
        self.n += 1
        self.steps.append(ResponsesEvent(data))


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _split(text: str, parts: int) -> list[str]:
    if not text:
        return []
    parts = max(1, min(parts, len(text)))
    size, rest = divmod(len(text), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < rest else 0)
        out.append(text[start:end])
        start = end
    return out


def responses_stream(
    *,
    text: str | None = None,
    reasoning: str | Sequence[str] | None = None,
    encrypted_content: str | None = None,
    calls: Sequence[tuple[str, str]] = (),
    call_ids: Sequence[str] | None = None,
    chunk_size: int = 4,
    fragments: int = 3,
    delay: float = 0.0,
    ending: ResponsesEnding = "completed",
    usage: Mapping[str, Any] | bool = True,
    response_id: str = DEFAULT_RESPONSE_ID,
    model: str = DEFAULT_MODEL,
    created: int = DEFAULT_CREATED,
) -> tuple[StreamStep, ...]:
    """A realistic Responses stream: ``response.created``/``in_progress``; a reasoning item if
    ``reasoning`` (one summary part per string, streamed ``chunk_size`` characters per delta,
    its ``output_item.done`` carrying ``encrypted_content`` if given); a message item with
    ``text`` in ``chunk_size``-character deltas and the ``.done`` events that repeat it; one
    ``function_call`` item per ``(name, arguments)`` of ``calls``, arguments in ``fragments``
    deltas, call ids ``call_ids`` or ``call_mock_0``...; then the ending: ``completed``,
    ``max_output_tokens`` / ``content_filter`` (``response.incomplete``), ``failed``
    (``response.failed``, server_error) or None (the body just stops: truncation).

    ``usage`` True gives ``input_tokens`` 10 (2 cached), ``output_tokens`` = number of deltas
    (reasoning tokens = reasoning deltas); a mapping is sent as the usage object; False: none.
    With ``delay`` > 0 a :class:`Delay` precedes every delta.
    """
    if chunk_size < 1 or fragments < 1:
        raise ValueError("chunk_size and fragments must be >= 1")
    if call_ids is not None and len(call_ids) != len(calls):
        raise ValueError("call_ids must have one id per call")
    seq = _Numbered()
    base: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "model": model,
        "status": "in_progress",
        "output": [],
        "usage": None,
        "error": None,
        "incomplete_details": None,
    }
    seq.add({"type": "response.created", "response": dict(base)})
    seq.add({"type": "response.in_progress", "response": dict(base)})
    output: list[dict[str, Any]] = []
    deltas = reasoning_deltas = 0
    if reasoning is not None:
        parts = [reasoning] if isinstance(reasoning, str) else list(reasoning)
        index = len(output)
        rid = f"rs_{response_id}"
        seq.add(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {"id": rid, "type": "reasoning", "summary": []},
            }
        )
        for s, part in enumerate(parts):
            seq.add(
                {
                    "type": "response.reasoning_summary_part.added",
                    "item_id": rid, "output_index": index, "summary_index": s,
                    "part": {"type": "summary_text", "text": ""},
                }
            )
            for piece in _pieces(part, chunk_size):
                reasoning_deltas += 1
                seq.add(
                    {
                        "type": "response.reasoning_summary_text.delta",
                        "item_id": rid, "output_index": index, "summary_index": s,
                        "delta": piece,
                    },
                    delay=delay,
                )
            seq.add(
                {
                    "type": "response.reasoning_summary_text.done",
                    "item_id": rid, "output_index": index, "summary_index": s, "text": part,
                }
            )
            seq.add(
                {
                    "type": "response.reasoning_summary_part.done",
                    "item_id": rid, "output_index": index, "summary_index": s,
                    "part": {"type": "summary_text", "text": part},
                }
            )
        item: dict[str, Any] = {
            "id": rid,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": p} for p in parts],
        }
        if encrypted_content is not None:
            item["encrypted_content"] = encrypted_content
        seq.add({"type": "response.output_item.done", "output_index": index, "item": item})
        output.append(item)
    if text is not None:
        index = len(output)
        mid = f"msg_{response_id}"
        seq.add(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {
                    "id": mid, "type": "message", "status": "in_progress",
                    "role": "assistant", "content": [],
                },
            }
        )
        part_added = {"type": "output_text", "annotations": [], "text": ""}
        seq.add(
            {
                "type": "response.content_part.added",
                "item_id": mid, "output_index": index, "content_index": 0, "part": part_added,
            }
        )
        for piece in _pieces(text, chunk_size):
            deltas += 1
            seq.add(
                {
                    "type": "response.output_text.delta",
                    "item_id": mid, "output_index": index, "content_index": 0,
                    "delta": piece, "logprobs": [],
                },
                delay=delay,
            )
        seq.add(
            {
                "type": "response.output_text.done",
                "item_id": mid, "output_index": index, "content_index": 0,
                "text": text, "logprobs": [],
            }
        )
        text_part = {"type": "output_text", "annotations": [], "text": text}
        seq.add(
            {
                "type": "response.content_part.done",
                "item_id": mid, "output_index": index, "content_index": 0,
                "part": text_part,
            }
        )
        message = {
            "id": mid, "type": "message", "status": "completed", "role": "assistant",
            "content": [text_part],
        }
        seq.add({"type": "response.output_item.done", "output_index": index, "item": message})
        output.append(message)
    for i, (name, arguments) in enumerate(calls):
        index = len(output)
        call_id = call_ids[i] if call_ids is not None else f"call_mock_{i}"
        fid = f"fc_mock_{i}"
        call: dict[str, Any] = {
            "id": fid, "type": "function_call", "status": "in_progress",
            "arguments": "", "call_id": call_id, "name": name,
        }
        seq.add({"type": "response.output_item.added", "output_index": index, "item": call})
        for piece in _split(arguments, fragments):
            deltas += 1
            seq.add(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": fid, "output_index": index, "delta": piece,
                },
                delay=delay,
            )
        seq.add(
            {
                "type": "response.function_call_arguments.done",
                "item_id": fid, "output_index": index, "arguments": arguments,
            }
        )
        done = dict(call, status="completed", arguments=arguments)
        seq.add({"type": "response.output_item.done", "output_index": index, "item": done})
        output.append(done)
    if ending is None:
        return tuple(seq.steps)
    if usage is True:
        usage_value: Any = {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 2},
            "output_tokens": deltas + reasoning_deltas,
            "output_tokens_details": {"reasoning_tokens": reasoning_deltas},
            "total_tokens": 10 + deltas + reasoning_deltas,
        }
    elif usage is False:
        usage_value = None
    else:
        usage_value = dict(usage)
    final = dict(base, output=output, usage=usage_value)
    if ending == "completed":
        final["status"] = "completed"
        seq.add({"type": "response.completed", "response": final})
    elif ending == "failed":
        final.update(status="failed", error={"code": "server_error", "message": "failed"})
        seq.add({"type": "response.failed", "response": final})
    else:
        final.update(status="incomplete", incomplete_details={"reason": ending})
        seq.add({"type": "response.incomplete", "response": final})
    return tuple(seq.steps)


def responses_text_stream(
    text: str, *, reasoning: str | Sequence[str] | None = None, **kwargs: Any
) -> tuple[StreamStep, ...]:
    """:func:`responses_stream` with ``text`` (and optional ``reasoning``)."""
    return responses_stream(text=text, reasoning=reasoning, **kwargs)


def responses_tool_call_stream(
    calls: Sequence[tuple[str, str]], *, text: str | None = None, **kwargs: Any
) -> tuple[StreamStep, ...]:
    """:func:`responses_stream` with function ``calls`` ``(name, arguments_json)`` (after
    ``text`` if given)."""
    return responses_stream(calls=calls, text=text, **kwargs)
