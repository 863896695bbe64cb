"""Recording: a stream of chunks into a journal, batched, retried, with exactly one ending.

How it works
------------

:func:`record` runs in the caller's task (start it in the caller's nursery) and opens one
nursery of its own for two helpers, so nothing outlives the call:

- the *consumer* (the calling task) pulls items from the source, numbers them (seq 1, 2, ...)
  and puts them in a bounded queue of ``max_pending`` entries (a plain deque: a trio channel
  would cost a task switch per chunk, 8x the rest of the recorder's work). When the journal
  is slow or down, the queue fills and the consumer stops pulling: backpressure reaches the
  source (an ``LLMStream`` then holds its provider, whose idle clock is paused meanwhile, and
  TCP flow control slows the LLM server) instead of memory growing;
- the *flusher* takes entries from the queue and writes them in batches: it takes whatever is
  queued (up to ``batch_size``) as soon as it is free, writes it, and repeats. So an entry that
  arrives while the flusher is idle is written at once (a live follower sees it one round trip
  later), and batches form only under load, from what queued up during the previous write
  (``flush_interval`` > 0 holds a batch up to that long to fill it instead). Memory
  is bounded by the ``max_pending`` queued entries plus the ``batch_size`` being written. A
  failed write keeps its batch and retries it with exponential backoff and jitter; because
  ``Journal.append`` is idempotent by seq, a write whose reply was lost and is retried stores
  nothing twice. After ``give_up_after`` seconds of uninterrupted failures ``record`` raises
  ``JournalUnavailable``; its run then has no terminal entry, and its followers end with
  ``StreamAbandoned`` once the heartbeats have stopped for their limit;
- the length cap: the journal ends a run that exceeds its ``max_entries`` with a
  ``RunTooLong`` terminal entry (atomically, in the backend) and refuses the write; the
  flusher then stops the consumer (the source is no longer read, and its iterator closed as
  usual), and ``record`` returns that ending (status failed, error type ``RunTooLong``);
- the *heartbeat*: whenever no write succeeded for ``heartbeat_interval`` seconds (the model is
  thinking, or the consumer is slow), it marks the run alive, so followers can tell a quiet
  writer from a dead one.

Exactly one ending. The terminal entry is derived once, from how the source stopped:

- an ``LLMStream``: from its ``status`` and ``error`` (completed, failed with the typed error,
  cancelled, truncated);
- any other async iterable: it may yield a :class:`RunEnd` item; the first one is the ending,
  and whatever follows it (the ``[DONE]`` after an error event, say) is drained for a moment
  and ignored (counted in ``RecordResult.ignored``), so the source finishes its own cleanup
  but cannot add a second ending. A source that raises ends the run *failed* with that error
  (re-raised afterwards unless it is an ``LLMStreamError``, which is the run's outcome, not a
  bug). A source that just stops gets a synthesized ending: completed if every choice it sent
  has a finish reason, otherwise truncated.
- cancelled from outside (the caller's scope): the chunk that was being handed over, if any,
  and a *cancelled* terminal entry are still written, under a shield bounded by
  ``close_timeout`` seconds, before ``Cancelled`` propagates.

And the journal refuses any entry after a stored terminal (atomically, in the backend), so a
second terminal cannot happen even through other writers.
"""

from __future__ import annotations

import collections
import logging
import math
import random
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import attrs
import trio

from .._core._backoff import jittered_backoff
from .._exceptions import LLMStreamError, StreamInterrupted, StreamTruncatedError
from .._models import ChatChunk, StreamStatus
from .._stream import LLMStream
from ._base import Journal, check_run_id
from ._entry import ErrorInfo, JournalEntry, RunEnd, chunk_entry
from ._errors import JournalError, JournalUnavailable, RunClosed, RunTooLong
from ._memory import too_long_end

__all__ = ["DEFAULT_RECORD_OPTIONS", "RecordOptions", "RecordResult", "record"]

logger = logging.getLogger("trio_llmstream.journal")


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attr.name} must be > 0, not {value!r}")


