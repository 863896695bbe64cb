"""The runtime's behaviours one by one: timeouts, deadlines, errors, metrics, exits, tools."""

from __future__ import annotations

import logging
import random

import pytest
import trio
import trio.testing

from trio_llmstream import LLM as BaseLLM
from trio_llmstream import (
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    AttemptInfo,
    ChatChunk,
    ChatContext,
    ChatRequest,
    Choice,
    ChoiceDelta,
    ChunkEmitter,
    CompletionUsage,
    FunctionCall,
    FunctionTool,
    LLMMetrics,
    LLMStream,
    ProviderError,
    RetriesExhaustedError,
    StreamInterrupted,
    StreamProtocolError,
    StreamStatus,
    StreamTruncatedError,
    Timeouts,
    ToolOutcomeKind,
    open_llm_stream,
)
from trio_llmstream.testing import Fault, FaultKind, ScriptedAttempt, ScriptedLLM, text_chunks

RID = "req-1"


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hello")
    return c


def chunk(text: str | None = None, **kw: object) -> ChatChunk:
    return ChatChunk(RID, [Choice(ChoiceDelta(content=text, **kw))])  # type: ignore[arg-type]


class ManualLLM(BaseLLM):
    """A provider whose attempts are written inline by each test."""

    def __init__(self, attempt_fn):  # type: ignore[no-untyped-def]
        super().__init__(label="manual")
        self.attempt_fn = attempt_fn
        self.attempts: list[AttemptInfo] = []

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        self.attempts.append(attempt)
        await self.attempt_fn(attempt, emit)


# -- timeouts ----------------------------------------------------------------------------------


async def test_first_token_timeout_doubles_per_attempt(autojump_clock: trio.abc.Clock) -> None:
    """The agents-js #871 request: 0.5 s to first token, doubling each retry; no mutable state."""
    starts: list[float] = []

    async def attempt(info: AttemptInfo, emit: ChunkEmitter) -> None:
        starts.append(trio.current_time())
        # A role chunk and keep-alive progress do not stop the first-token clock.
        await emit.send([chunk(role="assistant")])
        for _ in range(100):
            await trio.sleep(0.1)
            await emit.send([])
        await trio.sleep_forever()

    llm = ManualLLM(attempt)
    options = APIConnectOptions(
        max_retry=2, retry_interval=0.01,
        timeouts=lambda a: Timeouts(first_token=0.5 * 2**a, idle=5.0),
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=options) as stream:
        with pytest.raises(RetriesExhaustedError) as info:
            async for _ in stream:
                pass
    errors = info.value.errors
    assert [type(e) for e in errors] == [APITimeoutError] * 3
    assert [e.limit for e in errors] == ["first_token"] * 3  # type: ignore[attr-defined]
    assert stream.metrics is not None
    durations = [a.duration for a in stream.metrics.attempts]
    assert durations == pytest.approx([0.5, 1.0, 2.0])
    assert [a.timeouts.first_token for a in llm.attempts] == [0.5, 1.0, 2.0]
    assert stream.status is StreamStatus.FAILED


async def test_idle_timeout_fires_between_chunks(autojump_clock: trio.abc.Clock) -> None:
    async def attempt(info: AttemptInfo, emit: ChunkEmitter) -> None:
        await emit.send([chunk("a")])
        await trio.sleep(0.9)
        await emit.send([chunk("b")])
        await trio.sleep(1.1)  # over the idle limit
        await emit.send([chunk("c")])

    options = APIConnectOptions(max_retry=0, timeouts=Timeouts(idle=1.0))
    async with open_llm_stream(ManualLLM(attempt), chat_ctx=ctx(), conn_options=options) as s:
        got = []
        with pytest.raises(StreamInterrupted) as info:
            async for c in s:
                got.append(c.text)
    assert got == ["a", "b"]
    cause = info.value.cause
    assert isinstance(cause, APITimeoutError)
    assert cause.limit == "idle"
    assert info.value.partial.text == "ab"


