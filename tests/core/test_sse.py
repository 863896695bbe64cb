"""The SSE decoder: WHATWG event-stream conformance, chunking invariance and bounds.

Three layers: one test per rule of "9.2.6 Interpreting an event stream" (plus our documented
choices); the property that every chunking of the same bytes gives the same events; and a
comparison, under hypothesis, with a deliberately slow reference written straight from the spec
(decode the whole stream, scan it character by character, apply the field rules line by line).
"""

from __future__ import annotations

import copy
import itertools
import pickle
import time
import weakref
from collections.abc import Iterable, Sequence

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import trio_llmstream.sse as sse_module
from trio_llmstream._core import _sse
from trio_llmstream._core._sse import EventStreamDecoder
from trio_llmstream._exceptions import StreamProtocolError
from trio_llmstream.sse import ServerSentEvent, SSEDecoder

BOM = b"\xef\xbb\xbf"
E = ServerSentEvent


# -- drivers ---------------------------------------------------------------------------------------


def decode(chunks: Iterable[bytes], **limits: int) -> list[ServerSentEvent]:
    decoder = SSEDecoder(**limits)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.end()
    return events


def run(chunks: Iterable[bytes], **limits: int) -> tuple[list[ServerSentEvent], str | None]:
    """Events up to the end or the first error, and which limit the error named (if any)."""
    decoder = SSEDecoder(**limits)
    events: list[ServerSentEvent] = []
    try:
        for chunk in chunks:
            events += decoder.feed(chunk)
        events += decoder.end()
    except StreamProtocolError as exc:
        return events, limit_named(exc)
    return events, None


def run_quiet(
    chunks: Iterable[bytes], **limits: int
) -> tuple[list[ServerSentEvent], str | None, list[bool]]:
    """``run`` for the core's decoder, which never raises for the stream: the events, which
    limit ``error`` names, and after each chunk whether ``error`` was set."""
    decoder = EventStreamDecoder(**limits)
    events: list[ServerSentEvent] = []
    known: list[bool] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
        known.append(decoder.error is not None)
    events += decoder.end()
    error = decoder.error
    if error is not None:
        assert error.__traceback__ is None
    return events, limit_named(error) if error is not None else None, known


def known_per_chunk(chunks: Iterable[bytes], **limits: int) -> list[bool]:
    """After each chunk, whether the public decoder has met its error: raised it, or returned
    the events before it and deferred the raise (``error`` set)."""
    decoder = SSEDecoder(**limits)
    known: list[bool] = []
    for chunk in chunks:
        raised: StreamProtocolError | None = None
        try:
            decoder.feed(chunk)
        except StreamProtocolError as exc:
            raised = exc
        assert raised is None or raised is decoder.error
        known.append(decoder.error is not None)
    return known


