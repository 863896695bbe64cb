"""The hand-off between an attempt and the consumer: a bounded single-producer pipe.

Why not a trio memory channel? A channel operation is a full scheduling round for each side,
about 3-4 µs, and servers flush one SSE event per HTTP chunk, which httpx yields one at a time:
a channel send per chunk would cost more than parsing it. Most of those chunks arrive together,
though: one socket read holds many HTTP chunks, and httpcore hands them out without touching the
network again, so without a checkpoint. The pipe exploits that. The producer *appends* chunks
and wakes the consumer if it is waiting, and goes on reading; the consumer runs only when the
producer really blocks on the socket, and then takes everything pending in one go. That makes
one hand-off per socket read instead of one per chunk.

Two kinds of put keep the runtime's guarantees:

- an *exact* put waits until the consumer has taken the chunks, and takes them back if it is
  cancelled first. Before its commit point an attempt puts exactly, so "the consumer has
  received visible output" is a fact, not a guess, and a failed uncommitted attempt leaves
  nothing behind;
- after the commit point, puts return at once while at most ``limit`` chunks wait for the
  consumer; past that the producer waits until the consumer has drained the pipe
  (backpressure, and bounded memory). ``limit=0`` makes every put exact.

Whether the consumer took a batch is a fact the pipe records: every item has a position (the
count of items put before it), ``put_nowait`` returns the position just past its items and
:meth:`taken` says whether the consumer has taken everything up to a position. A producer that
is cancelled while waiting asks the pipe rather than inferring it from how its wait ended: in
the scheduler batch in which a cancellation lands, the consumer may already have taken the
chunks, and then they are delivered however the wait ended.

One producer and one consumer at a time; the producer closes the pipe once, when it is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import trio

__all__ = ["Pipe"]

T = TypeVar("T")


class Pipe(Generic[T]):
    """A bounded single-producer, single-consumer pipe of items taken in batches."""

    __slots__ = ("_closed", "_consumer", "_items", "_producer", "_put", "_taken", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self._items: list[T] = []
        self._put = 0  # items ever put, net of items taken back
        self._taken = 0  # items ever taken by the consumer
        self._closed = False
        self._consumer = trio.lowlevel.ParkingLot()
        self._producer = trio.lowlevel.ParkingLot()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Items put and not yet taken."""
        return len(self._items)

    def put_nowait(self, items: Sequence[T]) -> int:
        """Append ``items`` and wake the consumer if it waits. Never blocks.

        Returns the position just past ``items``, for :meth:`taken`.
        """
        if self._closed:
            raise trio.ClosedResourceError("the pipe is closed")
        self._items.extend(items)
        self._put += len(items)
        if self._consumer:
            self._consumer.unpark_all()
        return self._put

    def taken(self, position: int) -> bool:
        """Whether the consumer has taken every item before ``position`` (from ``put_nowait``).

        Exact whatever happened to the producer: items taken back were never taken, and the
        consumer takes everything pending at once, so a batch is taken whole or not at all.
        """
        return self._taken >= position

    @property
    def over_limit(self) -> bool:
        return len(self._items) > self.limit

    async def wait_taken(self, *, take_back: int | None = None) -> None:
        """Wait until the consumer has taken everything pending.

        Cancellation: if the consumer has not taken the items yet and ``take_back`` is given,
        the items from index ``take_back`` on are removed again (never delivered), then
        Cancelled propagates.
        """
        items = self._items
        try:
            while self._items:
                await self._producer.park()
        except BaseException:
            if take_back is not None and self._items is items:
                self._put -= len(items) - take_back
                del items[take_back:]
            raise

    def close(self) -> None:
        """No more items: the consumer gets what is pending, then the end. Idempotent."""
        self._closed = True
        if self._consumer:
            self._consumer.unpark_all()

    async def get(self) -> list[T] | None:
        """Everything pending (at least one item), or None once the pipe is closed and empty.

        Returns at once, without a checkpoint, when items are pending. Cancellation: nothing
        is lost; the items stay for the next call.
        """
        while not self._items:
            if self._closed:
                return None
            await self._consumer.park()
        items = self._items
        self._items = []
        self._taken += len(items)
        if self._producer:
            self._producer.unpark_all()
        return items
