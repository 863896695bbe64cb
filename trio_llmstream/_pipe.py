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
- after the commit point, puts return at once while what waits for the consumer is within
  both bounds: at most ``limit`` items and at most ``byte_limit`` bytes (each put says what
  its items weigh: the runtime passes an estimate of their memory). Past either bound the
  producer waits until the consumer has drained the pipe (backpressure, and bounded memory:
  at most the bounds plus one put). ``limit=0`` makes every put exact.

Why a bound in bytes and not a small count: the count that matters is "one socket read's
worth", and a read holds a handful of large events or hundreds of small ones. A small count
(16, before issue 16) made the producer wait for the consumer every 17 chunks, a scheduling
round per 17 chunks: in lock-step with a thousand other streams that kept every stream's chunks
alive across scheduler batches (promoted out of the GC's young generation) and every stream's
receive buffer full at once. A bound about one read's size lets a read's chunks reach the
consumer in the one hand-off that the producer's next socket read (a checkpoint) gives anyway,
and still bounds what a slow consumer can make the pipe hold. (Not much more, though: parsed
chunks weigh more than their bytes, and with many streams every stream's pending chunks wait
a whole scheduler batch at once; the runtime's bound is in ``_stream.py``.)

Whether the consumer took a batch is a fact the pipe records: every item has a position (the
count of items put before it), ``put_nowait`` returns the position just past its items and
:meth:`taken` says whether the consumer has taken everything up to a position. A producer that
is cancelled while waiting asks the pipe rather than inferring it from how its wait ended: in
the scheduler batch in which a cancellation lands, the consumer may already have taken the
chunks, and then they are delivered however the wait ended.

Waiting. One producer and one consumer, each waiting in a one-task slot (the task itself,
woken with ``trio.lowlevel.reschedule``) rather than a ``ParkingLot``: a wake-up is an attribute
test and a reschedule. A waiter that is cancelled clears its slot in its abort function, so a
later wake-up never reschedules a task that is no longer waiting. A second task waiting on the
same side while one already waits is a usage error (``trio.BusyResourceError``), never a lost
wake-up. The producer closes the pipe once, when it is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import trio

__all__ = ["Pipe"]

T = TypeVar("T")

_SUCCEEDED = trio.lowlevel.Abort.SUCCEEDED


class Pipe(Generic[T]):
    """A bounded single-producer, single-consumer pipe of items taken in batches."""

    __slots__ = (
        "_bytes", "_closed", "_consumer", "_items", "_producer", "_put", "_taken",
        "byte_limit", "limit",
    )

    def __init__(self, limit: int, byte_limit: int | None = None) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        if byte_limit is not None and byte_limit < 0:
            raise ValueError("byte_limit must be >= 0")
        self.limit = limit
        # None: no byte bound (the count alone).
        self.byte_limit: float = float("inf") if byte_limit is None else byte_limit
        self._items: list[T] = []
        self._bytes = 0  # weight of the pending items, as their puts declared it
        self._put = 0  # items ever put, net of items taken back
        self._taken = 0  # items ever taken by the consumer
        self._closed = False
        # The one task waiting on each side, if any (see the module docstring: Waiting).
        self._consumer: trio.lowlevel.Task | None = None
        self._producer: trio.lowlevel.Task | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Items put and not yet taken."""
        return len(self._items)

    @property
    def pending_bytes(self) -> int:
        """The declared weight of the items put and not yet taken."""
        return self._bytes

    def put_nowait(self, items: Sequence[T], nbytes: int = 0) -> int:
        """Append ``items`` (weighing ``nbytes``) and wake the consumer if it waits. Never
        blocks.

        Returns the position just past ``items``, for :meth:`taken`.
        """
        self.offer(items, nbytes)
        return self._put

    def offer(self, items: Sequence[T], nbytes: int) -> bool:
        """:meth:`put_nowait` and then :attr:`over_limit`, in one call (the per-read path
        after the commit point): True when the producer must now :meth:`wait_taken`."""
        if self._closed:
            raise trio.ClosedResourceError("the pipe is closed")
        pending = self._items
        pending += items
        self._bytes += nbytes
        self._put += len(items)
        task = self._consumer
        if task is not None:
            self._consumer = None
            trio.lowlevel.reschedule(task)
        return len(pending) > self.limit or self._bytes > self.byte_limit

    def taken(self, position: int) -> bool:
        """Whether the consumer has taken every item before ``position`` (from ``put_nowait``).

        Exact whatever happened to the producer: items taken back were never taken, and the
        consumer takes everything pending at once, so a batch is taken whole or not at all.
        """
        return self._taken >= position

    @property
    def over_limit(self) -> bool:
        """Whether what waits exceeds a bound: the producer must wait (:meth:`wait_taken`)."""
        return len(self._items) > self.limit or self._bytes > self.byte_limit

    async def wait_taken(self, *, take_back: int | None = None) -> None:
        """Wait until the consumer has taken everything pending.

        Cancellation: if the consumer has not taken the items yet and ``take_back`` is given,
        the items from index ``take_back`` on are removed again (never delivered), then
        Cancelled propagates.
        """
        items = self._items
        try:
            while self._items:
                await self._wait("_producer")
        except BaseException:
            if take_back is not None and self._items is items:
                self._put -= len(items) - take_back
                del items[take_back:]
                if not items:
                    # (Otherwise the weight stays as it was: an over-estimate, which only
                    # errs toward backpressure until the consumer's next take resets it.)
                    self._bytes = 0
            raise

    def close(self) -> None:
        """No more items: the consumer gets what is pending, then the end. Idempotent."""
        self._closed = True
        task = self._consumer
        if task is not None:
            self._consumer = None
            trio.lowlevel.reschedule(task)

    async def get(self) -> list[T] | None:
        """Everything pending (at least one item), or None once the pipe is closed and empty.

        Returns at once, without a checkpoint, when items are pending. Cancellation: nothing
        is lost; the items stay for the next call.
        """
        while not self._items:
            if self._closed:
                return None
            await self._wait("_consumer")
        items = self._items
        self._items = []
        self._bytes = 0
        self._taken += len(items)
        task = self._producer
        if task is not None:
            self._producer = None
            trio.lowlevel.reschedule(task)
        return items

    async def _wait(self, side: str) -> None:
        """Wait in ``side``'s slot until the other side reschedules this task (a
        checkpoint: a cancelled wait clears the slot and raises ``Cancelled``)."""
        if getattr(self, side) is not None:
            raise trio.BusyResourceError(
                "another task is already waiting on this side of the pipe"
            )
        task = trio.lowlevel.current_task()
        setattr(self, side, task)

        def abort(_: object) -> trio.lowlevel.Abort:
            # Still in the slot (not woken): leave it, so no wake-up targets this task.
            if getattr(self, side) is task:
                setattr(self, side, None)
            return _SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
