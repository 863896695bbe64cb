"""Recording and following in memory, with trio's MockClock (autojump) for exact timing."""

from __future__ import annotations

from functools import partial

import pytest
import trio
from trio.testing import MockClock

from trio_llmstream import (
    APIStatusError,
    ChatChunk,
    ChatContext,
    Choice,
    ChoiceDelta,
    ProviderError,
    StreamStatus,
    open_llm_stream,
)
from trio_llmstream.journal import (
    ErrorInfo,
    JournalEntry,
    JournalFull,
    JournalUnavailable,
    MemoryJournal,
    RecordOptions,
    RunClosed,
    RunEnd,
    RunNotFound,
    StreamAbandoned,
    record,
)
from trio_llmstream.testing import Fault, FaultKind, ScriptedAttempt, ScriptedLLM, text_chunks

from .helpers import FlakyJournal, Source, check_run, read_all

# Times are stated from each test's start, T0 (the clock's epoch is arbitrary).


def chunk(n: int) -> ChatChunk:
    return ChatChunk("r", [Choice(ChoiceDelta(content=f"c{n}"))])


def chunks(n: int) -> list[ChatChunk]:
    return [chunk(i) for i in range(1, n + 1)]


DONE = RunEnd(StreamStatus.COMPLETED, "stop")
CTX = ChatContext.from_messages([])


# -- batching ------------------------------------------------------------------------------------


async def test_a_fast_source_is_written_in_full_batches(autojump_clock: MockClock) -> None:
    t0 = trio.current_time()
    flaky = FlakyJournal(MemoryJournal())
    options = RecordOptions(batch_size=10, flush_interval=1.0)
    result = await record(flaky, "a", Source([*chunks(95), DONE]), options=options)
    # Full batches at once; the last one as soon as the terminal entry is in it.
    assert flaky.batches == [10] * 9 + [6]
    assert result.flushes == 10
    assert trio.current_time() == t0


async def test_a_slow_source_is_flushed_after_the_interval(autojump_clock: MockClock) -> None:
    t0 = trio.current_time()
    flaky = FlakyJournal(MemoryJournal())
    options = RecordOptions(batch_size=100, flush_interval=0.25)
    await record(flaky, "a", Source([*chunks(10), DONE], delay=0.1), options=options)
    # A batch starts with its first entry and is written 0.25 s later: the entries of
    # t=0.1, 0.2, 0.3 at 0.35; of 0.4, 0.5, 0.6 at 0.65; ... the terminal one at once.
    times = [round(t - t0, 6) for t, _ in flaky.writes]
    assert times == [0.35, 0.65, 0.95, 1.1]
    assert flaky.batches == [3, 3, 3, 2]


async def test_flush_interval_zero_writes_each_entry_at_once(autojump_clock: MockClock) -> None:
    flaky = FlakyJournal(MemoryJournal())
    options = RecordOptions(batch_size=100, flush_interval=0.0)
    await record(flaky, "a", Source([*chunks(5), DONE], delay=0.1), options=options)
    assert flaky.batches == [1, 1, 1, 1, 1, 1]


async def test_the_defaults_write_at_once_when_the_writer_has_nothing_more(
    autojump_clock: MockClock,
) -> None:
    # A source paced like a model: each chunk is written the moment it arrives (no timer
    # holds it back), so a live follower has it at once.
    t0 = trio.current_time()
    flaky = FlakyJournal(MemoryJournal())
    seen_at: dict[int, float] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(record, flaky, "a", Source([*chunks(5), DONE], delay=0.1))
        async for entry in flaky.follow("a"):
            seen_at[entry.seq] = trio.current_time() - t0
    assert flaky.batches == [1, 1, 1, 1, 1, 1]
    assert [round(t - t0, 6) for t, _ in flaky.writes] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert [round(seen_at[i], 6) for i in range(1, 7)] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


