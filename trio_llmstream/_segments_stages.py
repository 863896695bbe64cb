"""Transform stages over a turn that keep its segment markers.

A turn's consumer is rarely the last stage: text goes to a synthesizer, audio frames go to a
player, and only the player knows when a segment really starts and stops playing. These
helpers sit between them and keep ``SegmentStart``/``SegmentEnd`` in place and in order, and
re-wrap every output in a ``SegmentItem`` carrying its segment's id, so the last stage can
``ack_started``/``ack_finished`` the right segment on the turn.

- ``map_turn(upstream, fn)``: one output per item, through a sync or async function.
- ``open_turn_stage(upstream, stage)``: a streaming transform, called once per segment with an
  async iterator over that segment's values (a ``SegmentInput``, which also carries the
  segment's ``SegmentStart``), whose outputs become the segment's items. It sees the end of
  its input when the segment ends, so it can flush (the last sentence of a synthesizer).

Both *pull*: nothing runs ahead of the consumer. The upstream turn's ``__anext__`` is called
from the consumer's task when the consumer asks for more, so the turn's delivery hooks fire
when the stage takes an item (the first stage is the turn's consumer), and the stages add no
task, channel or buffer. A stage's exception propagates from ``__anext__`` as itself; a
``SegmentError`` from the turn passes through the stage's input unchanged (unless the stage
catches it). If the upstream ends in the middle of a segment (the turn was interrupted), the
segment's stage is closed, whatever it would have produced after that is dropped, and
iteration ends: an interrupted segment gets no ``SegmentEnd`` here either.

An ``open_turn_stage`` transform is usually an async generator. It runs in the consumer's
task across ``yield``s, so the usual trio rule for async generators applies: do not yield
from inside a nursery or a cancel scope. ``open_turn_stage`` is an async context manager so
that the stage of an unfinished segment is closed (``aclose()``) when its block exits.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar, cast, overload

from ._segments import SegmentEnd, SegmentItem, SegmentStart, TurnItem

__all__ = ["MappedTurn", "SegmentInput", "TurnStage", "map_turn", "open_turn_stage"]

T = TypeVar("T")
U = TypeVar("U")


def _protocol_error(item: object) -> RuntimeError:
    return RuntimeError(f"malformed turn: unexpected {type(item).__name__} {item!r}")


class MappedTurn(Generic[T, U]):
    """``map_turn``'s iterator: markers pass through, each item's value goes through ``fn``."""

    def __init__(
        self, upstream: AsyncIterable[TurnItem[T]], fn: Callable[[T], U | Awaitable[U]]
    ) -> None:
        self._upstream = aiter(upstream)
        self._fn = fn

    def __aiter__(self) -> MappedTurn[T, U]:
        return self

    async def __anext__(self) -> TurnItem[U]:
        """The next marker, or the next item with its value mapped.

        Cancellation: as the upstream's ``__anext__`` and ``fn``; a cancelled ``fn`` loses the
        item it was mapping.
        """
        item = await self._upstream.__anext__()
        if not isinstance(item, SegmentItem):
            return item
        result = self._fn(item.value)
        if inspect.isawaitable(result):
            result = await result
        return SegmentItem(item.segment_id, cast(U, result), item.position)


@overload
def map_turn(
    upstream: AsyncIterable[TurnItem[T]], fn: Callable[[T], Awaitable[U]]
) -> MappedTurn[T, U]: ...
@overload
def map_turn(upstream: AsyncIterable[TurnItem[T]], fn: Callable[[T], U]) -> MappedTurn[T, U]: ...
def map_turn(
    upstream: AsyncIterable[TurnItem[T]], fn: Callable[[T], Any]
) -> MappedTurn[T, Any]:
    """Map every item's value of ``upstream`` (a turn or another stage) through ``fn``, one to
    one; ``SegmentStart``/``SegmentEnd`` pass through unchanged, in order.

    ``fn`` may be sync or async (a returned awaitable is awaited). It runs in the consumer's
    task, when the consumer asks for the item; its exceptions propagate as themselves. No
    resources are held, so there is nothing to close.
    """
    return MappedTurn(upstream, fn)


class SegmentInput(Generic[T]):
    """What an ``open_turn_stage`` transform gets: an async iterator over one segment's values.

    ``start`` is the segment's ``SegmentStart`` (its id, index and label). Iteration ends at
    the segment's end, or early if the turn stopped in the middle of the segment
    (``interrupted`` then becomes true).
    """

    def __init__(self, upstream: AsyncIterator[TurnItem[T]], start: SegmentStart) -> None:
        self._upstream = upstream
        self.start = start
        self.end: SegmentEnd | None = None
        self.interrupted = False

    def __aiter__(self) -> SegmentInput[T]:
        return self

    async def __anext__(self) -> T:
        """The segment's next value. Raises the turn's ``SegmentError`` as the turn does.

        Cancellation: as the upstream's ``__anext__``.
        """
        if self.end is not None or self.interrupted:
            raise StopAsyncIteration
        try:
            item = await self._upstream.__anext__()
        except StopAsyncIteration:
            self.interrupted = True
            raise
        if isinstance(item, SegmentItem):
            if item.segment_id != self.start.id:
                raise _protocol_error(item)
            return item.value
        if isinstance(item, SegmentEnd) and item.id == self.start.id:
            self.end = item
            raise StopAsyncIteration
        raise _protocol_error(item)

    async def _drain(self) -> SegmentEnd | None:
        # Values the stage left unread are discarded, up to the segment's end.
        async for _ in self:
            pass
        return self.end


class TurnStage(Generic[T, U]):
    """``open_turn_stage``'s iterator. See that function and the module docstring."""

    def __init__(
        self,
        upstream: AsyncIterable[TurnItem[T]],
        stage: Callable[[SegmentInput[T]], AsyncIterable[U]],
    ) -> None:
        self._upstream = aiter(upstream)
        self._stage = stage
        self._input: SegmentInput[T] | None = None
        self._output: AsyncIterator[U] | None = None
        self._position = 0
        self._done = False

    def __aiter__(self) -> TurnStage[T, U]:
        return self

    async def __anext__(self) -> TurnItem[U]:
        """The next marker or output item.

        Cancellation: as the upstream's ``__anext__`` and the stage; the stage keeps its state
        and the next call goes on from there.
        """
        if self._done:
            raise StopAsyncIteration
        output = self._output
        if output is None:
            try:
                item = await self._upstream.__anext__()
            except StopAsyncIteration:
                self._done = True
                raise
            if not isinstance(item, SegmentStart):
                raise _protocol_error(item)
            self._input = SegmentInput(self._upstream, item)
            self._output = aiter(self._stage(self._input))
            self._position = 0
            return item
        segment = self._input
        assert segment is not None
        try:
            value = await output.__anext__()
        except StopAsyncIteration:
            end = await self._finish_segment()
            if end is None:
                raise
            return end
        if segment.interrupted:
            # Produced after the turn stopped mid-segment: never delivered.
            await self._finish_segment()
            raise StopAsyncIteration
        position = self._position
        self._position = position + 1
        return SegmentItem(segment.start.id, value, position)

    async def _finish_segment(self) -> SegmentEnd | None:
        segment, output = self._input, self._output
        assert segment is not None
        self._output = None
        await _aclose(output)
        end = None if segment.interrupted else await segment._drain()
        if end is None:
            self._done = True
        return end

    async def aclose(self) -> None:
        """Close the running segment's stage, if any; iteration then ends. Idempotent.

        Cancellation: the stage's own ``aclose`` may be cancelled, as any async generator's.
        """
        self._done = True
        output, self._output = self._output, None
        await _aclose(output)


