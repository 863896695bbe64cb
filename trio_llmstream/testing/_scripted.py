"""A scripted in-memory provider, for tests of code that consumes streams.

``ScriptedLLM`` plays, for attempt ``k`` of every stream, the ``k``-th ``ScriptedAttempt`` of its
script (the last one repeats if a stream makes more attempts). An attempt emits its chunks in
batches (``batch_size`` chunks per emit, as if each batch were one network read), sleeping
``delay`` seconds before each batch (``trio.sleep``, so trio's MockClock drives it), and then
ends with its fault, if any, after ``fault.after`` chunks — or completes. With ``aligned=True``
the times are exact instead: batch ``j`` is sent at ``start + (j + 1) * delay`` and the fault
comes at ``start + (batches + 1) * delay`` (``trio.sleep_until``; at once if backpressure made
the attempt late), so that, with limits that are the same multiples of ``delay`` (say 0.25 and
0.75), a batch arrives at the very instant a time limit fires, in the same scheduler batch;
the attempt ends with its last batch, without another read.
Each such wait behaves like a socket read that completes at that instant: if a cancellation
lands at that same instant, the batch is still handed to the emitter (where the cancellation
then lands), as for a real read woken with data in the scheduler batch of the cancellation.

Keying the script by attempt number (not by call order) keeps it deterministic when many
streams share one ``ScriptedLLM`` concurrently. Behind a ``FallbackLLM`` (or with hedging) a
provider serves only some attempt numbers of a stream; ``by="call"`` plays the ``k``-th entry
for this instance's ``k``-th attempt instead (its own fault plan, one stream at a time).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Literal

import attrs
import trio

from .._exceptions import APIError, APIStatusError, ProviderError, StreamTruncatedError
from .._llm import LLM, AttemptInfo, ChunkEmitter
from .._models import ChatChunk, ChatRequest, Choice, ChoiceDelta, CompletionUsage, FunctionCall

__all__ = [
    "Fault",
    "FaultKind",
    "ScriptedAttempt",
    "ScriptedLLM",
    "text_chunks",
]


class FaultKind(enum.Enum):
    """How a scripted attempt fails (see :class:`Fault`)."""

    #: Raise ``Fault.error`` (an APIError; its ``retryable`` decides retries).
    ERROR = "error"
    #: Stop sending and hang until cancelled (for timeouts).
    STALL = "stall"
    #: End without a terminal: ``StreamTruncatedError``.
    TRUNCATE = "truncate"
    #: An error event sent by the server in the stream: ``ProviderError``.
    PROVIDER_ERROR = "provider_error"
    #: A bug in the provider: a plain ``RuntimeError``, never retried.
    BUG = "bug"


@attrs.frozen
class Fault:
    """How an attempt fails, after it emitted ``after`` chunks."""

    kind: FaultKind
    after: int = 0
    error: APIError | None = None
    #: For PROVIDER_ERROR: the server's error type (decides retryable).
    provider_type: str = "server_error"

    @classmethod
    def retryable(cls, after: int = 0) -> Fault:
        return cls(FaultKind.ERROR, after, APIStatusError("unavailable", status_code=503))

    @classmethod
    def fatal(cls, after: int = 0) -> Fault:
        return cls(FaultKind.ERROR, after, APIStatusError("bad request", status_code=400))

    def exception(self, request_id: str) -> BaseException | None:
        """The exception this fault raises (None for a stall)."""
        if self.kind is FaultKind.ERROR:
            assert self.error is not None
            # A fresh copy per attempt, so attempts do not share one traceback.
            clone = BaseException.__new__(type(self.error), *self.error.args)
            clone.__dict__.update(self.error.__dict__)
            return clone
        if self.kind is FaultKind.TRUNCATE:
            return StreamTruncatedError("stream ended without [DONE]", request_id=request_id)
        if self.kind is FaultKind.PROVIDER_ERROR:
            return ProviderError("error event", type=self.provider_type, request_id=request_id)
        if self.kind is FaultKind.BUG:
            return RuntimeError("scripted provider bug")
        return None


@attrs.frozen
class ScriptedAttempt:
    """One attempt's script: chunks to emit, then an optional fault."""

    chunks: Sequence[ChatChunk] = ()
    fault: Fault | None = None
    delay: float = 0.0
    batch_size: int = 1
    #: Send at exact multiples of ``delay`` from the attempt's start (see the module doc).
    aligned: bool = False


