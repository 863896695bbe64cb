"""OpenAI Responses API streams: SSE events -> ``ChatChunk``s.

The wire format
---------------

``POST /responses`` with ``stream: true`` answers with server-sent events, each
``event: <type>`` plus ``data: <one JSON object>`` whose ``type`` field repeats the event name
and whose ``sequence_number`` grows by one per event. The response is a list of *output
items* (``message``, ``reasoning``, ``function_call``...), each announced by
``response.output_item.added``, filled by delta events and closed by
``response.output_item.done``, which carries the whole item again. What we make of them:

- ``response.output_text.delta`` (and ``response.refusal.delta``): ``content``, passed on as it
  comes. ``response.reasoning_summary_text.delta`` (and ``response.reasoning_text.delta``, the
  raw reasoning open-weight servers stream): ``reasoning``; a second summary part of the same
  item is preceded by a blank line, so the parts do not run together.
- ``*.done`` events repeat what their deltas said: they are never passed on again. A server
  that skips the deltas of a part (some compatible servers send the ``.done`` only) still loses
  nothing: the ``.done`` text of a part for which no delta came is passed on once.
- Function calls: ``output_item.added`` of type ``function_call`` gives ``call_id`` and
  ``name``; ``response.function_call_arguments.delta`` slices of the arguments text follow
  (keyed by ``item_id``). The call is delivered complete, as one ``FunctionCall`` whose
  ``call_id`` is the ``call_id`` a tool result must quote (not the item's ``fc_...`` id) and
  whose ``arguments`` are the deltas joined exactly (the ``.done`` arguments when no delta
  came), at ``response.function_call_arguments.done``, or at ``output_item.done`` when the
  name was not yet known (a resumed stream that missed the ``added``), which also delivers a
  call never seen before from the item itself.
- Replay: each completed ``reasoning`` and ``function_call`` item (``output_item.done``) becomes
  a ``ProviderItem("openai.responses", kind, <the item's JSON exactly as sent>)``, so the next
  request can send reasoning (with its ``encrypted_content``, when requested) and the call it
  belongs to back byte-equal, in their order. Message items are not kept: their text is the
  message's ``content``, which an application may legitimately shorten (a voice agent keeps
  what was spoken).
- Terminals: ``response.completed`` -> finish ``stop`` (``tool_calls`` when the response made
  function calls; ``content_filter`` after a refusal), with usage; ``response.incomplete`` ->
  ``length`` for ``max_output_tokens``, ``content_filter`` for ``content_filter`` (any other
  reason: ``length``), the reason kept as ``native_finish_reason``; ``response.failed`` and
  ``error`` events -> ``ProviderError`` (after a failed response's usage so far, in a chunk of
  its own with source ``provider_partial``: the failed attempt's usage). The live API nests
  an ``error`` event's fields under ``error`` (``{"type": "error", "error": {"type", "code",
  "message"}}``), the documentation shows them flat (``{"type": "error", "code",
  "message"}``, where ``type`` is the event's): both are read. A body that ends before a
  terminal is ``StreamTruncatedError``.
- Usage (from the terminal's ``response.usage``): prompt = ``input_tokens`` (cached included),
  cached = ``input_tokens_details.cached_tokens``, completion = ``output_tokens``, reasoning =
  ``output_tokens_details.reasoning_tokens``.
- Every other event (``response.created``, ``in_progress``, ``output_item.added`` of other
  items, ``content_part.added/done``, annotations, web search progress, unknown future types)
  produces nothing and commits nothing, but is progress for the runtime's idle clock.

Sequence numbers. Every event of a stream is numbered; a number that is not greater than the
previous one is a duplicated or reordered event, and passing it on could repeat text the user
already has, so it is a ``StreamProtocolError``. The first number is not checked (a resumed
background stream starts after the events its client saw, without ``response.created``), nor
are gaps (the same reason), nor events without a number (compatible servers omit it).

The state machine is the chat assembler's: streaming until one terminal, then finished for
good, input ignored. Nothing raises from ``feed_events``: the chunks before an error are
returned and ``error``/``finished`` set. JSON that cannot be decoded, or is not an object with
a ``type``, is a ``StreamProtocolError``, except in an SSE ``event: error``, whose text is then
the ``ProviderError``'s message.

Memory: arguments of one call are bounded (``max_tool_argument_bytes``), as are the calls of a
stream (``max_tool_calls``) and the output parts remembered for the ``.done`` rule
(``max_parts``); each event is bounded by the SSE decoder's event size. Text is never
accumulated.

Speed: :class:`ResponsesParser` is the bytes level: the shared parser's framing with a block
handler for the usual ``event:``/``data:`` blocks (the SSE decoder builds a
``ServerSentEvent`` and its strings per event, which cost more than decoding the JSON); text
deltas are cut out of a read with one split at their block's head, and a text delta of a part
already seen is assembled inline. The benchmark (``benchmarks/bench_responses.py``) compares it
with a bare floor and with openai-python's own parsing of the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat
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
    UsageSource,
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
from ._openai import (
    _JSON_ERRORS,
    DEFAULT_MAX_TOOL_ARGUMENT_BYTES,
    DEFAULT_MAX_TOOL_CALLS,
    _excerpt,
    _json_text,
    _reason,
    _utf8_len,
)
from ._parser import EventStreamParser
from ._sse import ServerSentEvent

__all__ = ["DEFAULT_MAX_PARTS", "PROVIDER", "ResponsesAssembler", "ResponsesParser"]

#: ``ProviderItem.provider`` of the items this protocol records.
PROVIDER: Final = "openai.responses"
#: Bound on the output parts (text, refusal, reasoning) one stream may open.
DEFAULT_MAX_PARTS: Final = 4096

_MAX_MESSAGE = 2000
_INCOMPLETE: Final = {"max_output_tokens": "length", "content_filter": "content_filter"}
# Item types kept for replay (see the module docstring).
_REPLAYED: Final = frozenset({"reasoning", "function_call"})


# -- wire Structs (every field optional; unknown fields skipped unread) ---------------------------


class _WireInputDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _WireOutputDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int | None = None


class _WireUsage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    input_tokens_details: _WireInputDetails | None = None
    output_tokens_details: _WireOutputDetails | None = None


class _WireIncomplete(msgspec.Struct, gc=False):
    reason: str | None = None


class _WireResponse(msgspec.Struct, gc=False):
    id: str | None = None
    status: str | None = None
    usage: _WireUsage | None = None
    error: Any = None
    incomplete_details: _WireIncomplete | None = None


class _WireItem(msgspec.Struct, gc=False):
    type: str | None = None
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


_NO_RAW: Final = msgspec.Raw(b"")
_NOTHING: Final = object()


class _WireEvent(msgspec.Struct, gc=False):
    type: str | None = None
    sequence_number: int | None = None
    delta: str | None = None
    item_id: str | None = None
    content_index: int | None = None
    summary_index: int | None = None
    text: str | None = None
    refusal: str | None = None
    arguments: str | None = None
    # Kept as the exact bytes sent: a replayed item goes back byte-equal.
    # (msgspec.Raw cannot be optional: an absent item is the empty Raw.)
    item: msgspec.Raw = _NO_RAW
    response: _WireResponse | None = None
    # ``error`` events: nested (the live API) or flat (the documentation).
    error: Any = None
    message: Any = None
    code: Any = None
    param: Any = None


_decode_event: Final = msgspec.json.Decoder(_WireEvent).decode
_decode_item: Final = msgspec.json.Decoder(_WireItem).decode
_decode_any: Final = msgspec.json.Decoder().decode

_TEXT_DELTA: Final = "response.output_text.delta"
# The head of a text delta's block, which cuts a run of them (see
# ResponsesParser._blocks).
_DELTA_NAME: Final = _TEXT_DELTA.encode()
_DELTA_HEAD: Final = b"event: " + _DELTA_NAME + b"\ndata: "
_HEAD_SIZE: Final = len(_DELTA_HEAD)
_SUMMARY_DELTA: Final = "response.reasoning_summary_text.delta"


class _Call:
    """A function call still receiving argument deltas (keyed by its item id)."""

    __slots__ = ("call_id", "delivered", "name", "parts", "size")

    def __init__(self) -> None:
        self.call_id: str | None = None
        self.name: str | None = None
        self.parts: list[str] = []
        self.size = 0
        self.delivered = False


class ResponsesAssembler:
    """Turns the SSE events of one Responses stream into ``ChatChunk``s (an
    ``EventAssembler``, see ``_core/_parser.py``).

    Attributes (read them, do not set them): ``finished``, ``error``, ``request_id`` (the
    response's ``id``), ``usage`` (from the terminal event), ``progress`` (grows whenever a
    data-carrying event was processed, lifecycle events included), ``finish_reason`` and
    ``native_finish_reason``. Synchronous and free of I/O: no cancellation behaviour.
    """

    __slots__ = (
        "_calls",
        "_last_index",
        "_last_item",
        "_made_calls",
        "_max_parts",
        "_max_tool_argument_bytes",
        "_max_tool_calls",
        "_parts",
        "_refused",
        "_rid",
        "_seq",
        "error",
        "finish_reason",
        "finished",
        "native_finish_reason",
        "progress",
        "request_id",
        "usage",
    )

    def __init__(
        self,
        *,
        max_tool_argument_bytes: int = DEFAULT_MAX_TOOL_ARGUMENT_BYTES,
        max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS,
        max_parts: int = DEFAULT_MAX_PARTS,
    ) -> None:
        if max_tool_argument_bytes < 0 or max_tool_calls < 1 or max_parts < 1:
            raise ValueError("bounds must be positive")
        self._max_tool_argument_bytes = max_tool_argument_bytes
        self._max_tool_calls = max_tool_calls
        self._max_parts = max_parts
        self._calls: dict[str, _Call] = {}
        # Output parts that received a delta: (kind, item id, part index). The .done rule.
        self._parts: set[tuple[str, str, int]] = set()
        self._made_calls = False
        # The text part of the last text delta (marked already): see _feed_batch. Nothing at
        # first, not even "no item id": a part is marked before the fast path may skip it.
        self._last_item: object = _NOTHING
        self._last_index: object = _NOTHING
        self._refused = False
        self._seq: int | None = None
        self._rid = ""
        self.finished = False
        self.error: APIError | None = None
        self.request_id: str | None = None
        self.usage: CompletionUsage | None = None
        self.progress = 0
        self.finish_reason: str | None = None
        self.native_finish_reason: str | None = None

    # -- the EventAssembler interface -------------------------------------------------------------

    def feed_events(self, events: Iterable[ServerSentEvent]) -> list[ChatChunk]:
        """Process events; return the chunks they complete, in order. Never raises for a
        problem in the stream (see the class docstring)."""
        out: list[ChatChunk] = []
        if self.finished:
            return out
        for event in events:
            self.progress += 1
            try:
                self._event(event.event, event.data, out)
            except APIError as exc:
                self.fail(exc)
            if self.finished:
                break
        return out

    def end(self) -> list[ChatChunk]:
        """The body ended: without a terminal event that is ``StreamTruncatedError``."""
        if not self.finished:
            self.fail(
                StreamTruncatedError(
                    "the stream ended before response.completed, response.incomplete or "
                    "response.failed",
                    request_id=self.request_id,
                )
            )
        return []

    def fail(self, error: APIError) -> None:
        """End the stream with ``error`` (kept without its traceback)."""
        if self.finished:
            return
        self.error = error.with_traceback(None)
        self.finished = True

    # -- events -----------------------------------------------------------------------------------

    def _feed_batch(
        self, names: Iterable[bytes], datas: Iterable[bytes], out: list[ChatChunk]
    ) -> None:
        # Events from ResponsesParser's framing shortcut, names and data (paired in order) as
        # bytes not yet decoded from UTF-8: what feed_events does for them, with the text delta
        # of a part already seen (almost every event of a stream) handled inline.
        if self.finished:
            return
        self.progress += 1
        decode = _decode_event
        append = out.append
        text_delta = _TEXT_DELTA
        # The state the fast path reads, in locals (reloaded after the assembler's own path
        # ran; the sequence number written back before it runs and when the batch ends).
        last = self._seq
        item = self._last_item
        index = self._last_index
        rid = self._rid
        try:
            for name, data in zip(names, datas, strict=False):  # names may be repeat()
                try:
                    wire = decode(data)
                except _JSON_ERRORS:
                    pass
                else:
                    if wire.type == text_delta:
                        seq = wire.sequence_number
                        if (
                            (seq is None or last is None or seq > last)
                            and wire.item_id == item
                            and wire.content_index == index
                        ):
                            if seq is not None:
                                last = seq
                            delta = wire.delta
                            if delta:
                                # _text, inlined.
                                d = FillDelta()
                                d.role = None
                                d.content = delta
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
                self._seq = last
                try:
                    self._event(name.decode("utf-8", "replace") or "message", data, out)
                except APIError as exc:
                    self.fail(exc)
                last = self._seq
                if self.finished:
                    return
                item = self._last_item
                index = self._last_index
                rid = self._rid
        finally:
            self._seq = last

    def _event(self, name: str, data: str | bytes, out: list[ChatChunk]) -> None:
        try:
            wire = _decode_event(data)
        except _JSON_ERRORS as exc:
            if isinstance(data, str):
                self._odd(name, data, exc)
                return
            # Bytes from the shortcut: judge them as the SSE decoder would have decoded them
            # (invalid UTF-8 replaced), which may well be a valid event.
            data = data.decode("utf-8", "replace")
            try:
                wire = _decode_event(data)
            except _JSON_ERRORS as exc_text:
                self._odd(name, data, exc_text)
                return
        kind = wire.type
        if kind is None:
            if name == "error":
                text = data if isinstance(data, str) else data.decode("utf-8", "replace")
                self.fail(self._error_event(wire, text))
                return
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            raise StreamProtocolError(
                f"an event without a type: {_excerpt(text)}", request_id=self.request_id
            )
        seq = wire.sequence_number
        if seq is not None:
            last = self._seq
            if last is not None and seq <= last:
                raise StreamProtocolError(
                    f"event {kind} has sequence_number {seq} after {last}: a duplicated or "
                    "reordered event",
                    request_id=self.request_id,
                )
            self._seq = seq
        if kind == _TEXT_DELTA:
            delta = wire.delta
            if delta:
                self._mark("t", wire.item_id, wire.content_index)
                # The part the fast path of _feed_batch recognises as already marked.
                self._last_item = wire.item_id
                self._last_index = wire.content_index
                self._text(delta, None, out)
            return
        if kind == _SUMMARY_DELTA:
            delta = wire.delta
            if delta:
                index = wire.summary_index or 0
                if self._mark("s", wire.item_id, index) and index > 0:
                    delta = "\n\n" + delta
                self._text(None, delta, out)
            return
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, wire, out)

    def _odd(self, name: str, data: str, exc: BaseException) -> None:
        if name == "error":
            # An ``event: error`` whose data is not an event: its text is the message.
            try:
                value = _decode_any(data)
            except _JSON_ERRORS:
                value = None
            if isinstance(value, dict):
                inner = value.get("error")
                self.fail(self._error_value(inner if inner is not None else value, None))
                return
            self.fail(self._provider_error(data.strip() or None, None, None))
            return
        if not data.strip() or data.strip() == "[DONE]":
            # Nothing, or a chat-completions style sentinel some compatible servers add: the
            # terminal events decide, so a stream ending here is truncated.
            return
        if isinstance(exc, msgspec.ValidationError):
            try:
                _decode_any(data)
            except _JSON_ERRORS as malformed:
                exc = malformed
            else:
                raise StreamProtocolError(
                    f"unexpected JSON in an event ({exc}): {_excerpt(data)}",
                    request_id=self.request_id,
                )
        raise StreamProtocolError(
            f"malformed JSON in an event ({_reason(exc)}): {_excerpt(data)}",
            request_id=self.request_id,
        )

    def _mark(self, kind: str, item_id: str | None, index: int | None) -> bool:
        """Remember that a part received a delta; True the first time."""
        key = (kind, item_id or "", index or 0)
        parts = self._parts
        if key in parts:
            return False
        if len(parts) >= self._max_parts:
            raise StreamProtocolError(
                f"more than {self._max_parts} output parts in one response",
                request_id=self.request_id,
            )
        parts.add(key)
        return True

    def _text(self, content: str | None, reasoning: str | None, out: list[ChatChunk]) -> None:
        # make_delta/make_choice/make_chunk, inlined: this runs once per token.
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

    def _emit(
        self,
        out: list[ChatChunk],
        *,
        calls: list[FunctionCall] | None = None,
        items: tuple[ProviderItem, ...] = (),
    ) -> None:
        delta = make_delta(None, None, calls or [], None, items)
        out.append(make_chunk(self._rid, [make_choice(delta, 0, None)], None))

    # -- lifecycle and text .done -----------------------------------------------------------------

    def _response_seen(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        response = wire.response
        if response is not None and response.id and self.request_id is None:
            self.request_id = self._rid = response.id

    def _text_done(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        if self._mark("t", wire.item_id, wire.content_index) and wire.text:
            self._text(wire.text, None, out)

    def _refusal_delta(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        if wire.delta:
            self._refused = True
            self._mark("r", wire.item_id, wire.content_index)
            self._text(wire.delta, None, out)

    def _refusal_done(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        self._refused = True
        if self._mark("r", wire.item_id, wire.content_index) and wire.refusal:
            self._text(wire.refusal, None, out)

    def _summary_done(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        index = wire.summary_index or 0
        if self._mark("s", wire.item_id, index) and wire.text:
            self._text(None, ("\n\n" if index > 0 else "") + wire.text, out)

    def _raw_reasoning_delta(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        if wire.delta:
            self._mark("x", wire.item_id, wire.content_index)
            self._text(None, wire.delta, out)

    def _raw_reasoning_done(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        if self._mark("x", wire.item_id, wire.content_index) and wire.text:
            self._text(None, wire.text, out)

    # -- function calls ---------------------------------------------------------------------------

    def _call(self, item_id: str | None) -> _Call:
        key = item_id or ""
        call = self._calls.get(key)
        if call is None:
            if len(self._calls) >= self._max_tool_calls:
                raise StreamProtocolError(
                    f"more than {self._max_tool_calls} function calls in one response",
                    request_id=self.request_id,
                )
            call = self._calls[key] = _Call()
        return call

    def _item(self, raw: msgspec.Raw) -> _WireItem | None:
        if not raw or bytes(raw) == b"null":
            return None
        try:
            item = _decode_item(raw)
        except _JSON_ERRORS as exc:
            raise StreamProtocolError(
                f"an output item of an unexpected shape ({_reason(exc)})",
                request_id=self.request_id,
            ) from None
        return item

    def _item_added(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        item = self._item(wire.item)
        if item is None or item.type != "function_call":
            return
        call = self._call(item.id)
        call.call_id = call.call_id or item.call_id
        call.name = call.name or item.name

    def _arguments_delta(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        delta = wire.delta
        call = self._call(wire.item_id)
        if not delta or call.delivered:
            return
        call.size += _utf8_len(delta)
        if call.size > self._max_tool_argument_bytes:
            raise StreamProtocolError(
                f"function call {wire.item_id!r}: arguments exceed "
                f"{self._max_tool_argument_bytes} bytes",
                request_id=self.request_id,
            )
        call.parts.append(delta)

    def _arguments_done(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        call = self._call(wire.item_id)
        if call.delivered:
            return
        if not call.parts and wire.arguments:
            call.parts.append(wire.arguments)
        if call.name and call.call_id:
            self._deliver(call, out)
        # Otherwise the name or call id comes with output_item.done.

    def _deliver(self, call: _Call, out: list[ChatChunk]) -> None:
        assert call.name is not None
        assert call.call_id is not None
        call.delivered = True
        self._made_calls = True
        arguments = "".join(call.parts)
        call.parts = []
        self._emit(out, calls=[FunctionCall(call.call_id, call.name, arguments)])

    def _item_done(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        raw = wire.item
        item = self._item(raw)
        if item is None:
            return
        if item.type == "function_call":
            call = self._call(item.id)
            if not call.delivered:
                call.call_id = call.call_id or item.call_id
                call.name = call.name or item.name
                if not call.parts and item.arguments:
                    call.parts.append(item.arguments)
                if not call.name:
                    raise StreamProtocolError(
                        f"function call {item.id!r} has no name", request_id=self.request_id
                    )
                if not call.call_id:
                    raise StreamProtocolError(
                        f"function call {item.id!r} has no call_id", request_id=self.request_id
                    )
                self._deliver(call, out)
        if item.type in _REPLAYED:
            text = bytes(raw).decode("utf-8", "replace")
            self._emit(out, items=(ProviderItem(PROVIDER, item.type or "", text),))

    # -- terminals --------------------------------------------------------------------------------

    def _usage(
        self, response: _WireResponse | None, source: UsageSource = "provider"
    ) -> CompletionUsage | None:
        u = response.usage if response is not None else None
        if u is None:
            return None
        prompt = u.input_tokens or 0
        completion = u.output_tokens or 0
        itd = u.input_tokens_details
        otd = u.output_tokens_details
        usage = CompletionUsage(
            completion_tokens=completion,
            prompt_tokens=prompt,
            total_tokens=u.total_tokens if u.total_tokens is not None else prompt + completion,
            cached_tokens=itd.cached_tokens if itd is not None else None,
            reasoning_tokens=otd.reasoning_tokens if otd is not None else None,
            source=source,
        )
        self.usage = usage
        return usage

    def _finish(self, wire: _WireEvent, out: list[ChatChunk], finish: str, native: str) -> None:
        self._response_seen(wire, out)
        # Calls whose item never ended are complete now; one that never got its name or call
        # id (deltas for an item never announced) could not be executed.
        for item_id, call in self._calls.items():
            if call.delivered:
                continue
            if not call.name or not call.call_id:
                raise StreamProtocolError(
                    f"function call {item_id!r} ended without a name or call_id",
                    request_id=self.request_id,
                )
            self._deliver(call, out)
        usage = self._usage(wire.response)
        self.finish_reason = finish
        self.native_finish_reason = native
        delta = make_delta(None, None, [], None)
        out.append(make_chunk(self._rid, [make_choice(delta, 0, finish, native)], usage))
        self.finished = True

    def _completed(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        if self._refused:
            finish = "content_filter"
        else:
            finish = "tool_calls" if self._made_calls or self._pending_calls() else "stop"
        self._finish(wire, out, finish, "refusal" if self._refused else "completed")

    def _pending_calls(self) -> bool:
        return any(not c.delivered for c in self._calls.values())

    def _incomplete(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        response = wire.response
        details = response.incomplete_details if response is not None else None
        reason = details.reason if details is not None and details.reason else "incomplete"
        self._finish(wire, out, _INCOMPLETE.get(reason, "length"), reason)

    def _failed(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        self._response_seen(wire, out)
        response = wire.response
        # What the failed response had used so far, in a chunk of its own before the error:
        # the runtime records it as the failed attempt's usage.
        usage = self._usage(response, "provider_partial")
        if usage is not None:
            out.append(make_chunk(self._rid, [], usage))
        err = response.error if response is not None else None
        self.fail(self._error_value(err, "the response failed"))

    def _error(self, wire: _WireEvent, out: list[ChatChunk]) -> None:
        self.fail(self._error_event(wire, None))

    def _error_event(self, wire: _WireEvent, data: str | None) -> ProviderError:
        nested = wire.error
        if nested is not None:
            return self._error_value(nested, None)
        # The documented flat form: ``type`` is the event's own ("error"), not the error's.
        message = wire.message
        if message is None and data is not None:
            message = data.strip() or None
        return self._provider_error(message, None, wire.code)

    def _error_value(self, err: object, default: str | None) -> ProviderError:
        # An error object of any shape: {"message", "type", "code"}, a string, or anything.
        if isinstance(err, dict):
            return self._provider_error(
                err.get("message") or default, err.get("type"), err.get("code")
            )
        if err is None:
            return self._provider_error(default, None, None)
        return self._provider_error(err, None, None)

    def _provider_error(self, message: object, type_: object, code: object) -> ProviderError:
        text = message if isinstance(message, str) else None
        if text is None and message is not None:
            text = _json_text(message)
        if not text:
            text = "the server reported an error in the stream"
        if type_ is not None and not isinstance(type_, str):
            type_ = _json_text(type_)
        if code is not None and (isinstance(code, bool) or not isinstance(code, str | int)):
            code = _json_text(code)
        return ProviderError(
            text[:_MAX_MESSAGE],
            type=type_,
            code=code,
            request_id=self.request_id,
        )


_HANDLERS: Final = {
    "response.created": ResponsesAssembler._response_seen,
    "response.in_progress": ResponsesAssembler._response_seen,
    "response.queued": ResponsesAssembler._response_seen,
    "response.output_text.done": ResponsesAssembler._text_done,
    "response.refusal.delta": ResponsesAssembler._refusal_delta,
    "response.refusal.done": ResponsesAssembler._refusal_done,
    "response.reasoning_summary_text.done": ResponsesAssembler._summary_done,
    "response.reasoning_text.delta": ResponsesAssembler._raw_reasoning_delta,
    "response.reasoning_text.done": ResponsesAssembler._raw_reasoning_done,
    "response.output_item.added": ResponsesAssembler._item_added,
    "response.output_item.done": ResponsesAssembler._item_done,
    "response.function_call_arguments.delta": ResponsesAssembler._arguments_delta,
    "response.function_call_arguments.done": ResponsesAssembler._arguments_done,
    "response.completed": ResponsesAssembler._completed,
    "response.incomplete": ResponsesAssembler._incomplete,
    "response.failed": ResponsesAssembler._failed,
    "error": ResponsesAssembler._error,
}


# -- the bytes level ------------------------------------------------------------------------------


class ResponsesParser(EventStreamParser):
    """Bytes of a Responses body -> ``ChatChunk``s: the shared
    :class:`~trio_llmstream._core._parser.EventStreamParser` (``feed`` per read, ``end``,
    ``finished``/``error``/``progress``/``usage``/``request_id``; nothing raises; the same
    output under any chunking; its framing: BOM and CR hand-over, windows, the pending
    unfinished block, the bounds) with the Responses block handler.

    Framing every event through the SSE decoder (lines, fields, one ``ServerSentEvent`` and
    its strings per event) costs three times what decoding the event's JSON does. But nearly
    every block the Responses API sends is exactly ``event: <name>\\ndata: <json>``. So a
    block of that form (or a lone ``data: `` line, or a one-line comment, which changes
    nothing) no longer than the SSE bounds is handed to the assembler directly, its JSON as
    bytes; any other block goes to the decoder whole, at a block boundary (``_whole_block``).
    The tests check this parser against the plain decoder on arbitrary input under any
    chunking. Synchronous and free of I/O: no cancellation behaviour.
    """

    __slots__ = ()

    assembler: ResponsesAssembler

    def __init__(
        self,
        *,
        max_line_size: int = 1 << 20,
        max_event_size: int = 1 << 20,
        max_tool_argument_bytes: int = DEFAULT_MAX_TOOL_ARGUMENT_BYTES,
        max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS,
        max_parts: int = DEFAULT_MAX_PARTS,
    ) -> None:
        assembler = ResponsesAssembler(
            max_tool_argument_bytes=max_tool_argument_bytes,
            max_tool_calls=max_tool_calls,
            max_parts=max_parts,
        )
        super().__init__(assembler, max_line_size=max_line_size, max_event_size=max_event_size)
        self._use_shortcut(self._lone_data)

    def _lone_data(self, payloads: Iterable[bytes | bytearray], out: list[ChatChunk]) -> None:
        # The data of lone "data: " blocks: message events (no event name).
        self.assembler._feed_batch(repeat(b""), [bytes(data) for data in payloads], out)

    def _blocks(self, region: bytes | bytearray, out: list[ChatChunk]) -> None:
        # Whole blocks, their final blank line cut off, from a block boundary. Most are text
        # deltas: one C-level split at "<blank line>event: response.output_text.delta<LF>data: "
        # leaves, between two separators, the JSON of such an event if the piece holds no LF
        # (a data line cannot hold one); one test on the joined pieces finds that out for the
        # whole read. Whatever else a piece holds after its first line is other blocks, taken
        # apart by _other_blocks. (bytes, not the bytearray: see EventStreamParser._irregular.)
        asm = self.assembler
        region = bytes(region)
        pieces = self._split_at_head(_DELTA_HEAD, region, out)
        if not pieces:
            return
        room = self._limit - _HEAD_SIZE
        if len(region) <= room and 10 not in b"".join(pieces):
            asm._feed_batch(repeat(_DELTA_NAME), pieces, out)  # the usual read
            return
        batch: list[bytes] = []
        for piece in pieces:
            if 10 in piece or len(piece) > room:
                if batch:
                    asm._feed_batch(repeat(_DELTA_NAME), batch, out)
                    batch = []
                    if asm.finished:
                        return
                self._head_piece(_DELTA_HEAD, piece, out)
                if asm.finished:
                    return
                continue
            batch.append(piece)
        if batch:
            asm._feed_batch(repeat(_DELTA_NAME), batch, out)

    def _head_data(self, data: bytes, out: list[ChatChunk]) -> None:
        # A text delta's block that _blocks could not take inline (see _head_piece).
        self.assembler._feed_batch((_DELTA_NAME,), (data,), out)

    def _other_blocks(self, region: bytes, out: list[ChatChunk]) -> None:
        # Whole blocks of any kind, in order (empty pieces are blank lines between blocks).
        asm = self.assembler
        limit = self._limit
        names: list[bytes] = []
        datas: list[bytes] = []
        for block in region.split(b"\n\n"):
            if not block:
                continue
            if len(block) <= limit:
                nl = block.find(10)
                if nl < 0:
                    if block.startswith(b"data: "):
                        names.append(b"")
                        datas.append(block[6:])
                        continue
                    if block.startswith(b"data:"):
                        names.append(b"")
                        datas.append(block[5:])
                        continue
                    if block.startswith(b":"):
                        continue
                elif (
                    block.startswith(b"event: ")
                    and block.startswith(b"data: ", nl + 1)
                    and block.find(10, nl + 1) < 0
                ):
                    names.append(block[7:nl])
                    datas.append(block[nl + 7 :])
                    continue
            if datas:
                asm._feed_batch(names, datas, out)
                names = []
                datas = []
                if asm.finished:
                    return
            self._whole_block(block, out)
            if asm.finished:
                return
        if datas:
            asm._feed_batch(names, datas, out)
