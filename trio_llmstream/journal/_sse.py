"""Journal entries as server-sent events, so that standard EventSource clients can resume.

Each entry is one event whose ``id`` is its seq. A browser's ``EventSource`` remembers the
last id it saw and sends it back as ``Last-Event-ID`` when it reconnects; the relay then
follows the run after that seq, so the client gets exactly the entries it missed. Chunks are
unnamed events (``onmessage`` sees them; ``data`` is the chunk's wire JSON, see ``_entry``);
the terminal entry is the one ``event: end`` of the stream, with the ``RunEnd`` wire JSON::

    id: 7
    data: {"id":"req-1","choices":[{"delta":{"content":"Hel"}}]}

    id: 8
    event: end
    data: {"status":"completed","finish_reason":"stop","error":null}

There is exactly one ``end`` event per run and nothing after it: no ``[DONE]`` sentinel to
forget or to send twice. msgspec's JSON never contains a raw CR or LF (they are escaped inside
strings), so every payload fits the single ``data:`` line the format requires.
"""

from __future__ import annotations

from ._entry import JournalEntry, RunEnd, encode_chunk, encode_end

__all__ = ["format_sse", "format_sse_end", "parse_event_id", "sse_comment", "sse_retry"]


def format_sse(entry: JournalEntry) -> bytes:
    """One entry as an SSE event (``id`` = seq; the terminal entry as ``event: end``)."""
    if entry.chunk is not None:
        return b"id: %d\ndata: %s\n\n" % (entry.seq, encode_chunk(entry.chunk))
    assert entry.end is not None
    return b"id: %d\nevent: end\ndata: %s\n\n" % (entry.seq, encode_end(entry.end))


def format_sse_end(end: RunEnd) -> bytes:
    """An ``end`` event with no id: an ending known to the relay but not in the journal
    (a follower that could not write the seal of an abandoned run)."""
    return b"event: end\ndata: %s\n\n" % encode_end(end)


def sse_comment(text: str = "") -> bytes:
    """A comment line (``: text``): keeps the connection alive, ignored by clients."""
    clean = text.replace("\r", " ").replace("\n", " ")
    return f": {clean}\n\n".encode() if clean else b":\n\n"


def sse_retry(milliseconds: int) -> bytes:
    """The ``retry`` field: how long an EventSource waits before reconnecting."""
    if milliseconds < 0:
        raise ValueError("retry must be >= 0 ms")
    return b"retry: %d\n\n" % milliseconds


def parse_event_id(value: str | bytes | None) -> int:
    """The seq in a ``Last-Event-ID`` value: 0 if absent or empty; ``ValueError`` unless a
    non-negative decimal integer."""
    if value is None:
        return 0
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text:
        return 0
    if not text.isdecimal() or not text.isascii() or len(text) > 18:
        raise ValueError(f"an event id is a non-negative integer, not {text!r}")
    return int(text)
