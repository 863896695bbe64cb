"""Held streams: run and buffer, deliver nothing and start no tool until adopt(); retry
invisibly; discard() cancels and records DISCARDED once, with usage."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from trio_llmstream import (
    APIConnectOptions,
    ChatChunk,
    ChatContext,
    CompletionUsage,
    FunctionCall,
    LLMMetrics,
    StreamStatus,
    Timeouts,
    function_tool,
    open_llm_stream,
)
from trio_llmstream.testing import Fault, ScriptedAttempt, ScriptedLLM, text_chunks

USAGE = CompletionUsage(prompt_tokens=4, completion_tokens=2, total_tokens=6)


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hi")
    return c


OPTIONS = APIConnectOptions(
    max_retry=2, retry_interval=0.1,
    timeouts=Timeouts(first_event=1.0, first_token=1.0, idle=1.0),
)


async def test_nothing_is_delivered_until_adopt(autojump_clock: trio.testing.MockClock) -> None:
    chunks = text_chunks("one two three", request_id="r", usage=USAGE)
    llm = ScriptedLLM([ScriptedAttempt(chunks, delay=0.1)])
    received: list[tuple[float, ChatChunk]] = []
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS, hold=True) as stream:
        assert stream.held

        async def consume() -> None:
            async for chunk in stream:
                received.append((trio.current_time(), chunk))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            t0 = trio.current_time()
            await trio.sleep(10.0)  # far past every limit: none runs while held
            assert received == []
            assert llm.running == 1
            assert stream.status is StreamStatus.RUNNING
            await stream.adopt()
            assert not stream.held
    assert [c for _, c in received] == chunks
    assert received[0][0] - t0 == pytest.approx(10.0)
    assert stream.status is StreamStatus.COMPLETED
    assert len(stream.metrics.attempts) == 1
    assert stream.metrics.total_tokens == 6


async def test_a_held_stream_retries_invisibly(autojump_clock: trio.testing.MockClock) -> None:
    first = ScriptedAttempt(text_chunks([], request_id="r0", finish_reason=None),
                            Fault.retryable(after=1), delay=0.2)
    second = ScriptedAttempt(text_chunks("answer", request_id="r1"))
    llm = ScriptedLLM([first, second])
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS, hold=True,
                               rng=random.Random(0)) as stream:
        await trio.sleep(5.0)
        assert len(llm.calls) == 2  # failed and retried while held
        await stream.adopt()
        received = [c async for c in stream]
    assert {c.request_id for c in received} == {"r1"}
    assert stream.status is StreamStatus.COMPLETED
    assert [m.error is None for m in stream.metrics.attempts] == [False, True]


async def test_discard_cancels_and_records_once(autojump_clock: trio.testing.MockClock) -> None:
    usage_first = text_chunks([], request_id="r", finish_reason=None, usage=USAGE)
    chunks = usage_first + text_chunks("never seen", request_id="r", role=False)
    llm = ScriptedLLM([ScriptedAttempt(chunks, delay=0.1)])
    metrics: list[LLMMetrics] = []
    llm.on_metrics(metrics.append)
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS, hold=True) as stream:
        await trio.sleep(3.0)
        await stream.discard()
        assert stream.status is StreamStatus.DISCARDED
        assert llm.running == 0
        assert llm.cancelled == 1
        assert [c async for c in stream] == []  # iteration ends: nothing was delivered
        await stream.discard()  # idempotent
        with pytest.raises(RuntimeError, match="discarded"):
            await stream.adopt()
    assert len(metrics) == 1  # exactly once
    (m,) = metrics
    assert m.status is StreamStatus.DISCARDED
    assert not m.cancelled
    assert m.error is None
    assert m.total_tokens == 6
    assert m.ttft is None
    assert stream.error is None


async def test_iteration_before_adopt_waits_and_discard_ends_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("x"))])
    async with open_llm_stream(llm, chat_ctx=ctx(), hold=True) as stream:
        received: list[ChatChunk] = []

        async def consume() -> None:
            received.extend([c async for c in stream])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.sleep(1.0)
            await stream.discard()
    assert received == []
    assert stream.status is StreamStatus.DISCARDED


async def test_no_tool_starts_before_adopt(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[str] = []

    @function_tool
    async def lookup(q: str) -> str:
        calls.append(q)
        return q

    call = FunctionCall(call_id="c1", name="lookup", arguments='{"q": "x"}')
    chunks = text_chunks([], request_id="r", tool_calls=[call], finish_reason="tool_calls")
    llm = ScriptedLLM([ScriptedAttempt(chunks)])
    async with open_llm_stream(llm, chat_ctx=ctx(), tools=[lookup], hold=True) as stream:
        await trio.sleep(2.0)
        assert calls == []
        assert stream.tool_handles == []
        await stream.adopt()
        async for _ in stream:
            pass
        outcomes = await stream.wait_for_tools()
    assert calls == ["x"]
    assert len(outcomes) == 1


async def test_an_output_less_response_waits_for_adopt_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks([], request_id="r"))])
    async with open_llm_stream(llm, chat_ctx=ctx(), hold=True) as stream:
        await trio.sleep(2.0)
        assert stream.status is StreamStatus.RUNNING
        await stream.adopt()
        received = [c async for c in stream]
    assert len(received) == 2
    assert stream.status is StreamStatus.COMPLETED


async def test_misuse_is_a_runtime_error(autojump_clock: trio.testing.MockClock) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("x"))])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        with pytest.raises(RuntimeError, match="hold=True"):
            await stream.adopt()
        with pytest.raises(RuntimeError, match="hold=True"):
            await stream.discard()
        assert not stream.held
    async with open_llm_stream(llm, chat_ctx=ctx(), hold=True) as stream:
        await stream.adopt()
        await stream.adopt()  # idempotent
        with pytest.raises(RuntimeError, match="adopted"):
            await stream.discard()
        await stream.collect()


async def test_leaving_a_held_stream_unadopted_is_a_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("x"))])
    async with open_llm_stream(llm, chat_ctx=ctx(), hold=True) as stream:
        await trio.sleep(1.0)
    assert stream.status is StreamStatus.CANCELLED
    assert llm.running == 0
