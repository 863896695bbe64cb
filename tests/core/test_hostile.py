"""The sans-IO core against hostile input: bounded memory, typed errors, nothing lost.

A server (or a decompression bomb in front of one) chooses every byte the core sees. Whatever
it sends, ``ChatCompletionParser`` and ``SSEDecoder``

- hold at most a few MiB beyond their configured line/event limits while processing a read of
  any size; only the returned chunks/events grow with the input, with the valid ones it holds;
- report every failure as one of the library's typed errors (``LLMStreamError`` subclasses),
  after delivering what preceded it in the same read, identically however the input is cut;
- move ``progress`` exactly when a read completed at least one data event.
"""

from __future__ import annotations

import functools
import gc
import random
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    LLMStreamError,
    ProviderError,
    StreamProtocolError,
    StreamTruncatedError,
)
from trio_llmstream._core._openai import ChatCompletionParser
from trio_llmstream._core._sse import WINDOW, ServerSentEvent, SSEDecoder

from .test_openai import Outcome, parse, reads_strategy, reference, sse_bodies

MiB = 1 << 20

# -- memory ------------------------------------------------------------------------------------

# Limits of 256 KiB (each) keep the inputs, and so the tests, small: the parser may hold a
# pending block up to the limit plus a window, the decoder its own pending line or block up to
# the limit, and a window's pieces (64 KiB split into lines or events: up to ~10x); measured
# peaks are at most about 3x the limit. Before windowing, peaks were a multiple of the read
# (+2.4 GB for 64 MiB of LF, +73 MiB for 64 MiB of CR, 3x the read for a long line), so
# reads of 8 MiB (512 KiB on the slow, per-event paths) against a bound of 2 MiB tell the two
# apart at once.
LIMIT = 256 * 1024
LIMITS = {"max_line_size": LIMIT, "max_event_size": LIMIT}
BOUND = 2 * MiB
BIG = 8 * MiB
SMALL = MiB // 2

_CHUNK = b'data:{"choices":[{"delta":{"content":"x"}}]}\n\n'


