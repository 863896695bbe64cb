"""Tests for the Anthropic Messages assembler (trio_llmstream._core._anthropic).

Transcripts are composed from Anthropic's documented streaming format (named events, data
repeating the type, content blocks with start/deltas/stop, cumulative ``message_delta`` usage,
``event: error`` then a closed connection). Every transcript gives the same outcome however
its bytes are cut into reads.
"""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from collections.abc import Callable

import attrs
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
from trio_llmstream._core._anthropic import AnthropicAssembler, AnthropicParser, finish_reason
from trio_llmstream._core._parser import EventStreamParser
from trio_llmstream.testing import RawBytes, sse_response
from trio_llmstream.testing._anthropic import (
    AnthropicErrorEvent,
    AnthropicEvent,
    anthropic_stream,
    anthropic_text_stream,
    anthropic_tool_call_stream,
)
from trio_llmstream.testing._script import StreamStep

# -- helpers ------------------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    chunks: list[ChatChunk]
    error: type[BaseException] | None
    message: str | None
    error_type: str | None
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
    def finish(self) -> tuple[str | None, str | None]:
        for k in self.chunks:
            for c in k.choices:
                if c.finish_reason is not None:
                    return c.finish_reason, c.native_finish_reason
        return None, None


def body_of(steps: list[StreamStep]) -> bytes:
    return sse_response(steps).body_bytes()


def run(
    body: bytes, reads: list[int] | None = None, *, shared: bool = False, **bounds: int
) -> Outcome:
    # The provider's parser (with its framing shortcut), or the shared EventStreamParser.
    parser: AnthropicParser | EventStreamParser = (
        EventStreamParser(AnthropicAssembler(**bounds)) if shared else AnthropicParser(**bounds)
    )
    chunks: list[ChatChunk] = []
    pos = 0
    for size in reads or []:
        if pos >= len(body):
            break
        chunks += parser.feed(body[pos : pos + size])
        pos += size
    if pos < len(body):
        chunks += parser.feed(body[pos:])
    chunks += parser.end()
    assert parser.end() == []  # idempotent
    err = parser.error
    return Outcome(
        chunks,
        type(err) if err is not None else None,
        str(err) if err is not None else None,
        getattr(err, "type", None),
        parser.usage,
        parser.request_id,
    )


def byte_by_byte(body: bytes) -> Outcome:
    return run(body, [1] * len(body))


# -- transcripts --------------------------------------------------------------------------------

TRANSCRIPTS: dict[str, list[StreamStep]] = {
    "text": anthropic_text_stream("Hello, wörld! ✓ 🎉", parts=5),
    "thinking": anthropic_text_stream("The answer is 4.", thinking="2 + 2 = 4, surely.", parts=4),
    "one_tool_many_fragments": anthropic_tool_call_stream(
        [("toolu_01", "get_weather", {"city": "Zürich", "unit": "celsius"})], parts=7
    ),
    "parallel_tools": anthropic_tool_call_stream(
        [("toolu_a", "f", {"x": 1}), ("toolu_b", "g", {"y": [1, 2]})], parts=3
    ),
    "text_then_tool": anthropic_tool_call_stream(
        [("toolu_c", "lookup", {"q": "trio"})], text="Let me check."
    ),
    "length": anthropic_text_stream("cut sh", stop_reason="max_tokens"),
    "error_after_text": [
        *anthropic_text_stream("partial answer", stop=False)[:6],
        AnthropicErrorEvent("overloaded_error", "Overloaded"),
    ],
    "truncated": anthropic_text_stream("never finished", stop=False),
    "pings": [
        step
        for s in anthropic_text_stream("a b c", parts=3)
        for step in (s, AnthropicEvent({"type": "ping"}))
    ],
    "cumulative_usage": anthropic_text_stream("counted", output_tokens=[3, 7, 15]),
    "redacted": anthropic_stream(
        [
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
            {"type": "text", "text": "ok"},
        ]
    ),
}