async def test_the_defaults_batch_only_under_load(autojump_clock: MockClock) -> None:
    # Each write takes 10 ms (a round trip); the source has 1,000 chunks ready at once. The
    # first goes out (nearly) alone, at once; the rest queue up during each write and go out
    # together (up to batch_size), so the writes are few and none waits for a timer.
    t0 = trio.current_time()
    flaky = FlakyJournal(MemoryJournal())
    flaky.latency = 0.01
    options = RecordOptions()
    result = await record(flaky, "a", Source([*chunks(1000), DONE]), options=options)
    # (1 or 2: what the source had put in when trio ran the flusher, woken by the first.)
    assert flaky.batches[0] <= 2
    assert max(flaky.batches) == options.batch_size
    assert sum(flaky.batches) == 1001
    assert len(flaky.batches) <= 2 + 1000 // options.batch_size
    assert trio.current_time() - t0 == pytest.approx(0.01 * len(flaky.batches))
    assert result.flushes == len(flaky.batches)
    check_run(await read_all(flaky, "a"), chunks(1000), StreamStatus.COMPLETED)


async def test_a_live_follower_waits_for_the_next_entry_in_one_read(
    autojump_clock: MockClock,
) -> None:
    # After each entry, the follower's next read waits for more at once (a Redis follower:
    # one blocking read, not a look and then a blocking read, which added a round trip to
    # every live entry); only its very first read looks without waiting.
    flaky = FlakyJournal(MemoryJournal())
    async with trio.open_nursery() as nursery:
        await nursery.start(record, flaky, "a", Source([*chunks(5), DONE], delay=0.1))
        got = await read_all(flaky, "a")
    check_run(got, chunks(5), StreamStatus.COMPLETED)
    assert flaky.read_waits[0] == 0.0
    assert all(w > 0 for w in flaky.read_waits[1:]), flaky.read_waits
    assert len(flaky.read_waits) <= 1 + 6


async def test_a_follower_sees_a_write_within_the_flush_interval(autojump_clock: MockClock) -> None:
    journal = MemoryJournal()
    options = RecordOptions(batch_size=1000, flush_interval=0.05)
    sent_at: dict[int, float] = {}
    seen_at: dict[int, float] = {}

    async def timed_source():  # type: ignore[no-untyped-def]
        for i in range(1, 21):
            await trio.sleep(0.03)
            sent_at[i] = trio.current_time()
            yield chunk(i)
        yield DONE

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(record, journal, "a", timed_source(), options=options))
        async for entry in journal.follow("a"):
            seen_at[entry.seq] = trio.current_time()
    lags = [seen_at[i] - sent_at[i] for i in sent_at]
    assert max(lags) <= 0.05 + 1e-9
    assert min(lags) >= 0


# -- failures, backpressure, giving up -----------------------------------------------------------


async def test_failed_flushes_are_retried_with_backoff(autojump_clock: MockClock) -> None:
    t0 = trio.current_time()
    inner = MemoryJournal()
    flaky = FlakyJournal(inner, ["before"] * 4 + ["after"])
    options = RecordOptions(batch_size=5, retry_initial=0.1, retry_max=0.4)
    result = await record(flaky, "a", Source([*chunks(12), DONE]), options=options)
    assert result.failed_flushes == 5
    # Jittered backoff: 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.2-0.4, 0.2-0.4.
    assert 0.75 <= trio.current_time() - t0 <= 1.5
    check_run(await read_all(inner, "a"), chunks(12), StreamStatus.COMPLETED)