class ScriptedLLM(LLM):
    """An ``LLM`` that plays scripted attempts. See the module docstring.

    ``calls`` records ``(request, attempt number)`` for every attempt started; ``running`` is
    the number of attempts in progress (0 after every stream's block has exited, if nothing
    leaked); ``cancelled`` counts attempts that ended by cancellation.
    """

    def __init__(
        self,
        script: Sequence[ScriptedAttempt],
        *,
        label: str = "scripted",
        by: Literal["attempt", "call"] = "attempt",
    ) -> None:
        super().__init__(label=label)
        if not script:
            raise ValueError("a script needs at least one attempt")
        if by not in ("attempt", "call"):
            raise ValueError("by must be 'attempt' or 'call'")
        self.script = tuple(script)
        self.by = by
        self.calls: list[tuple[ChatRequest, int]] = []
        self.running = 0
        self.cancelled = 0

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        index = attempt.number if self.by == "attempt" else len(self.calls)
        self.calls.append((request, attempt.number))
        plan = self.script[min(index, len(self.script) - 1)]
        fault = plan.fault
        limit = len(plan.chunks) if fault is None else min(fault.after, len(plan.chunks))
        size = max(1, plan.batch_size)
        self.running += 1
        start = trio.current_time()
        step = 0

        async def wait() -> None:
            nonlocal step
            step += 1
            if not plan.delay:
                return
            if plan.aligned:
                due = start + step * plan.delay
                if trio.current_time() >= due:  # late (backpressure): an ordinary checkpoint
                    await trio.lowlevel.checkpoint()
                    return
                try:
                    await trio.sleep_until(due)
                except trio.Cancelled:
                    if trio.current_time() < due:
                        raise
                    # The read completed at the instant the cancellation landed: go on and
                    # hand over what it read; the next checkpoint raises Cancelled again.
            else:
                await trio.sleep(plan.delay)

        try:
            sent = 0
            while sent < limit:
                await wait()
                batch = plan.chunks[sent : min(limit, sent + size)]
                await emit.send(batch)
                sent += len(batch)
            if fault is not None:
                await wait()
                exc = fault.exception(f"scripted-{attempt.number}")
                if exc is None:
                    await trio.sleep_forever()
                else:
                    raise exc
            elif not plan.aligned:
                # Yield once, as a real read would, so cancellation can land at the end too.
                await trio.lowlevel.checkpoint()
            # (Aligned: the read that carried the last batch carried the end too, so the
            # attempt returns at that very instant and the emitter's final hand-off is where
            # a limit firing in the same scheduler batch lands.)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


def text_chunks(
    text: str | Sequence[str],
    *,
    request_id: str = "req-1",
    role: bool = True,
    finish_reason: str | None = "stop",
    usage: CompletionUsage | None = None,
    tool_calls: Sequence[FunctionCall] = (),
) -> list[ChatChunk]:
    """Chunks of a plain response: a role chunk, one chunk per piece of text (a string is
    split into words, keeping the spaces), complete tool calls, a finish chunk and an optional
    usage-only chunk."""
    if isinstance(text, str):
        pieces = [w + " " for w in text.split(" ")]
        if pieces:
            pieces[-1] = pieces[-1][:-1]
        pieces = [p for p in pieces if p]
    else:
        pieces = list(text)
    chunks: list[ChatChunk] = []
    if role:
        chunks.append(ChatChunk(request_id, [Choice(ChoiceDelta(role="assistant"))]))
    chunks.extend(ChatChunk(request_id, [Choice(ChoiceDelta(content=p))]) for p in pieces)
    if tool_calls:
        chunks.append(ChatChunk(request_id, [Choice(ChoiceDelta(tool_calls=list(tool_calls)))]))
    if finish_reason is not None:
        chunks.append(ChatChunk(request_id, [Choice(ChoiceDelta(), finish_reason=finish_reason)]))
    if usage is not None:
        chunks.append(ChatChunk(request_id, [], usage=usage))
    return chunks
