"""The central property, extended to several providers, hedged streams and held streams.

The reference model of ``test_stream_properties.py`` predicts one attempt from its plan; here
it is driven by a model of the route (``FallbackLLM``: the next eligible provider, one budget,
a provider that failed for good is not asked again by the stream), by a timeline of concurrent
attempts (hedging: which attempt's visible output comes first, which attempts start when, an
empty response waiting for the others), and by adopt/discard for held streams. Each provider
plays its own fault plan (``ScriptedLLM(by="call")``). The runtime runs under trio's MockClock
and must agree with the model exactly; whatever happens, no chunk is delivered twice, the
chunks come from one attempt, every attempt is recorded once and nothing outlives the block.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_stream_properties import (
    EXAMPLES,
    IDLE,
    AttemptOutcome,
    Expected,
    UserError,
    _first_token_limits,
    consumers,
    model_attempt,
)
from trio_llmstream import (
    APIConnectOptions,
    APIError,
    ChatChunk,
    ChatContext,
    FallbackLLM,
    Hedge,
    LLMMetrics,
    LLMStream,
    RetriesExhaustedError,
    StreamInterrupted,
    StreamStatus,
    StreamTruncatedError,
    Timeouts,
    open_llm_stream,
)
from trio_llmstream._llm import LLM
from trio_llmstream.testing import FaultKind, ScriptedAttempt, ScriptedLLM
from trio_llmstream.testing.strategies import chunk_sequences, fault_plans

# Each example runs a whole stream (several attempts, concurrent ones with hedging) under the
# mock clock; 400 in CI keeps the three properties within a few minutes on a shared machine.
PROVIDER_EXAMPLES = min(EXAMPLES, 400)

# -- the route model ---------------------------------------------------------------------------


class RouteModel:
    """The providers' order for one stream, as ``_fallback.Route`` must behave."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.eligible = [True] * n
        self.calls = [0] * n  # attempts each provider served (its plan index)

    def failed(self, p: int, out: AttemptOutcome) -> None:
        if out.error_kind != "api-retryable":
            self.eligible[p] = False

    def next_after(self, p: int) -> int | None:
        for step in range(1, self.n + 1):
            q = (p + step) % self.n
            if self.eligible[q]:
                return q
        return None

    def play(self, plans: list[list[ScriptedAttempt]], p: int) -> ScriptedAttempt:
        plan = plans[p][min(self.calls[p], len(plans[p]) - 1)]
        self.calls[p] += 1
        return plan


def _give_up(out: AttemptOutcome, errors: int, outcomes: list[AttemptOutcome]) -> Expected:
    status = StreamStatus.TRUNCATED if out.truncated else StreamStatus.FAILED
    if out.committed:
        return Expected(out.delivered, status, StreamInterrupted, out.error_type, outcomes)
    if out.error_kind == "api-retryable" and errors > 1:
        return Expected([], status, RetriesExhaustedError, out.error_type, outcomes)
    return Expected([], status, out.error_type, None, outcomes)


def model_fallback(
    plans: list[list[ScriptedAttempt]], max_retry: int, first_token: list[float | None]
) -> list[tuple[Expected, list[int]]]:
    """Every way a sequential (unhedged) stream over the providers may end, with the provider
    of each attempt."""
    results: list[tuple[Expected, list[int]]] = []

    def go(number: int, p: int, route: RouteModel, before: list[AttemptOutcome],
           providers: list[int], errors: int) -> None:
        plan_route = RouteModel(route.n)
        plan_route.eligible, plan_route.calls = list(route.eligible), list(route.calls)
        attempt = plan_route.play(plans, p)
        for out in model_attempt(attempt, first_token[number]):
            r = RouteModel(route.n)
            r.eligible, r.calls = list(plan_route.eligible), list(plan_route.calls)
            outcomes, used = [*before, out], [*providers, p]
            n_errors = errors + (out.error_kind not in (None, "bug"))
            if out.error_kind is None:
                results.append(
                    (Expected(out.delivered, StreamStatus.COMPLETED, None, None, outcomes), used)
                )
                continue
            r.failed(p, out)
            nxt = r.next_after(p)
            if out.committed or out.error_kind == "bug" or nxt is None or number >= max_retry:
                results.append((_give_up(out, n_errors, outcomes), used))
            else:
                go(number + 1, nxt, r, outcomes, used, n_errors)

    go(0, 0, RouteModel(len(plans)), [], [], 0)
    return results


# -- the timeline model of hedged streams ------------------------------------------------------


@dataclass
class Live:
    number: int
    provider: int
    start: float
    plan: ScriptedAttempt
    out: AttemptOutcome
    visible_at: float  # absolute; inf if it never shows visible output
    end_at: float
    waiting_empty: bool = False


