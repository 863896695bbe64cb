"""``python -m trio_llmstream demo``: the library's main job, shown end to end on loopback.

Starts the mock OpenAI-compatible server in-process (real HTTP on 127.0.0.1), then streams a
scripted conversation through ``OpenAILLM`` + ``open_llm_stream``: text printed live as it
arrives, a dropped connection retried (shown as it happens), a tool call executed and its
result sent back, and the metrics of every stream as a table at the end.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

import trio

from ._models import ChatContext, LLMMetrics
from ._options import APIConnectOptions, Timeouts
from ._stream import LLMStream, open_llm_stream
from ._tools import FunctionTool
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


async def get_weather(city: str) -> str:
    """The demo's tool: a canned forecast, after a short 'lookup'."""
    await trio.sleep(0.05)
    return json.dumps({"city": city, "forecast": "sunny", "temperature_c": 21})


WEATHER_TOOL = FunctionTool(
    get_weather,
    "get_weather",
    "Get the current weather for a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city name"}},
        "required": ["city"],
    },
)


async def run_demo(out: Callable[[str], None] | None = None) -> int:
    """Run the demo, writing to ``out`` (stdout by default). Returns the exit code."""
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

            # 3. A tool call, executed in the stream's nursery; its result goes back.
            ctx.add_message(role="user", content="What's the weather in Oslo?")
            server.enqueue(tool_call_stream([("get_weather", '{"city": "Oslo"}')], fragments=4))
            emit("\n\nuser> What's the weather in Oslo?\n")
            async with open_llm_stream(
                llm, chat_ctx=ctx, tools=[WEATHER_TOOL], conn_options=options
            ) as stream:
                await stream.collect()
                ctx.add_message(role="assistant", tool_calls=stream.function_calls)
                for handle in stream.execute_functions():
                    outcome = await handle.wait()
                    emit(f"  [tool] {handle.call.name}({handle.call.arguments}) "
                         f"-> {outcome.kind.value}: {outcome.output}\n")
                    ctx.add_tool_result(handle.call, outcome.output)
            assert stream.metrics is not None
            metrics.append(("tool call", stream.metrics))

            server.enqueue(text_stream("It's sunny in Oslo, 21 °C.", delay=0.02))
            emit("assistant> ")
            async with open_llm_stream(llm, chat_ctx=ctx, conn_options=options) as stream:
                await _print_stream(stream, emit)
            assert stream.metrics is not None
            metrics.append(("tool result", stream.metrics))
            sent = server.last_request.json
            assert isinstance(sent, dict)
            tool_msgs = [m for m in sent["messages"] if m["role"] == "tool"]
            emit(f"\n  [server] last request carried {len(tool_msgs)} tool result(s)\n")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    from .__main__ import format_metrics_table

    emit("\nmetrics, one record per stream:\n")
    emit(format_metrics_table(metrics) + "\n")
    return 0
