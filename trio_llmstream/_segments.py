"""Response segments: one turn made of several responses, with hooks at the moment of delivery.

A voice or chat agent often answers one user turn with several discrete responses: a filler
and then the real answer, or an answer and then a follow-up from a second LLM call. Stages
downstream (text-to-speech, playback, a UI) need to know where each response starts and ends,
and the application needs to act when a *specific* response reaches the user. Guessing with
timers ("80 ms after the agent starts speaking") or sentinel strings in the text (livekit
#4213) is what this module replaces::

    segments = [
        Segment("One moment...", label="filler"),
        Segment(lambda: open_llm_stream(llm, chat_ctx=ctx), id="answer"),
    ]
    async with open_turn(segments) as turn:
        turn.on(SegmentEvent.DELIVERED, show_sources, segment="answer")
        async for item in turn:
            match item:
                case SegmentStart(id=sid): ...
                case SegmentItem(value=chunk): ...
                case SegmentEnd(id=sid): ...

What the consumer receives. For each segment, in order: a ``SegmentStart`` marker, the
segment's items, each wrapped in a ``SegmentItem`` that carries the segment's id, and a
``SegmentEnd`` marker. Markers are typed values, never strings in the text. ``SegmentStart``
is sent lazily, once the segment's source has produced its first item (or ended empty), so
"a segment started" means output for it exists, not merely that a request was sent. A segment
whose source fails gets no ``SegmentEnd``: iteration raises one ``SegmentError`` instead,
after the items already delivered (see Errors).

Sources. A segment's source is opened lazily, in the turn's producer task, only when the
segment's turn comes: a factory (a zero-argument callable, e.g. ``lambda:
open_llm_stream(llm, chat_ctx=ctx)``) returning an async context manager that yields an async
iterable, or returning an async or sync iterable; an un-entered async context manager; an
async iterable (an async generator, an ``LLMStream`` already open); a sync iterable; or a
plain ``str``, which is one item. What the turn opens (factories' results, context managers)
it closes; an iterable it was handed is closed with its ``aclose()``, if it has one, once its
segment is over. A source that is never reached is never opened or touched.

One after another. The first segment's source is opened when the block is entered (as
``open_llm_stream`` sends its request at once). Each later one is opened only when the
consumer, having received the previous segment's ``SegmentEnd``, asks for the next item: a
consumer that interrupts on an end marker never has the next segment started, and in general
an interruption never starts work for a segment behind the one being delivered. (The end
marker being handed over is not enough: the scheduler may run the producer before the
consumer has even looked at it.) ``lookahead=n`` is the explicit opt-in to latency hiding:
while segment ``k`` is delivered, the sources of segments ``k+1 .. k+n`` are opened and read
ahead in tasks of their own, into per-segment buffers of ``lookahead_items`` items.
Their items still reach the consumer in order, and every hook below still fires at the
consumer's receive time; but a read-ahead ``LLMStream`` sees its chunks taken when they enter
the buffer, so it commits (and stops retrying) earlier than its user sees the text.

Exactly when received. The consumer-facing channel has no buffer: the producer's ``send``
returns only once the consumer took the item. The delivery hooks are fired by the consumer's
own ``__anext__``, after the item was received and before it is returned, with no checkpoint in
between: a sync handler runs at the exact (virtual) time the consumer gets the item; an async
one is started as a task at that time. Two events are fired from the consumer side:

- ``DELIVERED``: the consumer received the segment's first *visible* item: a ``ChatChunk`` with
  text, reasoning or a complete tool call (``ChatChunk.is_visible``), a non-empty ``str``, or
  any other value. Role-only, finish-only and usage-only chunks do not count, as they do not
  count for the runtime's commit point either: nothing the user can see arrived yet.
- ``COMPLETED``: the consumer received the segment's ``SegmentEnd``. A segment's end is only
  known when its source ends (an LLM stream's finish and ``[DONE]`` come after its last text),
  so "the last item was received" is defined as "the end marker was received". The source has
  been closed by then (an ``LLMStream``'s metrics were delivered).

A segment that produced no visible item completes without ever being ``DELIVERED``.

Playback acknowledgement. Receiving is not playing: a text-to-speech stage may hold text, a
player may buffer audio. The stage that really plays or shows the output calls
``turn.ack_started(segment)`` and ``turn.ack_finished(segment)`` (with an id, an index or any
marker or item of the segment), which fire ``PLAYBACK_STARTED`` and ``PLAYBACK_FINISHED``
handlers in the caller's task, at that moment. Acks are idempotent (call ``ack_started`` on
every frame played if that is simpler); finishing implies starting. They are accepted even
after the turn's block has exited, because playback often outlives the text that fed it.

Handlers. ``turn.on(event, handler, segment=...)`` registers a handler for one segment (by id
or index) or for all of them. A handler takes a ``SegmentNotice`` (event, segment id, index,
label, time). If it returns an awaitable (an ``async def`` handler), that awaitable runs as a
task in the nursery the caller chose: ``handler_nursery`` when given (work that must outlive
the turn), else the turn's own, which lives exactly as long as the turn's block. Never a
detached task. A handler that raises is logged (logger ``trio_llmstream.segments``) and never
breaks the turn: a side effect failing must not cut the user's audio. Leaving the block waits
for the turn's own handler tasks if the turn completed, and cancels them otherwise
(interrupted, failed, or the block raised): a barge-in drops pending work. Async handlers
fired after that (a late ack) can only run in a ``handler_nursery``; without one they are
skipped and logged. A handler gets the very clock reading the report records for its event.

Interruption. ``turn.interrupt()`` (a user barging in), leaving the block early, or a
cancellation reaching the block stop the producer: the current segment's source is closed,
later ones are never opened, and the consumer's iteration ends (an item the producer had in
hand but the consumer had not received is dropped, and counts for nothing: once
``interrupt()`` has returned, ``__anext__`` returns no item). No hook fires for a segment that
never reached the consumer. Acks still count after an interruption (the player tells what it
did play): their sync handlers run, async ones only in a ``handler_nursery``. ``turn.report``
then says, per segment, whether its source was opened, when it was delivered and completed,
and when playback started and finished.

Errors. Everything a source raises (while opening, iterating or closing) ends the turn: the
producer stops, and the consumer's iteration raises one ``SegmentError`` naming the segment,
with the source's exception as ``__cause__``, after the items delivered before it, once.
Later segments are not opened. The consumer's own exception inside the block propagates as
itself, never in an ``ExceptionGroup``; nothing is left running when the block exits, and
iterating after that just ends (no ``ClosedResourceError``).

Stages. ``map_turn(turn, fn)`` maps items one to one through a sync or async function, and
``open_turn_stage(turn, stage)`` runs an async-iterator transform (text -> audio frames) once
per segment, on that segment's values; both pass ``SegmentStart``/``SegmentEnd`` through in
order and re-wrap outputs with the segment's id, so the last stage can ack the right segment.
They pull from upstream in the consumer's task, so the turn's delivery hooks fire when the
stage takes the item (the stage *is* the turn's consumer) and acks fire when the player says
so.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, TypeAlias, TypeVar, final

import attrs
import trio

from ._exceptions import SegmentError
from ._models import ChatChunk, StreamStatus
from ._util import InBandError, NoPublicConstructor, open_owner_nursery

__all__ = [
    "Segment",
    "SegmentEnd",
    "SegmentError",
    "SegmentEvent",
    "SegmentHandler",
    "SegmentItem",
    "SegmentNotice",
    "SegmentRef",
    "SegmentReport",
    "SegmentSource",
    "SegmentStart",
    "Turn",
    "TurnItem",
    "TurnReport",
    "open_turn",
]

logger = logging.getLogger("trio_llmstream.segments")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# -- what the consumer receives ----------------------------------------------------------------


@attrs.frozen
class SegmentStart:
    """Marks the start of segment ``index`` (0-based, in turn order), named ``id``.

    Sent once the segment's source produced its first item (or ended empty).
    """

    id: str
    index: int
    label: str | None = None


@attrs.frozen
class SegmentEnd:
    """Marks the normal end of segment ``index``: its source ended and was closed.

    Its reception is the segment's ``COMPLETED`` event. A failed segment has no end marker.
    """

    id: str
    index: int
    label: str | None = None


@attrs.frozen
class SegmentItem(Generic[T_co]):
    """One item of a segment: the source's ``value``, the segment's id, and its ``position``
    among the segment's items (0-based)."""

    segment_id: str
    value: T_co
    position: int = 0

    @property
    def text(self) -> str:
        """The text the value carries: a ``str`` itself, a ``ChatChunk``'s text, else ""."""
        value = self.value
        if isinstance(value, str):
            return value
        if isinstance(value, ChatChunk):
            return value.text
        return ""


