"""The journal's exceptions.

::

    LLMStreamError                      (trio_llmstream's root)
    ├── JournalError                    a journal operation failed; never raised itself
    │   ├── JournalUnavailable          the backend could not be reached or timed out
    │   │                               (retryable: the recorder and followers retry it)
    │   ├── RunNotFound                 no such run (never created, deleted or expired)
    │   ├── RunExists                   creating a run whose id is taken
    │   ├── RunClosed                   writing to a run that already has its terminal entry
    │   │   └── RunTooLong              ...because the run reached the journal's max_entries
    │   │                               (the journal ended it with a RunTooLong terminal entry)
    │   ├── EntriesExpired              the entries after a resume position are gone (data
    │   │                               lost or from an older, trimming version): resuming
    │   │                               there would skip some
    │   ├── JournalFull                 MemoryJournal: no room for another run
    │   └── JournalCorrupted            stored data that cannot be decoded, or a sequence gap
    └── StreamAbandoned                 the run's writer stopped: no write or heartbeat for
                                        longer than the follower's limit

Every class states whether it is retryable, like the rest of the library's errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._exceptions import LLMStreamError

if TYPE_CHECKING:
    from ._entry import JournalEntry

__all__ = [
    "EntriesExpired",
    "JournalCorrupted",
    "JournalError",
    "JournalFull",
    "JournalUnavailable",
    "RunClosed",
    "RunExists",
    "RunNotFound",
    "RunTooLong",
    "StreamAbandoned",
]


class JournalError(LLMStreamError):
    """A journal operation failed. ``run_id`` names the run, when there is one."""

    retryable = False

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class JournalUnavailable(JournalError):
    """The journal's backend could not be reached, or did not answer in time. Retryable.

    The recorder retries failed flushes with backoff and raises this only once it has kept
    failing for ``RecordOptions.give_up_after`` seconds; followers likewise.
    """

    retryable = True


class RunNotFound(JournalError):
    """No run has this id: it was never created, was deleted, or expired (TTL)."""


class RunExists(JournalError):
    """A run with this id already exists."""


class RunClosed(JournalError):
    """The run already has its terminal entry, so nothing more can be written to it.

    ``end_seq`` is the sequence number of that terminal entry. A recorder sees this when a
    follower sealed its run as abandoned (the writer had been silent for too long).
    """

    def __init__(self, message: str, *, run_id: str | None = None, end_seq: int = 0) -> None:
        super().__init__(message, run_id=run_id)
        self.end_seq = end_seq


class RunTooLong(RunClosed):
    """The run reached its journal's ``max_entries`` chunk entries and was ended for it.

    A journal never trims a live run (a follower however slow must get every entry), so it
    bounds a run's length instead: a write of a chunk past ``max_entries`` stores the chunks
    that fit, then, atomically, a terminal entry (status failed, ``ErrorInfo.type ==
    "RunTooLong"``) in place of the first chunk that did not fit, and raises this. Any later
    write to the run raises it too. The recorder stops reading its source and returns that
    ending; followers see it like any other terminal entry.

    ``end_seq`` is the terminal entry's seq (``max_entries + 1``). Not retryable: the same
    request would most likely run as long again.
    """

    def __init__(
        self, message: str, *, run_id: str | None = None, end_seq: int = 0, max_entries: int = 0
    ) -> None:
        super().__init__(message, run_id=run_id, end_seq=end_seq)
        self.max_entries = max_entries


class EntriesExpired(JournalError):
    """Entries after the requested position are gone.

    Journals trim no live run; this means data was lost (e.g. Redis restarted without
    persistence) or the run was written by an older version that trimmed with ``MAXLEN``.

    ``after`` is the position asked for and ``first_seq`` the oldest entry still stored; a
    reader resuming at ``after`` would miss ``first_seq - after - 1`` entries, so it is told
    instead of being given a stream with a hole in it.
    """

    def __init__(self, run_id: str, after: int, first_seq: int) -> None:
        super().__init__(
            f"run {run_id!r}: entries {after + 1}..{first_seq - 1} are no longer stored "
            f"(oldest kept: {first_seq}); cannot resume after {after}",
            run_id=run_id,
        )
        self.after = after
        self.first_seq = first_seq


class JournalFull(JournalError):
    """A ``MemoryJournal`` holds ``max_runs`` live runs and cannot take another. Retryable:
    runs end and expire."""

    retryable = True


class JournalCorrupted(JournalError):
    """Stored data could not be decoded, or a write would have left a gap in the sequence."""


class StreamAbandoned(LLMStreamError):
    """The run's writer stopped: nothing was written and no heartbeat came for too long.

    Raised by a follower (instead of waiting forever) when a run without a terminal entry has
    been silent for longer than its ``abandon_after`` limit: the writer's process died, or
    lost the journal. The first follower to notice seals the run with a terminal entry
    (status failed, error type ``StreamAbandoned``), so that every later reader ends the same
    way at once, and a writer that comes back finds its run closed (``RunClosed``).

    ``last_seq`` is the last entry before the seal; ``entry`` is the sealing terminal entry
    (None if it could not be written). ``idle`` is how long the run had been silent, as last
    seen. Retryable: starting the run again may well succeed.
    """

    retryable = True

    def __init__(
        self,
        run_id: str,
        *,
        last_seq: int,
        idle: float | None = None,
        entry: JournalEntry | None = None,
    ) -> None:
        silent = "" if idle is None else f" for {idle:.3g} s"
        super().__init__(
            f"run {run_id!r} was abandoned by its writer (no write or heartbeat{silent}); "
            f"last entry {last_seq}"
        )
        self.run_id = run_id
        self.last_seq = last_seq
        self.idle = idle
        self.entry = entry
