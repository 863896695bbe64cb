"""The runtime: ``open_llm_stream`` and ``LLMStream``.

Structure. ``open_llm_stream`` opens one nursery in the caller's task and runs in it:

- the *attempt loop*, inside the stream's own cancel scope (so ``aclose()`` can stop the stream
  without touching the caller's code). It is the sole owner of the consumer-facing pipe and of
  the observation channel, and closes both exactly once, after the last attempt, whatever
  happens. It is two parts: *one attempt* (``_one_attempt``: run the provider on an emitter,
  return the outcome) and a short *decision loop* (``_attempt_loop`` / ``_decide``: completed,
  give up, the next attempt on the route after the backoff when the route wraps, or a hedged
  attempt beside the running ones). Attempts run as tasks of a nursery inside the loop, so
  several may run at once (hedging); the loop alone records them, each exactly once. Each
  attempt gets an emitter that can send but cannot close, so no provider can end the stream
  under the next attempt; which attempt may hand over before the commit, and which one wins,
  is the arbiter's (``_arbiter.py``), and which provider serves an attempt is the route's
  (``_fallback.py``);
- the *supervisor*, the metrics consumer: shielded, it drains the loop's observations until the
  loop closes their channel, then delivers exactly one ``LLMMetrics`` (the shield guarantees
  delivery on cancellation; it cannot hang because the loop always closes the channel). Between
  observations it sleeps until the running attempts' nearest time limit and enforces it;
- *tool-call tasks*, started as soon as a complete call reaches the consumer (eager execution)
  or by ``execute_functions()``, each in a cancel scope of its own.

Commit point. An attempt commits when the consumer has *received* visible output. Until then
every hand-off is exact: it returns only once the consumer has taken the batch, and a cancelled
one takes its chunks back. Whether the consumer took a batch is read from the pipe, never
inferred from how the hand-off ended: a time limit can cancel the attempt in the very scheduler
batch in which the consumer takes its first visible chunks, and then the attempt is committed
(and interrupted), never retried, so no chunk is ever delivered twice. Before the commit,
non-visible chunks (role, usage, finish) are held back by the emitter and sent together with
the first visible chunk (or at the attempt's successful end), so a failed uncommitted attempt
leaves no trace in what the consumer saw, and the consumer receives exactly the chunks of the
attempt that succeeded or committed.

Batching. A trio channel operation costs a scheduling round (about 3 µs), more than parsing a
chunk, and servers flush one event per HTTP chunk. So attempts hand chunks over through a
``Pipe`` (see ``_pipe.py``): after the commit point the producer appends and goes on reading,
the consumer takes everything pending at once and pops it from a local list, so there is about
one hand-off per socket read. What may wait is bounded twice: at most ``buffer_size`` chunks
(default 1,024) and at most ``DEFAULT_BUFFER_BYTES`` (16 KiB) by an estimate of the chunks'
memory (``_CHUNK_BYTES`` per chunk plus its characters); past either bound the producer waits
until the consumer has taken everything (backpressure). The bytes bind first for ordinary
chunks, at ~40 one-token chunks, more than a real server's read holds, so a read's chunks
reach the consumer in the one hand-off its next socket read gives anyway (a bound of 16
chunks made that a scheduling round per 17 chunks: issue 16). Before the commit point every
hand-off waits until the consumer has taken it, which keeps the commit point exact.

Timeouts. ``first_event``, ``idle`` and ``first_token`` are enforced here, not by providers,
and they measure progress: a call of the emitter's ``send`` (one per read that completed a data
event; see ``ChunkEmitter``). Moving a cancel scope's deadline on every chunk would cost more
than the rest of the per-chunk work, so the emitter only records the time of the last send, and
the supervisor sleeps until the nearest limit as it stood, re-checks (a send may have come
since) and either sleeps again or cancels the attempt's scope, recording which limit fired.
While the emitter waits for the consumer no limit runs and the idle clock restarts when the
wait ends: backpressure never counts as the server being slow. A fired limit fails the attempt
with ``APITimeoutError`` naming it.

Held streams. ``hold=True`` gates the consumer side only: iteration waits until ``adopt()``
or ``discard()``. Since every hand-off before the commit waits for the consumer to take it, an
attempt runs until its first visible batch and waits there, its limits paused like any
backpressure; nothing is delivered and no tool starts, and a failure before that point is
retried as usual, invisibly. ``discard()`` cancels the stream (taking the waiting batch back)
and the supervisor records it ``DISCARDED``.

Endings. The attempt loop decides how the attempts ended; the stream's status is settled by the
consumer: COMPLETED, TRUNCATED or FAILED once it has received the end (iteration ended or
raised the stream's error), CANCELLED if it left before (``break``, an exception, outside
cancellation, ``aclose()``), even when the end had already arrived. Metrics are delivered once
the status is settled.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, final

import attrs
import trio

from ._arbiter import Arbiter
from ._core._retry import Retry, decide_next
from ._exceptions import (
    APIError,
    APITimeoutError,
    RetriesExhaustedError,
    StreamInterrupted,
    StreamProtocolError,
    StreamTruncatedError,
    TimeoutLimit,
)
from ._fallback import FallbackLLM, route_for
from ._llm import LLM, AttemptInfo, MetricsCallback
from ._models import (
    AttemptMetrics,
    ChatChunk,
    ChatContext,
    ChatRequest,
    CollectedChoice,
    CollectedResponse,
    CompletionUsage,
    FunctionCall,
    LLMMetrics,
    ProviderItem,
    StreamStatus,
    ToolChoice,
    ToolSpec,
)
from ._options import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, Hedge, Timeouts
from ._pipe import Pipe
from ._telemetry import open_stream_telemetry
from ._tools._execute import (
    DEFAULT_TOOL_OPTIONS,
    ToolCallHandle,
    ToolOptions,
    ToolOutcome,
    run_tool_call,
)
from ._tools._function import FunctionTool, as_function_tool
from ._util import InBandError, NoPublicConstructor, open_owner_nursery

__all__ = ["LLMStream", "open_llm_stream"]

logger = logging.getLogger("trio_llmstream")

# What may wait for the consumer after the commit point, so the producer need not yield per
# chunk (see _pipe.py): at most DEFAULT_BUFFER_SIZE chunks (``buffer_size``) and at most
# DEFAULT_BUFFER_BYTES of them, estimated as _CHUNK_BYTES per chunk plus its text. The bytes
# bind first for every ordinary chunk: 16 KiB is ~40 one-token chunks, more than a real
# server's read holds (it flushes per token), so such a read reaches the consumer in the one
# hand-off that the producer's next socket read gives anyway. The count was 16 before issue 16
# (PROFILE.md cost 2: a scheduling round per 17 chunks). Why not more: at 1,000 concurrent
# streams a bound of 64 KiB measured the same CPU but 30% more RSS growth per stream (186 vs
# 143 KiB: parsed chunks weigh more than their bytes and wait a scheduler batch) and twice the
# GC collections; in memory (one stream, no network checkpoint) it saved ~0.25 µs/chunk.
DEFAULT_BUFFER_SIZE = 1024
DEFAULT_BUFFER_BYTES = 16 * 1024
# The memory of a parsed chunk besides its text: ChatChunk, Choice, ChoiceDelta, their lists
# (measured ~360 bytes with tracemalloc for a one-token chat-completions chunk).
_CHUNK_BYTES = 384

# Chunks without visible output held back before an attempt commits (role, usage, finish...).
# A real server sends a handful; thousands mean a broken server, answered with a typed error.
MAX_HELD_CHUNKS = 1024

_system_random = random.Random()

_NO_TIMEOUTS = Timeouts(connect=None, first_token=None, idle=None, first_event=None)


# Text pieces are joined every so often: a token is a few characters, its str object ~50 bytes
# more, and a thousand concurrent streams each keep their whole response.
_COMPACT_AT = 64


class _Text:
    """One choice's text (or reasoning) so far, kept in time and memory linear in its length.

    Pieces are appended to ``run``; every ``_COMPACT_AT`` of them are joined once into one
    block (``_Accumulator.add`` does it inline: it is the per-chunk path), and the blocks are
    joined only by :meth:`joined`. So each character is copied once on the way in, and the
    structure holds at most ``pieces / _COMPACT_AT`` blocks plus ``_COMPACT_AT`` pieces: the
    memory bound of compaction without re-joining the whole text at every compaction (that
    copied O(n^2 / 64) characters: per-chunk cost grew with the response; PROFILE.md item 3).
    """

    __slots__ = ("blocks", "run")

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.run: list[str] = []

    def joined(self) -> str:
        """The text so far. Leaves the structure as it is: it may be asked again (a partial
        response, then the final one), and each call costs one copy of the text."""
        return "".join([*self.blocks, *self.run])


class _Accumulator:
    """Folds delivered chunks into the response so far (per choice), for ``collect()``,
    ``function_calls`` and ``StreamInterrupted.partial``."""

    __slots__ = (
        "calls", "chars", "chunks", "finish", "items", "reasoning", "request_id", "text",
        "usage",
    )

    def __init__(self) -> None:
        self.text: dict[int, _Text] = {0: _Text()}
        self.reasoning: dict[int, _Text] = {0: _Text()}
        self.calls: dict[int, list[FunctionCall]] = {0: []}
        self.finish: dict[int, str | None] = {0: None}
        self.usage: CompletionUsage | None = None
        self.request_id: str | None = None
        self.chunks = 0  # delivered chunks (telemetry: time per output chunk)
        # Characters of text, reasoning and tool arguments folded in: the emitter weighs
        # what waits in the pipe by it (see DEFAULT_BUFFER_BYTES).
        self.chars = 0
        # Provider items per choice (rare: thinking signatures and the like), made on demand.
        self.items: dict[int, list[ProviderItem]] | None = None

    def add(self, batch: Sequence[ChatChunk]) -> list[FunctionCall] | None:
        """Fold ``batch`` in; return the tool calls it completed, if any."""
        text, reasoning = self.text, self.reasoning
        new: list[FunctionCall] | None = None
        self.chunks += len(batch)
        chars = self.chars
        for chunk in batch:
            if chunk.usage is not None:
                self.usage = chunk.usage
            for choice in chunk.choices:
                delta = choice.delta
                index = choice.index
                if index not in text:
                    text[index] = _Text()
                    reasoning[index] = _Text()
                    self.calls[index] = []
                    self.finish[index] = None
                # Inline _Text appends (see _Text): join only the last run, never the whole.
                content = delta.content
                if content:
                    chars += len(content)
                    part = text[index]
                    run = part.run
                    run.append(content)
                    if len(run) >= _COMPACT_AT:
                        part.blocks.append("".join(run))
                        run.clear()
                content = delta.reasoning
                if content:
                    chars += len(content)
                    part = reasoning[index]
                    run = part.run
                    run.append(content)
                    if len(run) >= _COMPACT_AT:
                        part.blocks.append("".join(run))
                        run.clear()
                if delta.tool_calls:
                    for call in delta.tool_calls:
                        chars += len(call.arguments)
                    self.calls[index].extend(delta.tool_calls)
                    if new is None:
                        new = []
                    new.extend(delta.tool_calls)
                if delta.provider_items:
                    if self.items is None:
                        self.items = {}
                    self.items.setdefault(index, []).extend(delta.provider_items)
                if choice.finish_reason is not None:
                    self.finish[index] = choice.finish_reason
        self.chars = chars
        if batch and self.request_id is None:
            self.request_id = batch[0].request_id
        return new

    def all_calls(self) -> list[FunctionCall]:
        return [call for index in sorted(self.calls) for call in self.calls[index]]

    def collected(self, *, partial: bool = False) -> CollectedResponse:
        items = self.items or {}
        choices = tuple(
            CollectedChoice(
                index=index,
                text=self.text[index].joined(),
                reasoning=self.reasoning[index].joined(),
                function_calls=tuple(self.calls[index]),
                finish_reason=None if partial else self.finish[index],
                provider_items=tuple(items.get(index, ())),
            )
            for index in sorted(self.text)
        )
        first = choices[0]
        return CollectedResponse(
            text=first.text,
            reasoning=first.reasoning,
            function_calls=first.function_calls,
            usage=self.usage,
            finish_reason=first.finish_reason,
            request_id=self.request_id,
            choices=choices,
            provider_items=first.provider_items,
        )


class _AttemptEmitter:
    """What a provider's attempt gets: it can send chunks and nothing else.

    Tracks the attempt's commit state, usage and request id, and holds back non-visible chunks
    until the commit. Time limits are checked by the supervisor task, which sleeps until the
    nearest limit and calls :meth:`check_limits`: the per-chunk path only records the time,
    because moving a cancel scope's deadline on every chunk costs more than everything else
    the emitter does.

    Committed is a fact of what the consumer took. A time limit (or the consumer leaving) can
    cancel the attempt in the very scheduler batch in which the consumer takes the first
    visible chunks: the producer's wait then ends with ``Cancelled`` although the chunks were
    delivered. So the bookkeeping of a delivery (fold into the response, usage, eager tool
    starts, the commit, ``first_visible_at``) runs in a ``finally`` whenever the pipe says the
    consumer took the batch, however the wait ended, and never when it did not; a cancelled
    attempt whose output was taken is committed and is never retried.
    """

    __slots__ = (
        "_acc",
        "_handing_visible",
        "_held",
        "_idle",
        "_now",
        "_paused",
        "_pipe",
        "_scope",
        "_stream",
        "broken",
        "committed",
        "ended_at",
        "finished",
        "finished_empty",
        "fired",
        "first_event_deadline",
        "first_token_deadline",
        "first_visible_at",
        "last_chunk_at",
        "last_send_at",
        "lost",
        "number",
        "position",
        "provider",
        "request_id",
        "started_at",
        "timeouts",
        "usage",
    )

    def __init__(
        self,
        stream: LLMStream,
        pipe: Pipe[ChatChunk],
        scope: trio.CancelScope,
        timeouts: Timeouts,
        *,
        number: int = 0,
        provider: LLM | None = None,
        position: int = 0,
    ) -> None:
        self._stream = stream
        self._acc = stream._acc
        self._pipe = pipe
        self._scope = scope
        self.number = number
        self.provider = stream._llm if provider is None else provider
        self.position = position  # in the stream's route (see _fallback.py)
        # Another attempt won the commit point and cancelled this one (see _arbiter.py).
        self.lost = False
        # Finished without visible output, waiting to win by default (see _arbiter.py).
        self.finished_empty = False
        self.ended_at: float | None = None
        # Set up failed (the caller's timeouts function raised): the attempt fails with it.
        self.broken: Exception | None = None
        self._held: list[ChatChunk] = []
        self._paused = False
        # Visible output is being handed over (or was): the first-token limit is met.
        self._handing_visible = False
        self.timeouts = timeouts
        self._idle = math.inf if timeouts.idle is None else timeouts.idle
        self.committed = False
        # The provider returned and the consumer has taken everything: the attempt succeeded,
        # even if a limit fired in the same scheduler batch (see finish()).
        self.finished = False
        self.usage: CompletionUsage | None = None
        self.request_id: str | None = None
        self.first_visible_at: float | None = None
        self.last_chunk_at: float | None = None
        # The last progress (a send), restarted when a wait for the consumer ends; None
        # before the first send: the idle limit runs only from the first event on.
        self.last_send_at: float | None = None
        self.fired: tuple[TimeoutLimit, float] | None = None
        # The clock's own method: trio.current_time() goes through two more calls per chunk.
        self._now = trio.lowlevel.current_clock().current_time
        now = self.started_at = self._now()
        self.first_event_deadline = (
            math.inf if timeouts.first_event is None else now + timeouts.first_event
        )
        self.first_token_deadline = (
            math.inf if timeouts.first_token is None else now + timeouts.first_token
        )

    def check_limits(self, now: float) -> float:
        """Fire a limit that has passed (cancel the attempt) or return when to look again.

        Called by the supervisor task. The deadline it slept until may be stale (progress was
        made since), so it is recomputed here. While the emitter waits for the consumer no
        limit runs (backpressure is not the server being slow): look again one idle period
        later, which is early enough because the idle clock restarts when the wait ends.
        """
        if self.fired is not None:
            return math.inf
        if self._paused:
            return now + self._idle
        # Ties go to the most specific limit: nothing at all arrived, then silence, then
        # no visible output.
        if self.last_send_at is None:
            deadline: float = self.first_event_deadline
            limit: TimeoutLimit = "first_event"
            seconds = self.timeouts.first_event
        else:
            deadline, limit, seconds = self.last_send_at + self._idle, "idle", self._idle
        if not self._handing_visible and self.first_token_deadline < deadline:
            deadline, limit, seconds = (
                self.first_token_deadline, "first_token", self.timeouts.first_token
            )
        if deadline <= now:
            assert seconds is not None
            self.fired = (limit, seconds)
            self._scope.cancel()
            return math.inf
        if self.last_send_at is None:
            # The first send may come any moment and start the idle clock, whose deadline
            # can be earlier than this one: look again no later than one idle period on.
            return min(deadline, now + self._idle)
        return deadline

    async def send(self, chunks: Sequence[ChatChunk]) -> None:
        # The hot path: once per network read that completed a data event. After the commit
        # point the chunks go into the pipe without a checkpoint; only a full pipe makes the
        # producer wait.
        self.last_send_at = now = self._now()
        if not chunks:
            return
        self.last_chunk_at = now
        if self.committed:
            # Accounted for and put before any checkpoint: what is in the pipe reaches the
            # consumer (a closed pipe still hands over what is pending), so a cancellation
            # in the backpressure wait below loses no bookkeeping. (``_accept`` inline: this
            # runs once per read.) The weight toward the pipe's byte bound: a fixed estimate
            # per chunk plus the characters it carried.
            acc = self._acc
            chars = acc.chars
            calls = acc.add(chunks)
            if acc.usage is not None:
                self.usage = acc.usage
            if calls is not None:
                self._stream._on_calls_delivered(calls)
            if self._pipe.offer(chunks, _CHUNK_BYTES * len(chunks) + acc.chars - chars):
                await self._wait_taken(None)
            return
        if self.request_id is None:
            self.request_id = chunks[0].request_id
        for chunk in chunks:
            if chunk.usage is not None:
                self.usage = chunk.usage
        if any(chunk.is_visible for chunk in chunks):
            self._handing_visible = True
            arbiter = self._stream._arbiter
            # One attempt at a time may hand output over before the commit (_arbiter.py).
            if not arbiter.try_acquire(self):
                # Another attempt is handing over: wait like backpressure (no limit runs).
                self._paused = True
                try:
                    await arbiter.acquire(self)
                except BaseException:
                    self._handing_visible = False
                    raise
                finally:
                    self._paused = False
                    self.last_send_at = self._now()
            try:
                batch, self._held = self._held + list(chunks), []
                await self._deliver_visible(batch, visible_at=now)
            finally:
                arbiter.release()
        else:
            self._held.extend(chunks)
            if len(self._held) > MAX_HELD_CHUNKS:
                raise StreamProtocolError(
                    f"more than {MAX_HELD_CHUNKS} chunks without any visible output"
                )

    async def _deliver_visible(self, batch: list[ChatChunk], *, visible_at: float) -> None:
        """Hand ``batch``, which holds the attempt's first visible output (produced at
        ``visible_at``), over and return once the consumer has taken it, which commits the
        attempt; if cancelled before that, take it back (it was never delivered)."""
        pipe = self._pipe
        position = pipe.put_nowait(batch)
        try:
            await self._wait_taken(pipe.pending - len(batch))
        finally:
            # Not ``else``: the consumer may have taken the batch in the same scheduler batch
            # in which a cancellation landed on this wait. What it took is delivered.
            if pipe.taken(position):
                self._accept(batch)
                self.first_visible_at = visible_at
                self.committed = True
                self._stream._on_commit(self)
            else:
                self._handing_visible = False

    async def _wait_taken(self, take_back: int | None) -> None:
        # Waiting for the consumer is backpressure, not a slow server: no limit runs, and the
        # idle clock restarts when the consumer has taken the chunks.
        self._paused = True
        try:
            await self._pipe.wait_taken(take_back=take_back)
        finally:
            self._paused = False
            self.last_send_at = self._now()
        # The consumer may have taken the chunks in the very scheduler batch in which the
        # attempt was cancelled (the consumer left, a limit fired): the wait then ends without
        # Cancelled. Raise it here, after the delivery's bookkeeping (the callers' ``finally``),
        # so that the provider stops before its next read. This is the only place a send can
        # be woken without a cancellation check, so providers need no check of their own
        # between reads (a trio socket read checks on its own).
        await trio.lowlevel.checkpoint_if_cancelled()

    def _accept(self, batch: Sequence[ChatChunk]) -> None:
        """``batch`` is delivered: fold it into the response (and this attempt's usage).

        Never checkpoints and never raises on a well-formed batch: it runs in ``finally``
        blocks while a cancellation propagates.
        """
        acc = self._acc
        calls = acc.add(batch)
        if acc.usage is not None:
            self.usage = acc.usage
        if calls is not None:
            self._stream._on_calls_delivered(calls)

    async def finish(self) -> None:
        """The attempt succeeded: deliver what was held back (an output-less response).

        No time limit applies from here: the response is complete, and its last chunks only
        wait for the consumer. (So only the stream's own cancellation, the consumer leaving,
        can interrupt this wait, and that ends the stream: no retry can repeat these chunks.)
        """
        self.first_token_deadline = math.inf
        self.first_event_deadline = math.inf
        self._idle = math.inf
        if not self.committed:
            # An empty response cannot win while another attempt may still produce output
            # (returns at once when this is the only attempt).
            await self._stream._arbiter.win_empty(self)
        if not self._held:
            self.finished = True
            return
        batch, self._held = self._held, []
        pipe = self._pipe
        position = pipe.put_nowait(batch)
        try:
            await self._wait_taken(pipe.pending - len(batch))
        finally:
            # A limit that fired just before the provider returned cancels this wait; if the
            # consumer took the batch anyway, the response is delivered whole: a success,
            # never retried (a retry would repeat these chunks).
            if pipe.taken(position):
                self._accept(batch)
                self.finished = True

    def lose(self) -> None:
        """Another attempt won the commit point: cancel this one (its connection closes)."""
        self.lost = True
        self._scope.cancel()


@attrs.frozen
class _StreamEnd:
    status: StreamStatus
    error: BaseException | None
    first_visible_at: float | None
    last_chunk_at: float | None


@attrs.frozen(eq=False)
class _Outcome:
    """How one attempt ended, reported by its task to the decision loop."""

    emitter: _AttemptEmitter
    error: BaseException | None
    lost: bool  # cancelled because another attempt won the commit point


_Observation = _AttemptEmitter | tuple[_AttemptEmitter, AttemptMetrics] | _StreamEnd


@final
class LLMStream(metaclass=NoPublicConstructor):
    """A streaming chat completion: an async iterator of ``ChatChunk``.

    Only ``open_llm_stream`` makes one; it lives inside that block. The
    stream's error, if any, is raised once from iteration as one typed exception, after every
    chunk delivered before it. After iteration: ``collect()``, ``function_calls``, ``metrics``,
    ``status``.

    Status, exactly one per stream, settled by what the consumer received:

    - ``COMPLETED``: the response ended properly and the consumer's iteration reached the end;
    - ``TRUNCATED``: the last attempt's response ended without ``[DONE]`` or a finish reason,
      and the consumer received the error: ``StreamTruncatedError`` (nothing was delivered and
      no retry was left), ``RetriesExhaustedError`` (retries ran out, the last one truncated)
      or ``StreamInterrupted`` (after output);
    - ``FAILED``: another error ended the stream and the consumer received it;
    - ``CANCELLED``: the consumer left before receiving the end, by ``break``, an exception,
      outside cancellation or ``aclose()``, even if the response had fully arrived (then
      ``error`` is None; each attempt's own error stays in ``metrics.attempts``).

    Until then ``status`` is ``RUNNING`` (and reading ``metrics`` is a ``RuntimeError``).
    """

    _made_by = "open_llm_stream()"

    def __init__(
        self,
        *,
        llm: LLM,
        request: ChatRequest,
        conn_options: APIConnectOptions,
        tools: Mapping[str, FunctionTool[..., Any]],
        tool_options: ToolOptions = DEFAULT_TOOL_OPTIONS,
        on_metrics: Sequence[MetricsCallback],
        buffer_size: int,
        rng: random.Random,
        hedge: Hedge | None = None,
        hold: bool = False,
    ) -> None:
        self._llm = llm
        self._request = request
        self._options = conn_options
        self._tools = tools
        self._tool_options = tool_options
        self._spec_names = frozenset(spec.name for spec in request.tools)
        # Eager execution only makes sense when the stream has something to run.
        self._eager = tool_options.eager and bool(tools)
        self._limiter = (
            None
            if tool_options.max_concurrency is None
            else trio.CapacityLimiter(tool_options.max_concurrency)
        )
        self._on_metrics = tuple(on_metrics)
        self._rng = rng
        self._pipe = Pipe[ChatChunk](buffer_size, DEFAULT_BUFFER_BYTES)
        self._buf: list[ChatChunk] = []
        self._pos = 0
        self._acc = _Accumulator()
        self._status = StreamStatus.RUNNING
        self._failure: InBandError[BaseException] = InBandError()
        self._closed = False
        self._metrics: LLMMetrics | None = None
        self._finished = trio.Event()
        # The stream's fate is settled once the consumer has received the end, or has left
        # (block exit, aclose()); until then a stream whose attempts are over is still RUNNING
        # (see the class docstring: the break rule).
        self._settled = trio.Event()
        self._end_received = False
        # Once the stream is stopped: the deadline of tool calls started from then on (-inf:
        # cancelled at once), so a call delivered in the same batch as the stop obeys it too.
        self._tool_stop: float | None = None
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._handles: dict[str, ToolCallHandle] = {}
        self._tool_scopes: set[trio.CancelScope] = set()
        self._started_at = 0.0
        self._committed_at: float | None = None
        self._route = route_for(llm)
        self._arbiter = Arbiter()
        self._attempts_started = 0
        self._hedge = hedge
        # Held streams: set by adopt() or discard(); iteration waits for it.
        self._gate: trio.Event | None = trio.Event() if hold else None
        self._adopted = False
        self._discarded = False
        # Built here, in the caller's task: its current span is the stream span's parent.
        self._telemetry = open_stream_telemetry(llm, request)

    # -- consumer side -------------------------------------------------------------------------

    def __aiter__(self) -> LLMStream:
        return self

    async def __anext__(self) -> ChatChunk:
        """The next chunk. Raises the stream's error once, after the chunks before it.

        One task iterates a stream at a time: a second task calling this while another waits
        in it gets ``trio.BusyResourceError`` (trio's error for concurrent use of a stream).
        Cancellation: cancelling a waiting ``__anext__`` loses nothing; the next call resumes.
        """
        pos = self._pos
        buf = self._buf
        if pos < len(buf):
            self._pos = pos + 1
            return buf[pos]
        if buf:
            # Let the batch just iterated die now, not when the next one arrives: across a
            # wait for the producer it would outlive a scheduler batch (with many streams,
            # every stream's last batch at once: memory, and GC work on survivors).
            self._buf = buf = []
            self._pos = 0
        gate = self._gate
        if gate is not None and not gate.is_set():
            await gate.wait()  # held: nothing until adopt() or discard()
        batch = None if self._closed else await self._pipe.get()
        if batch is None:
            if not self._closed:
                # The consumer has reached the end: the stream's ending is what it gets.
                self._end_received = True
                self._settled.set()
            await self._finished.wait()
            self._failure.raise_once(closed=self._closed)
            raise StopAsyncIteration
        self._buf = batch
        self._pos = 1
        return batch[0]

    async def collect(self) -> CollectedResponse:
        """Consume the rest of the stream and return the whole response.

        Raises the stream's error (e.g. ``StreamInterrupted`` with the partial output). If the
        error was already raised from iteration, returns what was delivered instead.
        Cancellation: stops waiting; the stream itself goes on until the block exits.
        """
        async for _ in self:
            pass
        return self._acc.collected(partial=self._status is not StreamStatus.COMPLETED)

    async def aclose(self) -> None:
        """Stop the stream now: cancel the attempt and tool calls; metrics are delivered.

        The stream is ``CANCELLED`` unless the consumer had already received its end.
        Idempotent. Waits (briefly) for the stream's tasks to wind down; cancelling this wait
        leaves the block's exit to finish the job.
        """
        self._cancel()
        await self._finished.wait()

    async def adopt(self) -> None:
        """Adopt a held stream (``open_llm_stream(..., hold=True)``): from now on it delivers
        like any stream, starting with what it buffered, and starts its tool calls as they
        are delivered. Idempotent. Raises ``RuntimeError`` for a stream that is not held or
        was discarded.

        Cancellation: a checkpoint only; cancelled, the stream is adopted all the same.
        """
        if self._gate is None:
            raise RuntimeError("adopt() is for streams opened with hold=True")
        if self._discarded:
            raise RuntimeError("the stream was discarded")
        self._adopted = True
        self._gate.set()
        await trio.lowlevel.checkpoint()

    async def discard(self) -> None:
        """Throw a held stream away before adopting it: cancel its attempts (closing the
        connection if it is still open) and record it once as ``DISCARDED``, with the usage
        of its attempts. Iteration ends (nothing was delivered). Idempotent. Raises
        ``RuntimeError`` for a stream that is not held or was already adopted (use
        ``aclose()``).

        Cancellation: as ``aclose()``: cancelling the wait leaves the block's exit to finish.
        """
        if self._gate is None:
            raise RuntimeError("discard() is for streams opened with hold=True")
        if self._adopted:
            raise RuntimeError("the stream was adopted; use aclose() to stop it")
        if not self._discarded and self._status is StreamStatus.RUNNING:
            self._discarded = True
            self._buf = []
            self._closed = True
            self._cancel()
        self._gate.set()
        await self._finished.wait()

    @property
    def held(self) -> bool:
        """Whether the stream is held: opened with ``hold=True`` and not adopted yet."""
        return self._gate is not None and not self._adopted

    @property
    def status(self) -> StreamStatus:
        """``RUNNING`` until the stream's ending is settled, then its one terminal status (see
        the class docstring: the consumer must receive the end, or it is ``CANCELLED``)."""
        return self._status

    @property
    def error(self) -> BaseException | None:
        """The error that ended the stream, if any."""
        return self._failure.error

    @property
    def metrics(self) -> LLMMetrics:
        """The stream's one metrics record. It exists once the stream has ended, which is
        always true after the ``async with`` block; reading it earlier is a ``RuntimeError``
        (use ``on_metrics`` to hear of it the moment it is made)."""
        if self._metrics is None:
            raise RuntimeError(
                "stream.metrics exists once the stream has ended: read it after the "
                "async with block, or pass on_metrics="
            )
        return self._metrics

    @property
    def request(self) -> ChatRequest:
        return self._request

    @property
    def function_calls(self) -> list[FunctionCall]:
        """Complete tool calls delivered so far, in choice and arrival order."""
        return self._acc.all_calls()

    def execute_functions(self) -> list[ToolCallHandle]:
        """Start every delivered function call not started yet, in the stream's nursery.

        Returns a handle per call, in the order the model issued them (calls already started,
        eagerly or by an earlier call, return their existing handle: a call never runs twice).
        Calls still running when the block exits are cancelled (or waited for, per
        ``ToolOptions.on_exit``) and report ``cancelled``. Raises ``RuntimeError`` once the
        stream's block has exited or ``aclose()`` was called.
        """
        if self._nursery is None or self._scope.cancel_called:
            raise RuntimeError("execute_functions() needs the stream's block to be open")
        return [self._start_call(call) for call in self.function_calls]

    @property
    def tool_handles(self) -> list[ToolCallHandle]:
        """Handles of the calls started so far, in the order they were started."""
        return list(self._handles.values())

    async def wait_for_tools(self) -> list[ToolOutcome]:
        """Wait for every started call to have its outcome; return them in start order.

        Cancellation: stops the waiting only; the calls go on until the block exits.
        """
        return [await handle.wait() for handle in list(self._handles.values())]

    def _start_call(self, call: FunctionCall) -> ToolCallHandle:
        handle = self._handles.get(call.call_id)
        if handle is None:
            assert self._nursery is not None
            handle = self._handles[call.call_id] = ToolCallHandle(call)
            scope = trio.CancelScope()
            if self._tool_stop is not None:
                # Delivered as the stream stops (the consumer took the call in the batch in
                # which it left): the call obeys the stop like the calls before it.
                scope.deadline = self._tool_stop
            self._tool_scopes.add(scope)
            self._nursery.start_soon(self._run_tool, handle, scope)
            on_start = self._tool_options.on_start
            if on_start is not None:
                try:
                    on_start(handle)
                except Exception:
                    logger.exception("ToolOptions.on_start callback %r raised; ignored", on_start)
        return handle

    def _on_calls_delivered(self, calls: list[FunctionCall]) -> None:
        # Eager execution starts a call once the consumer has received it complete: never a
        # call the consumer did not see, never one from an attempt that is later retried.
        if not self._eager:
            return
        for call in calls:
            if call.name in self._tools or call.name not in self._spec_names:
                self._start_call(call)

    # -- producer side -------------------------------------------------------------------------

    def _on_commit(self, emitter: _AttemptEmitter) -> None:
        if self._committed_at is None:
            self._committed_at = trio.current_time()
        # The attempt won: every other attempt is cancelled now, in this very step.
        self._arbiter.commit(emitter)

    async def _run(self) -> None:
        """The attempt loop inside the stream's own cancel scope (``aclose`` cancels it)."""
        obs_send, obs_recv = trio.open_memory_channel[_Observation](
            2 * self._options.max_attempts + 2
        )
        assert self._nursery is not None
        self._nursery.start_soon(self._supervise, obs_recv)
        with self._scope, self._telemetry.activate():
            await self._attempt_loop(obs_send)

    def _cancel(self, *, exiting: bool = False) -> None:
        self._scope.cancel()
        self._settled.set()  # the consumer left (unless it had received the end already)
        options = self._tool_options
        if exiting and options.on_exit == "wait":
            stop = trio.current_time() + options.grace_period
        else:
            stop = -math.inf
        self._tool_stop = stop if self._tool_stop is None else min(stop, self._tool_stop)
        for scope in self._tool_scopes:
            scope.deadline = min(scope.deadline, self._tool_stop)

    def _exit(self, _body_exc: BaseException | None) -> None:
        self._cancel(exiting=True)
        # The block is over: so is iteration, even over chunks taken but not yet seen; the
        # error, if any, stays on ``stream.error``.
        self._buf = []
        self._closed = True

    async def _run_tool(self, handle: ToolCallHandle, scope: trio.CancelScope) -> None:
        # The scope was registered before this task was started, so a stream cancelled in
        # between still cancels the call (a scope cancelled before entry is entered cancelled).
        tool = self._tools.get(handle.call.name)
        span = self._telemetry.tool_started(
            handle.call, description=tool.description if tool is not None else None
        )
        try:
            with scope, span:
                await run_tool_call(
                    handle,
                    self._tools,
                    default_timeout=self._tool_options.timeout,
                    limiter=self._limiter,
                )
        finally:
            span.finished(handle.outcome)
            self._tool_scopes.discard(scope)

    async def _attempt_loop(self, obs: trio.MemorySendChannel[_Observation]) -> None:
        """The decision loop: start attempts, hear how each ended, decide what comes next.

        Without a hedge one attempt runs at a time, in this task (:meth:`_one_attempt`
        returns its outcome); with one, attempts run as tasks of a nursery inside the stream's
        scope and report their outcomes on a channel. Either way the loop alone decides
        (:meth:`_decide`: the stream completed, it gives up, or the next attempt starts after
        the backoff when the route wraps; with a hedge, also one more attempt beside the
        running ones), it alone records attempts, so each is recorded exactly once, also when
        the stream is cancelled, and it closes the pipe once, after the last attempt.
        """
        self._started_at = trio.current_time()
        errors: list[APIError] = []
        live: list[_AttemptEmitter] = []  # started, not yet recorded
        end: _StreamEnd | None = None
        outcomes: trio.MemoryReceiveChannel[_Outcome] | None = None

        def begin(position: int) -> _AttemptEmitter:
            emitter = self._new_attempt(position)
            live.append(emitter)
            obs.send_nowait(emitter)  # the supervisor keeps its time limits
            return emitter

        async with obs:
            try:
                if self._hedge is None:
                    # One attempt at a time, in this task: no task or channel per stream.
                    position: int | None = 0
                    while end is None:
                        assert position is not None
                        outcome = await self._one_attempt(begin(position))
                        live.remove(outcome.emitter)
                        end, position = await self._decide(outcome, live, errors, obs)
                else:
                    report, outcomes = trio.open_memory_channel[_Outcome](
                        self._options.max_attempts
                    )
                    async with trio.open_nursery() as attempts:

                        def start(position: int) -> None:
                            attempts.start_soon(self._attempt_task, begin(position), report)

                        start(0)
                        while end is None:
                            arrived: _Outcome | None = None
                            with trio.move_on_at(self._hedge_at(live)):
                                arrived = await outcomes.receive()
                            if arrived is None:  # a hedge is due (if it still is)
                                if self._hedge_at(live) <= trio.current_time():
                                    start(self._route.next_after(live[-1].position)[0] or 0)
                                continue
                            live.remove(arrived.emitter)
                            # Outside the hedge's deadline: a backoff is never cut short.
                            end, position = await self._decide(arrived, live, errors, obs)
                            if position is not None:
                                start(position)
                        attempts.cancel_scope.cancel()  # attempts that lost the race
            except BaseException:
                # Cancelled (the consumer left, aclose(), discard(), the caller's scope):
                # end as cancelled, unless the stream had already ended.
                if end is None:
                    ref = self._arbiter.winner or (live[-1] if live else None)
                    assert ref is None or isinstance(ref, _AttemptEmitter)
                    end = _StreamEnd(
                        StreamStatus.CANCELLED, None,
                        ref.first_visible_at if ref else None,
                        ref.last_chunk_at if ref else None,
                    )
                raise
            finally:
                # Attempts still unrecorded (they lost, or the stream was cancelled): their
                # outcome if they reported one, else cancelled in flight.
                while outcomes is not None:
                    try:
                        leftover = outcomes.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if leftover.emitter in live:
                        live.remove(leftover.emitter)
                        self._record(obs, leftover.emitter, error=leftover.error)
                for emitter in live:
                    self._record(obs, emitter)
                assert end is not None
                self._pipe.close()  # the consumer gets what is pending, then the end
                obs.send_nowait(end)

    def _new_attempt(self, position: int) -> _AttemptEmitter:
        number = self._attempts_started
        self._attempts_started += 1
        route = self._route
        broken: Exception | None = None
        try:
            timeouts = route.timeouts(position, number, self._options)
        except Exception as exc:  # the caller's timeouts function: fails this attempt, in band
            timeouts, broken = _NO_TIMEOUTS, exc
        emitter = _AttemptEmitter(
            self, self._pipe, trio.CancelScope(), timeouts,
            number=number, provider=route.provider(position), position=position,
        )
        emitter.broken = broken
        self._arbiter.enter(emitter)
        return emitter

    async def _attempt_task(
        self, emitter: _AttemptEmitter, report: trio.MemorySendChannel[_Outcome]
    ) -> None:
        report.send_nowait(await self._one_attempt(emitter))

    async def _one_attempt(self, emitter: _AttemptEmitter) -> _Outcome:
        """Run one attempt to its outcome: success (``error`` None), its error, a fired time
        limit (``APITimeoutError``) or lost (another attempt won the commit point).

        Cancellation: the stream's cancellation propagates (the loop records the attempt as
        cancelled in flight); only the supervisor (a time limit) and the arbiter (a lost
        race) cancel the attempt's own scope, and those are outcomes.
        """
        error: BaseException | None = None
        scope = emitter._scope
        try:
            with scope:
                try:
                    if emitter.broken is not None:
                        raise emitter.broken
                    await emitter.provider.run_attempt(
                        self._request, AttemptInfo(emitter.number, emitter.timeouts), emitter
                    )
                    await emitter.finish()
                except Exception as exc:
                    error = exc
        finally:
            emitter.ended_at = trio.current_time()
            # A bug ends the stream (decide_next never retries one): no attempt that finished
            # empty may win in its place meanwhile (_arbiter.py, "What cannot win").
            self._arbiter.leave(
                emitter, bug=error is not None and not isinstance(error, APIError)
            )
        if scope.cancelled_caught and error is None and not emitter.finished:
            if emitter.lost:
                return _Outcome(emitter, None, lost=True)
            # Only the supervisor cancels this scope otherwise, and it says why first.
            assert emitter.fired is not None
            limit, seconds = emitter.fired
            error = APITimeoutError(limit, seconds, request_id=emitter.request_id)
        return _Outcome(emitter, error, lost=False)

    async def _decide(
        self,
        outcome: _Outcome,
        live: list[_AttemptEmitter],
        errors: list[APIError],
        obs: trio.MemorySendChannel[_Observation],
    ) -> tuple[_StreamEnd | None, int | None]:
        """What follows ``outcome``: the stream's end, or the route position of the next
        attempt (the backoff already slept), or neither (hedged attempts are still running
        and carry on)."""
        emitter, error, route = outcome.emitter, outcome.error, self._route
        winner = self._arbiter.winner
        if outcome.lost or (winner is not None and winner is not emitter):
            # Lost the race (or ended as it was lost): the winner decides the stream.
            if error is not None:
                route.failed(emitter.position, error)
            self._record(obs, emitter, error=error)
            return None, None
        if error is None:
            route.succeeded(emitter.position)
            self._record(obs, emitter)
            return _StreamEnd(
                StreamStatus.COMPLETED, None, emitter.first_visible_at, emitter.last_chunk_at
            ), None
        route.failed(emitter.position, error)
        if isinstance(error, APIError):
            errors.append(error)
            if live and not emitter.committed:
                # Hedged attempts are still running: they are the retry.
                self._record(obs, emitter, error=error)
                return None, None
        position, step = route.next_after(emitter.position)
        decision = decide_next(
            self._options,
            attempt=self._attempts_started - 1,
            error=error,
            committed=emitter.committed,
            step=step,
            round=route.wraps,
            time_left=trio.current_effective_deadline() - trio.current_time(),
            rng=self._rng,
        )
        if not isinstance(decision, Retry):
            self._record(obs, emitter, error=error)
            return self._give_up(error, errors, emitter, decision.reason), None
        self._record(obs, emitter, error=error, backoff=decision.delay)
        if step == "wrap":
            logger.info(
                "%s: attempt %d failed (%s: %s); retrying in %.3fs",
                emitter.provider.label, emitter.number + 1, type(error).__name__, error,
                decision.delay,
            )
        else:
            assert position is not None
            logger.info(
                "%s: attempt %d failed (%s: %s); moving on to %s",
                emitter.provider.label, emitter.number + 1, type(error).__name__, error,
                route.provider(position).label,
            )
        if step == "wrap":
            route.wraps += 1
        await trio.sleep(decision.delay)
        return None, position

    def _hedge_at(self, live: list[_AttemptEmitter]) -> float:
        """When the next hedged attempt is due (inf: none is)."""
        hedge = self._hedge
        if (
            hedge is None
            or not live
            or len(live) >= hedge.max_in_flight
            or self._attempts_started >= self._options.max_attempts
            or self._arbiter.winner is not None
            or self._route.next_after(live[-1].position)[0] is None
        ):
            return math.inf
        for emitter in live:
            # Output in hand (a slow consumer, a held stream) or an empty response waiting:
            # a new attempt could not win sooner. Re-armed by the next outcome.
            if emitter._handing_visible or emitter.finished_empty:
                return math.inf
        return live[-1].started_at + hedge.after

    def _give_up(
        self,
        error: BaseException,
        errors: list[APIError],
        emitter: _AttemptEmitter,
        reason: str,
    ) -> _StreamEnd:
        final: BaseException
        # The status names how the last attempt ended: a response cut off without its
        # terminal is TRUNCATED whether or not output was delivered and whether or not retries
        # ran out first (the error says which: StreamTruncatedError, StreamInterrupted or
        # RetriesExhaustedError, each with the truncation as the last cause).
        truncated = isinstance(error, StreamTruncatedError)
        status = StreamStatus.TRUNCATED if truncated else StreamStatus.FAILED
        if emitter.committed:
            final = StreamInterrupted(self._acc.collected(partial=True), error)
            final.__cause__ = error
        elif isinstance(error, APIError) and error.retryable and len(errors) > 1:
            final = RetriesExhaustedError(errors, reason=reason)
            final.__cause__ = error
        else:
            final = error
            if len(errors) > 1:
                error.add_note(f"after {len(errors)} attempts; earlier errors: {errors[:-1]!r}")
        return _StreamEnd(status, final, emitter.first_visible_at, emitter.last_chunk_at)

    def _record(
        self,
        obs: trio.MemorySendChannel[_Observation],
        emitter: _AttemptEmitter,
        *,
        error: BaseException | None = None,
        backoff: float = 0.0,
    ) -> None:
        """Send the supervisor the one record of ``emitter``'s attempt."""
        ended = emitter.ended_at if emitter.ended_at is not None else trio.current_time()
        record = AttemptMetrics(
            attempt=emitter.number,
            request_id=emitter.request_id or getattr(error, "request_id", None),
            duration=ended - emitter.started_at,
            error=error,
            usage=emitter.usage,
            backoff=backoff,
            committed=emitter.committed,
            label=emitter.provider.label,
        )
        obs.send_nowait((emitter, record))

    async def _supervise(self, obs: trio.MemoryReceiveChannel[_Observation]) -> None:
        """The metrics consumer, which also keeps the running attempt's time limits.

        It receives observations from the attempt loop (each attempt's emitter as it starts,
        each attempt's record as it ends, the stream's end) and, between them, sleeps until
        the running attempt's nearest time limit. When the loop closes the channel it builds
        and delivers the one metrics record.

        Shielded: it only waits for the loop, which always closes the channel when it ends
        (it is cancelled with everything else), so it cannot hang; and it must run to the end
        to deliver metrics exactly once, also on cancellation.
        """
        attempts: list[AttemptMetrics] = []
        end: _StreamEnd | None = None
        running: list[_AttemptEmitter] = []  # several while a hedge runs
        wake = math.inf
        with trio.CancelScope(shield=True):
            async with obs:
                while True:
                    with trio.move_on_at(wake):
                        try:
                            item = await obs.receive()
                        except trio.EndOfChannel:
                            break
                        if isinstance(item, _AttemptEmitter):
                            running.append(item)
                        elif isinstance(item, tuple):
                            emitter, record = item
                            attempts.append(record)
                            if emitter in running:
                                running.remove(emitter)
                            provider = emitter.provider
                            if provider is self._llm:
                                self._telemetry.attempt_finished(record)
                            else:
                                self._telemetry.attempt_finished(record, provider)
                        else:
                            end = item
                    now = trio.current_time()
                    wake = min((e.check_limits(now) for e in running), default=math.inf)
            # The attempts are over; the stream's ending is decided by what the consumer
            # receives (the break rule). Cannot hang: the block's exit settles it.
            await self._settled.wait()
            if end is None:  # pragma: no cover - the loop always reports its end
                end = _StreamEnd(StreamStatus.CANCELLED, None, None, None)
            if self._discarded:
                # Held and discarded: nothing was delivered; the one ending is DISCARDED.
                end = attrs.evolve(end, status=StreamStatus.DISCARDED, error=None)
            elif end.status is not StreamStatus.CANCELLED and not self._end_received:
                # The consumer left before receiving the end: cancelled, whatever the
                # attempts did (each attempt's own error stays in its AttemptMetrics).
                end = attrs.evolve(end, status=StreamStatus.CANCELLED, error=None)
            self._status = end.status
            self._failure.error = end.error
            try:
                self._metrics = self._build_metrics(attempts, end)
                self._finish_telemetry(self._metrics, end)
                self._deliver_metrics(self._metrics)
            finally:
                self._finished.set()

    def _build_metrics(self, attempts: list[AttemptMetrics], end: _StreamEnd) -> LLMMetrics:
        now = trio.current_time()
        attempts = sorted(attempts, key=lambda a: a.attempt)  # hedges end out of order
        usages = [a.usage for a in attempts if a.usage is not None]
        prompt = sum(u.prompt_tokens for u in usages)
        completion = sum(u.completion_tokens for u in usages)
        total = sum(u.total_tokens for u in usages)
        tps: float | None = None
        served = next((a for a in attempts if a.committed), attempts[-1] if attempts else None)
        last_usage = served.usage if served is not None else None
        if (
            last_usage is not None
            and end.first_visible_at is not None
            and end.last_chunk_at is not None
            and end.last_chunk_at > end.first_visible_at
        ):
            tps = last_usage.completion_tokens / (end.last_chunk_at - end.first_visible_at)
        ttft = None if self._committed_at is None else self._committed_at - self._started_at
        request_ids = tuple(a.request_id for a in attempts if a.request_id is not None)
        return LLMMetrics(
            label=self._llm.label,
            request_ids=request_ids,
            status=end.status,
            attempts=tuple(attempts),
            ttft=ttft,
            duration=now - self._started_at,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            tokens_per_second=tps,
            cancelled=end.status is StreamStatus.CANCELLED,
            error=end.error,
            timestamp=now,
        )

    def _finish_telemetry(self, metrics: LLMMetrics, end: _StreamEnd) -> None:
        telemetry = self._telemetry
        if not telemetry.enabled:
            return
        acc = self._acc
        first, last = end.first_visible_at, end.last_chunk_at
        telemetry.finished(
            metrics,
            finish_reasons=[reason for _, reason in sorted(acc.finish.items()) if reason],
            output_chunks=acc.chunks,
            generation_time=None if first is None or last is None else last - first,
            response=lambda: acc.collected(partial=metrics.status is not StreamStatus.COMPLETED),
        )

    def _deliver_metrics(self, metrics: LLMMetrics) -> None:
        seen: set[int] = set()
        deliveries: list[tuple[MetricsCallback, LLMMetrics]] = [
            (callback, metrics) for callback in (*self._on_metrics, *self._llm.metrics_listeners)
        ]
        if isinstance(self._llm, FallbackLLM):
            # Each provider's own listeners hear of their attempts only (see FallbackLLM).
            for provider in self._llm.llms:
                own = provider.metrics_listeners
                if own:
                    narrowed = _narrow(metrics, provider.label)
                    if narrowed is not None:
                        deliveries.extend((callback, narrowed) for callback in own)
        for callback, record in deliveries:
            if id(callback) in seen:
                continue
            seen.add(id(callback))
            try:
                callback(record)
            except Exception:
                logger.exception("on_metrics callback %r raised; ignored", callback)


def _narrow(metrics: LLMMetrics, label: str) -> LLMMetrics | None:
    """``metrics`` as one provider of a fallback sees it: its attempts only (None if it
    served none)."""
    attempts = tuple(a for a in metrics.attempts if a.label == label)
    if not attempts:
        return None
    usages = [a.usage for a in attempts if a.usage is not None]
    return attrs.evolve(
        metrics,
        label=label,
        attempts=attempts,
        request_ids=tuple(a.request_id for a in attempts if a.request_id is not None),
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        total_tokens=sum(u.total_tokens for u in usages),
    )




def _tool_map(
    tools: Iterable[FunctionTool[..., Any] | ToolSpec | Callable[..., Any]] | None,
) -> tuple[tuple[ToolSpec, ...], dict[str, FunctionTool[..., Any]]]:
    specs: list[ToolSpec] = []
    runnable: dict[str, FunctionTool[..., Any]] = {}
    for tool in tools or ():
        if isinstance(tool, ToolSpec):
            spec = tool
        else:
            function = as_function_tool(tool)
            runnable[function.name] = function
            spec = function.spec
        if any(s.name == spec.name for s in specs):
            raise ValueError(f"duplicate tool name {spec.name!r}")
        specs.append(spec)
    return tuple(specs), runnable


@asynccontextmanager
async def open_llm_stream(
    llm: LLM,
    *,
    chat_ctx: ChatContext,
    tools: Iterable[FunctionTool[..., Any] | ToolSpec | Callable[..., Any]] | None = None,
    tool_choice: ToolChoice | None = None,
    conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    temperature: float | None = None,
    max_tokens: int | None = None,
    n: int | None = None,
    parallel_tool_calls: bool | None = None,
    tool_options: ToolOptions = DEFAULT_TOOL_OPTIONS,
    on_metrics: MetricsCallback | Sequence[MetricsCallback] | None = None,
    extra: Mapping[str, Any] | None = None,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    rng: random.Random | None = None,
    hedge: Hedge | None = None,
    hold: bool = False,
) -> AsyncIterator[LLMStream]:
    """Open a streaming chat completion of ``chat_ctx`` from ``llm``.

    ::

        async with open_llm_stream(llm, chat_ctx=ctx) as stream:
            async for chunk in stream:
                print(chunk.text, end="")

    Nothing starts before the block is entered and nothing outlives it. Parameters:

    - ``llm``: the provider (any ``LLM``; a ``FallbackLLM`` for several, see below);
    - ``chat_ctx``: the conversation so far (copied when the block is entered);
    - ``tools``: ``FunctionTool``s (run by the stream: calls start as soon as they are
      delivered, per ``tool_options``), plain functions (made into tools by
      ``function_tool``) or bare ``ToolSpec``s (only described to the model);
    - ``tool_choice``: ``"auto"``, ``"required"``, ``"none"`` or ``NamedToolChoice(name)``;
    - ``conn_options``: retries (only while no visible output has reached the consumer),
      backoff and the per-attempt time limits (``Timeouts``);
    - ``temperature``, ``max_tokens`` (the most output tokens: each provider's own
      parameter), ``n`` (choices; chat completions and Gemini) and ``parallel_tool_calls``:
      sent when given, else the server's defaults;
    - ``tool_options``: how tool calls run (eagerly, timeouts, concurrency, ``on_start``,
      what leaving the block does to them);
    - ``on_metrics``: callbacks that get the stream's ``LLMMetrics`` exactly once, however
      it ends (besides the LLM's own listeners);
    - ``extra``: more fields for the request body, as the provider's wire format names them;
    - ``buffer_size``: the most chunks that may wait for the consumer *after* the commit
      point (default 1,024); besides, at most about 16 KiB of them by an estimate of their
      memory may wait, which is the bound that applies first to ordinary chunks (~40
      one-token chunks, more than a server's read usually holds, so a read's chunks reach
      the consumer in one hand-off). Past either bound the attempt waits until the consumer
      has taken what waits (backpressure; no time limit runs meanwhile). Before the commit
      point every hand-off waits until the consumer has taken the chunks, so the commit
      point is exact whatever the size; 0 makes every hand-off wait;
    - ``rng``: drives the backoff jitter (for tests);
    - ``hedge`` and ``hold``: below.

    ``llm`` may be a ``FallbackLLM``: the attempts then move through its providers (see
    ``FallbackLLM``); ``max_retry`` is one budget across them.

    ``hedge=Hedge(after=s)``: when the newest attempt has delivered no visible output ``s``
    seconds in, another starts beside it (the next provider of a ``FallbackLLM``, else the
    same LLM), up to ``max_in_flight``; the first whose visible output the consumer takes
    wins and the others are cancelled and recorded. An empty response wins only when no
    other attempt is left that could produce output.

    ``hold=True``: the stream runs but delivers nothing and starts no tool until
    ``await stream.adopt()``; ``await stream.discard()`` throws it away (status
    ``DISCARDED``). Iterating a held stream waits for one of the two. It buffers its chunks up
    to and including its first visible batch, then waits there (backpressure: no time limit
    runs while it waits; the rest of the response waits in the connection); an attempt that
    fails before adoption is retried as usual, invisibly. Leaving the block of a stream never
    adopted nor discarded is a cancellation (``CANCELLED``).

    Cancellation: leaving the block by ``break``, exception or outside cancellation cancels
    the request and tool calls and records the stream as cancelled, unless the consumer had
    already received the end (its iteration ended or raised the stream's error); an
    exception from the block propagates as itself, never wrapped in an ExceptionGroup.
    """
    if buffer_size < 0:
        raise ValueError("buffer_size must be >= 0")
    specs, runnable = _tool_map(tools)
    if callable(on_metrics):
        callbacks: Sequence[MetricsCallback] = (on_metrics,)
    else:
        callbacks = tuple(on_metrics or ())
    request = ChatRequest(
        messages=tuple(chat_ctx.messages),
        tools=specs,
        tool_choice=tool_choice,
        temperature=temperature,
        n=n,
        parallel_tool_calls=parallel_tool_calls,
        extra=dict(extra or {}),
        max_tokens=max_tokens,
    )
    stream = LLMStream._create(
        llm=llm,
        request=request,
        conn_options=conn_options,
        tools=runnable,
        tool_options=tool_options,
        on_metrics=callbacks,
        buffer_size=buffer_size,
        rng=rng or _system_random,
        hedge=hedge,
        hold=hold,
    )
    async with open_owner_nursery(stream._exit) as nursery:
        stream._nursery = nursery
        nursery.start_soon(stream._run)
        yield stream