def test_text() -> None:
    out = run(
        body_of(
            anthropic_text_stream(
                "Hello there",
                input_tokens=7,
                cache_creation_input_tokens=3,
                cache_read_input_tokens=100,
                output_tokens=5,
            )
        )
    )
    assert out.error is None
    assert out.text == "Hello there"
    assert out.request_id == "msg_mock"
    first = out.chunks[0]
    assert first.delta is not None
    assert first.delta.role == "assistant"
    assert not first.is_visible
    assert out.finish == ("stop", "end_turn")
    final = CompletionUsage(
        completion_tokens=5, prompt_tokens=110, total_tokens=115, cached_tokens=100,
        source="provider",
    )
    assert out.usage == final
    assert out.chunks[-1].usage == final
    # message_start's report rides on the role chunk, flagged partial.
    assert first.usage is not None
    assert first.usage.source == "provider_partial"
    assert first.usage.completion_tokens == 1


def test_cumulative_usage_is_the_last_never_a_sum() -> None:
    out = run(body_of(anthropic_text_stream("x", input_tokens=4, output_tokens=[3, 7, 15])))
    assert out.usage is not None
    assert out.usage.completion_tokens == 15
    assert out.usage.prompt_tokens == 4
    assert out.usage.cached_tokens is None


def test_message_delta_may_update_input_counts() -> None:
    steps = anthropic_text_stream("x", input_tokens=4, output_tokens=9)
    for i, s in enumerate(steps):
        assert isinstance(s, AnthropicEvent)
        if s.data["type"] == "message_delta":
            data = dict(s.data)
            data["usage"] = {"output_tokens": 9, "input_tokens": 6, "cache_read_input_tokens": 2}
            steps[i] = AnthropicEvent(data)
    out = run(body_of(steps))
    assert out.usage == CompletionUsage(9, 8, 17, 2, None, "provider")


def test_thinking_becomes_reasoning_and_a_replayable_item() -> None:
    out = run(body_of(anthropic_text_stream("4", thinking="Let me add.", signature="EqQBCgIYAhIM")))
    assert out.reasoning == "Let me add."
    assert out.text == "4"
    assert len(out.items) == 1
    item = out.items[0]
    assert (item.provider, item.kind) == ("anthropic", "thinking")
    assert json.loads(item.data) == {
        "type": "thinking", "thinking": "Let me add.", "signature": "EqQBCgIYAhIM"
    }
    # The item is not visible output: it never commits an attempt.
    item_chunks = [k for k in out.chunks if any(c.delta.provider_items for c in k.choices)]
    assert not any(k.is_visible for k in item_chunks)


