"""What every journal backend guarantees, checked against MemoryJournal and RedisJournal."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from trio_llmstream import ChatChunk, Choice, ChoiceDelta, StreamStatus
from trio_llmstream.journal import (
    EntriesExpired,
    ErrorInfo,
    Journal,
    JournalCorrupted,
    JournalEntry,
    MemoryJournal,
    RecordOptions,
    RunClosed,
    RunEnd,
    RunExists,
    RunNotFound,
    StreamAbandoned,
    open_redis_journal,
    record,
)
from trio_llmstream.testing import text_chunks

from .conftest import unique_prefix
from .helpers import FlakyJournal, Source, check_run, read_all
from .redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def journal(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[Journal]:
    if request.param == "memory":
        yield MemoryJournal()
        return
    async with open_redis_journal(redis_server.url, prefix=unique_prefix()) as j:
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


async def test_expired_entries_are_reported_not_skipped(redis_server: RedisServer) -> None:
    journals: list[Journal] = [MemoryJournal(max_entries=16)]
    async with open_redis_journal(redis_server.url, prefix=unique_prefix(), maxlen=16) as redis:
        journals.append(redis)
        for journal in journals:
            chunks = [chunk(i) for i in range(1, 1001)]
            await record(journal, "a", Source([*chunks, END]))
            info = await journal.info("a")
            assert info.last_seq == info.end_seq == 1001
            assert info.first_seq > 1
            with pytest.raises(EntriesExpired) as exc:
                await read_all(journal, "a")
            assert exc.value.first_seq == info.first_seq
            tail = await read_all(journal, "a", after=info.first_seq - 1)
            assert [e.seq for e in tail] == list(range(info.first_seq, 1002))


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