def limit_named(exc: StreamProtocolError) -> str:
    names = [n for n in ("max_line_size", "max_event_size") if n in str(exc)]
    assert len(names) == 1, str(exc)
    return names[0]


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(p for p in points if 0 <= p <= len(data))})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def chunkings(data: bytes) -> dict[str, list[bytes]]:
    """The fixed chunkings every stream is tried with."""
    return {
        "whole": [data],
        "bytewise": bytewise(data),
        "pairs": [data[i : i + 2] for i in range(0, len(data), 2)],
        "with empty feeds": [c for b in bytewise(data) for c in (b"", b)],
        "halves": cut(data, [len(data) // 2]),
    }


def assert_same_for_all_chunkings(data: bytes, expected: Sequence[ServerSentEvent]) -> None:
    for name, chunks in chunkings(data).items():
        assert decode(chunks) == list(expected), name


# -- the reference decoder, from the spec ---------------------------------------------------------


def split_lines(text: str) -> tuple[list[str], str]:
    """Lines ended by CRLF, LF or CR, scanned one character at a time; and the unended rest."""
    lines: list[str] = []
    start = i = 0
    while i < len(text):
        char = text[i]
        if char in "\r\n":
            lines.append(text[start:i])
            if char == "\r" and text[i + 1 : i + 2] == "\n":
                i += 1
            start = i + 1
        i += 1
    return lines, text[start:]


def reference(
    stream: bytes, max_line: int | None = None, max_event: int | None = None
) -> tuple[list[ServerSentEvent], str | None]:
    """The spec's algorithm, plus our documented choices (retry per block, the size limits).

    Sizes are in bytes of the raw stream. Decoding maps each CR and LF byte to one CR or LF
    character and creates no others, so the raw stream split the same way (each byte as a
    latin-1 character) gives the raw bytes of each decoded line.
    """
    if stream.startswith(BOM):  # UTF-8 decode strips one leading BOM
        stream = stream[3:]
    lines, _unended = split_lines(stream.decode("utf-8", "replace"))
    raw_lines, raw_rest = split_lines(stream.decode("latin-1"))
    assert len(raw_lines) == len(lines)

    events: list[ServerSentEvent] = []
    data_buffer = ""
    data_bytes = 0
    event_type = ""
    last_event_id = ""
    retry: int | None = None
    for line, raw in zip(lines, raw_lines, strict=True):
        if max_line is not None and len(raw) > max_line:
            return events, "max_line_size"
        if line == "":
            if data_buffer == "":
                event_type = ""
                retry = None
                continue
            data = data_buffer[:-1] if data_buffer.endswith("\n") else data_buffer
            events.append(E(event_type or "message", data, last_event_id, retry))
            data_buffer = ""
            data_bytes = 0
            event_type = ""
            retry = None
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            value = value.removeprefix(" ")
            raw_value = raw.split(":", 1)[1].removeprefix(" ")
        else:
            name, value, raw_value = line, "", ""
        if name == "event":
            event_type = value
        elif name == "data":
            data_buffer += value + "\n"
            data_bytes += len(raw_value) + 1
            if max_event is not None and data_bytes - 1 > max_event:
                return events, "max_event_size"
        elif name == "id":
            if "\0" not in value:
                last_event_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            digits = value.lstrip("0")
            if len(digits) <= 640:  # our choice: absurdly long values are ignored
                retry = int(digits or "0")
    # The end of the stream: whatever is pending is discarded (but may not exceed its bound).
    if max_line is not None and len(raw_rest) > max_line:
        return events, "max_line_size"
    return events, None


# -- strategies ------------------------------------------------------------------------------------

SPECIAL_CHARS = [
    "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x00", "\ufeff", "\t", " ", ":", "é",
    "€", "東", "😀", "\ufffd",
]  # fmt: skip
INVALID_UTF8 = [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x9f", b"\x80", b"\xef\xbb"]

texts = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
        st.sampled_from(SPECIAL_CHARS),
    ),
    max_size=12,
)
values = st.one_of(
    texts.map(str.encode),
    st.lists(st.one_of(texts.map(str.encode), st.sampled_from(INVALID_UTF8)), max_size=4).map(
        b"".join
    ),
    st.sampled_from([b"", b"5", b"007", b"+5", b"5.0", b" 5", b"\xd9\xa5", b"12345678901234"]),
)
names = st.sampled_from(
    [b"data", b"event", b"id", b"retry", b"", b"dat", b"DATA", b"data ", b" data", b"foo"]
)
separators = st.sampled_from([b":", b": ", b":  ", b""])
field_lines = st.builds(lambda n, s, v: n + s + v, names, separators, values)
lines = st.one_of(
    field_lines,
    st.builds(lambda v: b":" + v, values),  # a comment
    st.just(b""),  # a blank line
    values,  # whatever
)
# Mostly the OpenAI shape (one "data: " line per block), so the shortcuts get exercised.
blocks = st.one_of(
    values.map(lambda v: [b"data: " + v]),
    st.lists(lines, max_size=5),
)
endings = st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"\r"])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts: list[bytes] = []
    if draw(st.booleans()):
        parts.append(BOM)
    for block in draw(st.lists(blocks, max_size=8)):
        for line in [*block, b""]:
            parts += [line, draw(endings)]
    unended = draw(st.booleans())
    if parts and unended:
        parts.pop()  # the stream ends without its last line ending
    if draw(st.booleans()):
        parts.append(draw(st.one_of(lines, st.sampled_from([b"data: x", b"\xef", BOM]))))
    return b"".join(parts)


