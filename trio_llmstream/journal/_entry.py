"""Journal entries and their stable JSON wire form.

A run's journal is a sequence of entries numbered from 1: zero or more *chunk* entries (one
``ChatChunk`` each, in the order the consumer received them) and then exactly one *terminal*
entry (a :class:`RunEnd`: completed, failed with the error described, cancelled or
truncated). Heartbeats are not entries: they would interleave with the chunks, consume
sequence numbers that a resuming reader has to skip, and be trimmed by the per-run cap like
data; a per-run "last activity" timestamp next to the entries says the same thing in one
field.

The wire form is JSON, written and read with msgspec Structs, so that what Redis stores and
what the SSE relay sends is the same documented text, stable across versions (unknown fields
are ignored when decoding; a chunk's fields at their default are left out when encoding, an
end record always has all its fields)::

    chunk  {"id": "req-1", "choices": [{"index": 0, "delta": {"role": "assistant",
            "content": "Hi", "reasoning": "...", "tool_calls": [{"id": "call_1",
            "name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}]},
            "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 2,
            "total_tokens": 7, "cached_tokens": 0, "reasoning_tokens": 0}}
    end    {"status": "failed", "finish_reason": null, "error": {"type": "APIStatusError",
            "message": "HTTP 503: unavailable", "retryable": true, "status_code": 503,
            "cause": null}}
    entry  {"seq": 7, "chunk": {...}}  or  {"seq": 8, "end": {...}}

Tool calls are always complete (the runtime never delivers a fragment), so a call is one
object, not the OpenAI wire's indexed pieces.
"""

from __future__ import annotations

from typing import Literal

import attrs
import msgspec

from .._models import (
    ChatChunk,
    Choice,
    ChoiceDelta,
    CompletionUsage,
    FunctionCall,
    ProviderItem,
    StreamStatus,
)
from ._errors import JournalCorrupted

__all__ = [
    "ABANDONED_ERROR_TYPE",
    "TOO_LONG_ERROR_TYPE",
    "ErrorInfo",
    "JournalEntry",
    "RunEnd",
    "decode_chunk",
    "decode_end",
    "decode_entry",
    "encode_chunk",
    "encode_end",
    "encode_entry",
]

#: ``ErrorInfo.type`` of the terminal entry that seals an abandoned run.
ABANDONED_ERROR_TYPE = "StreamAbandoned"
#: ``ErrorInfo.type`` of the terminal entry that ends a run past the journal's ``max_entries``.
TOO_LONG_ERROR_TYPE = "RunTooLong"
# Error messages are bounded: an upstream server can put anything in an error body.
MAX_ERROR_MESSAGE = 2000

_TERMINAL = (
    StreamStatus.COMPLETED,
    StreamStatus.FAILED,
    StreamStatus.CANCELLED,
    StreamStatus.TRUNCATED,
)


