"""Running tools in the stream's nursery: eager starts, one outcome per call, options, the loop."""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    LLM,
    AttemptInfo,
    ChatChunk,
    ChatContext,
    ChatRequest,
    Choice,
    ChoiceDelta,
    ChunkEmitter,
    FunctionCall,
    FunctionTool,
    StepEnd,
    ToolOptions,
    ToolOutcome,
    ToolOutcomeKind,
    ToolSpec,
    open_llm_stream,
    open_tool_loop,
)
from trio_llmstream.testing import ScriptedAttempt, ScriptedLLM, text_chunks

RID = "req-t"


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


async def test_calls_start_while_text_still_streams(autojump_clock: trio.abc.Clock) -> None:
    started: list[float] = []

    async def lookup() -> str:
        started.append(trio.current_time())
        return "ok"

    call = FunctionCall("c1", "lookup", "{}")
    chunks = [calls_chunk(call), *(text(f"t{i} ") for i in range(10)), finish()]
    llm = ScriptedLLM([ScriptedAttempt(chunks, delay=1.0)])
    async with open_llm_stream(llm, chat_ctx=ctx(), tools=[FunctionTool(lookup, "lookup")]) as s:
        async for _ in s:
            pass
        end = trio.current_time()
        outcomes = await s.wait_for_tools()
    assert started == [1.0]  # as soon as the call was delivered, 10 s before the end
    assert end >= 11.0
    assert [o.kind for o in outcomes] == [ToolOutcomeKind.RESULT]


async def test_eager_off_waits_for_execute_functions(autojump_clock: trio.abc.Clock) -> None:
    ran: list[str] = []

    async def f() -> None:
        ran.append("f")

    llm = ScriptedLLM([ScriptedAttempt([calls_chunk(FunctionCall("c", "f", "{}")), finish()])])
    async with open_llm_stream(
        llm, chat_ctx=ctx(), tools=[FunctionTool(f, "f")], tool_options=ToolOptions(eager=False)
    ) as stream:
        await stream.collect()
        await trio.sleep(1)
        assert ran == []
        (handle,) = stream.execute_functions()
        await handle.wait()
    assert ran == ["f"]


async def test_spec_only_tools_are_left_to_the_caller() -> None:
    async def f() -> None:
        pass

    llm = ScriptedLLM([ScriptedAttempt([
        calls_chunk(FunctionCall("c1", "described", "{}"), FunctionCall("c2", "f", "{}")),
        finish(),
    ])])
    tools = [ToolSpec("described"), FunctionTool(f, "f")]
    async with open_llm_stream(llm, chat_ctx=ctx(), tools=tools) as stream:
        await stream.collect()
        outcomes = await stream.wait_for_tools()
    assert [o.call.call_id for o in outcomes] == ["c2"]


async def test_concurrency_limit(autojump_clock: trio.abc.Clock) -> None:
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1

    calls = [FunctionCall(f"c{i}", "work", "{}") for i in range(6)]
    llm = ScriptedLLM([ScriptedAttempt([calls_chunk(*calls), finish()])])
    async with open_llm_stream(
        llm, chat_ctx=ctx(), tools=[FunctionTool(work, "work", timeout=1.5)],
        tool_options=ToolOptions(max_concurrency=2),
    ) as stream:
        await stream.collect()
        start = trio.current_time()
        outcomes = await stream.wait_for_tools()
    assert peak == 2
    assert trio.current_time() - start == pytest.approx(3.0)
    # Waiting for a slot does not eat into the call's own time limit.
    assert all(o.kind is ToolOutcomeKind.RESULT for o in outcomes)


@pytest.mark.parametrize(("policy", "expected"), [
    ("cancel", ToolOutcomeKind.CANCELLED),
    ("wait", ToolOutcomeKind.RESULT),
])
async def test_exit_policy(
    autojump_clock: trio.abc.Clock, policy: str, expected: ToolOutcomeKind
) -> None:
    async def slow() -> str:
        await trio.sleep(2)
        return "done"

    llm = ScriptedLLM([ScriptedAttempt([calls_chunk(FunctionCall("c", "slow", "{}")), finish()])])
    options = ToolOptions(on_exit=policy, grace_period=5)  # type: ignore[arg-type]
    async with open_llm_stream(
        llm, chat_ctx=ctx(), tools=[FunctionTool(slow, "slow")], tool_options=options
    ) as stream:
        await stream.collect()
    (handle,) = stream.tool_handles
    assert handle.outcome is not None
    assert handle.outcome.kind is expected