def _non_negative(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attr.name} must be >= 0, not {value!r}")


@attrs.frozen
class RecordOptions:
    """How :func:`record` batches, retries and heartbeats. All times in seconds.

    - ``batch_size``: entries per write at most;
    - ``flush_interval``: how long a batch may wait to fill up (up to ``batch_size``) after
      its first entry arrived. 0, the default: never wait; whatever is queued is written as
      soon as the previous write is done, so a lone entry goes out at once and batches form
      only under load, from what queued up during the previous write;
    - ``max_pending``: entries queued for writing (besides the batch being written) before
      the source is made to wait;
    - ``heartbeat_interval``: mark the run alive after this long without a write; followers'
      ``abandon_after`` must be comfortably larger (3x or more);
    - ``retry_initial`` / ``retry_max``: backoff between failed writes (doubling, jittered);
    - ``give_up_after``: raise ``JournalUnavailable`` after failing this long (None: never);
    - ``close_timeout``: when cancelled, time allowed to write the cancelled ending;
    - ``drain_timeout`` / ``drain_items``: how much of a source is read, and ignored, after
      the ``RunEnd`` it yielded.
    """

    batch_size: int = attrs.field(default=256, validator=_positive)
    flush_interval: float = attrs.field(default=0.0, validator=_non_negative)
    max_pending: int = attrs.field(default=1024, validator=_positive)
    heartbeat_interval: float = attrs.field(default=1.0, validator=_positive)
    retry_initial: float = attrs.field(default=0.05, validator=_positive)
    retry_max: float = attrs.field(default=2.0, validator=_positive)
    give_up_after: float | None = 30.0
    close_timeout: float = attrs.field(default=5.0, validator=_positive)
    drain_timeout: float = attrs.field(default=0.1, validator=_non_negative)
    drain_items: int = attrs.field(default=64, validator=_non_negative)


DEFAULT_RECORD_OPTIONS = RecordOptions()


@attrs.frozen
class RecordResult:
    """What :func:`record` wrote: the terminal ``end`` entry and counts.

    ``chunks`` chunk entries were written in ``flushes`` successful writes, after
    ``failed_flushes`` failed (and retried) ones; ``ignored`` source items came after the
    source's ending and were not written.
    """

    run_id: str
    end: JournalEntry
    chunks: int
    flushes: int
    failed_flushes: int
    ignored: int

    @property
    def status(self) -> StreamStatus:
        assert self.end.end is not None
        return self.end.end.status


class _EndTracker:
    """Finish reasons per choice, to synthesize an ending for a source that just stops."""

    __slots__ = ("finish",)

    def __init__(self) -> None:
        self.finish: dict[int, str | None] = {}

    def add(self, chunk: ChatChunk) -> None:
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                self.finish[choice.index] = choice.finish_reason
            else:
                self.finish.setdefault(choice.index, None)

    @property
    def finish_reason(self) -> str | None:
        return self.finish[min(self.finish)] if self.finish else None

    @property
    def all_finished(self) -> bool:
        return bool(self.finish) and all(r is not None for r in self.finish.values())


class _Broken(Exception):
    """The flusher failed: nothing more can be queued (its error is raised by record())."""