async def test_writer_gives_up_and_its_followers_end_abandoned(autojump_clock: MockClock) -> None:
    t0 = trio.current_time()
    inner = MemoryJournal()
    flaky = FlakyJournal(inner)
    options = RecordOptions(batch_size=1, give_up_after=5.0, heartbeat_interval=1.0)
    source = Source([*chunks(10), DONE], delay=1.0)

    async def go_down() -> None:
        await trio.sleep(3.5)
        flaky.down = True

    async def writer() -> None:
        with pytest.raises(JournalUnavailable, match="gave up after"):
            await record(flaky, "a", source, options=options)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        nursery.start_soon(go_down)
        await trio.sleep(0.1)
        with pytest.raises(StreamAbandoned) as exc:
            await read_all(inner, "a", abandon_after=4.0)
        abandoned_at = trio.current_time() - t0
        assert exc.value.last_seq == 3
    # Last write at t=3 (entry 3); silent from then: abandoned at exactly t=7.
    assert abandoned_at == pytest.approx(7.0)
    assert trio.current_time() - t0 >= 4.0 + 5.0  # the writer gave up after 5 s of failures


async def test_a_journal_outage_applies_backpressure_with_bounded_memory(
    autojump_clock: MockClock,
) -> None:
    inner = MemoryJournal()
    flaky = FlakyJournal(inner)
    flaky.frozen = True  # every write hangs
    options = RecordOptions(batch_size=4, max_pending=8)
    source = Source([*chunks(100), DONE])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(record, flaky, "a", source, options=options))
        await trio.sleep(10)
        # In the write that hangs, whatever was ready when the flusher took it (1 or 2
        # entries, as trio happens to schedule the two tasks; never more than batch_size),
        # 8 queued, 1 in hand, waiting for room.
        assert 1 + 8 + 1 <= source.yielded <= 4 + 8 + 1
        assert len(flaky.inner._runs["a"].entries) == 0  # type: ignore[attr-defined]
        # The journal stays unreachable: cancelling cannot write an ending either, so the
        # run's followers end by abandonment.
        nursery.cancel_scope.cancel()
    assert source.closed
    with pytest.raises(StreamAbandoned):
        await read_all(inner, "a")


async def test_cancelled_recording_writes_the_chunk_in_hand_and_a_cancelled_end(
    autojump_clock: MockClock,
) -> None:
    journal = MemoryJournal()
    flaky = FlakyJournal(journal)
    source = Source(chunks(50), delay=0.1)
    options = RecordOptions(batch_size=3, flush_interval=10.0, max_pending=2)
    with trio.move_on_after(1.05):
        await record(flaky, "a", source, options=options)
    entries = await read_all(journal, "a")
    end = check_run(entries, source.yielded_chunks, StreamStatus.CANCELLED)
    assert end.error is None
    assert source.yielded == 10


async def test_cancelled_recording_is_bounded_when_the_journal_hangs(
    autojump_clock: MockClock,
) -> None:
    t0 = trio.current_time()
    inner = MemoryJournal()
    flaky = FlakyJournal(inner)
    options = RecordOptions(close_timeout=2.0)
    with trio.move_on_after(1.0):
        async with trio.open_nursery() as nursery:
            source = Source(chunks(5), stall=True)
            await nursery.start(partial(record, flaky, "a", source, options=options))
            await trio.sleep(0.5)
            flaky.frozen = True
    # Cancelled at t=1; the cancelled ending could not be written; gave up at t=3.
    assert trio.current_time() - t0 == pytest.approx(3.0)
    with pytest.raises(StreamAbandoned):
        await read_all(inner, "a", abandon_after=5.0)


# -- heartbeats and abandonment ------------------------------------------------------------------


async def test_heartbeats_keep_a_quiet_run_alive(autojump_clock: MockClock) -> None:
    inner = MemoryJournal()
    flaky = FlakyJournal(inner)
    options = RecordOptions(heartbeat_interval=1.0)
    # The model "thinks" for 30 s between chunks.
    source = Source([chunk(1), chunk(2), DONE], delay=[0, 30, 0])
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(record, flaky, "a", source, options=options))
        got = await read_all(inner, "a", abandon_after=3.0)
    check_run(got, [chunk(1), chunk(2)], StreamStatus.COMPLETED)
    assert 28 <= flaky.heartbeats <= 31


