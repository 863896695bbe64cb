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

__all__ = [
    "ENDING_SUFFIX",
    "format_sse",
    "format_sse_end",
    "parse_event_id",
    "parse_resume_id",
    "sse_comment",
    "sse_retry",
]


def format_sse(entry: JournalEntry) -> bytes:
    """One entry as an SSE event (``id`` = seq; the terminal entry as ``event: end``)."""
    if entry.chunk is not None:
        return b"id: %d\ndata: %s\n\n" % (entry.seq, encode_chunk(entry.chunk))
    assert entry.end is not None
    return b"id: %d\nevent: end\ndata: %s\n\n" % (entry.seq, encode_end(entry.end))


ENDING_SUFFIX = "-end"
"""The suffix of the id of an ending that the relay made up (see :func:`format_sse_end`)."""

# An EventSource waits this long before reconnecting after a made-up ending: one day, so a
# page that does not close it on ``end`` does not loop (the reconnection gets 204 anyway).
ENDING_RETRY_MS = 86_400_000


def format_sse_end(end: RunEnd, last_seq: int | None = None) -> bytes:
    """An ending known to the relay but not in the journal (a follower that could not write
    the seal of an abandoned run, the journal being down), as an ``end`` event.

    Its id is ``<last_seq>-end``: not a seq of the run (the journal may still get one
    there), but a position the relay recognises. A client that reconnects with it as its
    ``Last-Event-ID`` is answered 204, which stops an EventSource; before the event, a
    ``retry`` of a day keeps a browser that does not close its EventSource on ``end`` from
    reconnecting at once. Without ``last_seq``, the bare event (no id, no retry).
    """
    if last_seq is None:
        return b"event: end\ndata: %s\n\n" % encode_end(end)
    return b"retry: %d\n\nid: %d%s\nevent: end\ndata: %s\n\n" % (
        ENDING_RETRY_MS, last_seq, ENDING_SUFFIX.encode(), encode_end(end))


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


def parse_resume_id(value: str | bytes | None) -> tuple[int, bool]:
    """A ``Last-Event-ID`` as the relay reads it: ``(seq, False)`` for a seq (see
    :func:`parse_event_id`), ``(seq, True)`` for the id of an ending the relay made up after
    ``seq`` (``<seq>-end``, see :func:`format_sse_end`). ``ValueError`` for anything else."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if text is not None and text.strip().endswith(ENDING_SUFFIX):
        return parse_event_id(text.strip()[: -len(ENDING_SUFFIX)] or "x"), True
    return parse_event_id(text), False