def _timeline(plan: ScriptedAttempt, start: float) -> tuple[AttemptOutcome, float, float]:
    """The attempt alone (no first-token limit; first_event and idle are IDLE): its outcome,
    when its first visible batch arrives and when it ends."""
    (out,) = model_attempt(plan, None)
    chunks = list(plan.chunks)
    fault = plan.fault
    limit = len(chunks) if fault is None else min(fault.after, len(chunks))
    bs = max(1, plan.batch_size)
    nb = len(range(0, limit, bs))
    d = plan.delay
    batches = [chunks[i : min(limit, i + bs)] for i in range(0, limit, bs)]
    vb = next((j for j, b in enumerate(batches) if any(c.is_visible for c in b)), None)
    visible = math.inf if vb is None else start + (vb + 1) * d
    if fault is None:
        end = start + nb * d
    elif fault.kind is FaultKind.STALL:
        end = start + (nb * d + IDLE if nb else IDLE)
    else:
        end = start + (nb + 1) * d
    return out, visible, end


Ambiguous = None


def model_hedged(
    plans: list[list[ScriptedAttempt]], max_retry: int, after: float, max_in_flight: int
) -> tuple[Expected, list[int]] | None:
    """How a hedged stream ends (a fast consumer), or None when two events meet in one
    instant (the scheduler's order decides; only the invariants are checked then)."""
    route = RouteModel(len(plans))
    live: list[Live] = []
    outcomes: list[AttemptOutcome] = []
    providers: list[int] = []
    started = 0
    errors = 0
    now = 0.0

    def start(p: int, at: float) -> None:
        nonlocal started
        plan = route.play(plans, p)
        out, visible, end = _timeline(plan, at)
        live.append(Live(started, p, at, plan, out, visible, end))
        providers.append(p)
        started += 1

    def done(expected: Expected) -> tuple[Expected, list[int]]:
        return expected, providers

    start(0, 0.0)
    while True:
        waiting = any(x.waiting_empty for x in live)
        events: list[tuple[float, str, Live | None]] = []
        for x in live:
            if x.waiting_empty:
                continue
            if x.visible_at < math.inf and x.visible_at <= x.end_at:
                events.append((x.visible_at, "visible", x))
            else:
                events.append((x.end_at, "end", x))
        if (
            live
            and not waiting
            and len(live) < max_in_flight
            and started <= max_retry
            and route.next_after(live[-1].provider) is not None
        ):
            events.append((max(now, live[-1].start + after), "hedge", None))
        events.sort(key=lambda e: e[0])
        if len(events) > 1 and abs(events[0][0] - events[1][0]) < 1e-9:
            return Ambiguous
        now, kind, x = events[0]
        if kind == "hedge":
            nxt = route.next_after(live[-1].provider)
            assert nxt is not None
            start(nxt, now)
            continue
        assert x is not None
        if kind == "visible":
            # The winner: it behaves as if alone from here; the others are cancelled.
            out = x.out
            outcomes.append(out)
            if out.error_kind is None:
                return done(Expected(out.delivered, StreamStatus.COMPLETED, None, None, outcomes))
            errors += out.error_kind != "bug"
            return done(_give_up(out, errors, outcomes))
        out = x.out
        if out.error_kind is None:  # an empty response: waits for the others
            x.waiting_empty = True
        else:
            live.remove(x)
            outcomes.append(out)
            route.failed(x.provider, out)
            if out.error_kind == "bug":
                return done(_give_up(out, errors, outcomes))
            errors += 1
            if live:
                pass
            else:
                nxt = route.next_after(x.provider)
                if nxt is None or started > max_retry:
                    return done(_give_up(out, errors, outcomes))
                start(nxt, now)  # retry_interval=0: no backoff
                continue
        if live and all(y.waiting_empty for y in live):
            winner = min(live, key=lambda y: y.number)
            return done(
                Expected(winner.out.delivered, StreamStatus.COMPLETED, None, None,
                         [*outcomes, winner.out])
            )


# -- running the real thing --------------------------------------------------------------------


@dataclass
class Run:
    received: list[ChatChunk] = field(default_factory=list)
    error: BaseException | None = None
    metrics: list[LLMMetrics] = field(default_factory=list)
    status: StreamStatus | None = None
    stream: LLMStream | None = None


def _ctx() -> ChatContext:
    ctx = ChatContext()
    ctx.add_message(role="user", content="hi")
    return ctx