async def test_a_frozen_writer_is_abandoned_exactly_at_the_limit(autojump_clock: MockClock) -> None:
    t0 = trio.current_time()
    inner = MemoryJournal()
    flaky = FlakyJournal(inner)
    options = RecordOptions(heartbeat_interval=1.0, close_timeout=1.0)
    source = Source(chunks(100), delay=0.5)

    async def freeze() -> None:
        await trio.sleep(2.2)
        flaky.frozen = True  # the writer's process stops (SIGSTOP, GC pause, partition...)

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(record, flaky, "a", source, options=options))
        nursery.start_soon(freeze)
        with pytest.raises(StreamAbandoned) as exc:
            await read_all(inner, "a", abandon_after=3.0)
        # Last write at t=2.0 (the entry of t=2.0, written at once) ...
        assert trio.current_time() - t0 == pytest.approx(2.0 + 3.0)
        assert exc.value.last_seq == 4
        # ... a second reader ends the same way at once, and the writer, back, is refused.
        with trio.fail_after(0.001), pytest.raises(StreamAbandoned):
            await read_all(inner, "a", after=2, abandon_after=3.0)
        flaky.frozen = False
        nursery.cancel_scope.cancel()
    entries = inner._runs["a"].entries
    assert sum(e.is_terminal for e in entries) == 1


async def test_a_writer_back_after_the_seal_gets_run_closed(autojump_clock: MockClock) -> None:
    inner = MemoryJournal()
    flaky = FlakyJournal(inner)
    options = RecordOptions(batch_size=1, heartbeat_interval=1.0)
    source = Source([*chunks(6), DONE], delay=1.0)

    async def writer() -> None:
        with pytest.raises(RunClosed):
            await record(flaky, "a", source, options=options)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.sleep(2.5)
        flaky.frozen = True
        with pytest.raises(StreamAbandoned):
            await read_all(inner, "a", abandon_after=2.0)
        flaky.frozen = False  # the writer carries on, and learns its run is closed
    assert sum(e.is_terminal for e in inner._runs["a"].entries) == 1


async def test_a_missing_run_is_not_waited_for(autojump_clock: MockClock) -> None:
    with pytest.raises(RunNotFound):
        await read_all(MemoryJournal(), "nope")


# -- endings of LLM streams ----------------------------------------------------------------------


async def _record_llm(script: list[ScriptedAttempt]) -> tuple[list[JournalEntry], RunEnd]:
    journal = MemoryJournal()
    llm = ScriptedLLM(script)
    async with open_llm_stream(llm, chat_ctx=CTX) as stream:
        result = await record(journal, "a", stream)
    entries = await read_all(journal, "a")
    assert result.end == entries[-1]
    assert sum(e.is_terminal for e in entries) == 1
    assert llm.running == 0
    end = entries[-1].end
    assert end is not None
    return entries, end


async def test_llm_stream_completed(autojump_clock: MockClock) -> None:
    chunks_ = text_chunks("hello there")
    entries, end = await _record_llm([ScriptedAttempt(chunks_)])
    check_run(entries, chunks_, StreamStatus.COMPLETED)
    assert end.finish_reason == "stop"


async def test_llm_stream_failed_with_its_typed_error(autojump_clock: MockClock) -> None:
    entries, end = await _record_llm([ScriptedAttempt(text_chunks("x"), Fault.fatal(after=1))])
    assert end.status is StreamStatus.FAILED
    assert end.error == ErrorInfo("APIStatusError", "HTTP 400: bad request", False, 400)
    assert len(entries) == 1  # the uncommitted role chunk never reached the consumer


async def test_llm_stream_interrupted_after_output(autojump_clock: MockClock) -> None:
    chunks_ = text_chunks("a b c d")
    error = ProviderError("overloaded", type="invalid_request_error")
    _, end = await _record_llm([ScriptedAttempt(chunks_, Fault(FaultKind.ERROR, 3, error))])
    assert end.status is StreamStatus.FAILED
    assert end.error is not None
    assert (end.error.type, end.error.cause) == ("StreamInterrupted", "ProviderError")


