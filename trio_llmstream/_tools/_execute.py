"""Tool-call execution: running the calls a model asked for, each to exactly one outcome.

A :class:`ToolCallHandle` stands for one started call; :func:`run_tool_call` runs it in a task
of the stream's nursery and sets its :class:`ToolOutcome` exactly once — result, error, timeout
or cancelled. A model that gets no answer for a call re-issues it and repeats its side effects,
so "exactly one outcome per call id" is an invariant, enforced here: a second outcome for a
handle raises. Nothing a call does becomes an exception that ends the stream: an unknown tool,
arguments that are not JSON or that ``prepare`` refuses, and an exception from the tool are
ERROR outcomes whose message goes back to the model; only cancellation propagates.
:class:`ToolOptions` says how a stream runs its calls (when they start, their time limit, how
many at once, what leaving the stream's block does to them, who hears of each start).
"""

from __future__ import annotations

import enum
import inspect
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import trio

from .._models import FunctionCall
from ._function import FunctionTool

__all__ = [
    "DEFAULT_TOOL_OPTIONS",
    "ToolCallHandle",
    "ToolOptions",
    "ToolOutcome",
    "ToolOutcomeKind",
    "run_tool_call",
]


@attrs.frozen
class ToolOptions:
    """How a stream runs the tool calls the model makes.

    - ``eager``: start each call as soon as it has been delivered complete to the consumer,
      while the model may still be streaming text or further calls (only calls to
      ``FunctionTool``s, and calls to unknown names, which fail at once; calls to tools given
      as bare ``ToolSpec``s are the caller's to run). Off: only ``execute_functions()`` starts
      calls;
    - ``timeout``: the default per-call limit, for tools that do not set their own;
    - ``max_concurrency``: how many calls of one stream run at once (None: no limit);
    - ``on_exit``: what leaving the stream's block does to calls still running: ``"cancel"``
      them at once, or ``"wait"`` for them up to ``grace_period`` seconds and then cancel.
      Cancellation from outside the block always cancels at once;
    - ``on_start``: called with each call's :class:`ToolCallHandle` right after the call has
      started (eagerly or by ``execute_functions()``), once per call, synchronously in the task
      that started it (for eager starts, the stream's producer), so it must not block: to
      follow a call, start a task that awaits ``handle.wait()`` (the tool loop does this to
      report each outcome as soon as it exists). An exception from it is logged and ignored;
      the call runs anyway.
    """

    eager: bool = True
    timeout: float | None = attrs.field(default=None)
    max_concurrency: int | None = attrs.field(default=None)
    on_exit: Literal["cancel", "wait"] = "cancel"
    grace_period: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    on_start: Callable[[ToolCallHandle], object] | None = None

    @timeout.validator
    def _check_timeout(self, _attr: attrs.Attribute[Any], value: float | None) -> None:
        if value is not None and not value > 0:
            raise ValueError(f"timeout must be positive or None, not {value!r}")

    @max_concurrency.validator
    def _check_concurrency(self, _attr: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"max_concurrency must be >= 1 or None, not {value!r}")


DEFAULT_TOOL_OPTIONS = ToolOptions()


class ToolOutcomeKind(enum.Enum):
    """How a tool call ended: it returned (``RESULT``), failed — unknown tool, invalid
    arguments or an exception from the tool — (``ERROR``), ran out of time (``TIMEOUT``) or was
    cancelled with the stream (``CANCELLED``)."""

    RESULT = "result"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


@attrs.frozen
class ToolOutcome:
    """The one outcome of one tool call.

    ``value`` is the tool's return value (for ``RESULT``), ``error`` the exception (for
    ``ERROR``; also set for ``TIMEOUT`` and ``CANCELLED`` when there is one). ``output`` is the
    text to send back to the model in the tool message.
    """

    call: FunctionCall
    kind: ToolOutcomeKind
    value: Any = None
    error: BaseException | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.kind is ToolOutcomeKind.RESULT

    @property
    def output(self) -> str:
        if self.kind is ToolOutcomeKind.RESULT:
            if isinstance(self.value, str):
                return self.value
            try:
                return json.dumps(self.value)
            except (TypeError, ValueError):
                return str(self.value)
        return f"error: {self.message}"


