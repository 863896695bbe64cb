"""The tool loop: stream, run the calls, send the results back, stream again.

``open_tool_loop`` is an async context manager like ``open_llm_stream``; its value is an async
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
flight, its request and its tool calls. A forwarder is started for each call through the
stream's public ``ToolOptions.on_start`` hook, and every forwarder has sent its outcome before
the step's ``StepEnd`` is sent. An error ends the loop in-band: it is raised once from
iteration, after the events before it.

This is the one module of the tools package that sits above the runtime (it opens streams);
the others sit below it.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, final

import attrs
import trio

from .._llm import LLM, MetricsCallback
from .._models import ChatChunk, ChatContext, CollectedResponse, LLMMetrics, ToolChoice
from .._options import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, Hedge
from .._stream import DEFAULT_BUFFER_SIZE, LLMStream, open_llm_stream
from .._util import InBandError, NoPublicConstructor, open_owner_nursery
from ._execute import DEFAULT_TOOL_OPTIONS, ToolCallHandle, ToolOptions, ToolOutcome
from ._function import FunctionTool, as_function_tool

__all__ = ["StepEnd", "ToolLoop", "ToolLoopEvent", "open_tool_loop"]

StopReason = Literal["no_tool_calls", "max_steps"]

#: Opens one step's stream of the given conversation with the given tool options; everything
#: else about the request is fixed when the loop is opened.
_OpenStep = Callable[[ChatContext, ToolOptions], AbstractAsyncContextManager[LLMStream]]


@attrs.frozen
class StepEnd:
    """The end of one step: its response, its calls' outcomes (in the order the model issued
    the calls) and the step's stream metrics."""

    step: int
    response: CollectedResponse
    outcomes: tuple[ToolOutcome, ...]
    metrics: LLMMetrics | None


ToolLoopEvent = ChatChunk | ToolOutcome | StepEnd


@final
class ToolLoop(metaclass=NoPublicConstructor):
    """The running loop: iterate it for events. Only :func:`open_tool_loop` makes one; it lives
    inside that block."""

    _made_by = "open_tool_loop()"

    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[ToolLoopEvent](0)
        self._failure: InBandError[BaseException] = InBandError()
        # The block exited: iteration ends, the error stays readable as ``error``.
        self._closed = False
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
            pass
        await self._done.wait()
        self._failure.raise_once(closed=self._closed)
        raise StopAsyncIteration

    @property
    def error(self) -> BaseException | None:
        """The loop's error (a step's stream error, say), or None."""
        return self._failure.error


async def _run_steps(
    loop: ToolLoop,
    open_step: _OpenStep,
    chat_ctx: ChatContext,
    tool_options: ToolOptions,
    max_steps: int,
) -> None:
    send = loop._send
    try:
        async with send:
            for step in range(max_steps):
                end = await _one_step(step, open_step, chat_ctx, tool_options, send)
                loop.steps.append(end)
                await send.send(end)
                if not end.response.function_calls:
                    loop.stop_reason = "no_tool_calls"
                    return
                # The whole assistant turn, provider items included, so the next request
                # replays it exactly (thinking signatures and the like).
                chat_ctx.append(end.response.message())
                chat_ctx.add_tool_outcomes(end.outcomes)
            loop.stop_reason = "max_steps"
    except Exception as exc:
        loop._failure.error = exc
    finally:
        loop._done.set()


async def _one_step(
    step: int,
    open_step: _OpenStep,
    chat_ctx: ChatContext,
    tool_options: ToolOptions,
    send: trio.MemorySendChannel[ToolLoopEvent],
) -> StepEnd:
    error: BaseException | None = None
    forwarders: trio.Nursery | None = None

    async def forward(handle: ToolCallHandle) -> None:
        await send.send(await handle.wait())

    def on_start(handle: ToolCallHandle) -> None:
        # Calls start while the step's chunks are taken or in execute_functions(), both inside
        # the forwarders' nursery below. Outside it (a start racing the step's cancellation)
        # the step is being abandoned and its outcomes reach no one.
        if forwarders is not None:
            forwarders.start_soon(forward, handle)
        if tool_options.on_start is not None:
            tool_options.on_start(handle)

    stream: LLMStream
    async with open_step(chat_ctx, attrs.evolve(tool_options, on_start=on_start)) as stream:
        try:
            async with trio.open_nursery() as forwarders:
                try:
                    async for chunk in stream:
                        await send.send(chunk)
                except Exception as exc:  # raised below, outside the nursery: never in a group
                    error = exc
                else:
                    # Calls not started eagerly (eager execution off) start now.
                    stream.execute_functions()
        finally:
            forwarders = None
        if error is not None:
            raise error
        outcomes = tuple(await stream.wait_for_tools())
    response = await stream.collect()
    by_id = {o.call.call_id: o for o in outcomes}
    ordered = tuple(by_id[c.call_id] for c in response.function_calls if c.call_id in by_id)
    return StepEnd(step, response, ordered, stream.metrics)