async def test_llm_stream_truncated_after_output(autojump_clock: MockClock) -> None:
    chunks_ = text_chunks("a b c d")
    entries, end = await _record_llm(
        [ScriptedAttempt(chunks_, Fault(FaultKind.TRUNCATE, after=3))]
    )
    assert end.status is StreamStatus.TRUNCATED
    assert end.error is not None
    assert end.error.cause == "StreamTruncatedError"
    check_run(entries, chunks_[:3])


async def test_llm_stream_closed_by_its_consumer_is_cancelled(autojump_clock: MockClock) -> None:
    journal = MemoryJournal()
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a b c d e f"), delay=1.0)])
    async with open_llm_stream(llm, chat_ctx=CTX) as stream, trio.open_nursery() as nursery:
        nursery.start_soon(record, journal, "a", stream)
        await trio.sleep(2.5)
        await stream.aclose()
    entries = await read_all(journal, "a")
    check_run(entries, text_chunks("a b c d e f")[:2], StreamStatus.CANCELLED)


# -- endings of other sources --------------------------------------------------------------------


async def test_error_then_done_is_one_ending(autojump_clock: MockClock) -> None:
    journal = MemoryJournal()
    failed = RunEnd(StreamStatus.FAILED, error=ErrorInfo("ProviderError", "overloaded", True))
    source = Source([*chunks(3), failed, DONE, chunk(99)])
    result = await record(journal, "a", source)
    assert result.ignored == 2
    assert source.closed
    end = check_run(await read_all(journal, "a"), chunks(3), StreamStatus.FAILED)
    assert end == failed


async def test_a_source_that_keeps_going_after_its_end_is_cut(autojump_clock: MockClock) -> None:
    journal = MemoryJournal()
    source = Source([chunk(1), DONE, *chunks(1000)], delay=0.01)
    options = RecordOptions(drain_timeout=0.1, drain_items=64)
    result = await record(journal, "a", source, options=options)
    assert 5 <= result.ignored <= 10
    check_run(await read_all(journal, "a"), [chunk(1)], StreamStatus.COMPLETED)


async def test_an_error_after_the_end_is_ignored(autojump_clock: MockClock) -> None:
    journal = MemoryJournal()
    source = Source([chunk(1), DONE], error=RuntimeError("late"))
    result = await record(journal, "a", source)
    assert result.status is StreamStatus.COMPLETED


async def test_a_source_without_a_terminal_gets_one_synthesized(autojump_clock: MockClock) -> None:
    journal = MemoryJournal()
    finished = text_chunks("a b")  # ends with a finish chunk
    result = await record(journal, "a", Source(finished))
    assert result.end.end == RunEnd(StreamStatus.COMPLETED, "stop")
    cut = text_chunks("a b", finish_reason=None)
    result = await record(journal, "b", Source(cut))
    assert result.status is StreamStatus.TRUNCATED
    assert result.end.end is not None
    assert result.end.end.error is not None
    assert result.end.end.error.type == "StreamTruncatedError"
    result = await record(journal, "c", Source([]))
    assert result.status is StreamStatus.TRUNCATED
    check_run(await read_all(journal, "c"), [], StreamStatus.TRUNCATED)


async def test_multi_choice_completion_needs_every_finish(autojump_clock: MockClock) -> None:
    journal = MemoryJournal()
    two = [
        ChatChunk("r", [Choice(ChoiceDelta(content="x"), 0), Choice(ChoiceDelta(content="y"), 1)]),
        ChatChunk("r", [Choice(ChoiceDelta(), 1, "length")]),
    ]
    assert (await record(journal, "a", Source(two))).status is StreamStatus.TRUNCATED
    both = [*two, ChatChunk("r", [Choice(ChoiceDelta(), 0, "stop")])]
    result = await record(journal, "b", Source(both))
    assert result.end.end == RunEnd(StreamStatus.COMPLETED, "stop")


