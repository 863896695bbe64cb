"""Response segments end to end: two ``OpenAILLM`` streams from the loopback mock server in one
turn, over real HTTP, and the demo.

Real time (the mock server's sockets do not follow a fake clock), with small delays. On a real
clock the consumer's "now" moves between two reads, so exact times are checked against the
report (the same clock reading the handler got), and order against the consumer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio

from trio_llmstream import ChatChunk, ChatContext, OpenAILLM, StreamStatus, open_llm_stream
from trio_llmstream._demo import (
    DEMO_ANSWER,
    DEMO_FOLLOW_UP,
    demo_two_segment_responses,
    demo_two_segment_turn,
)
from trio_llmstream._segments import (
    Segment,
    SegmentEnd,
    SegmentEvent,
    SegmentItem,
    SegmentNotice,
    SegmentStart,
    open_turn,
)
from trio_llmstream._segments_stages import SegmentInput, map_turn, open_turn_stage
from trio_llmstream.testing import ResponseOutcome, open_mock_server, text_stream


def ctx(text: str) -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content=text)
    return c


async def words(text: SegmentInput[str]) -> AsyncIterator[str]:
    pending = ""
    async for piece in text:
        pending += piece
        *done, pending = pending.split(" ")
        for word in done:
            if word:
                yield word
    if pending:
        yield pending


async def test_two_openai_streams_in_one_turn() -> None:
    answer, follow_up = "The sky is blue today.", "Anything else?"
    async with open_mock_server(
        text_stream(answer, chunk_size=5, delay=0.005),
        text_stream(follow_up, chunk_size=5, delay=0.005),
    ) as server, OpenAILLM("gpt-mock", base_url=server.base_url, api_key="sk-test") as llm:
        notices: list[SegmentNotice] = []
        async with open_turn(
            [
                Segment(lambda: open_llm_stream(llm, chat_ctx=ctx("1")), id="answer"),
                Segment(lambda: open_llm_stream(llm, chat_ctx=ctx("2")), id="follow-up"),
            ]
        ) as turn:
            for event in SegmentEvent:
                turn.on(event, notices.append)
            log: list[tuple[str, str]] = []
            frames: dict[str, list[str]] = {"answer": [], "follow-up": []}
            text_of = map_turn(turn, lambda chunk: chunk.text)
            async with open_turn_stage(text_of, words) as out:
                async for item in out:
                    if isinstance(item, SegmentStart):
                        log.append(("start", item.id))
                        # The next request is sent only once the previous end was received.
                        assert len(server.chat_requests) == item.index + 1
                    elif isinstance(item, SegmentItem):
                        await trio.sleep(0.002)  # "play" the word
                        turn.ack_started(item)
                        frames[item.segment_id].append(item.value)
                    else:
                        assert isinstance(item, SegmentEnd)
                        turn.ack_finished(item)
                        log.append(("end", item.id))
        await server.wait_idle()

    assert " ".join(frames["answer"]) == answer
    assert " ".join(frames["follow-up"]) == follow_up
    assert log == [("start", "answer"), ("end", "answer"),
                   ("start", "follow-up"), ("end", "follow-up")]
    # Two responses, two runs of each handler, in order.
    assert [(n.event.value, n.segment_id) for n in notices] == [
        ("delivered", "answer"), ("playback_started", "answer"),
        ("completed", "answer"), ("playback_finished", "answer"),
        ("delivered", "follow-up"), ("playback_started", "follow-up"),
        ("completed", "follow-up"), ("playback_finished", "follow-up"),
    ]
    report = turn.report
    assert report.status is StreamStatus.COMPLETED
    for seg in report.segments:
        times = {n.event: n.time for n in notices if n.segment_id == seg.id}
        assert seg.delivered_at == times[SegmentEvent.DELIVERED]
        assert seg.completed_at == times[SegmentEvent.COMPLETED]
        assert seg.playback_finished_at == times[SegmentEvent.PLAYBACK_FINISHED]
    assert [r.json["messages"][0]["content"] for r in server.chat_requests] == ["1", "2"]
    assert all(r.outcome is ResponseOutcome.COMPLETED for r in server.chat_requests)


async def test_interrupting_the_second_stream_cancels_its_request() -> None:
    async with open_mock_server(
        text_stream("short answer", chunk_size=4),
        text_stream("a long follow-up that will be cut off", chunk_size=2, delay=0.05),
        text_stream("never requested"),
    ) as server, OpenAILLM("gpt-mock", base_url=server.base_url) as llm:
        notices: list[tuple[str, str]] = []
        def request(i: int) -> Any:
            return lambda: open_llm_stream(llm, chat_ctx=ctx(str(i)))

        segments = [Segment(request(i), id=f"s{i}") for i in range(3)]
        async with open_turn(segments) as turn:
            turn.on("delivered", lambda n: notices.append(("delivered", n.segment_id)))
            turn.on("completed", lambda n: notices.append(("completed", n.segment_id)))
            async for item in turn:
                if (
                    isinstance(item, SegmentItem)
                    and item.segment_id == "s1"
                    and isinstance(item.value, ChatChunk)
                    and item.value.is_visible
                ):
                    turn.interrupt()  # the user barges in
        assert len(server.chat_requests) == 2
        outcome = await server.chat_requests[1].wait_finished()
        assert outcome is ResponseOutcome.DISCONNECTED
    assert notices == [("delivered", "s0"), ("completed", "s0"), ("delivered", "s1")]
    report = turn.report
    assert report.interrupted
    assert report.delivered == ("s0", "s1")
    assert report.completed == ("s0",)
    assert [s.opened for s in report.segments] == [True, True, False]


async def test_the_demo_prints_a_two_segment_turn() -> None:
    lines: list[str] = []
    async with open_mock_server(*demo_two_segment_responses()) as server:
        await demo_two_segment_turn(server.base_url, lines.append)
        second = server.chat_requests[1].json
    text = "".join(lines)
    events = [line.split("handler: ", 1)[1] for line in text.splitlines() if "] handler: " in line]
    assert [e.split(" (")[0] for e in events] == [
        "answer delivered", "answer playback started", "answer completed",
        "answer playback finished", "follow-up delivered", "follow-up playback started",
        "follow-up completed", "follow-up playback finished",
    ]
    assert "async handler" in text
    assert "turn completed" in text
    spoken = "".join(
        line.split("speaking: ", 1)[1] for line in text.splitlines() if "speaking: " in line
    )
    assert spoken == DEMO_ANSWER + DEMO_FOLLOW_UP
    # The follow-up was requested after the answer, and carries it.
    assert second["messages"][-2] == {"role": "assistant", "content": DEMO_ANSWER}
