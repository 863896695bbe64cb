"""Test helpers: a journal wrapper that injects faults, and scripted sources."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterable, Sequence

import trio

from trio_llmstream import ChatChunk, StreamStatus
from trio_llmstream.journal import (
    Journal,
    JournalEntry,
    JournalPage,
    JournalUnavailable,
    RunEnd,
)


class FlakyJournal(Journal):
    """Delegates to ``inner``; the writer's operations fail or hang on command.

    ``plan`` holds one action per ``append`` call, in order (then "ok"): ``"before"`` fails
    without writing, ``"after"`` writes and then fails as if the reply was lost. While
    ``frozen``, the writer's operations (append, heartbeat) hang: a writer process that died
    or lost the network; when thawed (``frozen = False``) they carry on, like a stopped
    process that is continued. Readers' operations always go through.
    """

    def __init__(self, inner: Journal, plan: Iterable[str] = ()) -> None:
        self.inner = inner
        self.plan = collections.deque(plan)
        self._thawed = trio.Event()
        self._thawed.set()
        self.down = False  # every writer op fails at once
        self.latency = 0.0  # each append takes this long (a round trip to a remote journal)
        self.append_calls = 0
        self.batches: list[int] = []
        self.heartbeats = 0
        self.writes: list[tuple[float, int]] = []  # (time, last seq) of successful appends
        self.read_waits: list[float] = []  # the wait of every read

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    @frozen.setter
    def frozen(self, value: bool) -> None:
        if value and not self.frozen:
            self._thawed = trio.Event()
        elif not value:
            self._thawed.set()

    async def create_run(self, run_id: str, *, meta: bytes | None = None) -> None:
        await self.inner.create_run(run_id, meta=meta)

    async def meta(self, run_id: str) -> bytes | None:
        return await self.inner.meta(run_id)

    async def append(self, run_id: str, entries: Sequence[JournalEntry]) -> int:
        self.append_calls += 1
        if self.frozen:
            await self._thawed.wait()
        action = self.plan.popleft() if self.plan else "ok"
        if self.latency:
            await trio.sleep(self.latency)
        if self.down or action == "before":
            await trio.lowlevel.checkpoint()
            raise JournalUnavailable("injected: the write failed", run_id=run_id)
        last = await self.inner.append(run_id, entries)
        if action == "after":
            raise JournalUnavailable("injected: written, but the reply was lost", run_id=run_id)
        self.batches.append(len(entries))
        self.writes.append((trio.current_time(), last))
        return last

    async def heartbeat(self, run_id: str) -> None:
        if self.frozen:
            await self._thawed.wait()
        if self.down:
            await trio.lowlevel.checkpoint()
            raise JournalUnavailable("injected: heartbeat failed", run_id=run_id)
        await self.inner.heartbeat(run_id)
        self.heartbeats += 1

    async def read(
        self, run_id: str, *, after: int = 0, limit: int = 256, wait: float = 0.0
    ) -> JournalPage:
        self.read_waits.append(wait)
        return await self.inner.read(run_id, after=after, limit=limit, wait=wait)

    async def seal_abandoned(self, run_id: str, *, idle_limit: float) -> bool:
        return await self.inner.seal_abandoned(run_id, idle_limit=idle_limit)

    async def delete_run(self, run_id: str) -> None:
        await self.inner.delete_run(run_id)


class Source:
    """An async iterable over ``items`` (chunks, RunEnds), sleeping ``delay`` before each;
    then raises ``error`` if given, or hangs if ``stall``. Counts what it yielded."""

    def __init__(
        self,
        items: Sequence[ChatChunk | RunEnd],
        *,
        delay: float | Sequence[float] = 0.0,
        error: BaseException | None = None,
        stall: bool = False,
    ) -> None:
        self.items = list(items)
        self.delays = [delay] * len(self.items) if isinstance(delay, int | float) else list(delay)
        self.error = error
        self.stall = stall
        self.yielded = 0
        self.finished = False
        self.closed = False

    def __aiter__(self) -> AsyncIterator[ChatChunk | RunEnd]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[ChatChunk | RunEnd]:
        try:
            for item, delay in zip(self.items, self.delays, strict=True):
                if delay:
                    await trio.sleep(delay)
                else:
                    await trio.lowlevel.checkpoint()
                self.yielded += 1
                yield item
            if self.error is not None:
                raise self.error
            if self.stall:
                await trio.sleep_forever()
            self.finished = True
        finally:
            self.closed = True

    @property
    def yielded_chunks(self) -> list[ChatChunk]:
        return [i for i in self.items[: self.yielded] if isinstance(i, ChatChunk)]


async def read_all(journal: Journal, run_id: str, after: int = 0, **kw: float) -> list[
    JournalEntry
]:
    return [entry async for entry in journal.follow(run_id, after=after, **kw)]  # type: ignore[arg-type]


def check_run(entries: Sequence[JournalEntry], chunks: Sequence[ChatChunk],
              status: StreamStatus | None = None) -> RunEnd:
    """The run holds exactly ``chunks`` as entries 1..n, then one terminal entry."""
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert [e.chunk for e in entries[:-1]] == list(chunks)
    terminals = [e for e in entries if e.is_terminal]
    assert len(terminals) == 1
    assert entries[-1].is_terminal
    end = entries[-1].end
    assert end is not None
    if status is not None:
        assert end.status is status, end
    return end