async def test_a_source_raising_a_typed_error_fails_the_run_without_raising(
    autojump_clock: MockClock,
) -> None:
    journal = MemoryJournal()
    error = APIStatusError("unavailable", status_code=503)
    result = await record(journal, "a", Source(chunks(2), error=error))
    assert result.end.end == RunEnd(StreamStatus.FAILED, error=ErrorInfo.from_exception(error))


async def test_a_buggy_source_is_recorded_failed_then_its_error_raised_unwrapped(
    autojump_clock: MockClock,
) -> None:
    journal = MemoryJournal()
    with pytest.raises(ZeroDivisionError):
        await record(journal, "a", Source(chunks(2), error=ZeroDivisionError("bug")))
    end = check_run(await read_all(journal, "a"), chunks(2), StreamStatus.FAILED)
    assert end.error is not None
    assert end.error.type == "ZeroDivisionError"
    with pytest.raises(TypeError, match="ChatChunk or RunEnd"):
        await record(journal, "b", Source([chunk(1), "oops"]))  # type: ignore[list-item]
    check_run(await read_all(journal, "b"), [chunk(1)], StreamStatus.FAILED)


async def test_record_into_an_existing_run(autojump_clock: MockClock) -> None:
    journal = MemoryJournal()
    await journal.create_run("a")
    await journal.append("a", [JournalEntry(1, chunk=chunk(1))])
    await record(journal, "a", Source([chunk(2), DONE]), create=False)
    check_run(await read_all(journal, "a"), chunks(2), StreamStatus.COMPLETED)
    with pytest.raises(RunClosed):
        await record(journal, "a", Source([DONE]), create=False)


# -- MemoryJournal bounds ------------------------------------------------------------------------


async def test_runs_expire_after_their_ttl_of_inactivity(autojump_clock: MockClock) -> None:
    journal = MemoryJournal(ttl=10.0)
    source = Source([chunk(1), chunk(2), DONE], delay=[0, 25, 0])
    await record(journal, "a", source, options=RecordOptions(heartbeat_interval=2.0))
    # Heartbeats kept it through 25 s of silence; after the end, 10 s more.
    await trio.sleep(9.9)
    assert (await journal.info("a")).end_seq == 3
    await trio.sleep(0.2)
    with pytest.raises(RunNotFound):
        await journal.info("a")


async def test_max_runs_evicts_ended_runs_then_refuses(autojump_clock: MockClock) -> None:
    journal = MemoryJournal(max_runs=2)
    await record(journal, "a", Source([DONE]))
    await journal.create_run("b")
    await journal.create_run("c")  # evicts "a" (ended)
    with pytest.raises(RunNotFound):
        await journal.info("a")
    with pytest.raises(JournalFull):
        await journal.create_run("d")  # "b" and "c" are live


async def test_a_run_is_bounded_by_max_entries_never_trimmed(autojump_clock: MockClock) -> None:
    # Formerly the oldest entries of a live run were dropped past max_entries; now the run is
    # ended there (RunTooLong) and everything it holds stays readable from seq 1.
    journal = MemoryJournal(max_entries=100)
    source = Source([*chunks(10_000), DONE])
    result = await record(journal, "a", source)
    run = journal._runs["a"]
    assert len(run.entries) == 101
    assert run.first_seq == 1
    assert run.entries[-1] == result.end
    assert result.end.end is not None
    assert result.end.end.too_long
    assert result.chunks == 100
    assert source.yielded < 10_000  # the source was stopped, not drained
    check_run(await read_all(journal, "a"), chunks(100), StreamStatus.FAILED)


async def test_a_source_that_is_not_async_iterable_is_refused_before_the_run_exists(
    autojump_clock: MockClock,
) -> None:
    journal = MemoryJournal()
    with pytest.raises(TypeError, match="async iterable"):
        await record(journal, "a", [chunk(1)])  # type: ignore[arg-type]
    with pytest.raises(RunNotFound):
        await journal.info("a")