async def run_stream(
    llm: LLM,
    options: APIConnectOptions,
    consumer: tuple[str, int, float],
    *,
    seed: int,
    buffer_size: int = 0,
    hedge: Hedge | None = None,
    hold: tuple[str, float] | None = None,
) -> Run:
    run = Run()
    mode, k, t = consumer

    async def body() -> None:
        async with open_llm_stream(
            llm, chat_ctx=_ctx(), conn_options=options, on_metrics=run.metrics.append,
            rng=random.Random(seed), buffer_size=buffer_size, hedge=hedge,
            hold=hold is not None,
        ) as stream:
            run.stream = stream
            if hold is not None:
                action, at = hold
                await trio.sleep(at)
                if action == "discard":
                    await stream.discard()
                else:
                    await stream.adopt()
            try:
                async for chunk in stream:
                    run.received.append(chunk)
                    if mode == "slow":
                        await trio.sleep(t)
                    if mode in ("break", "raise") and len(run.received) >= k:
                        break
            except (APIError, StreamInterrupted, RuntimeError) as exc:
                run.error = exc
            if mode == "raise":
                raise UserError("from the consumer")

    if mode == "cancel":
        with trio.move_on_after(t):
            await body()
    elif mode == "raise":
        with pytest.raises(UserError):
            await body()
    else:
        await body()
    assert run.stream is not None
    run.status = run.stream.status
    async for _ in run.stream:
        raise AssertionError("no chunk after the block")
    assert run.stream._pipe.closed
    return run


def check_invariants(run: Run, llms: list[ScriptedLLM]) -> None:
    assert all(llm.running == 0 for llm in llms)  # nothing outlives the block
    assert len(run.metrics) == 1
    metrics = run.metrics[0]
    calls = sum(len(llm.calls) for llm in llms)
    assert len(metrics.attempts) == calls
    assert sorted(a.attempt for a in metrics.attempts) == list(range(calls))
    assert run.status is not None
    assert run.status is not StreamStatus.RUNNING
    assert metrics.status is run.status
    # No chunk twice, and all from one attempt: before the commit only one attempt may hand
    # over, and after it only the winner is left.
    assert len({id(c) for c in run.received}) == len(run.received)
    assert len({c.request_id for c in run.received}) <= 1
    # At most one attempt committed; per provider, the labels match the calls.
    assert sum(a.committed for a in metrics.attempts) <= 1
    for llm in llms:
        assert sum(a.label == llm.label for a in metrics.attempts) == len(llm.calls)


def check_against(
    run: Run, expected: Expected, providers: list[int], llms: list[ScriptedLLM],
    consumer: tuple[str, int, float],
) -> None:
    check_invariants(run, llms)
    mode, k, _ = consumer
    metrics = run.metrics[0]
    n = len(run.received)
    assert [id(c) for c in run.received] == [id(c) for c in expected.chunks[:n]]
    finished = mode in ("all", "slow") or (
        mode in ("break", "raise") and max(k, 1) > len(expected.chunks)
    )
    if finished:
        assert n == len(expected.chunks)
        assert run.status is expected.status
        by_number = sorted(metrics.attempts, key=lambda a: a.attempt)
        assert [a.label for a in by_number] == [llms[p].label for p in providers]
        if expected.error_type is None:
            assert run.error is None
        else:
            assert type(run.error) is expected.error_type
            if expected.cause_type is not None:
                assert type(run.error.__cause__) is expected.cause_type
    elif mode == "cancel":
        if run.status not in (StreamStatus.CANCELLED, expected.status):
            assert run.error is not None
            cut = (run.error, run.error.__cause__)
            truncated = any(isinstance(e, StreamTruncatedError) for e in cut)
            assert run.status is (StreamStatus.TRUNCATED if truncated else StreamStatus.FAILED)
    else:
        assert run.status is StreamStatus.CANCELLED
        assert run.error is None


def _llms(plans: list[list[ScriptedAttempt]]) -> tuple[LLM, list[ScriptedLLM]]:
    scripted = [ScriptedLLM(plan, label=f"p{i}", by="call") for i, plan in enumerate(plans)]
    # A high threshold: one stream per example, and health is tested on its own.
    llm: LLM = scripted[0] if len(scripted) == 1 else FallbackLLM(scripted, failure_threshold=99)
    return llm, scripted


def _options(ft_spec: str, max_retry: int, retry_interval: float = 0.2) -> APIConnectOptions:
    limits = _first_token_limits(ft_spec, False)
    if ft_spec == "none":
        return APIConnectOptions(
            max_retry=max_retry, retry_interval=retry_interval, timeout=IDLE
        )
    return APIConnectOptions(
        max_retry=max_retry, retry_interval=retry_interval,
        timeouts=lambda a: Timeouts(first_event=IDLE, first_token=limits[a], idle=IDLE),
    )


provider_plans = st.lists(fault_plans(max_attempts=3), min_size=1, max_size=3)

# Empty responses (no visible output, no fault), which must never win a race while another
# attempt may still answer: drawn often enough to meet a hedge.
empty_attempts = st.builds(
    ScriptedAttempt,
    chunks=chunk_sequences(max_visible=0),
    delay=st.sampled_from([0.0, 0.01, 0.5]),
    batch_size=st.sampled_from([1, 8]),
)
hedge_plans = st.lists(
    st.one_of(fault_plans(max_attempts=3), st.lists(empty_attempts, min_size=1, max_size=2)),
    min_size=1,
    max_size=3,
)


