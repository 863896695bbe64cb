"""Anthropic Messages streams: SSE events -> assembled ``ChatChunk``s.

The wire format, and what we make of it
---------------------------------------

With ``stream: true``, ``POST /v1/messages`` answers with named server-sent events whose data
is one JSON object each, carrying its own ``type`` (the same word as the ``event:`` line):

- ``message_start``: the ``Message`` with empty ``content``: its ``id`` (our request id) and a
  first ``usage`` (the input token counts, a first output count). Becomes a role chunk
  (``role="assistant"``) carrying that usage with ``source="provider_partial"``: a lower bound,
  so that an attempt cut short later (a time limit, the consumer leaving) still has usage;
- per content block, ``content_block_start`` (``index``, ``content_block``), any number of
  ``content_block_delta`` and ``content_block_stop``. Blocks are ``text`` (``text_delta``:
  content, passed on as it comes), ``thinking`` (``thinking_delta``: reasoning, passed on as
  it comes; ``signature_delta``), ``redacted_thinking`` (its ``data`` in the start event, no
  deltas) and ``tool_use`` (``id`` and ``name`` in the start event, ``input_json_delta``
  fragments of the arguments JSON);
- ``message_delta``: the ``stop_reason`` and a ``usage`` whose counts are *cumulative*: each
  replaces the one before, never adds to it (adding them over-counts output tokens when a
  stream carries several, which server tools do);
- ``message_stop``: the terminal. The finish chunk (unified ``finish_reason``, the native
  ``stop_reason`` beside it, the final usage with ``source="provider"``) is made here, not at
  ``message_delta``: a stream cut between the two must not look finished;
- ``ping`` (keep-alive with data), and ``error`` (``{"type": "error", "error": {"type":
  "overloaded_error", "message": ...}}``), after which the server closes the connection
  without ``message_stop``.

Routing is by the ``type`` inside the data, so a proxy that drops the ``event:`` lines still
works; an ``event: error`` line makes the event an error whatever its data says. Event types
not listed are ignored (Anthropic's versioning policy adds event types).

What never commits and never duplicates: ``ping``, ``message_start``, ``content_block_start``
and ``content_block_stop`` of a text or thinking block produce no visible output (a start
whose block already holds text, as some proxies send, passes that text on once; deltas are
only ever the text that follows). A tool call becomes visible once, complete, at its block's
``content_block_stop`` (or, leniently, at ``message_stop`` if the server never stopped it):
``FunctionCall(id, name, arguments)`` where ``arguments`` is the exact concatenation of the
``partial_json`` fragments, ``"{}"`` when there were none (a tool without input; the start
event's ``input`` is used instead when it is a non-empty object and no fragment came). The
arguments are never parsed here: with fine-grained tool streaming the server may send JSON
that does not parse, and the tool layer reports that to the model as a tool error it can
recover from, instead of the stream failing.

Thinking blocks are what Anthropic needs back on the next turn, signature included. At its
``content_block_stop`` a thinking block becomes ``ProviderItem("anthropic", "thinking",
'{"type":"thinking","thinking":...,"signature":...}')`` and a redacted one
``ProviderItem("anthropic", "redacted_thinking", <the content_block JSON exactly as
received>)``; the provider splices that text into the next request unchanged.

Finish reasons: ``end_turn``, ``stop_sequence`` and ``pause_turn`` (a server tool paused a long
turn: send the turn back to continue it) -> ``stop``; ``max_tokens`` and
``model_context_window_exceeded`` -> ``length``; ``tool_use`` -> ``tool_calls``; ``refusal``
-> ``content_filter``; any other word -> ``stop``. The native word is always kept in
``native_finish_reason``.

Usage: prompt = ``input_tokens + cache_creation_input_tokens + cache_read_input_tokens`` (every
input token), completion = the last reported ``output_tokens``, ``cached_tokens`` =
``cache_read_input_tokens`` when reported. When the stream fails (error event, truncation, a
protocol error) after usage was reported and the usage changed since the role chunk, one
usage-only chunk with ``source="provider_partial"`` precedes the error.

The state machine and the error contract are those of every assembler (see
``_core/_parser.py``): nothing raises for a problem in the stream; ``feed_events`` returns the
chunks before it and sets ``error`` and ``finished``. An error event is a ``ProviderError``
keeping the server's error type (``overloaded_error``, ``api_error``, ``rate_limit_error``
retryable; ``invalid_request_error`` and unknown types not); malformed JSON, JSON of the wrong
shape, a second ``message_start``, argument fragments for a block that is not a tool call, or a
bound exceeded -> ``StreamProtocolError``; the body ending before ``message_stop`` ->
``StreamTruncatedError``. Memory is bounded: argument bytes per tool call, thinking bytes per
block, open blocks and tool calls per message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

from .._exceptions import APIError, ProviderError, StreamProtocolError, StreamTruncatedError
from .._models import (
    ChatChunk,
    Choice,
    ChoiceDelta,
    CompletionUsage,
    FunctionCall,
    ProviderItem,
)
from ._build import (
    NO_CALLS,
    FillChoice,
    FillChunk,
    FillDelta,
    make_choice,
    make_chunk,
    make_delta,
)
from ._openai import _JSON_ERRORS, DEFAULT_MAX_TOOL_ARGUMENT_BYTES, DEFAULT_MAX_TOOL_CALLS
from ._parser import EventStreamParser
from ._sse import ServerSentEvent

__all__ = [
    "DEFAULT_MAX_OPEN_BLOCKS",
    "DEFAULT_MAX_THINKING_BYTES",
    "FINISH_REASONS",
    "AnthropicAssembler",
    "AnthropicParser",
    "finish_reason",
]

#: Bound on the thinking text plus signature (UTF-8 bytes) kept for one thinking block.
DEFAULT_MAX_THINKING_BYTES: Final = 8 << 20
#: Bound on the content blocks started and not yet stopped.
DEFAULT_MAX_OPEN_BLOCKS: Final = 256

#: Anthropic ``stop_reason`` -> the unified finish reason (others map to ``stop``).
FINISH_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_EXCERPT = 120
_MAX_MESSAGE = 2000
# The head of a text delta's block, which cuts a run of them (see
# AnthropicParser._blocks).
_DELTA_HEAD: Final = b"event: content_block_delta\ndata: "
_HEAD_SIZE: Final = len(_DELTA_HEAD)
PROVIDER: Final = "anthropic"


def finish_reason(stop_reason: str | None) -> str:
    """The unified finish reason for an Anthropic ``stop_reason`` (``stop`` when unknown)."""
    if stop_reason is None:
        return "stop"
    return FINISH_REASONS.get(stop_reason, "stop")


# -- wire Structs ---------------------------------------------------------------------------------


class _WireUsage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _WireMessage(msgspec.Struct, gc=False):
    id: str | None = None
    usage: _WireUsage | None = None


class _WireDelta(msgspec.Struct, gc=False):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None
    stop_reason: str | None = None


class _WireEvent(msgspec.Struct, gc=False):
    type: str | None = None
    index: int | None = None
    delta: _WireDelta | None = None
    content_block: msgspec.Raw = msgspec.Raw()  # empty: absent
    message: _WireMessage | None = None
    usage: _WireUsage | None = None
    error: Any = None


class _WireBlock(msgspec.Struct, gc=False):
    type: str | None = None
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw = msgspec.Raw()  # empty: absent
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None


_decode_event: Final = msgspec.json.Decoder(_WireEvent).decode
_decode_block: Final = msgspec.json.Decoder(_WireBlock).decode
_decode_any: Final = msgspec.json.Decoder().decode
_encode: Final = msgspec.json.Encoder().encode


def _excerpt(text: str) -> str:
    return repr(text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else ""))


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _raw_text(raw: msgspec.Raw) -> str:
    # The exact JSON text of a value, as received. The SSE decoder produced str, so the bytes
    # are valid UTF-8 (surrogates from \\u escapes stay escaped inside the JSON text).
    return bytes(raw).decode("utf-8", "surrogatepass")


class _Block:
    """A content block between its start and its stop."""

    __slots__ = ("call_id", "kind", "name", "parts", "raw", "signature", "size")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.call_id = ""
        self.name = ""
        self.parts: list[str] = []  # argument fragments, or thinking text
        self.size = 0  # UTF-8 bytes in parts (and signature)
        self.signature: str | None = None
        self.raw = ""  # redacted_thinking: the block as received; tool_use: a prefilled input


class AnthropicAssembler:
    """Turns the SSE events of one Anthropic Messages stream into ``ChatChunk``s.

    Implements the ``EventAssembler`` protocol of ``_core/_parser.py`` (wrap it in an
    ``EventStreamParser`` to feed bytes). Attributes (read them, do not set them):
    ``finished``, ``error``, ``progress`` (grows with every complete data-carrying event
    processed before the stream finished, ``ping`` included), ``request_id`` (the message
    ``id``), ``usage`` (the latest counts, ``source`` "provider" once ``message_stop``
    arrived, "provider_partial" before), ``stop_reason`` (the native word, once known).

    Synchronous and free of I/O: nothing here blocks, so there is no cancellation behaviour.
    """

    __slots__ = (
        "_blocks",
        "_calls",
        "_counts",
        "_max_open_blocks",
        "_max_thinking_bytes",
        "_max_tool_argument_bytes",
        "_max_tool_calls",
        "_reported",
        "_rid",
        "_started",
        "error",
        "finished",
        "progress",
        "request_id",
        "stop_reason",
        "usage",
    )

    def __init__(
        self,
        *,
        max_tool_argument_bytes: int = DEFAULT_MAX_TOOL_ARGUMENT_BYTES,
        max_thinking_bytes: int = DEFAULT_MAX_THINKING_BYTES,
        max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS,
        max_open_blocks: int = DEFAULT_MAX_OPEN_BLOCKS,
    ) -> None:
        if (
            max_tool_argument_bytes < 0
            or max_thinking_bytes < 0
            or max_tool_calls < 1
            or max_open_blocks < 1
        ):
            raise ValueError("bounds must be positive")
        self._max_tool_argument_bytes = max_tool_argument_bytes
        self._max_thinking_bytes = max_thinking_bytes
        self._max_tool_calls = max_tool_calls
        self._max_open_blocks = max_open_blocks
        self._blocks: dict[int, _Block] = {}
        self._calls = 0
        # The latest of each usage count reported (message_start, then each message_delta).
        self._counts: dict[str, int] = {}
        # The usage last handed out in a chunk (so a failure re-reports only what changed).
        self._reported: CompletionUsage | None = None
        self._rid = ""
        self._started = False
        self.finished = False
        self.error: APIError | None = None
        self.progress = 0
        self.request_id: str | None = None
        self.stop_reason: str | None = None
        self.usage: CompletionUsage | None = None

    # -- the EventAssembler protocol -------------------------------------------------------------

    def feed_events(self, events: Iterable[ServerSentEvent]) -> list[ChatChunk]:
        """Process events; return the chunks they complete, in order. Never raises for a
        problem in the stream (see the module docstring)."""
        out: list[ChatChunk] = []
        if self.finished:
            return out
        dispatch = self._dispatch
        for event in events:
            dispatch(event.event == "error", event.data, out)
            if self.finished:
                break
        return out

    def _dispatch(self, is_error: bool, data: str | bytes, out: list[ChatChunk]) -> None:
        # One complete data event (data as text from the decoder, or as bytes from
        # AnthropicParser's shortcut, which the same rules judge identically).
        self.progress += 1
        if is_error:
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            self._fail(self._error_event(text), out)
            return
        try:
            self._event(data, out)
        except APIError as exc:
            self._fail(exc, out)

    def end(self) -> list[ChatChunk]:
        """The body ended without ``message_stop``: ``StreamTruncatedError`` (after a partial
        usage chunk if the usage changed). Returns [] once finished."""
        out: list[ChatChunk] = []
        if not self.finished:
            self._fail(
                StreamTruncatedError(
                    "the stream ended without message_stop", request_id=self.request_id
                ),
                out,
            )
        return out

    def fail(self, error: APIError) -> None:
        """End the stream with ``error`` (a framing bound was exceeded)."""
        if not self.finished:
            self._fail(error, None)

    # -- events ----------------------------------------------------------------------------------

    def _event(self, data: str | bytes, out: list[ChatChunk]) -> None:
        try:
            wire = _decode_event(data)
        except _JSON_ERRORS as exc:
            if not isinstance(data, str):
                # Judged on the text the SSE decoder would have made of these bytes (invalid
                # UTF-8 replaced), so both paths report the same.
                self._event(data.decode("utf-8", "replace"), out)
            elif not data.strip(" \t\n"):
                pass  # a data field with nothing in it (but blanks) carries nothing
            elif isinstance(exc, msgspec.ValidationError):
                self._wrong_shape(data, exc)
            else:
                raise self._malformed(data, exc) from None
            return
        self._handle(wire, out)

    def _handle(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        kind = wire.type
        if kind == "content_block_delta":
            delta = wire.delta
            if delta is not None and delta.type == "text_delta":
                # The hot path: one piece of text, its chunk built by filling slots.
                text = delta.text
                if text:
                    d = FillDelta()
                    d.role = None
                    d.content = text
                    d.tool_calls = NO_CALLS
                    d.reasoning = None
                    d.provider_items = ()
                    d.__class__ = ChoiceDelta
                    c = FillChoice()
                    c.delta = d
                    c.index = 0
                    c.finish_reason = None
                    c.native_finish_reason = None
                    c.__class__ = Choice
                    k = FillChunk()
                    k.request_id = self._rid
                    k.choices = [c]
                    k.usage = None
                    k.__class__ = ChatChunk
                    out.append(k)
                return
            self._delta(wire, out)
        elif kind == "content_block_start":
            self._block_start(wire, out)
        elif kind == "content_block_stop":
            self._block_stop(wire.index, out)
        elif kind == "message_delta":
            delta = wire.delta
            if delta is not None and delta.stop_reason is not None:
                self.stop_reason = delta.stop_reason
            if wire.usage is not None:
                self._merge_usage(wire.usage)
        elif kind == "message_start":
            self._message_start(wire, out)
        elif kind == "message_stop":
            self._message_stop(out)
        elif kind == "error" or (kind is None and wire.error is not None):
            # An error report, also from a proxy that left out the type.
            self._fail(self._provider_error(wire.error), out)
        # "ping" and unknown event types carry nothing for us.

    def _delta(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        delta = wire.delta
        if delta is None:
            return
        dtype = delta.type
        if dtype == "text_delta":
            text = delta.text
            if text:
                self._text(text, None, out)
            return
        block = self._blocks.get(wire.index) if wire.index is not None else None
        if dtype == "input_json_delta":
            if block is None or block.kind != "tool_use":
                raise StreamProtocolError(
                    f"input_json_delta for content block {wire.index}, which is not an open "
                    "tool_use block",
                    request_id=self.request_id,
                )
            part = delta.partial_json
            if part:
                block.size += _utf8_len(part)
                if block.size > self._max_tool_argument_bytes:
                    raise StreamProtocolError(
                        f"tool call {block.call_id!r} has more than "
                        f"{self._max_tool_argument_bytes} bytes of arguments",
                        request_id=self.request_id,
                    )
                block.parts.append(part)
        elif dtype == "thinking_delta":
            text = delta.thinking
            if text:
                if block is not None and block.kind == "thinking":
                    self._grow_thinking(block, text)
                    block.parts.append(text)
                self._text(None, text, out)
        elif dtype == "signature_delta":
            signature = delta.signature
            if signature is not None and block is not None and block.kind == "thinking":
                self._grow_thinking(block, signature)
                block.signature = (block.signature or "") + signature
        # citations_delta and future delta types: nothing for us.

    def _grow_thinking(self, block: _Block, text: str) -> None:
        block.size += _utf8_len(text)
        if block.size > self._max_thinking_bytes:
            raise StreamProtocolError(
                f"a thinking block has more than {self._max_thinking_bytes} bytes",
                request_id=self.request_id,
            )

    def _text(self, content: str | None, reasoning: str | None, out: list[ChatChunk]) -> None:
        # The hot path: one chunk of text or reasoning, built by filling slots.
        d = FillDelta()
        d.role = None
        d.content = content
        d.tool_calls = NO_CALLS
        d.reasoning = reasoning
        d.provider_items = ()
        d.__class__ = ChoiceDelta
        c = FillChoice()
        c.delta = d
        c.index = 0
        c.finish_reason = None
        c.native_finish_reason = None
        c.__class__ = Choice
        k = FillChunk()
        k.request_id = self._rid
        k.choices = [c]
        k.usage = None
        k.__class__ = ChatChunk
        out.append(k)

    def _message_start(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        if self._started:
            raise StreamProtocolError(
                "a second message_start in one stream", request_id=self.request_id
            )
        self._started = True
        message = wire.message
        if message is not None:
            if message.id:
                self.request_id = self._rid = message.id
            if message.usage is not None:
                self._merge_usage(message.usage)
        usage = self.usage
        self._reported = usage
        role = make_delta("assistant", None, [], None)
        out.append(make_chunk(self._rid, [make_choice(role, 0, None)], usage))

    def _block_start(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        index = wire.index
        raw = wire.content_block
        if index is None or not len(raw):
            raise StreamProtocolError(
                "content_block_start without index or content_block", request_id=self.request_id
            )
        try:
            wb = _decode_block(raw)
        except _JSON_ERRORS as exc:
            text = _raw_text(raw)
            raise StreamProtocolError(
                f"unexpected content_block ({exc}): {_excerpt(text)}", request_id=self.request_id
            ) from None
        blocks = self._blocks
        if index in blocks:
            raise StreamProtocolError(
                f"content block {index} started twice", request_id=self.request_id
            )
        if len(blocks) >= self._max_open_blocks:
            raise StreamProtocolError(
                f"more than {self._max_open_blocks} content blocks open at once",
                request_id=self.request_id,
            )
        kind = wb.type or ""
        block = _Block(kind)
        if kind == "tool_use":
            if not wb.name:
                raise StreamProtocolError(
                    f"tool_use block {index} without a name", request_id=self.request_id
                )
            self._calls += 1
            if self._calls > self._max_tool_calls:
                raise StreamProtocolError(
                    f"more than {self._max_tool_calls} tool calls in one message",
                    request_id=self.request_id,
                )
            block.call_id = wb.id or f"toolu_{self._rid}_{index}"
            block.name = wb.name
            if len(wb.input):
                prefilled = _raw_text(wb.input)
                if prefilled.strip() not in ("{}", "null", ""):
                    block.raw = prefilled
        elif kind == "thinking":
            if wb.thinking:
                self._grow_thinking(block, wb.thinking)
                block.parts.append(wb.thinking)
                self._text(None, wb.thinking, out)
            if wb.signature:
                self._grow_thinking(block, wb.signature)
                block.signature = wb.signature
        elif kind == "redacted_thinking":
            block.raw = _raw_text(raw)
        elif kind == "text" and wb.text:
            self._text(wb.text, None, out)
        blocks[index] = block

    def _block_stop(self, index: int | None, out: list[ChatChunk]) -> None:
        block = self._blocks.pop(index, None) if index is not None else None
        if block is not None:
            self._close(block, out)

    def _close(self, block: _Block, out: list[ChatChunk]) -> None:
        kind = block.kind
        if kind == "tool_use":
            arguments = "".join(block.parts) if block.parts else (block.raw or "{}")
            call = FunctionCall(call_id=block.call_id, name=block.name, arguments=arguments)
            delta = make_delta(None, None, [call], None)
        elif kind == "thinking":
            item: dict[str, str] = {"type": "thinking", "thinking": "".join(block.parts)}
            if block.signature is not None:
                item["signature"] = block.signature
            data = _encode(item).decode("utf-8", "surrogatepass")
            delta = make_delta(None, None, [], None, (ProviderItem(PROVIDER, "thinking", data),))
        elif kind == "redacted_thinking":
            item_ = ProviderItem(PROVIDER, "redacted_thinking", block.raw)
            delta = make_delta(None, None, [], None, (item_,))
        else:
            return
        out.append(make_chunk(self._rid, [make_choice(delta, 0, None)], None))

    def _message_stop(self, out: list[ChatChunk]) -> None:
        # Blocks the server never stopped are closed in order (lenient; a complete message has
        # none).
        blocks = self._blocks
        for index in sorted(blocks):
            self._close(blocks[index], out)
        blocks.clear()
        if self.usage is not None:
            self.usage = _usage(self._counts, "provider")
        native = self.stop_reason
        delta = make_delta(None, None, [], None)
        out.append(
            make_chunk(
                self._rid, [make_choice(delta, 0, finish_reason(native), native)], self.usage
            )
        )
        self.finished = True

    def _merge_usage(self, wire: _WireUsage) -> None:
        counts = self._counts
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            value = getattr(wire, name)
            if value is not None:
                # Cumulative: the latest count replaces the one before.
                counts[name] = value
        if counts:
            self.usage = _usage(counts, "provider_partial")

    # -- failures --------------------------------------------------------------------------------

    def _fail(self, error: APIError, out: list[ChatChunk] | None) -> None:
        if self.finished:
            return
        usage = self.usage
        if out is not None and usage is not None and usage != self._reported:
            # The latest counts before the failure: a lower bound, never a sum.
            out.append(make_chunk(self._rid, [], usage))
            self._reported = usage
        if error.request_id is None:
            error.request_id = self.request_id
        # A kept traceback would keep the frames (and the read) alive.
        self.error = error.with_traceback(None)
        self.finished = True

    def _malformed(self, text: str, exc: BaseException) -> StreamProtocolError:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return StreamProtocolError(
            f"malformed JSON in an event ({reason}): {_excerpt(text)}",
            request_id=self.request_id,
        )

    def _wrong_shape(self, text: str, exc: msgspec.ValidationError) -> None:
        # Valid JSON that is not an event, or not JSON after all (the typed decoder stops at
        # the first mismatch). An error object in an odd shape is still an error report.
        try:
            value = _decode_any(text)
        except _JSON_ERRORS as malformed:
            raise self._malformed(text, malformed) from None
        if isinstance(value, dict) and value.get("type") == "error":
            raise self._provider_error(value.get("error", value))
        raise StreamProtocolError(
            f"unexpected JSON in an event ({exc}): {_excerpt(text)}", request_id=self.request_id
        )

    def _provider_error(self, err: object) -> ProviderError:
        message: object = None
        type_: object = None
        if isinstance(err, dict):
            message, type_ = err.get("message"), err.get("type")
        elif isinstance(err, str):
            message = err
        text = message if isinstance(message, str) and message else None
        if text is None:
            text = "the server reported an error in the stream"
        if type_ is not None and not isinstance(type_, str):
            type_ = _shown(type_)
        return ProviderError(
            text[:_MAX_MESSAGE],
            type=type_ if isinstance(type_, str) else None,
            request_id=self.request_id,
        )

    def _error_event(self, data: str) -> ProviderError:
        # ``event: error``: {"type": "error", "error": {...}}, a bare error object, or text.
        try:
            value = _decode_any(data)
        except _JSON_ERRORS:
            value = None
        if isinstance(value, dict):
            inner = value.get("error")
            if isinstance(inner, dict | str):
                return self._provider_error(inner)
            return self._provider_error(value)
        text = data.strip()
        return self._provider_error(text or "the server sent an error event")


def _shown(value: object) -> str:
    try:
        return _encode(value).decode("utf-8", "replace")[:_EXCERPT]
    except _JSON_ERRORS:
        return "(a value nested too deeply to show)"


def _usage(counts: dict[str, int], source: Any) -> CompletionUsage:
    cache_read = counts.get("cache_read_input_tokens")
    prompt = (
        counts.get("input_tokens", 0)
        + counts.get("cache_creation_input_tokens", 0)
        + (cache_read or 0)
    )
    completion = counts.get("output_tokens", 0)
    return CompletionUsage(
        completion_tokens=completion,
        prompt_tokens=prompt,
        total_tokens=prompt + completion,
        cached_tokens=cache_read,
        reasoning_tokens=None,
        source=source,
    )


# -- the bytes level ------------------------------------------------------------------------------


class AnthropicParser(EventStreamParser):
    """Bytes of an Anthropic event-stream body -> ``ChatChunk``s, with a framing shortcut.

    The shared :class:`~trio_llmstream._core._parser.EventStreamParser` (its framing: BOM and
    CR hand-over, windows, the pending unfinished block, the bounds) with Anthropic's own block
    handler. The same results as ``EventStreamParser(AnthropicAssembler(...))`` (the tests
    check it on arbitrary input under arbitrary chunkings), faster on the blocks Anthropic
    sends. Those are always ``event: <name>\\ndata: <json>\\n\\n``, which the shared decoder
    takes line by line (its own shortcut is for blocks of one ``data:`` line). Here the whole
    blocks of a read are cut with one ``split`` at the text-delta block's head; a block that is
    exactly an ``event: `` line and a ``data: `` line (or one ``data: `` line, or one comment
    line) within the SSE limits is dispatched straight from its bytes: the event name decides
    ``error``, the data goes to msgspec as bytes. Any other block is handed whole to the
    decoder, at a block boundary (``_whole_block``).

    ``feed`` and ``end`` never raise for a problem in the stream: read ``error`` and
    ``finished`` after each call. Synchronous and free of I/O: no cancellation behaviour.
    """

    __slots__ = ()

    assembler: AnthropicAssembler

    def __init__(
        self,
        *,
        max_line_size: int = 1 << 20,
        max_event_size: int = 1 << 20,
        max_tool_argument_bytes: int = DEFAULT_MAX_TOOL_ARGUMENT_BYTES,
        max_thinking_bytes: int = DEFAULT_MAX_THINKING_BYTES,
        max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS,
        max_open_blocks: int = DEFAULT_MAX_OPEN_BLOCKS,
    ) -> None:
        assembler = AnthropicAssembler(
            max_tool_argument_bytes=max_tool_argument_bytes,
            max_thinking_bytes=max_thinking_bytes,
            max_tool_calls=max_tool_calls,
            max_open_blocks=max_open_blocks,
        )
        super().__init__(assembler, max_line_size=max_line_size, max_event_size=max_event_size)
        self._use_shortcut(self._lone_data)

    def _lone_data(self, payloads: Iterable[bytes | bytearray], out: list[ChatChunk]) -> None:
        # The data of lone "data: " blocks: message events.
        asm = self.assembler
        for data in payloads:
            # bytes of bytes is the same object: no copy on the path this takes.
            asm._dispatch(False, bytes(data), out)
            if asm.finished:
                return

    def _blocks(self, region: bytes | bytearray, out: list[ChatChunk]) -> None:
        # Whole blocks, their final blank line cut off, starting at a block boundary. Most are
        # text deltas: one C-level split at "<blank line>event: content_block_delta<LF>data: "
        # leaves, between two separators, the JSON of such an event if the piece holds no LF
        # (a data line cannot hold one). Whatever else a piece holds after its first line is
        # other blocks, taken apart by _other_blocks.
        asm = self.assembler
        # Split bytes, not the bytearray: its pieces would be bytearrays, and the empty ones of
        # a run of blank lines a new object each (see EventStreamParser._irregular).
        region = bytes(region)
        pieces = self._split_at_head(_DELTA_HEAD, region, out)
        if not pieces:
            return
        room = self._limit - _HEAD_SIZE
        # The usual read: every piece one data line, none beyond a bound. One test on the
        # joined pieces (a C call per read) instead of two tests per event.
        regular = len(region) <= room and 10 not in b"".join(pieces)
        decode = _decode_event
        rid = asm._rid
        append = out.append
        count = 0  # events of the hot path, added to progress once
        try:
            for piece in pieces:
                if not regular and (10 in piece or len(piece) > room):
                    self._head_piece(_DELTA_HEAD, piece, out)
                    if asm.finished:
                        return
                    rid = asm._rid
                    continue
                # The hot path: AnthropicAssembler._dispatch and _event, inlined.
                try:
                    wire = decode(piece)
                except _JSON_ERRORS:
                    asm._dispatch(False, piece, out)
                    if asm.finished:
                        return
                    rid = asm._rid
                    continue
                count += 1
                delta = wire.delta
                if (
                    delta is not None
                    and delta.type == "text_delta"
                    and wire.type == "content_block_delta"
                ):
                    text = delta.text
                    if text:
                        d = FillDelta()
                        d.role = None
                        d.content = text
                        d.tool_calls = NO_CALLS
                        d.reasoning = None
                        d.provider_items = ()
                        d.__class__ = ChoiceDelta
                        c = FillChoice()
                        c.delta = d
                        c.index = 0
                        c.finish_reason = None
                        c.native_finish_reason = None
                        c.__class__ = Choice
                        k = FillChunk()
                        k.request_id = rid
                        k.choices = [c]
                        k.usage = None
                        k.__class__ = ChatChunk
                        append(k)
                    continue
                try:
                    asm._handle(wire, out)
                except APIError as exc:
                    asm._fail(exc, out)
                if asm.finished:
                    return
                rid = asm._rid
        finally:
            asm.progress += count

    def _head_data(self, data: bytes, out: list[ChatChunk]) -> None:
        # A text delta's block that _blocks could not take inline (see _head_piece).
        self.assembler._dispatch(False, data, out)

    def _other_blocks(self, region: bytes, out: list[ChatChunk]) -> None:
        # Whole blocks of any kind, in order (empty pieces are blank lines between blocks).
        asm = self.assembler
        dispatch = asm._dispatch
        limit = self._limit
        for block in region.split(b"\n\n"):
            if not block:
                continue
            if len(block) <= limit:
                nl = block.find(10)
                if nl < 0:
                    if block[:6] == b"data: ":
                        dispatch(False, block[6:], out)
                    elif block[:1] != b":":
                        self._whole_block(block, out)
                    if asm.finished:
                        return
                    continue
                if (
                    block[:7] == b"event: "
                    and nl > 7
                    and block[nl + 1 : nl + 7] == b"data: "
                    and block.find(10, nl + 1) < 0
                ):
                    dispatch(block[7:nl] == b"error", block[nl + 7 :], out)
                    if asm.finished:
                        return
                    continue
            self._whole_block(block, out)
            if asm.finished:
                return
