"""Server-sent events: bytes -> ServerSentEvent, by the WHATWG event-stream rules.

How the framing works, and why
------------------------------

The HTML standard ("9.2.6 Interpreting an event stream") defines an event stream as UTF-8 text
cut into lines by CRLF, LF or CR. Each line is a comment (``:`` first), a field (``name:
value``, one leading space of the value dropped; no colon means an empty value) or blank. A
blank line ends a *block*: if the block had a ``data`` line, one event is dispatched with the
data lines joined by "\\n". Whatever is unterminated when the stream ends is discarded.

The obvious implementation decodes bytes to text, splits lines and applies the field rules line
by line. It is correct, but it spends its time in the interpreter: an LLM stream is blocks of
``data: {json}\\n\\n``, a few hundred bytes each, so per event it pays for two lines of
Python-level work on top of building the event. This decoder keeps those rules as its general
path (``_lines``, the reference semantics) and adds a shortcut that reaches the same result with
the framing done on bytes, in C:

1. **Bytes, not text.** Every byte that matters to framing (CR, LF, ``:``, space, NUL) is ASCII,
   and an ASCII byte is never part of a UTF-8 sequence, valid or not: the decoder ends an invalid
   sequence at the first ASCII byte. So decoding each value on its own gives exactly the text
   that decoding the whole stream and then splitting it would give, and a character cut in two by
   a network read needs no care: it is decoded only once its line is complete. Invalid sequences
   become U+FFFD, as in the spec's "UTF-8 decode".

2. **One line ending.** A read containing a CR has CRLF and CR rewritten to LF (C-level
   ``replace``; most streams have no CR, and ``in`` finds that out at memchr speed). A CR ending
   a read is a line end by itself and is treated as one at once, so no event waits for the next
   read; we only remember to drop an LF that begins the next read, the second half of a split
   CRLF. A byte-order mark is stripped at the start of the stream only; while fewer than three
   bytes have arrived and they could still be one, they are held back.

3. **Blocks in C.** After normalisation, ``\\n\\ndata: `` is a line end, a blank line (which ends
   any block, so the state after it is clean) and the start of a data line. ``bytes.split`` on
   it cuts a read in one C call; a piece between two separators is a whole block beginning
   ``data: ``, and if it holds no other LF it is exactly one data line: the piece *is* the event's
   data. One C-level test on the joined pieces checks that none holds an LF; then each event
   costs one decode and one allocation. The first piece ends whatever block was open when the
   read began: usually the rest of a data line cut by the previous read, which joined to its
   start is one more such piece, provided nothing else of its block came before. The last piece
   starts the unfinished block. Reads without the separator, and pieces that are not a lone data
   line, go line by line through the general rules.

4. **Never rescan, and stay bounded.** The pending bytes are the unterminated current line, and
   by construction they hold no LF: that invariant is the scan offset. A new read is searched
   from its own first byte only, so a 1 MiB line fed one byte at a time costs linear time, not
   quadratic. Complete lines are applied to the block's state at once, so a block costs its data,
   not its raw bytes. The pending line may not grow past ``max_line_size`` bytes, nor a block's
   data past ``max_event_size`` bytes; either raises ``StreamProtocolError``, checked before the
   bytes are copied. A read larger than a *window* (64 KiB, or the smaller limit if that is
   smaller) is processed one window at a time, exactly as if it had arrived in smaller reads
   (the result never depends on the chunking); so nothing inside one window can break a limit,
   the shortcut needs no per-event size checks, and the objects a window is split into (lines,
   pieces, a CR-rewritten copy) are bounded by the window, not by the read. Whatever a server
   sends -- blank lines, CRs, a giant comment or data line -- the decoder holds at most the
   limits plus a few windows' worth; only the returned events grow with the input, in
   proportion to the events it really contains.

Choices where the spec leaves room, or where the event type differs from the browser API:

- ``retry``: only all-ASCII-digit values count (``+5``, ``5.0`` and an empty value are ignored).
  The last valid value in a block becomes that block's event's ``retry``; events from blocks
  without one have ``retry=None``. A block without data dispatches nothing, so its value is seen
  only through ``SSEDecoder.retry``, the stream's reconnection time as the spec defines it.
  Values with more than 640 significant digits are ignored: that is Python's lowest allowed
  int-conversion limit, and no reconnection time needs 10**640 ms.
- ``ServerSentEvent.id`` is the stream's last event id at dispatch: it persists across events,
  an ``id`` field with an empty value resets it to "", and one whose value contains NUL is
  ignored.
- Sizes count the bytes of a line without its line ending, and of an event's data as
  dispatched (lines joined by "\\n").
- When a limit is broken in a read that also completed events, ``feed`` returns those events and
  the next call (``feed`` or ``end``) raises: the consumer gets every event that preceded the
  violation, whatever the chunking, then the error.

Errors: two doors to one decoder
--------------------------------

The core's rule (``_core/__init__.py``) is that a problem in the stream is *state*, not an
exception: :class:`EventStreamDecoder`, which the core's parser uses, never raises for one; a
broken limit ends the decoding, ``feed`` returns the events completed before it, and ``error``
holds the ``StreamProtocolError`` (without a traceback) from that very call on, so the caller
learns of it with the read that caused it. :class:`SSEDecoder`, the public decoder
(``trio_llmstream.sse``), is the same decoder with the error raised, as it always was: on the
call that broke the limit if it completed no events, otherwise on the next call. The two differ
only where a limit is broken, never on the path every event takes. Misuse is not a stream
problem and raises in both: bad limits (``ValueError``), ``feed`` after ``end`` (``RuntimeError``).
"""

