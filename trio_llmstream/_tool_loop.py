"""The tool loop: stream, run the calls, send the results back, stream again.

``run_tool_loop`` is an async context manager like ``open_llm_stream``; its value is an async
iterator of events in the order they happen: the ``ChatChunk``s of every step, each
``ToolOutcome`` as soon as its call ends (while the model may still be streaming), and a
``StepEnd`` closing each step with its response, outcomes and metrics. After a step whose
response made tool calls, the assistant message and one tool message per call — in the order
the model issued the calls — are appended to ``chat_ctx`` and the next step streams; the loop
ends when a response makes no call (``stop_reason == "no_tool_calls"``) or after ``max_steps``
steps (``"max_steps"``).

One task in the block's nursery runs the steps; it and the outcome forwarders send into one
zero-buffer channel, so a slow consumer slows everything down (no unbounded buffer), and each
step's stream is opened and closed inside that task: leaving the block cancels the step in
flight, its request and its tool calls. An error ends the loop in-band: it is raised once from
iteration, after the events before it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import trio

from ._function_tool import as_function_tool
from ._llm import LLM, MetricsCallback
from ._models import ChatChunk, ChatContext, CollectedResponse, LLMMetrics
from ._options import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from ._stream import LLMStream, open_llm_stream
from ._tools import DEFAULT_TOOL_OPTIONS, FunctionTool, ToolCallHandle, ToolOptions, ToolOutcome
from ._util import open_owner_nursery

__all__ = ["StepEnd", "ToolLoop", "ToolLoopEvent", "run_tool_loop"]

StopReason = Literal["no_tool_calls", "max_steps"]


@attrs.frozen
class StepEnd:
    """The end of one step: its response, its calls' outcomes (in the order the model issued
    the calls) and the step's stream metrics."""

    step: int
    response: CollectedResponse
    outcomes: tuple[ToolOutcome, ...]
    metrics: LLMMetrics | None


ToolLoopEvent = ChatChunk | ToolOutcome | StepEnd


class ToolLoop:
    """The running loop: iterate it for events. See :func:`run_tool_loop`."""

    def __init__(self, _token: object) -> None:
        if _token is not _PRIVATE:
            raise TypeError("ToolLoop has no public constructor; use run_tool_loop()")
        self._send, self._recv = trio.open_memory_channel[ToolLoopEvent](0)
        self._error: BaseException | None = None
        self._error_raised = False
        self._done = trio.Event()
        self.steps: list[StepEnd] = []
        #: Why the loop ended (None while it runs, or if it failed or was cancelled).
        self.stop_reason: StopReason | None = None

    def __aiter__(self) -> ToolLoop:
        return self

    async def __anext__(self) -> ToolLoopEvent:
        """The next event; the loop's error is raised once, after the events before it.

        Cancellation: cancelling a waiting call loses nothing.
        """
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            await self._done.wait()
            if self._error is not None and not self._error_raised:
                self._error_raised = True
                raise self._error from None
            raise StopAsyncIteration from None

    @property
    def error(self) -> BaseException | None:
        return self._error


_PRIVATE = object()


async def _run_steps(
    loop: ToolLoop,
    llm: LLM,
    chat_ctx: ChatContext,
    tools: Sequence[FunctionTool],
    max_steps: int,
    stream_kwargs: Mapping[str, Any],
) -> None:
    send = loop._send
    try:
        async with send:
            for step in range(max_steps):
                end = await _one_step(step, llm, chat_ctx, tools, stream_kwargs, send)
                loop.steps.append(end)
                await send.send(end)
                if not end.response.function_calls:
                    loop.stop_reason = "no_tool_calls"
                    return
                chat_ctx.add_message(
                    role="assistant",
                    content=end.response.text or None,
                    tool_calls=end.response.function_calls,
                )
                chat_ctx.add_tool_outcomes(end.outcomes)
            loop.stop_reason = "max_steps"
    except Exception as exc:
        loop._error = exc
    finally:
        loop._done.set()


async def _one_step(
    step: int,
    llm: LLM,
    chat_ctx: ChatContext,
    tools: Sequence[FunctionTool],
    stream_kwargs: Mapping[str, Any],
    send: trio.MemorySendChannel[ToolLoopEvent],
) -> StepEnd:
    error: BaseException | None = None
    stream: LLMStream
    async with open_llm_stream(llm, chat_ctx=chat_ctx, tools=tools, **stream_kwargs) as stream:
        async with trio.open_nursery() as forwarders:

            async def forward(handle: ToolCallHandle) -> None:
                await send.send(await handle.wait())

            def on_start(handle: ToolCallHandle) -> None:
                forwarders.start_soon(forward, handle)

            stream._on_tool_start = on_start
            try:
                async for chunk in stream:
                    await send.send(chunk)
            except Exception as exc:  # raised below, outside the nursery: never in a group
                error = exc
            else:
                # Calls not started eagerly (eager execution off) start now.
                stream.execute_functions()
        if error is not None:
            raise error
        outcomes = tuple(await stream.wait_for_tools())
    response = await stream.collect()
    by_id = {o.call.call_id: o for o in outcomes}
    ordered = tuple(by_id[c.call_id] for c in response.function_calls if c.call_id in by_id)
    return StepEnd(step, response, ordered, stream.metrics)


@asynccontextmanager
async def run_tool_loop(
    llm: LLM,
    chat_ctx: ChatContext,
    tools: Iterable[FunctionTool | Callable[..., Any]],
    *,
    max_steps: int = 8,
    conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    tool_options: ToolOptions | None = None,
    on_metrics: MetricsCallback | Sequence[MetricsCallback] | None = None,
    **stream_kwargs: Any,
) -> AsyncIterator[ToolLoop]:
    """Stream responses from ``llm``, running their tool calls, until the model stops calling.

    ::

        async with run_tool_loop(llm, ctx, [get_weather], max_steps=4) as loop:
            async for event in loop:
                if isinstance(event, ChatChunk):
                    print(event.text, end="")
                elif isinstance(event, ToolOutcome):
                    print(f"[{event.call.name} -> {event.kind.value}]")

    ``chat_ctx`` is extended in place with each step's assistant message and tool results
    (pass ``ctx.copy()`` to keep the original). ``on_metrics`` gets every step's metrics;
    other keyword arguments go to each step's ``open_llm_stream``. Tool calls run eagerly by
    default (``tool_options``). Cancellation: leaving the block cancels the step in flight,
    its request and its running calls; an exception from the block propagates as itself.
    """
    if max_steps < 1:
        raise ValueError("max_steps must be >= 1")
    tool_list = [as_function_tool(tool) for tool in tools]
    kwargs = dict(stream_kwargs)
    kwargs["conn_options"] = conn_options
    kwargs["tool_options"] = tool_options or DEFAULT_TOOL_OPTIONS
    if on_metrics is not None:
        kwargs["on_metrics"] = on_metrics
    loop = ToolLoop(_PRIVATE)
    async with open_owner_nursery(lambda _: nursery.cancel_scope.cancel()) as nursery:
        nursery.start_soon(_run_steps, loop, llm, chat_ctx, tool_list, max_steps, kwargs)
        yield loop