@st.composite
def split_points(draw: st.DrawFn, data: bytes) -> list[bytes]:
    points = draw(st.lists(st.integers(0, len(data)), max_size=max(1, len(data) // 3)))
    return cut(data, points)


# -- conformance: one rule at a time ---------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(eol: bytes) -> None:
    data = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    assert_same_for_all_chunkings(data, [E(data="a\nb"), E(data="c")])


def test_mixed_line_endings() -> None:
    data = b"data: a\rdata: b\r\ndata: c\n\r\ndata: d\r\r"
    assert_same_for_all_chunkings(data, [E(data="a\nb\nc"), E(data="d")])


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    # A spurious blank line between \r and \n would dispatch "a" on its own.
    assert decode([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [E(data="a\nb")]


def test_cr_at_end_of_feed_ends_the_line_at_once() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [E(data="a")]
    # The LF that follows is the rest of the second CRLF, not a new line.
    assert decoder.feed(b"\ndata: b\n\n") == [E(data="b")]


def test_cr_then_empty_feed_then_lf() -> None:
    assert decode([b"data: a\r", b"", b"\ndata: b\n\n"]) == [E(data="a\nb")]


def test_lf_lf_after_cr_is_a_blank_line() -> None:
    assert decode([b"data: a\r", b"\n\n", b"data: b\n\n"]) == [E(data="a"), E(data="b")]


def test_bom_stripped_at_start() -> None:
    assert_same_for_all_chunkings(BOM + b"data: a\n\n", [E(data="a")])


@pytest.mark.parametrize("split", [1, 2, 3])
def test_bom_split_across_feeds(split: int) -> None:
    data = BOM + b"data: a\n\n"
    assert decode([data[:split], data[split:]]) == [E(data="a")]
    assert decode(bytewise(data)) == [E(data="a")]


def test_bom_only_at_start_of_stream() -> None:
    # A second BOM is an ordinary character: "\ufeffdata" is an unknown field name.
    assert decode([BOM + BOM + b"data: a\n\n"]) == []
    assert decode([b"data: a\n\n" + BOM + b"data: b\n\n"]) == [E(data="a")]
    # Inside a value it is kept.
    assert decode([b"data: " + BOM + b"x\n\n"]) == [E(data="\ufeffx")]


def test_partial_bom_is_not_stripped() -> None:
    # EF BB then "d": an invalid sequence, one U+FFFD, and the field name is not "data".
    assert decode([b"\xef\xbbdata: a\n\n"]) == []
    assert decode([b"\xef", b"\xbb", b"data: a\n\ndata: b\n\n"]) == [E(data="b")]


def test_bom_alone_then_end() -> None:
    assert decode([b"\xef\xbb"]) == []
    assert decode([BOM]) == []


def test_comments_ignored() -> None:
    data = b": hello\n:\ndata: a\n: data: b\n\n:only a comment\n\n"
    assert_same_for_all_chunkings(data, [E(data="a")])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"data\n\n", [E(data="")]),
        (b"data\ndata\n\n", [E(data="\n")]),
        (b"event\ndata: x\n\n", [E(data="x")]),
        (b"id\ndata: x\n\n", [E(data="x")]),
        (b"data: x\nid\n\n", [E(data="x")]),
        (b"retry\ndata: x\n\n", [E(data="x")]),
    ],
)
def test_field_without_colon_has_empty_value(data: bytes, expected: list[ServerSentEvent]) -> None:
    assert_same_for_all_chunkings(data, expected)


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b"data:x", "x"),
        (b"data: x", "x"),
        (b"data:  x", " x"),
        (b"data: ", ""),
        (b"data:", ""),
        (b"data:\tx", "\tx"),
        (b"data: x ", "x "),
        (b"data: a: b", "a: b"),
    ],
)
def test_exactly_one_space_after_colon_is_stripped(line: bytes, value: str) -> None:
    assert_same_for_all_chunkings(line + b"\n\n", [E(data=value)])


def test_data_lines_joined_with_lf() -> None:
    assert_same_for_all_chunkings(b"data: a\ndata:\ndata: c\n\n", [E(data="a\n\nc")])


