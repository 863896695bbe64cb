"""Google Gemini streams (``streamGenerateContent?alt=sse``): SSE frames -> ``ChatChunk``s.

The wire format, and what we make of it
---------------------------------------

With ``alt=sse`` Gemini answers with server-sent events whose ``data`` is one JSON
``GenerateContentResponse`` each. There is no ``[DONE]`` and no event names: a frame holds
``candidates`` (each with an ``index``, ``content.parts`` and, on its last frame, a
``finishReason``), ``usageMetadata`` (cumulative: usually on every frame, each report
replacing the last, never to be summed), ``promptFeedback`` (a ``blockReason`` when the prompt
itself was refused, then with no candidates) and ``responseId``. A part is one of:

- ``{"text": ...}``: answer text, passed on as it comes (``ChoiceDelta.content``);
- ``{"text": ..., "thought": true}``: a thought summary (``ChoiceDelta.reasoning``);
- ``{"functionCall": {"name", "args", "id"?}}``: a *whole* call (Gemini never splits one
  across frames). ``args`` is a JSON object; the call's ``arguments`` is its JSON text exactly
  as the frame carried it (decoded as ``msgspec.Raw``, so key order, spacing and escapes are
  the server's, byte for byte). The call id is the part's ``id`` or, when the server gave none
  (the usual case), ``call_<n>``, ``n`` counting the stream's calls from 0: deterministic, so
  the same bytes always give the same chunks.
- any part may carry a ``thoughtSignature``: an opaque string the model needs back, on the
  same part, in the next request. Each becomes a
  ``ProviderItem("gemini", "thought_signature", data)`` whose ``data`` is JSON naming the part
  (``part``: its position among the candidate's parts, ``type``: ``text``, ``thought``,
  ``function_call`` or ``other``, and for a call its ``name`` and ``call_id``) and the
  ``signature``; the provider puts the signature back on the matching part.

Endings. The stream is complete when the body ends and every candidate seen has a
``finishReason`` (or the prompt was blocked). Reasons map to one vocabulary, the native word
kept in ``Choice.native_finish_reason``: ``STOP`` -> ``stop`` (``tool_calls`` if the candidate
produced calls), ``MAX_TOKENS`` -> ``length``, the blocking reasons (``SAFETY``,
``RECITATION``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``, ``SPII``, ``IMAGE_SAFETY``...,
``LANGUAGE``, ``OTHER``) -> ``content_filter``, ``promptFeedback.blockReason`` ->
``content_filter`` on choice 0. ``MALFORMED_FUNCTION_CALL`` is an error, not an ending: the
model meant to call a tool and produced nothing that can be run, so there is nothing to act
on; it is a retryable ``ProviderError`` (a fresh sample usually succeeds), retried only before
the commit point like any other. ``UNEXPECTED_TOOL_CALL`` (a call to a tool the request did not
declare) is a non-retryable ``ProviderError``. Unknown reasons are ``stop``.

Errors. An error object can come in two ways after some frames (Gemini's 503 "overloaded"): as
a ``data:`` frame ``{"error": {"code", "message", "status"}}`` (also in an array), or as raw
JSON that is not SSE-framed at all, which an SSE decoder silently drops (a line without a known
field name is ignored by the SSE rules). :class:`UnframedText` watches the bytes for such lines
(bounded: the first :data:`MAX_UNFRAMED_BYTES` are kept) and, if the body ends before every
candidate finished, that text is judged: an error object is a ``ProviderError``, anything else
a ``StreamProtocolError`` quoting it. Either way the error is retryable for ``UNAVAILABLE``,
``RESOURCE_EXHAUSTED``, ``INTERNAL`` and ``DEADLINE_EXCEEDED`` (503, 429, 500, 504) and not
for ``INVALID_ARGUMENT``, ``PERMISSION_DENIED`` and the other request errors. A body that ends
with neither is ``StreamTruncatedError``: a cut Gemini stream is never a silent success.

Usage. The last ``usageMetadata`` wins: prompt = ``promptTokenCount`` (cached tokens
included), cached = ``cachedContentTokenCount``, completion = ``candidatesTokenCount +
thoughtsTokenCount``, reasoning = ``thoughtsTokenCount``. Building a usage object per frame
would cost as much as the text, so usage rides on the chunks that finish a candidate (source
``provider``), on a usage-only chunk at the end if a later report changed it, and, when the
stream fails or is cut, on a usage-only chunk before the error (source ``provider_partial``).

Errors never raise from ``feed``: what preceded them is returned, and ``error`` and
``finished`` are set (the one error contract of ``_core/_parser.py``).

Speed. This runs once per token. Gemini's bodies are regular (one ``data:`` line per block,
CRLF or LF throughout), so :class:`GeminiStreamParser` cuts whole blocks out of the bytes
itself and hands the frames' bytes to msgspec, leaving the shared SSE decoder (and the
unframed-text watch) to any body that is not that regular, from the first irregular block on;
both paths give the same output (tested on arbitrary input). The common frame — one candidate
already seen, one plain text or thought part, not finishing — is assembled inline, building
the three public objects through their fill-in twins (``_core/_build.py``); usage objects are
built only on the frames that need them (above).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import msgspec

from .._exceptions import (
    APIError,
    ProviderError,
    StreamProtocolError,
    StreamTruncatedError,
    provider_error_is_retryable,
)
from .._models import (
    ChatChunk,
    ChatRole,
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
    DEFAULT_MAX_CHOICES,
    DEFAULT_MAX_TOOL_ARGUMENT_BYTES,
    DEFAULT_MAX_TOOL_CALLS,
    _excerpt,
    _json_text,
    _reason,
)
from ._parser import AssemblerView, EventStreamParser
from ._sse import WINDOW, ServerSentEvent

__all__ = [
    "MAX_UNFRAMED_BYTES",
    "GeminiAssembler",
    "GeminiStreamParser",
    "UnframedText",
    "gemini_error",
    "gemini_error_is_retryable",
    "map_finish_reason",
]

#: How much text outside the SSE framing is kept to be judged at the end of the body.
MAX_UNFRAMED_BYTES: Final = 64 * 1024
_MAX_MESSAGE = 2000

# google.rpc status names a retry can cure (503, 429, 500, 504) and those it cannot.
_RETRYABLE_STATUSES: Final = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "DEADLINE_EXCEEDED"}
)
_FINAL_STATUSES: Final = frozenset(
    {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "UNIMPLEMENTED",
        "CANCELLED",
        "DATA_LOSS",
    }
)
_CONTENT_FILTER: Final = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "LANGUAGE",
        "OTHER",
    }
)
# Finish reasons that leave nothing to act on: errors, with their retryability.
_ERROR_FINISH: Final = {"MALFORMED_FUNCTION_CALL": True, "UNEXPECTED_TOOL_CALL": False}


# -- wire Structs (camelCase on the wire) ---------------------------------------------------------


class _WireFunctionCall(msgspec.Struct, gc=False):
    name: str | None = None
    # The raw JSON text of the object, byte-exact; empty when absent.
    args: msgspec.Raw = msgspec.Raw(b"")
    id: str | None = None


class _WirePart(msgspec.Struct, gc=False, rename="camel"):
    text: str | None = None
    thought: bool | None = None
    thought_signature: str | None = None
    function_call: _WireFunctionCall | None = None


class _WireContent(msgspec.Struct, gc=False):
    # "role" (always "model") is not decoded: one string less per frame.
    parts: list[_WirePart] | None = None


class _WireCandidate(msgspec.Struct, gc=False, rename="camel"):
    content: _WireContent | None = None
    finish_reason: str | None = None
    finish_message: str | None = None
    index: int | None = None


class _WireUsage(msgspec.Struct, gc=False, rename="camel"):
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None
    thoughts_token_count: int | None = None
    cached_content_token_count: int | None = None
    tool_use_prompt_token_count: int | None = None
    total_token_count: int | None = None


class _WirePromptFeedback(msgspec.Struct, gc=False, rename="camel"):
    block_reason: str | None = None


class _WireFrame(msgspec.Struct, gc=False, rename="camel"):
    candidates: list[_WireCandidate] | None = None
    usage_metadata: _WireUsage | None = None
    prompt_feedback: _WirePromptFeedback | None = None
    response_id: str | None = None
    error: Any = None


_decode_frame: Final = msgspec.json.Decoder(_WireFrame).decode
_decode_any: Final = msgspec.json.Decoder().decode
_encode: Final = msgspec.json.Encoder().encode


# -- classification -------------------------------------------------------------------------------


def map_finish_reason(native: str, produced_calls: bool) -> str:
    """The unified finish reason for a Gemini ``finishReason`` (error reasons excluded)."""
    if native == "MAX_TOKENS":
        return "length"
    if native in _CONTENT_FILTER:
        return "content_filter"
    return "tool_calls" if produced_calls else "stop"


def gemini_error_is_retryable(status: object, code: object, type_: object = None) -> bool:
    """Whether a Gemini error object (``status`` name, numeric ``code``) is worth retrying.

    The status name decides when it is a known one; otherwise the code (503, 429, 5xx) or an
    OpenAI-style ``type`` a gateway may put there (``server_error``, ``overloaded_error``).
    """
    if isinstance(status, str):
        name = status.strip().upper()
        if name in _RETRYABLE_STATUSES:
            return True
        if name in _FINAL_STATUSES:
            return False
    if isinstance(code, bool) or not isinstance(code, int | str):
        code = None
    return provider_error_is_retryable(type_ if isinstance(type_, str) else None, code)


def gemini_error(err: object, *, request_id: str | None = None) -> ProviderError:
    """A ``ProviderError`` from the value of a Gemini ``error`` field (object or string)."""
    message: object = None
    status: object = None
    code: object = None
    kind: object = None
    if isinstance(err, dict):
        message, status, code = err.get("message"), err.get("status"), err.get("code")
        kind = err.get("type")
    elif isinstance(err, str):
        message = err
    else:
        message = _json_text(err)
    text = message if isinstance(message, str) else None
    if text is None and message is not None:
        text = _json_text(message)
    if not text:
        text = "the server reported an error in the stream"
    retryable = gemini_error_is_retryable(status, code, kind)
    if status is None and isinstance(kind, str):
        status = kind
    type_ = status if isinstance(status, str) else (None if status is None else _json_text(status))
    if code is not None and (isinstance(code, bool) or not isinstance(code, int | str)):
        code = _json_text(code)
    return ProviderError(
        text[:_MAX_MESSAGE],
        type=type_,
        code=code,
        retryable=retryable,
        request_id=request_id,
    )


def _error_in(value: object) -> object | None:
    # The "error" of a decoded error document: {"error": ...} or [{"error": ...}].
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        return value.get("error")
    return None


# -- unframed text --------------------------------------------------------------------------------

_FIELD_PREFIXES: Final = (b"data:", b"event:", b"id:", b"retry:")
_BARE_FIELDS: Final = frozenset({b"data", b"event", b"id", b"retry"})
_BOM: Final = b"\xef\xbb\xbf"


class UnframedText:
    """Lines of a body that are not part of the SSE framing, kept (bounded) to judge at the end.

    The SSE rules ignore a line whose field name is unknown, so raw JSON after the frames (an
    error object a server writes without ``data:``) would vanish without trace. This watches the
    same bytes the decoder gets, line by line with the SSE line endings (CR, LF, CRLF, also
    split across reads, and a BOM at the very start), and keeps every line that is not blank,
    not a comment and not a ``data``/``event``/``id``/``retry`` field, up to ``limit`` bytes in
    all (``overflowed`` says more came). The result is the same however the body is cut.

    Speed: it runs on every read, so the usual read (LF or CRLF lines, all ``data:``, blank
    or comments) is judged in one split and a few tests per line, without normalising line
    endings or copying lines; only a read with something else in it (a lone CR, another
    field, unframed text) is normalised and classified line by line.
    """

    __slots__ = ("_after_cr", "_head", "_partial", "kept", "limit", "overflowed", "size")

    def __init__(self, limit: int = MAX_UNFRAMED_BYTES) -> None:
        self.limit = limit
        self.kept: list[bytes] = []
        self.size = 0
        self.overflowed = False
        self._partial = b""
        self._after_cr = False
        # The first bytes of the body, until there are enough to tell a BOM (None after).
        self._head: bytes | None = b""

    def feed(self, data: bytes) -> None:
        if self._head is not None:
            data = self._head + data
            if len(data) < 3 and _BOM.startswith(data):
                self._head = data
                return
            self._head = None
            if data.startswith(_BOM):
                data = data[3:]
        if self._after_cr:
            self._after_cr = False
            if data[:1] == b"\n":
                data = data[1:]  # the LF of a CRLF cut between two reads
        if not data:
            return
        last = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if last < 0:
            self._grow(data)
            return
        complete = data[: last + 1]
        self._after_cr = last == len(data) - 1 and data[last] == 13
        if self._partial:
            complete = self._partial + complete
            self._partial = b""
        self._grow(data[last + 1 :])
        if not _only_framing(complete):
            self._lines(complete)

    def end(self) -> bytes:
        """The kept text, lines joined with LF; an unterminated last line counts too."""
        if self._head:
            head, self._head = self._head, None
            self._grow(head)
        self._head = None
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        return b"\n".join(self.kept)

    def _grow(self, rest: bytes) -> None:
        # An unfinished line: its start is all that classifies it, and the kept text is
        # bounded anyway, so a line longer than the limit is cut (and then overflows).
        if rest:
            room = self.limit + 8 - len(self._partial)
            if room > 0:
                self._partial += rest[:room]

    def _lines(self, text: bytes) -> None:
        # ``text`` ends with a line ending: every line in it is complete.
        if 13 in text:
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        for line in text.split(b"\n"):
            if line:
                self._line(line)

    def _line(self, line: bytes) -> None:
        first = line[0]
        if first == 58:  # ":", a comment
            return
        if first in b"deir" and (line.startswith(_FIELD_PREFIXES) or line in _BARE_FIELDS):
            return
        if self.overflowed:
            return
        self.size += len(line) + 1
        if self.size > self.limit:
            self.overflowed = True
            return
        self.kept.append(line)


def _only_framing(text: bytes) -> bool:
    """True if every line of ``text`` (which ends with a line ending) is blank, a comment or a
    ``data:`` field; False means "look line by line" (it may still be)."""
    # Event-stream lines are long (a frame is one line): splitting at LF and testing each
    # line's start is one C pass and a few tests per line. A CR anywhere but at the end of a
    # piece is a lone CR, which ends a line too: then the careful path decides.
    for line in text.split(b"\n"):
        if line:
            cr = line.find(b"\r")
            if cr >= 0 and cr != len(line) - 1:
                return False
            first = line[0]
            if first != 13 and first != 58 and line[:5] != b"data:":
                return False
    return True


# -- assembly -------------------------------------------------------------------------------------


class _Candidate:
    __slots__ = ("calls", "finish", "index", "parts", "role_sent")

    def __init__(self, index: int) -> None:
        self.index = index
        self.calls = 0
        self.parts = 0
        self.finish: str | None = None
        self.role_sent = False


class GeminiAssembler:
    """Turns the SSE events of one Gemini stream into ``ChatChunk``s (see the module essay).

    Implements the ``EventAssembler`` protocol of ``_core/_parser.py``: :meth:`feed_events`
    as events arrive, :meth:`end` when the body ends; neither raises for a problem in the
    stream, each returns the chunks before it and sets ``error`` and ``finished``.

    Attributes: ``finished``, ``error``, ``progress`` (grows with every dispatched event),
    ``request_id`` (the first ``responseId``), ``usage`` (the last report), ``finish_reasons``
    (``{candidate index: native finishReason}``) and ``unframed_tail`` (set by
    :class:`GeminiStreamParser` before :meth:`end`: text outside the SSE framing, judged if the
    stream did not finish). Synchronous and free of I/O: no cancellation behaviour.
    """

    __slots__ = (
        "_calls",
        "_cands",
        "_emitted_usage",
        "_max_choices",
        "_max_tool_argument_bytes",
        "_max_tool_calls",
        "_rid",
        "_usage_wire",
        "error",
        "finish_reasons",
        "finished",
        "progress",
        "request_id",
        "unframed_overflowed",
        "unframed_tail",
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
        self._cands: dict[int, _Candidate] = {}
        self._calls = 0
        self._rid = ""
        self._usage_wire: _WireUsage | None = None
        self._emitted_usage: _WireUsage | None = None
        self.finished = False
        self.error: APIError | None = None
        self.progress = 0
        self.request_id: str | None = None
        self.finish_reasons: dict[int, str] = {}
        self.unframed_tail = b""
        self.unframed_overflowed = False

    @property
    def usage(self) -> CompletionUsage | None:
        """The last usage the server reported (``provider_partial`` once the stream failed)."""
        if self._usage_wire is None:
            return None
        return _usage(self._usage_wire, "provider" if self.error is None else "provider_partial")

    # -- the EventAssembler protocol --------------------------------------------------------------

    def feed_events(self, events: Iterable[ServerSentEvent]) -> list[ChatChunk]:
        out: list[ChatChunk] = []
        if self.finished:
            return out
        batch: list[str | bytes] = []
        for event in events:
            kind = event.event
            if kind == "message":
                batch.append(event.data)
                continue
            if batch:
                self._frames(batch, out)
                batch = []
                if self.finished:
                    return out
            self.progress += 1
            if kind == "error":
                self._error_event(event.data, out)
                return out
            # Gemini names no events; other types are not part of the protocol.
        if batch:
            self._frames(batch, out)
        return out

    def end(self) -> list[ChatChunk]:
        """The body ended: complete if every candidate finished, else the unframed text's error,
        else ``StreamTruncatedError``. Idempotent."""
        out: list[ChatChunk] = []
        if self.finished:
            return out
        cands = self._cands
        if cands and all(c.finish is not None for c in cands.values()):
            last = self._usage_wire
            if last is not None and last is not self._emitted_usage:
                out.append(make_chunk(self._rid, [], _usage(last, "provider")))
            self.finished = True
            return out
        if self.unframed_tail or self.unframed_overflowed:
            self._fail_partial(self._tail_error(), out)
            return out
        self._fail_partial(
            StreamTruncatedError(
                "the Gemini stream ended before a finishReason (no candidate finished)"
                if not cands
                else "the Gemini stream ended before every candidate had a finishReason",
                request_id=self.request_id,
            ),
            out,
        )
        return out

    def fail(self, error: APIError) -> None:
        self._fail(error)

    # -- frames -----------------------------------------------------------------------------------

    def _frame(self, data: str | bytes, out: list[ChatChunk]) -> None:
        # ``data`` is an event's text, or its bytes from the parser's shortcut.
        try:
            wire = _decode_frame(data)
        except _JSON_ERRORS as exc:
            if type(data) is bytes:
                # Judged as the decoder would have decoded it (invalid UTF-8 replaced).
                self._frame(data.decode("utf-8", "replace"), out)
                return
            assert isinstance(data, str)
            if isinstance(exc, msgspec.ValidationError):
                self._odd(data, exc, out)
                return
            if not data.strip():
                return  # an empty data field carries nothing
            self._fail_partial(self._malformed(data, exc), out)
            return
        self._wire(wire, out)

    def _frames(self, payloads: Sequence[str | bytes], out: list[ChatChunk]) -> None:
        # Frames, as events' text or as bytes from the parser's shortcut. The common frame (one
        # candidate already seen, not finishing, one plain text or thought part, the stream's
        # response id) is handled inline with everything it needs in locals; any other goes
        # the general way. Runs once per token: every lookup saved here shows in the benchmark.
        decode = _decode_frame
        find = self._cands.get
        append = out.append
        shared_rid = self._rid
        for payload in payloads:
            self.progress += 1
            try:
                wire = decode(payload)
            except _JSON_ERRORS:
                self._frame(payload, out)
                if self.finished:
                    return
                shared_rid = self._rid
                continue
            cands = wire.candidates
            rid = wire.response_id
            if (
                cands is not None
                and len(cands) == 1
                and wire.error is None
                and (rid is None or rid == shared_rid)
                and shared_rid
            ):
                wc = cands[0]
                state = find(wc.index or 0)
                body = wc.content
                if state is not None and wc.finish_reason is None and body is not None:
                    parts = body.parts
                    if parts is not None and len(parts) == 1:
                        part = parts[0]
                        text = part.text
                        if (
                            text is not None
                            and part.function_call is None
                            and part.thought_signature is None
                        ):
                            usage = wire.usage_metadata
                            if usage is not None:
                                self._usage_wire = usage
                            state.parts += 1
                            if text:
                                d = FillDelta()
                                d.role = None
                                if part.thought:
                                    d.content = None
                                    d.reasoning = text
                                else:
                                    d.content = text
                                    d.reasoning = None
                                d.tool_calls = NO_CALLS
                                d.provider_items = ()
                                d.__class__ = ChoiceDelta
                                c = FillChoice()
                                c.delta = d
                                c.index = state.index
                                c.finish_reason = None
                                c.native_finish_reason = None
                                c.__class__ = Choice
                                k = FillChunk()
                                k.request_id = shared_rid
                                k.choices = [c]
                                k.usage = None
                                k.__class__ = ChatChunk
                                append(k)
                            continue
            self._wire(wire, out)
            if self.finished:
                return
            shared_rid = self._rid

    def _wire(self, wire: _WireFrame, out: list[ChatChunk]) -> None:
        if wire.error is not None:
            self._fail_partial(gemini_error(wire.error, request_id=self.request_id), out)
            return
        rid = wire.response_id
        if rid:
            if self.request_id is None:
                self.request_id = self._rid = rid
            elif rid == self._rid:
                rid = self._rid  # one shared string for the stream's chunks
        else:
            rid = self._rid
        if wire.usage_metadata is not None:
            self._usage_wire = wire.usage_metadata
        try:
            self._candidates(wire, rid, out)
        except APIError as exc:
            # A bound or a nameless call in this frame: the frame is dropped, what came before
            # it stays delivered.
            self._fail_partial(exc, out)

    def _candidates(self, wire: _WireFrame, rid: str, out: list[ChatChunk]) -> None:
        choices: list[Choice] = []
        finishing = False
        failure: APIError | None = None
        cands = self._cands
        wire_cands = wire.candidates
        if not wire_cands:
            feedback = wire.prompt_feedback
            if feedback is not None and feedback.block_reason:
                # The prompt was refused: nothing will be generated; one filtered ending.
                state = cands.get(0) or self._state(0)
                if state.finish is None:
                    state.finish = self.finish_reasons[0] = feedback.block_reason
                    first: ChatRole | None = None if state.role_sent else "assistant"
                    state.role_sent = True
                    delta = make_delta(first, None, [], None)
                    choices.append(
                        make_choice(delta, 0, "content_filter", feedback.block_reason)
                    )
                    finishing = True
        for wc in wire_cands or ():
            index = wc.index or 0
            found = cands.get(index)
            state = found if found is not None else self._state(index)
            content: str | None = None
            reasoning: str | None = None
            calls: list[FunctionCall] = []
            items: list[ProviderItem] = []
            body = wc.content
            parts = body.parts if body is not None else None
            if parts:
                texts: list[str] = []
                thoughts: list[str] = []
                for part in parts:
                    position = state.parts
                    state.parts += 1
                    call: FunctionCall | None = None
                    fc = part.function_call
                    if fc is not None:
                        call = self._call(state, fc)
                        calls.append(call)
                        kind = "function_call"
                    elif part.text is not None:
                        if part.thought:
                            thoughts.append(part.text)
                            kind = "thought"
                        else:
                            texts.append(part.text)
                            kind = "text"
                    else:
                        kind = "other"
                    if part.thought_signature is not None:
                        items.append(_signature(position, kind, call, part.thought_signature))
                content = "".join(texts) or None
                reasoning = "".join(thoughts) or None
            native = wc.finish_reason or None
            unified: str | None = None
            if native is not None and state.finish is None:
                state.finish = self.finish_reasons[index] = native
                finishing = True
                if native in _ERROR_FINISH:
                    failure = ProviderError(
                        (wc.finish_message or f"the model stopped with finishReason {native}")[
                            :_MAX_MESSAGE
                        ],
                        type=native,
                        retryable=_ERROR_FINISH[native],
                        request_id=self.request_id,
                    )
                else:
                    unified = map_finish_reason(native, state.calls > 0)
            else:
                native = None
            role: ChatRole | None = None
            if not state.role_sent:
                state.role_sent = True
                role = "assistant"
            if role or content or reasoning or calls or items or unified:
                delta = make_delta(role, content, calls, reasoning, items)
                choices.append(make_choice(delta, index, unified, native if unified else None))
        usage = None
        if finishing and self._usage_wire is not None and failure is None:
            usage = _usage(self._usage_wire, "provider")
            self._emitted_usage = self._usage_wire
        if choices or usage is not None:
            out.append(make_chunk(rid, choices, usage))
        if failure is not None:
            self._fail_partial(failure, out)

    def _state(self, index: int) -> _Candidate:
        cands = self._cands
        if len(cands) >= self._max_choices:
            raise StreamProtocolError(
                f"more than {self._max_choices} candidates in one stream",
                request_id=self.request_id,
            )
        state = cands[index] = _Candidate(index)
        return state

    def _call(self, state: _Candidate, fc: _WireFunctionCall) -> FunctionCall:
        if not fc.name:
            raise StreamProtocolError(
                f"a functionCall of candidate {state.index} has no name",
                request_id=self.request_id,
            )
        if state.calls >= self._max_tool_calls:
            raise StreamProtocolError(
                f"more than {self._max_tool_calls} function calls in candidate {state.index}",
                request_id=self.request_id,
            )
        raw = bytes(fc.args)
        if len(raw) > self._max_tool_argument_bytes:
            raise StreamProtocolError(
                f"function call {fc.name!r} of candidate {state.index}: args exceed "
                f"{self._max_tool_argument_bytes} bytes",
                request_id=self.request_id,
            )
        # Raw holds exactly the JSON text the frame carried (valid UTF-8: it was decoded).
        arguments = raw.decode() if raw and raw != b"null" else "{}"
        state.calls += 1
        call_id = fc.id or f"call_{self._calls}"
        self._calls += 1
        return FunctionCall(call_id, fc.name, arguments)

    # -- odd payloads and errors ------------------------------------------------------------------

    def _odd(self, data: str, exc: msgspec.ValidationError, out: list[ChatChunk]) -> None:
        # Valid JSON that is not a frame: an error document in another shape (an array), or
        # a frame whose fields have the wrong types.
        try:
            value = _decode_any(data)
        except _JSON_ERRORS as malformed:
            self._fail_partial(self._malformed(data, malformed), out)
            return
        err = _error_in(value)
        if err is not None:
            self._fail_partial(gemini_error(err, request_id=self.request_id), out)
            return
        self._fail_partial(
            StreamProtocolError(
                f"unexpected JSON in a Gemini frame ({exc}): {_excerpt(data)}",
                request_id=self.request_id,
            ),
            out,
        )

    def _error_event(self, data: str, out: list[ChatChunk]) -> None:
        try:
            value = _decode_any(data)
        except _JSON_ERRORS:
            value = None
        err = _error_in(value)
        if err is None:
            err = value if isinstance(value, dict) else (data.strip() or "an error event")
        self._fail_partial(gemini_error(err, request_id=self.request_id), out)

    def _tail_error(self) -> APIError:
        if self.unframed_overflowed:
            return StreamProtocolError(
                f"the body holds more than {MAX_UNFRAMED_BYTES} bytes of text that is not an "
                f"event stream: {_excerpt(self.unframed_tail.decode('utf-8', 'replace'))}",
                request_id=self.request_id,
            )
        text = self.unframed_tail.decode("utf-8", "replace")
        try:
            value = _decode_any(text)
        except _JSON_ERRORS:
            value = None
        err = _error_in(value)
        if err is not None:
            return gemini_error(err, request_id=self.request_id)
        return StreamProtocolError(
            f"the body ended with text that is not an event stream: {_excerpt(text)}",
            request_id=self.request_id,
        )

    def _malformed(self, data: str, exc: BaseException) -> StreamProtocolError:
        return StreamProtocolError(
            f"malformed JSON in a Gemini frame ({_reason(exc)}): {_excerpt(data)}",
            request_id=self.request_id,
        )

    def _fail_partial(self, error: APIError, out: list[ChatChunk]) -> None:
        # The stream fails: the last usage report goes out first, marked partial, so a failed
        # attempt's tokens are still counted.
        if self._usage_wire is not None:
            out.append(make_chunk(self._rid, [], _usage(self._usage_wire, "provider_partial")))
        self._fail(error)

    def _fail(self, error: APIError) -> None:
        # No traceback: it would keep the frames, and with them the read, alive.
        self.error = error.with_traceback(None)
        self.finished = True


def _signature(position: int, kind: str, call: FunctionCall | None, signature: str) -> ProviderItem:
    info: dict[str, object] = {"part": position, "type": kind}
    if call is not None:
        info["name"] = call.name
        info["call_id"] = call.call_id
    info["signature"] = signature
    return ProviderItem("gemini", "thought_signature", _encode(info).decode())


def _usage(u: _WireUsage, source: UsageSource) -> CompletionUsage:
    prompt = u.prompt_token_count or 0
    thoughts = u.thoughts_token_count
    completion = (u.candidates_token_count or 0) + (thoughts or 0)
    total = u.total_token_count if u.total_token_count is not None else prompt + completion
    return CompletionUsage(
        completion_tokens=completion,
        prompt_tokens=prompt,
        total_tokens=total,
        cached_tokens=u.cached_content_token_count,
        reasoning_tokens=thoughts,
        source=source,
    )


# -- the bytes level ------------------------------------------------------------------------------


class GeminiStreamParser(AssemblerView):
    """Bytes of a Gemini ``alt=sse`` body -> ``ChatChunk``s.

    The shared :class:`EventStreamParser` (SSE decoder + :class:`GeminiAssembler`) plus an
    :class:`UnframedText` watching the same bytes for a raw JSON error tail. Call :meth:`feed`
    once per read and :meth:`end` when the body ends; neither raises for a problem in the
    stream (read ``error`` and ``finished``); the output is the same however the body is cut.
    A read larger than a window is processed a window at a time, so a huge read costs bounded
    extra memory. Synchronous and free of I/O: no cancellation behaviour.

    The shortcut. Gemini's bodies are perfectly regular: every block is one ``data: <json>``
    line and a blank line, all with CRLF (Google's servers) or all with LF. While that holds,
    the parser keeps the bytes after the last block boundary and cuts the whole blocks before it
    with one ``split`` on the stream's separator (``\\r\\n\\r\\n`` or ``\\n\\n``, chosen by
    the first line ending); each piece that is ``data: `` plus a line without CR or LF is a
    frame, decoded by msgspec straight from the bytes: no event objects, no strings, no line
    work, and no unframed text to watch (every line is a data line). The first piece that is
    anything else (another field, a comment, a stray line ending, unframed text), a possible
    BOM at the start, or an unfinished block beyond the SSE bounds hands everything from that
    block boundary on to the general path (decoder + :class:`UnframedText`) for good, where the
    state is exactly what it would have been had the general path seen everything. The tests
    check that both paths give the same result on arbitrary input under any chunking.
    """

    __slots__ = (
        "_fast",
        "_limit",
        "_pending",
        "_separator",
        "_started",
        "assembler",
        "events",
        "unframed",
    )

    assembler: GeminiAssembler

    def __init__(
        self,
        *,
        max_line_size: int = 1 << 20,
        max_event_size: int = 1 << 20,
        max_tool_argument_bytes: int = DEFAULT_MAX_TOOL_ARGUMENT_BYTES,
        max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS,
        max_choices: int = DEFAULT_MAX_CHOICES,
        max_unframed_bytes: int = MAX_UNFRAMED_BYTES,
        shortcut: bool = True,
    ) -> None:
        self.assembler = GeminiAssembler(
            max_tool_argument_bytes=max_tool_argument_bytes,
            max_tool_calls=max_tool_calls,
            max_choices=max_choices,
        )
        self.events = EventStreamParser(
            self.assembler, max_line_size=max_line_size, max_event_size=max_event_size
        )
        self.unframed = UnframedText(max_unframed_bytes)
        self._fast = shortcut
        self._started = False
        self._separator = b""  # the block separator, once the first line ending is seen
        self._pending = b""  # shortcut: the bytes after the last block boundary
        # A piece at most this long is within both SSE bounds.
        self._limit = min(max_line_size, max_event_size)

    @property
    def finish_reasons(self) -> dict[int, str]:
        return self.assembler.finish_reasons

    def feed(self, data: bytes) -> list[ChatChunk]:
        """Process the next read; return the chunks it completes. Ignored once finished."""
        asm = self.assembler
        if asm.finished or not data:
            return []
        if type(data) is not bytes:
            data = bytes(data)
        out: list[ChatChunk] = []
        if len(data) <= WINDOW:
            self._feed(data, out)
            return out
        view = memoryview(data)
        for start in range(0, len(data), WINDOW):
            self._feed(bytes(view[start : start + WINDOW]), out)
            if asm.finished:
                break
        return out

    def end(self) -> list[ChatChunk]:
        """The body ended: finish the stream (see :meth:`GeminiAssembler.end`). Idempotent."""
        asm = self.assembler
        if asm.finished:
            return []
        out: list[ChatChunk] = []
        if self._fast:
            self._leave_fast(b"", out)
            if asm.finished:
                return out
        asm.unframed_tail = self.unframed.end()
        asm.unframed_overflowed = self.unframed.overflowed
        out += self.events.end()
        return out

    # -- internals --------------------------------------------------------------------------------

    def _feed(self, data: bytes, out: list[ChatChunk]) -> None:
        if not self._fast:
            self._general(data, out)
            return
        if not self._started:
            self._started = True
            if data[0] == 0xEF:
                self._leave_fast(data, out, at_start=True)  # perhaps a BOM: the decoder's
                return
        separator = self._separator
        pending = self._pending + data if self._pending else data
        if not separator:
            lf = pending.find(b"\n")
            if lf < 0:
                self._pending = pending
                if len(pending) > self._limit:
                    self._leave_fast(b"", out)
                return
            separator = self._separator = b"\r\n\r\n" if pending[lf - 1 : lf] == b"\r" else b"\n\n"
        # Only the new bytes can complete a separator (one may straddle the two reads).
        start = len(pending) - len(data) - len(separator) + 1
        cut = pending.rfind(separator, start if start > 0 else 0)
        if cut < 0:
            self._pending = pending
            if len(pending) > self._limit:
                self._leave_fast(b"", out)
            return
        rest = pending[cut + len(separator) :]
        # Splitting at the separator plus "data: " cuts out every frame's JSON in one C call: a
        # piece without CR or LF is exactly one block that is a single data line. One test on
        # the joined pieces settles it for the whole read (and one on their sizes, when the
        # read could hold one beyond the bounds).
        pieces = pending[:cut].split(separator + b"data: ")
        asm = self.assembler
        room = self._limit - 6
        first = pieces[0]
        bad = 0  # the first piece that is not a lone data line ("data: " cut off)
        if first[:6] == b"data: ":
            pieces[0] = first[6:]
            joined = b"".join(pieces)
            if 13 in joined or 10 in joined or (cut > room and max(map(len, pieces)) > room):
                while bad < len(pieces):
                    piece = pieces[bad]
                    if 13 in piece or 10 in piece or len(piece) > room:
                        break
                    bad += 1
            else:
                bad = len(pieces)
            if bad:
                asm._frames(pieces[:bad] if bad < len(pieces) else pieces, out)
                if asm.finished:
                    self._pending = b""
                    return
        if bad < len(pieces):
            # Anything else: the general path from this block boundary on, for good.
            head = separator + b"data: "
            remainder = head.join(pieces[bad:]) + separator + rest
            # (The first piece lost its "data: " only if it was one.)
            self._pending = b"data: " + remainder if first is not pieces[0] else remainder
            self._leave_fast(b"", out)
            return
        self._pending = rest
        if len(rest) > self._limit:
            self._leave_fast(b"", out)

    def _leave_fast(self, data: bytes, out: list[ChatChunk], *, at_start: bool = False) -> None:
        self._fast = False
        if not at_start:
            # The general path starts at a block boundary, not at the stream's start: a
            # leading blank line (a no-op by the SSE rules) settles the decoder's BOM check,
            # and the unframed watch has no BOM to look for either.
            self.events.decoder.feed(b"\n")
            self.unframed._head = None
        pending, self._pending = self._pending, b""
        if pending:
            self._general(pending, out)
        if data and not self.assembler.finished:
            self._general(data, out)

    def _general(self, data: bytes, out: list[ChatChunk]) -> None:
        if len(data) > WINDOW:
            view = memoryview(data)
            for start in range(0, len(data), WINDOW):
                self._general(bytes(view[start : start + WINDOW]), out)
                if self.assembler.finished:
                    return
            return
        self.unframed.feed(data)
        out += self.events.feed(data)