@attrs.frozen
class ErrorInfo:
    """What a failed run's error was, in a form that survives a process boundary.

    ``type`` is the exception's class name (``"StreamInterrupted"``, ``"APIStatusError"``...),
    ``retryable`` its ``retryable`` flag, ``status_code`` the HTTP status if the error (or its
    cause) had one, and ``cause`` the class name of the error's cause, if any.
    """

    type: str
    message: str
    retryable: bool = False
    status_code: int | None = None
    cause: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe ``exc`` (any exception; ``retryable`` is False unless it says otherwise)."""
        cause = getattr(exc, "cause", None) or exc.__cause__
        status = getattr(exc, "status_code", None)
        if status is None and cause is not None:
            status = getattr(cause, "status_code", None)
        message = str(exc) or type(exc).__name__
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[: MAX_ERROR_MESSAGE - 3] + "..."
        return cls(
            type=type(exc).__name__,
            message=message,
            retryable=bool(getattr(exc, "retryable", False)),
            status_code=status if isinstance(status, int) else None,
            cause=type(cause).__name__ if cause is not None else None,
        )


def _check_status(_inst: object, _attr: attrs.Attribute[StreamStatus], value: object) -> None:
    if value not in _TERMINAL:
        raise ValueError(f"a run ends with a terminal status, not {value!r}")


@attrs.frozen
class RunEnd:
    """How a run ended: its one terminal record.

    ``status`` is completed, failed, cancelled or truncated (never running). ``error``
    describes the error of a failed run (and, when known, of a truncated one); a completed or
    cancelled run has none. ``finish_reason`` is the first choice's, when the source sent one.
    """

    status: StreamStatus = attrs.field(validator=_check_status)
    finish_reason: str | None = None
    error: ErrorInfo | None = None

    def __attrs_post_init__(self) -> None:
        if self.status is StreamStatus.FAILED and self.error is None:
            raise ValueError("a failed run's end needs the error (ErrorInfo)")
        if self.status in (StreamStatus.COMPLETED, StreamStatus.CANCELLED) and self.error:
            raise ValueError(f"a {self.status.value} run's end carries no error")

    @property
    def abandoned(self) -> bool:
        """True for the end that a follower wrote to seal a run whose writer went silent."""
        return self.error is not None and self.error.type == ABANDONED_ERROR_TYPE

    @property
    def too_long(self) -> bool:
        """True for the end that the journal wrote when the run exceeded ``max_entries``."""
        return self.error is not None and self.error.type == TOO_LONG_ERROR_TYPE


def _check_seq(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"seq must be an int >= 1, not {value!r}")


@attrs.frozen
class JournalEntry:
    """One entry of a run: a chunk, or the run's terminal record (exactly one of the two).

    ``seq`` numbers a run's entries 1, 2, 3... without gaps; it is the SSE event id and the
    position a reader resumes after.
    """

    seq: int = attrs.field(validator=_check_seq)
    chunk: ChatChunk | None = None
    end: RunEnd | None = None

    def __attrs_post_init__(self) -> None:
        if (self.chunk is None) == (self.end is None):
            raise ValueError("a journal entry holds exactly one of chunk and end")

    @property
    def is_terminal(self) -> bool:
        return self.end is not None


_new = object.__new__
_set = object.__setattr__


def chunk_entry(seq: int, chunk: ChatChunk) -> JournalEntry:
    """``JournalEntry(seq, chunk=chunk)`` without the checks, for a caller whose ``seq`` is
    already known to be an int >= 1 (the recorder's counter, a parsed stream ID): the
    same object at half the cost, which is per chunk on both the writer's and the
    followers' side."""
    entry: JournalEntry = _new(JournalEntry)
    _set(entry, "seq", seq)
    _set(entry, "chunk", chunk)
    _set(entry, "end", None)
    return entry


# -- wire Structs --------------------------------------------------------------------------------


class _Call(msgspec.Struct, omit_defaults=True, gc=False):
    id: str
    name: str
    arguments: str


class _Item(msgspec.Struct, gc=False):
    provider: str
    kind: str
    data: str


class _Delta(msgspec.Struct, omit_defaults=True, gc=False):
    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_Call] = []
    # Optional additions (omitted when empty, so older entries read the same).
    provider_items: list[_Item] = []


class _Choice(msgspec.Struct, omit_defaults=True, gc=False):
    delta: _Delta
    index: int = 0
    finish_reason: str | None = None
    native_finish_reason: str | None = None


