"""``MemoryJournal``: the embedded, in-process journal.

Runs live in an ordered dict kept in order of last activity, so expiry (``ttl`` seconds after
the writer's last write or heartbeat, like Redis's EXPIRE refreshed on every write) is a scan
from the front that stops at the first live run. Each run's entries are a list, never trimmed:
a run is bounded by ``max_entries`` chunks instead (past it, the journal ends the run with a
``RunTooLong`` terminal entry), so memory is bounded by ``max_runs`` x (``max_entries`` + 1)
entries. Readers waiting for a run's next entry wait on the run's ``trio.Event``, replaced at
every write.

Every operation is synchronous inside (no await between reading and writing the state), which
makes each one atomic under trio's cooperative scheduling. Time is ``trio.current_time()``, so
tests drive expiry and abandonment with a ``MockClock``. Nothing runs in the background: there
is no task to own, so a ``MemoryJournal`` needs no ``async with``.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence

import trio

from .._models import StreamStatus
from ._base import Journal, JournalPage, RunInfo, check_meta, check_page, check_run_id
from ._entry import ABANDONED_ERROR_TYPE, TOO_LONG_ERROR_TYPE, ErrorInfo, JournalEntry, RunEnd
from ._errors import (
    JournalCorrupted,
    JournalFull,
    RunClosed,
    RunExists,
    RunNotFound,
    RunTooLong,
)

__all__ = ["DEFAULT_MAX_ENTRIES", "MemoryJournal", "abandoned_end", "too_long_end"]

#: Chunk entries a run may hold by default (a long answer is a few thousand).
DEFAULT_MAX_ENTRIES = 100_000


def abandoned_end(run_id: str, idle_limit: float) -> RunEnd:
    """The terminal record that seals a run abandoned by its writer."""
    return RunEnd(
        StreamStatus.FAILED,
        error=ErrorInfo(
            type=ABANDONED_ERROR_TYPE,
            message=(
                f"run {run_id!r} was abandoned by its writer: no write or heartbeat for "
                f"{idle_limit:g} s"
            ),
            retryable=True,
        ),
    )


def too_long_end(run_id: str, max_entries: int) -> RunEnd:
    """The terminal record that ends a run which exceeded the journal's ``max_entries``."""
    return RunEnd(
        StreamStatus.FAILED,
        error=ErrorInfo(
            type=TOO_LONG_ERROR_TYPE,
            message=(
                f"run {run_id!r} exceeded the journal's limit of {max_entries} entries per run"
            ),
            retryable=False,
        ),
    )


def too_long_error(run_id: str, end_seq: int, max_entries: int) -> RunTooLong:
    return RunTooLong(
        f"run {run_id!r} reached the journal's limit of {max_entries} entries and was ended "
        f"(terminal entry {end_seq})",
        run_id=run_id,
        end_seq=end_seq,
        max_entries=max_entries,
    )


