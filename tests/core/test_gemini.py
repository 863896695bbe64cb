"""Tests for the Gemini assembler and parser (trio_llmstream._core._gemini).

Transcripts are composed from Gemini's documented ``streamGenerateContent?alt=sse`` wire
format (built with the public transcript builders of ``trio_llmstream.testing``). Every
transcript gives the same outcome however its bytes are cut into reads; any bytes at all end
with nothing or one typed error.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import attrs
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    ChatChunk,
    CompletionUsage,
    FunctionCall,
    LLMStreamError,
    ProviderError,
    ProviderItem,
    StreamProtocolError,
    StreamTruncatedError,
)
from trio_llmstream._core._gemini import (
    MAX_UNFRAMED_BYTES,
    GeminiStreamParser,
    UnframedText,
    gemini_error_is_retryable,
    map_finish_reason,
)
from trio_llmstream.testing import (
    ChunkEvent,
    KeepAlive,
    MockResponse,
    StreamStep,
    gemini_blocked_stream,
    gemini_error_event,
    gemini_frame,
    gemini_text_stream,
    gemini_tool_call_stream,
    gemini_usage,
)

# -- helpers ------------------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    chunks: list[ChatChunk]
    error: type[BaseException] | None
    message: str | None
    retryable: bool | None
    usage: CompletionUsage | None
    request_id: str | None

    @property
    def text(self) -> str:
        return "".join(c.delta.content or "" for k in self.chunks for c in k.choices)

    @property
    def reasoning(self) -> str:
        return "".join(c.delta.reasoning or "" for k in self.chunks for c in k.choices)

    @property
    def calls(self) -> list[FunctionCall]:
        return [call for k in self.chunks for c in k.choices for call in c.delta.tool_calls]

    @property
    def items(self) -> list[ProviderItem]:
        return [i for k in self.chunks for c in k.choices for i in c.delta.provider_items]

    @property
    def finish(self) -> list[tuple[str | None, str | None]]:
        return [
            (c.finish_reason, c.native_finish_reason)
            for k in self.chunks
            for c in k.choices
            if c.finish_reason is not None
        ]

    @property
    def last_usage(self) -> CompletionUsage | None:
        found = [k.usage for k in self.chunks if k.usage is not None]
        return found[-1] if found else None


def body(steps: Sequence[StreamStep]) -> bytes:
    return MockResponse(steps=steps).body_bytes()


def parse(data: bytes, reads: Sequence[int] | None = None, **kwargs: Any) -> Outcome:
    parser = GeminiStreamParser(**kwargs)
    chunks: list[ChatChunk] = []
    pos = i = 0
    while pos < len(data):
        size = len(data) if not reads else max(1, reads[i % len(reads)])
        chunks += parser.feed(data[pos : pos + size])
        pos += size
        i += 1
        if parser.finished:
            break
    chunks += parser.end()
    assert parser.finished
    assert parser.end() == []
    assert parser.feed(b"data: {}\n\n") == []
    err = parser.error
    return Outcome(
        chunks,
        type(err) if err is not None else None,
        str(err) if err is not None else None,
        err.retryable if err is not None else None,
        parser.usage,
        parser.request_id,
    )


def frame_bytes(frame: dict[str, Any], crlf: bool = True) -> bytes:
    end = b"\r\n\r\n" if crlf else b"\n\n"
    return b"data: " + msgspec.json.encode(frame) + end


# -- transcripts ----------------------------------------------------------------------------------


def test_text_with_usage_taken_from_the_last_report() -> None:
    out = parse(body(gemini_text_stream("Hello, world!", chunk_size=3, cached_tokens=4)))
    assert out.error is None
    assert out.text == "Hello, world!"
    assert out.finish == [("stop", "STOP")]
    # Cumulative reports: the last one, never a sum (5 frames, one candidate token each).
    assert out.last_usage == CompletionUsage(
        completion_tokens=5, prompt_tokens=10, total_tokens=15, cached_tokens=4
    )
    assert out.usage == out.last_usage
    assert out.request_id == "gemini-resp-mock"
    assert out.chunks[0].choices[0].delta.role == "assistant"
    assert [k.choices[0].delta.role for k in out.chunks[1:]] == [None] * 4
    # Usage is not built per frame: only the finishing chunk carries it.
    assert [k.usage is not None for k in out.chunks] == [False] * 4 + [True]


def test_thought_parts_are_reasoning_and_count_as_completion_tokens() -> None:
    out = parse(body(gemini_text_stream("Paris.", thoughts="The capital of France.")))
    assert out.reasoning == "The capital of France."
    assert out.text == "Paris."
    usage = out.last_usage
    assert usage is not None
    assert usage.reasoning_tokens == 6
    assert usage.completion_tokens == 2 + 6  # candidates + thoughts
    assert usage.source == "provider"


def test_function_call_arguments_are_the_exact_json_text() -> None:
    args = '{"city":  "Z\\u00fcrich", "units": "c", "a": [1, 2.50]}'
    out = parse(body(gemini_tool_call_stream([("get_weather", args)])))
    assert out.error is None
    assert out.calls == [FunctionCall("call_0", "get_weather", args)]
    assert json.loads(out.calls[0].arguments) == {"city": "Zürich", "units": "c", "a": [1, 2.5]}
    assert out.finish == [("tool_calls", "STOP")]


def test_parallel_calls_text_then_calls_and_server_ids() -> None:
    steps = gemini_tool_call_stream(
        [("a", {"x": 1}), ("b", {}), ("c", {"y": "z"})],
        text="Let me check.",
        call_ids=["id-a", "id-b", "id-c"],
    )
    out = parse(body(steps))
    assert out.text == "Let me check."
    assert [(c.call_id, c.name, c.arguments) for c in out.calls] == [
        ("id-a", "a", '{"x":1}'),
        ("id-b", "b", "{}"),
        ("id-c", "c", '{"y":"z"}'),
    ]
    # The three calls arrive together, in one chunk, in part order.
    assert len([k for k in out.chunks if k.choices and k.choices[0].delta.tool_calls]) == 1


def test_calls_in_separate_frames_get_stable_generated_ids() -> None:
    steps = gemini_tool_call_stream([("a", {}), ("b", {}), ("c", {})], parallel=False)
    first = parse(body(steps))
    assert [c.call_id for c in first.calls] == ["call_0", "call_1", "call_2"]
    assert parse(body(steps)).calls == first.calls


def test_missing_or_null_args_are_an_empty_object() -> None:
    frame = gemini_frame(
        [{"functionCall": {"name": "a"}}, {"functionCall": {"name": "b", "args": None}}],
        finish_reason="STOP",
    )
    out = parse(frame_bytes(frame))
    assert [c.arguments for c in out.calls] == ["{}", "{}"]


def test_thought_signatures_become_provider_items_naming_their_part() -> None:
    steps = gemini_tool_call_stream(
        [("a", {"x": 1}), ("b", {})], text="Checking.", signature="U0lH/+=="
    )
    out = parse(body(steps))
    assert len(out.items) == 1
    item = out.items[0]
    assert (item.provider, item.kind) == ("gemini", "thought_signature")
    assert json.loads(item.data) == {
        "part": 1,
        "type": "function_call",
        "name": "a",
        "call_id": "call_0",
        "signature": "U0lH/+==",
    }
    text_sig = parse(body(gemini_text_stream("Hi there", chunk_size=3, signature="dGV4dA==")))
    assert [json.loads(i.data) for i in text_sig.items] == [
        {"part": 2, "type": "text", "signature": "dGV4dA=="}
    ]
    # An empty text part that only carries a signature (as the live API sends at the end).
    frame = gemini_frame([{"text": "", "thoughtSignature": "ZW5k"}], finish_reason="STOP")
    empty = parse(frame_bytes(gemini_frame([{"text": "Hi"}])) + frame_bytes(frame))
    assert empty.text == "Hi"
    assert [json.loads(i.data)["type"] for i in empty.items] == ["text"]
    # Items are not visible output.
    assert not any(k.is_visible for k in empty.chunks if not k.text)


@pytest.mark.parametrize(
    ("native", "unified"),
    [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("OTHER", "content_filter"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
        ("SOMETHING_NEW", "stop"),
    ],
)
def test_finish_reasons(native: str, unified: str) -> None:
    out = parse(body(gemini_text_stream("Partial answ", finish_reason=native)))
    assert out.error is None
    assert out.finish == [(unified, native)]
    assert out.text == "Partial answ"


def test_malformed_function_call_is_a_retryable_provider_error_after_the_text() -> None:
    out = parse(body(gemini_text_stream("Sure", finish_reason="MALFORMED_FUNCTION_CALL")))
    assert out.text == "Sure"
    assert out.error is ProviderError
    assert out.retryable is True
    assert out.last_usage is not None
    assert out.last_usage.source == "provider_partial"
    unexpected = parse(body(gemini_text_stream("x", finish_reason="UNEXPECTED_TOOL_CALL")))
    assert unexpected.error is ProviderError
    assert unexpected.retryable is False


def test_blocked_prompt_is_a_content_filter_ending() -> None:
    out = parse(body(gemini_blocked_stream("PROHIBITED_CONTENT")))
    assert out.error is None
    assert out.finish == [("content_filter", "PROHIBITED_CONTENT")]
    assert out.text == ""
    assert out.last_usage == CompletionUsage(prompt_tokens=10, total_tokens=10)


def test_a_stream_without_finish_reason_is_truncated_never_complete() -> None:
    out = parse(body(gemini_text_stream("Hello there", finish_reason=None)))
    assert out.text == "Hello there"
    assert out.error is StreamTruncatedError
    assert out.retryable is True
    # The last report is kept, marked partial (a lower bound).
    assert out.last_usage is not None
    assert out.last_usage.source == "provider_partial"
    assert out.usage is not None
    assert out.usage.source == "provider_partial"
    assert parse(b"").error is StreamTruncatedError
    assert parse(b": keep-alive\n\n").error is StreamTruncatedError


def test_all_candidates_must_finish() -> None:
    data = (
        frame_bytes(gemini_frame([{"text": "A"}], index=0))
        + frame_bytes(gemini_frame([{"text": "B"}], index=1))
        + frame_bytes(gemini_frame([{"text": "!"}], index=0, finish_reason="STOP"))
    )
    cut = parse(data)
    assert cut.error is StreamTruncatedError
    done = parse(data + frame_bytes(gemini_frame([], index=1, finish_reason="MAX_TOKENS")))
    assert done.error is None
    ends = [(c.index, c.finish_reason) for k in done.chunks for c in k.choices if c.finish_reason]
    assert ends == [(0, "stop"), (1, "length")]
    per_index = {
        i: "".join(c.delta.content or "" for k in done.chunks for c in k.choices if c.index == i)
        for i in (0, 1)
    }
    assert per_index == {0: "A!", 1: "B"}


@pytest.mark.parametrize("framed", [True, False])
@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        (503, "UNAVAILABLE", True),
        (429, "RESOURCE_EXHAUSTED", True),
        (500, "INTERNAL", True),
        (400, "INVALID_ARGUMENT", False),
        (403, "PERMISSION_DENIED", False),
    ],
)
def test_error_after_text_framed_or_as_a_raw_json_tail(
    framed: bool, code: int, status: str, retryable: bool
) -> None:
    steps = (
        *gemini_text_stream("Hello wor", finish_reason=None),
        gemini_error_event(code, "Boom.", status, framed=framed),
    )
    out = parse(body(steps))
    assert out.text == "Hello wor"
    assert out.error is ProviderError
    assert out.message == "Boom."
    assert out.retryable is retryable


def test_raw_tail_as_an_array_and_without_a_final_newline() -> None:
    head = body(gemini_text_stream("Hi", finish_reason=None, crlf=True))
    tail = b'[{\r\n  "error": {"code": 503, "status": "UNAVAILABLE", "message": "busy"}\r\n}]'
    out = parse(head + tail)
    assert (out.error, out.message, out.retryable) == (ProviderError, "busy", True)


def test_unframed_text_that_is_not_an_error_is_a_protocol_error() -> None:
    out = parse(body(gemini_text_stream("Hi", finish_reason=None)) + b"<html>Bad gateway</html>\n")
    assert out.error is StreamProtocolError
    assert "Bad gateway" in (out.message or "")


def test_unframed_text_after_a_complete_stream_is_ignored() -> None:
    out = parse(body(gemini_text_stream("Hi")) + b"trailing junk\n")
    assert out.error is None
    assert out.text == "Hi"


def test_unframed_text_is_bounded() -> None:
    flood = b"x" * 1000 + b"\n"
    data = body(gemini_text_stream("Hi", finish_reason=None)) + flood * 200
    parser = GeminiStreamParser()
    for i in range(0, len(data), 4096):
        parser.feed(data[i : i + 4096])
        assert parser.unframed.size <= MAX_UNFRAMED_BYTES + 1001
        assert len(parser.unframed._partial) <= MAX_UNFRAMED_BYTES + 8
    parser.end()
    assert isinstance(parser.error, StreamProtocolError)
    assert "more than" in str(parser.error)


def test_error_event_type_and_odd_error_shapes() -> None:
    named = b'event: error\ndata: {"error": {"code": 503, "status": "UNAVAILABLE"}}\n\n'
    out = parse(named)
    assert out.error is ProviderError
    assert out.retryable is True
    array = b'data: [{"error": {"code": 500, "message": "x", "status": "INTERNAL"}}]\n\n'
    assert parse(array).retryable is True
    odd = b'data: {"error": {"code": [1], "message": {"a": 1}, "status": 7}}\n\n'
    out = parse(odd)
    assert out.error is ProviderError
    assert out.retryable is False
    # An OpenAI-style error object through a gateway: classified by its type.
    gateway = b'data: {"error": {"message": "m", "type": "server_error"}}\n\n'
    assert parse(gateway).retryable is True


def test_malformed_and_wrong_shape_frames() -> None:
    ok = frame_bytes(gemini_frame([{"text": "Hi"}]))
    out = parse(ok + b'data: {"candidates": [\n\n')
    assert out.text == "Hi"
    assert out.error is StreamProtocolError
    assert "malformed JSON" in (out.message or "")
    out = parse(ok + b'data: {"candidates": 3}\n\n')
    assert out.error is StreamProtocolError
    assert "unexpected JSON" in (out.message or "")
    nameless = frame_bytes(gemini_frame([{"functionCall": {"args": {}}}], finish_reason="STOP"))
    out = parse(ok + nameless)
    assert out.text == "Hi"
    assert out.error is StreamProtocolError
    deep = b"data: " + b"[" * 100_000 + b"\n\n"
    assert parse(deep).error is StreamProtocolError


def test_bounds_on_calls_args_and_candidates() -> None:
    big = '{"a": "' + "x" * 100 + '"}'
    out = parse(body(gemini_tool_call_stream([("f", big)])), max_tool_argument_bytes=50)
    assert out.error is StreamProtocolError
    assert "exceed" in (out.message or "")
    many = gemini_tool_call_stream([("f", {})] * 5)
    assert parse(body(many), max_tool_calls=4).error is StreamProtocolError
    cands = b"".join(frame_bytes(gemini_frame([{"text": "x"}], index=i)) for i in range(5))
    assert parse(cands, max_choices=4).error is StreamProtocolError


def test_keepalive_comments_and_empty_data_are_nothing() -> None:
    steps = (KeepAlive(), *gemini_text_stream("Hi"), KeepAlive())
    assert parse(body(steps)).text == "Hi"
    assert parse(b"data:\n\n" + body(gemini_text_stream("Hi"))).text == "Hi"


def test_progress_moves_with_data_events_only() -> None:
    parser = GeminiStreamParser()
    parser.feed(b": ping\n\n")
    assert parser.progress == 0
    parser.feed(b'{"error": 1}\n')  # unframed text is not progress
    assert parser.progress == 0
    parser.feed(frame_bytes(gemini_frame([{"text": "a"}]), crlf=False)[:-1])
    assert parser.progress == 0
    parser.feed(b"\n")
    assert parser.progress == 1


def test_finish_mapping_and_retryability_helpers() -> None:
    assert map_finish_reason("STOP", True) == "tool_calls"
    assert map_finish_reason("STOP", False) == "stop"
    assert gemini_error_is_retryable("DEADLINE_EXCEEDED", 504)
    assert not gemini_error_is_retryable("INVALID_ARGUMENT", 503)  # the status name decides
    assert gemini_error_is_retryable(None, 503)
    assert not gemini_error_is_retryable(None, True)


# -- the chunking property ----------------------------------------------------------------------

TRANSCRIPTS: dict[str, bytes] = {
    "text": body(gemini_text_stream("Héllo, wörld — ✓ 日本語!", chunk_size=3)),
    "text_crlf": body(gemini_text_stream("Héllo, wörld — ✓ 日本語!", chunk_size=3, crlf=True)),
    "thinking": body(gemini_text_stream("Yes.", thoughts="Let me think… ok.", crlf=True)),
    "tools": body(
        gemini_tool_call_stream(
            [("a", '{"q": "é", "n": [1,2]}'), ("b", {})], text="Checking", crlf=True
        )
    ),
    "tools_serial": body(gemini_tool_call_stream([("a", {}), ("b", {"k": 1})], parallel=False)),
    "length": body(gemini_text_stream("cut", finish_reason="MAX_TOKENS")),
    "blocked": body(gemini_blocked_stream()),
    "truncated": body(gemini_text_stream("abc def", finish_reason=None, crlf=True)),
    "error_framed": body((*gemini_text_stream("ab", finish_reason=None), gemini_error_event())),
    "error_raw": body(
        (*gemini_text_stream("ab", finish_reason=None, crlf=True), gemini_error_event(framed=False))
    ),
    "pings": body((KeepAlive(), *gemini_text_stream("ab cd"), KeepAlive())),
    "bom": b"\xef\xbb\xbf" + body(gemini_text_stream("bom", crlf=True)),
}


def splits(data: bytes) -> list[list[int]]:
    """Read plans: whole, byte by byte, a cut at every CR/LF and inside every UTF-8 sequence."""
    plans: list[list[int]] = [[len(data) or 1], [1]]
    for i, byte in enumerate(data):
        if byte in (10, 13) or 0x80 <= byte < 0xC0:
            plans.append([i or 1, len(data)])
    return plans


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_transcripts_under_every_chunking(name: str) -> None:
    data = TRANSCRIPTS[name]
    whole = parse(data)
    for plan in splits(data):
        assert parse(data, plan) == whole, (name, plan)
    rng = random.Random(name)
    for _ in range(20):
        plan = [rng.randint(1, 40) for _ in range(8)]
        assert parse(data, plan) == whole, (name, plan)


@given(
    name=st.sampled_from(sorted(TRANSCRIPTS)),
    reads=st.lists(st.integers(1, 64), min_size=1, max_size=12),
)
def test_transcripts_under_random_chunking(name: str, reads: list[int]) -> None:
    data = TRANSCRIPTS[name]
    assert parse(data, reads) == parse(data)


_PIECES = [
    b"data: ",
    b"data:",
    b"event: error\n",
    b"\n",
    b"\r\n",
    b"\r",
    b": c\n",
    b"{",
    b"}",
    b'"error"',
    b'{"error": {"code": 503, "status": "UNAVAILABLE"}}',
    b'{"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}]}',
    b'{"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {}}}]}}]}',
    b'{"usageMetadata": {"promptTokenCount": 1}}',
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3",
    b"[",
    b"id: 1\n",
]


@given(
    parts=st.lists(st.sampled_from(_PIECES) | st.binary(max_size=8), max_size=30),
    reads=st.lists(st.integers(1, 32), min_size=1, max_size=8),
)
def test_any_bytes_end_with_nothing_or_one_typed_error_whatever_the_chunking(
    parts: list[bytes], reads: list[int]
) -> None:
    data = b"".join(parts)
    whole = parse(data)
    assert whole.error is None or issubclass(whole.error, LLMStreamError)
    assert parse(data, reads) == whole
    assert parse(data, [1]) == whole
    # The shortcut and the general path (decoder + unframed watch) agree on anything.
    assert parse(data, reads, shortcut=False) == whole


_REGULAR = [
    b"data: " + msgspec.json.encode(gemini_frame([{"text": "h\u00e9"}])),
    b"data: " + msgspec.json.encode(gemini_frame([{"text": "x"}], finish_reason="STOP")),
    b'data: {"error": {"code": 503, "status": "UNAVAILABLE"}}',
    b"data: {",
    b'{"error": {"code": 500}}',
    b": keep",
    b"event: x",
    b"",
]


@given(
    blocks=st.lists(st.sampled_from(_REGULAR), max_size=12),
    endings=st.lists(st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n", b"\n", b"\r\r"]), min_size=1),
    reads=st.lists(st.integers(1, 200), min_size=1, max_size=8),
    # The frames above are 147 and 252 bytes: bounds that some of them break, all break, none.
    limit=st.sampled_from([1 << 20, 1 << 20, 200, 100]),
)
def test_the_shortcut_agrees_with_the_general_path(
    blocks: list[bytes], endings: list[bytes], reads: list[int], limit: int
) -> None:
    # Mostly regular bodies (where the shortcut runs) with irregular blocks mixed in (where it
    # hands over to the general path mid-stream).
    data = b"".join(block + endings[i % len(endings)] for i, block in enumerate(blocks))
    bounds = {"max_line_size": limit + 50, "max_event_size": limit}
    general = parse(data, shortcut=False, **bounds)
    assert parse(data, **bounds) == general
    assert parse(data, reads, **bounds) == general
    assert parse(data, reads, shortcut=False, **bounds) == general


@pytest.mark.parametrize("shortcut", [True, False])
def test_a_frame_beyond_the_event_bound_is_a_protocol_error_after_the_earlier_text(
    shortcut: bool,
) -> None:
    # Frames are cut out of a read with one split; the SSE bounds still hold for each.
    small = frame_bytes(gemini_frame([{"text": "ab"}]))
    big = frame_bytes(gemini_frame([{"text": "x" * 300}]))
    data = small + big + small
    out = parse(data, shortcut=shortcut, max_line_size=1000, max_event_size=len(big) - 20)
    assert out.text == "ab"
    assert out.error is StreamProtocolError
    assert "max_event_size" in (out.message or "")


# -- UnframedText on its own ----------------------------------------------------------------------


@given(st.lists(st.sampled_from([b"a", b"data: x", b":c", b"{", b"\r", b"\n", b"\r\n", b"id"])))
def test_unframed_text_is_chunking_invariant(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    whole = UnframedText()
    whole.feed(data)
    expected = whole.end()
    bytewise = UnframedText()
    for i in range(len(data)):
        bytewise.feed(data[i : i + 1])
    assert bytewise.end() == expected


def test_chunk_event_builder_frames_are_documented_shapes() -> None:
    step = gemini_text_stream("x")[0]
    assert isinstance(step, ChunkEvent)
    assert step.data["candidates"][0]["content"]["role"] == "model"
    assert gemini_usage(1, 2, thoughts_tokens=3)["totalTokenCount"] == 6
