"""The shared event-stream parser (trio_llmstream._core._parser) over a toy protocol.

The toy protocol is small enough to be obviously right: each ``message`` event's data is a
piece of text (a chunk), except ``END`` (the stream completed) and an empty data field
(nothing); an ``event: fail`` ends the stream with a ``ProviderError``; other event types are
ignored. Two assemblers implement it: one with only the ``EventAssembler`` methods (it gets
events from the decoder) and one that also opts into the framing shortcut with
``feed_payloads``. Both, under any chunking, must agree with a reference made of the public
``SSEDecoder`` and the toy's ``feed_events`` on the whole body: the same chunks, the same error,
reported with the same read, and ``progress`` moving on exactly the reads that completed a
data-carrying event.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    APIError,
    ChatChunk,
    ProviderError,
    StreamProtocolError,
    StreamTruncatedError,
)
from trio_llmstream._core._build import make_choice, make_chunk, make_delta
from trio_llmstream._core._parser import EventAssembler, EventStreamParser, PayloadAssembler
from trio_llmstream._core._sse import WINDOW, ServerSentEvent
from trio_llmstream.sse import SSEDecoder

from .test_sse import BOM, bytewise, cut, split_points, streams

# -- the toy protocol --------------------------------------------------------------------------


class ToyEvents:
    """The toy protocol's assembler, written against feed_events / end / fail only."""

    __slots__ = ("done", "error", "event_calls", "finished", "progress", "request_id", "usage")

    def __init__(self) -> None:
        self.finished = False
        self.error: APIError | None = None
        self.progress = 0
        self.usage = None
        self.request_id: str | None = "toy"
        self.done = False
        self.event_calls = 0

    def feed_events(self, events: Iterable[ServerSentEvent]) -> list[ChatChunk]:
        out: list[ChatChunk] = []
        self.event_calls += 1
        moved = False
        for event in events:
            if self.finished:
                break
            if event.event == "message":
                moved = True
                self._message(event.data, out)
            elif event.event == "fail":
                moved = True
                self.fail(ProviderError(event.data or "failed", request_id="toy"))
        if moved:
            self.progress += 1
        return out

    def end(self) -> list[ChatChunk]:
        if not self.finished:
            self.fail(StreamTruncatedError("no END", request_id="toy"))
        return []

    def fail(self, error: APIError) -> None:
        self.error = error.with_traceback(None)
        self.finished = True

    def _message(self, text: str, out: list[ChatChunk]) -> None:
        if text == "END":
            self.done = self.finished = True
        elif text:
            out.append(
                make_chunk("toy", [make_choice(make_delta(None, text, [], None), 0, None)], None)
            )


class ToyPayloads(ToyEvents):
    """The same protocol, opting into the framing shortcut."""

    __slots__ = ("payload_calls",)

    def __init__(self) -> None:
        super().__init__()
        self.payload_calls = 0

    def feed_payloads(
        self, payloads: Iterable[str | bytes | bytearray], out: list[ChatChunk]
    ) -> None:
        if self.finished:
            return
        self.payload_calls += 1
        self.progress += 1
        for payload in payloads:
            text = (
                payload if isinstance(payload, str) else bytes(payload).decode("utf-8", "replace")
            )
            self._message(text, out)
            if self.finished:
                return


# Both satisfy the protocols the parser is typed against.
_as_event_assembler: type[EventAssembler] = ToyEvents
_as_payload_assembler: type[PayloadAssembler] = ToyPayloads


@attrs.frozen
class Run:
    texts: list[str]
    error: tuple[type[BaseException], str] | None
    done: bool
    # Per read: whether progress moved, and whether the error was known after it. Compared
    # only between runs over the same reads.
    moved: list[bool] = attrs.field(eq=False, factory=list)
    failed: list[bool] = attrs.field(eq=False, factory=list)


def _texts(chunks: Iterable[ChatChunk]) -> list[str]:
    return [k.text for k in chunks]


def _result(asm: ToyEvents, chunks: list[ChatChunk], moved: list[bool], failed: list[bool]) -> Run:
    err = asm.error
    return Run(
        _texts(chunks),
        (type(err), str(err)) if err is not None else None,
        asm.done,
        moved,
        failed,
    )


def through_parser(
    asm: ToyEvents, reads: Sequence[bytes], *, blocks: bool = False, **limits: int
) -> Run:
    # ``blocks``: through ToyBlocks (the skeleton with a protocol's own block handler).
    parser = ToyBlocks(asm, **limits) if blocks else EventStreamParser(asm, **limits)
    chunks: list[ChatChunk] = []
    moved: list[bool] = []
    failed: list[bool] = []
    for data in reads:
        before = parser.progress
        chunks += parser.feed(data)
        moved.append(parser.progress != before)
        failed.append(parser.error is not None)
    chunks += parser.end()
    assert parser.finished
    assert parser.end() == []
    assert parser.feed(b"data: late\n\n") == []
    return _result(asm, chunks, moved, failed)


