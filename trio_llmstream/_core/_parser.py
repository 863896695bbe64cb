"""Bytes of an event-stream body to ``ChatChunk``s, for any protocol's assembler.

Every SSE-based wire protocol (OpenAI Responses, Anthropic Messages, Gemini with ``alt=sse``)
is the same two steps: frame the bytes into server-sent events (``SSEDecoder``), then turn the
events into chunks (the protocol's *assembler*). This module joins the two once, with the
rules every protocol shares:

- one error contract: nothing raises for a problem in the stream. The decoder's bounds
  (line and event sizes) become the assembler's error, reported after the chunks decoded
  before the overrun, with the same read;
- ``progress`` moves exactly when a read completed a data-carrying event (the runtime's
  idle clock; see ``ChunkEmitter.send``);
- output is the same however the body is cut into reads.

An assembler implements :class:`EventAssembler`: ``feed_events``, ``end`` and ``fail``, and
exposes ``finished``, ``error``, ``progress``, ``usage`` and ``request_id``. The OpenAI
chat-completions parser keeps a faster framing shortcut of its own for its one-line blocks
(``_core/_openai.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .._exceptions import APIError, StreamProtocolError
from .._models import ChatChunk, CompletionUsage
from ._sse import ServerSentEvent, SSEDecoder

__all__ = ["EventAssembler", "EventStreamParser"]


class EventAssembler(Protocol):
    """What a protocol's sans-IO assembler offers the shared parser."""

    @property
    def finished(self) -> bool: ...

    @property
    def error(self) -> APIError | None: ...

    @property
    def progress(self) -> int: ...

    @property
    def usage(self) -> CompletionUsage | None: ...

    @property
    def request_id(self) -> str | None: ...

    def feed_events(self, events: Iterable[ServerSentEvent]) -> list[ChatChunk]:
        """The chunks these events complete; sets ``error``/``finished`` instead of raising."""
        ...

    def end(self) -> list[ChatChunk]:
        """The body ended: the last chunks, or ``error`` set (truncation, say)."""
        ...

    def fail(self, error: APIError) -> None:
        """End the stream with ``error`` (a framing bound was exceeded)."""
        ...


class EventStreamParser:
    """An ``SSEDecoder`` feeding an :class:`EventAssembler`.

    Call :meth:`feed` once per network read and :meth:`end` when the body ends; neither
    raises for a problem in the stream: read ``error`` and ``finished`` after each call.
    Synchronous and free of I/O: no cancellation behaviour.
    """

    __slots__ = ("assembler", "decoder")

    def __init__(
        self,
        assembler: EventAssembler,
        *,
        max_line_size: int = 1 << 20,
        max_event_size: int = 1 << 20,
    ) -> None:
        self.assembler = assembler
        self.decoder = SSEDecoder(max_line_size, max_event_size)

    @property
    def finished(self) -> bool:
        return self.assembler.finished

    @property
    def error(self) -> APIError | None:
        return self.assembler.error

    @property
    def progress(self) -> int:
        return self.assembler.progress

    @property
    def usage(self) -> CompletionUsage | None:
        return self.assembler.usage

    @property
    def request_id(self) -> str | None:
        return self.assembler.request_id

    def feed(self, data: bytes) -> list[ChatChunk]:
        """Process the next read of the body; return the chunks it completes, in order.

        Input after the stream finished is ignored.
        """
        asm = self.assembler
        if asm.finished or not data:
            return []
        decoder = self.decoder
        try:
            events = decoder.feed(data)
        except StreamProtocolError as exc:
            asm.fail(exc.with_traceback(None))
            return []
        deferred: StreamProtocolError | None = None
        if events:
            # The decoder returns the events before a bound violation and raises it on the
            # next call: ask at once, so the error is reported with this read.
            try:
                decoder.feed(b"")
            except StreamProtocolError as exc:
                deferred = exc.with_traceback(None)
        out = asm.feed_events(events)
        if deferred is not None and not asm.finished:
            asm.fail(deferred)
        return out

    def end(self) -> list[ChatChunk]:
        """The body ended: an unterminated last block is discarded (the SSE rules), then the
        assembler decides between a proper ending and truncation. Idempotent."""
        asm = self.assembler
        if asm.finished:
            return []
        try:
            events = self.decoder.end()
        except StreamProtocolError as exc:
            asm.fail(exc.with_traceback(None))
            return []
        except RuntimeError:  # end() called again
            events = []
        out = asm.feed_events(events)
        if not asm.finished:
            out.extend(asm.end())
        return out