async def test_wait_policy_cancels_after_grace(autojump_clock: trio.abc.Clock) -> None:
    async def forever() -> None:
        await trio.sleep_forever()

    llm = ScriptedLLM([ScriptedAttempt([calls_chunk(FunctionCall("c", "f", "{}")), finish()])])
    start = trio.current_time()
    async with open_llm_stream(
        llm, chat_ctx=ctx(), tools=[FunctionTool(forever, "f")],
        tool_options=ToolOptions(on_exit="wait", grace_period=3),
    ) as stream:
        await stream.collect()
    assert trio.current_time() - start == pytest.approx(3.0)
    assert stream.tool_handles[0].outcome is not None
    assert stream.tool_handles[0].outcome.kind is ToolOutcomeKind.CANCELLED


async def test_sync_tool_runs_in_a_thread_without_blocking_the_stream() -> None:
    release = threading.Event()
    seen_thread: list[int] = []

    def blocking() -> str:
        seen_thread.append(threading.get_ident())
        release.wait(5)
        return "unblocked"

    chunks = [calls_chunk(FunctionCall("c", "blocking", "{}")), *(text("x") for _ in range(5))]
    llm = ScriptedLLM([ScriptedAttempt([*chunks, finish()], delay=0.001)])
    async with open_llm_stream(
        llm, chat_ctx=ctx(), tools=[FunctionTool(blocking, "blocking")]
    ) as stream:
        assert (await stream.collect()).text == "xxxxx"  # streamed while the tool blocks
        release.set()
        (outcome,) = await stream.wait_for_tools()
    assert outcome.value == "unblocked"
    assert seen_thread[0] != threading.get_ident()


# -- hypothesis: tool-call plans ---------------------------------------------------------------

BEHAVIOURS = ["ok", "raise", "hang", "slow", "bad_args", "unknown"]


@dataclass
class Plan:
    calls: list[tuple[str, str]]  # (call id, behaviour)
    positions: list[int]  # chunk index after which each call is delivered
    consumer: str
    k: int


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(1, 6))
    calls = [(f"call_{i}", draw(st.sampled_from(BEHAVIOURS))) for i in range(n)]
    positions = sorted(draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)))
    consumer = draw(st.sampled_from(["all", "break", "cancel"]))
    return Plan(calls, positions, consumer, draw(st.integers(0, 8)))


@dataclass
class Record:
    starts: dict[str, int] = field(default_factory=dict)


def build(plan: Plan, record: Record) -> tuple[ScriptedLLM, list[FunctionTool]]:
    async def ok(tag: str) -> str:
        record.starts[tag] = record.starts.get(tag, 0) + 1
        await trio.sleep(0.5)
        return tag

    async def raise_(tag: str) -> None:
        record.starts[tag] = record.starts.get(tag, 0) + 1
        raise ValueError(tag)

    async def hang(tag: str) -> None:
        record.starts[tag] = record.starts.get(tag, 0) + 1
        await trio.sleep_forever()

    async def slow(tag: str) -> str:
        record.starts[tag] = record.starts.get(tag, 0) + 1
        await trio.sleep(3)
        return tag

    tools = [
        FunctionTool(ok, "ok"), FunctionTool(raise_, "raise"),
        FunctionTool(hang, "hang", timeout=2.0), FunctionTool(slow, "slow"),
    ]
    chunks: list[ChatChunk] = []
    pending = list(zip(plan.calls, plan.positions, strict=True))
    for i in range(8):
        for (call_id, behaviour), _ in [p for p in pending if p[1] == i]:
            name = {"bad_args": "ok", "unknown": "nope"}.get(behaviour, behaviour)
            args = '{"tag": 1' if behaviour == "bad_args" else f'{{"tag": "{call_id}"}}'
            chunks.append(calls_chunk(FunctionCall(call_id, name, args)))
        chunks.append(text(f"w{i} "))
    chunks.append(finish())
    return ScriptedLLM([ScriptedAttempt(chunks, delay=0.25)]), tools


EXPECTED_KIND = {
    "ok": ToolOutcomeKind.RESULT,
    "raise": ToolOutcomeKind.ERROR,
    "hang": ToolOutcomeKind.TIMEOUT,
    "slow": ToolOutcomeKind.RESULT,
    "bad_args": ToolOutcomeKind.ERROR,
    "unknown": ToolOutcomeKind.ERROR,
}


