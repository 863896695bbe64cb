"""``python -m trio_llmstream demo``: the library's main job, shown end to end on loopback.

Starts the mock OpenAI-compatible server in-process (real HTTP on 127.0.0.1), then streams a
scripted conversation through ``OpenAILLM`` + ``open_llm_stream``: text printed live as it
arrives, a dropped connection retried (shown as it happens), a fallback to a second server
when the first is overloaded, a tool loop whose call runs as
soon as it arrives, a two-segment turn with its delivery handlers, and the metrics of every
stream as a table at the end.

The two-segment turn: one user turn, two LLM responses: an answer, then a follow-up whose
request is only built (and sent) once the answer was fully received, so it can include the
answer. A fake "player" turns the text into word "frames", plays each for a few milliseconds,
and acks playback on the turn; handlers print every event at the moment it happens.

Every scripted stream paces its chunks (a delay before each), so the metrics table's
``tok/s`` is a real rate: tokens over the time they took to arrive.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
import trio

from ._fallback import FallbackLLM
from ._models import ChatChunk, ChatContext, LLMMetrics
from ._options import APIConnectOptions, Timeouts
from ._segments import (
    Segment,
    SegmentEnd,
    SegmentEvent,
    SegmentItem,
    SegmentNotice,
    SegmentStart,
    open_turn,
)
from ._segments_stages import SegmentInput, map_turn, open_turn_stage
from ._stream import LLMStream, open_llm_stream
from ._tools._execute import ToolOutcome
from ._tools._function import function_tool
from ._tools._loop import open_tool_loop
from .providers.openai import OpenAILLM

__all__ = [
    "DEMO_ANSWER",
    "DEMO_FOLLOW_UP",
    "demo_two_segment_responses",
    "demo_two_segment_turn",
    "format_metrics_table",
    "run_demo",
]

# How long the scripted server waits before each chunk: the pace of the demo's streams.
CHUNK_DELAY = 0.02


def format_metrics_table(rows: Sequence[tuple[str, LLMMetrics]]) -> str:
    """A plain-text table of stream metrics, one row per stream (``-`` where a figure is
    unknown, e.g. ``tok/s`` without a usage report)."""
    header = ("stream", "status", "attempts", "ttft", "duration", "prompt", "completion",
              "tok/s", "error")
    lines = [header]
    for name, m in rows:
        lines.append((
            name,
            m.status.value,
            str(len(m.attempts)),
            "-" if m.ttft is None else f"{m.ttft * 1000:.0f} ms",
            f"{m.duration * 1000:.0f} ms",
            str(m.prompt_tokens),
            str(m.completion_tokens),
            "-" if m.tokens_per_second is None else f"{m.tokens_per_second:.0f}",
            "" if m.error is None else type(m.error).__name__,
        ))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for n, row in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# -- the conversation --------------------------------------------------------------------------


class _RetryPrinter(logging.Handler):
    """Shows the runtime's retry decisions as they happen."""

    def __init__(self, out: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "trio_llmstream":  # the runtime's own records, not the server's
            self.out(f"\n  [runtime] {record.getMessage()}\n")


async def _print_stream(stream: LLMStream, out: Callable[[str], None]) -> None:
    async for chunk in stream:
        if chunk.text:
            out(chunk.text)


@function_tool
async def get_weather(city: str) -> str:
    """Get the current weather for a city.

    Args:
        city: The city name.
    """
    await trio.sleep(0.05)  # a pretend lookup
    return json.dumps({"city": city, "forecast": "sunny", "temperature_c": 21})


async def run_demo(out: Callable[[str], None] | None = None) -> int:
    """Run the demo, writing to ``out`` (stdout by default). Returns the exit code."""
    from .testing import (
        DropConnection,
        error_response,
        inject_fault,
        open_mock_server,
        text_stream,
        tool_call_stream,
    )

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    emit = out or write
    metrics: list[tuple[str, LLMMetrics]] = []
    logger = logging.getLogger("trio_llmstream")
    handler = _RetryPrinter(emit)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    options = APIConnectOptions(
        max_retry=2, retry_interval=0.2, timeouts=Timeouts(connect=2, first_token=2, idle=2)
    )
    try:
        async with open_mock_server() as server, OpenAILLM(
            "demo-model", base_url=server.base_url, api_key="sk-demo"
        ) as llm:
            emit(f"mock server listening at {server.base_url}\n\n")
            ctx = ChatContext()
            ctx.add_message(role="system", content="You are a concise assistant.")

            # 1. Plain streaming, printed as it arrives.
            ctx.add_message(role="user", content="Say hello.")
            server.enqueue(text_stream(
                "Hello! I stream token by token, inside one trio nursery.", delay=CHUNK_DELAY
            ))
            emit("user> Say hello.\nassistant> ")
            async with open_llm_stream(llm, chat_ctx=ctx, conn_options=options) as stream:
                await _print_stream(stream, emit)
            reply = await stream.collect()
            ctx.add_message(role="assistant", content=reply.text)
            metrics.append(("hello", stream.metrics))

            # 2. The connection drops before any text: retried, never duplicated.
            ctx.add_message(role="user", content="Tell me about retries.")
            answer = "Retries happen only before any text reaches you, so nothing repeats."
            server.enqueue(
                inject_fault(text_stream(answer), DropConnection(), after=1),
                text_stream(answer, delay=CHUNK_DELAY),
            )
            emit("\n\nuser> Tell me about retries.\nassistant> ")
            async with open_llm_stream(llm, chat_ctx=ctx, conn_options=options) as stream:
                await _print_stream(stream, emit)
            ctx.add_message(role="assistant", content=(await stream.collect()).text)
            metrics.append(("retry", stream.metrics))

            # 2b. Fallback: the primary is overloaded (503); the stream moves on at once to a
            #     second server (no backoff for a fresh provider), before any text was shown.
            ctx.add_message(role="user", content="And if the server is down?")
            answer = "Then a second provider answers, and you never hear the first one fail."
            server.enqueue(error_response(503, "overloaded"))
            async with open_mock_server(text_stream(answer, delay=CHUNK_DELAY)) as backup, \
                    OpenAILLM("demo-model", base_url=backup.base_url, api_key="sk-demo",
                              label="backup") as backup_llm:
                primary = OpenAILLM(
                    "demo-model", base_url=server.base_url, api_key="sk-demo", label="primary"
                )
                fallback = FallbackLLM([primary, backup_llm])
                emit("\n\nuser> And if the server is down?\nassistant> ")
                async with open_llm_stream(fallback, chat_ctx=ctx, conn_options=options) as stream:
                    await _print_stream(stream, emit)
                await primary.aclose()
                served = " -> ".join(a.label or "?" for a in stream.metrics.attempts)
                emit(f"\n  [fallback] attempts served by: {served}")
            ctx.add_message(role="assistant", content=(await stream.collect()).text)
            metrics.append(("fallback", stream.metrics))

            # 3. A tool loop: the call runs in the stream's nursery as soon as it arrives,
            #    its result goes back, and the model answers with it.
            ctx.add_message(role="user", content="What's the weather in Oslo?")
            server.enqueue(
                tool_call_stream([("get_weather", '{"city": "Oslo"}')], fragments=4,
                                 delay=CHUNK_DELAY),
                text_stream("It's sunny in Oslo, 21 °C.", delay=CHUNK_DELAY),
            )
            emit("\n\nuser> What's the weather in Oslo?\nassistant> ")
            async with open_tool_loop(
                llm, ctx, [get_weather], conn_options=options, max_steps=3
            ) as loop:
                step_text = False
                async for event in loop:
                    if isinstance(event, ChatChunk):
                        step_text = step_text or bool(event.text)
                        emit(event.text)
                    elif isinstance(event, ToolOutcome):
                        emit(f"\n  [tool] {event.call.name}({event.call.arguments}) "
                             f"-> {event.kind.value}: {event.output}\nassistant> ")
                    elif event.metrics is not None:
                        step = event.metrics
                        if not step_text:
                            # The runtime's rate window starts at the first visible output;
                            # a step that only called tools has none until its calls are
                            # complete, at the very end, so its rate would be tokens over a
                            # fraction of a millisecond (23,766 tok/s): not shown.
                            step = attrs.evolve(step, tokens_per_second=None)
                        metrics.append((f"tool step {event.step + 1}", step))
                        step_text = False
            sent = server.last_request.json
            assert isinstance(sent, dict)
            tool_msgs = [m for m in sent["messages"] if m["role"] == "tool"]
            emit(f"\n  [server] last request carried {len(tool_msgs)} tool result(s)\n")

            # 4. One turn made of two responses, with handlers firing at the exact moment
            #    each response reaches the consumer and is acknowledged by the player.
            emit("\nA two-segment turn (answer + follow-up), played word by word:\n")
            server.enqueue(*demo_two_segment_responses())
            await demo_two_segment_turn(server.base_url, emit)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    emit("\nmetrics, one record per stream:\n")
    emit(format_metrics_table(metrics) + "\n")
    return 0


# -- the two-segment turn ----------------------------------------------------------------------

DEMO_ANSWER = "It is sunny in Oslo today, 21 degrees, with a light breeze."
DEMO_FOLLOW_UP = "Would you like the forecast for the weekend too?"
# How long the fake player takes to "say" one word.
WORD_SECONDS = 0.03

_EVENT_TEXT = {
    SegmentEvent.DELIVERED: "delivered (first text received)",
    SegmentEvent.COMPLETED: "completed (end received)",
    SegmentEvent.PLAYBACK_STARTED: "playback started (acked by the player)",
    SegmentEvent.PLAYBACK_FINISHED: "playback finished (acked by the player)",
}


def demo_two_segment_responses() -> tuple[Any, ...]:
    """The two streamed responses ``demo_two_segment_turn`` expects, in order, ready for the
    mock server: ``server.enqueue(*demo_two_segment_responses())``."""
    from .testing import text_stream

    return (
        text_stream(DEMO_ANSWER, chunk_size=6, delay=0.01),
        text_stream(DEMO_FOLLOW_UP, chunk_size=6, delay=0.01),
    )


class _Printer:
    """Writes the spoken text on indented lines, and handler lines each on a line of their own
    (breaking the spoken line if needed)."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self._out = out
        self._mid_line = False

    def line(self, text: str) -> None:
        if self._mid_line:
            self._out("\n")
            self._mid_line = False
        self._out(text + "\n")

    def speak(self, word: str) -> None:
        if not self._mid_line:
            self._out("      speaking: ")
            self._mid_line = True
        self._out(word)


async def _words(text: SegmentInput[str]) -> AsyncIterator[str]:
    """The "synthesizer": text pieces in, one frame per word out (a word is complete at a
    space or at the end of the segment, when the rest is flushed)."""
    pending = ""
    async for piece in text:
        pending += piece
        *words, pending = pending.split(" ")
        for word in words:
            if word:
                yield word + " "
    if pending:
        yield pending


async def demo_two_segment_turn(base_url: str, out: Callable[[str], None]) -> None:
    """Run a two-segment turn against the server at ``base_url`` and write what happens to
    ``out`` (text pieces with their own newlines, as ``run_demo``'s writer takes them).

    The server must answer two streamed chat completions; with the mock server, enqueue
    ``demo_two_segment_responses()`` first. Cancellation: cancels the turn like any block
    (the requests are cancelled, nothing is left running).
    """
    printer = _Printer(out)
    async with OpenAILLM("demo-model", base_url=base_url, api_key="sk-demo") as llm:
        ctx = ChatContext()
        ctx.add_message(role="system", content="You are a concise voice assistant.")
        ctx.add_message(role="user", content="What's the weather in Oslo?")
        received: list[str] = []

        def text_of(chunk: ChatChunk) -> str:
            received.append(chunk.text)
            return chunk.text

        def follow_up() -> Any:
            # Called only once the answer's end marker was received, so everything received
            # so far is the whole answer.
            follow = ctx.copy()
            follow.add_message(role="assistant", content="".join(received))
            follow.add_message(role="system", content="Offer one short follow-up.")
            return open_llm_stream(llm, chat_ctx=follow)

        segments: list[Segment[ChatChunk]] = [
            Segment(lambda: open_llm_stream(llm, chat_ctx=ctx), id="answer", label="answer"),
            Segment(follow_up, id="follow-up", label="follow-up"),
        ]
        t0 = trio.current_time()

        def show(notice: SegmentNotice) -> None:
            printer.line(
                f"  [{notice.time - t0:6.3f}s] handler: {notice.segment_id} "
                f"{_EVENT_TEXT[notice.event]}"
            )

        async def offer_buttons(notice: SegmentNotice) -> None:
            # An async handler: a task in the turn's nursery, started at the ack.
            await trio.sleep(0.01)  # e.g. a round trip to the UI
            printer.line(f"  [{trio.current_time() - t0:6.3f}s] async handler (started at "
                         f"{notice.time - t0:.3f}s): show the follow-up buttons")

        out(f"turn: two responses from {base_url}, one consumer, hooks at delivery\n")
        async with open_turn(segments) as turn:
            for event in SegmentEvent:
                turn.on(event, show)
            turn.on(SegmentEvent.PLAYBACK_FINISHED, offer_buttons, segment="follow-up")
            async with open_turn_stage(map_turn(turn, text_of), _words) as frames:
                async for item in frames:
                    if isinstance(item, SegmentStart):
                        printer.line(f"  segment {item.index} ({item.label}) starts")
                    elif isinstance(item, SegmentItem):
                        turn.ack_started(item)  # idempotent: the first call counts
                        printer.speak(item.value)
                        await trio.sleep(WORD_SECONDS)  # "playing" the word
                    elif isinstance(item, SegmentEnd):
                        turn.ack_finished(item)
        report = turn.report
        printer.line(f"turn {report.status.value}:")
        for seg in report.segments:
            printer.line(
                f"  {seg.id:<10} delivered={seg.delivered} completed={seg.completed} "
                f"played={seg.playback_finished} items={seg.items}"
            )