def reference(reads: Sequence[bytes], **limits: int) -> Run:
    """The public decoder, read by read, feeding the toy's feed_events."""
    asm = ToyEvents()
    decoder = SSEDecoder(**limits)
    chunks: list[ChatChunk] = []
    moved: list[bool] = []
    failed: list[bool] = []
    for data in reads:
        before = asm.progress
        if not asm.finished:
            try:
                events = decoder.feed(data)
            except StreamProtocolError as exc:
                asm.fail(exc)
            else:
                chunks += asm.feed_events(events)
                # A broken limit after events: the decoder raises it on its next call.
                if decoder.error is not None and not asm.finished:
                    asm.fail(decoder.error)
        moved.append(asm.progress != before)
        failed.append(asm.error is not None)
    if not asm.finished:
        try:
            decoder.end()
        except StreamProtocolError as exc:  # pragma: no cover - reported with the read
            asm.fail(exc)
        chunks += asm.end()
    return _result(asm, chunks, moved, failed)


# -- strategies ----------------------------------------------------------------------------------

toy_blocks = st.one_of(
    st.text(alphabet="abcé東 :", max_size=8).map(lambda t: [b"data: " + t.encode()]),
    st.sampled_from(
        [
            [b"data: END"],
            [b"data:"],
            [b"data:tight"],
            [b"data:  two spaces"],
            [b": keep-alive"],
            [b"event: ping", b"data: p"],
            [b"event: fail", b"data: boom"],
            [b"id: 7", b"data: with id"],
            [b"data: a", b"data: b"],
            [b"retry: 10"],
            [b"data: bad \xff utf8"],
            [BOM + b"data: not data", b"data: x"],  # a BOM only counts at the start
            [],
        ]
    ),
)


@st.composite
def toy_streams(draw: st.DrawFn) -> bytes:
    cr = draw(st.integers(0, 9)) == 0  # mostly LF-only, the shortcut's stream
    parts: list[bytes] = [BOM] if draw(st.integers(0, 9)) == 0 else []
    for block in draw(st.lists(toy_blocks, max_size=10)):
        for line in [*block, b""]:
            parts += [line, draw(st.sampled_from([b"\n", b"\r\n", b"\r"])) if cr else b"\n"]
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from([b"data: cut", b"data: END", b"event: fail"])))
    return b"".join(parts)


bodies = st.one_of(toy_streams(), toy_streams(), streams())
limits = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"max_line_size": st.integers(1, 40), "max_event_size": st.integers(1, 40)}
    ),
)


class ToyBlocks(EventStreamParser):
    """The shared framing with a protocol's own block handler, as Anthropic's and Responses'
    parsers use it: two-line ``event:``/``data:`` blocks taken apart here, every other block
    through ``_whole_block`` (the decoder), lone data lines through ``_use_shortcut``."""

    __slots__ = ()

    assembler: ToyEvents

    def __init__(self, assembler: ToyEvents, **limits: int) -> None:
        super().__init__(assembler, **limits)
        self._use_shortcut(self._lone_data)

    def _lone_data(self, payloads: Iterable[bytes | bytearray], out: list[ChatChunk]) -> None:
        out += self.assembler.feed_events(
            ServerSentEvent(data=bytes(p).decode("utf-8", "replace")) for p in payloads
        )

    def _blocks(self, region: bytes | bytearray, out: list[ChatChunk]) -> None:
        asm = self.assembler
        for block in bytes(region).split(b"\n\n"):
            if not block:
                continue
            nl = block.find(10)
            if (
                len(block) <= self._limit
                and block.startswith(b"event: ")
                and block.startswith(b"data: ", nl + 1)
                and block.find(10, nl + 1) < 0
            ):
                name = block[7:nl].decode("utf-8", "replace")
                data = block[nl + 7 :].decode("utf-8", "replace")
                out += asm.feed_events([ServerSentEvent(name, data)])
            else:
                self._whole_block(block, out)
            if asm.finished:
                return


def through_blocks(reads: Sequence[bytes], **limits: int) -> Run:
    return through_parser(ToyEvents(), reads, blocks=True, **limits)


# -- properties ----------------------------------------------------------------------------------


