"""Response segments, behaviour by behaviour: markers, sources, delivery hooks at the exact
receive time, playback acks, handlers, errors, interruption, read-ahead, stages.

Every test runs on trio's autojump MockClock, so "at the exact time" is an equality of
virtual times.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from trio_llmstream import (
    APIConnectOptions,
    APIStatusError,
    ChatChunk,
    ChatContext,
    StreamInterrupted,
    StreamStatus,
    open_llm_stream,
)
from trio_llmstream._segments import (
    Segment,
    SegmentEnd,
    SegmentError,
    SegmentEvent,
    SegmentItem,
    SegmentNotice,
    SegmentStart,
    Turn,
    TurnItem,
    open_turn,
)
from trio_llmstream._segments_stages import SegmentInput, map_turn, open_turn_stage
from trio_llmstream.testing import Fault, ScriptedAttempt, ScriptedLLM, text_chunks

NO_RETRY = APIConnectOptions(max_retry=0)


class UserError(Exception):
    pass


class Boom(Exception):
    pass


def ctx(text: str = "hi") -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content=text)
    return c


class Source:
    """An async generator source that sleeps before each item and records its life."""

    def __init__(
        self, items: list[Any], *, delay: float = 0.0, fail_after: int | None = None
    ) -> None:
        self.items = items
        self.delay = delay
        self.fail_after = fail_after
        self.opened = 0
        self.running = 0
        self.closed = 0
        self.produced: list[float] = []

    async def __call__(self) -> AsyncIterator[Any]:
        self.opened += 1
        self.running += 1
        try:
            for i, item in enumerate(self.items):
                if self.fail_after == i:
                    raise Boom(f"failed after {i}")
                await trio.sleep(self.delay)
                self.produced.append(trio.current_time())
                yield item
            if self.fail_after is not None and self.fail_after >= len(self.items):
                raise Boom("failed at the end")
        finally:
            self.running -= 1
            self.closed += 1

    def gen(self) -> AsyncIterator[Any]:
        return self()


class Recorder:
    """Registers sync handlers for every event and keeps (event, segment id, time) triples."""

    def __init__(self, turn: Turn[Any]) -> None:
        self.events: list[tuple[str, str, float]] = []
        for event in SegmentEvent:
            turn.on(event, self)

    def __call__(self, notice: SegmentNotice) -> None:
        assert notice.time == trio.current_time()
        self.events.append((notice.event.value, notice.segment_id, notice.time))

    def of(self, event: str) -> list[tuple[str, float]]:
        return [(sid, t) for (e, sid, t) in self.events if e == event]


async def consume(
    turn: Any, *, per_item: Callable[[int], float] = lambda i: 0.0
) -> list[tuple[Any, float]]:
    """Iterate to the end, noting each item with its receive time, sleeping per item."""
    got: list[tuple[Any, float]] = []
    async for item in turn:
        got.append((item, trio.current_time()))
        await trio.sleep(per_item(len(got) - 1))
    return got


def shape(items: list[tuple[Any, float]] | list[Any]) -> list[Any]:
    """Items as comparable tuples: ('start', id) / ('end', id) / (id, value)."""
    out: list[Any] = []
    for entry in items:
        item = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(item, SegmentStart):
            out.append(("start", item.id))
        elif isinstance(item, SegmentEnd):
            out.append(("end", item.id))
        else:
            value = item.value
            out.append((item.segment_id, value.text if isinstance(value, ChatChunk) else value))
    return out


# -- markers and sources -----------------------------------------------------------------------


async def test_markers_ids_labels_and_positions(autojump_clock: trio.abc.Clock) -> None:
    a = Source(["x", "y"])
    async with open_turn(
        [Segment("filler", label="filler"), Segment(a, id="main", label="answer")]
    ) as turn:
        got = await consume(turn)
    items = [g[0] for g in got]
    assert items == [
        SegmentStart("segment-0", 0, "filler"),
        SegmentItem("segment-0", "filler", 0),
        SegmentEnd("segment-0", 0, "filler"),
        SegmentStart("main", 1, "answer"),
        SegmentItem("main", "x", 0),
        SegmentItem("main", "y", 1),
        SegmentEnd("main", 1, "answer"),
    ]
    assert items[4].text == "x"
    assert turn.status is StreamStatus.COMPLETED
    assert turn.segment_ids == ("segment-0", "main")


async def test_every_kind_of_source(autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a b"))])
    direct = Source(["d"])
    entered: list[str] = []

    @asynccontextmanager
    async def cm() -> AsyncIterator[AsyncIterator[str]]:
        entered.append("in")
        try:
            yield Source(["cm"]).gen()
        finally:
            entered.append("out")

    async with open_llm_stream(
        ScriptedLLM([ScriptedAttempt(text_chunks("open"))]), chat_ctx=ctx()
    ) as already_open:
        sources: list[Any] = [
            "plain str",
            ["list", "items"],
            direct.gen(),  # an async generator, already created
            Source(["factory-gen"]),  # a factory returning an async generator
            lambda: ["factory-list"],
            cm(),  # an un-entered async context manager
            cm,  # a factory returning one
            lambda: open_llm_stream(llm, chat_ctx=ctx()),  # the usual LLM case
            already_open,  # an LLMStream opened by the caller
        ]
        async with open_turn(sources) as turn:
            got = await consume(turn)
    texts = [t for (sid, t) in shape(got) if sid not in ("start", "end")]
    assert texts == [
        "plain str", "list", "items", "d", "factory-gen", "factory-list", "cm", "cm",
        "", "a ", "b", "",  # role chunk, text, finish chunk
        "", "open", "",
    ]
    assert entered == ["in", "out", "in", "out"]
    assert direct.running == 0
    assert direct.closed == 1
    assert llm.running == 0
    assert turn.report.completed == turn.segment_ids


async def test_bad_arguments_fail_before_anything_starts(autojump_clock: trio.abc.Clock) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        async with open_turn([Segment("a", id="x"), Segment("b", id="x")]):
            pass
    with pytest.raises(TypeError, match="not a segment source"):
        async with open_turn([42]):  # type: ignore[list-item]
            pass
    with pytest.raises(ValueError, match="lookahead"):
        async with open_turn(["a"], lookahead=-1):
            pass


async def test_an_empty_turn_completes_at_once(autojump_clock: trio.abc.Clock) -> None:
    async with open_turn([]) as turn:
        assert await consume(turn) == []
    assert turn.status is StreamStatus.COMPLETED


async def test_a_factory_returning_a_non_source_is_a_segment_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_turn([lambda: 42]) as turn:
        with pytest.raises(SegmentError) as info:
            await consume(turn)
    assert isinstance(info.value.cause, TypeError)


# -- delivery hooks at the exact receive time --------------------------------------------------


async def test_handlers_run_at_the_exact_receive_time(autojump_clock: trio.abc.Clock) -> None:
    # Producers and the consumer take different times per item, so production time and receive
    # time differ; the hooks must follow the consumer.
    first = Source(["", "a", "b"], delay=0.3)
    second = Source(["c"], delay=1.1)
    async with open_turn([Segment(first, id="one"), Segment(second, id="two")]) as turn:
        rec = Recorder(turn)
        got = await consume(turn, per_item=lambda i: [0.7, 0.05, 2.0, 0.0][i % 4])
    times = {shape([g])[0]: g[1] for g in got}
    # "" is not visible: delivery is the first non-empty text.
    assert rec.of("delivered") == [("one", times[("one", "a")]), ("two", times[("two", "c")])]
    assert rec.of("completed") == [("one", times[("end", "one")]), ("two", times[("end", "two")])]
    # Received later than produced (the consumer was busy): the hooks follow the consumer.
    assert times[("two", "c")] > second.produced[0]
    report = turn.report
    assert [s.delivered_at for s in report.segments] == [times[("one", "a")], times[("two", "c")]]
    assert [s.items for s in report.segments] == [3, 1]


async def test_two_llm_responses_give_two_handler_runs_in_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("hello there"), delay=0.2)])
    async with open_turn(
        [
            Segment(lambda: open_llm_stream(llm, chat_ctx=ctx("1")), id="answer"),
            Segment(lambda: open_llm_stream(llm, chat_ctx=ctx("2")), id="follow-up"),
        ]
    ) as turn:
        rec = Recorder(turn)
        got = await consume(turn, per_item=lambda i: 0.13)
    received_first_text = [
        t for (item, t) in got
        if isinstance(item, SegmentItem) and item.value.text == "hello "
    ]
    ids = ["answer", "follow-up"]
    assert rec.of("delivered") == list(zip(ids, received_first_text, strict=True))
    assert [e[:2] for e in rec.events] == [
        ("delivered", "answer"), ("completed", "answer"),
        ("delivered", "follow-up"), ("completed", "follow-up"),
    ]
    # The follow-up's request was only sent once the answer's end was received.
    assert [c[0].messages[0].content for c in llm.calls] == ["1", "2"]


async def test_role_only_chunks_do_not_deliver_and_empty_segments_only_complete(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_turn(
        [Segment([], id="empty"), Segment(["", ""], id="blank"), Segment(["x"], id="x")]
    ) as turn:
        rec = Recorder(turn)
        got = await consume(turn)
    assert shape(got)[:5] == [
        ("start", "empty"), ("end", "empty"), ("start", "blank"), ("blank", ""), ("blank", ""),
    ]
    assert [sid for sid, _ in rec.of("delivered")] == ["x"]
    assert [sid for sid, _ in rec.of("completed")] == ["empty", "blank", "x"]
    assert turn.report.delivered == ("x",)


async def test_handlers_for_one_segment_and_for_all(autojump_clock: trio.abc.Clock) -> None:
    calls: list[str] = []
    async with open_turn([Segment("a", id="a"), Segment("b", id="b")]) as turn:
        turn.on("delivered", lambda n: calls.append(f"all:{n.segment_id}"))
        turn.on(SegmentEvent.DELIVERED, lambda n: calls.append("only-b"), segment="b")
        turn.on(SegmentEvent.DELIVERED, lambda n: calls.append("index-0"), segment=0)
        with pytest.raises(ValueError, match="no segment"):
            turn.on("delivered", print, segment="c")
        with pytest.raises(ValueError):
            turn.on("nonsense", print)
        await consume(turn)
    assert calls == ["all:a", "index-0", "all:b", "only-b"]


async def test_async_handlers_start_at_the_receive_time_in_the_turns_nursery(
    autojump_clock: trio.abc.Clock,
) -> None:
    started: list[tuple[str, float]] = []
    finished: list[str] = []

    async def slow(notice: SegmentNotice) -> None:
        started.append((notice.segment_id, trio.current_time()))
        await trio.sleep(5)
        finished.append(notice.segment_id)

    async with open_turn([Segment(Source(["a"], delay=1), id="s")]) as turn:
        turn.on("delivered", slow)
        got = await consume(turn)
    # The turn completed: leaving the block waited for the handler.
    assert started == [("s", got[1][1])]
    assert finished == ["s"]
    assert trio.current_time() == got[1][1] + 5


async def test_handler_errors_are_logged_and_never_break_the_turn(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(notice: SegmentNotice) -> None:
        raise RuntimeError("sync handler bug")

    async def bad_async(notice: SegmentNotice) -> None:
        await trio.sleep(1)
        raise RuntimeError("async handler bug")

    after: list[str] = []
    with caplog.at_level(logging.ERROR, logger="trio_llmstream.segments"):
        async with open_turn([Segment("a", id="a"), Segment("b", id="b")]) as turn:
            turn.on("delivered", bad)
            turn.on("delivered", bad_async)
            turn.on("delivered", lambda n: after.append(n.segment_id))
            got = await consume(turn)
    assert len(got) == 6
    assert after == ["a", "b"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("raised; ignored" in m for m in messages) == 4
    assert turn.status is StreamStatus.COMPLETED


# -- playback acks -----------------------------------------------------------------------------


async def test_acks_fire_at_the_ack_time_idempotent_and_by_any_reference(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_turn([Segment(["a", "b"], id="a"), Segment("c", id="c")]) as turn:
        rec = Recorder(turn)
        acked: list[tuple[str, str, float]] = []
        async for item in turn:
            await trio.sleep(0.25)  # "playing" takes a while
            if isinstance(item, SegmentItem):
                turn.ack_started(item)  # every frame: only the first counts
                acked.append(("playback_started", item.segment_id, trio.current_time()))
            elif isinstance(item, SegmentEnd):
                turn.ack_finished(item.index if item.id == "a" else item)
                acked.append(("playback_finished", item.id, trio.current_time()))
        with pytest.raises(ValueError):
            turn.ack_started("nope")
        with pytest.raises(ValueError):
            turn.ack_started(7)
    first_started = [next((s, t) for (e, s, t) in acked if e == "playback_started" and s == sid)
                     for sid in ("a", "c")]
    assert rec.of("playback_started") == first_started
    assert rec.of("playback_finished") == [(s, t) for (e, s, t) in acked
                                           if e == "playback_finished"]
    report = turn.report
    assert report.playback_finished == ("a", "c")


async def test_finishing_implies_starting(autojump_clock: trio.abc.Clock) -> None:
    async with open_turn([Segment("a", id="a")]) as turn:
        rec = Recorder(turn)
        await consume(turn)
        turn.ack_finished("a")
        turn.ack_finished("a")
    assert [e for (e, _, _) in rec.events] == [
        "delivered", "completed", "playback_started", "playback_finished",
    ]


async def test_late_acks_need_a_handler_nursery_for_async_handlers(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[tuple[str, float]] = []

    async def on_finished(notice: SegmentNotice) -> None:
        await trio.sleep(1)
        ran.append((notice.segment_id, trio.current_time()))

    # With a caller's nursery, playback acked after the turn's block still runs its handlers.
    async with trio.open_nursery() as outside:
        async with open_turn([Segment("a", id="a")], handler_nursery=outside) as turn:
            turn.on("playback_finished", on_finished)
            await consume(turn)
        await trio.sleep(3)  # the audio plays on after the text was all delivered
        turn.ack_finished("a")
    assert ran == [("a", 4.0)]
    assert turn.report.segments[0].playback_finished_at == 3.0

    # Without one, the async handler is skipped and logged; sync handlers still run.
    sync: list[str] = []
    with caplog.at_level(logging.WARNING, logger="trio_llmstream.segments"):
        async with open_turn([Segment("a", id="a")]) as turn:
            turn.on("playback_finished", on_finished)
            turn.on("playback_finished", lambda n: sync.append(n.segment_id))
            await consume(turn)
        turn.ack_finished("a")
    assert sync == ["a"]
    assert len(ran) == 1
    assert any("not run" in r.getMessage() for r in caplog.records)


# -- errors --------------------------------------------------------------------------------------


async def test_a_failing_source_raises_one_segment_error_after_its_items(
    autojump_clock: trio.abc.Clock,
) -> None:
    later = Source(["never"])
    async with open_turn(
        [Segment("ok", id="ok"), Segment(Source(["a", "b"], fail_after=2), id="bad"),
         Segment(later, id="later")]
    ) as turn:
        rec = Recorder(turn)
        got: list[TurnItem[Any]] = []
        with pytest.raises(SegmentError) as info:
            async for item in turn:
                got.append(item)
        # Raised once: iterating again just ends.
        assert [item async for item in turn] == []
    assert shape(got) == [("start", "ok"), ("ok", "ok"), ("end", "ok"), ("start", "bad"),
                          ("bad", "a"), ("bad", "b")]
    error = info.value
    assert (error.segment_id, error.index) == ("bad", 1)
    assert isinstance(error.cause, Boom)
    assert error.__cause__ is error.cause
    assert later.opened == 0
    assert [sid for sid, _ in rec.of("completed")] == ["ok"]
    assert [sid for sid, _ in rec.of("delivered")] == ["ok", "bad"]
    report = turn.report
    assert report.status is StreamStatus.FAILED
    assert report.error is error
    assert isinstance(report.segments[1].error, Boom)
    assert turn.error is error


async def test_a_source_failing_before_any_item_has_no_start_marker(
    autojump_clock: trio.abc.Clock,
) -> None:
    def factory() -> Any:
        raise Boom("cannot even open")

    async with open_turn([Segment(factory, id="bad")]) as turn:
        got: list[Any] = []
        with pytest.raises(SegmentError) as info:
            async for item in turn:
                got.append(item)
    assert got == []
    assert isinstance(info.value.cause, Boom)
    assert not turn.report.segments[0].delivered


async def test_an_llm_stream_failing_after_output_is_a_segment_error_with_its_cause(
    autojump_clock: trio.abc.Clock,
) -> None:
    llm = ScriptedLLM(
        [ScriptedAttempt(text_chunks("one two three"), fault=Fault.fatal(after=2), delay=0.1)]
    )
    async with open_turn(
        [Segment(lambda: open_llm_stream(llm, chat_ctx=ctx(), conn_options=NO_RETRY))]
    ) as turn:
        got: list[Any] = []
        with pytest.raises(SegmentError) as info:
            async for item in turn:
                got.append(item)
    assert shape(got) == [("start", "segment-0"), ("segment-0", ""), ("segment-0", "one ")]
    assert isinstance(info.value.cause, StreamInterrupted)
    assert isinstance(info.value.cause.__cause__, APIStatusError)
    assert llm.running == 0


async def test_a_user_exception_propagates_as_itself_and_nothing_runs_after(
    autojump_clock: trio.abc.Clock,
) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a b c d"), delay=0.1)])
    handler_cancelled: list[bool] = []

    async def handler(notice: SegmentNotice) -> None:
        try:
            await trio.sleep_forever()
        finally:
            handler_cancelled.append(True)

    with pytest.raises(UserError):
        async with open_turn([lambda: open_llm_stream(llm, chat_ctx=ctx())]) as turn:
            turn.on("delivered", handler)
            async for item in turn:
                if isinstance(item, SegmentItem) and item.value.text:
                    raise UserError
    assert llm.running == 0
    assert handler_cancelled == [True]
    assert turn.status is StreamStatus.CANCELLED
    # After the block, iteration ends; no ClosedResourceError.
    assert [item async for item in turn] == []


async def test_one_consumer_at_a_time(autojump_clock: trio.abc.Clock) -> None:
    async with open_turn([Source(["a"], delay=1)]) as turn, trio.open_nursery() as nursery:
        nursery.start_soon(turn.__anext__)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await turn.__anext__()
        nursery.cancel_scope.cancel()


# -- interruption ------------------------------------------------------------------------------


async def test_interrupt_stops_the_turn_and_reports(autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a b c d e f"), delay=2.0)])
    third = Source(["never"])
    interrupted_at = 10.5
    async with open_turn(
        [Segment(Source(["x", "y"], delay=0.5), id="filler"),
         Segment(lambda: open_llm_stream(llm, chat_ctx=ctx()), id="answer"),
         Segment(third, id="later")]
    ) as turn, trio.open_nursery() as nursery:
        rec = Recorder(turn)

        async def barge_in() -> None:
            await trio.sleep(interrupted_at)
            turn.interrupt()

        nursery.start_soon(barge_in)
        got: list[tuple[Any, float]] = []
        async for item in turn:
            got.append((item, trio.current_time()))
            if isinstance(item, SegmentItem) and item.value != "":
                turn.ack_started(item)
            if isinstance(item, SegmentEnd):
                turn.ack_finished(item)
        # Iteration ended by itself at the interruption.
        assert trio.current_time() == interrupted_at
    report = turn.report
    assert report.interrupted
    assert report.status is StreamStatus.CANCELLED
    assert report.delivered == ("filler", "answer")
    assert report.completed == ("filler",)
    assert report.playback_started == ("filler", "answer")
    assert report.playback_finished == ("filler",)
    assert [s.opened for s in report.segments] == [True, True, False]
    assert third.opened == 0
    assert llm.running == 0
    # No handler for the segment that never reached the consumer.
    assert {sid for (_, sid, _) in rec.events} == {"filler", "answer"}
    assert ("completed", "answer") not in [(e, s) for (e, s, _) in rec.events]


async def test_interrupting_right_after_an_end_never_opens_the_next_segment(
    autojump_clock: trio.abc.Clock,
) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("never"))])
    async with open_turn(
        [Segment("a", id="a"), Segment(lambda: open_llm_stream(llm, chat_ctx=ctx()), id="b")]
    ) as turn:
        async for item in turn:
            if isinstance(item, SegmentEnd):
                turn.interrupt()
    assert llm.calls == []
    assert [s.opened for s in turn.report.segments] == [True, False]
    assert turn.report.completed == ("a",)


async def test_interrupting_at_once_opens_nothing(autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("never"))])
    ahead = Source(["never"])
    async with open_turn(
        [lambda: open_llm_stream(llm, chat_ctx=ctx()), ahead], lookahead=1
    ) as turn:
        turn.interrupt()
        assert [item async for item in turn] == []
    assert llm.calls == []
    assert ahead.opened == 0
    assert turn.report.interrupted
    assert not any(s.opened for s in turn.report.segments)


async def test_an_item_in_hand_at_interruption_is_dropped(autojump_clock: trio.abc.Clock) -> None:
    src = Source(["a", "b", "c"])
    async with open_turn([Segment(src, id="s")]) as turn:
        seen = []
        async for item in turn:
            seen.append(item)
            if len(seen) == 2:
                # The producer already holds "b", blocked on the channel; it never arrives.
                await trio.testing.wait_all_tasks_blocked()
                turn.interrupt()
    assert shape(seen) == [("start", "s"), ("s", "a")]
    assert turn.report.segments[0].items == 1
    assert src.running == 0
    assert src.closed == 1


async def test_no_item_is_returned_after_interrupt_even_if_already_handed_over(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The source interrupts the turn as soon as the producer resumes after handing "a" over.
    # Whether the consumer task or the producer runs first after the hand-over is up to the
    # scheduler (trio flips a coin), so try enough times to see both orders.
    for _ in range(30):
        interrupted = False

        async def source(turn_box: list[Turn[str]]) -> AsyncIterator[str]:
            nonlocal interrupted
            yield "a"
            interrupted = True
            turn_box[0].interrupt()
            yield "b"

        box: list[Turn[str]] = []
        async with open_turn([source(box)]) as turn:
            box.append(turn)
            async for item in turn:
                assert not interrupted, f"{item!r} returned after interrupt()"
        delivered = turn.report.segments[0].items
        assert delivered in (0, 1)


async def test_cancelling_the_block_cancels_handlers_and_sources(
    autojump_clock: trio.abc.Clock,
) -> None:
    src = Source(["a", "b", "c"], delay=1)
    cancelled: list[str] = []

    async def handler(notice: SegmentNotice) -> None:
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            cancelled.append(notice.segment_id)
            raise

    with trio.move_on_after(2.5):
        async with open_turn([Segment(src, id="s")]) as turn:
            turn.on("delivered", handler)
            await consume(turn)
    assert cancelled == ["s"]
    assert src.running == 0
    assert turn.report.interrupted
    assert turn.report.delivered == ("s",)


async def test_breaking_early_is_an_interruption(autojump_clock: trio.abc.Clock) -> None:
    async with open_turn([Segment(["a", "b"], id="s"), Segment(["c"], id="t")]) as turn:
        async for item in turn:
            if isinstance(item, SegmentItem):
                break
    assert turn.report.interrupted
    assert turn.report.delivered == ("s",)
    assert [s.opened for s in turn.report.segments] == [True, False]


# -- read-ahead --------------------------------------------------------------------------------


async def test_lookahead_opens_the_next_segment_early_and_hooks_still_follow_the_consumer(
    autojump_clock: trio.abc.Clock,
) -> None:
    first = Source(["a", "b"], delay=1)
    second = Source(["c", "d"], delay=1)
    async with open_turn(
        [Segment(first, id="one"), Segment(second, id="two")], lookahead=1
    ) as turn:
        rec = Recorder(turn)
        got = await consume(turn, per_item=lambda i: 3.0)
    assert shape(got) == [("start", "one"), ("one", "a"), ("one", "b"), ("end", "one"),
                          ("start", "two"), ("two", "c"), ("two", "d"), ("end", "two")]
    times = [t for _, t in got]
    assert rec.of("delivered") == [("one", times[1]), ("two", times[5])]
    # "c" was produced at t=1 (read ahead) but received much later.
    assert times[5] > 10
    assert second.running == 0


async def test_without_lookahead_the_next_source_opens_only_after_the_end_is_received(
    autojump_clock: trio.abc.Clock,
) -> None:
    second = Source(["c"])
    async with open_turn([Segment(Source(["a"], delay=1), id="one"), Segment(second)]) as turn:
        async for item in turn:
            assert second.opened == 0
            if isinstance(item, SegmentEnd):
                break
    assert second.opened == 0


async def test_a_read_ahead_failure_surfaces_in_order(autojump_clock: trio.abc.Clock) -> None:
    third = Source(["z"])
    async with open_turn(
        [Segment(Source(["a", "b"], delay=1), id="one"),
         Segment(Source(["c"], fail_after=1), id="two"),
         Segment(third, id="three")],
        lookahead=2,
        lookahead_items=0,
    ) as turn:
        got: list[Any] = []
        with pytest.raises(SegmentError) as info:
            async for item in turn:
                got.append(item)
    assert shape(got) == [("start", "one"), ("one", "a"), ("one", "b"), ("end", "one"),
                          ("start", "two"), ("two", "c")]
    assert info.value.segment_id == "two"
    assert third.opened == 1
    assert third.running == 0


async def test_an_interrupted_read_ahead_is_closed_and_not_delivered(
    autojump_clock: trio.abc.Clock,
) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("later text"), delay=0.1)])
    async with open_turn(
        [Segment(Source(["a", "b"], delay=1), id="one"),
         Segment(lambda: open_llm_stream(llm, chat_ctx=ctx()), id="two")],
        lookahead=1,
    ) as turn:
        rec = Recorder(turn)
        async for item in turn:
            if isinstance(item, SegmentItem) and item.value == "b":
                turn.interrupt()
    report = turn.report
    assert [s.opened for s in report.segments] == [True, True]
    assert report.delivered == ("one",)
    assert {sid for (_, sid, _) in rec.events} == {"one"}
    assert llm.running == 0
    assert len(llm.calls) == 1


# -- stages ------------------------------------------------------------------------------------


async def test_map_turn_keeps_markers_sync_and_async(autojump_clock: trio.abc.Clock) -> None:
    async def shout(text: str) -> str:
        await trio.sleep(0.5)
        return text.upper() + "!"

    async with open_turn([Segment(["a", "b"], id="s"), Segment("c", id="t")]) as turn:
        got = await consume(map_turn(map_turn(turn, str.strip), shout))
    assert shape(got) == [("start", "s"), ("s", "A!"), ("s", "B!"), ("end", "s"),
                          ("start", "t"), ("t", "C!"), ("end", "t")]
    assert [g[0].position for g in got if isinstance(g[0], SegmentItem)] == [0, 1, 0]


async def words(text: SegmentInput[str]) -> AsyncIterator[str]:
    """A synthesizer stand-in: text pieces in, one frame per word out, flushed at the end."""
    pending = ""
    async for piece in text:
        pending += piece
        *done, pending = pending.split(" ")
        for word in done:
            if word:
                await trio.sleep(0.05)  # synthesis takes time
                yield f"<{word}>"
    if pending:
        yield f"<{pending}>"


async def test_markers_survive_a_stage_and_the_final_stage_acks_the_right_segment(
    autojump_clock: trio.abc.Clock,
) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("good morning to you"), delay=0.2)])
    async with open_turn(
        [Segment(["Hm", "m, "], id="filler", label="filler"),
         Segment(lambda: open_llm_stream(llm, chat_ctx=ctx()), id="answer")]
    ) as turn:
        rec = Recorder(turn)
        played: list[tuple[str, str, float]] = []
        async with open_turn_stage(map_turn(turn, lambda c: c if isinstance(c, str) else c.text),
                                   words) as frames:
            async for item in frames:
                if isinstance(item, SegmentItem):
                    await trio.sleep(0.3)  # the frame plays
                    turn.ack_started(item)
                    played.append((item.segment_id, item.value, trio.current_time()))
                elif isinstance(item, SegmentEnd):
                    turn.ack_finished(item)
                    played.append((item.id, "END", trio.current_time()))
    assert [(s, v) for (s, v, _) in played] == [
        ("filler", "<Hmm,>"), ("filler", "END"),
        ("answer", "<good>"), ("answer", "<morning>"), ("answer", "<to>"), ("answer", "<you>"),
        ("answer", "END"),
    ]
    first_played = {s: t for (s, _, t) in reversed(played)}
    ends = {s: t for (s, v, t) in played if v == "END"}
    assert rec.of("playback_started") == [(s, first_played[s]) for s in ("filler", "answer")]
    assert rec.of("playback_finished") == [(s, ends[s]) for s in ("filler", "answer")]
    # Delivery happens when the stage takes the text, before the frame is played.
    delivered = dict(rec.of("delivered"))
    assert delivered["answer"] < first_played["answer"]
    assert turn.report.playback_finished == ("filler", "answer")


async def test_a_stage_sees_its_segment_and_unread_values_are_discarded(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def first_only(values: SegmentInput[str]) -> AsyncIterator[str]:
        async for value in values:
            yield f"{values.start.label}:{value}"
            return

    segments = [Segment(["a", "b", "c"], label="L"), Segment(["d"])]
    async with open_turn(segments) as turn, open_turn_stage(turn, first_only) as out:
        got = await consume(out)
    assert shape(got) == [("start", "segment-0"), ("segment-0", "L:a"), ("end", "segment-0"),
                          ("start", "segment-1"), ("segment-1", "None:d"), ("end", "segment-1")]


async def test_a_stage_drops_output_after_an_interruption_and_is_closed(
    autojump_clock: trio.abc.Clock,
) -> None:
    closed: list[bool] = []

    async def flushing(values: SegmentInput[str]) -> AsyncIterator[str]:
        try:
            async for value in values:
                yield value
            yield "FLUSH"  # would come after an interruption: must not be delivered
        finally:
            closed.append(values.interrupted)

    segments = [Segment(Source(["a", "b", "c"], delay=1))]
    async with open_turn(segments) as turn, open_turn_stage(turn, flushing) as out:
        got = []
        async for item in out:
            got.append(item)
            if isinstance(item, SegmentItem):
                turn.interrupt()
    assert shape(got) == [("start", "segment-0"), ("segment-0", "a")]
    assert closed == [True]


async def test_stage_errors_propagate_as_themselves_and_segment_errors_pass_through(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def broken(values: SegmentInput[str]) -> AsyncIterator[str]:
        async for value in values:
            yield value
            raise UserError

    async with open_turn(["a"]) as turn, open_turn_stage(turn, broken) as out:
        with pytest.raises(UserError):
            await consume(out)

    async def passthrough(values: SegmentInput[str]) -> AsyncIterator[str]:
        async for value in values:
            yield value

    async with open_turn([Source(["a"], fail_after=1)]) as turn, open_turn_stage(
        turn, passthrough
    ) as out:
        with pytest.raises(SegmentError):
            await consume(out)


async def test_leaving_a_stage_block_closes_the_running_stage(
    autojump_clock: trio.abc.Clock,
) -> None:
    closed: list[str] = []

    async def stage(values: SegmentInput[str]) -> AsyncIterator[str]:
        try:
            async for value in values:
                yield value
        finally:
            closed.append(values.start.id)

    async with open_turn([Segment(["a", "b"], id="s")]) as turn:
        async with open_turn_stage(turn, stage) as out:
            async for item in out:
                if isinstance(item, SegmentItem):
                    break
        assert closed == ["s"]