async def _aclose(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


@asynccontextmanager
async def open_turn_stage(
    upstream: AsyncIterable[TurnItem[T]],
    stage: Callable[[SegmentInput[T]], AsyncIterable[U]],
) -> AsyncIterator[TurnStage[T, U]]:
    """Run ``stage`` once per segment of ``upstream`` (a turn or another stage), on that
    segment's values, and yield its outputs as the segment's items, between the segment's
    unchanged ``SegmentStart`` and ``SegmentEnd``.

    ::

        async def speak(text: AsyncIterator[str]) -> AsyncIterator[AudioFrame]:
            async for sentence in sentences(text):
                for frame in await tts.synthesize(sentence):
                    yield frame

        async with open_turn(...) as turn, open_turn_stage(map_turn(turn, text_of), speak) as audio:
            async for item in audio:
                if isinstance(item, SegmentItem):
                    await player.play(item.value)
                    turn.ack_started(item)
                elif isinstance(item, SegmentEnd):
                    turn.ack_finished(item)

    The stage is called when a segment starts, with a ``SegmentInput`` (an async iterator of
    values that also has the segment's ``start`` marker). Values it leaves unread when it
    returns are discarded. Does not own ``upstream``: leaving the block closes the running
    stage but not the turn.

    Cancellation: leaving the block by any means closes the running stage (``aclose()``); an
    exception from the block propagates as itself.
    """
    transform: TurnStage[T, U] = TurnStage(upstream, stage)
    try:
        yield transform
    finally:
        await transform.aclose()
