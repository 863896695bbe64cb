"""The commit point across concurrent attempts: which attempt may hand output over, and which
one wins.

A hedged stream runs several attempts at once, and all of them want the consumer. The pipe has
one producer, and the commit point is exact only because, before it, every hand-off waits until
the consumer has taken the batch or takes it back. So the arbiter makes "one producer" true
again before the commit:

- **The hand-off token.** Before the commit an attempt may put chunks into the pipe only while
  it holds the token (taken without a checkpoint when free, so a stream of one attempt pays
  nothing; waiters park and re-check when it is released). It holds it for one exact
  hand-off: put, wait until taken, and either the consumer took the batch (the attempt
  commits) or the hand-off was cancelled and the batch taken back (the pipe is as before,
  nothing was seen) and the token is released for the next attempt. So the consumer can never
  see chunks of two attempts interleaved: before the commit the pipe holds at most one
  attempt's batch, and after it only the winner is left.
- **The winner** is the attempt whose visible output the consumer took first: the pipe says
  so (its take positions), not how the hand-off ended. At that moment the arbiter cancels every
  other attempt's scope; their connections close, and nothing they hold back was ever in the
  pipe. An attempt waiting for the token is cancelled in that wait.
- **What cannot win.** Chunks without visible output (role, usage, lifecycle, keep-alive,
  partial tool arguments) are held back by each attempt and never take the token; an error
  frame fails its own attempt only. An attempt that *finishes* without any visible output (an
  empty response) cannot win while another attempt may still produce some: it waits until
  every other live attempt has ended or also finished empty, and then the earliest such
  attempt (by number) wins and delivers its held chunks. An attempt that ends with a *bug*
  (an exception that is not an ``APIError``) ends the stream with it, as it would without a
  hedge: from then on no empty response wins, so a waiting one cannot hide the bug.

All of it runs in one trio thread: every state change is synchronous, so "the consumer took
the batch" and "cancel the others" happen in the same step, before any other attempt runs.
"""

from __future__ import annotations

from typing import Protocol

import trio

__all__ = ["Arbiter", "Contender"]


class Contender(Protocol):
    """What the arbiter needs of an attempt (the runtime's emitter)."""

    number: int
    lost: bool
    finished_empty: bool
    committed: bool
    finished: bool

    def lose(self) -> None:
        """Cancel the attempt: another won."""


class Arbiter:
    """One per stream; see the module docstring.

    Small on purpose (thousands of idle streams each hold one): the token is a holder field,
    and the parking lot exists only once some attempt has had to wait.
    """

    __slots__ = ("_holder", "_live", "_lot", "_stopped", "winner")

    def __init__(self) -> None:
        self._holder: Contender | None = None
        self._live: list[Contender] = []
        self._lot: trio.lowlevel.ParkingLot | None = None
        self.winner: Contender | None = None
        # An attempt failed with a bug: the stream ends with it, nothing wins by default.
        self._stopped = False

    def enter(self, contender: Contender) -> None:
        self._live.append(contender)

    def leave(self, contender: Contender, *, bug: bool = False) -> None:
        """``contender``'s attempt is over: attempts that finished empty may now win, unless
        it ended with a ``bug`` (not an ``APIError``), which ends the stream."""
        if bug:
            self._stopped = True
        if contender in self._live:
            self._live.remove(contender)
        if self.winner is contender and not (contender.committed or contender.finished):
            # It won by default (an empty response) but its hand-off was cancelled before
            # the consumer took it (a limit fired in that very step): nothing was delivered,
            # so the stream may still retry, and the next attempt must be free to win.
            self.winner = None
        self._wake()

    @property
    def live(self) -> int:
        return len(self._live)

    def _wake(self) -> None:
        if self._lot:
            self._lot.unpark_all()

    async def _park(self) -> None:
        if self._lot is None:
            self._lot = trio.lowlevel.ParkingLot()
        await self._lot.park()

    def try_acquire(self, contender: Contender) -> bool:
        """Take the hand-off token if it is free (no checkpoint). False for a loser (an
        attempt resumed from a checkpoint that completed as it lost must not hand anything
        over: ``acquire`` then ends in its cancellation)."""
        if self.winner is not None and self.winner is not contender:
            return False
        if self._holder is not None:
            return False
        self._holder = contender
        return True

    async def acquire(self, contender: Contender) -> None:
        """Wait for the hand-off token (another attempt holds it).

        Cancellation: cancelled while waiting, the token is not taken. After another attempt
        won, this attempt's scope is cancelled, so the wait ends with ``Cancelled``.
        """
        while self._holder is not None or (
            self.winner is not None and self.winner is not contender
        ):
            # A loser waits here until its cancellation (commit() cancelled its scope).
            await self._park()
        self._holder = contender

    def release(self) -> None:
        self._holder = None
        self._wake()

    def commit(self, contender: Contender) -> None:
        """``contender``'s output reached the consumer: it wins, every other attempt loses.

        Synchronous, and called in the step in which the pipe says the batch was taken.
        """
        if self.winner is None:
            self.winner = contender
        for other in list(self._live):
            if other is not contender:
                other.lose()

    async def win_empty(self, contender: Contender) -> None:
        """``contender`` finished without visible output: wait until it may win (see the
        module docstring), then win. Returns at once, without a checkpoint, when it is the
        only live attempt.

        Cancellation: cancelled (another attempt won, or the stream ended) while waiting.
        """
        if self.winner is contender:
            return
        contender.finished_empty = True
        self._wake()
        while not self._may_win_empty(contender):
            await self._park()
        self.commit(contender)

    def _may_win_empty(self, contender: Contender) -> bool:
        if self._stopped:
            return False
        if self.winner is not None:
            return self.winner is contender
        others = [c for c in self._live if c is not contender]
        return all(c.finished_empty and c.number > contender.number for c in others)