def test_empty_data_line_dispatches_empty_event() -> None:
    assert_same_for_all_chunkings(b"data:\n\n", [E(data="")])
    assert_same_for_all_chunkings(b"data: \n\n", [E(data="")])


@pytest.mark.parametrize(
    "block", [b"event: x\n\n", b"id: 1\n\n", b"retry: 5\n\n", b": c\n\n", b"\n", b"foo: x\n\n"]
)
def test_block_without_data_dispatches_nothing(block: bytes) -> None:
    assert_same_for_all_chunkings(block + b"data: a\n\n", [E(data="a", id="1" * (b"id" in block))])


def test_event_type() -> None:
    assert_same_for_all_chunkings(b"event: add\ndata: x\n\n", [E(event="add", data="x")])
    # The field may come after the data.
    assert_same_for_all_chunkings(b"data: x\nevent: add\n\n", [E(event="add", data="x")])
    # An empty type is "message".
    assert_same_for_all_chunkings(b"event:\ndata: x\n\n", [E(data="x")])


def test_event_type_resets_after_dispatch() -> None:
    data = b"event: a\ndata: 1\n\ndata: 2\n\n"
    assert_same_for_all_chunkings(data, [E(event="a", data="1"), E(data="2")])


def test_event_type_resets_after_blank_line_without_data() -> None:
    assert_same_for_all_chunkings(b"event: a\n\ndata: 2\n\n", [E(data="2")])


def test_last_event_id_persists() -> None:
    data = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\n\ndata: c\n\n"
    expected = [E(data="a", id="1"), E(data="b", id="1"), E(data="c", id="2")]
    assert_same_for_all_chunkings(data, expected)


def test_last_event_id_on_runs_of_data_only_blocks() -> None:
    data = b"id: 7\n\ndata: a\n\ndata: b\n\ndata: c\n\nid: 8\ndata: d\n\ndata: e\n\ndata: f\n\n"
    expected = [E(data=x, id="7") for x in "abc"] + [E(data=x, id="8") for x in "def"]
    assert_same_for_all_chunkings(data, expected)


def test_empty_id_resets_last_event_id() -> None:
    data = b"id: 1\ndata: a\n\nid\ndata: b\n\nid:\ndata: c\n\n"
    assert_same_for_all_chunkings(data, [E(data="a", id="1"), E(data="b"), E(data="c")])


def test_id_field_after_data_applies_to_that_event() -> None:
    assert_same_for_all_chunkings(b"data: a\nid: 7\n\n", [E(data="a", id="7")])


def test_id_with_nul_is_ignored() -> None:
    data = b"id: 1\n\nid: 2\x003\ndata: a\n\n"
    assert_same_for_all_chunkings(data, [E(data="a", id="1")])


def test_id_is_decoded() -> None:
    assert_same_for_all_chunkings("id: é€\ndata: a\n\n".encode(), [E(data="a", id="é€")])


@pytest.mark.parametrize(
    "value", [b"+5", b"-5", b"5.0", b"", b" 5", b"5 ", b"5a", b"0x10", b"\xd9\xa5", b"\xc2\xb2"]
)
def test_retry_must_be_ascii_digits(value: bytes) -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"retry: " + value + b"\ndata: a\n\n")
    assert events == [E(data="a")]
    assert decoder.retry is None


@pytest.mark.parametrize(
    ("value", "ms"), [(b"5", 5), (b"0", 0), (b"0007", 7), (b"1" * 30, int("1" * 30))]
)
def test_retry_valid(value: bytes, ms: int) -> None:
    assert_same_for_all_chunkings(b"retry: " + value + b"\ndata: a\n\n", [E(data="a", retry=ms)])


def test_retry_belongs_to_its_block_only() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"retry: 5\ndata: a\n\ndata: b\n\n")
    assert events == [E(data="a", retry=5), E(data="b")]
    assert decoder.retry == 5


def test_retry_in_block_without_data_sets_only_the_stream_value() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: 3000\n\ndata: a\n\n") == [E(data="a")]
    assert decoder.retry == 3000