#: What iterating a turn (or a stage over it) yields.
TurnItem: TypeAlias = SegmentStart | SegmentItem[T] | SegmentEnd

#: Where a segment's items come from; see the module docstring for how each kind is opened.
SegmentSource: TypeAlias = (
    AsyncIterable[T]
    | Iterable[T]
    | AbstractAsyncContextManager[AsyncIterable[T]]
    | Callable[
        [], AsyncIterable[T] | Iterable[T] | AbstractAsyncContextManager[AsyncIterable[T]]
    ]
)


@attrs.frozen
class Segment(Generic[T]):
    """One response of a turn: its ``source``, an optional ``id`` (unique in the turn;
    ``"segment-<index>"`` when not given) and an optional ``label`` carried by its markers."""

    source: SegmentSource[T]
    id: str | None = None
    label: str | None = None


# -- hooks -------------------------------------------------------------------------------------


class SegmentEvent(enum.Enum):
    """The moments a handler can be registered for."""

    #: The consumer received the segment's first visible item.
    DELIVERED = "delivered"
    #: The consumer received the segment's ``SegmentEnd``.
    COMPLETED = "completed"
    #: The playing stage called ``ack_started`` for the segment.
    PLAYBACK_STARTED = "playback_started"
    #: The playing stage called ``ack_finished`` for the segment.
    PLAYBACK_FINISHED = "playback_finished"


