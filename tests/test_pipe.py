"""The bounded single-producer pipe between an attempt and the consumer."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_llmstream._pipe import Pipe


async def test_items_are_taken_in_one_batch_without_a_checkpoint() -> None:
    pipe: Pipe[int] = Pipe(10)
    pipe.put_nowait([1, 2])
    pipe.put_nowait([3])
    with trio.testing.assert_no_checkpoints():
        assert await pipe.get() == [1, 2, 3]


async def test_exact_put_waits_until_taken(autojump_clock: trio.abc.Clock) -> None:
    pipe: Pipe[int] = Pipe(10)
    taken_at: list[float] = []

    async def consumer() -> None:
        await trio.sleep(5)
        assert await pipe.get() == [1]
        taken_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        pipe.put_nowait([1])
        await pipe.wait_taken(take_back=0)
        assert trio.current_time() == 5
    assert taken_at == [5]


async def test_cancelled_exact_put_takes_its_items_back(autojump_clock: trio.abc.Clock) -> None:
    pipe: Pipe[int] = Pipe(10)
    pipe.put_nowait([1])
    await pipe.get()
    pipe.put_nowait([2, 3])
    with trio.move_on_after(1):
        await pipe.wait_taken(take_back=0)
    assert pipe.pending == 0
    pipe.close()
    assert await pipe.get() is None


async def test_backpressure_past_the_limit(autojump_clock: trio.abc.Clock) -> None:
    pipe: Pipe[int] = Pipe(2)
    pipe.put_nowait([1, 2])
    assert not pipe.over_limit
    pipe.put_nowait([3])
    assert pipe.over_limit
    with trio.move_on_after(1) as scope:
        await pipe.wait_taken()
    assert scope.cancelled_caught
    assert pipe.pending == 3  # not taken back: already accepted as delivered
    assert await pipe.get() == [1, 2, 3]


async def test_close_delivers_pending_then_ends() -> None:
    pipe: Pipe[int] = Pipe(0)
    pipe.put_nowait([1])
    pipe.close()
    pipe.close()
    assert await pipe.get() == [1]
    assert await pipe.get() is None
    with pytest.raises(trio.ClosedResourceError):
        pipe.put_nowait([2])


async def test_waiting_consumer_is_woken_by_put_and_close() -> None:
    pipe: Pipe[int] = Pipe(4)
    got: list[list[int] | None] = []

    async def consumer() -> None:
        got.append(await pipe.get())
        got.append(await pipe.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        pipe.put_nowait([7])
        await trio.testing.wait_all_tasks_blocked()
        pipe.close()
    assert got == [[7], None]


def test_negative_limit_rejected() -> None:
    with pytest.raises(ValueError, match="limit"):
        Pipe(-1)


async def test_taken_is_a_fact_whatever_ended_the_wait() -> None:
    # The producer's wait is cancelled and, before it runs again, the consumer takes the
    # batch (both in one scheduler batch): the wait raises Cancelled, the items are not taken
    # back, and the pipe says they were taken. The emitter commits on this fact, not on how
    # its wait ended.
    pipe: Pipe[int] = Pipe(0)
    caught: list[bool] = []
    position = pipe.put_nowait([1, 2])

    async def producer(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await pipe.wait_taken(take_back=0)
        caught.append(scope.cancelled_caught)

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not pipe.taken(position)
        scope.cancel()  # the producer's wait is aborted...
        assert await pipe.get() == [1, 2]  # ...and the consumer takes the batch before it runs
    assert caught == [True]
    assert pipe.taken(position)
    assert pipe.pending == 0


async def test_taken_back_items_were_never_taken() -> None:
    pipe: Pipe[int] = Pipe(0)
    first = pipe.put_nowait([1])
    assert await pipe.get() == [1]
    assert pipe.taken(first)
    second = pipe.put_nowait([2, 3])
    with trio.move_on_after(0):
        await pipe.wait_taken(take_back=0)
    assert pipe.pending == 0
    assert not pipe.taken(second)
    third = pipe.put_nowait([4])
    assert third == second - 1  # positions count delivered items only
    assert await pipe.get() == [4]
    assert pipe.taken(third)
    assert pipe.taken(first)