def test_retry_last_valid_value_in_block_wins() -> None:
    data = b"retry: 1\nretry: x\ndata: a\nretry: 2\nretry: +3\n\n"
    assert_same_for_all_chunkings(data, [E(data="a", retry=2)])


def test_retry_with_absurdly_many_digits_is_ignored() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: " + b"9" * 641 + b"\ndata: a\n\n") == [E(data="a")]
    assert decoder.retry is None
    # Leading zeros do not count.
    assert decoder.feed(b"retry: " + b"0" * 5000 + b"9" * 640 + b"\ndata: b\n\n") == [
        E(data="b", retry=int("9" * 640))
    ]


def test_unterminated_final_block_is_discarded() -> None:
    assert decode([b"data: a\n\ndata: b\n"]) == [E(data="a")]
    assert decode([b"data: a\n\ndata: b"]) == [E(data="a")]
    assert decode([b"data: a\n\ndata: b\r"]) == [E(data="a")]


def test_end_returns_nothing_and_refuses_more_input() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.end() == []
    assert decoder.end() == []  # harmless twice
    with pytest.raises(RuntimeError, match=r"after end\(\)"):
        decoder.feed(b"\n")


def test_unknown_fields_ignored() -> None:
    data = b"foo: bar\nDATA: x\ndata : y\n data: z\ndata: a\nData: b\n\n"
    assert_same_for_all_chunkings(data, [E(data="a")])


def test_utf8_character_split_across_feeds() -> None:
    data = "data: é€😀東\n\n".encode()
    expected = [E(data="é€😀東")]
    for i in range(len(data) + 1):
        assert decode([data[:i], data[i:]]) == expected, i
    assert decode(bytewise(data)) == expected


def test_invalid_utf8_is_replaced() -> None:
    data = b"data: a\xffb\xe2\x82\nevent: \xc3\ndata: \xf0\x9f\x98\n\n"
    expected = [E(event="\ufffd", data="a\ufffdb\ufffd\n\ufffd")]
    assert_same_for_all_chunkings(data, expected)
    assert reference(data) == (expected, None)
    # The same, on the shortcut for runs of lone data lines.
    data = b"data: a\n\ndata: \xff\n\ndata: \xe2\x82\n\ndata: \xf0\x9f\x98\x80\xc3\n\ndata: b\n\n"
    expected = [E(data=x) for x in ["a", "\ufffd", "\ufffd", "\U0001f600\ufffd", "b"]]
    assert_same_for_all_chunkings(data, expected)
    assert reference(data) == (expected, None)


def test_line_break_like_characters_are_not_line_ends() -> None:
    text = "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg"
    assert_same_for_all_chunkings(f"data: {text}\n\n".encode(), [E(data=text)])


def test_nul_in_data_is_kept() -> None:
    assert_same_for_all_chunkings(b"data: a\x00b\n\n", [E(data="a\x00b")])


def test_extra_blank_lines_dispatch_nothing() -> None:
    data = b"\n\n\ndata: a\n\n\n\n\ndata: b\n\n\n"
    assert_same_for_all_chunkings(data, [E(data="a"), E(data="b")])


def test_openai_shaped_stream() -> None:
    chunks = [f'{{"choices":[{{"delta":{{"content":"tok{i} é"}}}}]}}' for i in range(50)]
    data = b"".join(f"data: {c}\n\n".encode() for c in [*chunks, "[DONE]"])
    expected = [E(data=c) for c in [*chunks, "[DONE]"]]
    assert_same_for_all_chunkings(data, expected)
    for size in (1, 7, 64, 333, 4096):
        assert decode(data[i : i + size] for i in range(0, len(data), size)) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"data: data: x\n\ndata: y\n\ndata: data: \n\ndata: z\n\n",
        b"data: a\ndata: b\n\ndata: c\n\nevent: e\ndata: d\n\ndata: f\nid: 1\n\ndata: g\n\n",
        b"data: a\n\n\ndata: b\n\n: c\n\ndata: d\n\ndata:e\n\nretry: 5\n\ndata: f\n\n",
    ],
)
def test_every_two_and_three_way_split(data: bytes) -> None:
    expected = decode([data])
    assert (expected, None) == reference(data)
    for i in range(len(data) + 1):
        assert decode([data[:i], data[i:]]) == expected, i
        for j in range(i, len(data) + 1, 3):
            assert decode([data[:i], data[i:j], data[j:]]) == expected, (i, j)