@attrs.frozen
class SegmentNotice:
    """What a handler is called with: which ``event`` happened to which segment, and the trio
    time (``trio.current_time()``) at which it happened."""

    event: SegmentEvent
    segment_id: str
    index: int
    label: str | None
    time: float


#: A handler: sync, or returning an awaitable (``async def``), run as a task.
SegmentHandler: TypeAlias = Callable[[SegmentNotice], object]

#: A reference to a segment of a turn: its id, its index, or one of its markers or items.
SegmentRef: TypeAlias = str | int | SegmentStart | SegmentEnd | SegmentItem[object]


# -- the report --------------------------------------------------------------------------------


@attrs.frozen
class SegmentReport:
    """What became of one segment. Times are ``trio.current_time()`` values, None if the
    moment never came."""

    id: str
    index: int
    label: str | None
    #: Whether its source was opened (work for it started).
    opened: bool
    #: Items the consumer received (visible or not).
    items: int
    delivered_at: float | None
    completed_at: float | None
    playback_started_at: float | None
    playback_finished_at: float | None
    #: What the source raised, if it failed.
    error: BaseException | None = None

    @property
    def delivered(self) -> bool:
        """The consumer received at least one visible item of it."""
        return self.delivered_at is not None

    @property
    def completed(self) -> bool:
        """The consumer received its ``SegmentEnd``."""
        return self.completed_at is not None

    @property
    def playback_started(self) -> bool:
        return self.playback_started_at is not None

    @property
    def playback_finished(self) -> bool:
        return self.playback_finished_at is not None


