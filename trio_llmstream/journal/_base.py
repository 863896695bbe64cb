"""The ``Journal`` interface and the follower, written once on top of it.

A journal stores, per run id, a gap-free sequence of entries (``JournalEntry``, seq 1, 2,
...), ending with exactly one terminal entry, and a "last activity" time that the run's writer
refreshes with every write and heartbeat, and optionally a few opaque bytes of metadata given
at creation (``create_run(run_id, meta=...)``, read back with ``meta``: an owner's principal,
a read token's hash...). Backends implement seven small operations; everything
else (recording with batching and retries, following with resume and abandonment detection)
is written here and in ``_record`` once, against the interface.

The invariants are enforced by the backend, atomically, not by the callers' care:

- ``append`` is idempotent by sequence number. Entries at or below the stored last seq are
  skipped, so a flush retried after a lost reply never writes a chunk twice; a first new seq
  other than ``last + 1`` is refused (``JournalCorrupted``), so nothing is ever silently
  skipped either.
- Once a terminal entry is stored, every write of a *new* entry is refused with ``RunClosed``
  (only a retry of that very terminal entry passes: a writer whose entry collides with a
  follower's seal is told, not fooled).
  A second terminal is therefore impossible, whoever tries to write it: the recorder after an
  error-then-[DONE] source, a follower sealing an abandoned run, or a writer that comes back.
- A live run is never trimmed: a follower however slow gets every entry. A run's length is
  bounded instead, by the backend's ``max_entries``: a write of a chunk past it stores what
  fits and then, in the same atomic step, a ``RunTooLong`` terminal entry, and raises
  ``RunTooLong``. Runs are forgotten only as a whole: ``ttl`` seconds after their last write
  (for an ended run: after its end; a live writer's heartbeats keep its run), or deleted.

Following. ``Follower`` pages through ``read`` from a position and then blocks in it (``wait``)
for new entries, until it returns the terminal entry. Each read also reports how long the run
has been silent (no write, no heartbeat); a follower that finds it silent for longer than its
``abandon_after`` limit seals the run (``seal_abandoned``: atomic, and only if it is still
silent and still open) and raises ``StreamAbandoned``. Waits are cut to end when the run
would reach that limit, so a reader never waits forever and notices within one round trip.
"""

from __future__ import annotations

import abc
import collections
import itertools
import math
import random
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from .._core._backoff import jittered_backoff
from ._entry import JournalEntry
from ._errors import (
    EntriesExpired,
    JournalCorrupted,
    JournalUnavailable,
    StreamAbandoned,
)

__all__ = [
    "MAX_META",
    "Follower",
    "Journal",
    "JournalPage",
    "RunInfo",
    "check_meta",
    "check_run_id",
]

MAX_RUN_ID = 200
#: The most bytes of metadata a run can carry (``create_run(run_id, meta=...)``).
MAX_META = 64 * 1024


def check_run_id(run_id: str) -> str:
    """Validate a run id: 1-200 printable ASCII characters, no spaces or braces."""
    if not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_RUN_ID:
        raise ValueError(f"a run id is a string of 1 to {MAX_RUN_ID} characters: {run_id!r}")
    if not run_id.isascii() or not run_id.isprintable() or any(c in run_id for c in " {}"):
        raise ValueError(f"a run id is printable ASCII without spaces or braces: {run_id!r}")
    return run_id


def check_meta(meta: bytes | None) -> bytes | None:
    """Validate a run's metadata: None, or bytes of at most ``MAX_META``."""
    if meta is None:
        return None
    if not isinstance(meta, bytes):
        raise TypeError(f"a run's metadata is bytes, not {type(meta).__name__}")
    if len(meta) > MAX_META:
        raise ValueError(f"a run's metadata is at most {MAX_META} bytes, not {len(meta)}")
    return meta


@attrs.frozen
class RunInfo:
    """The state of a run as a backend saw it.

    ``last_seq`` is the last stored entry (0 before any), ``end_seq`` the terminal entry's
    seq (None while the run is open), ``first_seq`` the oldest entry still stored (``last_seq
    + 1`` when none is), ``idle`` the seconds since the writer's last write or heartbeat.
    """

    run_id: str
    last_seq: int
    end_seq: int | None
    first_seq: int
    idle: float

    @property
    def ended(self) -> bool:
        return self.end_seq is not None


@attrs.frozen
class JournalPage:
    """What one ``read`` returned: entries after the position asked for, and the run's state."""

    entries: tuple[JournalEntry, ...]
    info: RunInfo