@given(plan=plans())
def test_every_delivered_call_gets_exactly_one_outcome(plan: Plan) -> None:
    record = Record()
    llm, tools = build(plan, record)
    out: dict[str, object] = {}

    async def main() -> None:
        delivered: list[FunctionCall] = []
        with trio.move_on_after(1.3 if plan.consumer == "cancel" else math.inf):
            async with open_llm_stream(llm, chat_ctx=ctx(), tools=tools) as stream:
                async for chunk in stream:
                    if chunk.delta is not None:
                        delivered.extend(chunk.delta.tool_calls)
                    if plan.consumer == "break" and len(delivered) >= plan.k:
                        break
                if plan.consumer == "all":
                    await stream.wait_for_tools()
        out["stream"] = stream
        out["delivered"] = delivered

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    stream = out["stream"]
    delivered = out["delivered"]
    assert isinstance(delivered, list)
    handles = stream.tool_handles  # type: ignore[attr-defined]
    ids = [h.call.call_id for h in handles]
    assert len(ids) == len(set(ids))  # started once
    # Every call the consumer received was started (eagerly), and only those.
    assert set(ids) <= {c.call_id for c in stream.function_calls}  # type: ignore[attr-defined]
    assert {c.call_id for c in delivered} <= set(ids)
    for handle in handles:
        assert handle.outcome is not None  # nothing left without an outcome
        if plan.consumer == "all":
            behaviour = dict(plan.calls)[handle.call.call_id]
            assert handle.outcome.kind is EXPECTED_KIND[behaviour]
    assert all(n == 1 for n in record.starts.values())
    assert llm.running == 0


# -- the tool loop -----------------------------------------------------------------------------


class StepLLM(LLM):
    """Answers by step: the number of assistant messages already in the request."""

    def __init__(self, steps: list[list[ChatChunk]]) -> None:
        super().__init__(label="steps")
        self.steps = steps
        self.requests: list[ChatRequest] = []

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        self.requests.append(request)
        step = sum(1 for m in request.messages if m.role == "assistant")
        for chunk in self.steps[min(step, len(self.steps) - 1)]:
            await trio.sleep(0.1)
            await emit.send([chunk])


async def test_tool_loop_runs_until_no_calls(autojump_clock: trio.abc.Clock) -> None:
    async def weather(city: str) -> str:
        await trio.sleep(0.05)
        return f"sunny in {city}"

    async def time_in(city: str) -> str:
        return f"noon in {city}"

    step0 = [
        calls_chunk(FunctionCall("a", "weather", '{"city": "Oslo"}')),
        calls_chunk(FunctionCall("b", "time_in", '{"city": "Rome"}')),
        finish(),
    ]
    step1 = [text("Sunny and noon."), finish("stop")]
    llm = StepLLM([step0, step1])
    tools = [FunctionTool(weather, "weather"), FunctionTool(time_in, "time_in")]
    conversation = ctx()
    events: list[object] = []
    metrics = []
    async with open_tool_loop(llm, conversation, tools, on_metrics=metrics.append) as loop:
        async for event in loop:
            events.append(event)
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("StepEnd") == 2
    assert loop.stop_reason == "no_tool_calls"
    outcomes = [e for e in events if isinstance(e, ToolOutcome)]
    assert {o.output for o in outcomes} == {"sunny in Oslo", "noon in Rome"}
    # Results go back in the order the model issued the calls.
    second = llm.requests[1].messages
    assert [m.role for m in second[-3:]] == ["assistant", "tool", "tool"]
    assert [m.tool_call_id for m in second[-2:]] == ["a", "b"]
    assert second[-2].content == "sunny in Oslo"
    assert len(metrics) == 2
    assert isinstance(events[-1], StepEnd)
    assert events[-1].response.text == "Sunny and noon."
    assert [m.role for m in conversation.messages] == ["user", "assistant", "tool", "tool"]


async def test_tool_loop_stops_at_max_steps(autojump_clock: trio.abc.Clock) -> None:
    async def again() -> str:
        return "again"

    step = [calls_chunk(FunctionCall("x", "again", "{}")), finish()]
    llm = StepLLM([step])
    async with open_tool_loop(llm, ctx(), [FunctionTool(again, "again")], max_steps=3) as loop:
        steps = [e async for e in loop if isinstance(e, StepEnd)]
    assert len(steps) == 3
    assert loop.stop_reason == "max_steps"


async def test_tool_loop_error_is_in_band(autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("a"), fault=None)])
    bad = FunctionTool(lambda: None, "bad")

    class Boom(LLM):
        async def run_attempt(
            self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
        ) -> None:
            raise RuntimeError("provider bug")

    async with open_tool_loop(Boom(), ctx(), [bad]) as loop:
        with pytest.raises(RuntimeError, match="provider bug"):
            async for _ in loop:
                pass
    assert loop.stop_reason is None
    assert llm.calls == []


async def test_tool_loop_break_cancels_everything(autojump_clock: trio.abc.Clock) -> None:
    started = trio.Event()

    async def forever() -> None:
        started.set()
        await trio.sleep_forever()

    step = [calls_chunk(FunctionCall("x", "forever", "{}")), *(text("t") for _ in range(50))]
    llm = StepLLM([step])
    async with open_tool_loop(llm, ctx(), [FunctionTool(forever, "forever")]) as loop:
        async for event in loop:
            if isinstance(event, ChatChunk) and event.text:
                await started.wait()
                break
    assert loop.stop_reason is None


