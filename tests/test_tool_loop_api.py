"""The tool loop's typed surface and the public start hook it uses.

``open_tool_loop`` takes exactly ``open_llm_stream``'s keywords (no ``**kwargs`` a misspelling
can slip through) and forwards each to every step; it follows each call through
``ToolOptions.on_start``, a documented hook, instead of setting a private attribute of the
stream.
"""

from __future__ import annotations

import inspect
import logging
import random

import pytest
import trio

import trio_llmstream
from trio_llmstream import (
    APIConnectOptions,
    APIStatusError,
    ChatChunk,
    ChatContext,
    Choice,
    ChoiceDelta,
    FunctionCall,
    FunctionTool,
    StepEnd,
    ToolCallHandle,
    ToolOptions,
    ToolOutcome,
    ToolOutcomeKind,
    open_llm_stream,
    open_tool_loop,
)
from trio_llmstream.testing import Fault, ScriptedAttempt, ScriptedLLM

RID = "req-l"


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="go")
    return c


def text(t: str) -> ChatChunk:
    return ChatChunk(RID, [Choice(ChoiceDelta(content=t))])


def calls_chunk(*calls: FunctionCall) -> ChatChunk:
    return ChatChunk(RID, [Choice(ChoiceDelta(tool_calls=list(calls)))])


def finish(reason: str = "tool_calls") -> ChatChunk:
    return ChatChunk(RID, [Choice(ChoiceDelta(), finish_reason=reason)])


async def echo(word: str) -> str:
    return word


# -- the signature -----------------------------------------------------------------------------

#: open_llm_stream's keywords the loop does not take: it supplies the conversation and the
#: tools itself, and continues one conversation, so it streams one choice.
NOT_MIRRORED = {"chat_ctx", "tools", "n", "hold"}


def test_open_tool_loop_takes_every_keyword_of_open_llm_stream() -> None:
    # When open_llm_stream gains a keyword, this fails until the loop offers it too.
    stream = inspect.signature(open_llm_stream).parameters
    loop = inspect.signature(open_tool_loop).parameters
    for name, param in stream.items():
        if name in NOT_MIRRORED or param.kind is not param.KEYWORD_ONLY:
            continue
        assert name in loop, f"open_tool_loop lacks open_llm_stream's {name!r}"
        assert loop[name].kind is param.KEYWORD_ONLY
        assert loop[name].default is param.default, name
        assert loop[name].annotation == param.annotation, name


def test_a_tool_loop_comes_only_from_open_tool_loop() -> None:
    with pytest.raises(TypeError, match=r"ToolLoop has no public constructor; use open_tool_l"):
        trio_llmstream.ToolLoop()


def test_open_tool_loop_accepts_no_arbitrary_keywords() -> None:
    params = inspect.signature(open_tool_loop).parameters.values()
    assert all(p.kind is not p.VAR_KEYWORD for p in params)
    assert not hasattr(trio_llmstream, "run_tool_loop")  # renamed, no alias before 1.0


async def test_a_misspelled_keyword_is_refused() -> None:
    llm = ScriptedLLM([ScriptedAttempt([text("hi"), finish("stop")])])
    with pytest.raises(TypeError, match="temprature"):
        async with open_tool_loop(llm, ctx(), [], temprature=0.2):  # type: ignore[call-arg]
            pass
    assert llm.calls == []


@pytest.mark.parametrize(("keyword", "value"), [("max_steps", 0), ("buffer_size", -1)])
async def test_invalid_values_fail_when_the_block_is_entered(keyword: str, value: int) -> None:
    llm = ScriptedLLM([ScriptedAttempt([text("hi"), finish("stop")])])
    with pytest.raises(ValueError, match=keyword):
        async with open_tool_loop(llm, ctx(), [], **{keyword: value}):
            pass
    assert llm.calls == []


# -- the keywords reach every step -------------------------------------------------------------


async def test_request_keywords_reach_every_step(autojump_clock: trio.abc.Clock) -> None:
    calls = [FunctionCall("a", "echo", '{"word": "x"}')]
    llm = ScriptedLLM([ScriptedAttempt([calls_chunk(*calls), finish()])])
    metrics = []
    async with open_tool_loop(
        llm, ctx(), [FunctionTool(echo, "echo")],
        max_steps=2, tool_choice="required", temperature=0.25, parallel_tool_calls=False,
        extra={"seed": 7}, on_metrics=metrics.append, buffer_size=0, rng=random.Random(1),
    ) as loop:
        steps = [e async for e in loop if isinstance(e, StepEnd)]
    assert len(steps) == 2
    assert loop.stop_reason == "max_steps"
    assert len(llm.calls) == 2
    for request, _attempt in llm.calls:
        assert request.tool_choice == "required"
        assert request.temperature == 0.25
        assert request.parallel_tool_calls is False
        assert request.extra == {"seed": 7}
        assert [spec.name for spec in request.tools] == ["echo"]
    assert len(metrics) == 2