class ToolCallHandle:
    """A started tool call. ``await handle.wait()`` gives its outcome once it has one.

    The outcome is set exactly once; ``outcome`` is None until then.
    """

    __slots__ = ("_done", "_outcome", "call")

    def __init__(self, call: FunctionCall) -> None:
        self.call = call
        self._outcome: ToolOutcome | None = None
        self._done = trio.Event()

    @property
    def outcome(self) -> ToolOutcome | None:
        return self._outcome

    @property
    def done(self) -> bool:
        return self._outcome is not None

    def _set(self, outcome: ToolOutcome) -> None:
        if self._outcome is not None:
            raise RuntimeError(f"tool call {self.call.call_id!r} already has an outcome")
        self._outcome = outcome
        self._done.set()

    async def wait(self) -> ToolOutcome:
        """Wait for the outcome. Cancellation: cancels only the waiting, not the call."""
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome

    def __repr__(self) -> str:
        state = self._outcome.kind.value if self._outcome else "running"
        return f"<ToolCallHandle {self.call.name}({self.call.call_id}) {state}>"


def _parse_arguments(call: FunctionCall) -> dict[str, Any]:
    text = call.arguments.strip() or "{}"
    args = json.loads(text)
    if not isinstance(args, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(args).__name__}")
    return args


async def run_tool_call(
    handle: ToolCallHandle,
    tools: Mapping[str, FunctionTool[..., Any]],
    *,
    default_timeout: float | None = None,
    limiter: trio.CapacityLimiter | None = None,
) -> None:
    """Run ``handle.call`` and give it exactly one outcome. Never raises but Cancelled.

    Unknown tools and unparsable arguments become ERROR outcomes (never exceptions that kill
    the stream). Cancellation: the outcome becomes CANCELLED and Cancelled propagates.
    """
    call = handle.call
    tool = tools.get(call.name)
    if tool is None:
        handle._set(
            ToolOutcome(call, ToolOutcomeKind.ERROR, message=f"unknown tool {call.name!r}")
        )
        return
    try:
        args = _parse_arguments(call)
        if tool.prepare is not None:
            args = tool.prepare(args)
    except ValueError as exc:
        handle._set(
            ToolOutcome(
                call, ToolOutcomeKind.ERROR, error=exc,
                message=f"invalid arguments for {call.name!r}: {exc}",
            )
        )
        return
    timeout = tool.timeout if tool.timeout is not None else default_timeout
    try:
        # The time limit counts from the start of the call, not from the wait for a slot.
        if limiter is not None:
            await limiter.acquire_on_behalf_of(handle)
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                value = await _invoke(tool.fn, args)
        finally:
            if limiter is not None:
                limiter.release_on_behalf_of(handle)
    except trio.Cancelled:
        handle._set(ToolOutcome(call, ToolOutcomeKind.CANCELLED, message="cancelled"))
        raise
    except Exception as exc:
        handle._set(
            ToolOutcome(
                call, ToolOutcomeKind.ERROR, error=exc,
                message=f"{call.name} raised {type(exc).__name__}: {exc}",
            )
        )
        return
    if scope.cancelled_caught or scope.deadline < trio.current_time():
        handle._set(
            ToolOutcome(call, ToolOutcomeKind.TIMEOUT, message=f"timed out after {timeout:g}s")
        )
    else:
        handle._set(ToolOutcome(call, ToolOutcomeKind.RESULT, value=value))


async def _invoke(fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(**args)
    # A thread cannot be interrupted: the call runs to its end even when cancelled (so nothing
    # outlives the stream's block), and the cancellation lands when it returns.
    result = await trio.to_thread.run_sync(lambda: fn(**args))
    if inspect.isawaitable(result):
        return await result
    return result
