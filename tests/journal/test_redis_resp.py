"""RedisJournal's direct RESP transport (a single Redis node): the protocol parser, scripts
that Redis forgot, database and password from the URL, malformed entries, cancelled
commands; and any chunk sequence through Redis, batched and paged anyhow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import coredis
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_llmstream import ChatChunk, StreamStatus
from trio_llmstream.journal import (
    JournalCorrupted,
    JournalEntry,
    JournalError,
    JournalUnavailable,
    RedisJournal,
    RunEnd,
    open_redis_journal,
)
from trio_llmstream.journal._resp import _Incomplete, _pack, _parse, _RespError
from trio_llmstream.testing.strategies import chunk_sequences

from .conftest import unique_prefix
from .redis_server import RedisClusterServers, RedisServer, running_redis

DONE = RunEnd(StreamStatus.COMPLETED, "stop")

# -- the parser ----------------------------------------------------------------------------------

resp_values = st.recursive(
    st.none() | st.binary(max_size=40) | st.integers(-(2**63), 2**63 - 1),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=30,
)


def encode_resp(value: Any) -> bytes:
    """What a server sends for ``value`` (bytes as bulk strings, as Redis does)."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    return b"*%d\r\n" % len(value) + b"".join(encode_resp(v) for v in value)


@given(resp_values, st.data())
def test_any_reply_parses_whole_and_no_prefix_of_it_does(value: Any, data: st.DataObject) -> None:
    # A reply arrives in pieces of any size: every strict prefix is "incomplete" (never a
    # wrong value, never an IndexError), the whole is the value, and what follows is left.
    wire = encode_resp(value)
    assert _parse(wire + b"+NEXT\r\n", 0) == (value, len(wire))
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(_Incomplete):
        _parse(wire[:cut], 0)


def test_simple_strings_errors_and_nil_arrays() -> None:
    assert _parse(b"+OK\r\n", 0) == (b"OK", 5)
    assert _parse(b"*-1\r\n", 0) == (None, 5)
    error, end = _parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(error, _RespError)
    assert end == 30
    assert error.code == b"NOSCRIPT"
    assert not error.transient
    assert _parse(b"-LOADING Redis is loading\r\n", 0)[0].transient
    # An error inside an array (a script's table) is a value, not raised.
    items, _ = _parse(b"*2\r\n:1\r\n-ERR x\r\n", 0)
    assert items[0] == 1
    assert isinstance(items[1], _RespError)


@given(st.lists(st.binary() | st.text() | st.integers(-(2**63), 2**63 - 1), max_size=8))
def test_commands_are_arrays_of_bulk_strings(args: list[bytes | str | int]) -> None:
    wire = _pack(args)
    expected = [a.encode() if isinstance(a, str) else b"%d" % a if isinstance(a, int) else a
                for a in args]
    assert _parse(wire, 0) == (expected, len(wire))


# -- against a real server -----------------------------------------------------------------------


async def test_a_single_node_uses_the_direct_transport(redis_server: RedisServer) -> None:
    async with open_redis_journal(redis_server.url, prefix=unique_prefix()) as journal:
        assert journal._resp is not None
        assert journal._resp_blocking is not None
        await journal.ping()
    # A URL with options that only coredis reads goes to coredis.
    async with open_redis_journal(redis_server.url + "?health_check_interval=0",
                                  prefix=unique_prefix()) as journal:
        assert journal._resp is None
        await journal.ping()


async def test_scripts_that_redis_forgot_are_sent_again(redis_journal: RedisJournal) -> None:
    # SCRIPT FLUSH (or a restart) empties Redis's script cache: EVALSHA answers NOSCRIPT,
    # and the transport sends the script itself instead of failing the write.
    await redis_journal.create_run("a")
    await redis_journal.append("a", [JournalEntry(1, chunk=ChatChunk("r", []))])
    await redis_journal.client.script_flush()
    await redis_journal.append("a", [JournalEntry(2, end=DONE)])
    page = await redis_journal.read("a")
    assert [e.seq for e in page.entries] == [1, 2]
    assert page.info.end_seq == 2


async def test_the_database_in_the_url_is_used(redis_server: RedisServer) -> None:
    prefix = unique_prefix()
    url = redis_server.url.rsplit("/", 1)[0] + "/3"
    async with open_redis_journal(url, prefix=prefix) as journal:
        assert journal._resp is not None
        await journal.create_run("a")
        _entries_key, meta_key = journal.keys("a")
        db0 = coredis.Redis.from_url(redis_server.url, decode_responses=False)
        db3 = coredis.Redis.from_url(url, decode_responses=False)
        async with db0, db3:
            assert await db3.exists([meta_key]) == 1
            assert await db0.exists([meta_key]) == 0


