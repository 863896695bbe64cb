"""Property-based fault injection for the runtime: the centrepiece of its tests.

Hypothesis draws a fault plan (per attempt: chunks, a fault after some chunks, delays, read
batching), retry options and time limits, and a consumer behaviour. A small reference model
computes, from the plan alone, what the consumer must receive and how the stream must end;
the real runtime runs under trio's MockClock (autojump) and must agree exactly. Every example
also checks the invariants that hold whatever happens: one terminal status, one metrics record
whose attempt count matches the provider's calls, no duplicate chunk, nothing left running,
no closed-channel error escaping, and a user exception propagating as itself.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_llmstream import (
    APIConnectOptions,
    APIError,
    APITimeoutError,
    ChatChunk,
    ChatContext,
    LLMMetrics,
    LLMStream,
    RetriesExhaustedError,
    StreamInterrupted,
    StreamStatus,
    Timeouts,
    open_llm_stream,
)
from trio_llmstream.testing import FaultKind, ScriptedAttempt, ScriptedLLM
from trio_llmstream.testing.strategies import fault_plans

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
# The runtime properties get at least 2,000 examples in CI (the bar).
EXAMPLES = {"ci": 2000, "thorough": 20000}.get(PROFILE, 200)

IDLE = 10.0  # default idle limit; plans' delays stay far below it


class UserError(Exception):
    pass


# -- the reference model -----------------------------------------------------------------------


@dataclass
class AttemptOutcome:
    delivered: list[ChatChunk]
    committed: bool
    error_kind: str | None  # None = success; else "api-retryable", "api-fatal", "bug"
    error_type: type[BaseException] | None
    truncated: bool = False


def _error_for(attempt: ScriptedAttempt) -> tuple[str, type[BaseException]]:
    fault = attempt.fault
    assert fault is not None
    exc = fault.exception("x")
    if exc is None:  # stall: resolved by the caller from the timeline
        raise AssertionError("stall has no exception")
    if isinstance(exc, APIError):
        return ("api-retryable" if exc.retryable else "api-fatal"), type(exc)
    return "bug", type(exc)


def model_attempt(attempt: ScriptedAttempt, first_token: float | None) -> AttemptOutcome:
    chunks = list(attempt.chunks)
    fault = attempt.fault
    limit = len(chunks) if fault is None else min(fault.after, len(chunks))
    bs = max(1, attempt.batch_size)
    batches = [chunks[i : min(limit, i + bs)] for i in range(0, limit, bs)]
    d = attempt.delay
    ft = math.inf if first_token is None else first_token
    visible_batch = next(
        (j for j, b in enumerate(batches) if any(c.is_visible for c in b)), None
    )
    if fault is None:
        t_end = len(batches) * d
    elif fault.kind is FaultKind.STALL:
        t_end = math.inf
    else:
        t_end = (len(batches) + 1) * d
    timeout = APITimeoutError
    if visible_batch is None or (visible_batch + 1) * d > ft:
        # No visible output in time: the first-token limit fires if it comes before the end.
        if ft < t_end:
            return AttemptOutcome([], False, "api-retryable", timeout)
        if fault is None:
            return AttemptOutcome(chunks, False, None, None)
        if fault.kind is FaultKind.STALL:  # idle limit, before any visible output
            return AttemptOutcome([], False, "api-retryable", timeout)
        kind, etype = _error_for(attempt)
        return AttemptOutcome([], False, kind, etype)
    delivered = chunks[:limit]
    if fault is None:
        return AttemptOutcome(chunks, True, None, None)
    if fault.kind is FaultKind.STALL:
        return AttemptOutcome(delivered, True, "api-retryable", timeout)
    kind, etype = _error_for(attempt)
    return AttemptOutcome(
        delivered, True, kind, etype, truncated=fault.kind is FaultKind.TRUNCATE
    )


@dataclass
class Expected:
    chunks: list[ChatChunk]
    status: StreamStatus
    error_type: type[BaseException] | None
    cause_type: type[BaseException] | None
    attempts: list[AttemptOutcome] = field(default_factory=list)


def model_stream(
    plan: list[ScriptedAttempt], max_retry: int, first_token: list[float | None]
) -> Expected:
    outcomes: list[AttemptOutcome] = []
    api_errors = 0
    for number in range(max_retry + 1):
        attempt = plan[min(number, len(plan) - 1)]
        out = model_attempt(attempt, first_token[number])
        outcomes.append(out)
        if out.error_kind is None:
            return Expected(out.delivered, StreamStatus.COMPLETED, None, None, outcomes)
        if out.error_kind != "bug":
            api_errors += 1
        if out.committed:
            status = StreamStatus.TRUNCATED if out.truncated else StreamStatus.FAILED
            return Expected(out.delivered, status, StreamInterrupted, out.error_type, outcomes)
        if out.error_kind == "api-retryable" and number < max_retry:
            continue
        if out.error_kind == "api-retryable" and api_errors > 1:
            return Expected(
                [], StreamStatus.FAILED, RetriesExhaustedError, out.error_type, outcomes
            )
        return Expected([], StreamStatus.FAILED, out.error_type, None, outcomes)
    raise AssertionError("unreachable")


# -- running the real thing --------------------------------------------------------------------


@dataclass
class Run:
    received: list[ChatChunk] = field(default_factory=list)
    error: BaseException | None = None
    metrics: list[LLMMetrics] = field(default_factory=list)
    llm_metrics: list[LLMMetrics] = field(default_factory=list)
    status: StreamStatus | None = None
    channel_received: int = 0
    outside_cancelled: bool = False


consumers = st.one_of(
    st.tuples(st.just("all"), st.just(0), st.just(0.0)),
    st.tuples(st.just("slow"), st.just(0), st.sampled_from([0.05, 3.0, 25.0])),
    st.tuples(st.just("break"), st.integers(0, 12), st.just(0.0)),
    st.tuples(st.just("raise"), st.integers(0, 12), st.just(0.0)),
    st.tuples(st.just("cancel"), st.just(0), st.sampled_from([0.0, 0.005, 0.3, 1.0, 4.0, 60.0])),
)

first_token_specs = st.sampled_from(["none", "fixed", "doubling"])


def _timeouts(spec: str) -> tuple[APIConnectOptions, list[float | None]]:
    if spec == "none":
        limits: list[float | None] = [None] * 8
        timeouts = None
    elif spec == "fixed":
        limits = [1.3] * 8
        timeouts = Timeouts(first_token=1.3, idle=IDLE)
    else:
        limits = [0.25 * 3**a for a in range(8)]
        timeouts = None
    return APIConnectOptions(max_retry=0, timeout=IDLE, timeouts=timeouts), limits


async def run_scenario(
    plan: list[ScriptedAttempt],
    max_retry: int,
    ft_spec: str,
    consumer: tuple[str, int, float],
    seed: int,
    buffer_size: int = 0,
) -> tuple[Run, ScriptedLLM, Expected]:
    base, limits = _timeouts(ft_spec)
    if ft_spec == "doubling":
        options = APIConnectOptions(
            max_retry=max_retry,
            retry_interval=0.2,
            timeout=IDLE,
            timeouts=lambda a: Timeouts(first_token=0.25 * 3**a, idle=IDLE),
        )
    else:
        options = APIConnectOptions(
            max_retry=max_retry, retry_interval=0.2, timeout=IDLE, timeouts=base.timeouts
        )
    expected = model_stream(plan, max_retry, limits)
    llm = ScriptedLLM(plan)
    run = Run()
    llm.on_metrics(run.llm_metrics.append)
    llm.on_metrics(run.llm_metrics.append)  # registering twice must not double metrics
    mode, k, t = consumer
    ctx = ChatContext()
    ctx.add_message(role="user", content="hi")

    streams: list[LLMStream] = []

    async def body() -> None:
        async with open_llm_stream(
            llm,
            chat_ctx=ctx,
            conn_options=options,
            on_metrics=run.metrics.append,
            rng=random.Random(seed),
            buffer_size=buffer_size,
        ) as stream:
            streams.append(stream)
            try:
                async for chunk in stream:
                    run.received.append(chunk)
                    if mode == "slow":
                        await trio.sleep(t)
                    if mode in ("break", "raise") and len(run.received) >= k:
                        break
            except (APIError, StreamInterrupted, RuntimeError) as exc:
                run.error = exc
            # Chunks the consumer took from the channel, iterated or not yet.
            run.channel_received = len(run.received) + len(stream._buf) - stream._pos
            if mode == "raise":
                raise UserError("from the consumer")

    if mode == "cancel":
        with trio.move_on_after(t) as scope:
            await body()
        run.outside_cancelled = scope.cancelled_caught
    elif mode == "raise":
        with pytest.raises(UserError):
            await body()
    else:
        await body()
    stream = streams[0]
    run.status = stream.status
    # After the block: iterating again ends at once, never raising a channel error.
    async for _ in stream:
        raise AssertionError("no chunk after the block")
    # The pipe was closed by its one owner, and nothing waits in it.
    assert stream._pipe.closed
    return run, llm, expected


def check(
    run: Run,
    llm: ScriptedLLM,
    expected: Expected,
    consumer: tuple[str, int, float],
    buffer_size: int = 0,
) -> None:
    mode, k, _ = consumer
    # Nothing outlives the block.
    assert llm.running == 0
    # Exactly one metrics record, to each listener, whatever the ending.
    assert len(run.metrics) == 1
    assert len(run.llm_metrics) == 1
    metrics = run.metrics[0]
    assert run.llm_metrics[0] is metrics
    assert len(metrics.attempts) == len(llm.calls)
    assert [a.attempt for a in metrics.attempts] == list(range(len(llm.calls)))
    # Exactly one terminal status, consistent with the metrics.
    assert run.status is not None
    assert run.status is not StreamStatus.RUNNING
    assert metrics.status is run.status
    assert metrics.cancelled == (run.status is StreamStatus.CANCELLED)
    # Never a duplicate: the consumer saw a prefix of the committed attempt's chunks (by
    # identity, so a chunk from a discarded attempt would be caught).
    assert len({id(c) for c in run.received}) == len(run.received)
    n = len(run.received)
    assert [id(c) for c in run.received] == [id(c) for c in expected.chunks[:n]]

    finished = mode in ("all", "slow") or (
        mode in ("break", "raise") and k > len(expected.chunks)
    )
    if finished:
        assert n == len(expected.chunks)
        assert run.status is expected.status
        assert len(llm.calls) == len(expected.attempts)
        if expected.error_type is None:
            assert run.error is None
        else:
            assert type(run.error) is expected.error_type
            if expected.cause_type is not None:
                assert type(run.error.__cause__) is expected.cause_type
            if isinstance(run.error, RetriesExhaustedError):
                assert run.error.attempts == len(llm.calls)
                assert len(run.error.errors) == len(llm.calls)
        for got, want in zip(metrics.attempts, expected.attempts, strict=True):
            assert (got.error is None) == (want.error_kind is None)
            if want.error_type is not None:
                assert type(got.error) is want.error_type
            assert got.committed == want.committed
        if run.status is StreamStatus.COMPLETED:
            assert metrics.attempts[-1].backoff == 0
    else:
        # Left early: cancelled, unless every chunk had been handed over, in which case the
        # stream may have ended on its own first.
        if mode == "cancel":
            # The caller's deadline may also make the stream give up on a retry it has no
            # time left for: failed, with the attempt's own error, before the deadline.
            assert run.status in (StreamStatus.CANCELLED, StreamStatus.FAILED, expected.status)
        elif run.channel_received < len(expected.chunks) and buffer_size == 0:
            # Without a buffer the producer cannot run ahead: it was blocked handing over.
            assert run.status is StreamStatus.CANCELLED
        elif run.status is not StreamStatus.CANCELLED:
            assert run.status is expected.status
    # Retries only while nothing visible was delivered; a committed attempt is the last.
    committed = [a.committed for a in metrics.attempts]
    assert all(not c for c in committed[:-1])
    for attempt in metrics.attempts[:-1]:
        assert isinstance(attempt.error, APIError)
        assert attempt.error.retryable


@settings(max_examples=EXAMPLES)
@given(
    plan=fault_plans(max_attempts=4),
    max_retry=st.integers(0, 3),
    ft_spec=first_token_specs,
    consumer=consumers,
    seed=st.integers(0, 2**32 - 1),
    buffer_size=st.sampled_from([0, 1, 16]),
)
def test_runtime_agrees_with_model(
    plan: list[ScriptedAttempt],
    max_retry: int,
    ft_spec: str,
    consumer: tuple[str, int, float],
    seed: int,
    buffer_size: int,
) -> None:
    result: list[tuple[Run, ScriptedLLM, Expected]] = []

    async def main() -> None:
        result.append(
            await run_scenario(plan, max_retry, ft_spec, consumer, seed, buffer_size)
        )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    check(*result[0], consumer, buffer_size)