def test_redacted_thinking_is_kept_byte_for_byte() -> None:
    block = b'{"type": "redacted_thinking",   "data":"EmwK\\u0041hgB"}'
    steps: list[StreamStep] = [
        *anthropic_stream([])[:2],
        RawBytes(
            b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
            b'"content_block":' + block + b"}\n\n"
        ),
        RawBytes(b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'),
        *anthropic_stream([])[2:],
    ]
    out = run(body_of(steps))
    assert out.error is None
    assert out.items == [ProviderItem("anthropic", "redacted_thinking", block.decode())]
    assert out.reasoning == ""


def test_one_tool_call_in_many_fragments() -> None:
    args = '{"city": "Zürich", "unit":"celsius"}'
    steps = anthropic_tool_call_stream([("toolu_01", "get_weather", args)], parts=9)
    out = run(body_of(steps))
    assert out.calls == [FunctionCall("toolu_01", "get_weather", args)]
    assert out.finish == ("tool_calls", "tool_use")
    # Delivered once, complete, in the chunk made at content_block_stop.
    assert sum(1 for k in out.chunks if k.is_visible) == 1


def test_parallel_calls_in_order_and_text_then_call() -> None:
    out = run(body_of(TRANSCRIPTS["parallel_tools"]))
    assert out.calls == [
        FunctionCall("toolu_a", "f", '{"x":1}'),
        FunctionCall("toolu_b", "g", '{"y":[1,2]}'),
    ]
    out = run(body_of(TRANSCRIPTS["text_then_tool"]))
    assert out.text == "Let me check."
    assert out.calls == [FunctionCall("toolu_c", "lookup", '{"q":"trio"}')]


def test_tool_without_input_gets_empty_object() -> None:
    out = run(body_of(anthropic_tool_call_stream([("toolu_e", "now", {})])))
    assert out.calls == [FunctionCall("toolu_e", "now", "{}")]


def test_invalid_json_arguments_are_passed_on_raw() -> None:
    # Fine-grained tool streaming may send JSON that does not parse: the tool layer judges it.
    out = run(body_of(anthropic_tool_call_stream([("toolu_f", "f", '{"a": [1, 2')])))
    assert out.error is None
    assert out.calls == [FunctionCall("toolu_f", "f", '{"a": [1, 2')]


def test_prefilled_input_without_fragments_is_used() -> None:
    steps: list[StreamStep] = [
        *anthropic_stream([])[:2],
        AnthropicEvent(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
            }
        ),
        AnthropicEvent({"type": "content_block_stop", "index": 0}),
        *anthropic_stream([])[2:],
    ]
    assert run(body_of(steps)).calls == [FunctionCall("t", "f", '{"a":1}')]


@pytest.mark.parametrize(
    ("native", "unified"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
    ],
)
def test_finish_mapping(native: str, unified: str) -> None:
    out = run(body_of(anthropic_text_stream("x", stop_reason=native)))
    assert out.finish == (unified, native)
    assert finish_reason(native) == unified


def test_no_stop_reason_is_stop() -> None:
    out = run(body_of(anthropic_text_stream("x", stop_reason=None)))
    assert out.finish == ("stop", None)


@pytest.mark.parametrize(
    ("error_type", "retryable"),
    [
        ("overloaded_error", True),
        ("api_error", True),
        ("rate_limit_error", True),
        ("invalid_request_error", False),
        ("authentication_error", False),
    ],
)
def test_error_event_after_text(error_type: str, retryable: bool) -> None:
    steps = [
        *anthropic_text_stream("partial answer", parts=2, stop=False)[:5],
        AnthropicErrorEvent(error_type, "boom"),
        # Anything after the error belongs to the same ending.
        AnthropicEvent({"type": "message_stop"}),
    ]
    parser = EventStreamParser(AnthropicAssembler())
    chunks = parser.feed(body_of(steps))
    err = parser.error
    assert isinstance(err, ProviderError)
    assert err.type == error_type
    assert err.retryable is retryable
    assert err.request_id == "msg_mock"
    assert "boom" in str(err)
    assert "".join(k.text for k in chunks) == "partial answer"
    assert parser.end() == []


def test_error_event_reports_partial_usage_first() -> None:
    steps = [
        *anthropic_text_stream("ab", parts=2, input_tokens=9, output_tokens=[4, 8])[:-3],
        AnthropicEvent({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 6}}),
        AnthropicErrorEvent(),
    ]
    out = run(body_of(steps))
    assert out.error is ProviderError
    last = out.chunks[-1]
    assert last.choices == []
    assert last.usage == CompletionUsage(6, 9, 15, None, None, "provider_partial")


def test_error_without_event_line_or_json() -> None:
    data = b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    out = run(data)
    assert (out.error, out.error_type) == (ProviderError, "overloaded_error")
    out = run(b"event: error\ndata: upstream exploded\n\n")
    assert out.error is ProviderError
    assert out.message is not None
    assert "upstream exploded" in out.message
    out = run(b'event: error\ndata: {"type": "error", "error": {"type": ["x"]}}\n\n')
    assert out.error is ProviderError