async def test_a_password_in_the_url_is_sent_and_a_wrong_one_is_a_typed_error(
    tmp_path: Path,
) -> None:
    with running_redis(tmp_path) as server:
        admin = coredis.Redis.from_url(server.url, decode_responses=False)
        async with admin:
            await admin.config_set({"requirepass": "s3cret"})
        host = f"127.0.0.1:{server.port}"
        async with open_redis_journal(f"redis://:s3cret@{host}/0", prefix="p") as journal:
            assert journal._resp is not None
            await journal.create_run("a")
            assert (await journal.info("a")).last_seq == 0
        async with open_redis_journal(f"redis://:wrong@{host}/0", prefix="p") as journal:
            with pytest.raises(JournalError) as info:
                await journal.info("a")
            assert "s3cret" not in str(info.value)
            assert "wrong" not in str(info.value)
        async with open_redis_journal(f"redis://{host}/0", prefix="p") as journal:
            with pytest.raises(JournalError, match="NOAUTH"):
                await journal.info("a")


async def test_malformed_stream_entries_are_reported_not_skipped(
    redis_journal: RedisJournal,
) -> None:
    # Entries that the scripts did not write (fields other than k and d): a page read and
    # a blocked read both report them as corrupted.
    await redis_journal.create_run("a")
    entries_key, meta_key = redis_journal.keys("a")
    client = redis_journal.client
    await client.xadd(entries_key, {"x": "y"}, identifier="1-0")
    await client.hset(meta_key, {"last": 1})
    with pytest.raises(JournalCorrupted, match="1-0"):
        await redis_journal.read("a")

    async def write_soon() -> None:
        await trio.sleep(0.05)
        await client.xadd(entries_key, {"k": "z", "d": "{}"}, identifier="2-0")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_soon)
        with pytest.raises(JournalCorrupted, match="unknown kind"):
            await redis_journal.read("a", after=1, wait=5)


async def test_a_cancelled_wait_leaves_the_journal_usable(redis_journal: RedisJournal) -> None:
    # A blocked XREAD cancelled from outside: its connection is closed (its reply could
    # still come), and the next commands get fresh or idle ones, with correct replies.
    await redis_journal.create_run("a")
    for seq in range(1, 4):
        with trio.move_on_after(0.05) as scope:
            await redis_journal.read("a", after=seq - 1, wait=10)
        assert scope.cancelled_caught
        await redis_journal.append("a", [JournalEntry(seq, chunk=ChatChunk("r", []))])
        page = await redis_journal.read("a", after=seq - 1, wait=10)
        assert [e.seq for e in page.entries] == [seq]


@st.composite
def batched(draw: st.DrawFn) -> tuple[list[ChatChunk], list[int], list[int]]:
    chunks = draw(chunk_sequences())
    n = len(chunks) + 1  # and the terminal entry
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=n))))
    pages = draw(st.lists(st.integers(1, 7), min_size=1, max_size=5))
    return chunks, [c for c in cuts if c < n], pages


@settings(max_examples=max(10, settings.default.max_examples // 5))
@given(batched())
def test_any_chunks_round_trip_through_redis_with_any_batches_and_pages(
    redis_server: RedisServer, case: tuple[list[ChatChunk], list[int], list[int]]
) -> None:
    chunks, cuts, pages = case
    entries = [JournalEntry(i, chunk=c) for i, c in enumerate(chunks, 1)]
    entries.append(JournalEntry(len(chunks) + 1, end=DONE))

    async def main() -> None:
        async with open_redis_journal(redis_server.url, prefix=unique_prefix()) as journal:
            await journal.create_run("a")
            for start, stop in zip([0, *cuts], [*cuts, len(entries)], strict=True):
                assert await journal.append("a", entries[start:stop]) == stop
                # A retried batch (its reply lost) stores nothing twice.
                assert await journal.append("a", entries[start:stop]) == stop
            got: list[JournalEntry] = []
            while not got or got[-1].end is None:
                page = await journal.read("a", after=len(got), limit=pages[len(got) % len(pages)])
                got += page.entries
            assert got == entries
            followed = [e async for e in journal.follow("a", page_size=pages[0])]
            assert followed == entries

    trio.run(main)


async def test_a_cluster_node_without_cluster_true_is_an_error_not_an_outage(
    redis_cluster: RedisClusterServers,
) -> None:
    # A cluster node spoken to as a single node answers MOVED for the slots it does not
    # hold: a configuration error (JournalError), not an outage to retry for 30 s.
    async with open_redis_journal(redis_cluster.url, prefix=unique_prefix()) as journal:
        outcomes = []
        for i in range(20):  # run ids in several slots, so on several nodes
            try:
                await journal.create_run(f"run-{i}")
                outcomes.append("ok")
            except JournalUnavailable:  # pragma: no cover - the defect this test catches
                outcomes.append("unavailable")
            except JournalError as exc:
                outcomes.append("error" if "MOVED" in str(exc) else repr(exc))
        assert "unavailable" not in outcomes
        assert set(outcomes) == {"ok", "error"}