@asynccontextmanager
async def open_tool_loop(
    llm: LLM,
    chat_ctx: ChatContext,
    tools: Iterable[FunctionTool[..., Any] | Callable[..., Any]],
    *,
    max_steps: int = 8,
    tool_choice: ToolChoice | None = None,
    conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    temperature: float | None = None,
    max_tokens: int | None = None,
    parallel_tool_calls: bool | None = None,
    tool_options: ToolOptions = DEFAULT_TOOL_OPTIONS,
    on_metrics: MetricsCallback | Sequence[MetricsCallback] | None = None,
    extra: Mapping[str, Any] | None = None,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    rng: random.Random | None = None,
    hedge: Hedge | None = None,
) -> AsyncIterator[ToolLoop]:
    """Stream responses from ``llm``, running their tool calls, until the model stops calling.

    ::

        async with open_tool_loop(llm, ctx, [get_weather], max_steps=4) as loop:
            async for event in loop:
                if isinstance(event, ChatChunk):
                    print(event.text, end="")
                elif isinstance(event, ToolOutcome):
                    print(f"[{event.call.name} -> {event.kind.value}]")

    ``chat_ctx`` is extended in place with each step's assistant message and tool results
    (pass ``ctx.copy()`` to keep the original). ``tools`` are ``FunctionTool``s or plain
    functions (made into tools by ``function_tool``); the loop runs every call, so bare
    ``ToolSpec``s have no place here. ``max_steps`` bounds the number of streamed responses.

    The other parameters are those of :func:`open_llm_stream` and apply to every step's
    stream: ``tool_choice`` (for every step: forcing a call makes the loop run to
    ``max_steps``), ``conn_options`` (retries and time limits of each step),
    ``temperature``, ``max_tokens``, ``parallel_tool_calls``, ``tool_options`` (calls run
    eagerly by default; an ``on_start`` given there is called too), ``on_metrics`` (gets
    every step's metrics), ``extra``, ``buffer_size``, ``rng`` and ``hedge``. There is no
    ``n``: the loop continues one conversation, and no ``hold``: a loop's steps are
    delivered as they come.

    Raises ``ValueError`` for ``max_steps < 1`` or ``buffer_size < 0``, and ``TypeError`` or
    ``ValueError`` for a tool that cannot be made, when the block is entered.

    Cancellation: leaving the block cancels the step in flight, its request and its running
    calls; an exception from the block propagates as itself.
    """
    if max_steps < 1:
        raise ValueError("max_steps must be >= 1")
    if buffer_size < 0:
        raise ValueError("buffer_size must be >= 0")
    tool_list = [as_function_tool(tool) for tool in tools]

    def open_step(ctx: ChatContext, options: ToolOptions) -> AbstractAsyncContextManager[LLMStream]:
        return open_llm_stream(
            llm,
            chat_ctx=ctx,
            tools=tool_list,
            tool_choice=tool_choice,
            conn_options=conn_options,
            temperature=temperature,
            max_tokens=max_tokens,
            parallel_tool_calls=parallel_tool_calls,
            tool_options=options,
            on_metrics=on_metrics,
            extra=extra,
            buffer_size=buffer_size,
            rng=rng,
            hedge=hedge,
        )

    loop = ToolLoop._create()

    def exit_block(_body_exc: BaseException | None) -> None:
        loop._closed = True
        nursery.cancel_scope.cancel()

    async with open_owner_nursery(exit_block) as nursery:
        nursery.start_soon(_run_steps, loop, open_step, chat_ctx, tool_options, max_steps)
        yield loop
