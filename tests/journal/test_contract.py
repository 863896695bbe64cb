"""What every journal backend guarantees, checked against MemoryJournal, RedisJournal on one
Redis server, and RedisJournal on a 3-master Redis Cluster."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from trio_llmstream import ChatChunk, Choice, ChoiceDelta, StreamStatus
from trio_llmstream.journal import (
    MAX_META,
    ErrorInfo,
    Journal,
    JournalCorrupted,
    JournalEntry,
    MemoryJournal,
    RecordOptions,
    RecordResult,
    RunClosed,
    RunEnd,
    RunExists,
    RunNotFound,
    RunTooLong,
    StreamAbandoned,
    open_redis_journal,
    record,
)
from trio_llmstream.testing import text_chunks

from .conftest import unique_prefix
from .helpers import FlakyJournal, Source, check_run, read_all
from .redis_server import RedisClusterServers, RedisServer

OpenJournal = Callable[..., contextlib.AbstractAsyncContextManager[Journal]]


@pytest.fixture(params=["memory", "redis", "cluster"])
def open_journal(request: pytest.FixtureRequest) -> OpenJournal:
    """Opens a journal of the backend under test with the options given (``max_entries``).
    The Redis servers are started only for the backends that need them."""
    backend = request.param

    @contextlib.asynccontextmanager
    async def opener(**options: Any) -> AsyncIterator[Journal]:
        if backend == "memory":
            yield MemoryJournal(**options)
            return
        if backend == "redis":
            server: RedisServer = request.getfixturevalue("redis_server")
            url, cluster = server.url, False
        else:
            nodes: RedisClusterServers = request.getfixturevalue("redis_cluster")
            url, cluster = nodes.url, True
        async with open_redis_journal(
            url, prefix=unique_prefix(), cluster=cluster, **options
        ) as journal:
            yield journal

    return opener


@pytest.fixture
async def journal(open_journal: OpenJournal) -> AsyncIterator[Journal]:
    async with open_journal() as j:
        yield j


def chunk(n: int) -> ChatChunk:
    return ChatChunk("r", [Choice(ChoiceDelta(content=f"c{n}"))])


def entries(first: int, last: int) -> list[JournalEntry]:
    return [JournalEntry(i, chunk=chunk(i)) for i in range(first, last + 1)]


END = RunEnd(StreamStatus.COMPLETED, "stop")


async def test_runs_are_created_once(journal: Journal) -> None:
    await journal.create_run("a")
    with pytest.raises(RunExists):
        await journal.create_run("a")
    info = await journal.info("a")
    assert (info.last_seq, info.end_seq, info.first_seq) == (0, None, 1)
    with pytest.raises(RunNotFound):
        await journal.info("b")
    with pytest.raises(RunNotFound):
        await journal.append("b", entries(1, 1))
    with pytest.raises(RunNotFound):
        await journal.heartbeat("b")
    with pytest.raises(ValueError, match="run id"):
        await journal.create_run("has space")
    with pytest.raises(ValueError, match="run id"):
        await journal.create_run("{tag}")


async def test_append_is_idempotent_by_seq_and_refuses_gaps(journal: Journal) -> None:
    await journal.create_run("a")
    assert await journal.append("a", entries(1, 3)) == 3
    # A retried batch (its reply was lost) stores nothing twice, even overlapping new ones.
    assert await journal.append("a", entries(1, 3)) == 3
    assert await journal.append("a", entries(2, 5)) == 5
    with pytest.raises(JournalCorrupted, match="gap"):
        await journal.append("a", entries(7, 8))
    page = await journal.read("a", after=0)
    assert [e.seq for e in page.entries] == [1, 2, 3, 4, 5]
    assert [e.chunk for e in page.entries] == [chunk(i) for i in range(1, 6)]


async def test_nothing_is_written_after_the_terminal_entry(journal: Journal) -> None:
    await journal.create_run("a")
    final = [*entries(1, 2), JournalEntry(3, end=END)]
    assert await journal.append("a", final) == 3
    # The same batch again is an idempotent retry, not a second ending...
    assert await journal.append("a", final) == 3
    # ...but anything new is refused: a second terminal cannot happen.
    second = RunEnd(StreamStatus.FAILED, error=ErrorInfo("X", "late"))
    with pytest.raises(RunClosed) as info:
        await journal.append("a", [JournalEntry(4, end=second)])
    assert info.value.end_seq == 3
    with pytest.raises(RunClosed):
        await journal.append("a", entries(4, 4))
    assert not await journal.seal_abandoned("a", idle_limit=0.0)
    await journal.heartbeat("a")  # a no-op once ended
    got = await read_all(journal, "a")
    check_run(got, [chunk(1), chunk(2)], StreamStatus.COMPLETED)


async def test_a_batch_is_consecutive_with_the_terminal_last(journal: Journal) -> None:
    await journal.create_run("a")
    with pytest.raises(JournalCorrupted):
        await journal.append("a", [JournalEntry(1, end=END), *entries(2, 2)])
    with pytest.raises(JournalCorrupted):
        await journal.append("a", [*entries(1, 1), *entries(3, 3)])
    assert (await journal.info("a")).last_seq == 0


async def test_resume_from_every_position(journal: Journal) -> None:
    chunks = text_chunks("one two three four five six seven")
    result = await record(journal, "a", Source(chunks), options=RecordOptions(batch_size=3))
    assert result.chunks == len(chunks)
    everything = await read_all(journal, "a")
    check_run(everything, chunks, StreamStatus.COMPLETED)
    for after in range(len(everything) + 1):
        got = await read_all(journal, "a", after=after)
        assert got == everything[after:]
    # Past the end: nothing, at once.
    assert await read_all(journal, "a", after=len(everything) + 5) == []


async def test_paging_returns_everything_in_order(journal: Journal) -> None:
    chunks = [chunk(i) for i in range(1, 301)]
    await record(journal, "a", Source([*chunks, END]))
    got = [e async for e in journal.follow("a", page_size=7)]
    check_run(got, chunks, StreamStatus.COMPLETED)


async def test_live_followers_see_every_entry_once(journal: Journal) -> None:
    chunks = [chunk(i) for i in range(1, 41)]
    source = Source([*chunks, END], delay=0.002)
    views: list[list[JournalEntry]] = [[], [], []]

    async def follow(view: list[JournalEntry], after: int) -> None:
        async for entry in journal.follow("a", after=after):
            view.append(entry)

    async with trio.open_nursery() as nursery:
        await nursery.start(record, journal, "a", source)
        for view in views:
            nursery.start_soon(follow, view, 0)
    for view in views:
        check_run(view, chunks, StreamStatus.COMPLETED)


async def test_reader_disconnects_and_resumes(journal: Journal) -> None:
    chunks = [chunk(i) for i in range(1, 31)]
    seen: list[JournalEntry] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(record, journal, "a", Source([*chunks, END], delay=0.003))
        position = 0
        while not (seen and seen[-1].is_terminal):
            follower = journal.follow("a", after=position)
            async for entry in follower:
                seen.append(entry)
                if entry.seq % 4 == 0:
                    break  # disconnect
            position = follower.position
    check_run(seen, chunks, StreamStatus.COMPLETED)


async def test_abandoned_run_is_sealed_once(journal: Journal) -> None:
    await journal.create_run("a")
    await journal.append("a", entries(1, 2))
    with trio.fail_after(5):
        with pytest.raises(StreamAbandoned) as info:
            await read_all(journal, "a", abandon_after=0.3)
    err = info.value
    assert err.last_seq == 2
    assert err.entry is not None
    assert err.entry.seq == 3
    assert err.entry.end is not None
    assert err.entry.end.abandoned
    assert err.entry.end.status is StreamStatus.FAILED
    # Another reader ends the same way at once, from the seal.
    with trio.fail_after(0.5), pytest.raises(StreamAbandoned) as again:
        await read_all(journal, "a", after=1, abandon_after=0.3)
    assert again.value.entry == err.entry
    # The writer, back, finds its run closed.
    with pytest.raises(RunClosed):
        await journal.append("a", entries(3, 3))


async def test_a_batch_past_max_entries_ends_the_run_with_run_too_long(
    open_journal: OpenJournal,
) -> None:
    async with open_journal(max_entries=5) as journal:
        # Exactly max_entries chunks and the ending fit.
        await journal.create_run("fits")
        assert await journal.append("fits", [*entries(1, 5), JournalEntry(6, end=END)]) == 6
        check_run(await read_all(journal, "fits"), [chunk(i) for i in range(1, 6)],
                  StreamStatus.COMPLETED)

        await journal.create_run("a")
        assert await journal.append("a", entries(1, 3)) == 3
        # 4..7: 4 and 5 fit; the journal ends the run at 6, atomically, and says so.
        with pytest.raises(RunTooLong) as exc:
            await journal.append("a", entries(4, 7))
        assert (exc.value.end_seq, exc.value.max_entries, exc.value.run_id) == (6, 5, "a")
        assert isinstance(exc.value, RunClosed)
        assert not exc.value.retryable
        info = await journal.info("a")
        assert (info.last_seq, info.end_seq) == (6, 6)
        got = await read_all(journal, "a")
        end = check_run(got, [chunk(i) for i in range(1, 6)], StreamStatus.FAILED)
        assert end.too_long
        assert not end.abandoned
        assert end.error is not None
        assert end.error.type == "RunTooLong"
        assert "5 entries" in end.error.message
        # The same batch again (a retry after a lost reply), later chunks, another ending:
        # all told RunTooLong, none stored.
        for batch in (entries(4, 7), entries(7, 7), [JournalEntry(6, end=END)]):
            with pytest.raises(RunTooLong):
                await journal.append("a", batch)
        # ...but a retry of entries stored before the cap is still an idempotent no-op.
        assert await journal.append("a", entries(2, 4)) == 6
        assert await read_all(journal, "a") == got
        # A terminal entry past the cap is replaced too (the chunks before it did not fit).
        await journal.create_run("b")
        with pytest.raises(RunTooLong):
            await journal.append("b", [*entries(1, 6), JournalEntry(7, end=END)])
        check_run(await read_all(journal, "b"), [chunk(i) for i in range(1, 6)],
                  StreamStatus.FAILED)


async def test_record_past_max_entries_ends_typed_and_followers_see_it(
    open_journal: OpenJournal,
) -> None:
    chunks = [chunk(i) for i in range(1, 101)]
    source = Source([*chunks, END], delay=0.001)
    views: list[list[JournalEntry]] = [[], []]

    async def follow(view: list[JournalEntry]) -> None:
        async for entry in journal.follow("a"):
            view.append(entry)

    results: list[RecordResult] = []

    async def write(task_status: trio.TaskStatus[None]) -> None:
        results.append(await record(journal, "a", source, options=RecordOptions(batch_size=4),
                                    task_status=task_status))

    async with open_journal(max_entries=30) as journal:
        async with trio.open_nursery() as nursery:
            await nursery.start(write)
            for view in views:
                nursery.start_soon(follow, view)
        [result] = results
        assert result.chunks == 30
        assert result.status is StreamStatus.FAILED
        assert result.end.seq == 31
        assert result.end.end is not None
        assert result.end.end.too_long
        # The recorder stopped reading its source (and closed it) instead of draining it.
        assert source.closed
        assert not source.finished
        assert source.yielded < 100
        for view in (*views, await read_all(journal, "a")):
            assert check_run(view, chunks[:30], StreamStatus.FAILED) == result.end.end
        # A flush whose reply was lost as it hit the cap is retried and ends the same way.
        flaky = FlakyJournal(journal, ["ok", "after", "after"])
        result = await record(flaky, "b", Source([*chunks, END]),
                              options=RecordOptions(batch_size=16,
                                                    retry_initial=0.001, retry_max=0.01))
        assert (result.chunks, result.end.seq) == (30, 31)
        check_run(await read_all(journal, "b"), chunks[:30], StreamStatus.FAILED)


async def test_a_throttled_follower_gets_every_entry_of_a_long_live_run(
    open_journal: OpenJournal,
) -> None:
    # The writer runs 50,000 entries ahead of a follower that reads slowly: formerly the
    # oldest were trimmed under it (a cap of 10,000) and it was cut off; a live run is never
    # trimmed, so it gets every entry, once, in order.
    n = 50_000
    chunks = [chunk(i) for i in range(1, n + 1)]
    got: list[JournalEntry] = []
    written = trio.Event()

    async with open_journal(max_entries=n) as journal:

        async def follow() -> None:
            async for entry in journal.follow("a", page_size=500):
                got.append(entry)
                if entry.seq == 1_000:
                    # Stalled until the writer is done, 49,000 entries ahead...
                    await written.wait()
                elif entry.seq % 500 == 0:
                    await trio.sleep(0.001)  # ...then still slow

        async with trio.open_nursery() as nursery:
            await nursery.start(record, journal, "a", Source([*chunks, END]))
            nursery.start_soon(follow)
            with trio.fail_after(120):
                while not (await journal.info("a")).ended:
                    await trio.sleep(0.01)
            assert len(got) == 1_000
            written.set()
        check_run(got, chunks, StreamStatus.COMPLETED)
        await journal.delete_run("a")


async def test_run_metadata_is_stored_with_the_run(journal: Journal) -> None:
    meta = b"owner=\x00\xffsha256:" + bytes(range(256))
    await journal.create_run("a", meta=meta)
    assert await journal.meta("a") == meta
    await journal.create_run("plain")
    assert await journal.meta("plain") is None
    await journal.create_run("empty", meta=b"")
    assert await journal.meta("empty") == b""
    # Taken ids keep their metadata: creating again cannot replace the owner.
    with pytest.raises(RunExists):
        await journal.create_run("a", meta=b"thief")
    assert await journal.meta("a") == meta
    # It stays through writes and the end, and goes with the run.
    await journal.append("a", [*entries(1, 2), JournalEntry(3, end=END)])
    assert await journal.meta("a") == meta
    await journal.delete_run("a")
    with pytest.raises(RunNotFound):
        await journal.meta("a")
    with pytest.raises(RunNotFound):
        await journal.meta("never")
    # Bounded, and bytes only; refused before anything is created.
    big = b"x" * MAX_META
    await journal.create_run("big", meta=big)
    assert await journal.meta("big") == big
    with pytest.raises(ValueError, match="at most"):
        await journal.create_run("too-big", meta=big + b"x")
    with pytest.raises(TypeError, match="bytes"):
        await journal.create_run("text", meta="owner")  # type: ignore[arg-type]
    for run_id in ("too-big", "text"):
        with pytest.raises(RunNotFound):
            await journal.info(run_id)


async def test_record_stores_metadata_at_creation(journal: Journal) -> None:
    await record(journal, "a", Source([chunk(1), END]), meta=b"principal")
    assert await journal.meta("a") == b"principal"
    await journal.create_run("b", meta=b"m")
    with pytest.raises(ValueError, match="create=True"):
        await record(journal, "b", Source([END]), create=False, meta=b"other")
    assert await journal.meta("b") == b"m"


async def test_flush_failures_lose_and_duplicate_nothing(journal: Journal) -> None:
    flaky = FlakyJournal(journal, ["before", "after", "ok", "after", "after", "before"])
    chunks = [chunk(i) for i in range(1, 26)]
    options = RecordOptions(batch_size=4, retry_initial=0.001, retry_max=0.01)
    result = await record(flaky, "a", Source([*chunks, END]), options=options)
    assert result.failed_flushes == 5
    check_run(await read_all(journal, "a"), chunks, StreamStatus.COMPLETED)


async def test_delete_run(journal: Journal) -> None:
    await record(journal, "a", Source([chunk(1), END]))
    await journal.delete_run("a")
    await journal.delete_run("a")
    with pytest.raises(RunNotFound):
        await journal.info("a")
    await journal.create_run("a")  # the id is free again
