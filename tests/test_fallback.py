"""FallbackLLM: one stream through several providers, one budget, one commit point, health
across streams, per-provider limits, labels and per-provider metrics."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from trio_llmstream import (
    LLM,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    ChatContext,
    FallbackEntry,
    FallbackLLM,
    LLMMetrics,
    ProviderError,
    RetriesExhaustedError,
    StreamInterrupted,
    StreamStatus,
    Timeouts,
    open_llm_stream,
)
from trio_llmstream._core._retry import GiveUp, Retry, decide_next, decide_retry
from trio_llmstream.testing import Fault, FaultKind, ScriptedAttempt, ScriptedLLM, text_chunks


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hi")
    return c


def ok(text: str = "hello world", rid: str = "r") -> ScriptedAttempt:
    return ScriptedAttempt(text_chunks(text, request_id=rid))


def failing(status: int) -> ScriptedAttempt:
    return ScriptedAttempt((), Fault(FaultKind.ERROR, 0, APIStatusError("no", status_code=status)))


async def run(llm: LLM, options: APIConnectOptions, **kw: object) -> tuple[
    str, object, LLMMetrics
]:
    text: list[str] = []
    error: BaseException | None = None
    async with open_llm_stream(
        llm, chat_ctx=ctx(), conn_options=options, rng=random.Random(0), **kw  # type: ignore[arg-type]
    ) as stream:
        try:
            async for chunk in stream:
                text.append(chunk.text)
        except Exception as exc:
            error = exc
    return "".join(text), error, stream.metrics


@pytest.mark.parametrize("status", [400, 401, 403, 404, 503, 429])
async def test_any_failure_before_the_commit_moves_on_at_once(
    status: int, autojump_clock: trio.testing.MockClock
) -> None:
    a = ScriptedLLM([failing(status)], label="a", by="call")
    b = ScriptedLLM([ok()], label="b", by="call")
    llm = FallbackLLM([a, b])
    t0 = trio.current_time()
    text, error, metrics = await run(llm, APIConnectOptions(max_retry=1, retry_interval=5.0))
    assert error is None
    assert text == "hello world"
    assert trio.current_time() - t0 < 0.01  # moving to a fresh provider: no backoff
    assert [m.label for m in metrics.attempts] == ["a", "b"]
    assert metrics.attempts[0].backoff == 0.0
    assert metrics.status is StreamStatus.COMPLETED
    assert metrics.label == "fallback(a,b)"


async def test_insufficient_quota_moves_on(autojump_clock: trio.testing.MockClock) -> None:
    quota = ScriptedAttempt(
        (), Fault(FaultKind.ERROR, 0, ProviderError("quota", type="insufficient_quota"))
    )
    a = ScriptedLLM([quota], label="a", by="call")
    b = ScriptedLLM([ok()], label="b", by="call")
    text, error, _ = await run(FallbackLLM([a, b]), APIConnectOptions(max_retry=1))
    assert (text, error) == ("hello world", None)


async def test_the_budget_is_shared_and_the_backoff_applies_on_wrapping(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = ScriptedLLM([failing(503)], label="a", by="call")
    b = ScriptedLLM([failing(502)], label="b", by="call")
    _text, error, metrics = await run(
        FallbackLLM([a, b]), APIConnectOptions(max_retry=4, retry_interval=1.0)
    )
    assert isinstance(error, RetriesExhaustedError)
    assert len(metrics.attempts) == 5  # one budget: max_retry + 1 attempts in all
    assert [m.label for m in metrics.attempts] == ["a", "b", "a", "b", "a"]
    backoffs = [m.backoff for m in metrics.attempts]
    # a -> b fresh (0), b -> a wraps (round 0: [0.5, 1)), a -> b fresh, b -> a (round 1).
    assert backoffs[0] == 0
    assert backoffs[2] == 0
    assert backoffs[4] == 0
    assert 0.5 <= backoffs[1] < 1.0
    assert 1.0 <= backoffs[3] < 2.0


async def test_a_provider_that_failed_for_good_is_not_asked_again_by_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = ScriptedLLM([failing(401)], label="a", by="call")
    b = ScriptedLLM([failing(503), ok()], label="b", by="call")
    text, error, metrics = await run(
        FallbackLLM([a, b]), APIConnectOptions(max_retry=3, retry_interval=0.1)
    )
    assert (text, error) == ("hello world", None)
    assert [m.label for m in metrics.attempts] == ["a", "b", "b"]
    assert metrics.attempts[1].backoff > 0  # b -> b wraps: backoff
    assert len(a.calls) == 1


async def test_every_provider_failing_for_good_ends_with_the_last_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = ScriptedLLM([failing(401)], label="a", by="call")
    b = ScriptedLLM([failing(400)], label="b", by="call")
    _, error, metrics = await run(FallbackLLM([a, b]), APIConnectOptions(max_retry=5))
    assert isinstance(error, APIStatusError)
    assert error.status_code == 400
    assert len(metrics.attempts) == 2
    assert metrics.status is StreamStatus.FAILED


async def test_after_the_commit_no_other_provider_is_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    partial = ScriptedAttempt(text_chunks("one two three"), Fault.retryable(after=2))
    a = ScriptedLLM([partial], label="a", by="call")
    b = ScriptedLLM([ok()], label="b", by="call")
    text, error, metrics = await run(FallbackLLM([a, b]), APIConnectOptions(max_retry=3))
    assert isinstance(error, StreamInterrupted)
    assert error.partial.text == "one " == text
    assert b.calls == []
    assert [m.label for m in metrics.attempts] == ["a"]


async def test_a_bug_is_never_failed_over(autojump_clock: trio.testing.MockClock) -> None:
    a = ScriptedLLM([ScriptedAttempt((), Fault(FaultKind.BUG))], label="a", by="call")
    b = ScriptedLLM([ok()], label="b", by="call")
    _, error, _ = await run(FallbackLLM([a, b]), APIConnectOptions(max_retry=3))
    assert isinstance(error, RuntimeError)
    assert b.calls == []


async def test_per_provider_time_limits(autojump_clock: trio.testing.MockClock) -> None:
    # The secondary is cold: its first token comes after 3 s, more than the primary's limit
    # of 1 s; its own entry gives it 5 s.
    a = ScriptedLLM([ScriptedAttempt((), Fault(FaultKind.STALL))], label="a", by="call")
    b = ScriptedLLM(
        [ScriptedAttempt(text_chunks("late"), delay=3.0, batch_size=10)], label="b", by="call"
    )
    llm = FallbackLLM([a, FallbackEntry(b, timeouts=lambda k: Timeouts(first_token=5.0 + k))])
    options = APIConnectOptions(max_retry=1, timeouts=Timeouts(first_token=1.0))
    text, error, metrics = await run(llm, options)
    assert (text, error) == ("late", None)
    assert isinstance(metrics.attempts[0].error, APITimeoutError)
    assert metrics.attempts[0].error.limit == "first_token"
    assert metrics.attempts[0].duration == pytest.approx(1.0)


async def test_per_provider_timeouts_must_be_timeouts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    b = ScriptedLLM([ok()], label="b")
    llm = FallbackLLM([FallbackEntry(b, timeouts=lambda k: 3.0)])  # type: ignore[arg-type,return-value]
    # In band: the stream's error, raised from iteration; the provider is never called.
    _, error, metrics = await run(llm, APIConnectOptions())
    assert isinstance(error, TypeError)
    assert "expected a Timeouts" in str(error)
    assert metrics.status is StreamStatus.FAILED
    assert b.calls == []


async def test_health_skips_a_failing_provider_for_a_cool_down_then_probes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = ScriptedLLM([failing(503)] * 3 + [ok("a back")], label="a", by="call")
    b = ScriptedLLM([ok("from b")], label="b", by="call")
    llm = FallbackLLM([a, b], failure_threshold=2, cooldown=10.0)
    options = APIConnectOptions(max_retry=1)
    assert [h.consecutive_failures for h in llm.health] == [0, 0]
    for _ in range(2):
        text, _, _ = await run(llm, options)
        assert text == "from b"
    health = llm.health
    assert health[0].consecutive_failures == 2
    assert health[0].cooling
    assert health[0].cooling_until == pytest.approx(trio.current_time() + 10.0)
    # Cooling: later streams skip a (b first), so a is not asked.
    calls = len(a.calls)
    text, _, metrics = await run(llm, options)
    assert text == "from b"
    assert len(a.calls) == calls
    assert [m.label for m in metrics.attempts] == ["b"]
    # After the cool-down a is probed again; it fails once more and cools again at once.
    await trio.sleep(10.0)
    assert not llm.health[0].cooling
    text, _, metrics = await run(llm, options)
    assert [m.label for m in metrics.attempts] == ["a", "b"]
    assert llm.health[0].cooling
    await trio.sleep(10.0)
    text, _, _ = await run(llm, options)  # the probe succeeds: healthy again
    assert text == "a back"
    assert llm.health[0].consecutive_failures == 0
    assert llm.health[0].cooling_until is None


async def test_health_is_shared_by_concurrent_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = ScriptedLLM([ScriptedAttempt((), Fault.retryable(), delay=0.1)], label="a")
    b = ScriptedLLM([ok()], label="b")
    llm = FallbackLLM([a, b], failure_threshold=5, cooldown=10.0)
    results: list[str] = []

    async def one() -> None:
        results.append((await run(llm, APIConnectOptions(max_retry=1)))[0])

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    assert results == ["hello world"] * 8
    assert llm.health[0].consecutive_failures == 8
    assert llm.health[0].cooling
    assert len(a.calls) == 8


async def test_each_provider_listener_sees_only_its_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trio_llmstream import CompletionUsage

    usage_a = CompletionUsage(prompt_tokens=5, completion_tokens=0, total_tokens=5)
    usage_b = CompletionUsage(prompt_tokens=7, completion_tokens=3, total_tokens=10)
    a_chunks = text_chunks([], request_id="ra", finish_reason=None, usage=usage_a)
    a = ScriptedLLM([ScriptedAttempt(a_chunks, Fault.retryable(after=len(a_chunks)))],
                    label="a", by="call")
    b = ScriptedLLM([ScriptedAttempt(text_chunks("hi", request_id="rb", usage=usage_b))],
                    label="b", by="call")
    c = ScriptedLLM([ok()], label="c")
    got_a: list[LLMMetrics] = []
    got_b: list[LLMMetrics] = []
    got_c: list[LLMMetrics] = []
    got_all: list[LLMMetrics] = []
    a.on_metrics(got_a.append)
    b.on_metrics(got_b.append)
    c.on_metrics(got_c.append)
    llm = FallbackLLM([a, b, c])
    llm.on_metrics(got_all.append)
    _, error, metrics = await run(llm, APIConnectOptions(max_retry=2))
    assert error is None
    assert got_all == [metrics]
    assert got_c == []  # served nothing
    (ma,), (mb,) = got_a, got_b
    assert ma.label == "a"
    assert [x.label for x in ma.attempts] == ["a"]
    assert ma.prompt_tokens == 5
    assert ma.total_tokens == 5
    assert mb.label == "b"
    assert mb.request_ids == ("rb",)
    assert mb.total_tokens == 10
    assert metrics.total_tokens == 15  # the stream's record: every attempt's usage
    assert ma.status is mb.status is StreamStatus.COMPLETED


def test_decide_next_fresh_provider_needs_no_backoff() -> None:
    options = APIConnectOptions(max_retry=2, retry_interval=1.0)
    err = APIStatusError("x", status_code=503, retry_after=100.0)
    rng = random.Random(0)
    # A fresh provider ignores the previous one's Retry-After.
    assert decide_next(options, attempt=0, error=err, committed=False, step="next",
                       round=0, rng=rng) == Retry(0.0)
    assert isinstance(decide_next(options, attempt=0, error=err, committed=False,
                                  step="wrap", round=0, rng=rng), GiveUp)
    assert decide_next(options, attempt=2, error=err, committed=False, step="next",
                       round=0, rng=rng) == GiveUp("no attempts left")
    assert decide_next(options, attempt=0, error=err, committed=True, step="next",
                       round=0, rng=rng) == GiveUp("output was already delivered")
    assert decide_next(options, attempt=0, error=err, committed=False, step=None,
                       round=0, rng=rng) == GiveUp("error is not retryable")
    assert decide_next(options, attempt=0, error=err, committed=False, step="next",
                       round=0, time_left=0.0, rng=rng).reason.startswith("the caller")  # type: ignore[union-attr]


def test_decide_retry_is_decide_next_for_one_provider() -> None:
    options = APIConnectOptions(max_retry=3, retry_interval=0.5)
    for attempt in range(4):
        for error in (APIStatusError("x", status_code=503), APIStatusError("x", status_code=400)):
            a = decide_retry(options, attempt=attempt, error=error, committed=False,
                             rng=random.Random(attempt))
            b = decide_next(options, attempt=attempt, error=error, committed=False,
                            step="wrap" if error.retryable else None, round=attempt,
                            rng=random.Random(attempt))
            assert a == b


def test_fallback_llm_validates() -> None:
    with pytest.raises(ValueError):
        FallbackLLM([])
    with pytest.raises(TypeError):
        FallbackLLM(["x"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        FallbackLLM([ScriptedLLM([ok()])], failure_threshold=0)
    llm = FallbackLLM([ScriptedLLM([ok()], label="x")], label="mine")
    assert llm.label == "mine"
    assert llm.health[0].label == "x"
    assert not llm.health[0].cooling


async def test_telemetry_hears_which_provider_ran_each_attempt(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_llmstream import _telemetry

    seen: list[tuple[int, object]] = []

    def attempt_finished(self: object, record: object, provider: object | None = None) -> None:
        seen.append((record.attempt, provider))  # type: ignore[attr-defined]

    monkeypatch.setattr(_telemetry.StreamTelemetry, "attempt_finished", attempt_finished)
    a = ScriptedLLM([failing(503)], label="a", by="call")
    b = ScriptedLLM([ok()], label="b", by="call")
    await run(FallbackLLM([a, b]), APIConnectOptions(max_retry=1))
    assert seen == [(0, a), (1, b)]
    seen.clear()
    await run(b, APIConnectOptions())
    assert seen == [(0, None)]  # the stream's own LLM: no second argument