class _Usage(msgspec.Struct, omit_defaults=True, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    source: Literal["provider", "provider_partial", "estimated"] = "provider"


class _Chunk(msgspec.Struct, omit_defaults=True, gc=False):
    id: str
    choices: list[_Choice] = []
    usage: _Usage | None = None


class _Error(msgspec.Struct):
    type: str
    message: str
    retryable: bool = False
    status_code: int | None = None
    cause: str | None = None


class _End(msgspec.Struct):
    # Not omit_defaults: an end event always spells out all three fields.
    status: Literal["completed", "failed", "cancelled", "truncated"]
    finish_reason: str | None = None
    error: _Error | None = None


class _Entry(msgspec.Struct, omit_defaults=True):
    seq: int
    chunk: _Chunk | None = None
    end: _End | None = None


_encoder = msgspec.json.Encoder()
_chunk_decoder = msgspec.json.Decoder(_Chunk)
_end_decoder = msgspec.json.Decoder(_End)
_entry_decoder = msgspec.json.Decoder(_Entry)


def _wire_chunk(chunk: ChatChunk) -> _Chunk:
    choices = []
    for choice in chunk.choices:
        d = choice.delta
        calls = [_Call(c.call_id, c.name, c.arguments) for c in d.tool_calls]
        items = [_Item(i.provider, i.kind, i.data) for i in d.provider_items]
        delta = _Delta(d.role, d.content, d.reasoning, calls, items)
        choices.append(
            _Choice(delta, choice.index, choice.finish_reason, choice.native_finish_reason)
        )
    u = chunk.usage
    usage = None
    if u is not None:
        usage = _Usage(
            u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens,
            u.reasoning_tokens, u.source,
        )
    return _Chunk(chunk.request_id, choices, usage)


def _from_wire_chunk(w: _Chunk) -> ChatChunk:
    # The empty cases skip the comprehensions: most chunks carry text only, and a reader
    # catching up decodes a whole page of them.
    choices = []
    for c in w.choices:
        d = c.delta
        calls = [FunctionCall(t.id, t.name, t.arguments) for t in d.tool_calls] if d.tool_calls \
            else []
        items = tuple(ProviderItem(i.provider, i.kind, i.data) for i in d.provider_items) \
            if d.provider_items else ()
        delta = ChoiceDelta(
            role=d.role,  # type: ignore[arg-type]
            content=d.content,
            tool_calls=calls,
            reasoning=d.reasoning,
            provider_items=items,
        )
        choices.append(Choice(delta, c.index, c.finish_reason, c.native_finish_reason))
    u = w.usage
    usage = None
    if u is not None:
        usage = CompletionUsage(
            u.completion_tokens, u.prompt_tokens, u.total_tokens, u.cached_tokens,
            u.reasoning_tokens, u.source,
        )
    return ChatChunk(w.id, choices, usage)


def _wire_end(end: RunEnd) -> _End:
    e = end.error
    error = None if e is None else _Error(e.type, e.message, e.retryable, e.status_code, e.cause)
    return _End(end.status.value, end.finish_reason, error)  # type: ignore[arg-type]


def _from_wire_end(w: _End) -> RunEnd:
    e = w.error
    error = None if e is None else ErrorInfo(e.type, e.message, e.retryable, e.status_code, e.cause)
    try:
        return RunEnd(StreamStatus(w.status), w.finish_reason, error)
    except ValueError as exc:
        raise JournalCorrupted(f"invalid terminal record: {exc}") from exc


def encode_chunk(chunk: ChatChunk) -> bytes:
    """The wire JSON of a chunk (see the module docstring)."""
    choices = chunk.choices
    if len(choices) == 1 and chunk.usage is None:
        # The common chunk (one choice, text or reasoning, no calls, items or usage) written
        # directly: 5x cheaper than building the wire Structs, and the very same bytes (the
        # fields in the Structs' order, defaults left out; a test holds both to it).
        choice = choices[0]
        d = choice.delta
        if (not d.tool_calls and not d.provider_items and choice.index == 0
                and choice.finish_reason is None and choice.native_finish_reason is None):
            enc = _encoder.encode
            if d.role is None and d.reasoning is None and d.content is not None:
                return b'{"id":%s,"choices":[{"delta":{"content":%s}}]}' % (
                    enc(chunk.request_id), enc(d.content))
            if d.role is None and d.content is None and d.reasoning is not None:
                return b'{"id":%s,"choices":[{"delta":{"reasoning":%s}}]}' % (
                    enc(chunk.request_id), enc(d.reasoning))
    return _encoder.encode(_wire_chunk(chunk))


def _encode_chunk_structs(chunk: ChatChunk) -> bytes:
    # The general path alone (tests compare the fast path with it).
    return _encoder.encode(_wire_chunk(chunk))


def decode_chunk(data: bytes | str) -> ChatChunk:
    """The chunk encoded in ``data``. Raises ``JournalCorrupted`` if it is not one."""
    try:
        return _from_wire_chunk(_chunk_decoder.decode(data))
    except msgspec.DecodeError as exc:
        raise JournalCorrupted(f"invalid chunk record: {exc}") from exc


def encode_end(end: RunEnd) -> bytes:
    """The wire JSON of a terminal record."""
    return _encoder.encode(_wire_end(end))


def decode_end(data: bytes | str) -> RunEnd:
    """The terminal record encoded in ``data``. Raises ``JournalCorrupted`` if it is not one."""
    try:
        return _from_wire_end(_end_decoder.decode(data))
    except msgspec.DecodeError as exc:
        raise JournalCorrupted(f"invalid terminal record: {exc}") from exc


def encode_entry(entry: JournalEntry) -> bytes:
    """The wire JSON of an entry: ``{"seq": N, "chunk": ...}`` or ``{"seq": N, "end": ...}``."""
    if entry.chunk is not None:
        return _encoder.encode(_Entry(entry.seq, chunk=_wire_chunk(entry.chunk)))
    assert entry.end is not None
    return _encoder.encode(_Entry(entry.seq, end=_wire_end(entry.end)))


def decode_entry(data: bytes | str) -> JournalEntry:
    """The entry encoded in ``data``. Raises ``JournalCorrupted`` if it is not one."""
    try:
        w = _entry_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise JournalCorrupted(f"invalid journal entry: {exc}") from exc
    try:
        if w.chunk is not None and w.end is None:
            return JournalEntry(w.seq, chunk=_from_wire_chunk(w.chunk))
        if w.end is not None and w.chunk is None:
            return JournalEntry(w.seq, end=_from_wire_end(w.end))
        raise ValueError("an entry holds exactly one of chunk and end")
    except ValueError as exc:
        raise JournalCorrupted(f"invalid journal entry: {exc}") from exc