class _Run:
    __slots__ = ("changed", "end", "end_seq", "entries", "first_seq", "last_active", "meta",
                 "too_long")

    def __init__(self, now: float, meta: bytes | None) -> None:
        self.entries: list[JournalEntry] = []
        self.first_seq = 1
        self.end_seq: int | None = None
        self.end: JournalEntry | None = None
        self.last_active = now
        self.meta = meta
        self.too_long = False  # ended by the journal for exceeding max_entries
        self.changed = trio.Event()

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.entries) - 1

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class MemoryJournal(Journal):
    """An in-process journal: fast, bounded, gone when the process exits.

    Bounds: at most ``max_entries`` chunk entries per run (a write past it ends the run with
    a ``RunTooLong`` terminal entry and raises ``RunTooLong``; live runs are never trimmed),
    at most ``max_runs`` runs (when full, expired runs go first, then the longest-idle ended
    run; if every run is live, ``create_run`` raises ``JournalFull``), and each run expires
    ``ttl`` seconds after its last write or heartbeat (an ended run: after its end).
    """

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_runs: int = 1_000,
        ttl: float = 3600.0,
    ) -> None:
        if max_entries < 1 or max_runs < 1 or not ttl > 0:
            raise ValueError("max_entries, max_runs and ttl must be positive")
        self.max_entries = max_entries
        self.max_runs = max_runs
        self.ttl = ttl
        self._runs: collections.OrderedDict[str, _Run] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"MemoryJournal(runs={len(self._runs)}, max_entries={self.max_entries})"

    # -- internals -------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        runs = self._runs
        while runs:
            run_id, run = next(iter(runs.items()))
            if now - run.last_active < self.ttl:
                return
            del runs[run_id]
            run.notify()  # waiting readers look again and find it gone

    def _get(self, run_id: str) -> _Run:
        self._expire(trio.current_time())
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r} (never created, deleted or expired)",
                              run_id=run_id)
        return run

    def _touch(self, run_id: str, run: _Run, now: float) -> None:
        run.last_active = now
        self._runs.move_to_end(run_id)

    def _store(self, run: _Run, new: Sequence[JournalEntry]) -> None:
        run.entries.extend(new)

    def _info(self, run_id: str, run: _Run, now: float) -> RunInfo:
        return RunInfo(
            run_id=run_id,
            last_seq=run.last_seq,
            end_seq=run.end_seq,
            first_seq=run.first_seq,
            idle=max(0.0, now - run.last_active),
        )

    def _page(self, run_id: str, run: _Run, after: int, limit: int, now: float) -> JournalPage:
        start = max(0, after + 1 - run.first_seq)
        page = JournalPage(tuple(run.entries[start : start + limit]), self._info(run_id, run, now))
        return check_page(run_id, after, page) if limit > 0 else page

    # -- the interface ---------------------------------------------------------------------------

    async def create_run(self, run_id: str, *, meta: bytes | None = None) -> None:
        """See :meth:`Journal.create_run`. Raises ``JournalFull`` when ``max_runs`` live runs
        exist. Cancellation: a checkpoint first; if cancelled there, nothing was created."""
        check_run_id(run_id)
        check_meta(meta)
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        self._expire(now)
        if run_id in self._runs:
            raise RunExists(f"run {run_id!r} already exists", run_id=run_id)
        if len(self._runs) >= self.max_runs:
            victim = next((rid for rid, r in self._runs.items() if r.end_seq is not None), None)
            if victim is None:
                raise JournalFull(
                    f"the journal holds {self.max_runs} live runs (max_runs)", run_id=run_id
                )
            self._runs.pop(victim).notify()
        self._runs[run_id] = _Run(now, meta)

    async def meta(self, run_id: str) -> bytes | None:
        """See :meth:`Journal.meta`. Cancellation: a checkpoint first."""
        await trio.lowlevel.checkpoint()
        return self._get(run_id).meta

    async def append(self, run_id: str, entries: Sequence[JournalEntry]) -> int:
        """See :meth:`Journal.append`. Cancellation: a checkpoint first; if cancelled there,
        nothing was stored."""
        await trio.lowlevel.checkpoint()
        run = self._get(run_id)
        last = run.last_seq
        if run.end is not None:
            # Ended: only a retry of entries already stored passes, and at the terminal's seq
            # only that very terminal (a writer's entry colliding with a seal does not).
            for entry in entries:
                if entry.seq >= run.end.seq and entry != run.end:
                    if run.too_long:
                        raise too_long_error(run_id, run.end.seq, self.max_entries)
                    raise RunClosed(
                        f"run {run_id!r} already ended (terminal entry {run.end.seq})",
                        run_id=run_id,
                        end_seq=run.end.seq,
                    )
            return last
        new = [e for e in entries if e.seq > last]
        if not new:
            # An idempotent retry of entries already stored.
            return last
        if new[0].seq != last + 1:
            raise JournalCorrupted(
                f"run {run_id!r}: write of seq {new[0].seq} after {last} would leave a gap",
                run_id=run_id,
            )
        for a, b in itertools.pairwise(new):
            if b.seq != a.seq + 1 or a.end is not None:
                raise JournalCorrupted(
                    f"run {run_id!r}: a batch holds consecutive entries, a terminal one last",
                    run_id=run_id,
                )
        limit = self.max_entries
        over = new[-1].seq > limit and (new[-1].end is None or new[-1].seq > limit + 1)
        if over:
            # Past the cap: keep the chunks that fit and end the run in place of the first
            # that does not (atomically: nothing awaits in between).
            new = [e for e in new if e.seq <= limit]
            new.append(JournalEntry(limit + 1, end=too_long_end(run_id, limit)))
            run.too_long = True
        self._store(run, new)
        if new[-1].end is not None:
            run.end_seq = new[-1].seq
            run.end = new[-1]
        self._touch(run_id, run, trio.current_time())
        run.notify()
        if over:
            raise too_long_error(run_id, limit + 1, limit)
        return run.last_seq

    async def heartbeat(self, run_id: str) -> None:
        """See :meth:`Journal.heartbeat`. Cancellation: a checkpoint first."""
        await trio.lowlevel.checkpoint()
        run = self._get(run_id)
        if run.end_seq is None:
            self._touch(run_id, run, trio.current_time())

    async def read(
        self, run_id: str, *, after: int = 0, limit: int = 256, wait: float = 0.0
    ) -> JournalPage:
        """See :meth:`Journal.read`. Cancellation: stops waiting; nothing is consumed."""
        if after < 0:
            raise ValueError("after must be >= 0")
        await trio.lowlevel.checkpoint()
        run = self._get(run_id)
        now = trio.current_time()
        page = self._page(run_id, run, after, limit, now)
        if page.entries or wait <= 0 or run.end_seq is not None or limit <= 0:
            return page
        with trio.move_on_after(wait):
            await run.changed.wait()
        run = self._get(run_id)
        return self._page(run_id, run, after, limit, trio.current_time())

    async def seal_abandoned(self, run_id: str, *, idle_limit: float) -> bool:
        """See :meth:`Journal.seal_abandoned`. Cancellation: a checkpoint first."""
        await trio.lowlevel.checkpoint()
        run = self._get(run_id)
        now = trio.current_time()
        if run.end_seq is not None or now - run.last_active < idle_limit:
            return False
        seq = run.last_seq + 1
        run.end = JournalEntry(seq, end=abandoned_end(run_id, idle_limit))
        self._store(run, [run.end])
        run.end_seq = seq
        # Not writer activity: last_active (and so the TTL) stays as the writer left it.
        run.notify()
        return True

    async def delete_run(self, run_id: str) -> None:
        """See :meth:`Journal.delete_run`. Cancellation: a checkpoint first."""
        await trio.lowlevel.checkpoint()
        run = self._runs.pop(run_id, None)
        if run is not None:
            run.notify()
