"""Hedged streams: a second attempt beside a slow first one; the first visible output the
consumer takes wins, every other attempt is cancelled and recorded; nothing interleaves."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from tests.test_runtime_timing import seed_scheduler
from trio_llmstream import (
    APIConnectOptions,
    ChatChunk,
    ChatContext,
    CompletionUsage,
    FallbackLLM,
    Hedge,
    LLMMetrics,
    StreamStatus,
    open_llm_stream,
)
from trio_llmstream._llm import LLM
from trio_llmstream.testing import Fault, FaultKind, ScriptedAttempt, ScriptedLLM, text_chunks


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hi")
    return c


def slow(text: str, delay: float, rid: str, **kw: object) -> ScriptedAttempt:
    """All chunks in one read, ``delay`` seconds in."""
    return ScriptedAttempt(text_chunks(text, request_id=rid, **kw), delay=delay,  # type: ignore[arg-type]
                           batch_size=100)


async def run(
    llm: LLM, hedge: Hedge | None, *, max_retry: int = 3
) -> tuple[list[ChatChunk], BaseException | None, LLMMetrics, float | None]:
    received: list[ChatChunk] = []
    error: BaseException | None = None
    first: float | None = None
    t0 = trio.current_time()
    async with open_llm_stream(
        llm, chat_ctx=ctx(), hedge=hedge, rng=random.Random(0),
        conn_options=APIConnectOptions(max_retry=max_retry, retry_interval=0.1),
    ) as stream:
        try:
            async for chunk in stream:
                if first is None and chunk.is_visible:
                    first = trio.current_time() - t0
                received.append(chunk)
        except Exception as exc:
            error = exc
    return received, error, stream.metrics, first


async def test_a_hedge_wins_over_a_slow_first_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    llm = ScriptedLLM([slow("slow one", 5.0, "A"), slow("fast one", 0.5, "B")], by="call")
    received, error, metrics, first = await run(llm, Hedge(after=1.0))
    assert error is None
    assert "".join(c.text for c in received) == "fast one"
    assert {c.request_id for c in received} == {"B"}  # never interleaved
    assert first == pytest.approx(1.5)
    assert llm.cancelled == 1
    assert llm.running == 0
    loser, winner = metrics.attempts
    assert (loser.attempt, loser.committed, loser.error) == (0, False, None)
    assert loser.duration == pytest.approx(1.5)
    assert winner.committed
    assert winner.error is None
    assert metrics.status is StreamStatus.COMPLETED
    assert metrics.ttft == pytest.approx(1.5)


async def test_no_hedge_when_the_first_attempt_is_fast_enough(
    autojump_clock: trio.testing.MockClock,
) -> None:
    llm = ScriptedLLM([slow("quick", 0.5, "A"), slow("never", 0.1, "B")], by="call")
    _received, _, metrics, _ = await run(llm, Hedge(after=1.0))
    assert len(llm.calls) == 1
    assert len(metrics.attempts) == 1


async def test_the_hedge_goes_to_the_next_provider(autojump_clock: trio.testing.MockClock) -> None:
    a = ScriptedLLM([slow("from a", 4.0, "A")], label="a")
    b = ScriptedLLM([slow("from b", 1.0, "B")], label="b")
    received, error, metrics, first = await run(FallbackLLM([a, b]), Hedge(after=0.5))
    assert error is None
    assert "".join(c.text for c in received) == "from b"
    assert [(m.label, m.committed) for m in metrics.attempts] == [("a", False), ("b", True)]
    assert first == pytest.approx(1.5)
    assert a.cancelled == 1


async def test_the_first_attempt_may_still_win(autojump_clock: trio.testing.MockClock) -> None:
    llm = ScriptedLLM([slow("first", 1.5, "A"), slow("second", 5.0, "B")], by="call")
    received, _, metrics, first = await run(llm, Hedge(after=1.0))
    assert {c.request_id for c in received} == {"A"}
    assert first == pytest.approx(1.5)
    assert [m.committed for m in metrics.attempts] == [True, False]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.PROVIDER_ERROR, provider_type="server_error"),  # an error frame
        Fault(FaultKind.PROVIDER_ERROR, provider_type="invalid_request_error"),
        Fault.retryable(),
        Fault(FaultKind.TRUNCATE),
    ],
)
async def test_an_error_frame_never_wins(
    fault: Fault, autojump_clock: trio.testing.MockClock
) -> None:
    role_only = text_chunks([], request_id="B", finish_reason=None)
    llm = ScriptedLLM(
        [slow("the answer", 3.0, "A"), ScriptedAttempt(role_only, fault, delay=0.2)], by="call"
    )
    received, error, metrics, _ = await run(llm, Hedge(after=1.0), max_retry=1)
    assert error is None
    assert {c.request_id for c in received} == {"A"}
    assert metrics.attempts[1].error is not None
    assert not metrics.attempts[1].committed
    assert metrics.status is StreamStatus.COMPLETED


async def test_an_empty_response_never_wins_while_another_may_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    usage = CompletionUsage(prompt_tokens=3, completion_tokens=0, total_tokens=3)
    empty = ScriptedAttempt(text_chunks([], request_id="B", usage=usage), delay=0.2,
                            batch_size=10)
    llm = ScriptedLLM([slow("real text", 3.0, "A"), empty], by="call")
    received, error, metrics, first = await run(llm, Hedge(after=1.0))
    assert error is None
    assert {c.request_id for c in received} == {"A"}  # no role/finish chunk of B either
    assert first == pytest.approx(3.0)
    assert metrics.attempts[1].usage == usage  # the loser's usage is recorded
    assert metrics.attempts[1].error is None
    assert not metrics.attempts[1].committed


async def test_an_empty_response_wins_when_no_other_can(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = ScriptedAttempt(text_chunks([], request_id="A"), Fault.retryable(), delay=3.0,
                        batch_size=10)
    b = ScriptedAttempt(text_chunks([], request_id="B"), delay=0.2, batch_size=10)
    llm = ScriptedLLM([a, b], by="call")
    received, error, metrics, _ = await run(llm, Hedge(after=1.0), max_retry=1)
    assert error is None
    assert {c.request_id for c in received} == {"B"}
    assert metrics.status is StreamStatus.COMPLETED
    assert [m.error is None for m in metrics.attempts] == [False, True]


async def test_max_in_flight_and_the_budget_bound_the_hedges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    llm = ScriptedLLM([slow("x", 10.0, "A"), slow("y", 10.0, "B"), slow("z", 10.0, "C"),
                       slow("w", 0.1, "D")], by="call")
    starts: list[float] = []
    original = llm.run_attempt

    async def spy(*args: object) -> None:
        starts.append(trio.current_time())
        await original(*args)  # type: ignore[arg-type]

    llm.run_attempt = spy  # type: ignore[method-assign]
    t0 = trio.current_time()
    received, _, metrics, first = await run(llm, Hedge(after=1.0, max_in_flight=3), max_retry=2)
    # Three attempts at 0, 1 and 2 s (the budget allows three); the first to answer wins.
    assert [s - t0 for s in starts] == pytest.approx([0.0, 1.0, 2.0])
    assert {c.request_id for c in received} == {"A"}
    assert first == pytest.approx(10.0)
    assert sorted(m.attempt for m in metrics.attempts) == [0, 1, 2]


async def test_a_failed_first_attempt_leaves_the_hedge_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = ScriptedAttempt((), Fault.retryable(), delay=1.5)
    llm = ScriptedLLM([a, slow("hedge", 2.0, "B")], by="call")
    received, error, metrics, first = await run(llm, Hedge(after=1.0), max_retry=1)
    assert error is None
    assert {c.request_id for c in received} == {"B"}
    assert first == pytest.approx(3.0)
    assert metrics.attempts[0].backoff == 0.0


def test_simultaneous_deliveries_never_interleave() -> None:
    # Both attempts deliver at the same instant in many scheduler orders: one wins whole.
    winners: set[str | None] = set()
    for seed in range(60):
        seed_scheduler(seed)
        got: list[set[str | None]] = []

        async def main() -> None:
            llm = ScriptedLLM([
                ScriptedAttempt(text_chunks("a b c", request_id="A"), delay=1.0, aligned=True,
                                batch_size=2),
                ScriptedAttempt(text_chunks("x y z", request_id="B"), delay=0.5, aligned=True,
                                batch_size=2),
            ], by="call")
            received, error, _metrics, _ = await run(llm, Hedge(after=0.5))
            assert error is None
            ids = {c.request_id for c in received}
            assert len(ids) == 1
            assert len({id(c) for c in received}) == len(received)
            got.append(ids)  # noqa: B023

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        (ids,) = got
        winners |= ids
    assert winners == {"A", "B"}  # both sides of the race were reached


def test_a_limit_firing_as_the_hedge_delivers_never_repeats_a_chunk() -> None:
    # Attempt 0 stalls; the hedge starts at 0.5 and hands its first visible batch over at 1.0,
    # the very instant its first-token limit (0.5 from its start) and attempt 0's (1.0) fire.
    # Whatever trio's order in that scheduler batch: taken means committed (interrupted or
    # completed, never retried); not taken means taken back, and the retry's output alone is
    # seen.
    from trio_llmstream import StreamInterrupted, Timeouts

    endings: set[str] = set()
    for seed in range(80):
        seed_scheduler(seed)
        got: list[tuple[list[ChatChunk], BaseException | None, LLMMetrics]] = []

        async def main() -> None:
            llm = ScriptedLLM([
                ScriptedAttempt((), Fault(FaultKind.STALL)),
                ScriptedAttempt(text_chunks("b1 b2 b3", request_id="B"), delay=0.5,
                                aligned=True, batch_size=2),
                ScriptedAttempt(text_chunks("c1", request_id="C")),
            ], by="call")
            received: list[ChatChunk] = []
            error: BaseException | None = None
            async with open_llm_stream(
                llm, chat_ctx=ctx(), hedge=Hedge(after=0.5),
                conn_options=APIConnectOptions(
                    max_retry=2, retry_interval=0.1,
                    timeouts=lambda number: Timeouts(first_token=(1.0, 0.5, 5.0)[number]),
                ),
            ) as stream:
                try:
                    async for chunk in stream:
                        received.append(chunk)
                except StreamInterrupted as exc:
                    error = exc
            got.append((received, error, stream.metrics))  # noqa: B023

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        ((received, error, metrics),) = got
        assert len({id(c) for c in received}) == len(received)
        ids = {c.request_id for c in received}
        assert len(ids) == 1
        assert sum(a.committed for a in metrics.attempts) == 1
        if ids == {"B"}:
            endings.add("interrupted" if error is not None else "B completed")
        else:
            assert error is None
            endings.add("retried")
    assert "retried" in endings, endings
    assert endings & {"interrupted", "B completed"}, endings


async def test_the_backoff_is_never_cut_short_by_a_due_hedge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Attempt 0 fails at 0.1 s with nothing else running: the loop backs off (round 0 of a
    # 2 s interval: 1 to 2 s). The hedge that was due at 0.5 s must not end that sleep.
    llm = ScriptedLLM([ScriptedAttempt((), Fault.retryable(), delay=0.1),
                       slow("ok", 0.1, "B")], by="call")
    starts: list[float] = []
    original = llm.run_attempt

    async def spy(*args: object) -> None:
        starts.append(trio.current_time())
        await original(*args)  # type: ignore[arg-type]

    llm.run_attempt = spy  # type: ignore[method-assign]
    t0 = trio.current_time()
    async with open_llm_stream(
        llm, chat_ctx=ctx(), hedge=Hedge(after=0.5), rng=random.Random(0),
        conn_options=APIConnectOptions(max_retry=1, retry_interval=2.0),
    ) as stream:
        await stream.collect()
    backoff = stream.metrics.attempts[0].backoff
    assert 1.0 <= backoff < 2.0
    assert starts[1] - t0 == pytest.approx(0.1 + backoff)


async def test_a_consumer_leaving_keeps_the_generation_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    usage = CompletionUsage(prompt_tokens=1, completion_tokens=4, total_tokens=5)
    chunks = text_chunks("a b c d", request_id="A", usage=usage)
    chunks = [*chunks[:2], chunks[-1], *chunks[2:-1]]  # usage early, then the rest
    llm = ScriptedLLM([ScriptedAttempt(chunks, delay=0.1)])
    for hedge in (None, Hedge(after=5.0)):
        async with open_llm_stream(llm, chat_ctx=ctx(), hedge=hedge) as stream:
            seen = 0
            async for chunk in stream:
                seen += chunk.is_visible
                if seen == 3:
                    break
        assert stream.metrics.status is StreamStatus.CANCELLED
        assert stream.metrics.tokens_per_second == pytest.approx(4 / 0.3)


def test_a_bug_in_one_attempt_is_not_hidden_by_an_empty_response() -> None:
    # Found by test_hedged_streams_agree_with_model: the hedge finished empty at 0.003 s and
    # waited; the first attempt then raised a bug, and (depending on the scheduler's order)
    # the empty response won by default and completed the stream, or was delivered and then
    # followed by the bug. Without a hedge a bug ends the stream with nothing delivered; with
    # one it must too, in every order.
    endings: set[tuple[str, int]] = set()
    for seed in range(40):
        seed_scheduler(seed)

        async def main() -> None:
            a = ScriptedAttempt(text_chunks([], request_id="A"), Fault(FaultKind.BUG, 0),
                                delay=0.01)
            b = ScriptedAttempt(text_chunks([], request_id="B"), batch_size=10)
            llm = ScriptedLLM([a, b], by="call")
            received, error, metrics, _ = await run(llm, Hedge(after=0.003), max_retry=1)
            endings.add((repr(error), len(received)))
            assert metrics.status is StreamStatus.FAILED

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert endings == {("RuntimeError('scripted provider bug')", 0)}