def test_truncated_before_message_stop() -> None:
    out = run(body_of(anthropic_text_stream("never finished", stop=False)))
    assert out.error is StreamTruncatedError
    assert out.text == "never finished"
    assert out.finish == (None, None)  # the stop reason seen in message_delta is not reported
    assert out.usage is not None
    assert out.usage.source == "provider_partial"
    assert out.chunks[-1].usage is out.usage
    out = run(b"")
    assert out.error is StreamTruncatedError
    assert out.chunks == []


def test_truncated_tool_call_is_dropped() -> None:
    steps = anthropic_tool_call_stream([("t", "f", {"a": 1})], parts=4)
    cut = [s for s in steps if not (isinstance(s, AnthropicEvent) and s.data["type"] in (
        "content_block_stop", "message_delta", "message_stop"))]
    out = run(body_of(cut))
    assert out.error is StreamTruncatedError
    assert out.calls == []


def test_pings_and_lifecycle_never_visible_and_never_duplicate() -> None:
    out = run(body_of(TRANSCRIPTS["pings"]))
    assert out.text == "a b c"
    visible = [k for k in out.chunks if k.is_visible]
    assert len(visible) == 3
    assert all(k.text for k in visible)


def test_progress_counts_every_data_event_including_pings() -> None:
    asm = AnthropicAssembler()
    parser = EventStreamParser(asm)
    parser.feed(b'event: ping\ndata: {"type": "ping"}\n\n')
    assert asm.progress == 1
    parser.feed(b": comment\n\n")
    assert asm.progress == 1
    parser.feed(b'event: ping\ndata: {"type": "pi')
    assert asm.progress == 1
    parser.feed(b'ng"}\n\n')
    assert asm.progress == 2


def test_unknown_events_and_deltas_are_ignored() -> None:
    steps = anthropic_text_stream("ok", parts=1)
    steps.insert(2, AnthropicEvent({"type": "future_event", "x": 1}))
    steps.insert(
        4, AnthropicEvent({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "citations_delta", "citation": {}}})
    )
    out = run(body_of(steps))
    assert out.error is None
    assert out.text == "ok"


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"',
        b"not json",
        b'{"type": "content_block_delta", "index": "zero"}',
        b"[1, 2]",
        b'{"type": "content_block_start", "index": 0}',
        b'{"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use"}}',
        b'{"type": "content_block_start", "index": 0, "content_block": [1]}',
        b'{"type": "content_block_delta", "index": 3, '
        b'"delta": {"type": "input_json_delta", "partial_json": "{"}}',
        b'{"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 1e400}}}',
    ],
)
def test_protocol_errors(data: bytes) -> None:
    prefix = body_of(anthropic_text_stream("before", parts=1, stop=False)[:5])
    out = run(prefix + b"event: x\ndata: " + data + b"\n\n")
    assert out.error is StreamProtocolError, out.message
    assert out.text == "before"


def test_second_message_start_and_double_block_start() -> None:
    start = body_of(anthropic_stream([])[:1])
    assert run(start + start).error is StreamProtocolError
    block = body_of(anthropic_text_stream("x", parts=1)[2:3])
    assert run(start + block + block).error is StreamProtocolError


def test_bounds() -> None:
    big = anthropic_tool_call_stream([("t", "f", "x" * 100)], parts=10)
    assert run(body_of(big), max_tool_argument_bytes=99).error is StreamProtocolError
    assert run(body_of(big), max_tool_argument_bytes=100).error is None
    think = anthropic_text_stream("a", thinking="y" * 50, signature="s" * 10)
    assert run(body_of(think), max_thinking_bytes=59).error is StreamProtocolError
    assert run(body_of(think), max_thinking_bytes=60).error is None
    calls = anthropic_tool_call_stream([(f"t{i}", "f", {}) for i in range(3)])
    assert run(body_of(calls), max_tool_calls=2).error is StreamProtocolError
    assert run(body_of(calls), max_tool_calls=3).error is None
    opened = [
        *anthropic_stream([])[:1],
        *(
            AnthropicEvent({"type": "content_block_start", "index": i,
                            "content_block": {"type": "text", "text": ""}})
            for i in range(4)
        ),
    ]
    assert run(body_of(opened), max_open_blocks=3).error is StreamProtocolError
    with pytest.raises(ValueError):
        AnthropicAssembler(max_tool_calls=0)


