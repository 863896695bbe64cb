"""``python -m trio_llmstream demo``: the library's main job, shown end to end on loopback.

Starts the mock OpenAI-compatible server in-process (real HTTP on 127.0.0.1), then streams a
scripted conversation through ``OpenAILLM`` + ``open_llm_stream``: text printed live as it
arrives, a dropped connection retried (shown as it happens), a tool loop whose call runs as
soon as it arrives, a two-segment turn with its delivery handlers, and the metrics of every
stream as a table at the end.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

import trio

from ._models import ChatChunk, ChatContext, LLMMetrics
from ._options import APIConnectOptions, Timeouts
from ._stream import LLMStream, open_llm_stream
from ._tools._execute import ToolOutcome
from ._tools._function import function_tool
from ._tools._loop import open_tool_loop
from .providers.openai import OpenAILLM

__all__ = ["run_demo"]


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
    from ._segments_demo import demo_two_segment_responses, demo_two_segment_turn
    from .testing import (
        DropConnection,
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
                "Hello! I stream token by token, inside one trio nursery.", delay=0.02
            ))
            emit("user> Say hello.\nassistant> ")
            async with open_llm_stream(llm, chat_ctx=ctx, conn_options=options) as stream:
                await _print_stream(stream, emit)
            reply = await stream.collect()
            ctx.add_message(role="assistant", content=reply.text)
            assert stream.metrics is not None
            metrics.append(("hello", stream.metrics))

            # 2. The connection drops before any text: retried, never duplicated.
            ctx.add_message(role="user", content="Tell me about retries.")
            answer = "Retries happen only before any text reaches you, so nothing repeats."
            server.enqueue(
                inject_fault(text_stream(answer), DropConnection(), after=1),
                text_stream(answer, delay=0.02),
            )
            emit("\n\nuser> Tell me about retries.\nassistant> ")
            async with open_llm_stream(llm, chat_ctx=ctx, conn_options=options) as stream:
                await _print_stream(stream, emit)
            ctx.add_message(role="assistant", content=(await stream.collect()).text)
            assert stream.metrics is not None
            metrics.append(("retry", stream.metrics))

            # 3. A tool loop: the call runs in the stream's nursery as soon as it arrives,
            #    its result goes back, and the model answers with it.
            ctx.add_message(role="user", content="What's the weather in Oslo?")
            server.enqueue(
                tool_call_stream([("get_weather", '{"city": "Oslo"}')], fragments=4),
                text_stream("It's sunny in Oslo, 21 °C.", delay=0.02),
            )
            emit("\n\nuser> What's the weather in Oslo?\nassistant> ")
            async with open_tool_loop(
                llm, ctx, [get_weather], conn_options=options, max_steps=3
            ) as loop:
                async for event in loop:
                    if isinstance(event, ChatChunk):
                        emit(event.text)
                    elif isinstance(event, ToolOutcome):
                        emit(f"\n  [tool] {event.call.name}({event.call.arguments}) "
                             f"-> {event.kind.value}: {event.output}\nassistant> ")
                    elif event.metrics is not None:
                        metrics.append((f"tool step {event.step + 1}", event.metrics))
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

    from .__main__ import format_metrics_table

    emit("\nmetrics, one record per stream:\n")
    emit(format_metrics_table(metrics) + "\n")
    return 0