@attrs.frozen
class TurnReport:
    """A snapshot of a turn: its status and one ``SegmentReport`` per segment, in order.

    ``status`` is ``RUNNING`` while the turn goes on; then ``COMPLETED`` (every segment's end
    was received), ``FAILED`` (a source failed: ``error``) or ``CANCELLED`` (interrupted:
    stopped before every segment completed). Never ``TRUNCATED``: a truncated LLM response is
    a failed segment.
    """

    status: StreamStatus
    segments: tuple[SegmentReport, ...]
    error: SegmentError | None = None

    @property
    def interrupted(self) -> bool:
        return self.status is StreamStatus.CANCELLED

    @property
    def delivered(self) -> tuple[str, ...]:
        """Ids of the segments that reached the consumer, in order."""
        return tuple(s.id for s in self.segments if s.delivered)

    @property
    def completed(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.segments if s.completed)

    @property
    def playback_started(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.segments if s.playback_started)

    @property
    def playback_finished(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.segments if s.playback_finished)


# -- internals ---------------------------------------------------------------------------------


def _is_visible(value: object) -> bool:
    if isinstance(value, ChatChunk):
        return value.is_visible
    if isinstance(value, str):
        return bool(value)
    return True


def _is_acm(obj: object) -> bool:
    return hasattr(obj, "__aenter__") and hasattr(obj, "__aexit__")


class _Failed:
    """A read-ahead source's failure, queued after its items."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Prefetched:
    """The consumer end of a read-ahead buffer, iterated like the source itself: raises the
    source's failure in place."""

    __slots__ = ("_recv",)

    def __init__(self, recv: trio.MemoryReceiveChannel[object]) -> None:
        self._recv = recv

    def __aiter__(self) -> _Prefetched:
        return self

    async def __anext__(self) -> Any:
        try:
            value = await self._recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(value, _Failed):
            raise value.exc
        return value


async def _from_sync(items: Iterable[Any]) -> AsyncGenerator[Any, None]:
    for item in items:
        yield item


@asynccontextmanager
async def _open_source(source: object) -> AsyncIterator[AsyncIterator[Any]]:
    """Open any kind of segment source and yield an async iterator over its items; close what
    was opened on exit. Runs in the task that iterates (so a source's nursery is entered and
    exited in that task)."""
    obj = source
    # An un-entered async context manager may also be callable (contextlib's are decorators),
    # so test for it before calling factories.
    if not (_is_acm(obj) or hasattr(obj, "__aiter__") or isinstance(obj, str)) and callable(obj):
        obj = obj()
    if _is_acm(obj):
        async with obj as entered:  # type: ignore[attr-defined]
            if not hasattr(entered, "__aiter__"):
                raise TypeError(
                    "a segment's context manager must yield an async iterable, not "
                    f"{type(entered).__name__}"
                )
            yield aiter(entered)
        return
    if isinstance(obj, str):
        single = _from_sync((obj,))
        try:
            yield single
        finally:
            await single.aclose()
        return
    if hasattr(obj, "__aiter__"):
        iterator = aiter(obj)
        try:
            yield iterator
        finally:
            # An async generator handed to the turn has no other owner: close it now rather
            # than leave it to the garbage collector.
            aclose = getattr(iterator, "aclose", None) or getattr(obj, "aclose", None)
            if aclose is not None:
                await aclose()
        return
    if isinstance(obj, Iterable):
        items = _from_sync(obj)
        try:
            yield items
        finally:
            await items.aclose()
        return
    raise TypeError(f"not a segment source: {type(obj).__name__}")


def _check_source(source: object) -> None:
    if not (
        _is_acm(source)
        or hasattr(source, "__aiter__")
        or isinstance(source, Iterable)
        or callable(source)
    ):
        raise TypeError(f"not a segment source: {type(source).__name__}")