def test_openai_shaped_stream_with_other_blocks_mixed_in() -> None:
    data = (
        b"data: 1\n\n: keep-alive\n\ndata: 2\nid: 9\n\ndata: 3\n\nevent: error\ndata: 4\n\n"
        b"data: 5\n\ndata:6\n\ndata: 7\ndata: 8\n\nretry: 10\ndata: 9\n\ndata: 10\n\n"
    )
    expected = [
        E(data="1"),
        E(data="2", id="9"),
        E(data="3", id="9"),
        E(event="error", data="4", id="9"),
        E(data="5", id="9"),
        E(data="6", id="9"),
        E(data="7\n8", id="9"),
        E(data="9", id="9", retry=10),
        E(data="10", id="9"),
    ]
    assert_same_for_all_chunkings(data, expected)
    assert reference(data) == (expected, None)


def test_events_are_ordinary_server_sent_events() -> None:
    # Events from the shortcut (built without __init__) and from the general path must be
    # indistinguishable from constructed ones.
    events = decode([b"data: a\n\ndata: b\n\ndata: c\n\nevent: x\ndata: d\n\n"])
    expected = [E("message", "a", "", None), E(data="b"), E(data="c"), E(event="x", data="d")]
    assert events == expected
    for event, twin in zip(events, expected, strict=True):
        assert type(event) is ServerSentEvent
        assert hash(event) == hash(twin)
        assert repr(event) == repr(twin)
        assert attrs.asdict(event) == attrs.asdict(twin)
        assert attrs.evolve(event, data="z") == attrs.evolve(twin, data="z")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            event.data = "changed"  # type: ignore[misc]


def test_server_sent_event_fields_are_the_slots_the_shortcut_sets() -> None:
    # The decoder fills a twin (a subclass adding no slots) and switches its class: it sets
    # exactly these four slots (a new field would need setting there too), and the twin may add
    # no storage of its own, or the switch would fail.
    assert [f.name for f in attrs.fields(ServerSentEvent)] == ["event", "data", "id", "retry"]
    slots = set(ServerSentEvent.__slots__) - {"__weakref__"}  # type: ignore[attr-defined]
    assert slots == {"event", "data", "id", "retry"}
    assert _sse._EventBuilder.__slots__ == ()
    assert ServerSentEvent.__basicsize__ == _sse._EventBuilder.__basicsize__


def test_decoded_events_pickle_copy_and_weakref_like_constructed_ones() -> None:
    events = decode([b"data: a\n\nid: 7\nretry: 5\ndata: b\n\n"])
    assert events == [E(data="a"), E(data="b", id="7", retry=5)]
    for event in events:
        assert pickle.loads(pickle.dumps(event)) == event
        assert copy.copy(event) == event == copy.deepcopy(event)
        assert weakref.ref(event)() is event
        assert type(pickle.loads(pickle.dumps(event))) is ServerSentEvent


def test_accepts_bytes_like() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(bytearray(b"data: a\n")) == []  # type: ignore[arg-type]
    events = decoder.feed(memoryview(b"\ndata: b\n\n"))  # type: ignore[arg-type]
    assert events == [E(data="a"), E(data="b")]


def test_last_event_id_property() -> None:
    decoder = SSEDecoder()
    assert decoder.last_event_id == ""
    decoder.feed(b"id: 42\n\n")
    assert decoder.last_event_id == "42"


def test_public_module() -> None:
    assert sse_module.__all__ == sorted(sse_module.__all__) == ["SSEDecoder", "ServerSentEvent"]
    assert sse_module.SSEDecoder is SSEDecoder
    assert sse_module.__doc__


# -- bounds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1])
def test_limits_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SSEDecoder(max_line_size=limit)
    with pytest.raises(ValueError, match="at least 1"):
        SSEDecoder(max_event_size=limit)


