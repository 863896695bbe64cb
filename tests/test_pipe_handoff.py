"""The hand-off policy after the commit point (issue 16, PROFILE.md cost 2): what waits for the
consumer is bounded by bytes (an estimate of the chunks' memory) and by a count, so one socket
read's chunks reach the consumer in one hand-off; and the pipe's one-waiter slots lose nothing
whatever cancellation lands around a wait.
"""

from __future__ import annotations

import gc
import random
import weakref
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_llmstream import (
    LLM,
    AttemptInfo,
    ChatChunk,
    ChatContext,
    ChatRequest,
    ChunkEmitter,
    StreamStatus,
    open_llm_stream,
)
from trio_llmstream import _stream as runtime
from trio_llmstream._pipe import Pipe
from trio_llmstream.testing import text_chunks

# -- the pipe's bounds -----------------------------------------------------------------------------


def test_byte_bound_and_count_bound_each_trip_over_limit() -> None:
    pipe: Pipe[int] = Pipe(5, 100)
    assert not pipe.offer([1, 2], 60)
    assert pipe.pending_bytes == 60
    assert pipe.offer([3], 41)  # 101 bytes > 100, 3 items <= 5
    assert pipe.over_limit
    counted: Pipe[int] = Pipe(2, 10**6)
    assert not counted.offer([1, 2], 0)
    assert counted.offer([3], 0)  # 3 items > 2, bytes far below


async def test_a_take_resets_the_weight() -> None:
    pipe: Pipe[int] = Pipe(5, 100)
    pipe.put_nowait([1], 99)
    pipe.put_nowait([2], 2)
    assert pipe.over_limit
    assert await pipe.get() == [1, 2]
    assert (pipe.pending, pipe.pending_bytes, pipe.over_limit) == (0, 0, False)


async def test_taken_back_items_take_their_weight_with_them() -> None:
    pipe: Pipe[int] = Pipe(0, 100)
    pipe.put_nowait([1, 2], 80)
    with trio.move_on_after(0):
        await pipe.wait_taken(take_back=0)
    assert (pipe.pending, pipe.pending_bytes) == (0, 0)


def test_bad_byte_limit_rejected() -> None:
    with pytest.raises(ValueError, match="byte_limit"):
        Pipe(1, -1)


def test_offer_on_a_closed_pipe_raises() -> None:
    pipe: Pipe[int] = Pipe(1)
    pipe.close()
    with pytest.raises(trio.ClosedResourceError):
        pipe.offer([1], 1)


