"""Bytes of an event-stream body to ``ChatChunk``s, for any protocol's assembler.

Every SSE-based wire protocol (OpenAI chat completions and Responses, Anthropic Messages,
Gemini with ``alt=sse``) is the same two steps: frame the bytes into server-sent events, then
turn the events into chunks (the protocol's *assembler*). This module joins the two once, with
the rules every protocol shares:

- one error contract (the core's, ``_core/__init__.py``): nothing raises for a problem in the
  stream. The decoder's bounds (line and event sizes) become the assembler's error, reported
  with the read that broke them, after the chunks decoded before the overrun;
- ``progress`` moves exactly when a read completed a data-carrying event (the runtime's idle
  clock; see ``ChunkEmitter.send``);
- output is the same however the body is cut into reads;
- a read of any size costs bounded extra memory.

The assembler
-------------

An assembler implements :class:`EventAssembler`: ``feed_events``, ``end`` and ``fail``, and
exposes ``finished``, ``error``, ``progress``, ``usage`` and ``request_id``. It may also opt
into the framing shortcut below by implementing :class:`PayloadAssembler`'s
``feed_payloads(payloads, out)``: the data of consecutive events of type ``message``, handed
over as the raw bytes between ``data: `` and the block's end (UTF-8, possibly invalid: decoded
with replacement they are exactly the events' ``data``). Such an assembler promises that
``feed_payloads`` does what ``feed_events`` would do with those ``message`` events, and that it
reads neither ``id`` nor ``retry`` (which the shortcut does not track). One without
``feed_payloads`` gets every event from the decoder. Either method is called only with at least
one event or payload, so an assembler that moves ``progress`` once per call of a data-carrying
kind keeps the progress rule on both paths (``tests/core/test_parser.py`` checks it).

The framing shortcut, and why
-----------------------------

The decoder (``_core/_sse.py``) is the reference for the SSE rules and is fast, but it still
builds a ``ServerSentEvent`` and a ``str`` per event, which the assembler then only hands to a
JSON decoder that accepts bytes. LLM streams are almost entirely blocks that are one
``data: {json}`` line, so for an assembler with ``feed_payloads`` the parser first tries a
shortcut that skips both. As long as the stream is LF-only (no CR seen) and did not start with
a possible BOM, it keeps the bytes after the last ``\\n\\n`` (a block boundary) and cuts the
complete blocks before it with one ``split(b"\\n\\ndata: ")``: a piece without LF is the payload
of a block that is one ``data: `` line. Any other piece is taken apart block by block: blank
and single-line comment blocks are dropped (they change nothing, as in the decoder),
single-line ``data:`` blocks still skip the decoder, and every other block is fed to the decoder
whole, at a block boundary, where the decoder's state is exactly what it would have been had it
seen everything (its BOM check settled first by a blank line, a no-op). A CR, a possible BOM,
or an unfinished block longer than the line/event bounds hands all further input to the decoder
for good, from a block boundary, so nothing is lost or seen twice. The tests check that the
shortcut and the plain decoder give identical results on arbitrary input under any chunking.

Memory
------

A read may be any size: httpx inflates a compressed body one network read at a time without
limit. Splitting such a read in one go would build objects proportional to it (a list of 32
million empty pieces for 64 MiB of LF), so a read longer than a *window* (64 KiB, or the smaller
SSE limit if that is smaller) is processed as consecutive reads of one window each, which gives
the same result (the parser is chunking-invariant) and stops at once when the stream finishes.
The same holds on the decoder's path, where each window's events are assembled before the next
window is decoded. So the parser holds at most its pending block (up to the smaller SSE limit,
plus a window), the decoder's bounded state and one window's pieces. Only the returned list
grows with the input, in proportion to the chunks it really holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from .._exceptions import APIError
from .._models import ChatChunk, CompletionUsage
from ._sse import WINDOW, EventStreamDecoder, ServerSentEvent

__all__ = ["AssemblerView", "EventAssembler", "EventStreamParser", "PayloadAssembler"]


class EventAssembler(Protocol):
    """What a protocol's sans-IO assembler offers the shared parser.

    None of its methods raises for a problem in the stream: each returns the chunks produced
    before it and sets ``error`` and ``finished``. Once ``finished``, input is ignored.
    """

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


class PayloadAssembler(EventAssembler, Protocol):
    """An assembler that takes the framing shortcut (see "The assembler" above)."""

    def feed_payloads(
        self, payloads: Iterable[str | bytes | bytearray], out: list[ChatChunk]
    ) -> None:
        """Append to ``out`` the chunks completed by ``message`` events with these data.

        The same as ``feed_events`` on those events; bytes are UTF-8 to be decoded with
        replacement. Sets ``error``/``finished`` instead of raising.
        """
        ...


_FeedPayloads = Callable[[Iterable[bytes | bytearray], list[ChatChunk]], None]


def _no_payloads(payloads: Iterable[bytes | bytearray], out: list[ChatChunk]) -> None:
    # Stands in for feed_payloads when the assembler has none: the shortcut is then off, so
    # this is never called.
    raise AssertionError("the framing shortcut ran for an assembler without feed_payloads")


class AssemblerView:
    """A parser's ``finished``, ``error``, ``progress``, ``usage`` and ``request_id``: its
    assembler's (for every parser that drives one)."""

    __slots__ = ()

    assembler: EventAssembler

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


