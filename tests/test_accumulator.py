"""The response accumulator (``_Accumulator``, issue 16 cost 3): exact text and reasoning per
choice for any sequence of pieces, in time and memory linear in the response's length.

Speed itself is never asserted (flaky on a shared machine); what makes it linear is: a
compaction joins only the last run of pieces, never the text so far, so no single ``add``
allocates more than one run's worth of characters, and the structure holds one block per
``_COMPACT_AT`` pieces.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence
from unittest import mock

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import LLM as BaseLLM
from trio_llmstream import (
    APIConnectOptions,
    APITimeoutError,
    AttemptInfo,
    ChatChunk,
    ChatContext,
    ChatRequest,
    Choice,
    ChoiceDelta,
    ChunkEmitter,
    StreamInterrupted,
    Timeouts,
    open_llm_stream,
)
from trio_llmstream import _stream as runtime

RID = "req-acc"

# (choice index, "content" | "reasoning", piece); pieces include "" and multi-byte text.
_Piece = tuple[int, str, str]

pieces_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=4),
        st.sampled_from(["content", "reasoning"]),
        st.one_of(
            st.just(""),
            st.text(max_size=6),
            st.sampled_from([" the", " über", " 東京", " 😀", "é", "\U0010ffff", "\x00"]),
        ),
    ),
    max_size=400,
)


def _chunk(index: int, kind: str, piece: str) -> ChatChunk:
    delta = ChoiceDelta(content=piece) if kind == "content" else ChoiceDelta(reasoning=piece)
    return ChatChunk(RID, [Choice(delta, index=index)])


def _batches(pieces: Sequence[_Piece], sizes: Sequence[int]) -> list[Sequence[_Piece]]:
    """The pieces cut into batches of the given sizes (cycled; 0 = an empty batch)."""
    if not any(sizes):
        sizes = [1]  # all zero (or none): one piece per batch, so the cutting ends
    out: list[Sequence[_Piece]] = []
    i = k = 0
    while i < len(pieces):
        size = sizes[k % len(sizes)]
        out.append(pieces[i : i + size])
        i += size
        k += 1
    return out


def _expected(pieces: Sequence[_Piece]) -> dict[int, tuple[str, str]]:
    text: dict[int, str] = {0: ""}
    reasoning: dict[int, str] = {0: ""}
    for index, kind, piece in pieces:
        text.setdefault(index, "")
        reasoning.setdefault(index, "")
        if kind == "content":
            text[index] += piece
        else:
            reasoning[index] += piece
    return {i: (text[i], reasoning[i]) for i in text}


def _as_dict(acc: runtime._Accumulator, *, partial: bool) -> dict[int, tuple[str, str]]:
    response = acc.collected(partial=partial)
    assert response.text == response.choices[0].text
    assert response.reasoning == response.choices[0].reasoning
    assert [c.index for c in response.choices] == sorted(c.index for c in response.choices)
    return {c.index: (c.text, c.reasoning) for c in response.choices}


@given(
    pieces=pieces_strategy,
    sizes=st.lists(st.integers(min_value=0, max_value=7), max_size=5),
    compact_at=st.sampled_from([1, 2, 3, 7, 64]),
    peek_every=st.integers(min_value=0, max_value=50),
)
def test_collected_equals_plain_concatenation(
    pieces: list[_Piece], sizes: list[int], compact_at: int, peek_every: int
) -> None:
    """For any pieces (empty, multi-byte, many choices, content and reasoning interleaved), in
    any batching, with any compaction period, ``collected()`` (final and partial, also asked
    mid-stream) is exactly the concatenation per choice and kind."""
    with mock.patch.object(runtime, "_COMPACT_AT", compact_at):
        acc = runtime._Accumulator()
        done: list[_Piece] = []
        for n, batch in enumerate(_batches(pieces, sizes)):
            acc.add([_chunk(*p) for p in batch])
            done.extend(batch)
            if peek_every and n % peek_every == 0:
                # Asking mid-stream (a StreamInterrupted.partial) must not disturb what follows.
                assert _as_dict(acc, partial=True) == _expected(done)
        expected = _expected(pieces)
        assert _as_dict(acc, partial=False) == expected
        assert _as_dict(acc, partial=True) == expected
        assert acc.chunks == len(pieces)


def _entries(part: runtime._Text) -> int:
    return len(part.blocks) + len(part.run)


def test_structure_stays_bounded_for_50000_pieces() -> None:
    """One str per ``_COMPACT_AT`` pieces (the memory bound that motivated compaction), at every
    step, for content and reasoning, on two choices; the text stays exact."""
    n = 50_000
    words = [" the", " quick brown", "", " über", " 東京 😀", "x"]
    acc = runtime._Accumulator()
    expected: list[str] = []
    at = runtime._COMPACT_AT
    for i in range(n):
        word = words[i % len(words)]
        expected.append(word)
        acc.add([
            ChatChunk(RID, [Choice(ChoiceDelta(content=word, reasoning=word)),
                            Choice(ChoiceDelta(content=word), index=3)]),
        ])  # fmt: skip
        pieces = len(expected) - expected.count("") if i % 997 == 0 else None
        for part in (acc.text[0], acc.reasoning[0], acc.text[3]):
            assert len(part.run) < at
            if pieces is not None:
                assert _entries(part) <= pieces // at + at
    stored = sum(1 for w in expected if w)
    for part in (acc.text[0], acc.reasoning[0], acc.text[3]):
        assert _entries(part) <= stored // at + at
        assert len(part.blocks) == stored // at
    response = acc.collected()
    whole = "".join(expected)
    assert response.text == whole
    assert response.reasoning == whole
    assert response.choices[1].index == 3
    assert response.choices[1].text == whole
    assert response.choices[1].reasoning == ""


def test_no_add_copies_the_text_so_far() -> None:
    """The defect itself, measured deterministically: before the fix every 64th ``add`` joined
    the whole text so far (allocating a copy of it: O(n^2) characters over the response).
    Now no single ``add`` allocates more than one run's worth, however long the text is."""
    n = 20_000
    word = " 東京 über"  # non-ASCII: 4 bytes per character in a str
    acc = runtime._Accumulator()
    run_bytes = runtime._COMPACT_AT * len(word) * 4
    worst = 0
    tracemalloc.start()
    try:
        for _ in range(n):
            batch = [ChatChunk(RID, [Choice(ChoiceDelta(content=word, reasoning=word))])]
            tracemalloc.reset_peak()
            before, _peak = tracemalloc.get_traced_memory()
            acc.add(batch)
            _now, peak = tracemalloc.get_traced_memory()
            worst = max(worst, peak - before)
    finally:
        tracemalloc.stop()
    text_bytes = n * len(word) * 4
    # The whole text is ~640 KB here; a run ~2 KB (plus object headers and list growth).
    bound = 2 * run_bytes + 4096
    assert bound < text_bytes // 50
    assert worst < bound, f"one add allocated {worst} bytes (a run is {run_bytes})"
    assert acc.collected().text == word * n