async def test_slow_consumer_never_trips_idle_timeout(autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("one two three four"), delay=0.1)])
    options = APIConnectOptions(max_retry=0, timeouts=Timeouts(idle=0.5, first_token=0.5))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=options) as stream:
        async for _ in stream:
            await trio.sleep(30)  # far longer than any limit
    assert stream.status is StreamStatus.COMPLETED


async def test_overall_deadline_respected_by_backoff(autojump_clock: trio.abc.Clock) -> None:
    """A retry whose backoff would outlast the caller's deadline is not attempted."""
    llm = ScriptedLLM([ScriptedAttempt(fault=Fault.retryable())])
    options = APIConnectOptions(max_retry=5, retry_interval=2.0, max_retry_interval=2.0)
    start = trio.current_time()
    with trio.fail_after(3.0):
        async with open_llm_stream(
            llm, chat_ctx=ctx(), conn_options=options, rng=random.Random(1)
        ) as stream:
            with pytest.raises(RetriesExhaustedError, match="deadline"):
                await stream.collect()
    assert trio.current_time() - start < 3.0
    assert 1 <= len(llm.calls) < 6
    assert stream.status is StreamStatus.FAILED


async def test_retry_after_is_honoured(autojump_clock: trio.abc.Clock) -> None:
    error = APIStatusError("slow down", status_code=429, retry_after=7.0)
    llm = ScriptedLLM([ScriptedAttempt(fault=Fault(FaultKind.ERROR, 0, error)),
                       ScriptedAttempt(text_chunks("ok"))])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        assert (await stream.collect()).text == "ok"
    assert stream.metrics is not None
    assert stream.metrics.attempts[0].backoff == 7.0


# -- errors ------------------------------------------------------------------------------------


async def test_non_api_error_is_not_retried_and_propagates_as_itself() -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("x"), fault=Fault(FaultKind.BUG, 0))])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        with pytest.raises(RuntimeError, match="scripted provider bug"):
            async for _ in stream:
                pass
    assert len(llm.calls) == 1


async def test_non_retryable_provider_error_not_retried() -> None:
    fault = Fault(FaultKind.PROVIDER_ERROR, 0, provider_type="invalid_request_error")
    llm = ScriptedLLM([ScriptedAttempt(fault=fault)])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        with pytest.raises(ProviderError):
            await stream.collect()
    assert len(llm.calls) == 1


async def test_error_is_raised_once_then_iteration_ends() -> None:
    llm = ScriptedLLM([ScriptedAttempt(fault=Fault.fatal())])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        with pytest.raises(APIStatusError):
            async for _ in stream:
                pass
        async for _ in stream:
            raise AssertionError("nothing more")
        assert isinstance(stream.error, APIStatusError)


async def test_retries_exhausted_counts_attempts_and_keeps_errors(
    autojump_clock: trio.abc.Clock,
) -> None:
    llm = ScriptedLLM([ScriptedAttempt(fault=Fault(FaultKind.TRUNCATE)),
                       ScriptedAttempt(fault=Fault.retryable())])
    async with open_llm_stream(
        llm, chat_ctx=ctx(), conn_options=APIConnectOptions(max_retry=2)
    ) as stream:
        with pytest.raises(RetriesExhaustedError, match="3 attempts") as info:
            await stream.collect()
    assert info.value.attempts == 3
    assert [type(e) for e in info.value.errors] == [
        StreamTruncatedError, APIStatusError, APIStatusError,
    ]
    assert info.value.__cause__ is info.value.errors[-1]


async def test_truncation_after_commit_is_status_truncated() -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a b c"), fault=Fault(FaultKind.TRUNCATE, 2))])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert stream.status is StreamStatus.TRUNCATED
    assert isinstance(info.value.cause, StreamTruncatedError)
    assert info.value.partial.text == "a "
    assert info.value.partial.finish_reason is None