def test_line_at_the_limit_is_accepted() -> None:
    data = b"data: " + b"x" * 10 + b"\n\n"  # a 16-byte line
    for chunks in chunkings(data).values():
        assert decode(chunks, max_line_size=16) == [E(data="x" * 10)]


@pytest.mark.parametrize("name", ["whole", "bytewise", "pairs", "halves"])
def test_line_over_the_limit_raises(name: str) -> None:
    data = b"data: ok\n\ndata: " + b"x" * 11 + b"\n\ndata: never\n\n"  # a 17-byte line
    events, error = run(chunkings(data)[name], max_line_size=16)
    assert events == [E(data="ok")]
    assert error == "max_line_size"


def test_line_limit_counts_bytes_without_line_ending() -> None:
    for eol in (b"\n", b"\r\n", b"\r"):
        data = b"data: 1234" + eol + eol  # 10 bytes
        assert decode([data], max_line_size=10) == [E(data="1234")]
        assert run([data], max_line_size=9) == ([], "max_line_size")


def test_unterminated_line_over_the_limit_raises_before_it_ends() -> None:
    decoder = SSEDecoder(max_line_size=100)
    for _ in range(100):
        assert decoder.feed(b"x") == []
    with pytest.raises(StreamProtocolError, match=r"max_line_size \(100 bytes\)"):
        decoder.feed(b"x")


def test_comment_lines_are_bounded_too() -> None:
    assert run([b": " + b"x" * 100 + b"\n"], max_line_size=50) == ([], "max_line_size")


def test_event_at_the_limit_is_accepted() -> None:
    data = b"data: 1234\ndata: 567\n\n"  # "1234\n567": 8 bytes
    for chunks in chunkings(data).values():
        assert decode(chunks, max_event_size=8) == [E(data="1234\n567")]


@pytest.mark.parametrize("name", ["whole", "bytewise", "pairs", "halves"])
def test_event_over_the_limit_raises(name: str) -> None:
    data = b"data: a\n\n" + b"data: 1234\n" * 3 + b"\ndata: never\n\n"  # 14 bytes of data
    events, error = run(chunkings(data)[name], max_event_size=13)
    assert events == [E(data="a")]
    assert error == "max_event_size"


def test_event_limit_counts_utf8_bytes() -> None:
    data = "data: ééé\n\n".encode()  # 6 bytes
    assert decode([data], max_event_size=6) == [E(data="ééé")]
    assert run([data], max_event_size=5) == ([], "max_event_size")


def test_error_is_deferred_after_events_of_the_same_feed_then_sticks() -> None:
    decoder = SSEDecoder(max_line_size=10)
    assert decoder.feed(b"data: a\n\ndata: " + b"x" * 20) == [E(data="a")]
    with pytest.raises(StreamProtocolError, match="max_line_size") as first:
        decoder.feed(b"\n\n")
    with pytest.raises(StreamProtocolError) as again:
        decoder.end()
    assert again.value is first.value


def test_error_without_events_raises_at_once_and_sticks() -> None:
    decoder = SSEDecoder(max_event_size=3)
    with pytest.raises(StreamProtocolError, match=r"max_event_size \(3 bytes\)"):
        decoder.feed(b"data: 1234\n")
    with pytest.raises(StreamProtocolError):
        decoder.feed(b"\n")
    with pytest.raises(StreamProtocolError):
        decoder.end()


def test_the_public_decoder_exposes_its_error_from_the_read_that_broke_the_limit() -> None:
    decoder = SSEDecoder(max_line_size=10)
    assert decoder.error is None
    assert decoder.feed(b"data: a\n\ndata: " + b"x" * 20) == [E(data="a")]
    error = decoder.error
    assert isinstance(error, StreamProtocolError)
    with pytest.raises(StreamProtocolError) as raised:
        decoder.end()
    assert raised.value is error


