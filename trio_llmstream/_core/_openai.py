"""OpenAI chat-completions streams: SSE events -> wire chunks -> assembled ``ChatChunk``s.

The wire format, and what we make of it
---------------------------------------

With ``stream: true`` an OpenAI-compatible server (OpenAI, vLLM, Ollama's ``/v1``, llama.cpp,
OpenRouter, Groq...) answers with server-sent events whose ``data`` is one JSON
``chat.completion.chunk`` each, then ``data: [DONE]``. A chunk carries, per choice ``index``, a
*delta*: a role (usually on the first chunk only), a piece of content, a piece of reasoning
(``reasoning_content`` from vLLM/DeepSeek, ``reasoning`` from Ollama and newer vLLM) and
*fragments* of tool calls; the chunk that ends a choice has its ``finish_reason``. Usage comes
in a final ``choices: []`` chunk (OpenAI with ``stream_options.include_usage``) or on the finish
chunk itself (llama.cpp). Each payload is decoded once, by msgspec, into the typed ``_Wire*``
Structs below: unknown fields are skipped without being built, every field is optional, and
``delta: null`` (Azure's content-filter chunks), empty choices and ``usage: null`` are all
simply "nothing here".

Text needs no merging: content and reasoning pieces are passed on as they come, each in the
chunk that carried it. Tool calls do, because a call is useless until complete and the wire
streams it in pieces: the first fragment for a call ``index`` carries its ``id`` and function
``name``, the following ones slices of the ``arguments`` JSON text. So each choice keeps at most
one *open* call, and its argument fragments are kept in a list and joined once, exactly as sent
(the JSON is never parsed or re-serialised: the tool layer parses it, and reports bad JSON as a
tool error, which the model can recover from). A call is complete, and delivered as a
``FunctionCall`` in ``ChoiceDelta.tool_calls``, when

- a fragment for another call starts in the same choice (servers stream calls one after the
  other; a fragment for a call that already completed is a protocol error, not silently glued
  onto the wrong call),
- its choice's ``finish_reason`` arrives, even in the very chunk that carried its last fragment,
- or the stream ends well (``[DONE]``, or every choice finished).

Every fragment of a delta is processed, however many calls it touches: a delta holding three
whole calls yields three calls (a known failure of other clients). Calls completed by one chunk
are delivered together, in index order. Leniencies for servers seen in the wild: a fragment
without ``index`` continues the open call (or starts the next index); a fragment whose ``id``
differs from the open call's starts a new call even at the same index; a call without an id
gets a deterministic one, ``call_<request id>_<choice>_<index>``. A complete call without a
function name is a ``StreamProtocolError``: nothing could execute it.

DeepSeek answers 400 to a request whose tool-call turns come back without their
``reasoning_content``. So when a choice's reasoning came in that field (not ``reasoning``), its
pieces are kept (bounded) and its finish chunk carries them, joined, as
``ProviderItem("openai.chat", "reasoning_content", text)``, which ``OpenAILLM`` sends back.

Only chunks that add something become ``ChatChunk``s: a role, non-empty content or reasoning, a
completed call, a finish reason, or usage. A chunk carrying only argument fragments, or an empty
or null delta, produces nothing, so a consumer never sees half a call.

The state machine
-----------------

``STREAMING`` until one terminal, then ``FINISHED`` (``finished`` is True) for good; whatever
arrives afterwards is consumed and ignored, so the ``[DONE]`` that servers send after an error
event belongs to the same ending instead of being a second one.

- ``data: [DONE]`` -> completed (``done``): open calls are flushed as one last chunk.
- An error payload -> failed with ``ProviderError`` (the class decides retryability from the
  server's type/code). It is a JSON object with a top-level ``error`` (an object with
  message/type/code/param, or a string; OpenRouter sends it next to ``choices``, and it wins),
  an ``"object": "error"`` body (older vLLM), or an SSE event of type ``error`` whose data is
  JSON with or without the ``error`` wrapper, or plain text. Other event types are ignored.
- Malformed JSON, JSON of the wrong shape, or a bound exceeded (tool-argument bytes per call,
  calls per choice, choices) -> failed with ``StreamProtocolError`` (with an excerpt). That
  includes JSON msgspec refuses although it is well-formed: nesting deeper than the recursion
  limit allows (about 1,000 levels, in any position, unknown fields included) and numbers out of
  range (an integer of more than 4,300 digits, a float past the double range) in a field it
  decodes. An unknown field is skipped unread, so a huge number there is refused only in a
  payload with none of a chunk's fields, which is decoded in full to look for a bare error
  body. An ``event: error`` whose data cannot be decoded is still a ``ProviderError``, with the
  text as its message. No exception other than these typed errors comes out of the JSON layer.
- End of input (``end()``) with neither [DONE] nor an error: completed if every choice seen has
  a finish reason (some servers omit [DONE]), open calls flushed; otherwise failed with
  ``StreamTruncatedError`` and open calls dropped. A cut stream is never a silent success.

Errors are never raised (the core's rule, ``_core/__init__.py``): a network read may complete
several chunks and then an error, and raising would lose the chunks. Every method returns what
preceded the error and sets ``error`` and ``finished``; the caller delivers, then raises
``error``.

Speed
-----

This runs once per token, so the common chunk (one choice, content or reasoning only, for a
choice seen before) takes a fast path: one msgspec decode, a handful of attribute tests and the
three public objects. Building those was the largest cost: they are frozen slotted attrs
classes, whose generated ``__init__`` stores each field through ``object.__setattr__``, about
0.6 us per object here, as much as decoding the JSON. The fast path builds them through a
private *twin* of each class instead: a subclass adding no slots (so the same memory layout)
whose ``__init__`` and ``__setattr__`` are ``object``'s own, so that plain attribute stores
compile to direct slot writes; once filled, the instance's ``__class__`` is set to the public
class. The result is a genuine instance (``type(x) is ChatChunk``, equal to and frozen like a
constructed one) for about 0.2 us. Its ``tool_calls`` is the shared read-only ``NO_CALLS``, not a
fresh ``[]``: four GC-tracked objects per chunk instead of five, which is what the collector's
work under many concurrent streams scales with (``_core/_build.py``). This is valid only while
those classes have no validators, converters or post-init hooks and keep their fields;
``_check_fast_construction`` verifies that at import time, so a change to the model fails
loudly instead of building wrong objects.

The bytes level is not here: ``ChatCompletionParser`` is the shared ``EventStreamParser``
(``_core/_parser.py``: SSE framing, its shortcut for one-line ``data:`` blocks, windows for large
reads, the decoder's bounds as errors) driving this assembler, which opts into the shortcut with
:meth:`ChatCompletionAssembler.feed_payloads`: the JSON of each block is handed to msgspec as
bytes, without a ``ServerSentEvent`` or a ``str`` per event. Invalid UTF-8 that msgspec rejects
is decoded the decoder's way (with replacement) before being judged, so both paths agree.

A stored error keeps no traceback, which would keep the frames it passed through, and so the
read, alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, cast

import msgspec

from .._exceptions import APIError, ProviderError, StreamProtocolError, StreamTruncatedError
from .._models import (
    ChatChunk,
    ChatRole,
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
from ._parser import EventStreamParser
from ._sse import ServerSentEvent

__all__ = [
    "DEFAULT_MAX_CHOICES",
    "DEFAULT_MAX_TOOL_ARGUMENT_BYTES",
    "DEFAULT_MAX_TOOL_CALLS",
    "ChatCompletionAssembler",
    "ChatCompletionParser",
]

#: Bound on the argument bytes (UTF-8) of one tool call.
DEFAULT_MAX_TOOL_ARGUMENT_BYTES: Final = 1 << 20
#: Bound on the tool calls of one choice.
DEFAULT_MAX_TOOL_CALLS: Final = 128
#: Bound on the distinct choice indices of one stream (OpenAI allows n <= 128).
DEFAULT_MAX_CHOICES: Final = 128
#: Bound on the ``reasoning_content`` bytes (UTF-8) of one choice kept for replay.
DEFAULT_MAX_REASONING_BYTES: Final = 1 << 22

# How much of an offending payload error messages quote.
_EXCERPT = 120
# How much of a plain-text error event becomes the error message.
_MAX_MESSAGE = 2000
_ROLES: Final = frozenset({"system", "user", "assistant", "tool"})


# -- wire Structs ---------------------------------------------------------------------------------
# gc=False: these hold only strings, ints and other such Structs, never cycles, so they need no
# GC tracking (cheaper to create and to free).


class _WireFunction(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _WireToolCall(msgspec.Struct, gc=False):
    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: _WireFunction | None = None


class _WireDelta(msgspec.Struct, gc=False):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_WireToolCall] | None = None


class _WireChoice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _WireDelta | None = None
    finish_reason: str | None = None


class _WirePromptDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _WireCompletionDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int | None = None


class _WireUsage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: _WirePromptDetails | None = None
    completion_tokens_details: _WireCompletionDetails | None = None


class _WireError(msgspec.Struct, gc=False):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None
    param: Any = None


class _WireChunk(msgspec.Struct, gc=False):
    id: str | None = None
    choices: list[_WireChoice] | None = None
    usage: _WireUsage | None = None
    error: _WireError | str | None = None


_decode_chunk: Final = msgspec.json.Decoder(_WireChunk).decode
_decode_any: Final = msgspec.json.Decoder().decode

# Everything decoding (or re-encoding) a hostile payload can raise: each decode call catches
# exactly these and reports a typed error (StreamProtocolError, or ProviderError for an error
# event). Narrow, so that a bug of ours is never passed off as the server's fault, but
# complete, because the server chooses the input:
# - msgspec.MsgspecError: DecodeError (not JSON) and ValidationError (JSON of the wrong shape,
#   and numbers out of range: an integer past Python's int max str digits, 4,300 by default,
#   or a float past the double range);
# - RecursionError: msgspec decodes arrays and objects recursively and gives up at the
#   interpreter's recursion limit (about 1,000 levels, fewer the deeper our caller's stack)
#   with this, not a DecodeError; encoding such a value again can hit it too;
# - ValueError and OverflowError: UnicodeDecodeError (invalid UTF-8 handed to msgspec as
#   bytes) and the int/str conversion limit are ValueErrors, and a number too large for a C
#   type is an OverflowError; msgspec does not document that it wraps every such case.
_JSON_ERRORS: Final = (msgspec.MsgspecError, RecursionError, ValueError, OverflowError)


def _excerpt(text: str) -> str:
    return repr(text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else ""))


def _as_text(payload: str | bytes | bytearray) -> str:
    # Exactly what the SSE decoder would have produced for these bytes.
    if isinstance(payload, str):
        return payload
    return bytes(payload).decode("utf-8", "replace")


def _json_text(value: object) -> str:
    # A decoded JSON value shown as JSON text in an error message. It decoded, so it encodes,
    # except that this runs a few frames deeper than the decode did: a value nested right up
    # to the recursion limit may no longer fit.
    try:
        return msgspec.json.encode(value).decode()
    except _JSON_ERRORS:
        return "(a value nested too deeply to show)"


def _reason(exc: BaseException) -> str:
    # What went wrong in the JSON layer, for an error message.
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


# -- assembly -------------------------------------------------------------------------------------


class _OpenCall:
    """A tool call still receiving fragments."""

    __slots__ = ("call_id", "index", "name", "parts", "size")

    def __init__(self, index: int) -> None:
        self.index = index
        self.call_id: str | None = None
        self.name: str | None = None
        self.parts: list[str] = []
        self.size = 0


class _ChoiceState:
    """What one choice index has accumulated."""

    __slots__ = (
        "calls", "finish_reason", "index", "next_index", "open", "reasoning", "reasoning_size",
        "used",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.open: _OpenCall | None = None
        self.calls = 0  # calls started, open one included
        self.used: set[int] = set()  # indices of calls started
        self.next_index = 0  # for fragments without an index
        self.finish_reason: str | None = None
        # ``reasoning_content`` pieces: DeepSeek answers 400 to a tool-call turn sent back
        # without them, so the choice's finish carries them as a ProviderItem.
        self.reasoning: list[str] = []
        self.reasoning_size = 0


class ChatCompletionAssembler:
    """Turns the SSE events of one chat-completions stream into ``ChatChunk``s.

    Feed events with :meth:`feed_events` as they arrive (or the data of ``message`` events with
    :meth:`feed_payloads`, as the shared parser's framing shortcut does) and call :meth:`end`
    when the input ends. None of them raises for a problem in the stream: each returns the
    chunks produced before it, and sets ``error`` (an ``APIError``) and ``finished``; so does
    :meth:`fail`, which ends the stream with a given error. Once ``finished``, input is ignored.

    Attributes (read them, do not set them):

    - ``finished``: a terminal was reached ([DONE], an error, or :meth:`end`).
    - ``error``: the ``ProviderError`` / ``StreamProtocolError`` / ``StreamTruncatedError``
      that ended the stream, or None.
    - ``done``: ``data: [DONE]`` was seen.
    - ``finish_reasons``: ``{choice index: finish reason}`` seen so far.
    - ``request_id``: the ``id`` of the first chunk that had one, or None.
    - ``usage``: the last usage the server reported, or None.
    - ``progress``: a counter that grows whenever complete data-carrying events were processed
      (by any amount): events of type ``message`` (any data, even empty or malformed) or
      ``error``, while the stream was not yet finished. Comments, blank lines, other fields,
      unfinished lines and events of other types (``event: ping`` keep-alives) never move it,
      nor does anything after the stream finished. So ``progress`` moves across a ``feed``
      exactly when that read completed such an event (the tests check this on arbitrary input,
      in every path: the shortcut, the decoder's, and windowed large reads).

    Synchronous and free of I/O: nothing here blocks, so there is no cancellation behaviour.
    """

    __slots__ = (
        "_max_choices",
        "_max_tool_argument_bytes",
        "_max_tool_calls",
        "_rid",
        "_states",
        "done",
        "error",
        "finish_reasons",
        "finished",
        "progress",
        "request_id",
        "usage",
    )

    def __init__(
        self,
        *,
        max_tool_argument_bytes: int = DEFAULT_MAX_TOOL_ARGUMENT_BYTES,
        max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS,
        max_choices: int = DEFAULT_MAX_CHOICES,
    ) -> None:
        if max_tool_argument_bytes < 0 or max_tool_calls < 1 or max_choices < 1:
            raise ValueError("bounds must be positive")
        self._max_tool_argument_bytes = max_tool_argument_bytes
        self._max_tool_calls = max_tool_calls
        self._max_choices = max_choices
        self._states: dict[int, _ChoiceState] = {}
        # request_id or "": what a chunk without an id of its own is labelled with.
        self._rid = ""
        self.finished = False
        self.error: APIError | None = None
        self.done = False
        self.finish_reasons: dict[int, str] = {}
        self.request_id: str | None = None
        self.usage: CompletionUsage | None = None
        # Grows whenever complete data events were processed (not by how many): how a shell
        # tells a read that made progress from keep-alive comments and partial lines.
        self.progress = 0

    # -- public API ------------------------------------------------------------------------------

    def feed_events(self, events: Iterable[ServerSentEvent]) -> list[ChatChunk]:
        """Process events; return the chunks they complete, in order.

        Never raises for stream problems (see the class docstring).
        """
        out: list[ChatChunk] = []
        if self.finished:
            return out
        batch: list[str] = []
        for event in events:
            kind = event.event
            if kind == "message":
                batch.append(event.data)
                continue
            if batch:
                self.feed_payloads(batch, out)
                batch = []
                if self.finished:
                    return out
            if kind == "error":
                self.progress += 1
                self.fail(self._error_event(event.data))
                return out
            # Any other event type is not part of this protocol.
        if batch:
            self.feed_payloads(batch, out)
        return out

    def end(self) -> list[ChatChunk]:
        """The input ended: finish the stream and return any last chunk (flushed tool calls).

        If neither ``[DONE]`` nor an error came, the stream is complete only if every choice
        seen has a finish reason; otherwise ``error`` becomes ``StreamTruncatedError`` and
        unfinished tool calls are dropped. Calling it again, or after a terminal, returns [].
        """
        out: list[ChatChunk] = []
        if self.finished:
            return out
        states = self._states
        if states and all(s.finish_reason is not None for s in states.values()):
            try:
                self._flush(out)
            except APIError as exc:
                self.fail(exc)
                return out
            self.finished = True
        else:
            self.fail(
                StreamTruncatedError(
                    "the stream ended without [DONE] or a finish reason",
                    request_id=self.request_id,
                )
            )
        return out

    # -- the payload loop ------------------------------------------------------------------------

    def feed_payloads(
        self, payloads: Iterable[str | bytes | bytearray], out: list[ChatChunk]
    ) -> None:
        """Process the data of consecutive ``message`` events; append their chunks to ``out``.

        Payloads are str (from events) or UTF-8 bytes (from the parser's framing shortcut,
        ``PayloadAssembler`` in ``_core/_parser.py``). Never raises for stream problems.
        """
        # The fast path is inlined: it runs for almost every chunk of a stream.
        if self.finished:
            return
        self.progress += 1
        decode = _decode_chunk
        states = self._states
        append = out.append
        try:
            for payload in payloads:
                try:
                    wire = decode(payload)
                except _JSON_ERRORS:
                    # [DONE], malformed JSON, odd shapes, invalid UTF-8, nesting or numbers
                    # beyond what can be decoded: all rare, judged off the fast path.
                    self._odd_payload(payload, out)
                    if self.finished:
                        return
                    continue
                choices = wire.choices
                if (
                    choices is not None
                    and len(choices) == 1
                    and wire.usage is None
                    and wire.error is None
                ):
                    choice = choices[0]
                    delta = choice.delta
                    if (
                        delta is not None
                        and delta.role is None
                        and delta.tool_calls is None
                        and choice.finish_reason is None
                        and choice.index in states
                    ):
                        content = delta.content or None
                        reasoning = delta.reasoning_content or delta.reasoning or None
                        if delta.reasoning_content:
                            self._keep_reasoning(states[choice.index], delta.reasoning_content)
                        if content is not None or reasoning is not None:
                            rid = wire.id
                            if not rid or rid == self._rid:
                                # One shared string for the stream's chunks, not one per chunk.
                                rid = self._rid
                            elif self.request_id is None:
                                self.request_id = self._rid = rid
                            # _delta, _choice and _chunk, inlined.
                            d = FillDelta()
                            d.role = None
                            d.content = content
                            d.tool_calls = NO_CALLS  # shared: one tracked object fewer
                            d.reasoning = reasoning
                            d.provider_items = ()
                            d.__class__ = ChoiceDelta
                            c = FillChoice()
                            c.delta = d
                            c.index = choice.index
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
                self._wire_chunk(wire, payload, out)
                if self.finished:
                    return
        except APIError as exc:
            # A bound was exceeded (or a nameless call completed) in this chunk: the chunk is
            # dropped, what came before it stays delivered.
            self.fail(exc)

    def _odd_payload(self, payload: str | bytes | bytearray, out: list[ChatChunk]) -> None:
        text = _as_text(payload)
        stripped = text.strip()
        if stripped == "[DONE]":
            self._flush(out)
            self.done = True
            self.finished = True
            return
        if not stripped:
            return  # a blank data field carries nothing
        try:
            # Invalid UTF-8 inside a string: judge it as the decoder would have decoded it.
            wire = _decode_chunk(text)
        except msgspec.ValidationError as exc:
            self._wrong_shape(text, exc)
            return
        except _JSON_ERRORS as exc:
            self.fail(self._malformed(text, exc))
            return
        self._wire_chunk(wire, text, out)

    def _malformed(self, text: str, exc: BaseException) -> StreamProtocolError:
        return StreamProtocolError(
            f"malformed JSON in a chunk ({_reason(exc)}): {_excerpt(text)}",
            request_id=self.request_id,
        )

    def _wrong_shape(self, text: str, exc: msgspec.ValidationError) -> None:
        # Valid JSON that is not a chunk. It may still be an error report in a shape the typed
        # Struct does not expect (an error object with odd field types, say).
        try:
            value = _decode_any(text)
        except _JSON_ERRORS as malformed:
            # The typed decoder stops at the first mismatch, before seeing the text is not even
            # JSON (a string followed by garbage, say), or before reaching what the untyped one
            # cannot decode (a huge number, deep nesting): it is malformed after all.
            self.fail(self._malformed(text, malformed))
            return
        if isinstance(value, dict):
            err = value.get("error")
            if err is not None:
                self.fail(self._provider_error(err))
                return
            if value.get("object") == "error":
                self.fail(self._provider_error(value))
                return
        self.fail(
            StreamProtocolError(
                f"unexpected JSON in a chunk ({exc}): {_excerpt(text)}",
                request_id=self.request_id,
            )
        )

    def _wire_chunk(
        self, wire: _WireChunk, payload: str | bytes | bytearray, out: list[ChatChunk]
    ) -> None:
        # The general path: any chunk, any number of choices.
        if wire.error is not None:
            self.fail(self._provider_error(wire.error))
            return
        rid = wire.id
        if rid:
            if self.request_id is None:
                self.request_id = self._rid = rid
        else:
            rid = self._rid
        wire_choices = wire.choices
        usage_wire = wire.usage
        if wire_choices is None and usage_wire is None and wire.id is None:
            # Nothing a chunk has: maybe a bare {"object": "error", "message": ...} body (older
            # vLLM), whose fields the typed Struct skipped. Rare, so decode it again, in full:
            # what the typed decode skipped unread (a number too large to convert, say) can
            # fail here, and then the payload is malformed (raised, so feed_payloads fails the
            # stream after the chunks before it).
            text = _as_text(payload)
            try:
                value = _decode_any(text)
            except _JSON_ERRORS as exc:
                raise self._malformed(text, exc) from None
            if isinstance(value, dict) and value.get("object") == "error":
                self.fail(self._provider_error(value))
            return
        choices: list[Choice] = []
        states = self._states
        for wc in wire_choices or ():
            index = wc.index
            state = states.get(index)
            if state is None:
                if len(states) >= self._max_choices:
                    raise StreamProtocolError(
                        f"more than {self._max_choices} choices in one stream",
                        request_id=self.request_id,
                    )
                state = states[index] = _ChoiceState(index)
            role: ChatRole | None = None
            content = reasoning = None
            done: list[tuple[int, FunctionCall]] = []
            delta = wc.delta
            if delta is not None:
                if delta.role is not None:
                    role = cast(ChatRole, delta.role if delta.role in _ROLES else "assistant")
                content = delta.content or None
                reasoning = delta.reasoning_content or delta.reasoning or None
                if delta.reasoning_content:
                    self._keep_reasoning(state, delta.reasoning_content)
                if delta.tool_calls:
                    self._fragments(state, delta.tool_calls, done)
            finish = wc.finish_reason or None
            if finish is not None:
                state.finish_reason = self.finish_reasons[index] = finish
                if state.open is not None:
                    done.append(self._complete(state, state.open))
                    state.open = None
            if role is not None or content or reasoning or done or finish is not None:
                if len(done) > 1:
                    done.sort(key=_first)  # stable: equal indices keep their stream order
                calls = [call for _, call in done]
                items: tuple[ProviderItem, ...] = ()
                if finish is not None and state.reasoning:
                    text = "".join(state.reasoning)
                    state.reasoning = []
                    items = (ProviderItem("openai.chat", "reasoning_content", text),)
                built = make_delta(role, content, calls, reasoning, items)
                choices.append(make_choice(built, index, finish))
        usage = None
        if usage_wire is not None:
            usage = self.usage = _usage(usage_wire)
        if choices or usage is not None:
            out.append(make_chunk(rid, choices, usage))

    # -- tool calls ------------------------------------------------------------------------------

    def _fragments(
        self,
        state: _ChoiceState,
        fragments: list[_WireToolCall],
        done: list[tuple[int, FunctionCall]],
    ) -> None:
        for frag in fragments:
            fn = frag.function
            name = arguments = None
            if fn is not None:
                name = fn.name
                arguments = fn.arguments
            call_id = frag.id or None
            index = frag.index
            cur = state.open
            if (
                cur is None
                or (index is not None and index != cur.index)
                or (call_id is not None and cur.call_id is not None and call_id != cur.call_id)
            ):
                # A new call starts; the open one (if any) is complete.
                if cur is not None:
                    done.append(self._complete(state, cur))
                    state.open = None
                if index is None:
                    index = state.next_index
                if index in state.used and call_id is None:
                    raise StreamProtocolError(
                        f"tool call fragment for call {index} of choice {state.index}, which "
                        "had already completed",
                        request_id=self.request_id,
                    )
                if state.calls >= self._max_tool_calls:
                    raise StreamProtocolError(
                        f"more than {self._max_tool_calls} tool calls in choice {state.index}",
                        request_id=self.request_id,
                    )
                cur = state.open = _OpenCall(index)
                state.calls += 1
                state.used.add(index)
                if index >= state.next_index:
                    state.next_index = index + 1
            if cur.call_id is None and call_id is not None:
                cur.call_id = call_id
            if not cur.name and name:
                cur.name = name
            if arguments:
                cur.size += _utf8_len(arguments)
                if cur.size > self._max_tool_argument_bytes:
                    raise StreamProtocolError(
                        f"tool call {cur.index} of choice {state.index}: arguments exceed "
                        f"{self._max_tool_argument_bytes} bytes",
                        request_id=self.request_id,
                    )
                cur.parts.append(arguments)

    def _keep_reasoning(self, state: _ChoiceState, text: str) -> None:
        state.reasoning_size += _utf8_len(text)
        if state.reasoning_size > DEFAULT_MAX_REASONING_BYTES:
            raise StreamProtocolError(
                f"choice {state.index}: reasoning_content exceeds "
                f"{DEFAULT_MAX_REASONING_BYTES} bytes",
                request_id=self.request_id,
            )
        state.reasoning.append(text)

    def _complete(self, state: _ChoiceState, call: _OpenCall) -> tuple[int, FunctionCall]:
        if not call.name:
            raise StreamProtocolError(
                f"tool call {call.index} of choice {state.index} has no function name",
                request_id=self.request_id,
            )
        call_id = call.call_id or f"call_{self._rid or 'stream'}_{state.index}_{call.index}"
        return call.index, FunctionCall(call_id, call.name, "".join(call.parts))

    def _flush(self, out: list[ChatChunk]) -> None:
        # The stream completed: every open call is complete. One chunk, choices in index order.
        choices: list[Choice] = []
        for index in sorted(self._states):
            state = self._states[index]
            if state.open is not None:
                _, call = self._complete(state, state.open)
                state.open = None
                choices.append(make_choice(make_delta(None, None, [call], None), index, None))
        if choices:
            out.append(make_chunk(self._rid, choices, None))

    # -- errors ----------------------------------------------------------------------------------

    def fail(self, error: APIError) -> None:
        """End the stream with ``error`` (a framing bound, or a problem found here)."""
        # A caught error's traceback holds the frames it passed through, and with them the
        # read, its pieces and the output list: drop it, the error is kept as a value.
        self.error = error.with_traceback(None)
        self.finished = True

    def _provider_error(self, err: object) -> ProviderError:
        message: object = None
        type_: object = None
        code: object = None
        if isinstance(err, _WireError):
            message, type_, code = err.message, err.type, err.code
        elif isinstance(err, dict):
            message, type_, code = err.get("message"), err.get("type"), err.get("code")
            if message is None and isinstance(err.get("error"), str):
                message = err["error"]
        elif isinstance(err, str):
            message = err
        else:
            message = _json_text(err)
        text = message if isinstance(message, str) else None
        if text is None and message is not None:
            text = _json_text(message)
        if not text:
            text = "the server reported an error in the stream"
        # Odd types are shown as JSON (a container's repr could recurse as deep as it nests).
        if type_ is not None and not isinstance(type_, str):
            type_ = _json_text(type_)
        if code is not None and (isinstance(code, bool) or not isinstance(code, str | int)):
            code = _json_text(code)
        return ProviderError(text[:_MAX_MESSAGE], type=type_, code=code, request_id=self.request_id)

    def _error_event(self, data: str) -> ProviderError:
        # ``event: error``: JSON with or without an "error" wrapper, or plain text.
        try:
            value = _decode_any(data)
        except _JSON_ERRORS:
            value = None  # not JSON we can decode: the text is the message
        if isinstance(value, dict):
            inner = value.get("error")
            if inner is not None:
                return self._provider_error(inner)
            if any(key in value for key in ("message", "type", "code")):
                return self._provider_error(value)
        elif isinstance(value, str) and value:
            return self._provider_error(value)
        text = data.strip()
        return self._provider_error(text or "the server sent an error event")


def _first(item: tuple[int, FunctionCall]) -> int:
    return item[0]


def _usage(u: _WireUsage) -> CompletionUsage:
    prompt = u.prompt_tokens or 0
    completion = u.completion_tokens or 0
    total = u.total_tokens if u.total_tokens is not None else prompt + completion
    ptd = u.prompt_tokens_details
    ctd = u.completion_tokens_details
    return CompletionUsage(
        completion_tokens=completion,
        prompt_tokens=prompt,
        total_tokens=total,
        cached_tokens=ptd.cached_tokens if ptd is not None else None,
        reasoning_tokens=ctd.reasoning_tokens if ctd is not None else None,
    )


# -- the bytes level ------------------------------------------------------------------------------


class ChatCompletionParser(EventStreamParser):
    """Bytes of a chat-completions response body -> ``ChatChunk``s.

    The shared :class:`~trio_llmstream._core._parser.EventStreamParser` (``decoder``, the
    framing shortcut, windows) driving a :class:`ChatCompletionAssembler` (``assembler``). Call
    :meth:`feed` once per network read and :meth:`end` when the body ends; the result is the
    same however the body is cut into reads. Neither raises for a problem in the stream,
    including the SSE bounds (``max_line_size``, ``max_event_size``): they return the chunks
    decoded before it and set ``error`` and ``finished``.

    ``finished``, ``error``, ``done``, ``finish_reasons``, ``request_id``, ``usage`` and
    ``progress`` are the assembler's (see :class:`ChatCompletionAssembler`). Whatever the input,
    ``feed`` raises nothing and ``error`` is one of the library's typed errors; a read of any
    size is processed with bounded extra memory. Synchronous and free of I/O: there is no
    cancellation behaviour.
    """

    __slots__ = ()

    assembler: ChatCompletionAssembler

    def __init__(
        self,
        *,
        max_line_size: int = 1 << 20,
        max_event_size: int = 1 << 20,
        max_tool_argument_bytes: int = DEFAULT_MAX_TOOL_ARGUMENT_BYTES,
        max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS,
        max_choices: int = DEFAULT_MAX_CHOICES,
    ) -> None:
        assembler = ChatCompletionAssembler(
            max_tool_argument_bytes=max_tool_argument_bytes,
            max_tool_calls=max_tool_calls,
            max_choices=max_choices,
        )
        super().__init__(assembler, max_line_size=max_line_size, max_event_size=max_event_size)

    @property
    def done(self) -> bool:
        return self.assembler.done

    @property
    def finish_reasons(self) -> dict[int, str]:
        return self.assembler.finish_reasons