class _Queue:
    """Entries between the consumer and the flusher: bounded, and cheap per entry.

    A trio channel would cost a scheduling round per chunk, more than everything else the
    recorder does with it; here the consumer appends to a deque without waiting unless it is
    full, and wakes the flusher only when the flusher has something to do about it (the
    first entry of a batch, a full batch, the terminal entry, the end).
    """

    __slots__ = ("_data", "_room", "batch_size", "broken", "closed", "entries", "full",
                 "limit", "timed", "times")

    def __init__(self, limit: int, batch_size: int, timed: bool) -> None:
        self.entries: collections.deque[JournalEntry] = collections.deque()
        # When each entry was queued: needed only to hold batches (flush_interval > 0).
        self.timed = timed
        self.times: collections.deque[float] = collections.deque()
        self.limit = limit
        self.batch_size = batch_size
        self.full = min(batch_size, limit)  # this many queued: write now
        self.closed = False
        self.broken = False
        self._data = trio.Event()
        self._room = trio.Event()

    async def put(self, entry: JournalEntry) -> None:
        """Queue ``entry``, waiting while the queue is full. Cancellation: if cancelled,
        the entry was not queued."""
        while len(self.entries) >= self.limit and not self.broken:
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()
        self.put_nowait(entry)

    def put_nowait(self, entry: JournalEntry) -> None:
        """Queue ``entry`` now: the caller saw room (``len(entries) < limit``)."""
        if self.broken or self.closed:
            raise _Broken
        self.entries.append(entry)
        if self.timed:
            self.times.append(trio.current_time())
        n = len(self.entries)
        if n == 1 or n >= self.full or entry.end is not None:
            self._data.set()

    def close(self) -> None:
        self.closed = True
        self._data.set()

    def break_(self) -> None:
        self.broken = True
        self._room.set()

    def ready(self) -> bool:
        """A batch should be written now: a full one (or the queue is full), the terminal
        entry, or nothing more will come."""
        entries = self.entries
        return len(entries) >= self.full or self.closed or entries[-1].end is not None

    async def wait_data(self, deadline: float = math.inf) -> None:
        """Wait until woken by put()/close(), or until ``deadline``."""
        if self._data.is_set():
            self._data = trio.Event()
        with trio.move_on_at(deadline):
            await self._data.wait()

    def take(self) -> list[JournalEntry]:
        n = min(len(self.entries), self.batch_size)
        batch = [self.entries.popleft() for _ in range(n)]
        if self.timed:
            for _ in range(n):
                self.times.popleft()
        self._room.set()
        return batch


def _end_for_error(exc: LLMStreamError, source: object) -> RunEnd:
    truncated = (isinstance(source, LLMStream) and source.status is StreamStatus.TRUNCATED) or (
        isinstance(exc, StreamInterrupted) and isinstance(exc.cause, StreamTruncatedError)
    )
    status = StreamStatus.TRUNCATED if truncated else StreamStatus.FAILED
    return RunEnd(status, error=ErrorInfo.from_exception(exc))