@settings(deadline=None)
@given(
    puts=st.lists(
        st.tuples(st.integers(1, 6), st.integers(0, 300), st.integers(0, 3)),
        min_size=1, max_size=40,
    ),
    limit=st.integers(0, 12),
    byte_limit=st.integers(0, 600),
    consumer_delays=st.lists(st.integers(0, 3), min_size=1, max_size=10),
)
def test_bounded_in_bytes_and_count_and_nothing_lost(
    puts: list[tuple[int, int, int]],
    limit: int,
    byte_limit: int,
    consumer_delays: list[int],
) -> None:
    # A producer offers batches (count, weight), sleeping a little between some (its socket
    # reads), and waits whenever the pipe says it is over a bound; a consumer takes at its own
    # pace. Whenever the producer goes on without waiting, what waits is within both bounds;
    # when it must wait, what waits exceeds a bound by at most the batch just put; and the
    # consumer receives every item once, in order.
    async def main() -> tuple[list[int], list[int]]:
        pipe: Pipe[int] = Pipe(limit, byte_limit)
        got: list[int] = []
        sent: list[int] = []

        async def producer() -> None:
            n = 0
            for count, weight, pause in puts:
                items = list(range(n, n + count))
                n += count
                sent.extend(items)
                before_items, before_bytes = pipe.pending, pipe.pending_bytes
                if pipe.offer(items, weight):
                    # Over a bound only because of this batch (the bounds held before it).
                    assert before_items <= limit
                    assert before_bytes <= byte_limit
                    assert pipe.over_limit
                    await pipe.wait_taken()
                    assert pipe.pending == 0
                else:
                    assert pipe.pending <= limit
                    assert pipe.pending_bytes <= byte_limit
                if pause:
                    await trio.sleep(pause)
            pipe.close()

        async def consumer() -> None:
            i = 0
            while True:
                await trio.sleep(consumer_delays[i % len(consumer_delays)])
                i += 1
                batch = await pipe.get()
                if batch is None:
                    return
                got.extend(batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            nursery.start_soon(consumer)
        return sent, got

    sent, got = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert got == sent


# -- the one-waiter slots under cancellation ---------------------------------------------------


async def test_cancelled_consumer_wait_leaves_the_slot_empty_and_loses_nothing() -> None:
    pipe: Pipe[int] = Pipe(4)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def waiting_consumer() -> None:
            with scope:
                await pipe.get()

        nursery.start_soon(waiting_consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert pipe._consumer is not None
        scope.cancel()
    assert scope.cancelled_caught
    assert pipe._consumer is None
    pipe.put_nowait([1, 2])  # wakes nobody: the cancelled task is gone from the slot
    assert await pipe.get() == [1, 2]


async def test_consumer_woken_then_cancelled_in_the_same_batch_still_gets_the_items() -> None:
    # The put reschedules the waiting consumer; a cancellation lands before it runs. It is no
    # longer waiting, so the cancellation does not abort the wait: get() returns the items.
    pipe: Pipe[int] = Pipe(4)
    got: list[list[int] | None] = []
    scope = trio.CancelScope()

    async def waiting_consumer() -> None:
        with scope:
            got.append(await pipe.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiting_consumer)
        await trio.testing.wait_all_tasks_blocked()
        pipe.put_nowait([7, 8])
        scope.cancel()
    assert got == [[7, 8]]
    assert pipe.pending == 0


async def test_cancelled_producer_wait_leaves_the_slot_empty() -> None:
    pipe: Pipe[int] = Pipe(0)
    pipe.put_nowait([1])
    with trio.move_on_after(0.01):  # not a checkpoint-free cancel: the task really waits
        await pipe.wait_taken()
    assert pipe._producer is None
    # The consumer's take reschedules nobody (rescheduling a task that no longer waits would
    # crash trio), and the item, not taken back, is delivered.
    assert await pipe.get() == [1]


async def test_producer_woken_then_cancelled_in_the_same_batch_returns_normally() -> None:
    pipe: Pipe[int] = Pipe(0)
    position = pipe.put_nowait([1, 2])
    ended: list[str] = []
    scope = trio.CancelScope()

    async def producer() -> None:
        with scope:
            await pipe.wait_taken(take_back=0)
            ended.append("returned")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert await pipe.get() == [1, 2]  # reschedules the producer...
        scope.cancel()  # ...which is no longer waiting: its wait returns
    assert ended == ["returned"]
    assert pipe.taken(position)


async def test_a_second_waiter_on_one_side_is_a_usage_error() -> None:
    pipe: Pipe[int] = Pipe(4)
    errors: list[BaseException] = []

    async def consumer() -> None:
        try:
            await pipe.get()
        except trio.BusyResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert len(errors) == 1
        pipe.put_nowait([1])  # the first waiter still gets woken
    assert pipe.pending == 0


@settings(deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cancel_at=st.integers(0, 30))
def test_cancellation_at_any_point_of_either_wait_loses_nothing(seed: int, cancel_at: int) -> None:
    # Producer and consumer each wait in their slot at random moments; both are cancelled at a
    # random time, possibly in the batch that wakes them. Afterwards a fresh consumer drains
    # the pipe: every item put is either received once (in order) or, for an exact put whose
    # wait was cancelled before the consumer took it, taken back. Never twice, never lost.
    async def main() -> tuple[list[int], list[int], list[int]]:
        rng = random.Random(seed)
        pipe: Pipe[int] = Pipe(rng.choice([0, 1, 3]), rng.choice([0, 10, 100]))
        got: list[int] = []
        sent: list[int] = []
        back: list[int] = []
        scopes = [trio.CancelScope(), trio.CancelScope()]

        async def producer() -> None:
            n = 0
            with scopes[0]:
                while True:
                    items = list(range(n, n + rng.randint(1, 3)))
                    n += len(items)
                    exact = rng.random() < 0.3
                    start = pipe.pending
                    position = pipe.put_nowait(items, rng.randint(0, 20))
                    sent.extend(items)
                    try:
                        if exact:
                            await pipe.wait_taken(take_back=start)
                        elif pipe.over_limit:
                            await pipe.wait_taken()
                    finally:
                        if exact and not pipe.taken(position):
                            back.extend(items)
                    await trio.sleep(rng.random())

        async def consumer() -> None:
            with scopes[1]:
                while True:
                    batch = await pipe.get()
                    assert batch is not None
                    got.extend(batch)
                    await trio.sleep(rng.random())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            nursery.start_soon(consumer)
            await trio.sleep(cancel_at / 3)
            for scope in scopes:
                scope.cancel()
        assert pipe._consumer is None
        assert pipe._producer is None
        pipe.close()
        while (batch := await pipe.get()) is not None:
            got.extend(batch)
        return sent, got, back

    sent, got, back = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert got == [item for item in sent if item not in back]


# -- the runtime: a read's chunks in one hand-off ------------------------------------------------


def piece(text: str) -> ChatChunk:
    """One chunk of visible text."""
    return text_chunks([text], role=False, finish_reason=None)[0]


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hi")
    return c


class Reads(LLM):
    """Sends ``reads[i]`` chunk by chunk (one ``send`` per chunk, like one HTTP chunk per event
    with no checkpoint in between), then waits a second: the next socket read."""

    def __init__(self, reads: Sequence[Sequence[ChatChunk]]) -> None:
        super().__init__(label="reads")
        self.reads = reads
        self.sent = 0

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        for read in self.reads:
            for chunk in read:
                await emit.send([chunk])
                self.sent += 1
            await trio.sleep(1)  # the socket read: a checkpoint, the network's pace


class RecordingPipe(Pipe[ChatChunk]):
    """The stream's pipe, recording the size (and checking the weight) of every batch the
    consumer takes."""

    __slots__ = ("sizes",)

    def __init__(self, limit: int, byte_limit: float) -> None:
        super().__init__(limit, int(byte_limit))
        self.sizes: list[int] = []

    async def get(self) -> list[ChatChunk] | None:
        weight = self.pending_bytes
        batch = await super().get()
        if batch is not None:
            self.sizes.append(len(batch))
            if len(batch) > 1:  # (a single chunk may weigh anything)
                # Within the bounds plus the one put that tripped a bound.
                last = runtime._CHUNK_BYTES + len(batch[-1].text)
                assert len(batch) <= self.limit + 1
                assert weight <= self.byte_limit + last
        return batch


def record_batches(stream: runtime.LLMStream) -> list[int]:
    """Sizes of the batches the consumer takes from the stream's pipe (to be called as the
    block is entered, before the attempt starts)."""
    pipe = stream._pipe
    assert pipe.pending == 0
    recording = stream._pipe = RecordingPipe(pipe.limit, pipe.byte_limit)
    return recording.sizes


async def test_a_reads_chunks_reach_the_consumer_in_one_hand_off(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Issue 16, cost 2: with the 16-chunk bound a 36-chunk read reached the consumer in
    # batches of 17, 17 and 2, a scheduling round each. Now the read's chunks wait (about
    # 14 KiB by the estimate, under the 16 KiB bound) and the consumer takes them all at the
    # producer's next socket read.
    first = [piece("go")]
    reads = [first] + [[piece(f"w{r}.{i} ") for i in range(36)] for r in range(5)]
    llm = Reads(reads)
    texts: list[str] = []
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        sizes = record_batches(stream)
        async for chunk in stream:
            texts.append(chunk.text)
    assert stream.status is StreamStatus.COMPLETED
    assert texts == [c.text for read in reads for c in read]
    assert sizes == [1, 36, 36, 36, 36, 36]


async def test_a_slow_consumer_meets_backpressure_at_the_byte_bound() -> None:
    # The consumer stops taking: the producer goes on without waiting only while what waits
    # is within 16 KiB (by the estimate), then waits. Chunks of 1,000 characters weigh
    # ~1.4 KiB each, so it blocks at the 12th, far below the 1,024-chunk count.
    text = "x" * 1000
    reads = [[piece("go")] + [piece(text) for _ in range(500)]]  # one read
    llm = Reads(reads)
    weight = runtime._CHUNK_BYTES + len(text)
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        it = stream.__aiter__()
        assert (await it.__anext__()).text == "go"  # the commit
        await trio.testing.wait_all_tasks_blocked()
        pipe = stream._pipe
        # The producer is blocked with just over the bound waiting (the bound plus one put).
        assert pipe.pending_bytes > runtime.DEFAULT_BUFFER_BYTES
        assert pipe.pending_bytes <= runtime.DEFAULT_BUFFER_BYTES + weight
        # ("go" and the completed sends, less "go", plus the send that waits.)
        assert pipe.pending == llm.sent == runtime.DEFAULT_BUFFER_BYTES // weight + 1
        assert pipe.pending < runtime.DEFAULT_BUFFER_SIZE
        await stream.aclose()


@pytest.mark.parametrize("buffer_size", [0, 1, 5, 16])
async def test_buffer_size_still_caps_the_count(buffer_size: int) -> None:
    # The public knob keeps its meaning: at most buffer_size chunks wait after the commit
    # (0: every hand-off waits until the consumer has taken it).
    reads = [[piece("go")] + [piece("y") for _ in range(60)]]  # one read
    llm = Reads(reads)
    async with open_llm_stream(llm, chat_ctx=ctx(), buffer_size=buffer_size) as stream:
        it = stream.__aiter__()
        await it.__anext__()
        await trio.testing.wait_all_tasks_blocked()
        assert stream._pipe.pending == min(buffer_size + 1, 60)
        await stream.aclose()


@settings(deadline=None)
@given(
    lengths=st.lists(st.lists(st.integers(1, 3000), min_size=1, max_size=60), max_size=5),
    buffer_size=st.sampled_from([0, 1, 16, 1024]),
    consumer_delay=st.sampled_from([0.0, 0.3, 2.0]),
)
def test_any_chunk_sizes_deliver_everything_in_order_within_the_bounds(
    lengths: list[list[int]], buffer_size: int, consumer_delay: float
) -> None:
    # Whatever the chunks' sizes, the bound and the consumer's pace: the consumer receives
    # every chunk once, in order; whenever it takes a batch, the batch is within the bounds
    # plus one put (the one that tripped a bound); and when the consumer keeps up, each read
    # arrives in one hand-off.
    reads = [[piece("go")]] + [
        [piece("z" * n) for n in read] for read in lengths
    ]

    async def main() -> tuple[list[str], list[int]]:
        llm = Reads(reads)
        texts: list[str] = []
        async with open_llm_stream(llm, chat_ctx=ctx(), buffer_size=buffer_size) as stream:
            sizes = record_batches(stream)
            async for chunk in stream:
                texts.append(chunk.text)
                if consumer_delay:
                    await trio.sleep(consumer_delay)
        assert stream.status is StreamStatus.COMPLETED
        return texts, sizes

    texts, sizes = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert texts == [c.text for read in reads for c in read]
    if consumer_delay == 0.0 and buffer_size == 1024:
        fits = all(
            sum(runtime._CHUNK_BYTES + n for n in read) <= runtime.DEFAULT_BUFFER_BYTES
            for read in lengths
        )
        if fits:
            assert sizes == [1] + [len(read) for read in lengths]


async def test_the_consumer_lets_an_iterated_batch_die_before_waiting_for_the_next() -> None:
    # Issue 16, cost 1: the consumer kept its last batch until the next one arrived, so with
    # many streams every stream's last batch outlived a scheduler batch (and a GC generation).
    # Now, once iterated, a batch is dropped before the consumer waits.
    refs: list[weakref.ref[ChatChunk]] = []
    go_on = trio.Event()

    class Fresh(LLM):
        async def run_attempt(
            self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
        ) -> None:
            await emit.send([piece("first ")])
            batch = [piece(f"w{i} ") for i in range(5)]
            refs.extend(weakref.ref(c) for c in batch)
            await emit.send(batch)
            del batch
            await go_on.wait()
            await emit.send([piece("last")])

    texts: list[str] = []
    async with open_llm_stream(Fresh(label="fresh"), chat_ctx=ctx()) as stream:
        it = stream.__aiter__()
        texts.append((await it.__anext__()).text)
        for _ in range(5):
            texts.append((await it.__anext__()).text)
        # The consumer has iterated the batch and now waits for the next one.
        async with trio.open_nursery() as nursery:

            async def next_one() -> None:
                texts.append((await it.__anext__()).text)

            nursery.start_soon(next_one)
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            # Only the chunk the consumer itself still holds as its last result could live:
            # here none, since the loop above kept nothing.
            assert [r() for r in refs] == [None] * 5
            go_on.set()
    assert texts == ["first ", "w0 ", "w1 ", "w2 ", "w3 ", "w4 ", "last"]


async def test_two_tasks_waiting_on_one_stream_is_a_usage_error() -> None:
    # The pipe's consumer slot holds one task: a second concurrent iteration fails loudly
    # (trio's BusyResourceError), never a wake-up lost by the first.
    go_on = trio.Event()

    class Later(LLM):
        async def run_attempt(
            self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
        ) -> None:
            await emit.send([piece("first ")])
            await go_on.wait()
            await emit.send([piece("second")])

    got: list[str] = []
    errors: list[BaseException] = []
    async with open_llm_stream(Later(label="later"), chat_ctx=ctx()) as stream:
        it = stream.__aiter__()
        got.append((await it.__anext__()).text)

        async def reader() -> None:
            try:
                got.append((await it.__anext__()).text)
            except trio.BusyResourceError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert len(errors) == 1
            go_on.set()
    assert got == ["first ", "second"]
