"""Entries, their wire form and their SSE form."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    APIStatusError,
    ChatChunk,
    Choice,
    ChoiceDelta,
    CollectedResponse,
    CompletionUsage,
    FunctionCall,
    LLMStreamError,
    ProviderItem,
    StreamInterrupted,
    StreamStatus,
    StreamTruncatedError,
)
from trio_llmstream.journal import (
    ErrorInfo,
    JournalCorrupted,
    JournalEntry,
    JournalError,
    RunClosed,
    RunEnd,
    RunTooLong,
    StreamAbandoned,
    decode_chunk,
    decode_end,
    decode_entry,
    encode_chunk,
    encode_end,
    encode_entry,
    format_sse,
    parse_event_id,
)
from trio_llmstream.journal._entry import _encode_chunk_structs, chunk_entry
from trio_llmstream.journal._sse import format_sse_end, sse_comment, sse_retry
from trio_llmstream.testing.strategies import chunk_sequences

_text = st.text(max_size=20)
_opt_text = st.none() | _text


@st.composite
def chunks(draw: st.DrawFn) -> ChatChunk:
    choices = []
    for index in draw(st.lists(st.integers(0, 3), max_size=3, unique=True)):
        calls = draw(st.lists(st.builds(FunctionCall, _text, _text, _text), max_size=2))
        role = draw(st.sampled_from([None, "assistant"]))
        items = draw(st.lists(st.builds(ProviderItem, _text, _text, _text), max_size=2))
        delta = ChoiceDelta(role=role, content=draw(_opt_text), tool_calls=calls,
                            reasoning=draw(_opt_text), provider_items=tuple(items))
        choices.append(Choice(delta, index, draw(_opt_text), draw(_opt_text)))
    usage = draw(st.none() | st.builds(
        CompletionUsage, st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9),
        st.none() | st.integers(0, 99), st.none() | st.integers(0, 99),
        st.sampled_from(["provider", "provider_partial", "estimated"]),
    ))
    return ChatChunk(draw(_text), choices, usage)


ends = st.one_of(
    st.builds(RunEnd, st.just(StreamStatus.COMPLETED), _opt_text),
    st.builds(RunEnd, st.just(StreamStatus.CANCELLED), _opt_text),
    st.builds(
        RunEnd,
        st.sampled_from([StreamStatus.FAILED, StreamStatus.TRUNCATED]),
        _opt_text,
        st.builds(ErrorInfo, _text, _text, st.booleans(), st.none() | st.integers(100, 599),
                  _opt_text),
    ),
)


@given(chunks())
def test_chunk_wire_form_round_trips(chunk: ChatChunk) -> None:
    assert decode_chunk(encode_chunk(chunk)) == chunk


@st.composite
def text_chunks(draw: st.DrawFn) -> ChatChunk:
    """Chunks of the shapes that encode_chunk writes directly (one choice, text or
    reasoning), and their near misses (a role, a finish reason, an index, both texts)."""
    text = st.text()  # any code point: quotes, backslashes, controls, non-BMP
    content, reasoning = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
    delta = ChoiceDelta(
        role=draw(st.sampled_from([None, None, None, "assistant"])),
        content=draw(text) if content else None,
        reasoning=draw(text) if reasoning else None,
    )
    finish = draw(st.sampled_from([None, None, None, "stop"]))
    choice = Choice(delta, draw(st.sampled_from([0, 0, 0, 1])), finish,
                    draw(st.sampled_from([None, None, None, "end_turn"])))
    return ChatChunk(draw(text), [choice])


@given(text_chunks() | chunks())
def test_direct_chunk_encoding_is_the_structs_encoding(chunk: ChatChunk) -> None:
    # encode_chunk writes common chunks directly: byte for byte what the wire Structs write
    # (the stored form is documented and stable), and it reads back as the same chunk.
    data = encode_chunk(chunk)
    assert data == _encode_chunk_structs(chunk)
    assert decode_chunk(data) == chunk


@given(st.integers(1, 2**63), chunks())
def test_unchecked_chunk_entries_are_the_checked_ones(seq: int, chunk: ChatChunk) -> None:
    made = chunk_entry(seq, chunk)
    checked = JournalEntry(seq, chunk=chunk)
    assert made == checked
    assert repr(made) == repr(checked)
    assert made.end is None
    assert not made.is_terminal


@given(chunk_sequences())
def test_realistic_chunks_round_trip(seq: list[ChatChunk]) -> None:
    for chunk in seq:
        data = encode_chunk(chunk)
        assert b"\n" not in data
        assert b"\r" not in data
        assert decode_chunk(data) == chunk


@given(ends)
def test_end_wire_form_round_trips(end: RunEnd) -> None:
    assert decode_end(encode_end(end)) == end


@given(st.integers(1, 2**53), chunks() | ends)
def test_entry_wire_form_round_trips(seq: int, item: ChatChunk | RunEnd) -> None:
    entry = JournalEntry(seq, chunk=item) if isinstance(item, ChatChunk) else JournalEntry(
        seq, end=item
    )
    assert decode_entry(encode_entry(entry)) == entry


def test_wire_form_is_stable_and_compact() -> None:
    chunk = ChatChunk("req-1", [Choice(ChoiceDelta(content="Hi"))])
    assert encode_chunk(chunk) == b'{"id":"req-1","choices":[{"delta":{"content":"Hi"}}]}'
    call = FunctionCall("call_1", "get_weather", '{"city": "Paris"}')
    chunk = ChatChunk("r", [Choice(ChoiceDelta(tool_calls=[call]), 1, "tool_calls")],
                      CompletionUsage(2, 5, 7))
    assert msgspec.json.decode(encode_chunk(chunk)) == {
        "id": "r",
        "choices": [{
            "delta": {"tool_calls": [
                {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
            ]},
            "index": 1,
            "finish_reason": "tool_calls",
        }],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    end = RunEnd(StreamStatus.FAILED, error=ErrorInfo("APIStatusError", "HTTP 503", True, 503))
    assert msgspec.json.decode(encode_end(end)) == {
        "status": "failed",
        "finish_reason": None,
        "error": {"type": "APIStatusError", "message": "HTTP 503", "retryable": True,
                  "status_code": 503, "cause": None},
    }
    assert encode_entry(JournalEntry(3, end=RunEnd(StreamStatus.COMPLETED, "stop"))) == (
        b'{"seq":3,"end":{"status":"completed","finish_reason":"stop","error":null}}'
    )


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = b'{"id":"r","new":1,"choices":[{"delta":{"content":"x","future":true}}]}'
    assert decode_chunk(data) == ChatChunk("r", [Choice(ChoiceDelta(content="x"))])


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'{"choices":[]}', b'{"id":1}', b'{"id":"r","choices":[{}]}'],
)
def test_corrupt_chunks_are_typed_errors(data: bytes) -> None:
    with pytest.raises(JournalCorrupted):
        decode_chunk(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"status":"running"}',
        b'{"status":"failed"}',  # failed needs its error
        b'{"status":"completed","error":{"type":"X","message":"m"}}',
        b"null",
    ],
)
def test_corrupt_ends_are_typed_errors(data: bytes) -> None:
    with pytest.raises(JournalCorrupted):
        decode_end(data)


@pytest.mark.parametrize(
    "data",
    [b'{"seq":1}', b'{"seq":0,"end":{"status":"completed"}}',
     b'{"seq":1,"chunk":{"id":"r"},"end":{"status":"completed"}}'],
)
def test_corrupt_entries_are_typed_errors(data: bytes) -> None:
    with pytest.raises(JournalCorrupted):
        decode_entry(data)


def test_entry_and_end_validation() -> None:
    chunk = ChatChunk("r")
    with pytest.raises(ValueError, match="exactly one"):
        JournalEntry(1)
    with pytest.raises(ValueError, match="exactly one"):
        JournalEntry(1, chunk=chunk, end=RunEnd(StreamStatus.COMPLETED))
    with pytest.raises(ValueError, match="seq"):
        JournalEntry(0, chunk=chunk)
    with pytest.raises(ValueError, match="terminal status"):
        RunEnd(StreamStatus.RUNNING)
    with pytest.raises(ValueError, match="needs the error"):
        RunEnd(StreamStatus.FAILED)
    with pytest.raises(ValueError, match="carries no error"):
        RunEnd(StreamStatus.CANCELLED, error=ErrorInfo("X", "y"))


def test_error_info_describes_typed_errors() -> None:
    cause = APIStatusError("unavailable", status_code=503)
    info = ErrorInfo.from_exception(cause)
    assert info == ErrorInfo("APIStatusError", "HTTP 503: unavailable", True, 503, None)
    interrupted = StreamInterrupted(CollectedResponse(text="abc"), StreamTruncatedError("cut"))
    info = ErrorInfo.from_exception(interrupted)
    assert info.type == "StreamInterrupted"
    assert info.cause == "StreamTruncatedError"
    assert not info.retryable
    bug = ErrorInfo.from_exception(RuntimeError("x" * 10_000))
    assert bug.type == "RuntimeError"
    assert not bug.retryable
    assert len(bug.message) == 2000


def test_exceptions_belong_to_the_library_tree() -> None:
    assert issubclass(StreamAbandoned, LLMStreamError)
    assert issubclass(JournalCorrupted, JournalError)
    assert issubclass(JournalError, LLMStreamError)
    err = StreamAbandoned("r", last_seq=4, idle=2.5)
    assert err.retryable
    assert err.last_seq == 4
    assert "2.5 s" in str(err)
    too_long = RunTooLong("run 'r' is too long", run_id="r", end_seq=11, max_entries=10)
    assert isinstance(too_long, RunClosed)
    assert (too_long.end_seq, too_long.max_entries, too_long.retryable) == (11, 10, False)


def test_the_too_long_ending_is_recognised_after_a_round_trip() -> None:
    from trio_llmstream.journal._memory import abandoned_end, too_long_end

    end = decode_end(encode_end(too_long_end("r", 10)))
    assert end.too_long
    assert not end.abandoned
    assert end.status is StreamStatus.FAILED
    assert end.error is not None
    assert not end.error.retryable
    assert "10 entries" in end.error.message
    sealed = decode_end(encode_end(abandoned_end("r", 3.0)))
    assert sealed.abandoned
    assert not sealed.too_long
    assert not RunEnd(StreamStatus.COMPLETED, "stop").too_long


def test_sse_format() -> None:
    chunk = ChatChunk("req-1", [Choice(ChoiceDelta(content="a\nb\r\nc"))])
    assert format_sse(JournalEntry(7, chunk=chunk)) == (
        b'id: 7\ndata: {"id":"req-1","choices":[{"delta":{"content":"a\\nb\\r\\nc"}}]}\n\n'
    )
    end = RunEnd(StreamStatus.COMPLETED, "stop")
    assert format_sse(JournalEntry(8, end=end)) == (
        b'id: 8\nevent: end\ndata: {"status":"completed","finish_reason":"stop","error":null}\n\n'
    )
    assert format_sse_end(end).startswith(b"event: end\ndata: {")
    assert sse_comment("a\nb") == b": a b\n\n"
    assert sse_comment() == b":\n\n"
    assert sse_retry(1500) == b"retry: 1500\n\n"


@pytest.mark.parametrize(
    ("raw", "seq"), [(None, 0), ("", 0), ("  ", 0), ("0", 0), ("42", 42), (b" 7 ", 7)]
)
def test_parse_event_id(raw: str | bytes | None, seq: int) -> None:
    assert parse_event_id(raw) == seq


@pytest.mark.parametrize("raw", ["-1", "1.5", "abc", "١٢", "9" * 19, "0x10"])
def test_parse_event_id_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match="event id"):
        parse_event_id(raw)
