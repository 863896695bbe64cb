"""Property tests: any interleaving of writes, flush failures, reader disconnects and resumes.

Hypothesis draws a source (chunks with delays and one of five endings: an explicit end, an
error followed by [DONE], a typed error raised, just stopping, or the writer cancelled at a
drawn time), the recorder's batching, a plan of failed writes (failing before the write, or
after it as if the reply was lost), the journal's ``max_entries`` (often below the run's
length), and readers that disconnect after a few entries, pause, and resume from their
position or from before it. Whatever happens:

- the journal holds, as entries 1..n, exactly the chunks the source yielded before its
  ending, each once and in order, then exactly one terminal entry, the one expected; or, if
  they were more than ``max_entries``, the first ``max_entries`` of them and a ``RunTooLong``
  ending (a live run is bounded, never trimmed);
- every reader connection got exactly the entries after the position it asked for, in order,
  without gap or duplicate, equal to the journal's, and its last connection ended with the
  terminal entry.

Against MemoryJournal under trio's MockClock, with the examples of the hypothesis profile;
against RedisJournal in real time with fewer examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_llmstream import APIStatusError, ChatChunk, StreamStatus
from trio_llmstream.journal import (
    ErrorInfo,
    Journal,
    JournalEntry,
    MemoryJournal,
    RecordOptions,
    RecordResult,
    RunEnd,
    open_redis_journal,
    record,
)
from trio_llmstream.testing.strategies import chunk_sequences

from .conftest import unique_prefix
from .helpers import FlakyJournal, Source, check_run, read_all
from .redis_server import RedisServer

RUN = "prop"
FAILED = RunEnd(StreamStatus.FAILED, error=ErrorInfo("ProviderError", "overloaded", True))
TYPED_ERROR = APIStatusError("unavailable", status_code=503)


@dataclass
class Segment:
    count: int  # entries read before disconnecting
    pause: float  # before reconnecting
    back: int  # resume this many entries before the position reached


@dataclass
class ReaderSpec:
    start: int
    segments: list[Segment]


@dataclass
class Scenario:
    chunks: list[ChatChunk]
    ending: str
    delays: list[float]
    options: RecordOptions
    plan: list[str]
    cancel_at: float
    readers: list[ReaderSpec]
    max_entries: int

    def items(self) -> list[ChatChunk | RunEnd]:
        items: list[ChatChunk | RunEnd] = list(self.chunks)
        if self.ending in ("completed", "cancel"):
            items.append(RunEnd(StreamStatus.COMPLETED, "stop"))
        elif self.ending == "error_then_done":
            items += [FAILED, RunEnd(StreamStatus.COMPLETED, "stop")]
        return items


@st.composite
def scenarios(draw: st.DrawFn, *, delays: list[float], cancel_max: float) -> Scenario:
    chunks = draw(chunk_sequences(max_visible=10))
    ending = draw(st.sampled_from(["completed", "error_then_done", "raise", "stop", "cancel"]))
    if ending == "stop" and draw(st.booleans()):
        chunks = [c for c in chunks if not any(ch.finish_reason for ch in c.choices)]
    n_items = len(chunks) + 2
    options = RecordOptions(
        batch_size=draw(st.integers(1, 6)),
        flush_interval=draw(st.sampled_from([0.0, delays[1], delays[2]])),
        max_pending=draw(st.integers(1, 6)),
        retry_initial=delays[1] or 0.001,
        retry_max=delays[2],
    )
    readers = draw(
        st.lists(
            st.builds(
                ReaderSpec,
                st.integers(0, n_items + 1),
                st.lists(
                    st.builds(
                        Segment,
                        st.integers(1, 5),
                        st.sampled_from(delays),
                        st.integers(0, 3),
                    ),
                    max_size=4,
                ),
            ),
            min_size=1,
            max_size=3,
        )
    )
    return Scenario(
        chunks=chunks,
        ending=ending,
        delays=draw(st.lists(st.sampled_from(delays), min_size=n_items, max_size=n_items)),
        options=options,
        plan=draw(st.lists(st.sampled_from(["ok", "ok", "before", "after"]), max_size=10)),
        cancel_at=draw(st.floats(0, cancel_max)),
        readers=readers,
        max_entries=draw(st.one_of(st.just(1000), st.integers(1, 8))),
    )


@dataclass
class Outcome:
    result: RecordResult | None = None
    cancelled: bool = False
    logs: list[list[tuple[int, list[JournalEntry]]]] = field(default_factory=list)


async def run_scenario(journal: Journal, sc: Scenario) -> None:
    items = sc.items()
    source = Source(
        items,
        delay=sc.delays[: len(items)],
        error=TYPED_ERROR if sc.ending == "raise" else None,
    )
    flaky = FlakyJournal(journal, sc.plan)
    out = Outcome()

    writer_scope = trio.CancelScope()

    async def writer(*, task_status: trio.TaskStatus[None]) -> None:
        with writer_scope:
            out.result = await record(
                flaky, RUN, source, options=sc.options, task_status=task_status
            )
        out.cancelled = writer_scope.cancelled_caught

    async def cancel_writer() -> None:
        await trio.sleep(sc.cancel_at)
        writer_scope.cancel()

    async def reader(spec: ReaderSpec) -> None:
        log: list[tuple[int, list[JournalEntry]]] = []
        out.logs.append(log)
        position = spec.start
        for segment in [*spec.segments, Segment(math.inf, 0, 0)]:  # type: ignore[arg-type]
            follower = journal.follow(RUN, after=position, abandon_after=1e6)
            got: list[JournalEntry] = []
            async for entry in follower:
                got.append(entry)
                if len(got) >= segment.count:
                    break
            log.append((position, got))
            if follower.done:
                return
            await trio.sleep(segment.pause)
            position = max(0, follower.position - segment.back)

    async with trio.open_nursery() as nursery:
        await nursery.start(writer)
        if sc.ending == "cancel":
            nursery.start_soon(cancel_writer)
        for spec in sc.readers:
            nursery.start_soon(reader, spec)

    final = await read_all(journal, RUN)
    # Everything the source yielded before its ending, once, in order, then one ending.
    yielded = items[: source.yielded]
    first_end = next((i for i, x in enumerate(yielded) if isinstance(x, RunEnd)), len(yielded))
    expected_chunks = [x for x in yielded[:first_end] if isinstance(x, ChatChunk)]
    if len(expected_chunks) > sc.max_entries:
        # Too long: the journal kept the first max_entries chunks and ended the run.
        end = check_run(final, expected_chunks[: sc.max_entries], StreamStatus.FAILED)
        assert end.too_long
        assert end.error is not None
        assert end.error.type == "RunTooLong"
        if not out.cancelled:
            assert out.result is not None
            assert out.result.end == final[-1]
            assert out.result.chunks == sc.max_entries
    elif out.cancelled:
        end = check_run(final, expected_chunks)
        assert end == RunEnd(StreamStatus.CANCELLED, end.finish_reason)
    else:
        end = check_run(final, expected_chunks)
        assert not end.too_long
        assert out.result is not None
        assert out.result.end == final[-1]
        assert out.result.chunks == len(expected_chunks)
        if sc.ending in ("completed", "cancel"):
            assert end == RunEnd(StreamStatus.COMPLETED, "stop")
        elif sc.ending == "error_then_done":
            assert end == FAILED
        elif sc.ending == "raise":
            assert end == RunEnd(StreamStatus.FAILED, error=ErrorInfo.from_exception(TYPED_ERROR))
        elif any(c.finish_reason for chunk in sc.chunks for c in chunk.choices):
            assert end.status is StreamStatus.COMPLETED
        else:
            assert end.status is StreamStatus.TRUNCATED
    assert source.closed
    # Every connection got exactly the entries after its position; the last ended the run.
    for log in out.logs:
        for after, got in log:
            assert got == final[after : after + len(got)]
        last_after, last_got = log[-1]
        assert last_got == final[last_after:]


PROFILE_EXAMPLES = settings.default.max_examples


@given(scenarios(delays=[0.0, 0.01, 0.1, 1.0], cancel_max=5.0))
def test_memory_journal_properties(sc: Scenario) -> None:
    async def main() -> None:
        await run_scenario(MemoryJournal(max_entries=sc.max_entries), sc)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# Real time and a real server: fewer examples, shorter delays.
@settings(max_examples=max(10, PROFILE_EXAMPLES // 3))
@given(sc=scenarios(delays=[0.0, 0.001, 0.004, 0.01], cancel_max=0.05))
def test_redis_journal_properties(redis_server: RedisServer, sc: Scenario) -> None:
    async def main() -> None:
        async with open_redis_journal(
            redis_server.url, prefix=unique_prefix(), max_entries=sc.max_entries
        ) as journal:
            with trio.fail_after(20):
                await run_scenario(journal, sc)

    trio.run(main)