# -- through a stream: StreamInterrupted.partial and collect() ---------------------------------


class _ManualLLM(BaseLLM):
    def __init__(self, chunks: list[ChatChunk], *, stall: bool) -> None:
        super().__init__(label="manual")
        self.chunks = chunks
        self.stall = stall

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        for i in range(0, len(self.chunks), 5):
            await emit.send(self.chunks[i : i + 5])
        if self.stall:
            await trio.sleep(10)  # over the idle limit: the stream is interrupted


def _ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hello")
    return c


def _long_pieces(n: int) -> list[_Piece]:
    words = ["", " a", " über", " 東京", " 😀 ok"]
    return [(i % 3, "content" if i % 4 else "reasoning", words[i % len(words)]) for i in range(n)]


@pytest.mark.parametrize("stall", [False, True])
async def test_stream_response_exact_over_many_compactions(
    autojump_clock: trio.abc.Clock, stall: bool
) -> None:
    """3,000 pieces over three choices through a real stream: ``collect()`` when it completes,
    ``StreamInterrupted.partial`` when the idle limit interrupts it, both exact."""
    pieces = _long_pieces(3_000)
    llm = _ManualLLM([_chunk(*p) for p in pieces], stall=stall)
    options = APIConnectOptions(max_retry=0, timeouts=Timeouts(idle=1.0))
    expected = _expected(pieces)
    async with open_llm_stream(llm, chat_ctx=_ctx(), conn_options=options) as stream:
        if stall:
            with pytest.raises(StreamInterrupted) as info:
                await stream.collect()
            assert isinstance(info.value.cause, APITimeoutError)
            partial = info.value.partial
            assert {c.index: (c.text, c.reasoning) for c in partial.choices} == expected
            assert partial.text == expected[0][0]
            assert partial.finish_reason is None
        else:
            response = await stream.collect()
            assert {c.index: (c.text, c.reasoning) for c in response.choices} == expected
            assert response.reasoning == expected[0][1]