@pytest.mark.parametrize("max_retry", [0, 1])
async def test_conn_options_reach_each_step(
    autojump_clock: trio.abc.Clock, max_retry: int
) -> None:
    llm = ScriptedLLM([
        ScriptedAttempt(fault=Fault.retryable()),
        ScriptedAttempt([text("done"), finish("stop")]),
    ])
    options = APIConnectOptions(max_retry=max_retry, retry_interval=0.1)
    events = []
    async with open_tool_loop(llm, ctx(), [], conn_options=options) as loop:
        if max_retry == 0:
            with pytest.raises(APIStatusError):
                async for event in loop:
                    events.append(event)
        else:
            events = [event async for event in loop]
    assert [n for _, n in llm.calls] == list(range(max_retry + 1))
    if max_retry:
        assert loop.stop_reason == "no_tool_calls"
        assert "".join(e.text for e in events if isinstance(e, ChatChunk)) == "done"


async def test_tool_options_reach_each_step(autojump_clock: trio.abc.Clock) -> None:
    async def slow() -> str:
        await trio.sleep(10)
        return "late"

    llm = ScriptedLLM([ScriptedAttempt([calls_chunk(FunctionCall("s", "slow", "{}")), finish()])])
    async with open_tool_loop(
        llm, ctx(), [FunctionTool(slow, "slow")], max_steps=2,
        tool_options=ToolOptions(eager=False, timeout=1),
    ) as loop:
        outcomes = [e async for e in loop if isinstance(e, ToolOutcome)]
    assert [o.kind for o in outcomes] == [ToolOutcomeKind.TIMEOUT] * 2


# -- ToolOptions.on_start ----------------------------------------------------------------------


@pytest.mark.parametrize("eager", [True, False])
async def test_on_start_hears_each_call_once_as_it_starts(
    autojump_clock: trio.abc.Clock, eager: bool
) -> None:
    started: list[tuple[str, bool]] = []

    def on_start(handle: ToolCallHandle) -> None:
        started.append((handle.call.call_id, handle.done))

    calls = [FunctionCall(f"c{i}", "echo", f'{{"word": "w{i}"}}') for i in range(3)]
    llm = ScriptedLLM([ScriptedAttempt([calls_chunk(*calls), text("t"), finish()])])
    async with open_llm_stream(
        llm, chat_ctx=ctx(), tools=[FunctionTool(echo, "echo")],
        tool_options=ToolOptions(eager=eager, on_start=on_start),
    ) as stream:
        await stream.collect()
        assert len(started) == (3 if eager else 0)
        stream.execute_functions()
        stream.execute_functions()  # a call never starts twice, so it is never reported twice
        handles = stream.tool_handles
        outcomes = await stream.wait_for_tools()
    # Called right after each start, before the call could have an outcome, in start order.
    assert started == [(f"c{i}", False) for i in range(3)]
    assert [h.call.call_id for h in handles] == ["c0", "c1", "c2"]
    assert [o.output for o in outcomes] == ["w0", "w1", "w2"]


async def test_on_start_that_raises_is_logged_and_the_call_runs(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    def on_start(handle: ToolCallHandle) -> None:
        raise RuntimeError("observer bug")

    llm = ScriptedLLM([ScriptedAttempt([
        calls_chunk(FunctionCall("c", "echo", '{"word": "ok"}')), text("after"), finish(),
    ])])
    with caplog.at_level(logging.ERROR, logger="trio_llmstream"):
        async with open_llm_stream(
            llm, chat_ctx=ctx(), tools=[FunctionTool(echo, "echo")],
            tool_options=ToolOptions(on_start=on_start),
        ) as stream:
            response = await stream.collect()
            (outcome,) = await stream.wait_for_tools()
    assert response.text == "after"
    assert outcome.kind is ToolOutcomeKind.RESULT
    assert outcome.output == "ok"
    (record,) = [r for r in caplog.records if "on_start" in r.getMessage()]
    assert record.exc_info is not None
    assert "observer bug" in str(record.exc_info[1])


async def test_the_loop_calls_the_users_on_start_too(autojump_clock: trio.abc.Clock) -> None:
    heard: list[str] = []
    calls = [FunctionCall("a", "echo", '{"word": "x"}'), FunctionCall("b", "echo", '{"word": "y"}')]
    llm = ScriptedLLM([ScriptedAttempt([calls_chunk(*calls), finish()])])
    options = ToolOptions(on_start=lambda handle: heard.append(handle.call.call_id))
    async with open_tool_loop(
        llm, ctx(), [FunctionTool(echo, "echo")], max_steps=2, tool_options=options
    ) as loop:
        events = [e async for e in loop]
    assert heard == ["a", "b", "a", "b"]  # two steps, two calls each
    # The loop's own forwarding still reports every outcome, each before its step's end.
    kinds = [type(e).__name__ for e in events if not isinstance(e, ChatChunk)]
    assert kinds == ["ToolOutcome", "ToolOutcome", "StepEnd"] * 2