def test_sse_bound_is_reported_after_earlier_chunks() -> None:
    body = body_of(anthropic_text_stream("hello", parts=1, stop=False)[:5])
    for parser in (
        EventStreamParser(AnthropicAssembler(), max_line_size=400, max_event_size=400),
        AnthropicParser(max_line_size=400, max_event_size=400),
    ):
        chunks = parser.feed(body + b"data: " + b"x" * 500 + b"\n\n")
        assert "".join(k.text for k in chunks) == "hello"
        assert isinstance(parser.error, StreamProtocolError)


def test_unclosed_blocks_are_flushed_at_message_stop() -> None:
    steps = [
        s for s in anthropic_tool_call_stream([("t", "f", {"a": 1})])
        if not (isinstance(s, AnthropicEvent) and s.data["type"] == "content_block_stop")
    ]
    out = run(body_of(steps))
    assert out.error is None
    assert out.calls == [FunctionCall("t", "f", '{"a":1}')]


# -- chunking invariance ------------------------------------------------------------------------


def _crlf(body: bytes) -> bytes:
    return body.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_transcripts_under_whole_byte_by_byte_and_crlf(name: str) -> None:
    body = body_of(TRANSCRIPTS[name])
    whole = run(body)
    assert run(body, shared=True) == whole
    assert run(body, [1] * len(body), shared=True) == whole
    assert byte_by_byte(body) == whole
    assert run(_crlf(body)) == whole
    assert byte_by_byte(_crlf(body)) == whole
    # Split at every position once (every CRLF and every UTF-8 sequence included).
    crlf = _crlf(body)
    for cut in range(1, len(crlf)):
        assert run(crlf, [cut]) == whole, cut


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
@given(seed=st.integers(0, 2**32 - 1))
def test_transcripts_under_random_chunking(name: str, seed: int) -> None:
    body = body_of(TRANSCRIPTS[name])
    rng = random.Random(seed)
    reads = [rng.randint(1, 40) for _ in range(len(body))]
    assert run(body, reads) == run(body)


def test_expected_outcomes_of_the_transcripts() -> None:
    outcomes = {name: run(body_of(steps)) for name, steps in TRANSCRIPTS.items()}
    assert outcomes["error_after_text"].error is ProviderError
    assert outcomes["truncated"].error is StreamTruncatedError
    assert outcomes["length"].finish == ("length", "max_tokens")
    assert outcomes["cumulative_usage"].usage == CompletionUsage(15, 10, 25, None, None)
    assert outcomes["redacted"].items[0].kind == "redacted_thinking"
    for name in ("text", "thinking", "one_tool_many_fragments", "parallel_tools", "pings"):
        assert outcomes[name].error is None, name


# -- hostile input ------------------------------------------------------------------------------

_PIECES = [
    b"event: ",
    b"data: ",
    b"\n",
    b"\r\n",
    b"\n\n",
    b":",
    b"{",
    b"}",
    b'"type":',
    b'"message_start"',
    b'"content_block_start"',
    b'"content_block_delta"',
    b'"content_block_stop"',
    b'"message_stop"',
    b'"error"',
    b'"index":0,',
    b'"delta":{"type":"input_json_delta","partial_json":"{"}',
    b'"content_block":{"type":"tool_use","id":"a","name":"b"}',
    b'"content_block":{"type":"thinking"}',
    b'"delta":{"type":"text_delta","text":"\xc3\xa9"}',
    b"\xff",
    b"\xc3",
    b"[",
    b"]",
    b"1e999",
]


