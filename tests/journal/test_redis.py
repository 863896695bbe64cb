"""RedisJournal against a real redis-server: TTL, no trimming, restarts, dead writers,
outages."""

from __future__ import annotations

import os
import signal
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from coredis.tokens import PureToken

from trio_llmstream import ChatChunk, Choice, ChoiceDelta, StreamStatus
from trio_llmstream.journal import (
    EntriesExpired,
    JournalEntry,
    JournalUnavailable,
    RecordOptions,
    RecordResult,
    RedisJournal,
    RunEnd,
    RunNotFound,
    StreamAbandoned,
    open_redis_journal,
    record,
)

from .conftest import unique_prefix
from .helpers import Source, check_run, read_all
from .redis_server import RedisServer, free_port, running_redis

WRITER = Path(__file__).with_name("writer_process.py")
DONE = RunEnd(StreamStatus.COMPLETED, "stop")


def chunk(n: int) -> ChatChunk:
    return ChatChunk("r", [Choice(ChoiceDelta(content=f"c{n}"))])


def chunks(n: int) -> list[ChatChunk]:
    return [chunk(i) for i in range(1, n + 1)]


async def test_ttl_is_applied_and_runs_are_never_trimmed(redis_server: RedisServer) -> None:
    async with open_redis_journal(
        redis_server.url, prefix=unique_prefix(), ttl=30.0, max_entries=1000
    ) as journal:
        await record(journal, "a", Source([*chunks(1000), DONE]), meta=b"m")
        entries_key, meta_key = journal.keys("a")
        for key in (entries_key, meta_key):
            assert 29_000 < await journal.client.pttl(key) <= 30_000
        # Every entry is kept (no MAXLEN), to the last chunk that fits and the ending.
        assert await journal.client.xlen(entries_key) == 1001
        info = await journal.info("a")
        assert (info.first_seq, info.last_seq, info.end_seq) == (1, 1001, 1001)
        # Past max_entries: ended, typed, still nothing trimmed.
        result = await record(journal, "b", Source([*chunks(1500), DONE]))
        assert result.end.end is not None
        assert result.end.end.too_long
        assert await journal.client.xlen(journal.keys("b")[0]) == 1001


async def test_entries_missing_from_redis_are_reported_not_skipped(
    redis_journal: RedisJournal,
) -> None:
    # The journal trims nothing, but data can be lost under it (a Redis restarted without
    # persistence, an operator's XTRIM): a follower is told, never given a run with a hole.
    await record(redis_journal, "a", Source([*chunks(100), DONE]))
    entries_key, _ = redis_journal.keys("a")
    await redis_journal.client.xtrim(entries_key, threshold=50, trim_strategy=PureToken.MAXLEN)
    info = await redis_journal.info("a")
    assert (info.first_seq, info.last_seq) == (52, 101)
    with pytest.raises(EntriesExpired) as exc:
        await read_all(redis_journal, "a", after=10)
    assert (exc.value.after, exc.value.first_seq) == (10, 52)
    tail = await read_all(redis_journal, "a", after=51)
    check_run([*[JournalEntry(i, chunk=chunk(i)) for i in range(1, 52)], *tail], chunks(100),
              StreamStatus.COMPLETED)


async def test_runs_expire_ttl_after_their_last_write_or_heartbeat(
    redis_server: RedisServer,
) -> None:
    async with open_redis_journal(redis_server.url, prefix=unique_prefix(), ttl=0.5) as journal:
        # Quiet for 1 s, twice the TTL: the heartbeats keep the run.
        source = Source([chunk(1), chunk(2), DONE], delay=[0, 1.0, 0])
        await record(journal, "a", source, options=RecordOptions(heartbeat_interval=0.05))
        check_run(await read_all(journal, "a"), chunks(2), StreamStatus.COMPLETED)
        await trio.sleep(0.65)
        with pytest.raises(RunNotFound):
            await journal.info("a")
        assert await journal.client.exists(list(journal.keys("a"))) == 0


async def test_two_clients_share_runs(redis_server: RedisServer) -> None:
    # Two clients stand for two processes: written through one, followed through the other,
    # with the reader moving between them.
    prefix = unique_prefix()
    async with (
        open_redis_journal(redis_server.url, prefix=prefix) as one,
        open_redis_journal(redis_server.url, prefix=prefix) as two,
    ):
        source = Source([*chunks(30), DONE], delay=0.005)
        seen: list[JournalEntry] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(record, one, "a", source)
            position, clients = 0, [two, one]
            while not (seen and seen[-1].is_terminal):
                follower = clients[0].follow("a", after=position)
                async for entry in follower:
                    seen.append(entry)
                    if entry.seq % 7 == 0:
                        break
                position = follower.position
                clients.reverse()
        check_run(seen, chunks(30), StreamStatus.COMPLETED)


async def test_a_reader_past_the_end_wakes_when_the_run_ends(redis_journal: RedisJournal) -> None:
    source = Source([chunk(1), DONE], delay=[0, 0.3])
    async with trio.open_nursery() as nursery:
        await nursery.start(record, redis_journal, "a", source)
        with trio.fail_after(1.0):  # well within the follower's 5 s poll interval
            assert await read_all(redis_journal, "a", after=10) == []