class _Recorder:
    def __init__(
        self,
        journal: Journal,
        run_id: str,
        options: RecordOptions,
        rng: random.Random,
        first_seq: int,
    ) -> None:
        self.journal = journal
        self.run_id = run_id
        self.options = options
        self.rng = rng
        self.seq = first_seq
        self.first_seq = first_seq
        self.queue = _Queue(options.max_pending, options.batch_size, options.flush_interval > 0)
        self.tracker = _EndTracker()
        self.pending: ChatChunk | None = None  # taken from the source, not yet queued
        self.end: JournalEntry | None = None  # the terminal entry, once queued
        self.end_written: JournalEntry | None = None
        self.error: BaseException | None = None  # the flusher's fatal error
        self.flushed = trio.Event()  # the flusher is done (all written, or it failed)
        self.consume_scope = trio.CancelScope()
        self.bg_scope: trio.CancelScope | None = None
        self.last_activity = trio.current_time()
        self.chunks = 0
        self.flushes = 0
        self.failed_flushes = 0
        self.ignored = 0

    def result(self) -> RecordResult:
        assert self.end_written is not None
        return RecordResult(
            run_id=self.run_id,
            end=self.end_written,
            chunks=self.chunks,
            flushes=self.flushes,
            failed_flushes=self.failed_flushes,
            ignored=self.ignored,
        )

    # -- the consumer ------------------------------------------------------------------------

    async def consume(self, source: AsyncIterable[ChatChunk | RunEnd]) -> BaseException | None:
        """Pump the source into the queue and queue the one terminal entry. Returns the
        source's own exception to re-raise (a bug), if any."""
        bug: BaseException | None = None
        it: AsyncIterator[ChatChunk | RunEnd] | None = None
        try:
            it = aiter(source)
            with self.consume_scope:
                try:
                    end, bug, explicit = await self._pump(it, source)
                    self.end = JournalEntry(self.seq, end=end)
                    await self.queue.put(self.end)
                    if explicit:
                        await self._drain(it)
                except trio.Cancelled:
                    if not self.consume_scope.cancel_called:
                        await self._finish_cancelled()
                    raise
                except _Broken:
                    # The flusher failed (its error is re-raised by record()).
                    pass
        finally:
            self.queue.close()
            # The iterator is ours (made by aiter() here): close it, so that an async
            # generator's cleanup runs now and not in the garbage collector. Not an
            # LLMStream's: its owner's ``async with`` closes it.
            aclose = getattr(it, "aclose", None)
            if aclose is not None and not isinstance(source, LLMStream):
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.options.close_timeout
                    try:
                        await aclose()
                    except Exception:
                        logger.debug("run %s: closing the source failed", self.run_id,
                                     exc_info=True)
        return bug

    async def _pump(
        self, it: AsyncIterator[ChatChunk | RunEnd], source: object
    ) -> tuple[RunEnd, BaseException | None, bool]:
        tracker = self.tracker
        queue = self.queue
        entries = queue.entries
        limit = queue.limit
        while True:
            try:
                item = await anext(it)
            except StopAsyncIteration:
                return self._end_for_stop(source), None, False
            except LLMStreamError as exc:
                return _end_for_error(exc, source), None, False
            except trio.Cancelled:
                raise
            except Exception as exc:
                return RunEnd(StreamStatus.FAILED, error=ErrorInfo.from_exception(exc)), exc, False
            if isinstance(item, RunEnd):
                return item, None, True
            if not isinstance(item, ChatChunk):
                bug = TypeError(
                    f"a recorded source yields ChatChunk or RunEnd, not {type(item).__name__}"
                )
                return RunEnd(StreamStatus.FAILED, error=ErrorInfo.from_exception(bug)), bug, True
            tracker.add(item)
            entry = chunk_entry(self.seq, item)  # self.seq: an int >= 1
            if len(entries) < limit:
                # Room: queued without a coroutine (the common case; nothing here yields).
                queue.put_nowait(entry)
            else:
                self.pending = item
                await queue.put(entry)
                self.pending = None
            self.seq += 1
            self.chunks += 1

    def _end_for_stop(self, source: object) -> RunEnd:
        if isinstance(source, LLMStream) and source.status in (
            StreamStatus.COMPLETED,
            StreamStatus.CANCELLED,
        ):
            finish = self.tracker.finish_reason
            if source.status is StreamStatus.CANCELLED:
                return RunEnd(StreamStatus.CANCELLED, finish_reason=finish)
            return RunEnd(StreamStatus.COMPLETED, finish_reason=finish)
        if self.tracker.all_finished:
            return RunEnd(StreamStatus.COMPLETED, finish_reason=self.tracker.finish_reason)
        logger.info("run %s: the source ended without a terminal; recorded as truncated",
                    self.run_id)
        return RunEnd(
            StreamStatus.TRUNCATED,
            error=ErrorInfo(
                type=StreamTruncatedError.__name__,
                message="the source ended without a terminal ([DONE], finish reason or error)",
                retryable=True,
            ),
        )

    async def _drain(self, it: AsyncIterator[ChatChunk | RunEnd]) -> None:
        # The ending is decided and queued; read what the source still has (an error event's
        # [DONE], its cleanup) for a moment, and ignore it.
        opts = self.options
        with trio.move_on_after(opts.drain_timeout):
            while self.ignored < opts.drain_items:
                try:
                    await anext(it)
                except StopAsyncIteration:
                    break
                except trio.Cancelled:
                    raise
                except Exception:
                    logger.debug("run %s: error after the ending ignored", self.run_id,
                                 exc_info=True)
                    break
                self.ignored += 1
        if self.ignored:
            logger.info("run %s: %d item(s) after the ending ignored", self.run_id, self.ignored)

    async def _finish_cancelled(self) -> None:
        # Cancelled from outside: write what was taken from the source and a cancelled
        # ending, shielded but bounded; past the deadline the flusher is cancelled too and
        # the run is left to its followers' abandonment limit.
        deadline = trio.current_time() + self.options.close_timeout
        if self.bg_scope is not None:
            self.bg_scope.deadline = min(self.bg_scope.deadline, deadline)
        with trio.CancelScope(shield=True, deadline=deadline):
            try:
                if self.end is None:
                    if self.pending is not None:
                        await self.queue.put(JournalEntry(self.seq, chunk=self.pending))
                        self.pending = None
                        self.seq += 1
                        self.chunks += 1
                    end = RunEnd(StreamStatus.CANCELLED, finish_reason=self.tracker.finish_reason)
                    self.end = JournalEntry(self.seq, end=end)
                    await self.queue.put(self.end)
                self.queue.close()
                await self.flushed.wait()
            except _Broken:
                pass

    # -- the flusher and the heartbeat -------------------------------------------------------

    async def background(self) -> None:
        # Shielded: after an outside cancellation the cancelled ending must still be written
        # (_finish_cancelled puts a deadline on this scope). It ends when the consumer closes
        # the channel and everything is written, or when a write fails for good.
        with trio.CancelScope(shield=True) as self.bg_scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat)
                    await self._flush_loop()
                    nursery.cancel_scope.cancel()
            finally:
                self.flushed.set()

    async def _flush_loop(self) -> None:
        interval = self.options.flush_interval
        queue = self.queue
        try:
            while True:
                if not queue.entries:
                    if queue.closed:
                        return
                    await queue.wait_data()
                    continue
                if interval > 0 and not queue.ready():
                    deadline = queue.times[0] + interval
                    if trio.current_time() < deadline:
                        await queue.wait_data(deadline)
                        continue
                # Taken from the queue now, kept here until written: a failed write is retried
                # with the same batch.
                batch = queue.take()
                try:
                    await self._write(batch)
                except RunTooLong as exc:
                    # The journal ended the run at its length cap (its terminal entry is
                    # stored): stop the source, and report that ending.
                    self.end_written = JournalEntry(
                        exc.end_seq, end=too_long_end(self.run_id, exc.max_entries)
                    )
                    self.chunks = max(0, exc.end_seq - self.first_seq)
                    queue.break_()
                    self.consume_scope.cancel()
                    return
                if batch[-1].end is not None:
                    self.end_written = batch[-1]
        except Exception as exc:
            self.error = exc
            queue.break_()
            self.consume_scope.cancel()

    async def _write(self, batch: list[JournalEntry]) -> None:
        opts = self.options
        failing_since: float | None = None
        failures = 0
        while True:
            try:
                await self.journal.append(self.run_id, batch)
            except JournalUnavailable as exc:
                self.failed_flushes += 1
                now = trio.current_time()
                if failing_since is None:
                    failing_since = now
                failing = now - failing_since
                if opts.give_up_after is not None and failing >= opts.give_up_after:
                    raise JournalUnavailable(
                        f"run {self.run_id!r}: gave up after {failing:.3g} s of failed writes; "
                        f"entries {batch[0].seq}..{batch[-1].seq} and later were not written "
                        f"({exc})",
                        run_id=self.run_id,
                    ) from exc
                logger.warning("run %s: write of %d entries failed (%s); retrying",
                               self.run_id, len(batch), exc)
                await trio.sleep(
                    jittered_backoff(opts.retry_initial, opts.retry_max, failures, self.rng)
                )
                failures += 1
                continue
            self.flushes += 1
            self.last_activity = trio.current_time()
            return

    async def _heartbeat(self) -> None:
        interval = self.options.heartbeat_interval
        next_at = self.last_activity + interval
        while True:
            await trio.sleep_until(next_at)
            now = trio.current_time()
            due = self.last_activity + interval
            if now < due:
                next_at = due
                continue
            try:
                await self.journal.heartbeat(self.run_id)
            except JournalUnavailable:
                next_at = trio.current_time() + interval / 4
                continue
            except JournalError:
                return  # the run is gone or closed; the flusher reports it
            self.last_activity = trio.current_time()
            next_at = self.last_activity + interval