def _trio(fn: object) -> Run:
    out: list[Run] = []

    async def main() -> None:
        out.append(await fn())  # type: ignore[operator]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out[0]


@settings(max_examples=PROVIDER_EXAMPLES)
@given(
    plans=provider_plans,
    max_retry=st.integers(0, 4),
    ft_spec=st.sampled_from(["none", "fixed", "doubling"]),
    consumer=consumers,
    seed=st.integers(0, 2**32 - 1),
    buffer_size=st.sampled_from([0, 1, 16]),
)
def test_fallback_agrees_with_model(
    plans: list[list[ScriptedAttempt]], max_retry: int, ft_spec: str,
    consumer: tuple[str, int, float], seed: int, buffer_size: int,
) -> None:
    """Any fault plan per provider: the attempts move through the providers as the route
    model says (one budget; a provider that failed for good is not asked again; after the
    commit no other provider), and the stream ends as the model says."""
    llm, scripted = _llms(plans)
    candidates = model_fallback(plans, max_retry, _first_token_limits(ft_spec, False))
    run = _trio(lambda: run_stream(llm, _options(ft_spec, max_retry), consumer, seed=seed,
                                   buffer_size=buffer_size))
    _agree(run, candidates, scripted, consumer)


def _agree(run: Run, candidates: list[tuple[Expected, list[int]]], scripted: list[ScriptedLLM],
           consumer: tuple[str, int, float]) -> None:
    failures: list[AssertionError] = []
    for expected, providers in candidates:
        try:
            check_against(run, expected, providers, scripted, consumer)
        except AssertionError as exc:
            failures.append(exc)
        else:
            return
    raise failures[0]


@settings(max_examples=PROVIDER_EXAMPLES)
@given(
    plans=provider_plans,
    max_retry=st.integers(0, 4),
    ft_spec=st.sampled_from(["none", "fixed"]),
    consumer=st.sampled_from([("all", 0, 0.0), ("break", 1, 0.0), ("break", 3, 0.0),
                              ("raise", 2, 0.0), ("slow", 0, 0.05)]),
    action=st.sampled_from(["adopt", "discard"]),
    at=st.sampled_from([0.0, 0.005, 0.3, 1.0, 4.0, 30.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_held_streams_agree_with_model(
    plans: list[list[ScriptedAttempt]], max_retry: int, ft_spec: str,
    consumer: tuple[str, int, float], action: str, at: float, seed: int,
) -> None:
    """Adopt or discard at any point. Before adoption nothing is delivered and no limit runs
    while the attempt waits with output in hand, so an adopted stream ends exactly as the
    unheld model says; a discarded one delivers nothing and is DISCARDED, once."""
    llm, scripted = _llms(plans)
    candidates = model_fallback(plans, max_retry, _first_token_limits(ft_spec, False))
    run = _trio(lambda: run_stream(llm, _options(ft_spec, max_retry), consumer, seed=seed,
                                   hold=(action, at)))
    if action == "adopt":
        _agree(run, candidates, scripted, consumer)
        return
    check_invariants(run, scripted)
    assert run.received == []
    assert run.status is StreamStatus.DISCARDED
    assert run.error is None
    assert run.metrics[0].ttft is None
    assert not any(a.committed for a in run.metrics[0].attempts)


@settings(max_examples=PROVIDER_EXAMPLES)
@given(
    plans=hedge_plans,
    max_retry=st.integers(0, 4),
    after=st.sampled_from([0.003, 0.3, 0.7, 2.5]),
    max_in_flight=st.integers(2, 3),
    consumer=st.sampled_from([("all", 0, 0.0), ("break", 1, 0.0), ("break", 4, 0.0)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_hedged_streams_agree_with_model(
    plans: list[list[ScriptedAttempt]], max_retry: int, after: float, max_in_flight: int,
    consumer: tuple[str, int, float], seed: int,
) -> None:
    """Any hedge delay, any fault plan per provider: which attempts start when, which one
    wins (the first visible output; never an error frame, a lifecycle chunk or an empty
    response while another may still answer) and how the stream ends agree with the
    timeline model; the losers are recorded, nothing is interleaved or repeated."""
    llm, scripted = _llms(plans)
    model = model_hedged(plans, max_retry, after, max_in_flight)
    run = _trio(lambda: run_stream(llm, _options("none", max_retry, 0.0), consumer, seed=seed,
                                   hedge=Hedge(after=after, max_in_flight=max_in_flight)))
    if model is None:  # two events in one instant: the scheduler's order decides
        check_invariants(run, scripted)
        return
    expected, providers = model
    check_against(run, expected, providers, scripted, consumer)