def check_page(run_id: str, after: int, page: JournalPage) -> JournalPage:
    """Backends' common checks: no hole between ``after`` and the entries returned."""
    info = page.info
    if page.entries:
        first = page.entries[0].seq
        if first != after + 1:
            if first > after + 1 and info.first_seq > after + 1:
                raise EntriesExpired(run_id, after, info.first_seq)
            raise JournalCorrupted(
                f"run {run_id!r}: read after {after} returned seq {first}", run_id=run_id
            )
        for a, b in itertools.pairwise(page.entries):
            if b.seq != a.seq + 1:
                raise JournalCorrupted(f"run {run_id!r}: gap between {a.seq} and {b.seq}")
    elif after < info.last_seq and info.first_seq > after + 1:
        raise EntriesExpired(run_id, after, info.first_seq)
    return page


class Journal(abc.ABC):
    """Where runs' entries are kept: ``MemoryJournal`` (in process) or ``RedisJournal``.

    Writers use :func:`record` (or ``create_run``, ``append``, ``heartbeat`` directly);
    readers use :meth:`follow`. Every method may raise ``JournalUnavailable`` when the backend
    cannot be reached (retryable), and ``RunNotFound`` for an unknown or expired run.
    """

    @abc.abstractmethod
    async def create_run(self, run_id: str, *, meta: bytes | None = None) -> None:
        """Create an empty, open run (last seq 0) and mark it active now.

        ``meta``: opaque bytes (at most ``MAX_META``) stored with the run, atomically with
        its creation, and kept, expired and deleted with it; read back with :meth:`meta`.
        They cannot be changed afterwards, so whatever a relay stores there at creation (an
        owner, a token's hash) is what every process later checks against.

        Raises ``RunExists`` if the id is taken (the existing run's metadata is left as it
        was). Cancellation: if cancelled, the run may or may not have been created.
        """

    @abc.abstractmethod
    async def meta(self, run_id: str) -> bytes | None:
        """The metadata the run was created with (None if it was created without).

        Raises ``RunNotFound`` for an unknown or expired run. Cancellation: harmless.
        """

    @abc.abstractmethod
    async def append(self, run_id: str, entries: Sequence[JournalEntry]) -> int:
        """Store ``entries`` (consecutive seqs; a terminal entry only last) and mark the run
        active; return the run's last seq afterwards.

        Idempotent: entries whose seq is already stored are skipped, so retrying a batch
        whose reply was lost is safe. Raises ``RunClosed`` if the run already has its
        terminal entry and the batch holds an entry at or after it other than that very
        terminal entry (so a writer's entry never passes for a follower's seal),
        ``JournalCorrupted`` if the first new
        seq is not the stored last seq + 1. Atomic: all of the batch's new entries or none.
        Cancellation: if cancelled, the batch may or may not have been stored (retry it).
        """

    @abc.abstractmethod
    async def heartbeat(self, run_id: str) -> None:
        """Mark the run's writer as alive now (a no-op once the run has ended).

        Cancellation: harmless; the heartbeat may or may not have been recorded.
        """

    @abc.abstractmethod
    async def read(
        self, run_id: str, *, after: int = 0, limit: int = 256, wait: float = 0.0
    ) -> JournalPage:
        """Up to ``limit`` entries with seq > ``after``, with the run's current state.

        If there are none yet and the run is open, wait up to ``wait`` seconds for one.
        Raises ``EntriesExpired`` if entries after ``after`` are no longer stored.
        Cancellation: stops waiting; nothing is consumed, so just read again.
        """

    @abc.abstractmethod
    async def seal_abandoned(self, run_id: str, *, idle_limit: float) -> bool:
        """Atomically end the run with a ``StreamAbandoned`` terminal entry if it is still
        open and has been idle for at least ``idle_limit`` seconds. True if this call sealed
        it. Cancellation: the seal may or may not have been written.
        """

    @abc.abstractmethod
    async def delete_run(self, run_id: str) -> None:
        """Forget the run and its entries (no error if it does not exist).

        Cancellation: the run may or may not have been deleted.
        """

    async def info(self, run_id: str) -> RunInfo:
        """The run's state (``RunNotFound`` if unknown). Cancellation: harmless."""
        page = await self.read(run_id, after=0, limit=0)
        return page.info

    def follow(
        self,
        run_id: str,
        *,
        after: int = 0,
        abandon_after: float = 10.0,
        poll_interval: float = 5.0,
        page_size: int = 256,
        unavailable_after: float = 30.0,
    ) -> Follower:
        """An async iterator over the run's entries with seq > ``after``, live until the
        terminal entry (the last item). See :class:`Follower`."""
        return Follower(
            self,
            run_id,
            after=after,
            abandon_after=abandon_after,
            poll_interval=poll_interval,
            page_size=page_size,
            unavailable_after=unavailable_after,
        )