class _SegmentState:
    """A segment's spec and everything that happened to it (mutable; reported as a snapshot)."""

    __slots__ = (
        "completed_at",
        "delivered_at",
        "error",
        "id",
        "index",
        "items",
        "label",
        "opened",
        "playback_finished_at",
        "playback_started_at",
        "prefetch",
        "source",
    )

    def __init__(self, index: int, segment_id: str, label: str | None, source: object) -> None:
        self.index = index
        self.id = segment_id
        self.label = label
        self.source = source
        self.opened = False
        self.items = 0
        self.delivered_at: float | None = None
        self.completed_at: float | None = None
        self.playback_started_at: float | None = None
        self.playback_finished_at: float | None = None
        self.error: BaseException | None = None
        self.prefetch: trio.MemoryReceiveChannel[object] | None = None

    def report(self) -> SegmentReport:
        return SegmentReport(
            id=self.id,
            index=self.index,
            label=self.label,
            opened=self.opened,
            items=self.items,
            delivered_at=self.delivered_at,
            completed_at=self.completed_at,
            playback_started_at=self.playback_started_at,
            playback_finished_at=self.playback_finished_at,
            error=self.error,
        )


# -- the turn ----------------------------------------------------------------------------------


@final
class Turn(Generic[T], metaclass=NoPublicConstructor):
    """One consumer-facing turn made of segments: an async iterator of ``TurnItem``.

    Only ``open_turn`` makes one; it lives inside that block. One task iterates it. See the
    module docstring for the markers, hooks, acks and interruption.
    """

    _made_by = "open_turn()"

    def __init__(
        self,
        *,
        segments: Sequence[_SegmentState],
        lookahead: int,
        lookahead_items: int,
        handler_nursery: trio.Nursery | None,
    ) -> None:
        self._segments = tuple(segments)
        self._by_id = {s.id: s for s in self._segments}
        self._lookahead = lookahead
        self._lookahead_items = lookahead_items
        self._send, self._recv = trio.open_memory_channel[TurnItem[T]](0)
        self._handlers: list[tuple[SegmentEvent, str | None, SegmentHandler]] = []
        self._outside_nursery = handler_nursery
        self._own_nursery: trio.Nursery | None = None
        self._handler_scope = trio.CancelScope()
        self._handlers_release = trio.Event()
        self._producer_scope = trio.CancelScope()
        self._current: _SegmentState | None = None
        self._failure: InBandError[SegmentError] = InBandError()
        self._stopped = False
        self._receiving = False
        self._after_end = False
        self._next_wanted = trio.Event()

    # -- consumer side -------------------------------------------------------------------------

    def __aiter__(self) -> Turn[T]:
        return self

    async def __anext__(self) -> TurnItem[T]:
        """The next marker or item. Fires the delivery hooks of what it returns, before
        returning it. Raises the turn's ``SegmentError`` once, after the items before it.

        Ends at once after ``interrupt()`` or after the block exited. Raises
        ``trio.BusyResourceError`` if another task is already waiting in it.

        Cancellation: cancelling a waiting ``__anext__`` loses nothing; the producer keeps the
        item and the next call receives it.
        """
        if self._stopped:
            raise StopAsyncIteration
        if self._receiving:
            raise trio.BusyResourceError("another task is already iterating this turn")
        if self._after_end:
            # Asking for more after a segment's end: the next segment may open now.
            self._next_wanted.set()
        self._receiving = True
        try:
            item = await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            ended = True
        else:
            ended = False
        finally:
            self._receiving = False
        if ended:
            self._failure.raise_once(closed=self._stopped)
            raise StopAsyncIteration
        if self._stopped:
            # Taken after an interruption: it never reaches the consumer and counts for nothing.
            raise StopAsyncIteration
        self._after_end = isinstance(item, SegmentEnd)
        self._received(item)
        return item

    def _received(self, item: TurnItem[T]) -> None:
        # No checkpoint here: the hooks fire at the very time the item was received.
        if isinstance(item, SegmentItem):
            state = self._current
            assert state is not None
            state.items += 1
            if state.delivered_at is None and _is_visible(item.value):
                state.delivered_at = now = trio.current_time()
                self._fire(state, SegmentEvent.DELIVERED, now)
        elif isinstance(item, SegmentStart):
            self._current = self._segments[item.index]
        else:
            state = self._segments[item.index]
            state.completed_at = now = trio.current_time()
            self._current = None
            self._fire(state, SegmentEvent.COMPLETED, now)

    # -- hooks and acks ------------------------------------------------------------------------

    def on(
        self,
        event: SegmentEvent | str,
        handler: SegmentHandler,
        *,
        segment: str | int | None = None,
    ) -> SegmentHandler:
        """Register ``handler`` for ``event`` (a ``SegmentEvent`` or its value, e.g.
        ``"delivered"``) of one segment (its id or index) or, with ``segment=None``, of every
        segment. Returns the handler.

        Handlers run in registration order. A handler registered after its moment passed
        does not run for it. Raises ``ValueError`` for an unknown segment or event.
        """
        kind = SegmentEvent(event)
        target = None if segment is None else self._state(segment).id
        self._handlers.append((kind, target, handler))
        return handler

    def ack_started(self, segment: SegmentRef) -> None:
        """The playing stage started playing (or showing) ``segment``: fire its
        ``PLAYBACK_STARTED`` handlers now, in this task. Idempotent; not blocking.

        ``segment`` is an id, an index, or a marker or item of the segment. Raises
        ``ValueError`` for an unknown segment.
        """
        state = self._state(segment)
        if state.playback_started_at is None:
            state.playback_started_at = now = trio.current_time()
            self._fire(state, SegmentEvent.PLAYBACK_STARTED, now)

    def ack_finished(self, segment: SegmentRef) -> None:
        """The playing stage finished playing ``segment``: fire its ``PLAYBACK_FINISHED``
        handlers now (and first ``ack_started``'s, if it was never called). Idempotent; not
        blocking. Raises ``ValueError`` for an unknown segment.
        """
        state = self._state(segment)
        if state.playback_finished_at is None:
            self.ack_started(segment)
            state.playback_finished_at = now = trio.current_time()
            self._fire(state, SegmentEvent.PLAYBACK_FINISHED, now)

    def _state(self, segment: SegmentRef) -> _SegmentState:
        if isinstance(segment, (SegmentStart, SegmentEnd)):
            segment = segment.id
        elif isinstance(segment, SegmentItem):
            segment = segment.segment_id
        if isinstance(segment, bool):
            raise TypeError("a segment is named by its id or index, not a bool")
        if isinstance(segment, int):
            if 0 <= segment < len(self._segments):
                return self._segments[segment]
        elif segment in self._by_id:
            return self._by_id[segment]
        raise ValueError(f"this turn has no segment {segment!r}")

    def _fire(self, state: _SegmentState, event: SegmentEvent, now: float) -> None:
        notice: SegmentNotice | None = None
        for kind, target, handler in tuple(self._handlers):
            if kind is not event or (target is not None and target != state.id):
                continue
            if notice is None:
                notice = SegmentNotice(event, state.id, state.index, state.label, now)
            try:
                result = handler(notice)
            except Exception:
                logger.exception("%s handler %r for segment %r raised; ignored",
                                 event.value, handler, state.id)
                continue
            if inspect.isawaitable(result):
                self._start_handler(handler, result, notice)

    def _start_handler(
        self, handler: SegmentHandler, awaitable: Awaitable[object], notice: SegmentNotice
    ) -> None:
        nursery = self._outside_nursery
        if nursery is None:
            nursery = self._own_nursery
            if self._handler_scope.cancel_called:
                # Interrupted: the turn's own handler tasks are cancelled, new ones not started.
                _close(awaitable)
                logger.debug("async %s handler %r for segment %r not run: the turn was "
                             "interrupted", notice.event.value, handler, notice.segment_id)
                return
        try:
            if nursery is None:
                raise RuntimeError("the turn's block has exited and no handler_nursery was given")
            nursery.start_soon(_run_handler, handler, awaitable, notice)
        except RuntimeError as exc:
            _close(awaitable)
            logger.warning("async %s handler %r for segment %r not run: %s",
                           notice.event.value, handler, notice.segment_id, exc)

    # -- control and state ---------------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop the turn now (a user barging in): the current segment's source is closed,
        later ones are never opened, iteration ends, and async handlers still running in the
        turn's own nursery are cancelled. Items not yet received are dropped. Acks are still
        accepted. Idempotent; not blocking; callable from any task of the run.
        """
        self._stop(cancel_handlers=True)

    def _stop(self, *, cancel_handlers: bool) -> None:
        self._stopped = True
        self._producer_scope.cancel()
        if cancel_handlers:
            self._handler_scope.cancel()
        self._handlers_release.set()

    @property
    def status(self) -> StreamStatus:
        """``RUNNING``, then ``COMPLETED``, ``FAILED`` or ``CANCELLED`` (see ``TurnReport``)."""
        if self._failure.error is not None:
            return StreamStatus.FAILED
        if all(s.completed_at is not None for s in self._segments):
            return StreamStatus.COMPLETED
        if self._stopped:
            return StreamStatus.CANCELLED
        return StreamStatus.RUNNING

    @property
    def error(self) -> SegmentError | None:
        """The error that ended the turn, if a source failed (also when not yet raised)."""
        return self._failure.error

    @property
    def report(self) -> TurnReport:
        """A snapshot of the turn and of every segment (see ``TurnReport``)."""
        return TurnReport(
            status=self.status,
            segments=tuple(s.report() for s in self._segments),
            error=self._failure.error,
        )

    @property
    def segment_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self._segments)

    # -- producer side -------------------------------------------------------------------------

    async def _host_handlers(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keeps the turn's own handler nursery open until the turn ends; cancelling
        ``_handler_scope`` cancels the handler tasks, releasing lets them finish."""
        with self._handler_scope:
            async with trio.open_nursery() as nursery:
                self._own_nursery = nursery
                task_status.started()
                await self._handlers_release.wait()
        self._own_nursery = None

    async def _produce(self) -> None:
        """The producer: sole owner of the send channel, which it closes once, at the end."""
        with self._producer_scope:
            async with self._send, trio.open_nursery() as ahead:
                try:
                    for state in self._segments:
                        self._read_ahead(state.index, ahead)
                        await self._run_segment(state)
                except SegmentError as exc:
                    self._failure.error = exc
                finally:
                    # Nothing read ahead outlives the segment sequence.
                    ahead.cancel_scope.cancel()

    def _read_ahead(self, index: int, ahead: trio.Nursery) -> None:
        last = min(index + self._lookahead, len(self._segments) - 1)
        for state in self._segments[index + 1 : last + 1]:
            if state.prefetch is None:
                send, recv = trio.open_memory_channel[object](self._lookahead_items)
                state.prefetch = recv
                ahead.start_soon(self._prefetch, state, send)

    async def _prefetch(self, state: _SegmentState, send: trio.MemorySendChannel[object]) -> None:
        async with send:
            # Stopped before this task first ran: open nothing (this only yields if cancelled).
            await trio.lowlevel.checkpoint_if_cancelled()
            state.opened = True
            try:
                async with _open_source(state.source) as items:
                    async for value in items:
                        await send.send(value)
            except Exception as exc:
                await send.send(_Failed(exc))

    async def _run_segment(self, state: _SegmentState) -> None:
        if state.index > 0:
            # The previous end marker was handed over, but the consumer may not have looked
            # at it yet (the scheduler can run this task first): wait until it asks for more,
            # so that a consumer interrupting on that marker never has the next one opened.
            await self._next_wanted.wait()
        else:
            # Interrupted before the producer first ran: open nothing.
            await trio.lowlevel.checkpoint_if_cancelled()
        send = self._send
        started = False
        position = 0
        source: AbstractAsyncContextManager[AsyncIterator[T]]
        if state.prefetch is not None:
            source = _closing(state.prefetch)
        else:
            state.opened = True
            source = _open_source(state.source)
        start = SegmentStart(state.id, state.index, state.label)
        try:
            async with source as items:
                async for value in items:
                    if not started:
                        started = True
                        await send.send(start)
                    await send.send(SegmentItem(state.id, value, position))
                    position += 1
        except Exception as exc:
            state.error = exc
            error = SegmentError(state.id, state.index, state.label, exc)
            raise error from exc
        if not started:
            await send.send(start)
        # Set by the consumer's first ``__anext__`` after it received this end marker.
        self._next_wanted = trio.Event()
        await send.send(SegmentEnd(state.id, state.index, state.label))


