"""Resumable streams: a journal of every chunk of a run, in memory or in Redis, and an SSE relay.

::

    journal = MemoryJournal()                      # or: async with open_redis_journal(url)
    async with trio.open_nursery() as nursery:
        async with open_llm_stream(llm, chat_ctx=ctx) as stream:
            await nursery.start(record, journal, "run-1", stream)
            ...
    # anywhere, any time, from any process sharing the journal:
    async for entry in journal.follow("run-1", after=last_seen):
        ...

A run is a gap-free sequence of entries numbered from 1 (``JournalEntry``: a ``ChatChunk``
each) ending with exactly one terminal entry (``RunEnd``: completed, failed with the error,
cancelled or truncated). A live run is never trimmed; a run longer than the journal's
``max_entries`` ends failed with a ``RunTooLong`` terminal entry. :func:`record` writes one,
batched only under load, retried, with backpressure;
:meth:`Journal.follow` reads one from any position, live, and ends with ``StreamAbandoned``
when the writer has gone silent for too long. :func:`format_sse` and :class:`RelayApp` serve
runs as server-sent events whose ``id`` is the seq, so browsers resume with
``Last-Event-ID``.
"""

from ._base import MAX_META as MAX_META
from ._base import Follower as Follower
from ._base import Journal as Journal
from ._base import JournalPage as JournalPage
from ._base import RunInfo as RunInfo
from ._entry import ErrorInfo as ErrorInfo
from ._entry import JournalEntry as JournalEntry
from ._entry import RunEnd as RunEnd
from ._entry import decode_chunk as decode_chunk
from ._entry import decode_end as decode_end
from ._entry import decode_entry as decode_entry
from ._entry import encode_chunk as encode_chunk
from ._entry import encode_end as encode_end
from ._entry import encode_entry as encode_entry
from ._errors import EntriesExpired as EntriesExpired
from ._errors import JournalCorrupted as JournalCorrupted
from ._errors import JournalError as JournalError
from ._errors import JournalFull as JournalFull
from ._errors import JournalUnavailable as JournalUnavailable
from ._errors import RunClosed as RunClosed
from ._errors import RunExists as RunExists
from ._errors import RunNotFound as RunNotFound
from ._errors import RunTooLong as RunTooLong
from ._errors import StreamAbandoned as StreamAbandoned
from ._memory import MemoryJournal as MemoryJournal
from ._record import DEFAULT_RECORD_OPTIONS as DEFAULT_RECORD_OPTIONS
from ._record import RecordOptions as RecordOptions
from ._record import RecordResult as RecordResult
from ._record import record as record
from ._redis import RedisJournal as RedisJournal
from ._redis import open_redis_journal as open_redis_journal
from ._relay import RelayApp as RelayApp
from ._relay import bearer_authorizer as bearer_authorizer
from ._relay import run_relay as run_relay
from ._relay import serve_relay as serve_relay
from ._sse import format_sse as format_sse
from ._sse import parse_event_id as parse_event_id

__all__ = [
    "DEFAULT_RECORD_OPTIONS",
    "MAX_META",
    "EntriesExpired",
    "ErrorInfo",
    "Follower",
    "Journal",
    "JournalCorrupted",
    "JournalEntry",
    "JournalError",
    "JournalFull",
    "JournalPage",
    "JournalUnavailable",
    "MemoryJournal",
    "RecordOptions",
    "RecordResult",
    "RedisJournal",
    "RelayApp",
    "RunClosed",
    "RunEnd",
    "RunExists",
    "RunInfo",
    "RunNotFound",
    "RunTooLong",
    "StreamAbandoned",
    "bearer_authorizer",
    "decode_chunk",
    "decode_end",
    "decode_entry",
    "encode_chunk",
    "encode_end",
    "encode_entry",
    "format_sse",
    "open_redis_journal",
    "parse_event_id",
    "record",
    "run_relay",
    "serve_relay",
]