# -- hypothesis: wire-level tool-call plans through the tool loop --------------------------------


class WireLLM(LLM):
    """Plays OpenAI wire bytes through the real parser, one read per element of ``reads``.

    Step 0 answers with the tool calls, every later step with plain text.
    """

    def __init__(self, first: list[bytes], then: list[bytes]) -> None:
        super().__init__(label="wire")
        self.first, self.then = first, then
        self.requests: list[ChatRequest] = []
        self.running = 0

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        from trio_llmstream._core._openai import ChatCompletionParser

        self.requests.append(request)
        reads = self.then if any(m.role == "tool" for m in request.messages) else self.first
        parser = ChatCompletionParser()
        self.running += 1
        try:
            for data in reads:
                await trio.sleep(0.1)
                await emit.send(parser.feed(data))
                if parser.error is not None:
                    raise parser.error
            await emit.send(parser.end())
            if parser.error is not None:
                raise parser.error
        finally:
            self.running -= 1


def _wire(chunks: list[dict], cuts: list[int]) -> list[bytes]:
    import json

    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    body += b"data: [DONE]\n\n"
    points = sorted({min(len(body), max(1, c)) for c in cuts} | {len(body)})
    out, last = [], 0
    for p in points:
        if p > last:
            out.append(body[last:p])
            last = p
    return out


@st.composite
def wire_plans(draw: st.DrawFn) -> tuple[list[bytes], list[tuple[str, str]], str, int]:
    n = draw(st.integers(1, 5))
    calls = [(f"call_{i}", draw(st.sampled_from(BEHAVIOURS))) for i in range(n)]
    chunks: list[dict] = [{"id": "w", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    for i, (call_id, behaviour) in enumerate(calls):
        name = {"bad_args": "ok", "unknown": "nope"}.get(behaviour, behaviour)
        args = '{"tag": 1' if behaviour == "bad_args" else f'{{"tag": "{call_id}"}}'
        pieces = draw(st.lists(st.integers(1, len(args)), max_size=4))
        bounds = sorted(set(pieces) | {0, len(args)})
        frags = [args[a:b] for a, b in itertools.pairwise(bounds)]
        for j, frag in enumerate(frags):
            tc: dict = {"index": i, "function": {"arguments": frag}}
            if j == 0:
                tc.update(id=call_id, type="function")
                tc["function"]["name"] = name
            chunks.append({"id": "w", "choices": [{"index": 0, "delta": {"tool_calls": [tc]}}]})
    end = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    chunks.append({"id": "w", "choices": [end]})
    size = sum(len(str(c)) for c in chunks)
    cuts = draw(st.lists(st.integers(1, size), max_size=8))
    consumer = draw(st.sampled_from(["all", "all", "break", "cancel"]))
    return _wire(chunks, cuts), calls, consumer, draw(st.integers(0, 10))


@given(plan=wire_plans())
def test_tool_loop_over_wire_plans(
    plan: tuple[list[bytes], list[tuple[str, str]], str, int],
) -> None:
    reads, calls, consumer, k = plan
    record = Record()
    _, tools = build(Plan(calls, [0] * len(calls), consumer, k), record)
    answer = [{"id": "a", "choices": [{"index": 0, "delta": {"content": "done"}}]},
              {"id": "a", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    llm = WireLLM(reads, _wire(answer, []))
    seen: list[ToolOutcome] = []
    state: dict[str, object] = {}

    async def main() -> None:
        events = 0
        with trio.move_on_after(0.45 if consumer == "cancel" else math.inf):
            async with open_tool_loop(llm, ctx(), tools, max_steps=2) as loop:
                state["loop"] = loop
                async for event in loop:
                    events += 1
                    if isinstance(event, ToolOutcome):
                        seen.append(event)
                    if consumer == "break" and events >= k:
                        break

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert llm.running == 0  # nothing running after the block
    assert all(n == 1 for n in record.starts.values())  # each call started once
    ids = [o.call.call_id for o in seen]
    assert len(ids) == len(set(ids))  # one outcome per call id
    if consumer == "all":
        loop = state["loop"]
        assert loop.stop_reason == "no_tool_calls"  # type: ignore[attr-defined]
        assert sorted(ids) == sorted(c for c, _ in calls)
        for outcome in seen:
            assert outcome.kind is EXPECTED_KIND[dict(calls)[outcome.call.call_id]]
        # Results go back in the order the model issued the calls.
        tool_msgs = [m for m in llm.requests[-1].messages if m.role == "tool"]
        assert [m.tool_call_id for m in tool_msgs] == [c for c, _ in calls]