async def test_uncommitted_chunks_of_failed_attempt_are_discarded(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Role-only and partial chunks of a failed attempt never reach the consumer."""
    first = [ChatChunk("r0", [Choice(ChoiceDelta(role="assistant"))])]
    llm = ScriptedLLM([
        ScriptedAttempt(first, fault=Fault.retryable(1)),
        ScriptedAttempt(text_chunks("fine", request_id="r1")),
    ])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        got = [c async for c in stream]
    assert {c.request_id for c in got} == {"r1"}
    assert [c.delta.role for c in got if c.delta and c.delta.role] == ["assistant"]


async def test_output_less_response_delivers_its_metadata() -> None:
    chunks = text_chunks([], usage=CompletionUsage(0, 3, 3))
    llm = ScriptedLLM([ScriptedAttempt(chunks)])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        got = [c async for c in stream]
    assert got == chunks
    assert stream.status is StreamStatus.COMPLETED


async def test_too_many_invisible_chunks_is_a_protocol_error() -> None:
    role = ChatChunk(RID, [Choice(ChoiceDelta(role="assistant"))])
    llm = ScriptedLLM([ScriptedAttempt([role] * 2000, batch_size=100)])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        with pytest.raises(StreamProtocolError, match="without any visible output"):
            await stream.collect()


# -- exits and cancellation --------------------------------------------------------------------


async def test_user_exception_propagates_unwrapped() -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a b c d"), delay=0.01)])
    with pytest.raises(KeyError) as info:
        async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
            async for _ in stream:
                raise KeyError("mine")
    assert type(info.value) is KeyError
    assert stream.status is StreamStatus.CANCELLED
    assert llm.running == 0


async def test_outside_cancellation_leaves_nothing_running(
    autojump_clock: trio.abc.Clock,
) -> None:
    got: list[LLMMetrics] = []
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a b c d e f"), delay=1.0)])
    with trio.move_on_after(2.5):
        async with open_llm_stream(llm, chat_ctx=ctx(), on_metrics=got.append) as stream:
            async for _ in stream:
                pass
    assert llm.running == 0
    assert llm.cancelled == 1
    assert [m.status for m in got] == [StreamStatus.CANCELLED]
    assert got[0].cancelled


async def test_aclose_stops_the_stream_and_delivers_metrics_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    got: list[LLMMetrics] = []
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a b c d e f"), delay=1.0)])
    async with open_llm_stream(llm, chat_ctx=ctx(), on_metrics=got.append) as stream:
        async for _ in stream:
            await stream.aclose()
            assert stream.status is StreamStatus.CANCELLED
        assert llm.running == 0
        await stream.aclose()  # idempotent
    assert len(got) == 1


async def test_metrics_available_right_after_iteration() -> None:
    usage = CompletionUsage(completion_tokens=4, prompt_tokens=3, total_tokens=7)
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a b", usage=usage))])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        async for _ in stream:
            pass
        metrics = stream.metrics
        assert metrics is not None
        assert metrics.completion_tokens == 4
        assert metrics.request_ids == (RID,)
        assert metrics.ttft is not None


async def test_metrics_include_failed_attempts_usage(autojump_clock: trio.abc.Clock) -> None:
    usage = CompletionUsage(completion_tokens=0, prompt_tokens=10, total_tokens=10)
    partial = [ChatChunk(RID, [Choice(ChoiceDelta(role="assistant"))]),
               ChatChunk(RID, [], usage=usage)]
    llm = ScriptedLLM([ScriptedAttempt(partial, fault=Fault.retryable(2)),
                       ScriptedAttempt(text_chunks("ok", usage=CompletionUsage(1, 10, 11)))])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        await stream.collect()
    metrics = stream.metrics
    assert metrics is not None
    assert [a.usage for a in metrics.attempts] == [usage, CompletionUsage(1, 10, 11)]
    assert metrics.prompt_tokens == 20
    assert metrics.total_tokens == 21


async def test_raising_metrics_callback_is_logged_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[LLMMetrics] = []

    def bad(metrics: LLMMetrics) -> None:
        raise ValueError("boom")

    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a"))])
    llm.on_metrics(seen.append)
    with caplog.at_level(logging.ERROR, logger="trio_llmstream"):
        async with open_llm_stream(llm, chat_ctx=ctx(), on_metrics=bad) as stream:
            assert (await stream.collect()).text == "a"
    assert len(seen) == 1
    assert "boom" in caplog.text


async def test_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        LLMStream(  # type: ignore[call-arg]
            _token=None, llm=None, request=None, conn_options=None, tools={},
            on_metrics=(), buffer_size=0, rng=random.Random(),
        )


async def test_nothing_starts_before_entry() -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a"))])
    cm = open_llm_stream(llm, chat_ctx=ctx())
    await trio.sleep(0.01)
    assert llm.calls == []
    async with cm as stream:
        await stream.collect()
    assert len(llm.calls) == 1


async def test_many_streams_share_one_llm(autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([ScriptedAttempt(fault=Fault.retryable()),
                       ScriptedAttempt(text_chunks("x y z"), delay=0.01)])
    results: list[str] = []

    async def one() -> None:
        async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
            results.append((await stream.collect()).text)

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    assert results == ["x y z"] * 50
    assert llm.running == 0


# -- tool calls --------------------------------------------------------------------------------


async def test_execute_functions_gives_each_call_one_outcome(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    async def slow() -> str:
        await trio.sleep_forever()

    def sync_fail() -> None:
        raise ValueError("nope")

    tools = [
        FunctionTool(add, "add"),
        FunctionTool(slow, "slow"),
        FunctionTool(sync_fail, "fail"),
    ]
    calls = [
        FunctionCall("c1", "add", '{"a": 1, "b": 2}'),
        FunctionCall("c2", "slow", "{}"),
        FunctionCall("c3", "fail", "{}"),
        FunctionCall("c4", "missing", "{}"),
        FunctionCall("c5", "add", "{not json"),
    ]
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("", tool_calls=calls, role=False))])
    async with open_llm_stream(llm, chat_ctx=ctx(), tools=tools) as stream:
        await stream.collect()
        assert stream.function_calls == calls
        handles = stream.execute_functions()
        assert stream.execute_functions() == handles  # started once
        for handle in (handles[0], handles[2], handles[3], handles[4]):
            await handle.wait()
    kinds = {h.call.call_id: h.outcome.kind for h in handles if h.outcome}
    assert kinds == {
        "c1": ToolOutcomeKind.RESULT,
        "c2": ToolOutcomeKind.CANCELLED,  # still running when the block exited
        "c3": ToolOutcomeKind.ERROR,
        "c4": ToolOutcomeKind.ERROR,
        "c5": ToolOutcomeKind.ERROR,
    }
    assert handles[0].outcome is not None
    assert handles[0].outcome.value == 3
    with pytest.raises(RuntimeError):
        stream.execute_functions()


async def test_tool_timeout_outcome(autojump_clock: trio.abc.Clock) -> None:
    async def slow() -> None:
        await trio.sleep(10)

    call = FunctionCall("c1", "slow", "{}")
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("", tool_calls=[call], role=False))])
    async with open_llm_stream(
        llm, chat_ctx=ctx(), tools=[FunctionTool(slow, "slow", timeout=1.0)]
    ) as stream:
        await stream.collect()
        (handle,) = stream.execute_functions()
        outcome = await handle.wait()
    assert outcome.kind is ToolOutcomeKind.TIMEOUT


async def test_duplicate_tool_names_rejected() -> None:
    async def f() -> None:
        pass

    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a"))])
    with pytest.raises(ValueError, match="duplicate tool name"):
        async with open_llm_stream(
            llm, chat_ctx=ctx(), tools=[FunctionTool(f, "f"), FunctionTool(f, "f")]
        ):
            pass