class Follower:
    """Iterates over a run's entries after a position, live, until its terminal entry.

    ::

        async for entry in journal.follow(run_id, after=last_event_id):
            if entry.chunk is not None:
                ...  # entry.seq is the position to resume after
            else:
                ...  # entry.end: how the run ended; iteration stops after it

    Gives every entry after ``after`` exactly once, in order, with no gap, however slowly it
    is iterated (journals do not trim live runs); if entries are missing all the same (data
    lost) it raises ``EntriesExpired`` instead of skipping.

    Ends with ``StreamAbandoned`` (instead of the terminal entry) if the run has had no write
    and no heartbeat for ``abandon_after`` seconds, or was sealed for that reason by another
    follower; it never waits longer than that for a silent run. ``RunNotFound`` if the run
    does not exist (or expired). Backend outages are retried with backoff for up to
    ``unavailable_after`` seconds, then ``JournalUnavailable`` is raised.

    ``position`` is the seq of the last entry returned: resume after it, here or on another
    process, with ``journal.follow(run_id, after=follower.position)``.
    """

    def __init__(
        self,
        journal: Journal,
        run_id: str,
        *,
        after: int = 0,
        abandon_after: float = 10.0,
        poll_interval: float = 5.0,
        page_size: int = 256,
        unavailable_after: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        check_run_id(run_id)
        if after < 0:
            raise ValueError("after must be >= 0")
        if not abandon_after > 0 or not poll_interval > 0 or page_size < 1:
            raise ValueError("abandon_after, poll_interval and page_size must be positive")
        self._journal = journal
        self.run_id = run_id
        self._position = after
        self._fetched = after
        self._abandon_after = abandon_after
        self._poll = poll_interval
        self._page_size = page_size
        self._unavailable_after = unavailable_after
        self._rng = rng or random.Random()
        self._buffer: collections.deque[JournalEntry] = collections.deque()
        self._done = False
        # The next read waits up to _wait seconds, but never past _abandon_at: the time at
        # which the run, as last seen, would reach the abandonment limit if nothing happens.
        self._wait = 0.0
        self._abandon_at = math.inf
        self._idle: float | None = None

    @property
    def position(self) -> int:
        """The seq of the last entry returned (the ``after`` given, before any)."""
        return self._position

    @property
    def done(self) -> bool:
        """True once the terminal entry was returned (or ``StreamAbandoned`` raised)."""
        return self._done and not self._buffer

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> JournalEntry:
        """The next entry. Cancellation: nothing is lost; the next call resumes."""
        while True:
            if self._buffer:
                entry = self._buffer.popleft()
                self._position = entry.seq
                if entry.end is not None:
                    self._done = True
                    self._buffer.clear()
                    if entry.end.abandoned:
                        raise StreamAbandoned(
                            self.run_id, last_seq=entry.seq - 1, idle=self._idle, entry=entry
                        )
                return entry
            if self._done:
                raise StopAsyncIteration
            wait = max(0.0, min(self._wait, self._abandon_at - trio.current_time()))
            page = await self._read(wait)
            if page.entries:
                self._buffer.extend(page.entries)
                self._fetched = page.entries[-1].seq
                if page.entries[-1].end is not None:
                    self._done = True
                # Next time, go straight to waiting for more (one round trip, not a look
                # then a wait: a live follower is one write behind, not two reads), bounded
                # by when the run would become abandoned, as this page saw it.
                self._abandon_at = trio.current_time() + self._abandon_after - page.info.idle
                self._wait = self._poll
                continue
            self._abandon_at = math.inf
            info = page.info
            self._idle = info.idle
            if info.end_seq is not None and info.end_seq <= self._fetched:
                # The terminal entry is at or before the starting position: nothing follows.
                self._done = True
                continue
            if info.idle >= self._abandon_after:
                sealed = await self._seal()
                # The next read returns the seal, or the terminal that beat it; if neither
                # (a heartbeat came in between), look again shortly.
                self._wait = 0.0 if sealed else min(self._poll, 0.01)
                continue
            # Wake when the run would become abandoned if nothing happens meanwhile.
            self._wait = min(self._poll, self._abandon_after - info.idle)

    async def _seal(self) -> bool:
        sealed = False

        async def seal() -> None:
            nonlocal sealed
            sealed = await self._journal.seal_abandoned(
                self.run_id, idle_limit=self._abandon_after
            )

        await self._retrying(seal)
        return sealed

    async def _read(self, wait: float) -> JournalPage:
        page: JournalPage | None = None

        async def read() -> None:
            nonlocal page
            page = await self._journal.read(
                self.run_id, after=self._fetched, limit=self._page_size, wait=wait
            )

        await self._retrying(read)
        assert page is not None
        return page

    async def _retrying(self, op: Callable[[], Awaitable[None]]) -> None:
        # Backend outages: exponential backoff with jitter, for at most unavailable_after s.
        failing_since: float | None = None
        failures = 0
        while True:
            try:
                await op()
                return
            except JournalUnavailable:
                now = trio.current_time()
                if failing_since is None:
                    failing_since = now
                elif now - failing_since >= self._unavailable_after:
                    raise
                left = failing_since + self._unavailable_after - now
                await trio.sleep(min(left, jittered_backoff(0.05, 1.0, failures, self._rng)))
                failures += 1