def _repeat(block: bytes, size: int) -> bytes:
    return block * (size // len(block))


# name -> (input, whether feeding it yields output)
HOSTILE: dict[str, tuple[Callable[[], bytes], bool]] = {
    "lf": (lambda: b"\n" * BIG, False),
    "cr": (lambda: b"\r" * BIG, False),
    "crlf": (lambda: b"\r\n" * (BIG // 2), False),
    "lf_lf_cr": (lambda: _repeat(b"\n\n\r", BIG), False),
    "nul_data_line": (lambda: b"data: " + b"\0" * BIG, False),
    "comment_line": (lambda: b":" * BIG, False),
    "space_line": (lambda: b" " * BIG, False),
    "separators": (lambda: _repeat(b"\n\ndata: ", SMALL), False),
    "comment_lines": (lambda: _repeat(b": ping\n\n", SMALL), False),
    "data_lines_one_block": (lambda: _repeat(b"data:\n", SMALL), False),
    "empty_objects": (lambda: _repeat(b"data: {}\n\n", SMALL), False),
    "empty_objects_crlf": (lambda: _repeat(b"data: {}\r\n\r\n", SMALL), False),
    "bom_then_empty_objects": (lambda: b"\xef\xbb\xbf" + _repeat(b"data: {}\n\n", SMALL), False),
    "ping_events": (lambda: _repeat(b"event: ping\ndata: x\n\n", SMALL), False),
    "tiny_events": (lambda: _repeat(b"data: x\n\n", SMALL), True),
    "valid_chunks": (lambda: _repeat(_CHUNK, SMALL), True),
    "valid_chunks_crlf": (lambda: _repeat(_CHUNK.replace(b"\n", b"\r\n"), SMALL), True),
}


def traced(fn: Callable[[], object]) -> tuple[int, int, object]:
    """Run ``fn`` under tracemalloc: (peak growth, growth still held afterwards, result)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, held, result


def _parse_all(parser: ChatCompletionParser, data: bytes) -> list[Any]:
    out = parser.feed(data)
    out += parser.end()
    return out


def _decode_all(decoder: SSEDecoder, data: bytes) -> list[Any]:
    try:
        out = decoder.feed(data)
        out += decoder.end()
    except StreamProtocolError:
        # The error sticks; raised again it drops the traceback of its first raise (which
        # holds the frames, and so the read, it passed through).
        with pytest.raises(StreamProtocolError):
            decoder.end()
        return []
    return out


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_parser_memory_is_bounded_for_any_large_read(name: str) -> None:
    make, produces = HOSTILE[name]
    data = make()
    parser = ChatCompletionParser(**LIMITS)
    peak, held, out = traced(lambda: _parse_all(parser, data))
    assert isinstance(out, list)
    # What is still held is the output (and the parser's bounded state): the work around it
    # is bounded whatever the read.
    assert peak - held <= BOUND, f"{name}: peak +{peak / MiB:.1f} MiB"
    if not produces:
        assert peak <= BOUND, f"{name}: peak +{peak / MiB:.1f} MiB"
        assert held <= MiB  # in particular the error does not keep the read alive
    assert parser.finished
    assert parser.error is None or isinstance(parser.error, LLMStreamError)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_decoder_memory_is_bounded_for_any_large_read(name: str) -> None:
    make, _ = HOSTILE[name]
    data = make()
    decoder = SSEDecoder(**LIMITS)
    peak, held, out = traced(lambda: _decode_all(decoder, data))
    assert isinstance(out, list)
    assert peak - held <= BOUND, f"{name}: peak +{peak / MiB:.1f} MiB"
    if not out:
        assert peak <= BOUND, f"{name}: peak +{peak / MiB:.1f} MiB"
        assert held <= MiB


def test_output_is_proportional_to_the_valid_chunks_only() -> None:
    # The chosen behaviour for a read full of valid chunks: all of them are returned (the read
    # size is the caller's bound), at a fixed cost per chunk, with no transient on top.
    data = _repeat(_CHUNK, SMALL)
    n = SMALL // len(_CHUNK)
    parser = ChatCompletionParser(**LIMITS)
    peak, held, out = traced(lambda: parser.feed(data))
    assert isinstance(out, list)
    assert len(out) == n
    assert all(c.choices[0].delta.content == "x" for c in out)
    assert held / n < 500  # bytes per chunk: the chunk objects themselves
    assert peak - held <= BOUND


def test_limits_larger_than_the_window_are_still_bounded_by_the_limits() -> None:
    # A 4 MiB line limit: an unterminated 16 MiB data line fails once past it, holding about
    # the limit (never the read).
    data = b"data: " + b"a" * (2 * BIG)
    parser = ChatCompletionParser(max_line_size=4 * MiB, max_event_size=4 * MiB)
    peak, held, _ = traced(lambda: _parse_all(parser, data))
    assert isinstance(parser.error, StreamProtocolError)
    assert "max_line_size" in str(parser.error)
    assert peak <= 3 * 4 * MiB
    assert held <= MiB


def test_small_limits_window_small() -> None:
    # With limits below the window, the windows shrink with them: a read of 8 MiB of LF
    # under 1 KiB limits stays within a few hundred KiB.
    data = b"\n" * BIG
    parser = ChatCompletionParser(max_line_size=1024, max_event_size=1024)
    peak, _, _ = traced(lambda: _parse_all(parser, data))
    assert peak <= MiB // 2
    assert isinstance(parser.error, StreamTruncatedError)


def test_events_before_an_overrun_in_a_large_read_are_delivered() -> None:
    # A large read: valid chunks, then a data line past the limit. The chunks come first,
    # then the typed error; nothing after the error is looked at.
    head = _repeat(_CHUNK, 3 * WINDOW)
    data = head + b"data: " + b"\0" * (4 * MiB) + b"\n\n" + _CHUNK
    parser = ChatCompletionParser()
    out = parser.feed(data)
    assert len(out) == len(head) // len(_CHUNK)
    assert isinstance(parser.error, StreamProtocolError)
    assert "max_line_size" in str(parser.error)
    decoder = SSEDecoder()
    events = decoder.feed(data)
    assert len(events) == len(head) // len(_CHUNK)
    with pytest.raises(StreamProtocolError, match="max_line_size"):
        decoder.end()


def test_oversize_lines_fail_before_they_are_copied() -> None:
    # A comment or data line longer than the limit in one read is an error at once, for the
    # plain decoder too, without buffering it (the bound is checked before the copy).
    for line in (b":" * BIG, b"data: " + b"\0" * BIG, b"x" * BIG):
        decoder = SSEDecoder(**LIMITS)
        peak, _, _ = traced(functools.partial(_decode_all, decoder, line))
        assert peak <= MiB // 4
        with pytest.raises(StreamProtocolError, match="max_line_size"):
            decoder.end()


def test_stored_errors_keep_no_traceback() -> None:
    # A stored error's traceback would keep the frames it passed through alive, and with them
    # the read that caused it; re-raising would grow it on every call.
    parser = ChatCompletionParser()
    parser.feed(b"data: " + b"\0" * (2 * MiB))
    assert isinstance(parser.error, StreamProtocolError)
    assert parser.error.__traceback__ is None

    decoder = SSEDecoder(max_line_size=4)
    depths = []
    for _ in range(5):
        with pytest.raises(StreamProtocolError) as info:
            decoder.feed(b"xxxxxxxx")
        tb, n = info.value.__traceback__, 0
        while tb is not None:
            tb, n = tb.tb_next, n + 1
        depths.append(n)
    assert depths[1:] == [depths[1]] * 4  # constant, not growing


# -- malformed JSON is always typed ------------------------------------------------------------

DEEP = "[" * 1000 + "]" * 1000
HUGE = "1" + "0" * 5000
HI = b'data: {"choices":[{"delta":{"content":"hi "}}]}\n\n'

# Where a hostile value can sit, and the error it must become.
POSITIONS: dict[str, tuple[Callable[[str], bytes], type[LLMStreamError]]] = {
    "top level": (lambda v: b"data: %s\n\n" % v.encode(), StreamProtocolError),
    "choices": (lambda v: b'data: {"choices": %s}\n\n' % v.encode(), StreamProtocolError),
    "delta": (
        lambda v: b'data: {"choices": [{"delta": %s}]}\n\n' % v.encode(),
        StreamProtocolError,
    ),
    "index": (
        lambda v: b'data: {"choices": [{"index": %s}]}\n\n' % v.encode(),
        StreamProtocolError,
    ),
    "tool call": (
        lambda v: b'data: {"choices": [{"delta": {"tool_calls": [%s]}}]}\n\n' % v.encode(),
        StreamProtocolError,
    ),
    "usage": (lambda v: b'data: {"usage": %s}\n\n' % v.encode(), StreamProtocolError),
    "unknown field": (lambda v: b'data: {"x": %s}\n\n' % v.encode(), StreamProtocolError),
    "error": (lambda v: b'data: {"error": %s}\n\n' % v.encode(), StreamProtocolError),
    "error param": (
        lambda v: b'data: {"error": {"message": "m", "param": %s}}\n\n' % v.encode(),
        StreamProtocolError,
    ),
    "error type": (
        lambda v: b'data: {"error": {"message": "m", "type": %s}}\n\n' % v.encode(),
        StreamProtocolError,
    ),
    "bare error body": (
        lambda v: b'data: {"object": "error", "message": %s}\n\n' % v.encode(),
        StreamProtocolError,
    ),
    # An error event is an error whatever its data: undecodable data is its message.
    "event: error": (lambda v: b"event: error\ndata: %s\n\n" % v.encode(), ProviderError),
    "event: error, wrapped": (
        lambda v: b'event: error\ndata: {"error": %s}\n\n' % v.encode(),
        ProviderError,
    ),
}


def _cuts(body: bytes) -> Iterator[list[int] | None]:
    yield None  # whole
    yield [1]  # byte by byte
    yield [7, 3, 64, 1]


@pytest.mark.parametrize("value", [DEEP, '{"a":' * 1000 + "1" + "}" * 1000, HUGE, "1e999"])
@pytest.mark.parametrize("position", sorted(POSITIONS))
@pytest.mark.parametrize("crlf", [False, True])
def test_undecodable_json_is_typed_after_the_chunks_before_it(
    value: str, position: str, crlf: bool
) -> None:
    make, expected = POSITIONS[position]
    body = HI + make(value) + HI
    if crlf:  # the decoder's path instead of the parser's shortcut
        body = body.replace(b"\n", b"\r\n")
    outcomes = [parse(body, reads) for reads in _cuts(body)]
    for out in outcomes:
        assert out.text == "hi ", position  # delivered first, and nothing after the error
        assert out.error is not None
        assert issubclass(out.error, expected), (position, out.error)
    assert all(out == outcomes[0] for out in outcomes)
    assert parse(body) == reference(body)


def test_undecodable_error_event_keeps_its_text_as_the_message() -> None:
    out = parse(HI + b"event: error\ndata: " + DEEP.encode() + b"\n\n")
    assert out.error is ProviderError
    assert out.message is not None
    assert out.message.startswith("[[[[")
    assert len(out.message) <= 2000


def test_deep_nesting_reports_why() -> None:
    out = parse(HI + b"data: " + DEEP.encode() + b"\n\n")
    assert out.error is StreamProtocolError
    assert out.message is not None
    assert "nested too deeply" in out.message


def _at_depth(padding: int, fn: Callable[[], Outcome]) -> Outcome:
    # Run ``fn`` under ``padding`` extra frames: msgspec's limit is the interpreter's recursion
    # limit, so how deep JSON may nest depends on the caller's stack (trio's is not shallow).
    if padding:
        return _at_depth(padding - 1, fn)
    return fn()


@pytest.mark.parametrize("padding", [0, 40, 200])
def test_nesting_around_the_recursion_limit_never_escapes(padding: int) -> None:
    # Every depth around the limit, in the positions where a decoded value is used again
    # (an error's message, type, code and param; an error event's fields): either decoded, or
    # refused; never a RecursionError from a later step a few frames deeper.
    limit = sys.getrecursionlimit()
    templates = [
        '{"error": %s}',
        '{"error": {"message": %s}}',
        '{"error": {"message": "m", "type": %s, "code": %s}}',
        '{"error": {"message": "m", "param": %s}}',
        '{"object": "error", "message": %s}',
        '{"choices": 1, "error": {"message": %s}}',
    ]
    for depth in range(limit - padding - 80, limit - padding + 5):
        nested = "[" * depth + "]" * depth
        for template in templates:
            payload = template.replace("%s", nested)
            for body in (
                HI + b"data: " + payload.encode() + b"\n\n",
                HI + b"event: error\ndata: " + payload.encode() + b"\n\n",
            ):
                out = _at_depth(padding, lambda body=body: parse(body))  # type: ignore[misc]
                assert out.text == "hi "
                assert out.error in (ProviderError, StreamProtocolError), (depth, template)


@pytest.mark.parametrize(
    "error",
    [
        '{"message": "m", "code": "\\u00b2"}',  # str.isdigit() is true of "²"; int() refuses it
        '{"message": "m", "type": "%s"}' % ("1" * 5000),  # past int()'s 4,300 digits
        '{"message": "m", "code": "%s"}' % ("9" * 5000),
        '{"message": "m", "code": true}',
        '{"message": "m", "code": 1.5, "type": false}',
        '{"message": ["a", {"b": null}], "type": {"t": 1}, "code": [503]}',
    ],
)
def test_odd_error_fields_are_a_provider_error(error: str) -> None:
    for body in (
        HI + b'data: {"error": %s}\n\n' % error.encode(),
        HI + b"event: error\ndata: %s\n\n" % error.encode(),
    ):
        out = parse(body)
        assert out.text == "hi "
        assert out.error is ProviderError


# -- arbitrary bytes: typed errors only, the same under any chunking ---------------------------

_WEIRD_JSON = st.one_of(
    st.sampled_from(
        [
            "null", "true", "0", "-0", "1e999", "-1e999", "1e-999", "18446744073709551616",
            HUGE, "1" + "0" * 4300, '"' + "\\ud800" + '"', '"\\u0000"', '""', "[]", "{}",
            "[" * 40 + "]" * 40, DEEP, '{"a":' * 1100 + "1" + "}" * 1100, "[1,", '{"a"',
            '"\\x"', "NaN", "nul", '"\u00b2"', "9" * 20,
        ]
    ),
    st.integers().map(str),
    st.floats(allow_nan=False).map(repr),
    st.text(max_size=8).map(lambda t: '"' + t.replace("\\", "").replace('"', "") + '"'),
)  # fmt: skip

# A realistic chunk with one spot to put a weird value in.
_TEMPLATES = [
    '{"id": %s, "choices": [{"index": 0, "delta": {"content": "a"}}]}',
    '{"id": "r", "choices": %s}',
    '{"choices": [%s]}',
    '{"choices": [{"index": %s, "delta": {"content": "a"}}]}',
    '{"choices": [{"index": 0, "delta": %s}]}',
    '{"choices": [{"delta": {"role": %s}}]}',
    '{"choices": [{"delta": {"content": %s}}]}',
    '{"choices": [{"delta": {"reasoning": %s, "reasoning_content": %s}}]}',
    '{"choices": [{"delta": {"tool_calls": %s}}]}',
    '{"choices": [{"delta": {"tool_calls": [%s]}}]}',
    '{"choices": [{"delta": {"tool_calls": [{"index": %s, "id": "c", "function": {}}]}}]}',
    '{"choices": [{"delta": {"tool_calls": [{"id": %s, "function": {"name": "f"}}]}}]}',
    '{"choices": [{"delta": {"tool_calls": [{"function": {"name": %s, "arguments": %s}}]}}]}',
    '{"choices": [{"index": 0, "finish_reason": %s}]}',
    '{"choices": [], "usage": %s}',
    '{"usage": {"prompt_tokens": %s, "completion_tokens": %s, "total_tokens": %s}}',
    '{"usage": {"prompt_tokens_details": %s, "completion_tokens_details": {"x": %s}}}',
    '{"error": %s}',
    '{"error": {"message": %s, "type": %s, "code": %s, "param": %s}}',
    '{"object": "error", "message": %s, "code": %s}',
    '{"object": %s}',
    '{"x": %s}',
    "%s",
]


@st.composite
def garbage_payloads(draw: st.DrawFn) -> bytes:
    template = draw(st.sampled_from(_TEMPLATES))
    while "%s" in template:
        template = template.replace("%s", draw(_WEIRD_JSON), 1)
    payload = template.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 7)) == 0 and payload:
        # Invalid UTF-8, a NUL or a line break somewhere inside.
        at = draw(st.integers(0, len(payload)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\0", b"\r", b"\n"]))
        payload = payload[:at] + junk + payload[at:]
    return payload


@st.composite
def garbage_blocks(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            ["data"] * 6
            + ["error_event", "split_data", "raw", "id", "comment", "blank", "done", "other"]
        )
    )
    if kind == "data":
        return b"data: " + draw(garbage_payloads()) + b"\n\n"
    if kind == "error_event":
        return b"event: error\ndata: " + draw(garbage_payloads()) + b"\n\n"
    if kind == "split_data":
        payload = draw(garbage_payloads())
        at = draw(st.integers(0, len(payload)))
        return b"data: " + payload[:at] + b"\ndata:" + payload[at:] + b"\n\n"
    if kind == "raw":
        return draw(st.binary(max_size=40))
    if kind == "id":  # a giant id (longer than the small limits' window)
        return b"id: " + b"7" * draw(st.integers(0, 700)) + b"\n"
    if kind == "comment":
        return b":" + b"k" * draw(st.integers(0, 700)) + b"\n"
    if kind == "blank":
        return draw(st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n\n", b"\r\r"]))
    if kind == "done":
        return b"data: [DONE]\n\n"
    return b"event: ping\ndata: " + draw(garbage_payloads()) + b"\n\n"


@st.composite
def garbage_bodies(draw: st.DrawFn) -> bytes:
    blocks = draw(st.lists(garbage_blocks(), max_size=8))
    if draw(st.booleans()):
        # Start like a real stream, so that later garbage meets a stream in progress.
        start = b'data: {"id": "r", "choices": [{"index": 0, "delta": {"content": ""}}]}\n\n'
        blocks.insert(0, start)
    eol = draw(st.sampled_from([None, b"\r\n", b"\r", "mixed"]))
    if eol == "mixed":
        blocks = [b.replace(b"\n", draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))) for b in blocks]
    elif eol is not None:
        blocks = [b.replace(b"\n", eol) for b in blocks]
    body = b"".join(blocks)
    if draw(st.integers(0, 5)) == 0:
        bom = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xef\xbb", b"\xef\xbb\xbf" * 2]))
        body = bom + body
    if draw(st.booleans()) and body:
        body = body[: draw(st.integers(0, len(body)))]
    return body


_ANY_BODY = st.one_of(st.binary(max_size=300), garbage_bodies(), sse_bodies())
_LIMITS = st.sampled_from([{}, {"max_line_size": 300, "max_event_size": 200}])


def _random_reads(seed: int, size: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice([1, 2, 3, 5, 17, 64, 301, 4096]) for _ in range(max(1, size // 8))]


@given(body=_ANY_BODY, limits=_LIMITS, reads=reads_strategy, seed=st.integers(0, 2**16))
def test_parser_on_arbitrary_bytes_ends_typed_and_chunking_invariant(
    body: bytes, limits: dict[str, int], reads: list[int], seed: int
) -> None:
    # ``parse`` itself checks: finished after end(), end() idempotent, input after the end
    # ignored. Any untyped exception escapes it and fails the test.
    whole = parse(body, **limits)
    assert whole.error is None or issubclass(whole.error, LLMStreamError)
    assert parse(body, [1], **limits) == whole
    assert parse(body, reads, **limits) == whole
    assert parse(body, _random_reads(seed, len(body)), **limits) == whole
    assert reference(body, **limits) == whole


def _decode_outcome(
    chunks: list[bytes], **limits: int
) -> tuple[list[ServerSentEvent], str | None, int | None]:
    decoder = SSEDecoder(**limits)
    events: list[ServerSentEvent] = []
    try:
        for chunk in chunks:
            events += decoder.feed(chunk)
        events += decoder.end()
    except StreamProtocolError as exc:
        return events, str(exc), decoder.retry
    return events, None, decoder.retry


def _cut(body: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(body):
        size = sizes[i % len(sizes)]
        out.append(body[pos : pos + size])
        pos += size
        i += 1
    return out


@given(body=_ANY_BODY, limits=_LIMITS, reads=reads_strategy, seed=st.integers(0, 2**16))
def test_decoder_on_arbitrary_bytes_raises_only_its_typed_error(
    body: bytes, limits: dict[str, int], reads: list[int], seed: int
) -> None:
    # Anything but StreamProtocolError escapes _decode_outcome and fails the test.
    whole = _decode_outcome([body], **limits)
    assert _decode_outcome(_cut(body, [1]), **limits) == whole
    assert _decode_outcome(_cut(body, reads), **limits) == whole
    assert _decode_outcome(_cut(body, _random_reads(seed, len(body))), **limits) == whole


@pytest.mark.parametrize("size", [WINDOW - 1, WINDOW, WINDOW + 1, 3 * WINDOW + 7])
def test_reads_around_the_window_size_give_the_same_result(size: int) -> None:
    # Windowing is invisible: a large read gives what the same bytes give in small reads,
    # including across window edges that fall inside a CRLF, a separator or a character.
    rng = random.Random(size)
    blocks = [
        b'data: {"choices":[{"delta":{"content":"\xc3\xa9%d"}}]}\r\n\r\n' % i for i in range(50)
    ]
    lf_blocks = [b.replace(b"\r\n", b"\n") for b in blocks]
    for parts in (blocks, lf_blocks):
        body = b""
        while len(body) < size:
            body += rng.choice(parts) + rng.choice([b"", b": k\n\n", b"\n"])
        body = body[:size]
        expected = parse(body, [4096])
        assert parse(body) == expected
        assert _decode_outcome([body]) == _decode_outcome(_cut(body, [4096]))


# -- progress ----------------------------------------------------------------------------------


def _progress_trace(
    body: bytes, reads: list[int] | None, **limits: int
) -> list[tuple[bool, int, bool]]:
    """Per read: (parser finished before it, data events a plain decoder completes, moved)."""
    parser = ChatCompletionParser(**limits)
    decoder = SSEDecoder(**limits)
    trace = []
    for chunk in _cut(body, reads) if reads else [body]:
        try:
            events = decoder.feed(chunk)
        except StreamProtocolError:
            events = []
        data_events = sum(e.event in ("message", "error") for e in events)
        finished, before = parser.finished, parser.progress
        parser.feed(chunk)
        trace.append((finished, data_events, parser.progress != before))
        assert parser.progress >= before
    before = parser.progress
    parser.end()
    assert parser.progress == before  # the end completes no event (an unfinished block is dropped)
    return trace


@given(body=_ANY_BODY, limits=_LIMITS, reads=reads_strategy)
def test_progress_moves_iff_a_read_completed_a_data_event(
    body: bytes, limits: dict[str, int], reads: list[int]
) -> None:
    for cut in (None, reads, [1]):
        for finished, data_events, moved in _progress_trace(body, cut, **limits):
            assert moved == (not finished and data_events > 0), (finished, data_events, moved)


@pytest.mark.parametrize(
    "read",
    [
        b": keep-alive\n\n",
        b"\n\n\n",
        b"\r\n\r\n",
        b"data: {\"choices\": [{\"delta\": {\"content\": \"par",
        b"retry: 5\nid: 3\n\n",
        b"event: ping\ndata: {}\n\n",
        b":" * (3 * WINDOW),
        b"\n" * (3 * WINDOW),
    ],
)
def test_keep_alives_and_partial_lines_never_move_progress(read: bytes) -> None:
    for lead in (b"", b"\r\n"):  # the shortcut, and the decoder's path
        parser = ChatCompletionParser()
        parser.feed(b"data: {}\n\n".replace(b"\n", lead or b"\n"))
        before = parser.progress
        assert before > 0
        parser.feed(read)
        assert parser.progress == before, read[:40]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_progress_moves_in_every_path(eol: bytes) -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'.replace(b"\n", eol)
    reads = {
        "one event": chunk,
        "several": chunk * 3,
        "after a comment": b": c\n\n".replace(b"\n", eol) + chunk,
        "multi-line event": b"id: 1\ndata: {}\n\n".replace(b"\n", eol),
        "windowed": b":k\n\n".replace(b"\n", eol) * WINDOW + chunk,
        "completing a split event": chunk[:10],
        "error event": b"event: error\ndata: boom\n\n".replace(b"\n", eol),  # ends the stream
    }
    parser = ChatCompletionParser()
    for name, read in reads.items():
        before = parser.progress
        parser.feed(read)
        if name == "completing a split event":
            assert parser.progress == before
            parser.feed(chunk[10:])
        assert parser.progress > before, name
