"""Progress-based time limits (issue 10, item 5), Retry-After above the cap (item 6), statuses
and the break rule (item 7), under trio's autojump clock.

The providers follow the ``ChunkEmitter`` contract: ``send`` once per read that completed a data
event; a read of keep-alive comments (or of a partial line) never calls it. So a server that
only sends keep-alives is, to the runtime, a provider that does not call ``send``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from trio_llmstream import (
    LLM,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    AttemptInfo,
    ChatChunk,
    ChatContext,
    ChatRequest,
    ChunkEmitter,
    FunctionCall,
    FunctionTool,
    LLMMetrics,
    RetriesExhaustedError,
    StreamInterrupted,
    StreamStatus,
    StreamTruncatedError,
    Timeouts,
    open_llm_stream,
)
from trio_llmstream.testing import Fault, FaultKind, ScriptedAttempt, ScriptedLLM, text_chunks


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hi")
    return c


class Timed(LLM):
    """Sends ``reads[i][1]`` at ``start + reads[i][0]``; then, if ``then_silent``, keeps the
    connection open with keep-alives only (no send) until cancelled; else returns."""

    def __init__(
        self, reads: Sequence[tuple[float, Sequence[ChatChunk]]], *, then_silent: bool = False
    ) -> None:
        super().__init__(label="timed")
        self.reads = reads
        self.then_silent = then_silent
        self.attempts: list[AttemptInfo] = []

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        self.attempts.append(attempt)
        start = trio.current_time()
        for at, chunks in self.reads:
            await trio.sleep_until(start + at)
            await emit.send(chunks)
        if self.then_silent:
            while True:  # keep-alive comments every 15 s: never progress, never sent
                await trio.sleep(15)
        await trio.lowlevel.checkpoint()


DEFAULTS = APIConnectOptions()


async def run(
    llm: LLM, options: APIConnectOptions = DEFAULTS, *, consumer_delay: float = 0.0,
    buffer_size: int = 16,
) -> tuple[str, BaseException | None, StreamStatus, LLMMetrics | None, float]:
    received: list[str] = []
    error: BaseException | None = None
    start = trio.current_time()
    async with open_llm_stream(
        llm, chat_ctx=ctx(), conn_options=options, buffer_size=buffer_size
    ) as stream:
        try:
            async for chunk in stream:
                received.append(chunk.text)
                if consumer_delay:
                    await trio.sleep(consumer_delay)
        except (APITimeoutError, RetriesExhaustedError, StreamInterrupted,
                StreamTruncatedError, APIStatusError) as exc:
            error = exc
    return "".join(received), error, stream.status, stream.metrics, trio.current_time() - start


ANSWER = text_chunks("slow but sure")
NO_RETRY = APIConnectOptions(max_retry=0)


# -- item 5: time limits that measure progress --------------------------------------------------


async def test_default_options_wait_ten_minutes_for_a_first_event(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Issue 10, item 5: with default options a server silent for more than 10 s before its
    # first byte failed (idle ran from the attempt's start): 4 requests, RetriesExhaustedError
    # after 42.6 s. A reasoning model silent for up to 10 minutes must not fail.
    for silence in (11.0, 300.0, 599.0, 899.0):
        llm = Timed([(silence, ANSWER)])
        text, error, status, _, elapsed = await run(llm)
        assert (text, error, status) == ("slow but sure", None, StreamStatus.COMPLETED)
        assert len(llm.attempts) == 1
        assert elapsed == silence


async def test_keep_alive_only_server_fails_by_first_event(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A server that only ever sends keep-alive comments: with defaults each attempt fails
    # after first_event (900 s), never hangs.
    llm = Timed([], then_silent=True)
    text, error, status, metrics, elapsed = await run(llm, NO_RETRY)
    assert isinstance(error, APITimeoutError)
    assert (error.limit, error.seconds) == ("first_event", 900.0)
    assert (text, status, elapsed) == ("", StreamStatus.FAILED, 900.0)
    assert metrics is not None
    assert metrics.attempts[0].error is error


async def test_keep_alive_after_the_first_event_fails_by_idle(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Data (a role chunk), then keep-alives only: first_token (900 s) comes first...
    llm = Timed([(5.0, ANSWER[:1])], then_silent=True)
    _, error, status, _, elapsed = await run(llm, NO_RETRY)
    assert isinstance(error, APITimeoutError)
    assert error.limit == "first_token"
    assert (status, elapsed) == (StreamStatus.FAILED, 900.0)
    # ...and without it, idle (default 900 s) from the last data event.
    options = APIConnectOptions(max_retry=0, timeouts=Timeouts(first_token=None))
    llm = Timed([(5.0, ANSWER[:1])], then_silent=True)
    _, error, status, _, elapsed = await run(llm, options)
    assert isinstance(error, APITimeoutError)
    assert error.limit == "idle"
    assert (status, elapsed) == (StreamStatus.FAILED, 905.0)
    # After visible output: the same limit interrupts the committed stream.
    llm = Timed([(5.0, ANSWER[:2])], then_silent=True)
    text, error, status, _, elapsed = await run(llm, NO_RETRY)
    assert isinstance(error, StreamInterrupted)
    assert isinstance(error.cause, APITimeoutError)
    assert error.cause.limit == "idle"
    assert (text, elapsed) == ("slow ", 905.0)


async def test_idle_runs_from_the_first_event_not_from_the_start(
    autojump_clock: trio.abc.Clock,
) -> None:
    options = APIConnectOptions(
        max_retry=0, timeouts=Timeouts(first_event=60.0, idle=5.0, first_token=None)
    )
    # First event at 50 s: fine, although 50 s > idle.
    llm = Timed([(50.0, ANSWER[:2]), (54.0, ANSWER[2:3]), (58.5, ANSWER[3:])])
    text, error, status, _, _ = await run(llm, options)
    assert (text, error, status) == ("slow but sure", None, StreamStatus.COMPLETED)
    # A gap of more than 5 s after the first event: idle, measured from that event.
    llm = Timed([(50.0, ANSWER[:1]), (55.5, ANSWER[1:])])
    _, error, _, _, elapsed = await run(llm, options)
    assert isinstance(error, APITimeoutError)
    assert (error.limit, elapsed) == ("idle", 55.0)
    # No event within first_event.
    llm = Timed([(61.0, ANSWER)])
    _, error, _, _, elapsed = await run(llm, options)
    assert isinstance(error, APITimeoutError)
    assert (error.limit, elapsed) == ("first_event", 60.0)


async def test_an_empty_send_is_progress(autojump_clock: trio.abc.Clock) -> None:
    # A read that completed an event holding only part of a tool call's arguments: no chunk
    # yet, but progress (the contract: send([])).
    options = APIConnectOptions(
        max_retry=0, timeouts=Timeouts(first_event=10.0, idle=5.0, first_token=None)
    )
    reads = [(float(t), []) for t in range(4, 40, 4)] + [(40.0, ANSWER)]
    text, error, status, _, _ = await run(Timed(reads), options)
    assert (text, error, status) == ("slow but sure", None, StreamStatus.COMPLETED)


async def test_a_slow_consumer_never_counts_against_a_limit(
    autojump_clock: trio.abc.Clock,
) -> None:
    options = APIConnectOptions(
        max_retry=0, timeouts=Timeouts(first_event=2.0, idle=2.0, first_token=2.0)
    )
    reads = [(0.5 + i, [c]) for i, c in enumerate(ANSWER)]
    for buffer_size in (0, 1, 16):
        text, error, status, _, elapsed = await run(
            Timed(reads), options, consumer_delay=60.0, buffer_size=buffer_size
        )
        assert (text, error, status) == ("slow but sure", None, StreamStatus.COMPLETED)
        assert elapsed >= 60.0 * 4


async def test_first_token_still_fails_a_server_that_never_writes(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Events flow (role chunks), nothing visible: first_token fires at its default, 900 s.
    reads = [(float(t), ANSWER[:1]) for t in range(0, 2000, 30)]
    _, error, _, _, elapsed = await run(Timed(reads), NO_RETRY)
    assert isinstance(error, APITimeoutError)
    assert (error.limit, elapsed) == ("first_token", 900.0)


def test_timeout_number_keeps_livekit_meaning_and_defaults_are_documented() -> None:
    assert APIConnectOptions().timeout is None
    assert APIConnectOptions().timeouts_for(0) == Timeouts(
        connect=60.0, headers=None, first_event=900.0, idle=900.0, first_token=900.0
    )
    assert APIConnectOptions(timeout=4).timeouts_for(2) == Timeouts(
        connect=4, first_event=4, idle=4, first_token=900.0
    )
    with pytest.raises(ValueError):
        APIConnectOptions(timeout=0)
    with pytest.raises(ValueError, match="first_event"):
        Timeouts(first_event=-1)


# -- item 6: Retry-After above the cap -----------------------------------------------------------


async def test_retry_after_above_the_cap_gives_up_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Issue 10, item 6: four requests 30 s apart, then RetriesExhaustedError after 90 s.
    quota = APIStatusError("slow down", status_code=429, retry_after=600)
    llm = ScriptedLLM([ScriptedAttempt(fault=Fault(FaultKind.ERROR, 0, quota))])
    _, error, status, metrics, elapsed = await run(llm)
    assert isinstance(error, APIStatusError)
    assert error.retry_after == 600  # the caller can reschedule
    assert (status, elapsed, len(llm.calls)) == (StreamStatus.FAILED, 0.0, 1)
    assert metrics is not None
    assert metrics.attempts[0].backoff == 0
    # Within the cap it is honoured exactly.
    soon = APIStatusError("slow down", status_code=429, retry_after=12)
    llm = ScriptedLLM(
        [ScriptedAttempt(fault=Fault(FaultKind.ERROR, 0, soon)), ScriptedAttempt(ANSWER)]
    )
    text, error, status, _, elapsed = await run(llm)
    assert (text, error, status, elapsed) == ("slow but sure", None, StreamStatus.COMPLETED, 12)


# -- item 7: statuses and the break rule ----------------------------------------------------------


async def test_truncated_before_any_output_is_truncated_not_failed(
    autojump_clock: trio.abc.Clock,
) -> None:
    cut = ScriptedAttempt(ANSWER[:1], fault=Fault(FaultKind.TRUNCATE, 1))
    _, error, status, metrics, _ = await run(ScriptedLLM([cut]), NO_RETRY)
    assert isinstance(error, StreamTruncatedError)
    assert status is StreamStatus.TRUNCATED
    assert metrics is not None
    assert metrics.status is StreamStatus.TRUNCATED
    # Retries ran out, the last attempt truncated: truncated too; the error says retries ran
    # out, with the truncation as its last cause.
    _, error, status, _, _ = await run(
        ScriptedLLM([cut]), APIConnectOptions(max_retry=2, retry_interval=0.1)
    )
    assert isinstance(error, RetriesExhaustedError)
    assert isinstance(error.__cause__, StreamTruncatedError)
    assert status is StreamStatus.TRUNCATED
    # The last attempt failed otherwise: failed.
    llm = ScriptedLLM([cut, ScriptedAttempt(fault=Fault.retryable())])
    _, error, status, _, _ = await run(llm, APIConnectOptions(max_retry=1, retry_interval=0.1))
    assert isinstance(error, RetriesExhaustedError)
    assert status is StreamStatus.FAILED


@pytest.mark.parametrize("leave", ["break", "aclose"])
async def test_leaving_after_the_end_arrived_but_before_seeing_it_is_cancelled(
    autojump_clock: trio.abc.Clock, leave: str
) -> None:
    # Issue 10, item 7: the README says break records cancelled, but a break while the stream
    # drained after [DONE] recorded completed. The rule: completed (or truncated, failed)
    # only when the consumer has received the end; cancelled when it left before.
    llm = ScriptedLLM([ScriptedAttempt(ANSWER)])
    seen: list[LLMMetrics] = []
    async with open_llm_stream(llm, chat_ctx=ctx(), on_metrics=seen.append) as stream:
        got = [await anext(stream) for _ in range(len(ANSWER))]  # every chunk, not the end
        await trio.sleep(1)  # [DONE] has long arrived: the attempts are over
        assert stream._pipe.closed
        assert stream._pipe.pending == 0
        assert stream.status is StreamStatus.RUNNING  # the end is not received yet
        assert seen == []
        if leave == "aclose":
            await stream.aclose()
    assert len(got) == len(ANSWER)
    assert stream.status is StreamStatus.CANCELLED
    assert stream.error is None
    assert [m.status for m in seen] == [StreamStatus.CANCELLED]
    assert seen[0].attempts[0].error is None  # the attempt itself succeeded


async def test_receiving_the_end_settles_the_status(autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([ScriptedAttempt(ANSWER)])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        async for _ in stream:
            pass
        assert stream.status is StreamStatus.COMPLETED
        await stream.aclose()  # after the end: changes nothing
    assert stream.status is StreamStatus.COMPLETED
    # A failure the consumer left before seeing: cancelled; the attempt keeps its error.
    llm = ScriptedLLM([ScriptedAttempt(ANSWER[:2], fault=Fault.fatal(2))])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        await anext(stream)
        await trio.sleep(1)
    assert stream.status is StreamStatus.CANCELLED
    assert stream.metrics is not None
    assert isinstance(stream.metrics.attempts[0].error, APIStatusError)
    # ...and seen: failed, the error raised from iteration.
    llm = ScriptedLLM([ScriptedAttempt(ANSWER[:2], fault=Fault.fatal(2))])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        with pytest.raises(StreamInterrupted):
            async for _ in stream:
                pass
    assert stream.status is StreamStatus.FAILED


# -- cancellation between a hand-off and its bookkeeping -----------------------------------------


async def test_a_call_taken_as_the_consumer_leaves_is_cancelled_with_the_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The consumer takes the batch holding a complete call and leaves at once, before the
    # producer resumes: the call is delivered (so it starts, eagerly), after the stream began
    # stopping; it must obey the stop (on_exit="cancel") instead of running on.
    ran: list[str] = []

    async def work() -> str:
        await trio.sleep(100)
        ran.append("finished")
        return "done"

    call = FunctionCall("call_1", "work", "{}")
    chunks = text_chunks([], tool_calls=[call], finish_reason="tool_calls")
    llm = ScriptedLLM([ScriptedAttempt(chunks, batch_size=len(chunks))])
    start = trio.current_time()
    async with open_llm_stream(
        llm, chat_ctx=ctx(), tools=[FunctionTool(work, "work")], buffer_size=0
    ) as stream:
        async for _ in stream:
            break
    assert trio.current_time() - start < 1
    assert ran == []
    handles = stream.tool_handles
    assert [h.call.call_id for h in handles] == ["call_1"]
    outcome = await handles[0].wait()
    assert outcome.kind.value == "cancelled"