async def test_a_killed_writer_leads_readers_to_stream_abandoned(
    redis_server: RedisServer, redis_journal: RedisJournal
) -> None:
    limit = 1.0
    cmd = [sys.executable, str(WRITER), redis_server.url, redis_journal.prefix, "k"]
    seen: list[JournalEntry] = []
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(partial(trio.run_process, cmd, check=False))
        with trio.fail_after(20):
            while True:  # the writer process starts (imports) and writes
                try:
                    if (await redis_journal.info("k")).last_seq >= 5:
                        break
                except RunNotFound:
                    pass
                await trio.sleep(0.02)
        follower = redis_journal.follow("k", abandon_after=limit)
        killed_at = None
        with pytest.raises(StreamAbandoned) as exc:
            async for entry in follower:
                seen.append(entry)
                if killed_at is None and entry.seq >= 8:
                    process.kill()  # SIGKILL: no ending can be written
                    killed_at = trio.current_time()
        elapsed = trio.current_time() - killed_at  # type: ignore[operator]
    assert process.returncode == -signal.SIGKILL
    # Silent since at most one chunk interval (20 ms) before the kill: abandoned on time.
    assert limit - 0.1 <= elapsed <= limit + 0.5
    end = exc.value.entry
    assert end is not None
    assert end.end is not None
    assert end.end.abandoned
    # Every chunk the writer got out, then the seal; later readers end at once.
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert [e.chunk.text for e in seen if e.chunk] == [f"c{i}" for i in range(1, len(seen) + 1)]
    with trio.fail_after(0.5), pytest.raises(StreamAbandoned):
        await read_all(redis_journal, "k", abandon_after=limit)


async def test_redis_restart_during_a_run_loses_nothing(tmp_path: Path) -> None:
    with running_redis(tmp_path, appendonly=True) as server:
        async with open_redis_journal(
            server.url, prefix=unique_prefix(), command_timeout=1.0, connect_timeout=0.2
        ) as journal:
            source = Source([*chunks(80), DONE], delay=0.01)
            options = RecordOptions(
                batch_size=4, flush_interval=0.005, retry_initial=0.02, retry_max=0.1,
                give_up_after=15.0,
            )
            seen: list[JournalEntry] = []
            results: list[RecordResult] = []

            async def writer(*, task_status: trio.TaskStatus[None]) -> None:
                results.append(await record(journal, "a", source, options=options,
                                            task_status=task_status))

            async def reader() -> None:
                async for entry in journal.follow("a", abandon_after=8.0, unavailable_after=15):
                    seen.append(entry)

            async with trio.open_nursery() as nursery:
                await nursery.start(writer)
                nursery.start_soon(reader)
                await trio.sleep(0.25)
                await trio.to_thread.run_sync(server.restart, 0.3)
            check_run(seen, chunks(80), StreamStatus.COMPLETED)
            check_run(await read_all(journal, "a"), chunks(80), StreamStatus.COMPLETED)
            assert results[0].failed_flushes >= 1
            assert results[0].chunks == 80


async def test_an_outage_longer_than_give_up_after_fails_the_recorder(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        async with open_redis_journal(
            server.url, prefix=unique_prefix(), connect_timeout=0.1
        ) as journal:
            options = RecordOptions(give_up_after=0.5, retry_initial=0.02, retry_max=0.1)
            source = Source(chunks(100), delay=0.01)

            async def stop_soon() -> None:
                await trio.sleep(0.1)
                await trio.to_thread.run_sync(server.stop)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_soon)
                with trio.fail_after(5), pytest.raises(JournalUnavailable, match="gave up"):
                    await record(journal, "b", source, options=options)
            # It gave up after 0.5 s of failures, at the first batch after the stop.
            assert 5 <= source.yielded <= 100


async def test_an_unreachable_redis_is_a_typed_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with open_redis_journal(url, connect_timeout=0.2) as journal:
        with pytest.raises(JournalUnavailable, match="Redis unavailable"):
            await journal.create_run("a")
        with trio.fail_after(3), pytest.raises(JournalUnavailable):
            await read_all(journal, "a", unavailable_after=0.3)


async def test_a_hung_redis_times_out(tmp_path: Path) -> None:
    with running_redis(tmp_path) as server:
        async with open_redis_journal(
            server.url, prefix=unique_prefix(), command_timeout=0.2
        ) as journal:
            await journal.create_run("a")
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(JournalUnavailable, match=r"did not answer within 0\.2 s"):
                    await journal.heartbeat("a")
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            await journal.heartbeat("a")
            assert (await journal.info("a")).last_seq == 0


async def test_an_exception_from_the_block_is_not_wrapped(redis_server: RedisServer) -> None:
    with pytest.raises(KeyError):
        async with open_redis_journal(redis_server.url):
            raise KeyError("mine")


async def test_waiting_followers_do_not_starve_writers(redis_server: RedisServer) -> None:
    # Many followers blocked on idle runs hold blocking connections; writes still go
    # through at once, on the other client's connections.
    async with open_redis_journal(
        redis_server.url, prefix=unique_prefix(), max_connections=2, max_blocking_connections=40
    ) as journal:
        for i in range(30):
            await journal.create_run(f"idle-{i}")
        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(partial(read_all, journal, f"idle-{i}", abandon_after=60))
            await trio.sleep(0.2)  # all blocked in XREAD now
            started = trio.current_time()
            await record(journal, "busy", Source([*chunks(200), DONE]),
                         options=RecordOptions(batch_size=1, flush_interval=0.0))
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
        assert elapsed < 3.0
        check_run(await read_all(journal, "busy"), chunks(200), StreamStatus.COMPLETED)
