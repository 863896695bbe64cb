"""Anthropic Messages transcripts for the mock server, composed from the documented wire format.

Every event is a named server-sent event whose data repeats the name as ``type``::

    event: content_block_delta
    data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}

:func:`anthropic_stream` builds a whole message from its final ``content`` blocks, in the shape
``POST /v1/messages`` returns them (``text``, ``thinking`` with ``signature``,
``redacted_thinking`` with ``data``, ``tool_use`` with ``input``): ``message_start``, a ``ping``,
each block as start, deltas and stop, then ``message_delta`` (stop reason and cumulative usage)
and ``message_stop``. Each event is an :class:`AnthropicEvent`, a :class:`ChunkEvent`, so
:func:`inject_fault` counts it; :class:`AnthropicErrorEvent` is the in-stream error after which
Anthropic closes the connection. Point :class:`~trio_llmstream.AnthropicLLM` at
``server.origin`` (it appends ``/v1/messages``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import msgspec

from ._script import ChunkEvent, Delay, StreamStep, _split

__all__ = [
    "AnthropicErrorEvent",
    "AnthropicEvent",
    "anthropic_stream",
    "anthropic_text_stream",
    "anthropic_tool_call_stream",
]

_encode_json = msgspec.json.Encoder().encode

DEFAULT_MESSAGE_ID = "msg_mock"
DEFAULT_ANTHROPIC_MODEL = "claude-mock"


@attrs.frozen(eq=False)
class AnthropicEvent(ChunkEvent):
    """One Anthropic event: ``event: <data["type"]>`` then ``data: <compact JSON>``.

    A :class:`ChunkEvent`, so :func:`inject_fault` counts it.
    """

    def _compile(self) -> bytes:
        name = str(self.data.get("type", "message"))
        return b"event: " + name.encode() + b"\ndata: " + _encode_json(self.data) + b"\n\n"


@attrs.frozen
class AnthropicErrorEvent(StreamStep):
    """``event: error`` with ``{"type": "error", "error": {"type": ..., "message": ...}}``.

    Anthropic sends it after a 200 (``overloaded_error`` under load, ``api_error``...) and then
    closes the connection without ``message_stop``; follow it with nothing to play that.
    """

    type: str = "overloaded_error"
    message: str = "Overloaded"

    def _compile(self) -> bytes:
        data = {"type": "error", "error": {"type": self.type, "message": self.message}}
        return b"event: error\ndata: " + _encode_json(data) + b"\n\n"


def _usage(
    input_tokens: int, output_tokens: int, cache_creation: int | None, cache_read: int | None
) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if cache_creation is not None:
        usage["cache_creation_input_tokens"] = cache_creation
    if cache_read is not None:
        usage["cache_read_input_tokens"] = cache_read
    return usage


def _block_events(index: int, block: Mapping[str, Any], parts: int) -> list[dict[str, Any]]:
    kind = block["type"]
    events: list[dict[str, Any]] = []

    def delta(d: dict[str, Any]) -> None:
        events.append({"type": "content_block_delta", "index": index, "delta": d})

    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        for piece in _split(block["text"], parts):
            delta({"type": "text_delta", "text": piece})
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        for piece in _split(block["thinking"], parts):
            delta({"type": "thinking_delta", "thinking": piece})
        if block.get("signature"):
            delta({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "tool_use":
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        # "input_json" (text, perhaps not even valid JSON, as fine-grained tool streaming may
        # send) wins over "input" (an object, sent as compact JSON).
        text = block.get("input_json")
        if text is None:
            inp = block.get("input", {})
            text = _encode_json(inp).decode() if inp else ""
        for piece in _split(text, parts):
            delta({"type": "input_json_delta", "partial_json": piece})
    else:  # redacted_thinking and any other block: whole in its start event
        events.append({"type": "content_block_start", "index": index, "content_block": dict(block)})
    events.append({"type": "content_block_stop", "index": index})
    return events


def anthropic_stream(
    content: Sequence[Mapping[str, Any]],
    *,
    stop_reason: str | None = "end_turn",
    parts: int = 3,
    input_tokens: int = 10,
    output_tokens: int | Sequence[int] = 12,
    cache_creation_input_tokens: int | None = None,
    cache_read_input_tokens: int | None = None,
    message_id: str = DEFAULT_MESSAGE_ID,
    model: str = DEFAULT_ANTHROPIC_MODEL,
    ping: bool = True,
    stop: bool = True,
    delay: float = 0.0,
) -> list[StreamStep]:
    """A whole Anthropic message stream whose final ``content`` is ``content``.

    Each text, thinking and tool-input text is cut into ``parts`` deltas. ``output_tokens``
    is the final count, or a sequence of cumulative counts, one ``message_delta`` each (the
    stop reason rides on the last). ``stop=False`` leaves out ``message_stop`` (a truncated
    stream); ``delay`` puts a :class:`Delay` before every event.
    """
    start_usage = _usage(
        input_tokens, 1, cache_creation_input_tokens, cache_read_input_tokens
    )
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage,
            },
        }
    ]
    if ping:
        events.append({"type": "ping"})
    for index, block in enumerate(content):
        events.extend(_block_events(index, block, parts))
    counts = [output_tokens] if isinstance(output_tokens, int) else list(output_tokens)
    for n, count in enumerate(counts):
        last = n == len(counts) - 1
        events.append(
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason if last else None,
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": count},
            }
        )
    if stop:
        events.append({"type": "message_stop"})
    steps: list[StreamStep] = []
    for event in events:
        if delay > 0:
            steps.append(Delay(delay))
        steps.append(AnthropicEvent(event))
    return steps


def anthropic_text_stream(
    text: str,
    *,
    thinking: str | None = None,
    signature: str = "c2lnbmF0dXJl",
    **kwargs: Any,
) -> list[StreamStep]:
    """A text answer (preceded by a signed thinking block when ``thinking`` is given); the
    keywords are :func:`anthropic_stream`'s."""
    content: list[dict[str, Any]] = []
    if thinking is not None:
        content.append({"type": "thinking", "thinking": thinking, "signature": signature})
    if text:
        content.append({"type": "text", "text": text})
    return anthropic_stream(content, **kwargs)


def anthropic_tool_call_stream(
    calls: Sequence[tuple[str, str, Mapping[str, Any] | str]],
    *,
    text: str | None = None,
    stop_reason: str | None = "tool_use",
    **kwargs: Any,
) -> list[StreamStep]:
    """Tool calls ``(id, name, input)`` (input an object, or raw JSON text sent as is), after
    an optional text block; the keywords are :func:`anthropic_stream`'s."""
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    for call_id, name, inp in calls:
        block: dict[str, Any] = {"type": "tool_use", "id": call_id, "name": name}
        if isinstance(inp, str):
            block["input_json"] = inp
        else:
            block["input"] = dict(inp)
        content.append(block)
    return anthropic_stream(content, stop_reason=stop_reason, **kwargs)