from __future__ import annotations

from typing import ClassVar, Final, cast

import attrs

from .._exceptions import StreamProtocolError

__all__ = ["EventStreamDecoder", "SSEDecoder", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"
_SEPARATOR = b"\n\ndata: "
#: The most bytes of one read processed at a time (smaller if a limit is). Splitting a window
#: into lines or events makes objects proportional to its size (up to ~10x for a window of
#: one- or two-byte lines), so this, not the size of a read, bounds the transient memory. 64 KiB
#: is a large socket read: real streams rarely need more than one window per read.
WINDOW: Final = 1 << 16
# A block's data lines are kept as a list up to about this many, then folded into one buffer;
# checked once the block's data passes _SIZE_CHECK bytes (so up to 8 Ki lines before the first
# check: 64 KiB of list at most).
_MAX_PIECES = 1024
_SIZE_CHECK = 8192
# Python's lowest allowed int/str conversion limit (sys.set_int_max_str_digits): a digit string
# this long converts whatever the interpreter's setting.
_MAX_RETRY_DIGITS = 640


@attrs.frozen
class ServerSentEvent:
    """One dispatched event.

    ``event`` is the type ("message" unless an ``event:`` field set one), ``data`` the data lines
    joined with "\\n", ``id`` the last event id seen so far in the stream ("" when none was set)
    and ``retry`` the reconnection time in milliseconds if this block carried a valid one.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None


class _EventBuilder(ServerSentEvent):
    # A mutable twin of ServerSentEvent (the pattern of _core/_build.py): a subclass adding no
    # slots, so the same layout, with object's plain __init__/__setattr__. An instance is
    # filled in with plain attribute stores, then becomes a genuine ServerSentEvent by
    # ``__class__`` assignment, which Python allows between classes with the same layout. That
    # is how the decoder builds events (_new_event): the attrs ``__init__`` stores each field
    # through ``object.__setattr__`` by name (a third of the per-event cost once), and even the
    # member descriptors' ``__set__`` called from Python cost 0.2 µs an event more than these
    # stores, which the interpreter specialises. Every field is set, so the result is
    # indistinguishable from a constructed event (tests compare type, equality, hash, repr,
    # attrs.asdict/evolve, pickling and frozenness).
    __slots__ = ()
    __init__ = object.__init__
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


_new = object.__new__


def _new_event(event: str, data: str, id: str, retry: int | None) -> ServerSentEvent:
    # For the general path (one event per block); the shortcut inlines the same steps.
    new = _new(_EventBuilder)
    new.event = event
    new.data = data
    new.id = id
    new.retry = retry
    new.__class__ = ServerSentEvent
    return cast("ServerSentEvent", new)


class EventStreamDecoder:
    """Incremental, bounded decoder of a ``text/event-stream`` body; stream problems are state.

    Feed it the body's bytes as they arrive, in chunks of any size; each call returns the events
    completed by that chunk. Call :meth:`end` when the body ends: an unterminated final block is
    discarded, as the spec requires, and the decoder refuses further input. The events are the
    same however the bytes are chunked.

    ``max_line_size`` bounds a line (in bytes, without its line ending) and ``max_event_size`` an
    event's data (in bytes, as dispatched). Exceeding either ends the decoding: the call returns
    the events completed before the violation, ``error`` is set to the
    :class:`~trio_llmstream.StreamProtocolError` (without a traceback), and every later ``feed``
    and ``end`` returns ``[]``. Nothing is raised for anything a server sends; misuse raises
    (``ValueError`` for limits below 1, ``RuntimeError`` for ``feed`` after ``end``).
    :class:`SSEDecoder` is the same decoder raising the error instead.
    Synchronous and free of I/O: it never blocks, so it has no cancellation behaviour.
    """

    #: Whether a broken limit is raised (:class:`SSEDecoder`) or only recorded in ``error``.
    #: Consulted only where a limit is broken, never on the common path.
    _raises: ClassVar[bool] = False

    __slots__ = (
        "_after_cr",
        "_data",
        "_ended",
        "_error",
        "_event",
        "_event_cap",
        "_head",
        "_last_id",
        "_max_event",
        "_max_line",
        "_partial",
        "_reconnect",
        "_retry",
        "_size",
        "_size_check",
        "_special",
        "_window",
    )

    def __init__(self, max_line_size: int = 1 << 20, max_event_size: int = 1 << 20) -> None:
        if max_line_size < 1 or max_event_size < 1:
            raise ValueError("max_line_size and max_event_size must be at least 1")
        self._max_line = max_line_size
        self._max_event = max_event_size
        # _size counts each data line plus one "\n"; dispatched data is one byte shorter.
        self._event_cap = max_event_size + 1
        # Data sizes above this get the slower check of _large_event.
        self._size_check = min(self._event_cap, _SIZE_CHECK)
        # Reads longer than this are processed in windows of this size (essay, point 4).
        self._window = min(max_line_size, max_event_size, WINDOW)
        # Bytes held back while they could still be a BOM; None once that is decided.
        self._head: bytes | None = b""
        # The last read ended with CR: an LF starting the next one completes that CRLF.
        self._after_cr = False
        # The unterminated current line; never holds an LF. Kept as the bytes object it came in,
        # and turned into a bytearray only when it grows across reads (amortised appends).
        self._partial: bytes | bytearray = b""
        # The current block: data values (raw bytes), their size, event type and retry.
        self._data: list[bytes | bytearray] = []
        self._size = 0
        self._event = ""
        self._retry: int | None = None
        # Stream-wide: the last event id and the reconnection time.
        self._last_id = ""
        self._reconnect: int | None = None
        self._error: StreamProtocolError | None = None
        self._ended = False
        # Set while anything unusual needs a look before a read (BOM undecided, split CRLF,
        # error, end), so a common read tests one attribute.
        self._special = True

    @property
    def last_event_id(self) -> str:
        """The stream's last event id so far ("" if none)."""
        return self._last_id

    @property
    def error(self) -> StreamProtocolError | None:
        """The broken limit that ended the decoding, or None.

        Set by the call that broke it, even when that call returned the events before it.
        """
        return self._error

    @property
    def retry(self) -> int | None:
        """The stream's reconnection time: the last valid ``retry`` value seen (ms), if any.

        Unlike ``ServerSentEvent.retry`` it includes values sent in blocks without data.
        """
        return self._reconnect

    def feed(self, data: bytes | bytearray | memoryview) -> list[ServerSentEvent]:
        """Decode the next chunk of the body; return the events it completes, in order.

        A size limit exceeded sets ``error`` and returns the events before it (see the class
        docstring); once ``error`` is set, returns ``[]``. Raises ``RuntimeError`` after
        :meth:`end`.
        """
        if self._special or type(data) is not bytes:
            checked = self._prologue(data)
            if checked is None:
                return []
            data = checked
        if 13 in data:  # CR (an int operand makes `in` a bare memchr)
            if len(data) > self._window:
                # Rewriting line ends copies the read (twice): do it a window at a time.
                return self._feed_windows(data)
            if data[-1] == 0x0D:
                self._after_cr = self._special = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if 10 not in data:  # LF
            # No line end: the read only extends the pending line (most small reads). The
            # bound is checked before appending, so an oversize read is never copied.
            partial = self._partial
            if len(partial) + len(data) > self._max_line:
                exc = self._line_too_long()
                self._poison(exc)
                if self._raises:
                    raise exc
                return []
            if type(partial) is bytes:
                partial = self._partial = bytearray(partial)
            partial += data
            return []
        events: list[ServerSentEvent] = []
        try:
            window = self._window
            if len(data) <= window:
                self._process(data, events)
            else:
                for start in range(0, len(data), window):
                    self._process(data[start : start + window], events)
        except StreamProtocolError as exc:
            self._poison(exc)
            if not events and self._raises:
                raise
        return events

    def end(self) -> list[ServerSentEvent]:
        """Mark the end of the body; return the events it completes, which are none.

        Per the spec an unterminated final block (even one whose lines are all complete) is
        discarded, never dispatched. After a broken limit it returns ``[]`` (``error`` stays
        set). Calling it twice is harmless.
        """
        if self._error is not None:
            if self._raises:
                # Without its old traceback: re-raising would add frames to it on every call.
                raise self._error.with_traceback(None)
            return []
        self._ended = self._special = True
        self._head = None
        self._partial = b""
        self._data = []
        self._size = 0
        self._event = ""
        self._retry = None
        return []

    # -- internals -------------------------------------------------------------------------------

    def _feed_windows(self, data: bytes) -> list[ServerSentEvent]:
        # A large read (already past the prologue) fed as consecutive reads of one window each:
        # the result is the same by construction, and each window's copies stay small. Errors
        # follow feed's contract: events before the violation are returned (and, if raising,
        # the next call raises).
        events: list[ServerSentEvent] = []
        window = self._window
        try:
            for start in range(0, len(data), window):
                events += self.feed(data[start : start + window])
                if self._error is not None:
                    break
        except StreamProtocolError:
            if not events:
                raise
        return events

    def _prologue(self, data: bytes | bytearray | memoryview) -> bytes | None:
        # The rare cases, off the common path: misuse, non-bytes input, the start of the stream
        # (BOM) and the LF half of a CRLF split across reads. None: nothing more to do.
        if self._error is not None:
            if self._raises:
                # Without its old traceback: re-raising would add frames to it on every call.
                raise self._error.with_traceback(None)
            return None
        if self._ended:
            raise RuntimeError("SSEDecoder.feed() called after end(): the stream is over")
        data = bytes(data)
        if self._head is not None:
            data = self._head + data
            if len(data) < 3 and _BOM.startswith(data):
                self._head = data
                return b""
            self._head = None
            if data.startswith(_BOM):
                data = data[3:]
        if self._after_cr and data:
            self._after_cr = False
            if data[0] == 0x0A:
                data = data[1:]
        self._special = self._head is not None or self._after_cr
        return data

    def _poison(self, exc: StreamProtocolError) -> None:
        # After a protocol error the decoder is done: keep the error, drop the buffers. The
        # error is kept without the traceback of the frames it passed through (they hold the
        # read); SSEDecoder, raising it at once, gives it the frames of that raise only.
        self._error = exc.with_traceback(None)
        self._special = True
        self._partial = b""
        self._data = []

    def _process(self, data: bytes, events: list[ServerSentEvent]) -> None:
        # ``data``: LF-normalised, at most one window, holds an LF. Only its own bytes are
        # searched: the pending line is known to hold no LF.
        pieces = data.split(_SEPARATOR)
        if len(pieces) == 1:
            self._lines(data, events)
            return
        last = pieces.pop()

        # The first piece, then "\n\n", ends whatever was open when the read began. Usually
        # that is a lone data line cut by the previous read, and it joins the others below.
        head = pieces[0]
        partial = self._partial
        first = head
        shortcut = len(partial) + len(head) <= self._window and not (
            self._data or self._event or self._retry is not None
        )
        if shortcut and partial:
            first = b"".join((partial, head))
        if shortcut and first[:6] == b"data: ":
            self._partial = b""
            pieces[0] = first[6:]
        else:
            # The general rules. _lines joins the pending line itself, without searching it.
            del pieces[0]
            self._lines(head + b"\n\n", events)

        # Pieces without an LF are whole events (each is shorter than a window, so within
        # both limits). One C-level test on them all is the usual case.
        if 10 not in b"".join(pieces):
            append = events.append
            last_id = self._last_id
            new = _new
            builder = _EventBuilder
            final = ServerSentEvent
            for value in pieces:
                # _new_event inlined (see _EventBuilder): a call per event would cost more
                # than the stores.
                event = new(builder)
                event.event = "message"
                # A strict decode parses no arguments: measurably faster per event.
                try:
                    event.data = value.decode()
                except UnicodeDecodeError:
                    event.data = value.decode("utf-8", "replace")
                event.id = last_id
                event.retry = None
                event.__class__ = final
                append(event)
        else:
            for value in pieces:
                if 10 in value:
                    self._lines(b"data: " + value + b"\n\n", events)
                else:
                    text = value.decode("utf-8", "replace")
                    events.append(_new_event("message", text, self._last_id, None))

        # The unfinished block the read ends in.
        if 10 in last:
            self._lines(b"data: " + last, events)
        else:
            self._partial = b"data: " + last

    def _lines(self, data: bytes, events: list[ServerSentEvent]) -> None:
        # The general path: the spec's per-line rules on each complete line (inline: a method
        # call per line would be most of the cost); the unterminated rest stays pending.
        lines = data.split(b"\n")
        tail = lines.pop()
        partial = self._partial
        if lines and partial:
            line = lines[0] = b"".join((partial, lines[0]))
            partial = self._partial = b""
            if len(line) > self._max_line:
                raise self._line_too_long()
        for line in lines:
            if not line:
                # A blank line: dispatch the block if it has data. Type and retry end with it.
                if self._data:
                    raw = b"\n".join(self._data)
                    events.append(
                        _new_event(
                            self._event or "message",
                            raw.decode("utf-8", "replace"),
                            self._last_id,
                            self._retry,
                        )
                    )
                    self._data = []
                    self._size = 0
                self._event = ""
                self._retry = None
                continue
            if line[:6] == b"data: ":  # the usual line, without the general parsing
                name = b"data"
                value = line[6:]
            else:
                colon = line.find(b":")
                if colon == 0:
                    continue  # a comment
                if colon < 0:
                    name = line
                    value = b""
                else:
                    name = line[:colon]
                    # Exactly one space after the colon belongs to the syntax, not the value.
                    start = colon + 2 if line[colon + 1 : colon + 2] == b" " else colon + 1
                    value = line[start:]
            if name == b"data":
                self._size += len(value) + 1
                if self._size > self._size_check:
                    self._large_event()  # past 8 KiB: rare, so off the common path
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"id" and 0 not in value:
                self._last_id = value.decode("utf-8", "replace")
            # bytes.isdigit() is ASCII-only and False for b"": exactly the spec's test.
            elif name == b"retry" and value.isdigit():
                digits = value.lstrip(b"0")
                if len(digits) <= _MAX_RETRY_DIGITS:
                    self._retry = self._reconnect = int(digits) if digits else 0
            # Any other field, an id with NUL and an invalid retry are ignored.
        if partial:
            # Only when a large read is cut into windows and one holds no line end.
            if type(partial) is bytes:
                partial = self._partial = bytearray(partial)
            partial += tail
            if len(partial) > self._max_line:
                raise self._line_too_long()
        else:
            # At most one window long, so within max_line_size.
            self._partial = tail

    def _large_event(self) -> None:
        # The block's data passed the smaller of max_event_size and 8 KiB (checked once per data
        # line from then on). Past the limit it is an error. Otherwise, if it is made of many
        # short lines, fold them into one growing buffer: a list slot per line would cost up to
        # 8 bytes per byte of data (an empty data line adds one byte, "\n", and one 8-byte
        # slot). Appending to the buffer keeps this linear however many lines come.
        if self._size > self._event_cap:
            raise StreamProtocolError(
                f"SSE event data exceeds max_event_size ({self._max_event} bytes)"
            )
        data = self._data
        if len(data) >= _MAX_PIECES:
            head = data[0]
            if type(head) is not bytearray:
                head = data[0] = bytearray(head)
            head += b"\n"
            head += b"\n".join(data[1:])
            del data[1:]

    def _line_too_long(self) -> StreamProtocolError:
        return StreamProtocolError(f"SSE line exceeds max_line_size ({self._max_line} bytes)")


class SSEDecoder(EventStreamDecoder):
    """Incremental, bounded decoder of a ``text/event-stream`` body (``trio_llmstream.sse``).

    Feed it the body's bytes as they arrive, in chunks of any size; each call returns the events
    completed by that chunk. Call :meth:`end` when the body ends: an unterminated final block is
    discarded, as the spec requires, and the decoder refuses further input. The events are the
    same however the bytes are chunked.

    ``max_line_size`` bounds a line (in bytes, without its line ending) and ``max_event_size`` an
    event's data (in bytes, as dispatched); exceeding either raises
    :class:`~trio_llmstream.StreamProtocolError` (if the same chunk also completed events, they
    are returned and the next call raises), and every later call raises it again; ``error``
    holds it from the call that broke the limit on. This is :class:`EventStreamDecoder` with
    the error raised rather than only recorded: the same events, the same bounds.
    Synchronous and free of I/O: it never blocks, so it has no cancellation behaviour.
    """

    _raises: ClassVar[bool] = True

    __slots__ = ()