@given(
    parts=st.lists(
        st.one_of(st.sampled_from(_PIECES), st.binary(max_size=8)), max_size=40
    ),
    reads=st.lists(st.integers(1, 30), max_size=20),
)
def test_any_bytes_end_with_nothing_or_one_typed_error(
    parts: list[bytes], reads: list[int]
) -> None:
    body = b"".join(parts)
    out = run(body, reads)
    if out.error is not None:
        assert issubclass(out.error, LLMStreamError)
    # Same outcome under a different chunking, and from the shared parser.
    assert run(body) == out
    assert run(body, reads, shared=True) == out


@given(st.binary(max_size=300))
def test_arbitrary_bytes(body: bytes) -> None:
    out = run(body)
    assert out.error is None or issubclass(out.error, LLMStreamError)
    assert run(body, shared=True) == out


_BLOCKS = st.sampled_from(
    [
        *(body_of([step]) for step in anthropic_text_stream("hé", thinking="t", parts=2)),
        *(body_of([step]) for step in anthropic_tool_call_stream([("i", "f", {"a": 1})])),
        body_of([AnthropicErrorEvent()]),
        b": keep-alive\n\n",
        b"\n",
        b"\r\n",
        b"\xef\xbb\xbf",
        b"event: \ndata: {}\n\n",
        b"data:\n\n",
        b"data: \n\n",
        b"event: error\ndata: \xff\n\n",
        b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"\xc3"}}\n\n',
        b"id: 1\nevent: ping\ndata: {}\n\n",
        b"event: ping\ndata: {}\ndata: {}\n\n",
        b"retry: 5\n\n",
        b"data: \xc2\xa0\n\n",
        b"data:  \t \n\n",
        b"event: error\ndata: \n\n",
        # Judged on its text (invalid UTF-8), under the text delta's head: any event.
        b'event: content_block_delta\ndata: {"type":"message_start","message":{"id":"m\xff"}}\n\n',
    ]
)


@given(
    blocks=st.lists(st.one_of(_BLOCKS, st.binary(max_size=6)), max_size=30),
    reads=st.lists(st.integers(1, 50), max_size=30),
    limits=st.sampled_from([(1 << 20, 1 << 20), (64, 80), (90, 200), (200, 60), (120, 120)]),
)
def test_shortcut_agrees_with_the_shared_parser(
    blocks: list[bytes], reads: list[int], limits: tuple[int, int]
) -> None:
    body = b"".join(blocks)
    bounds = {"max_line_size": limits[0], "max_event_size": limits[1]}
    fast = AnthropicParser(**bounds)
    shared = EventStreamParser(AnthropicAssembler(), **bounds)
    got: list[ChatChunk] = []
    want: list[ChatChunk] = []
    pos = 0
    for size in reads:
        got += fast.feed(body[pos : pos + size])
        want += shared.feed(body[pos : pos + size])
        assert fast.progress == shared.progress
        pos += size
    got += fast.feed(body[pos:])
    want += shared.feed(body[pos:])
    got += fast.end()
    want += shared.end()
    assert got == want
    assert type(fast.error) is type(shared.error)
    assert str(fast.error) == str(shared.error)
    assert fast.usage == shared.usage


def test_an_event_judged_on_its_text_sets_the_request_id_of_the_deltas_after_it() -> None:
    # Data under the text delta's head that holds invalid UTF-8 is judged on its text (the
    # bytes replaced), and may be any event: here the message_start. The text deltas after it
    # in the same read carry its id, as with the shared parser (the shortcut once kept the id
    # it had before the read for them).
    start = (
        b"event: content_block_delta\n"
        b'data: {"type":"message_start","message":{"id":"msg_\xff1"}}\n\n'
    )
    delta = (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"hi"}}\n\n'
    )
    stop = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    body = start + delta + delta + stop
    fast = run(body)  # one read
    assert fast == run(body, shared=True)
    assert fast.error is None
    assert [c.request_id for c in fast.chunks] == ["msg_\ufffd1"] * 4
    assert fast.text == "hihi"