@given(bodies, limits, st.data())
def test_the_skeleton_with_a_protocol_s_block_handler_matches_the_reference(
    body: bytes, bounds: dict[str, int], data: st.DataObject
) -> None:
    # The framing skeleton alone (BOM and CR hand-over, windows, pending block, bounds), as the
    # Anthropic and Responses parsers share it: under any chunking, the decoder's result.
    expected = reference([body], **bounds)
    for reads in ([body], bytewise(body), data.draw(split_points(body), label="reads")):
        ref = reference(reads, **bounds)
        got = through_blocks(reads, **bounds)
        assert got == expected
        assert got.failed == ref.failed
        assert got.moved == ref.moved


@given(st.binary(max_size=400), limits, st.data())
def test_the_skeleton_matches_the_reference_on_arbitrary_bytes(
    body: bytes, bounds: dict[str, int], data: st.DataObject
) -> None:
    expected = reference([body], **bounds)
    assert through_blocks([body], **bounds) == expected
    reads = data.draw(split_points(body), label="reads")
    assert through_blocks(reads, **bounds) == expected


def test_the_skeleton_windows_a_huge_read() -> None:
    # One read far beyond a window: processed a window at a time, the same result.
    body = b"event: ping\ndata: p\n\n" * (3 * WINDOW // 20) + b"data: x\n\ndata: END\n\n"
    assert through_blocks([body]) == reference([body])
    assert through_blocks([body]).texts == ["x"]


@given(bodies, limits, st.data())
def test_both_paths_match_the_reference_under_any_chunking(
    body: bytes, bounds: dict[str, int], data: st.DataObject
) -> None:
    expected = reference([body], **bounds)
    for reads in ([body], bytewise(body), data.draw(split_points(body), label="reads")):
        ref = reference(reads, **bounds)
        assert ref == expected  # the reference itself is chunking-invariant
        for make in (ToyEvents, ToyPayloads):
            got = through_parser(make(), reads, **bounds)
            assert got == expected, make.__name__
            # Errors (a broken bound, or the toy's own) are known with the same read.
            assert got.failed == ref.failed, make.__name__
            # The progress rule: it moves on exactly the reads that completed a data event.
            assert got.moved == ref.moved, make.__name__


@given(st.integers(0, 5), st.integers(8, 64), st.data())
def test_a_broken_line_bound_comes_after_the_earlier_events_with_the_read_that_broke_it(
    good: int, limit: int, data: st.DataObject
) -> None:
    head = b"".join(b"data: %d\n\n" % i for i in range(good))
    body = head + b"data: " + b"x" * (2 * limit) + b"\n\ndata: after\n\n"
    # The bound is broken by the line's (limit + 1)-th byte.
    breaking = len(head) + limit
    reads = data.draw(split_points(body), label="reads")
    for make in (ToyEvents, ToyPayloads):
        asm = make()
        parser = EventStreamParser(asm, max_line_size=limit, max_event_size=1 << 20)
        texts: list[str] = []
        pos = 0
        for read in reads:
            texts += _texts(parser.feed(read))
            pos += len(read)
            assert (parser.error is not None) == (pos > breaking), (make.__name__, pos)
        parser.end()
        assert texts == [str(i) for i in range(good)]
        assert isinstance(parser.error, StreamProtocolError)
        assert "max_line_size" in str(parser.error)
        assert parser.error.__traceback__ is None


def test_a_broken_event_bound_comes_after_the_earlier_events() -> None:
    # Many short data lines in one block: each line is within its bound, the event is not.
    body = b"data: ok\n\n" + b"data: xxxxxxx\n" * 20 + b"\ndata: after\n\n"
    for reads in ([body], bytewise(body), cut(body, [5, 15, 40])):
        for make in (ToyEvents, ToyPayloads):
            run = through_parser(make(), reads, max_event_size=64)
            assert run.texts == ["ok"]
            assert run.error is not None
            assert run.error[0] is StreamProtocolError
            assert "max_event_size" in run.error[1]


# -- the shortcut --------------------------------------------------------------------------------


def test_data_only_blocks_take_the_shortcut_until_a_cr_hands_over_for_good() -> None:
    asm = ToyPayloads()
    parser = EventStreamParser(asm)
    assert _texts(parser.feed(b"data: a\n\n")) == ["a"]
    assert _texts(parser.feed(b"data: b\n\ndata: c\n\n: note\n\ndata:d\n\n")) == ["b", "c", "d"]
    assert asm.event_calls == 0  # no event was built
    assert asm.payload_calls > 0
    calls = asm.payload_calls
    assert _texts(parser.feed(b"data: e\r\n\r\n")) == ["e"]
    assert _texts(parser.feed(b"data: f\n\n")) == ["f"]
    assert asm.payload_calls == calls  # from the CR on, the decoder's events only
    assert asm.event_calls > 0
    parser.feed(b"data: END\n\n")
    assert parser.finished
    assert parser.error is None


def test_other_blocks_in_the_shortcut_go_to_the_decoder_in_order() -> None:
    asm = ToyPayloads()
    parser = EventStreamParser(asm)
    body = b"data: a\n\nevent: ping\ndata: p\n\ndata: b\n\nid: 1\ndata: c\n\ndata: END\n\n"
    assert _texts(parser.feed(body)) == ["a", "b", "c"]
    assert asm.event_calls > 0
    assert asm.payload_calls > 0
    assert parser.finished
    assert parser.error is None


def test_a_bom_after_the_start_is_no_bom_whichever_path_sees_it() -> None:
    # The decoder meets the shortcut's stream at a later block: it must not take that block's
    # first bytes for the stream's byte-order mark ("\ufeffdata" is an unknown field).
    body = b"data: a\n\n" + BOM + b"data: hidden\ndata: x\n\ndata: END\n\n"
    expected = reference([body])
    assert expected.texts == ["a", "x"]
    for reads in ([body], bytewise(body)):
        for make in (ToyEvents, ToyPayloads):
            assert through_parser(make(), reads) == expected


def test_an_assembler_without_feed_payloads_gets_events_only() -> None:
    asm = ToyEvents()
    assert not hasattr(asm, "feed_payloads")
    parser = EventStreamParser(asm)
    assert _texts(parser.feed(b"data: a\n\ndata: b\n\n")) == ["a", "b"]
    assert _texts(parser.feed(b"data: END\n\n")) == []
    assert parser.finished
    assert parser.error is None
    assert asm.event_calls == 2


# -- endings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [ToyEvents, ToyPayloads])
def test_an_assembler_error_mid_read_ends_the_stream(make: type[ToyEvents]) -> None:
    asm = make()
    parser = EventStreamParser(asm)
    body = b"data: a\n\nevent: fail\ndata: boom\n\ndata: b\n\n"
    assert _texts(parser.feed(body)) == ["a"]
    error = parser.error
    assert isinstance(error, ProviderError)
    assert error.message == "boom"
    assert parser.feed(b"data: c\n\n") == []
    assert parser.end() == []
    assert parser.error is error


@pytest.mark.parametrize("make", [ToyEvents, ToyPayloads])
def test_truncation_is_the_assembler_s_decision(make: type[ToyEvents]) -> None:
    asm = make()
    parser = EventStreamParser(asm)
    assert _texts(parser.feed(b"data: a\n\ndata: END")) == ["a"]  # END's block is unfinished
    assert parser.end() == []
    assert isinstance(parser.error, StreamTruncatedError)
    assert parser.end() == []


@pytest.mark.parametrize("make", [ToyEvents, ToyPayloads])
def test_nothing_after_the_end_of_the_stream_is_decoded(make: type[ToyEvents]) -> None:
    # A large read: many windows of events, the toy's END, then a line far past the bound,
    # which would be an error if it were looked at.
    events = b"".join(b"data: %d\n\n" % i for i in range(WINDOW // 4))
    body = events + b"data: END\n\n" + b"data: " + b"x" * (4 * WINDOW) + b"\n\n"
    asm = make()
    parser = EventStreamParser(asm, max_line_size=WINDOW, max_event_size=WINDOW)
    out = parser.feed(body)
    assert len(out) == WINDOW // 4
    assert parser.finished
    assert parser.error is None
    assert parser.end() == []


def test_the_parser_reports_the_assembler_s_state() -> None:
    asm = ToyPayloads()
    parser = EventStreamParser(asm)
    parser.feed(b"data: a\n\n")
    assert parser.assembler is asm
    assert (parser.progress, parser.request_id, parser.usage) == (1, "toy", None)
    assert (parser.finished, parser.error) == (False, None)


@pytest.mark.parametrize("size", [4096, WINDOW])
def test_a_parser_holds_only_its_unfinished_block_between_reads(size: int) -> None:
    # Memory per stream: after a read is consumed the parser keeps the unfinished block's
    # bytes, not the capacity the read needed (a bytearray keeps its allocation when its front
    # is deleted unless it shrinks well below it: a window's worth per idle stream otherwise).
    import gc
    import tracemalloc

    block = b"data: " + b"x" * 90 + b"\n\n"
    partial = b"data: " + b"y" * 94  # 100 bytes of an event still to come
    read = block * ((size - len(partial)) // len(block))
    read += partial
    parsers = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):
            parser = EventStreamParser(ToyPayloads())
            parser.feed(read)
            parsers.append(parser)
        held = (tracemalloc.get_traced_memory()[0] - before) / len(parsers)
    finally:
        tracemalloc.stop()
    assert all(not p.finished and p.error is None for p in parsers)
    # The parser, its decoder and the toy assembler are ~1 KiB; the unfinished block 100 bytes.
    assert held < 2048, held
