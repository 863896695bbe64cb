"""A two-segment turn against an OpenAI-compatible server, for the command-line demo.

One user turn, two LLM responses: an answer, then a follow-up whose request is only built
(and sent) once the answer was fully received, so it can include the answer. A fake "player"
turns the text into word "frames", plays each for a few milliseconds, and acks playback on the
turn; handlers print every event at the moment it happens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from ._models import ChatChunk, ChatContext
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
from ._stream import open_llm_stream
from .providers.openai import OpenAILLM

__all__ = ["DEMO_ANSWER", "DEMO_FOLLOW_UP", "demo_two_segment_responses", "demo_two_segment_turn"]

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