def test_large_reads_are_windowed() -> None:
    body = body_of(anthropic_text_stream("w" * 300_000, parts=3000))
    assert run(body) == run(body, shared=True)
    assert run(body).text == "w" * 300_000


def test_deeply_nested_json_is_a_protocol_error() -> None:
    data = b"[" * 100_000 + b"]" * 100_000
    out = run(b"data: " + data + b"\n\n", max_tool_calls=1)
    assert out.error is StreamProtocolError


def test_payload_shapes_from_the_docs() -> None:
    # The example stream of Anthropic's streaming page, verbatim in shape.
    body = (
        b'event: message_start\ndata: {"type": "message_start", "message": {"id": '
        b'"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", '
        b'"content": [], "model": "claude-opus-4-6", "stop_reason": null, "stop_sequence": null,'
        b' "usage": {"input_tokens": 25, "output_tokens": 1}}}\n\n'
        b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
        b'"content_block": {"type": "text", "text": ""}}\n\n'
        b'event: ping\ndata: {"type": "ping"}\n\n'
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
        b'"delta": {"type": "text_delta", "text": "Hello"}}\n\n'
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
        b'"delta": {"type": "text_delta", "text": "!"}}\n\n'
        b'event: content_block_stop\ndata: {"type": "content_block_stop", "index": 0}\n\n'
        b'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": '
        b'"end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}\n\n'
        b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    )
    out = run(body)
    assert out.error is None
    assert out.text == "Hello!"
    assert out.request_id == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"
    assert out.usage == CompletionUsage(15, 25, 40, None, None, "provider")
    assert out.finish == ("stop", "end_turn")


# -- bounded memory -----------------------------------------------------------------------------

MiB = 1 << 20


def _peak(fn: Callable[[], object]) -> tuple[int, object]:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


@pytest.mark.parametrize(
    "hostile",
    [
        b"\n" * (8 * MiB),  # blank lines: nothing but separators
        b"x" * (8 * MiB),  # one unterminated line
        b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":'
        b'"text_delta","text":"' + b"a" * (8 * MiB),  # a text delta that never ends
        b": keep-alive\n\n" * (MiB // 2),  # comments only
        (b"event: content_block_delta\ndata: \n\n") * (MiB // 32),  # empty data events
    ],
    ids=["blank-lines", "long-line", "endless-delta", "comments", "empty-events"],
)
def test_one_huge_read_is_processed_in_bounded_memory(hostile: bytes) -> None:
    # Whatever a single read holds, the parser keeps the SSE limits plus a window or two; the
    # result is either nothing or a typed error. (Only the returned chunks grow with input.)
    def parse() -> AnthropicParser:
        parser = AnthropicParser()
        parser.feed(hostile)
        parser.end()
        return parser

    peak, parser = _peak(parse)
    assert isinstance(parser, AnthropicParser)
    assert parser.error is None or isinstance(parser.error, LLMStreamError)
    assert peak < 12 * MiB, peak


def test_thinking_and_arguments_are_bounded_in_many_events() -> None:
    # Many small deltas into one block: the per-block bound stops the growth.
    head = body_of(anthropic_stream([])[:1]) + body_of(
        [AnthropicEvent({"type": "content_block_start", "index": 0,
                         "content_block": {"type": "tool_use", "id": "t", "name": "f"}})]
    )
    delta = body_of(
        [AnthropicEvent({"type": "content_block_delta", "index": 0,
                         "delta": {"type": "input_json_delta", "partial_json": "x" * 1000}})]
    )
    out = run(head + delta * 2000, max_tool_argument_bytes=1 << 20)
    assert out.error is StreamProtocolError
    assert out.message is not None
    assert "bytes of arguments" in out.message