async def record(
    journal: Journal,
    run_id: str,
    source: LLMStream | AsyncIterable[ChatChunk | RunEnd],
    *,
    options: RecordOptions = DEFAULT_RECORD_OPTIONS,
    create: bool = True,
    meta: bytes | None = None,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> RecordResult:
    """Consume ``source`` into ``journal`` under ``run_id``; return what was written.

    ::

        async with trio.open_nursery() as nursery:
            async with open_llm_stream(llm, chat_ctx=ctx) as stream:
                await nursery.start(record, journal, run_id, stream)  # or await it here

    ``source`` is an ``LLMStream`` (its status and error give the ending) or any async
    iterable of ``ChatChunk`` that may yield a ``RunEnd`` to say how it ended (see the module
    docstring for the exact rules). Every chunk is written exactly once, in order, as entries
    1, 2, ...; then exactly one terminal entry. With ``create`` (the default) the run is
    created first (``RunExists`` if the id is taken); otherwise it must exist, be open, and
    the entries continue after its last one. ``meta``: opaque bytes stored with the run at its
    creation (see :meth:`Journal.create_run`; only with ``create``).
    ``task_status.started()`` is called once the run
    exists, so ``nursery.start(record, ...)`` returns when followers can find it.

    Raises ``JournalUnavailable`` if writes kept failing for ``options.give_up_after``
    seconds, ``RunClosed`` if someone else ended the run (a follower sealed it as abandoned),
    other ``JournalError``\\ s as they come, and the source's own exception after recording
    the failure if it is not an ``LLMStreamError``. An ``LLMStreamError`` from the source is
    the run's outcome, recorded in the terminal entry, and not raised; so is the journal's
    length cap: past its ``max_entries`` the run ends failed with error type ``RunTooLong``
    (``result.end.end.too_long``), the source is no longer read, and ``record`` returns.

    The iterator taken from ``source`` is closed (``aclose()``) when recording ends, unless
    ``source`` is an ``LLMStream``, which its own ``async with`` closes.

    Cancellation: the chunk being handed over and a *cancelled* terminal entry are still
    written (shielded, for at most ``options.close_timeout`` seconds) before ``Cancelled``
    propagates.
    """
    check_run_id(run_id)
    if not isinstance(source, AsyncIterable):
        raise TypeError(f"record() needs an async iterable source, not {type(source).__name__}")
    if meta is not None and not create:
        raise ValueError("meta is stored when the run is created: it needs create=True")
    if create:
        await journal.create_run(run_id, meta=meta)
        first_seq = 1
    else:
        info = await journal.info(run_id)
        if info.end_seq is not None:
            raise RunClosed(
                f"run {run_id!r} already ended (terminal entry {info.end_seq})",
                run_id=run_id,
                end_seq=info.end_seq,
            )
        first_seq = info.last_seq + 1
    rec = _Recorder(journal, run_id, options, rng or random.Random(), first_seq)
    body_exc: BaseException | None = None
    bug: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.background)
        task_status.started()
        try:
            bug = await rec.consume(source)
        except BaseException as exc:
            # Re-raised below, outside the nursery, so that it is not wrapped in a group.
            body_exc = exc
    try:
        if isinstance(body_exc, trio.Cancelled):
            raise body_exc
        if rec.error is not None:
            raise rec.error
        if body_exc is not None:
            raise body_exc
        if bug is not None:
            raise bug
        if rec.end_written is None:  # pragma: no cover - the flusher always writes the end
            raise JournalError(f"run {run_id!r}: the terminal entry was not written",
                               run_id=run_id)
        return rec.result()
    finally:
        body_exc = bug = None  # break reference cycles through the tracebacks