@asynccontextmanager
async def _closing(recv: trio.MemoryReceiveChannel[Any]) -> AsyncIterator[_Prefetched]:
    async with recv:
        yield _Prefetched(recv)


def _close(awaitable: Awaitable[object]) -> None:
    if inspect.iscoroutine(awaitable):
        awaitable.close()  # never started: no "never awaited" warning


async def _run_handler(
    handler: SegmentHandler, awaitable: Awaitable[object], notice: SegmentNotice
) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("%s handler %r for segment %r raised; ignored",
                         notice.event.value, handler, notice.segment_id)


def _states(segments: Iterable[Segment[T] | SegmentSource[T]]) -> list[_SegmentState]:
    states: list[_SegmentState] = []
    ids: set[str] = set()
    for index, spec in enumerate(segments):
        if not isinstance(spec, Segment):
            spec = Segment(spec)
        _check_source(spec.source)
        segment_id = spec.id if spec.id is not None else f"segment-{index}"
        if segment_id in ids:
            raise ValueError(f"duplicate segment id {segment_id!r}")
        ids.add(segment_id)
        states.append(_SegmentState(index, segment_id, spec.label, spec.source))
    return states


@asynccontextmanager
async def open_turn(
    segments: Iterable[Segment[T] | SegmentSource[T]],
    *,
    lookahead: int = 0,
    lookahead_items: int = 64,
    handler_nursery: trio.Nursery | None = None,
) -> AsyncIterator[Turn[T]]:
    """Open a turn that delivers ``segments`` (``Segment`` specs or bare sources) in order.

    ::

        async with open_turn([Segment(filler, label="filler"),
                              Segment(lambda: open_llm_stream(llm, chat_ctx=ctx))]) as turn:
            async for item in turn:
                ...

    Sources are opened lazily, one after another, in the turn's own task (the first on
    entry, each later one when the consumer asks for more after the previous end marker);
    ``lookahead=n`` lets the next ``n`` segments be opened and read ahead into buffers of
    ``lookahead_items`` items. Async handlers run in ``handler_nursery`` when given (work that
    must outlive the turn), else in the turn's own nursery. Raises ``ValueError`` for
    duplicate ids or bad options and ``TypeError`` for something that is not a source, before
    anything starts.

    Cancellation: leaving the block by ``break``, exception or outside cancellation stops the
    producer and closes the current source; later segments are never opened. If the turn
    completed, exiting waits for the async handlers still running in its own nursery;
    otherwise they are cancelled. An exception from the block propagates as itself, never
    wrapped in an ExceptionGroup.
    """
    if lookahead < 0:
        raise ValueError("lookahead must be >= 0")
    if lookahead_items < 0:
        raise ValueError("lookahead_items must be >= 0")
    turn = Turn[T]._create(
        segments=_states(segments),
        lookahead=lookahead,
        lookahead_items=lookahead_items,
        handler_nursery=handler_nursery,
    )
    def stop(body_exc: BaseException | None) -> None:
        turn._stop(
            cancel_handlers=body_exc is not None or turn.status is not StreamStatus.COMPLETED
        )

    async with open_owner_nursery(stop) as nursery:
        await nursery.start(turn._host_handlers)
        nursery.start_soon(turn._produce)
        yield turn