def test_the_core_decoder_reports_a_broken_limit_as_state() -> None:
    # The core's rule: the events before the violation, then ``error``; nothing raised.
    decoder = EventStreamDecoder(max_line_size=10)
    assert decoder.feed(b"data: a\n\ndata: " + b"x" * 20) == [E(data="a")]
    error = decoder.error
    assert isinstance(error, StreamProtocolError)
    assert "max_line_size (10 bytes)" in str(error)
    assert error.__traceback__ is None  # it would keep the read alive
    assert decoder.feed(b"\n\ndata: b\n\n") == []
    assert decoder.end() == []
    assert decoder.error is error
    # Without events: still not raised.
    decoder = EventStreamDecoder(max_event_size=3)
    assert decoder.feed(b"data: 1234\n") == []
    assert isinstance(decoder.error, StreamProtocolError)
    assert decoder.feed(b"x" * (1 << 20)) == []  # a large read after it, not looked at


def test_the_core_decoder_still_refuses_misuse() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EventStreamDecoder(max_line_size=0)
    decoder = EventStreamDecoder()
    decoder.end()
    with pytest.raises(RuntimeError, match=r"after end\(\)"):
        decoder.feed(b"data: x\n\n")


def test_large_feed_is_processed_in_windows() -> None:
    # A read much larger than the limits, full of events that each respect them.
    data = b"".join(b"data: %d\n\n" % i for i in range(2000))
    expected = [E(data=str(i)) for i in range(2000)]
    assert decode([data], max_line_size=16, max_event_size=8) == expected
    assert decode([data], max_line_size=1000, max_event_size=8) == expected
    assert run([data + b"data: 123456789\n\n"], max_event_size=8) == (expected, "max_event_size")


def test_long_line_fed_one_byte_at_a_time_is_linear() -> None:
    # With a rescan of the pending line on every feed this would take minutes, not a second.
    size = 1 << 19
    decoder = SSEDecoder()
    start = time.perf_counter()
    assert decoder.feed(b"data: ") == []
    for _ in range(size):
        decoder.feed(b"x")
    events = decoder.feed(b"\n\n")
    assert time.perf_counter() - start < 30
    assert events == [E(data="x" * size)]


def test_many_short_lines_within_one_block_are_bounded_by_the_event_limit() -> None:
    decoder = SSEDecoder(max_event_size=1000)
    with pytest.raises(StreamProtocolError, match="max_event_size"):
        for _ in range(1000):
            decoder.feed(b"data: x\n")


# -- properties ------------------------------------------------------------------------------------


@given(streams(), st.data())
def test_matches_the_reference_under_any_chunking(stream: bytes, data: st.DataObject) -> None:
    expected = reference(stream)
    assert expected[1] is None
    assert run([stream]) == expected
    assert run(data.draw(split_points(stream), label="chunks")) == expected


@given(streams())
def test_fixed_chunkings_agree(stream: bytes) -> None:
    expected = run([stream])
    for name, chunks in chunkings(stream).items():
        assert run(chunks) == expected, name


@given(
    streams(),
    st.integers(1, 40),
    st.integers(1, 40),
    st.data(),
)
def test_limits_match_the_reference_under_any_chunking(
    stream: bytes, max_line: int, max_event: int, data: st.DataObject
) -> None:
    expected = reference(stream, max_line, max_event)
    limits = {"max_line_size": max_line, "max_event_size": max_event}
    assert run([stream], **limits) == expected
    assert run(bytewise(stream), **limits) == expected
    assert run(data.draw(split_points(stream), label="chunks"), **limits) == expected


@given(st.lists(st.binary(max_size=30), max_size=10), st.data())
def test_arbitrary_bytes_match_the_reference(parts: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(parts)
    assume(stream)
    assert run(parts) == reference(stream)
    assert run(data.draw(split_points(stream), label="chunks")) == reference(stream)


@given(streams(), st.integers(1, 40), st.integers(1, 40), st.data())
def test_the_core_decoder_reports_what_the_public_one_raises(
    stream: bytes, max_line: int, max_event: int, data: st.DataObject
) -> None:
    # The two doors of one decoder: the same events and error, known after the same chunk.
    limits = {"max_line_size": max_line, "max_event_size": max_event}
    expected = reference(stream, max_line, max_event)
    for chunks in ([stream], bytewise(stream), data.draw(split_points(stream), label="chunks")):
        events, limit, known = run_quiet(chunks, **limits)
        assert (events, limit) == expected
        assert (events, limit) == run(chunks, **limits)
        assert known == known_per_chunk(chunks, **limits)