class EventStreamParser(AssemblerView):
    """Bytes of an event-stream body -> ``ChatChunk``s, through a protocol's assembler.

    Owns an :class:`EventStreamDecoder` (``decoder``) and drives ``assembler``; takes the
    framing shortcut when the assembler has ``feed_payloads``. Call :meth:`feed` once per
    network read and :meth:`end` when the body ends; the result is the same however the body is
    cut into reads. Neither raises for a problem in the stream, including the decoder's own
    bounds (``max_line_size``, ``max_event_size``): they return the chunks decoded before it and
    set ``error`` and ``finished``. The usual loop::

        chunks = parser.feed(data)
        deliver(chunks)
        if parser.error is not None:
            raise parser.error
        if parser.finished:
            stop reading

    ``finished``, ``error``, ``progress``, ``usage`` and ``request_id`` are the assembler's.
    Synchronous and free of I/O: there is no cancellation behaviour.

    A protocol whose blocks take another shape (Anthropic's and Responses' two-line
    ``event:``/``data:`` blocks) keeps this framing (BOM and CR hand-over, windows, the pending
    unfinished block, the cut at the last blank line, the bounds) and supplies only its block
    handler: a subclass overrides :meth:`_blocks` (whole blocks, their final blank line cut off,
    from a block boundary; any block it does not take apart goes to :meth:`_whole_block`) and
    calls :meth:`_use_shortcut` from ``__init__`` with what to do with the data of lone
    ``data: `` blocks (``message`` events; a read that is exactly one such block skips
    ``_blocks``). It must give what the decoder would: the tests check each protocol's parser
    against the plain decoder on arbitrary input under arbitrary chunkings.
    """

    __slots__ = (
        "_fast",
        "_limit",
        "_payloads",
        "_pending",
        "_primed",
        "_started",
        "_window",
        "assembler",
        "decoder",
    )

    def __init__(
        self,
        assembler: EventAssembler,
        *,
        max_line_size: int = 1 << 20,
        max_event_size: int = 1 << 20,
    ) -> None:
        self.decoder = EventStreamDecoder(max_line_size, max_event_size)
        self.assembler = assembler
        payloads: _FeedPayloads | None = getattr(assembler, "feed_payloads", None)
        # The shortcut (see the module essay) is on until something needs the full rules, for
        # an assembler that takes payloads; any other gets every byte through the decoder.
        self._fast = payloads is not None
        self._payloads: _FeedPayloads = payloads if payloads is not None else _no_payloads
        # A block at most this long is within both SSE bounds, whatever it holds.
        self._limit = min(max_line_size, max_event_size)
        # Larger reads are processed a window at a time (see the module essay, "Memory").
        self._window = min(self._limit, WINDOW)
        # Shortcut mode: the unfinished block after the last "\n\n" (a block boundary).
        self._pending = bytearray()
        self._started = False
        # Whether the decoder has been started on this stream (see _prime).
        self._primed = False

    def _use_shortcut(self, payloads: _FeedPayloads) -> None:
        # For a subclass with its own _blocks (see the class docstring): the shortcut is on,
        # and ``payloads`` takes the data of lone "data: " blocks.
        self._fast = True
        self._payloads = payloads

    def feed(self, data: bytes) -> list[ChatChunk]:
        """Process the next read of the body; return the chunks it completes, in order.

        Input after the stream finished is consumed and ignored.
        """
        asm = self.assembler
        if asm.finished or not data:
            return []
        if type(data) is not bytes:
            data = bytes(data)
        out: list[ChatChunk] = []
        if not self._fast:
            self._to_decoder(data, out)
            return out
        if not self._started:
            self._started = True
            if data[0] == 0xEF:
                # Perhaps a BOM: the decoder's business, from the very first byte.
                self._primed = True
                self._leave_fast(data, out)
                return out
        if 13 in data:
            # CR line endings: splitting at LF LF would be wrong.
            self._leave_fast(data, out)
            return out
        pending = self._pending
        if (
            not pending
            and data[:6] == b"data: "
            and data.find(10) == len(data) - 2
            and data[-1] == 10
            and len(data) <= self._limit
        ):
            # The most common read of all: exactly one whole single-line data block (servers
            # flush one event per HTTP chunk, and httpx yields one chunk at a time).
            self._payloads((data[6:-2],), out)
            return out
        size = len(data)
        if size > self._window:
            return self._feed_windows(data)
        # Only the new bytes can hold a new separator (one may straddle the two reads).
        start = len(pending)
        pending += data
        cut = pending.rfind(b"\n\n", start - 1 if start > 1 else 0)
        if cut < 0:
            if start + size > self._limit:
                self._leave_fast(b"", out)
            return out
        # Everything before the last LF LF is whole blocks; the rest is an unfinished one.
        region = pending[:cut]
        del pending[: cut + 2]
        self._blocks(region, out)
        if len(pending) > self._limit and not asm.finished:
            self._leave_fast(b"", out)
        return out

    def end(self) -> list[ChatChunk]:
        """The body ended: an unterminated last block is discarded (the SSE rules), then the
        assembler decides between a proper ending and truncation (its ``end``).

        Calling it again, or after the stream finished, returns [].
        """
        asm = self.assembler
        out: list[ChatChunk] = []
        if asm.finished:
            return out
        if self._fast and self._pending:
            # Let the decoder judge the unfinished block: it discards it, or reports a bound.
            self._leave_fast(b"", out)
            if asm.finished:
                return out
        decoder = self.decoder
        out += asm.feed_events(decoder.end())
        error = decoder.error
        if error is not None:
            if not asm.finished:
                asm.fail(error)
            return out
        if not asm.finished:
            out += asm.end()
        return out

    # -- the shortcut ----------------------------------------------------------------------------

    def _feed_windows(self, data: bytes) -> list[ChatChunk]:
        # A large read, in the shortcut, fed as consecutive reads of one window each: the same
        # result by construction (the parser is chunking-invariant), with every copy and split
        # bounded by the window. Stops as soon as the stream finishes: the rest is ignored.
        out: list[ChatChunk] = []
        window = self._window
        feed = self.feed
        asm = self.assembler
        for start in range(0, len(data), window):
            out += feed(data[start : start + window])
            if asm.finished:
                break
        return out

    def _blocks(self, region: bytearray, out: list[ChatChunk]) -> None:
        # ``region`` is whole blocks (their final LF LF cut off), starting at a block boundary.
        # Splitting at LF LF "data: " cuts out the typical block's payload in one C call: a
        # piece without LF is exactly one block that is a single "data: " line (a block never
        # contains LF LF, so the separator cannot fall inside one). The first piece still has
        # its "data: ". Any piece with an LF in it holds other kinds of blocks and is taken
        # apart by _irregular.
        asm = self.assembler
        payloads = self._payloads
        pieces = region.split(b"\n\ndata: ")
        first = pieces[0]
        small = len(region) <= self._limit - 6  # then no piece can exceed an SSE bound
        batch: list[bytearray] = []
        if first[:6] == b"data: " and 10 not in first and small:
            batch.append(first[6:])
        elif first:
            self._irregular(first, out)
            if asm.finished:
                return
        for i in range(1, len(pieces)):
            piece = pieces[i]
            if 10 not in piece and small:
                batch.append(piece)
                continue
            if batch:
                payloads(batch, out)
                batch = []
                if asm.finished:
                    return
            self._irregular(b"data: " + piece, out)
            if asm.finished:
                return
        if batch:
            payloads(batch, out)

    def _irregular(self, raw: bytes | bytearray, out: list[ChatChunk]) -> None:
        # Whole blocks of any kind, in order. A single-line data block still skips the decoder;
        # blank and single-line comment blocks change nothing and are dropped, as the decoder
        # would; anything else is handed to the decoder whole.
        asm = self.assembler
        payloads = self._payloads
        limit = self._limit
        if type(raw) is not bytes:
            # Split bytes, not a bytearray: the empty pieces of a run of blank lines are then
            # all the one shared b"" (an 8-byte list slot each) instead of a new bytearray each
            # (64 bytes with its slot): a window of LFs costs 4 times its size, not 32.
            raw = bytes(raw)
        for block in raw.split(b"\n\n"):
            if not block:
                continue
            if 10 not in block and len(block) <= limit:
                if block[:6] == b"data: ":
                    payloads((block[6:],), out)
                elif block[:5] == b"data:":
                    payloads((block[5:],), out)
                elif block[:1] == b":":
                    continue
                else:
                    self._whole_block(block, out)
            else:
                self._whole_block(block, out)
            if asm.finished:
                return

    def _split_at_head(
        self, head: bytes, region: bytes, out: list[ChatChunk]
    ) -> list[bytes] | None:
        # For a block handler that cuts its whole blocks at LF LF + ``head`` (the head of the
        # protocol's usual block, ending in "data: "; one C-level split): the pieces between
        # separators, the first included, each without its head. A piece without LF is then
        # exactly the data of one such block. If the region starts with other blocks, they go
        # to _other_blocks first. None: the stream finished meanwhile.
        pieces = region.split(b"\n\n" + head)
        first = pieces[0]
        if first[: len(head)] == head:
            pieces[0] = first[len(head) :]
        else:
            self._other_blocks(first, out)
            if self.assembler.finished:
                return None
            del pieces[0]
        return pieces

    def _head_piece(self, head: bytes, piece: bytes, out: list[ChatChunk]) -> None:
        # For a block handler that cuts its whole blocks at LF LF + ``head`` (the head of the
        # protocol's usual block, ending in "data: "): ``piece`` followed such a separator and
        # is not just one data line within the bounds. Its first block is the head's: its data
        # goes to _head_data if the block is that one line, within the bounds; the blocks after
        # it go to _other_blocks.
        nl = piece.find(10)
        if nl >= 0 and piece[nl : nl + 2] != b"\n\n":
            # More lines in this block (an id, a second data line): the general path.
            self._other_blocks(head + piece, out)
            return
        data, rest = (piece[:nl], piece[nl:]) if nl >= 0 else (piece, b"")
        if len(data) > self._limit - len(head):
            # Perhaps beyond a bound: the decoder decides (and reports it).
            self._whole_block(head + data, out)
        else:
            self._head_data(data, out)
        if rest and not self.assembler.finished:
            self._other_blocks(rest, out)

    def _head_data(self, data: bytes, out: list[ChatChunk]) -> None:
        # The data of one block that is ``head`` and that data (see _head_piece).
        raise NotImplementedError("a block handler using _head_piece supplies _head_data")

    def _other_blocks(self, region: bytes, out: list[ChatChunk]) -> None:
        # Whole blocks of any kind, from a block boundary (see _head_piece).
        raise NotImplementedError("a block handler using _head_piece supplies _other_blocks")

    def _whole_block(self, block: bytes | bytearray, out: list[ChatChunk]) -> None:
        # One whole block of any shape (its final blank line cut off), at a block boundary:
        # the decoder's rules decide.
        self._prime()
        self._to_decoder(block + b"\n\n", out)

    def _prime(self) -> None:
        # The decoder only ever sees input from a block boundary. If it did not see the stream
        # from its first byte, it must not take a later block's first bytes for the stream's
        # BOM: a leading blank line (a no-op by the SSE rules) settles its BOM check.
        if not self._primed:
            self._primed = True
            self.decoder.feed(b"\n")

    def _leave_fast(self, data: bytes, out: list[ChatChunk]) -> None:
        # From here on every byte goes through the decoder, starting at the block boundary
        # where the pending bytes begin.
        self._fast = False
        self._prime()
        pending = self._pending
        self._pending = bytearray()
        if pending:
            # Handed over a window at a time (no copy of the whole): at most the limit plus a
            # window is held here while the decoder builds its own bounded state.
            self._to_decoder(pending, out)
        if data and not self.assembler.finished:
            self._to_decoder(data, out)

    # -- the decoder's path ----------------------------------------------------------------------

    def _to_decoder(self, data: bytes | bytearray, out: list[ChatChunk]) -> None:
        window = self._window
        if len(data) <= window:
            self._decode(data, out)
            return
        # The decoder bounds its own work per window, but not the events a read yields: feed
        # it a window at a time and assemble each window's events at once, so neither the
        # events nor anything after the stream finished are built for the whole read.
        asm = self.assembler
        for start in range(0, len(data), window):
            self._decode(data[start : start + window], out)
            if asm.finished:
                return

    def _decode(self, data: bytes | bytearray, out: list[ChatChunk]) -> None:
        # The decoder reports a broken bound as state, after the events before it: assemble
        # those, then end the stream with the bound (unless the events already ended it).
        decoder = self.decoder
        asm = self.assembler
        events = decoder.feed(data)
        if events:
            out += asm.feed_events(events)
        error = decoder.error
        if error is not None and not asm.finished:
            asm.fail(error)
