"""Property test for response segments: interruption at any point, any consumer timing.

Hypothesis draws a turn (1-4 segments; each an async generator of text or a scripted LLM
stream, with delays and an optional failure), a read-ahead setting, a consumer that takes a
varying time per item and acks playback like a player, async handlers of varying length, and
an ending: read to the end, ``interrupt()`` after k items or at a virtual time from another
task, ``break``, an exception from the block, or an outside cancellation. A small model gives
the full sequence the consumer would see; the real turn runs under trio's MockClock
(autojump) and every example checks that:

- the consumer saw a prefix of the model's sequence (all of it, and the right error, if it
  read to the end);
- every handler ran exactly for the segments that reached the consumer, at the exact virtual
  time the consumer received the item (or acked), and async handlers started at that time;
- the report agrees with what the consumer saw and did;
- no source was opened beyond the one being delivered (plus the read-ahead allowed), and
  nothing is left running after the block: sources, LLM attempts, handler tasks.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

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
    open_turn,
)
from trio_llmstream.testing import Fault, ScriptedAttempt, ScriptedLLM, text_chunks

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
EXAMPLES = {"ci": 500, "thorough": 5000}.get(PROFILE, 150)

NO_RETRY = APIConnectOptions(max_retry=0)


class Boom(Exception):
    pass


class UserError(Exception):
    pass


# -- the plan ----------------------------------------------------------------------------------


@dataclass
class SegmentPlan:
    kind: str  # "gen" or "llm"
    values: list[Any]  # gen: the strings; llm: the scripted chunks
    delays: list[float]  # gen: before each item; llm: one batch delay
    fail_after: int | None  # gen: items before the failure; llm: chunks before the fault
    # Set up per run:
    opened: int = 0
    running: int = 0
    llm: ScriptedLLM | None = None

    def expected(self) -> tuple[list[Any], bool]:
        """The values the consumer gets from this segment, and whether it then fails."""
        if self.fail_after is None:
            return list(self.values), False
        if self.kind == "gen":
            return self.values[: self.fail_after], True
        delivered = self.values[: self.fail_after]
        # An LLM stream holds back non-visible chunks until its first visible one.
        if not any(chunk.is_visible for chunk in delivered):
            return [], True
        return delivered, True

    def source(self, ctx: ChatContext) -> Any:
        if self.kind == "llm":
            fault = None if self.fail_after is None else Fault.fatal(after=self.fail_after)
            self.llm = ScriptedLLM(
                [ScriptedAttempt(self.values, fault=fault, delay=self.delays[0])]
            )
            llm = self.llm
            return lambda: open_llm_stream(llm, chat_ctx=ctx, conn_options=NO_RETRY)
        return self._gen

    async def _gen(self) -> AsyncIterator[str]:
        self.opened += 1
        self.running += 1
        try:
            for i, value in enumerate(self.values):
                if self.fail_after == i:
                    raise Boom
                await trio.sleep(self.delays[i])
                yield value
            if self.fail_after is not None:
                raise Boom
        finally:
            self.running -= 1

    @property
    def times_opened(self) -> int:
        return len(self.llm.calls) if self.llm is not None else self.opened

    @property
    def still_running(self) -> int:
        return self.llm.running if self.llm is not None else self.running


delays = st.sampled_from([0.0, 0.1, 0.7])


@st.composite
def segment_plans(draw: st.DrawFn) -> SegmentPlan:
    if draw(st.booleans()):
        values = draw(st.lists(st.sampled_from(["", "a", "bc "]), max_size=4))
        item_delays = draw(st.lists(delays, min_size=len(values), max_size=len(values)))
        fail = draw(st.none() | st.integers(0, len(values)))
        return SegmentPlan("gen", values, item_delays, fail)
    words = draw(st.lists(st.sampled_from(["hi ", "there ", "you"]), min_size=1, max_size=3))
    chunks = text_chunks(words)
    fail = draw(st.none() | st.integers(0, len(chunks)))
    return SegmentPlan("llm", chunks, [draw(delays)], fail)


endings = st.one_of(
    st.tuples(st.just("none"), st.just(0), st.just(0.0)),
    st.tuples(st.sampled_from(["after", "break", "raise"]), st.integers(0, 14), st.just(0.0)),
    st.tuples(
        st.sampled_from(["at", "cancel"]), st.just(0),
        st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0, 1.4, 2.5, 4.0]),
    ),
)


def model(plans: list[SegmentPlan]) -> tuple[list[Any], int | None]:
    """The full sequence as comparable keys, and the index of the failing segment."""
    out: list[Any] = []
    for index, plan in enumerate(plans):
        sid = f"s{index}"
        values, fails = plan.expected()
        if values or not fails:
            out.append(("start", sid))
        out.extend((sid, key(v)) for v in values)
        if fails:
            return out, index
        out.append(("end", sid))
    return out, None


def key(value: Any) -> Any:
    # Chunks by identity: the scripted provider hands over the very objects of the plan.
    return ("chunk", id(value)) if isinstance(value, ChatChunk) else value


def item_key(item: Any) -> Any:
    if isinstance(item, SegmentStart):
        return ("start", item.id)
    if isinstance(item, SegmentEnd):
        return ("end", item.id)
    return (item.segment_id, key(item.value))


def visible(value: Any) -> bool:
    return value.is_visible if isinstance(value, ChatChunk) else bool(value)


# -- running it ----------------------------------------------------------------------------------


@dataclass
class Run:
    received: list[tuple[Any, float]] = field(default_factory=list)
    acks: list[tuple[str, str, float]] = field(default_factory=list)
    sync: list[tuple[str, str, float]] = field(default_factory=list)
    async_started: list[tuple[str, str, float]] = field(default_factory=list)
    async_running: int = 0
    error: BaseException | None = None
    errors_raised: int = 0
    stopped_at: float = math.inf
    turn: Turn[Any] | None = None


async def run_turn(
    plans: list[SegmentPlan],
    lookahead: int,
    sleeps: list[float],
    handler_time: float,
    ending: tuple[str, int, float],
) -> Run:
    run = Run()
    mode, k, t = ending
    ctx = ChatContext()
    ctx.add_message(role="user", content="hi")
    segments = [
        Segment(plan.source(ctx), id=f"s{i}", label=plan.kind) for i, plan in enumerate(plans)
    ]

    def on_sync(notice: SegmentNotice) -> None:
        run.sync.append((notice.event.value, notice.segment_id, trio.current_time()))

    async def on_async(notice: SegmentNotice) -> None:
        run.async_started.append((notice.event.value, notice.segment_id, trio.current_time()))
        run.async_running += 1
        try:
            await trio.sleep(handler_time)
        finally:
            run.async_running -= 1

    async def body(nursery: trio.Nursery) -> None:
        async with open_turn(segments, lookahead=lookahead) as turn:
            run.turn = turn
            for event in SegmentEvent:
                turn.on(event, on_sync)
                turn.on(event, on_async)
            if mode == "at":

                async def barge_in() -> None:
                    await trio.sleep(t)
                    run.stopped_at = min(run.stopped_at, trio.current_time())
                    turn.interrupt()

                nursery.start_soon(barge_in)
            acked: set[str] = set()
            try:
                async for item in turn:
                    run.received.append((item, trio.current_time()))
                    n = len(run.received)
                    if mode == "after" and n > k:
                        run.stopped_at = min(run.stopped_at, trio.current_time())
                        turn.interrupt()
                    if mode == "break" and n > k:
                        break
                    if mode == "raise" and n > k:
                        raise UserError
                    # The player: play the item, then ack what it played.
                    await trio.sleep(sleeps[(n - 1) % len(sleeps)])
                    if isinstance(item, SegmentItem) and visible(item.value):
                        if item.segment_id not in acked:
                            acked.add(item.segment_id)
                            run.acks.append(
                                ("playback_started", item.segment_id, trio.current_time())
                            )
                        turn.ack_started(item)
                    elif isinstance(item, SegmentEnd):
                        if item.id not in acked:
                            acked.add(item.id)
                            run.acks.append(("playback_started", item.id, trio.current_time()))
                        run.acks.append(("playback_finished", item.id, trio.current_time()))
                        turn.ack_finished(item)
            except SegmentError as exc:
                run.error = exc
                run.errors_raised += 1
            if run.error is not None:
                # Raised once: iterating again just ends.
                async for _ in turn:
                    raise AssertionError("an item after the error")
        run.stopped_at = min(run.stopped_at, trio.current_time())
        # After the block, iteration ends at once (no ClosedResourceError).
        async for _ in turn:
            raise AssertionError("an item after the block")

    async with trio.open_nursery() as nursery:
        if mode == "cancel":
            with trio.move_on_after(t):
                await body(nursery)
            run.stopped_at = min(run.stopped_at, t)
        elif mode == "raise":
            raised = False
            try:
                await body(nursery)
            except UserError:  # as itself, never in a group
                raised = True
            assert raised == (len(run.received) > k)
            run.stopped_at = min(run.stopped_at, trio.current_time())
        else:
            await body(nursery)
        nursery.cancel_scope.cancel()  # the barge-in task, if it has not fired
    return run


def check(
    plans: list[SegmentPlan], lookahead: int, ending: tuple[str, int, float], run: Run
) -> None:
    turn = run.turn
    if turn is None:
        # Cancelled while entering the block: nothing was started.
        assert ending[0] == "cancel"
        assert all(plan.times_opened == 0 for plan in plans)
        return
    expected, failing = model(plans)
    got = [item_key(item) for item, _ in run.received]
    # A prefix of the model's sequence, and all of it if the consumer read to the end.
    assert got == expected[: len(got)]
    read_to_end = ending[0] == "none"
    if read_to_end:
        assert got == expected
        if failing is None:
            assert run.error is None
            assert turn.status is StreamStatus.COMPLETED
        else:
            assert isinstance(run.error, SegmentError)
            assert run.errors_raised == 1
            assert run.error.index == failing
            cause = run.error.cause
            plan = plans[failing]
            if plan.kind == "gen":
                assert isinstance(cause, Boom)
            else:
                assert isinstance(cause, StreamInterrupted | APIStatusError)
            assert turn.status is StreamStatus.FAILED
    if run.error is not None:
        assert failing is not None
        assert got == expected  # raised only after every item before it

    # What the consumer saw and did, derived from its own records.
    delivered: dict[str, float] = {}
    completed: dict[str, float] = {}
    counts: dict[str, int] = {}
    for item, at in run.received:
        if isinstance(item, SegmentItem):
            counts[item.segment_id] = counts.get(item.segment_id, 0) + 1
            if visible(item.value):
                delivered.setdefault(item.segment_id, at)
        elif isinstance(item, SegmentEnd):
            completed[item.id] = at
    want_sync = (
        [("delivered", s, at) for s, at in delivered.items()]
        + [("completed", s, at) for s, at in completed.items()]
        + run.acks
    )
    # Every sync handler ran exactly for those, at that very time, in time order.
    assert sorted(run.sync) == sorted(want_sync)
    assert [e[2] for e in run.sync] == sorted(e[2] for e in run.sync)
    # Async handlers started at the same time; those fired after the turn stopped may be
    # skipped (cancelled handlers), those before may not.
    started = set(run.async_started)
    assert started <= set(run.sync)
    for event in run.sync:
        if event[2] < run.stopped_at:
            assert event in started
    assert run.async_running == 0

    # The report agrees.
    report = turn.report
    for index, seg in enumerate(report.segments):
        sid = f"s{index}"
        assert seg.delivered_at == delivered.get(sid)
        assert seg.completed_at == completed.get(sid)
        assert seg.items == counts.get(sid, 0)
        acks = {e: at for (e, s, at) in run.acks if s == sid}
        assert seg.playback_started_at == acks.get("playback_started")
        assert seg.playback_finished_at == acks.get("playback_finished")
    if len(completed) == len(plans):
        assert report.status is StreamStatus.COMPLETED
    elif turn.error is not None:
        assert report.status is StreamStatus.FAILED
    else:
        assert report.status is StreamStatus.CANCELLED
        assert report.interrupted

    # Sources: opened in order, never beyond the segment being delivered plus the read-ahead;
    # the report says which; nothing is left running.
    opened = [plan.times_opened for plan in plans]
    assert all(n in (0, 1) for n in opened)
    assert [bool(n) for n in opened] == [seg.opened for seg in report.segments]
    n_opened = sum(opened)
    assert opened == [1] * n_opened + [0] * (len(plans) - n_opened)
    assert n_opened <= len(completed) + 1 + lookahead
    assert all(plan.still_running == 0 for plan in plans)


@settings(max_examples=EXAMPLES)
@given(
    plans=st.lists(segment_plans(), min_size=1, max_size=4),
    lookahead=st.sampled_from([0, 0, 1, 2]),
    sleeps=st.lists(st.sampled_from([0.0, 0.05, 0.3, 1.0]), min_size=1, max_size=5),
    handler_time=st.sampled_from([0.0, 0.2, 3.0]),
    ending=endings,
)
def test_interruption_at_any_point(
    plans: list[SegmentPlan],
    lookahead: int,
    sleeps: list[float],
    handler_time: float,
    ending: tuple[str, int, float],
) -> None:
    runs: list[Run] = []

    async def main() -> None:
        runs.append(await run_turn(plans, lookahead, sleeps, handler_time, ending))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    check(plans, lookahead, ending, runs[0])
