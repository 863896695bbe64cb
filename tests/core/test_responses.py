"""Tests for the OpenAI Responses assembler (trio_llmstream._core._responses).

Transcripts are composed from the documented streaming events (``response.created``,
``response.output_text.delta``, ``response.function_call_arguments.delta``,
``response.reasoning_summary_text.delta``, ``response.completed``/``incomplete``/``failed``,
``error``), both by hand and with the public builders of ``trio_llmstream.testing``. Every
transcript gives the same outcome however its bytes are cut, and any bytes at all end with
nothing or one typed error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

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
from trio_llmstream._core._parser import EventStreamParser
from trio_llmstream._core._responses import ResponsesAssembler, ResponsesParser
from trio_llmstream.testing import (
    MockResponse,
    responses_error_event,
    responses_failed_event,
    responses_stream,
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
    def finish(self) -> tuple[str | None, str | None]:
        for k in self.chunks:
            for c in k.choices:
                if c.finish_reason is not None:
                    return c.finish_reason, c.native_finish_reason
        return None, None


def parse(
    body: bytes, reads: Sequence[int] | None = None, *, shortcut: bool = True, **kwargs: Any
) -> Outcome:
    """Run ``body`` through ``ResponsesParser`` (or, without the ``shortcut``, the shared
    ``EventStreamParser`` and the assembler), cut at ``reads``."""
    sse_limits = {k: kwargs.pop(k) for k in ("max_line_size", "max_event_size") if k in kwargs}
    parser: ResponsesParser | EventStreamParser
    if shortcut:
        parser = ResponsesParser(**sse_limits, **kwargs)
    else:
        parser = EventStreamParser(ResponsesAssembler(**kwargs), **sse_limits)
    chunks: list[ChatChunk] = []
    pos = i = 0
    while pos < len(body):
        size = len(body) if not reads else max(1, reads[i % len(reads)])
        chunks += parser.feed(body[pos : pos + size])
        pos += size
        i += 1
        if parser.finished:
            assert parser.feed(b'data: {"type":"response.output_text.delta","delta":"x"}\n\n') == []
            break
    chunks += parser.end()
    assert parser.finished
    assert parser.end() == []
    err = parser.error
    return Outcome(
        chunks=chunks,
        error=type(err) if err is not None else None,
        message=str(err) if err is not None else None,
        retryable=err.retryable if err is not None else None,
        usage=parser.usage,
        request_id=parser.request_id,
    )


def sse(*events: dict[str, Any] | str, numbered: bool = True) -> bytes:
    """An SSE body: dicts become ``event: <type>`` + ``data:`` JSON (numbered in order unless
    they carry a ``sequence_number`` or ``numbered`` is False); strings are raw SSE text."""
    out = []
    n = 0
    for event in events:
        if isinstance(event, str):
            out.append(event)
            continue
        data = dict(event)
        if numbered and "sequence_number" not in data:
            data["sequence_number"] = n
        n = data.get("sequence_number", n) + 1 if numbered else n
        out.append(f"event: {data.get('type')}\ndata: {json.dumps(data)}\n\n")
    return "".join(out).encode()


def body(steps: Any) -> bytes:
    return MockResponse(steps=steps).body_bytes()


CREATED = {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}
USAGE = {
    "input_tokens": 120,
    "input_tokens_details": {"cached_tokens": 100},
    "output_tokens": 40,
    "output_tokens_details": {"reasoning_tokens": 30},
    "total_tokens": 160,
}
COMPLETED = {
    "type": "response.completed",
    "response": {"id": "resp_1", "status": "completed", "usage": USAGE},
}


def text_delta(delta: str, item: str = "msg_1", part: int = 0) -> dict[str, Any]:
    return {
        "type": "response.output_text.delta", "item_id": item, "output_index": 0,
        "content_index": part, "delta": delta, "logprobs": [],
    }


def text_done(text: str, item: str = "msg_1", part: int = 0) -> dict[str, Any]:
    return {
        "type": "response.output_text.done", "item_id": item, "output_index": 0,
        "content_index": part, "text": text,
    }


def call_added(item: str, call_id: str, name: str) -> dict[str, Any]:
    return {
        "type": "response.output_item.added", "output_index": 1,
        "item": {"type": "function_call", "id": item, "call_id": call_id, "name": name,
                 "arguments": "", "status": "in_progress"},
    }


def args_delta(item: str, delta: str) -> dict[str, Any]:
    return {"type": "response.function_call_arguments.delta", "item_id": item, "delta": delta}


def args_done(item: str, arguments: str) -> dict[str, Any]:
    return {
        "type": "response.function_call_arguments.done", "item_id": item, "arguments": arguments
    }


# -- transcripts --------------------------------------------------------------------------------

TEXT = "Hello, wörld! 🌍 Ça va?"
ARGS = '{"location": "Paris, France", "unit": "celsius"}'

TRANSCRIPTS: dict[str, bytes] = {
    "text": body(responses_stream(text=TEXT)),
    "reasoning": body(
        responses_stream(text=TEXT, reasoning=["First, think.", "Then answer."],
                         encrypted_content="gAAAAB3x==")
    ),
    "tool": body(responses_stream(calls=[("get_weather", ARGS)], fragments=7)),
    "parallel": body(responses_stream(calls=[("a", '{"x": 1}'), ("b", '{"y": [1, 2]}')])),
    "text_then_tool": body(responses_stream(text="Let me check.", calls=[("get_weather", ARGS)])),
    "length": body(responses_stream(text=TEXT, ending="max_output_tokens")),
    "content_filter": body(responses_stream(text=TEXT, ending="content_filter")),
    "failed": body(responses_stream(text=TEXT, ending="failed")),
    "truncated": body(responses_stream(text=TEXT, ending=None)),
    "error_after_text": body(
        (*responses_stream(text=TEXT, ending=None), responses_error_event(type="overloaded_error"))
    ),
    "pings": sse(CREATED, ": keep-alive\n\n", text_delta("a"), ": ping\n\n", text_delta("b"),
                 COMPLETED),
    "interleaved_calls": sse(
        CREATED, call_added("fc_1", "call_A", "f"), call_added("fc_2", "call_B", "g"),
        args_delta("fc_1", '{"a"'), args_delta("fc_2", '{"b"'), args_delta("fc_1", ": 1}"),
        args_delta("fc_2", ": 2}"), args_done("fc_2", '{"b": 2}'), args_done("fc_1", '{"a": 1}'),
        COMPLETED,
    ),
}


def test_text_usage_and_finish() -> None:
    out = parse(TRANSCRIPTS["text"])
    assert out.error is None
    assert out.text == TEXT  # the .done events repeat it: never passed on twice
    assert out.finish == ("stop", "completed")
    assert out.request_id == "resp_mock"
    assert all(k.request_id == "resp_mock" for k in out.chunks)
    assert out.usage is not None
    assert out.usage.prompt_tokens == 10
    assert out.usage.cached_tokens == 2
    assert out.usage.source == "provider"
    assert out.chunks[-1].usage == out.usage
    # Lifecycle and .done events produce no chunks: one chunk per delta, then the finish.
    assert len(out.chunks) == len(TEXT) // 4 + 1 + 1


def test_usage_mapping() -> None:
    out = parse(sse(CREATED, text_delta("hi"), COMPLETED))
    assert out.usage == CompletionUsage(
        completion_tokens=40, prompt_tokens=120, total_tokens=160, cached_tokens=100,
        reasoning_tokens=30, source="provider",
    )


def test_usage_without_total_or_details() -> None:
    completed = {"type": "response.completed",
                 "response": {"usage": {"input_tokens": 3, "output_tokens": 4}}}
    out = parse(sse(text_delta("hi"), completed))
    assert out.usage == CompletionUsage(completion_tokens=4, prompt_tokens=3, total_tokens=7)


def test_absent_usage_is_none_not_zero() -> None:
    out = parse(body(responses_stream(text="hi", usage=False)))
    assert out.error is None
    assert out.usage is None


def test_reasoning_summary_and_replay_item() -> None:
    out = parse(TRANSCRIPTS["reasoning"])
    assert out.error is None
    assert out.reasoning == "First, think.\n\nThen answer."
    assert out.text == TEXT
    [item] = out.items
    assert item.provider == "openai.responses"
    assert item.kind == "reasoning"
    assert json.loads(item.data)["encrypted_content"] == "gAAAAB3x=="
    # Not visible: a chunk with only an item never commits.
    assert not any(k.is_visible for k in out.chunks if k.choices[0].delta.provider_items)


def test_replay_item_is_byte_equal() -> None:
    # Whatever the server's spacing, key order and escapes, the item comes back as sent.
    raw = ('{ "type" : "reasoning", "id":"rs_1","summary":[],'
           '"encrypted_content":"a\\/b\\u00e9==", "z": [1.50, 1e3] }')
    data = ('{"type":"response.output_item.done","sequence_number":3,"output_index":0,'
            '"item":' + raw + "}")
    out = parse(("event: response.output_item.done\ndata: " + data + "\n\n").encode()
                + sse(COMPLETED, numbered=False))
    [item] = out.items
    assert item.data == raw


def test_one_tool_call_in_many_fragments() -> None:
    out = parse(TRANSCRIPTS["tool"])
    assert out.error is None
    assert out.calls == [FunctionCall("call_mock_0", "get_weather", ARGS)]
    assert out.finish == ("tool_calls", "completed")
    assert [i.kind for i in out.items] == ["function_call"]
    assert json.loads(out.items[0].data)["id"] == "fc_mock_0"
    # The call is delivered at arguments.done, before its item's replay record.
    deltas = [k.choices[0].delta for k in out.chunks]
    kinds = ["call" if d.tool_calls else "item" if d.provider_items else "other" for d in deltas]
    assert kinds == ["call", "item", "other"]


def test_parallel_and_interleaved_calls() -> None:
    out = parse(TRANSCRIPTS["parallel"])
    assert out.calls == [FunctionCall("call_mock_0", "a", '{"x": 1}'),
                         FunctionCall("call_mock_1", "b", '{"y": [1, 2]}')]
    out = parse(TRANSCRIPTS["interleaved_calls"])
    assert out.calls == [
        FunctionCall("call_B", "g", '{"b": 2}'), FunctionCall("call_A", "f", '{"a": 1}')
    ]
    assert out.finish[0] == "tool_calls"


def test_text_then_tool_call() -> None:
    out = parse(TRANSCRIPTS["text_then_tool"])
    assert out.text == "Let me check."
    assert out.calls == [FunctionCall("call_mock_0", "get_weather", ARGS)]
    assert out.finish[0] == "tool_calls"


def test_arguments_are_the_deltas_not_the_done_text() -> None:
    # The deltas are what was streamed; a differing .done never replaces or doubles them.
    out = parse(sse(call_added("fc_1", "c", "f"), args_delta("fc_1", '{"a":'),
                    args_delta("fc_1", " 1}"), args_done("fc_1", '{"a": 1}'), COMPLETED))
    assert out.calls == [FunctionCall("c", "f", '{"a": 1}')]


@pytest.mark.parametrize(
    ("ending", "finish"),
    [("max_output_tokens", ("length", "max_output_tokens")),
     ("content_filter", ("content_filter", "content_filter"))],
)
def test_incomplete(ending: str, finish: tuple[str, str]) -> None:
    out = parse(body(responses_stream(text=TEXT, ending=ending)))  # type: ignore[arg-type]
    assert out.error is None
    assert out.text == TEXT
    assert out.finish == finish
    assert out.usage is not None


def test_incomplete_for_an_unknown_reason_is_length() -> None:
    incomplete = {"type": "response.incomplete",
                  "response": {"incomplete_details": {"reason": "something_new"}}}
    assert parse(sse(text_delta("a"), incomplete)).finish == ("length", "something_new")
    assert parse(sse(text_delta("a"), {"type": "response.incomplete"})).finish == (
        "length", "incomplete")


def test_refusal_is_content_and_content_filter() -> None:
    refusal = {"type": "response.refusal.delta", "item_id": "m", "content_index": 0,
               "delta": "I can't help with that."}
    done = {"type": "response.refusal.done", "item_id": "m", "content_index": 0,
            "refusal": "I can't help with that."}
    out = parse(sse(refusal, done, COMPLETED))
    assert out.text == "I can't help with that."
    assert out.finish == ("content_filter", "refusal")
    out = parse(sse(done, COMPLETED))  # only the .done: passed on once
    assert out.text == "I can't help with that."


def test_done_without_deltas_is_passed_on_once() -> None:
    summary_done = {"type": "response.reasoning_summary_text.done", "item_id": "rs",
                    "summary_index": 0, "text": "Thought."}
    raw_done = {"type": "response.reasoning_text.done", "item_id": "rs", "content_index": 0,
                "text": " Raw."}
    out = parse(sse(summary_done, raw_done, text_done("Hi there"), text_done("Hi there"),
                    call_added("fc", "c", "f"), args_done("fc", '{"k": 1}'), COMPLETED))
    assert out.text == "Hi there"
    assert out.reasoning == "Thought. Raw."
    assert out.calls == [FunctionCall("c", "f", '{"k": 1}')]


@pytest.mark.parametrize("shortcut", [True, False])
def test_deltas_without_ids_are_not_repeated_by_their_done(shortcut: bool) -> None:
    # A compatible server that omits item_id and content_index: the .done still repeats.
    bare = [{"type": "response.output_text.delta", "delta": d} for d in ("Hel", "lo")]
    done = {"type": "response.output_text.done", "text": "Hello"}
    out = parse(sse(*bare, done, COMPLETED), shortcut=shortcut)
    assert (out.text, out.error) == ("Hello", None)


def test_a_call_never_named_is_a_protocol_error_at_the_end() -> None:
    out = parse(sse(args_delta("fc_x", "{}"), COMPLETED))
    assert out.error is StreamProtocolError
    assert "without a name" in (out.message or "")


def test_a_call_without_arguments_is_delivered_at_the_end() -> None:
    out = parse(sse(call_added("fc", "c", "ping"), COMPLETED))
    assert out.calls == [FunctionCall("c", "ping", "")]


def test_raw_reasoning_deltas() -> None:
    delta = {"type": "response.reasoning_text.delta", "item_id": "rs", "content_index": 0,
             "delta": "hmm"}
    done = {"type": "response.reasoning_text.done", "item_id": "rs", "content_index": 0,
            "text": "hmm"}
    assert parse(sse(delta, done, COMPLETED)).reasoning == "hmm"


def test_second_text_part_is_its_own_part() -> None:
    out = parse(sse(text_delta("a", part=0), text_done("a", part=0), text_done("b", part=1),
                    COMPLETED))
    assert out.text == "ab"


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize(
    ("type_", "code", "retryable"),
    [("server_error", None, True), ("overloaded_error", None, True),
     ("rate_limit_error", "rate_limit_exceeded", True),
     ("invalid_request_error", "invalid_prompt", False)],
)
def test_error_event_after_text(
    nested: bool, type_: str, code: str | None, retryable: bool
) -> None:
    steps = (*responses_stream(text=TEXT, ending=None),
             responses_error_event("boom", type=type_, code=code, nested=nested))
    out = parse(body(steps))
    assert out.text == TEXT  # the chunks before the error are delivered first
    assert out.error is ProviderError
    assert out.message == "boom"
    assert out.retryable is retryable


def test_error_event_shapes() -> None:
    nested = sse({"type": "error", "error": {"type": "invalid_request_error", "code": "bad",
                                             "message": "no", "param": "x"}})
    flat = sse({"type": "error", "code": "server_error", "message": "oops", "param": None})
    assert parse(nested).error is ProviderError
    assert parse(nested).retryable is False
    assert (parse(flat).message, parse(flat).retryable) == ("oops", True)
    assert parse(sse({"type": "error", "error": "just text"})).message == "just text"
    assert parse(sse({"type": "error"})).error is ProviderError
    # An SSE ``event: error`` whose data is not an event (no type, or not JSON).
    assert parse(b"event: error\ndata: upstream exploded\n\n").message == "upstream exploded"
    no_type = b'event: error\ndata: {"error": {"message": "m", "type": "server_error"}}\n\n'
    assert (parse(no_type).message, parse(no_type).retryable) == ("m", True)
    odd = b'event: error\ndata: {"message": [1, 2], "code": {"x": 1}, "type": 5}\n\n'
    assert parse(odd).error is ProviderError


def test_response_failed() -> None:
    out = parse(body((*responses_stream(text="par", ending=None),
                      responses_failed_event("model crashed", code="server_error"))))
    assert (out.text, out.error, out.message, out.retryable) == (
        "par", ProviderError, "model crashed", True)
    out = parse(body(responses_stream(text="x", ending="failed")))
    assert out.error is ProviderError
    # The usage so far comes in a chunk of its own, before the error: the failed attempt's.
    assert out.chunks[-1].usage == out.usage
    assert out.chunks[-1].choices == []
    assert out.usage is not None
    assert out.usage.source == "provider_partial"
    out = parse(sse({"type": "response.failed",
                     "response": {"error": {"code": "invalid_prompt", "message": "no"}}}))
    assert out.retryable is False
    assert parse(sse({"type": "response.failed"})).message == "the response failed"


def test_truncation() -> None:
    out = parse(TRANSCRIPTS["truncated"])
    assert out.text == TEXT
    assert out.error is StreamTruncatedError
    assert out.retryable is True
    assert parse(b"").error is StreamTruncatedError
    # A chat-style [DONE] is not a terminal of this protocol.
    assert parse(sse(text_delta("a")) + b"data: [DONE]\n\n").error is StreamTruncatedError


def test_terminal_ends_the_stream_and_later_input_is_ignored() -> None:
    out = parse(sse(text_delta("a"), COMPLETED, text_delta("b"), {"type": "error"}))
    assert (out.text, out.error) == ("a", None)


# -- sequence numbers ---------------------------------------------------------------------------


def test_duplicated_event_is_a_protocol_error_after_what_came_before() -> None:
    dup = sse(dict(text_delta("a"), sequence_number=5), dict(text_delta("a"), sequence_number=5),
              COMPLETED, numbered=False)
    out = parse(dup)
    assert out.text == "a"
    assert out.error is StreamProtocolError
    assert "sequence_number 5 after 5" in (out.message or "")


def test_reordered_event_is_a_protocol_error() -> None:
    out = parse(sse(dict(text_delta("a"), sequence_number=7),
                    dict(text_delta("b"), sequence_number=6), numbered=False))
    assert (out.text, out.error) == ("a", StreamProtocolError)


def test_resumed_stream_without_created_and_with_gaps_is_accepted() -> None:
    out = parse(sse(dict(text_delta("a"), sequence_number=57),
                    dict(text_delta("b"), sequence_number=60),
                    dict(COMPLETED, sequence_number=61), numbered=False))
    assert (out.text, out.error, out.finish[0]) == ("ab", None, "stop")
    assert out.request_id == "resp_1"  # from the terminal's response


def test_events_without_numbers_are_accepted() -> None:
    out = parse(sse(text_delta("a"), text_delta("b"), COMPLETED, numbered=False))
    assert (out.text, out.error) == ("ab", None)


def test_resumed_mid_call_takes_the_name_from_the_item() -> None:
    # The client resumed after output_item.added: deltas for an unknown item, then its done.
    item = {"type": "function_call", "id": "fc_9", "call_id": "call_9", "name": "f",
            "arguments": '{"a": 1}', "status": "completed"}
    out = parse(sse(args_delta("fc_9", ': 1}'), args_done("fc_9", '{"a": 1}'),
                    {"type": "response.output_item.done", "item": item}, COMPLETED))
    assert out.calls == [FunctionCall("call_9", "f", ": 1}")]
    # A call seen only as a done item.
    out = parse(sse({"type": "response.output_item.done", "item": item}, COMPLETED))
    assert out.calls == [FunctionCall("call_9", "f", '{"a": 1}')]
    assert out.finish[0] == "tool_calls"


def test_call_without_name_or_call_id_is_a_protocol_error() -> None:
    for missing in ("name", "call_id"):
        item = {"type": "function_call", "id": "fc", "call_id": "c", "name": "f", "arguments": "{}"}
        del item[missing]
        out = parse(sse({"type": "response.output_item.done", "item": item}, COMPLETED))
        assert out.error is StreamProtocolError
        assert missing.replace("_", "") in (out.message or "").replace("_", "")


def test_call_completed_at_the_terminal_when_its_item_never_ended() -> None:
    out = parse(sse(args_delta("fc", "{}"), call_added("fc", "c", "f"), COMPLETED))
    assert out.calls == [FunctionCall("c", "f", "{}")]
    assert out.finish[0] == "tool_calls"


# -- lifecycle, progress, odd input ---------------------------------------------------------------


@pytest.mark.parametrize("shortcut", [True, False])
def test_lifecycle_events_produce_nothing_but_are_progress(shortcut: bool) -> None:
    parser = ResponsesParser() if shortcut else EventStreamParser(ResponsesAssembler())
    lifecycle = sse(
        CREATED, {"type": "response.in_progress"}, {"type": "response.queued"},
        {"type": "response.output_item.added", "item": {"type": "message", "id": "m"}},
        {"type": "response.content_part.added", "item_id": "m", "part": {}},
        {"type": "response.content_part.done", "item_id": "m", "part": {}},
        {"type": "response.output_text.annotation.added", "annotation": {}},
        {"type": "response.web_search_call.searching"}, {"type": "response.something_new"},
        {"type": "response.output_item.done", "item": {"type": "message", "id": "m"}},
    )
    assert parser.feed(lifecycle) == []
    assert parser.progress > 0
    before = parser.progress
    assert parser.feed(b": keep-alive\n\n\n") == []
    assert parser.progress == before  # comments and blank lines are not progress
    assert parser.feed(b"event: response.in_progress\ndata: {\"type\": \"response.in") == []
    assert parser.progress == before  # nor is an unfinished event
    assert not parser.finished


@pytest.mark.parametrize(
    "data",
    ['{"type": "response.output_text.delta", "delta": ', "not json", '{"delta": "x"}',
     '[1, 2]', '"text"', '{"type": 5}', '{"type": "response.output_text.delta", "delta": 5}',
     '{"type": "response.output_item.done", "item": [1]}',
     '{"type": "response.output_item.done", "item": {"type": 7}}',
     '{"type": "x", "sequence_number": "1"}', '{"type": "x", "z": ' + "[" * 5000 + "]" * 5000 + "}",
     '{"type": "x", "sequence_number": 1' + "0" * 5000 + "}"],
)
def test_malformed_or_wrong_shape_is_a_protocol_error(data: str) -> None:
    out = parse(sse(text_delta("a")) + f"data: {data}\n\n".encode())
    assert out.text == "a"
    assert out.error is StreamProtocolError


def test_item_null_and_blank_data_are_nothing() -> None:
    out = parse(sse({"type": "response.output_item.done", "item": None}) + b"data:\n\n"
                + sse(COMPLETED, numbered=False))
    assert (out.error, out.finish[0]) == (None, "stop")


# -- bounds -------------------------------------------------------------------------------------


def test_tool_argument_bytes_are_bounded() -> None:
    events = [call_added("fc", "c", "f")] + [args_delta("fc", "é" * 50) for _ in range(20)]
    out = parse(sse(*events, COMPLETED), max_tool_argument_bytes=1000)
    assert out.error is StreamProtocolError
    assert "exceed 1000 bytes" in (out.message or "")


def test_calls_are_bounded() -> None:
    events = [call_added(f"fc{i}", f"c{i}", "f") for i in range(5)]
    out = parse(sse(*events, COMPLETED), max_tool_calls=4)
    assert out.error is StreamProtocolError


def test_parts_are_bounded() -> None:
    events = [text_delta("a", item=f"m{i}") for i in range(10)]
    out = parse(sse(*events, COMPLETED), max_parts=5)
    assert out.text == "aaaaa"
    assert out.error is StreamProtocolError


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ResponsesAssembler(max_parts=0)


@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("tail", [b"data: " + b"x" * 5000 + b"\n\n", b"data: " + b"x" * 5000])
def test_sse_bounds_reported_after_earlier_chunks(shortcut: bool, tail: bytes) -> None:
    big = sse(text_delta("a")) + tail
    out = parse(big, shortcut=shortcut, max_line_size=1000, max_event_size=1000)
    assert [k.text for k in out.chunks] == ["a"]
    assert out.error is StreamProtocolError


def test_large_reads_are_windowed_and_stop_at_the_terminal() -> None:
    data = body(responses_stream(text="x" * 200_000, chunk_size=50)) + b"garbage" * 100_000
    out = parse(data)
    assert (out.error, len(out.text)) == (None, 200_000)
    assert out == parse(data, [70_000])


# -- chunking ----------------------------------------------------------------------------------


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_transcripts_under_whole_byte_by_byte_and_crlf(name: str) -> None:
    data = TRANSCRIPTS[name]
    whole = parse(data)
    assert parse(data, [1]) == whole
    assert parse(data, [2, 3, 5]) == whole
    assert parse(crlf(data)) == whole
    assert parse(crlf(data), [1]) == whole
    assert parse(data.replace(b"\n", b"\r")) == whole
    assert parse(data, shortcut=False) == whole
    assert parse(b"\xef\xbb\xbf" + data, [3]) == whole


@pytest.mark.parametrize("name", ["reasoning", "text_then_tool"])
def test_every_single_split_point(name: str) -> None:
    # Two reads cut anywhere: inside every CRLF and every UTF-8 sequence.
    data = crlf(TRANSCRIPTS[name])
    whole = parse(data)
    for cut in range(1, len(data)):
        parser = ResponsesParser()
        chunks = parser.feed(data[:cut]) + parser.feed(data[cut:]) + parser.end()
        assert chunks == whole.chunks, cut


reads_strategy = st.lists(st.integers(1, 300), min_size=1, max_size=20)


@given(name=st.sampled_from(sorted(TRANSCRIPTS)), reads=reads_strategy, use_crlf=st.booleans())
def test_transcripts_under_any_chunking(name: str, reads: list[int], use_crlf: bool) -> None:
    data = crlf(TRANSCRIPTS[name]) if use_crlf else TRANSCRIPTS[name]
    assert parse(data, reads) == parse(data)


# -- arbitrary input ------------------------------------------------------------------------------

_events = st.fixed_dictionaries(
    {"type": st.sampled_from([
        "response.created", "response.output_text.delta", "response.output_text.done",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
        "response.output_item.added", "response.output_item.done",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.completed", "response.incomplete", "response.failed", "error",
        "response.refusal.delta", "response.reasoning_text.delta", "x",
    ])},
    optional={
        "sequence_number": st.integers(-2, 12),
        "delta": st.one_of(st.text(max_size=4), st.integers()),
        "text": st.text(max_size=4),
        "arguments": st.text(max_size=4),
        "item_id": st.sampled_from(["a", "b", ""]),
        "summary_index": st.integers(0, 2),
        "content_index": st.integers(0, 2),
        "item": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["function_call", "reasoning", "message", 3])},
                optional={"id": st.sampled_from(["a", "b"]), "call_id": st.text(max_size=2),
                          "name": st.text(max_size=2), "arguments": st.text(max_size=3)},
            ),
        ),
        "response": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
            "id": st.text(max_size=3),
            "usage": st.fixed_dictionaries({}, optional={"input_tokens": st.integers(0, 5)}),
            "error": st.one_of(st.text(max_size=3), st.fixed_dictionaries(
                {}, optional={"code": st.text(max_size=3), "message": st.integers()})),
            "incomplete_details": st.fixed_dictionaries({"reason": st.text(max_size=3)}),
        })),
        "error": st.one_of(st.text(max_size=3), st.fixed_dictionaries(
            {}, optional={"type": st.text(max_size=3), "message": st.text(max_size=3)})),
    },
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["event"] * 6 + ["named_error", "junk", "comment", "bytes"]))
        if kind == "event":
            parts.append(b"data: " + json.dumps(draw(_events)).encode() + b"\n\n")
        elif kind == "named_error":
            parts.append(b"event: error\ndata: " + draw(st.sampled_from(
                [b"x", b"{}", b'{"error": 1}', b"[]"])) + b"\n\n")
        elif kind == "junk":
            parts.append(b"data: {\"type\": \n\n")
        elif kind == "comment":
            parts.append(b": c\n\n")
        else:
            parts.append(draw(st.binary(max_size=20)))
    return b"".join(parts)


@given(data=st.one_of(hostile_bodies(), st.binary(max_size=200)), reads=reads_strategy)
def test_any_bytes_end_with_nothing_or_one_typed_error(data: bytes, reads: list[int]) -> None:
    out = parse(data, reads)  # raises nothing
    assert out.error is None or issubclass(out.error, LLMStreamError)
    assert out == parse(data)
    if out.error is None:
        assert out.finish[0] in {"stop", "length", "tool_calls", "content_filter"}



# -- the framing shortcut against the shared decoder -----------------------------------------------


@st.composite
def sse_bodies(draw: st.DrawFn) -> bytes:
    """Responses events in every SSE form the decoder accepts, and some it rejects."""
    blocks = []
    for _ in range(draw(st.integers(0, 10))):
        payload = json.dumps(draw(_events))
        kind = draw(st.sampled_from(
            ["named"] * 5 + ["data", "nospace", "id", "multiline", "comment", "blank", "empty_name",
             "spaced_name", "bad_utf8", "no_data", "two_names", "bom_mid"]
        ))
        # Text deltas are what ResponsesParser cuts out with its own separator: every form
        # above must also be right when it carries that name.
        name = draw(st.sampled_from(
            ["error", "response.x", "response.x", "response.output_text.delta",
             "response.output_text.delta", "response.output_text.delta"]
        ))
        if kind == "named":
            blocks.append(f"event: {name}\ndata: {payload}\n\n".encode())
        elif kind == "data":
            blocks.append(f"data: {payload}\n\n".encode())
        elif kind == "nospace":
            blocks.append(f"event:{name}\ndata:{payload}\n\n".encode())
        elif kind == "id":
            blocks.append(f"id: 7\nevent: {name}\ndata: {payload}\n\n".encode())
        elif kind == "multiline":
            blocks.append(f"event: {name}\ndata: {{\ndata: \"type\": \"x\"}}\n\n".encode())
        elif kind == "comment":
            blocks.append(b": keep-alive\n\n")
        elif kind == "blank":
            blocks.append(b"\n")
        elif kind == "empty_name":
            blocks.append(f"event: \ndata: {payload}\n\n".encode())
        elif kind == "spaced_name":
            blocks.append(f"event:  {name}\ndata:  {payload}\n\n".encode())
        elif kind == "bad_utf8":
            blocks.append(b"event: err\xffor\ndata: " + payload.encode()[:-1] + b'\xff"}\n\n')
        elif kind == "no_data":
            blocks.append(f"event: {name}\n\n".encode())
        elif kind == "two_names":
            blocks.append(f"event: a\nevent: {name}\ndata: {payload}\n\n".encode())
        else:
            blocks.append(f"\ufeffevent: {name}\ndata: {payload}\n\n".encode())
    data = b"".join(blocks)
    style = draw(st.sampled_from(["lf", "lf", "crlf", "cr", "late_crlf"]))
    if style == "crlf":
        data = data.replace(b"\n", b"\r\n")
    elif style == "cr":
        data = data.replace(b"\n", b"\r")
    elif style == "late_crlf":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + data[at:].replace(b"\n", b"\r\n")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 9)) == 0:
        data = b"\xef\xbb\xbf" + data
    return data


@given(data=sse_bodies(), reads=reads_strategy, small=st.booleans())
def test_shortcut_matches_the_shared_decoder_on_any_input(
    data: bytes, reads: list[int], small: bool
) -> None:
    limits = {"max_line_size": 120, "max_event_size": 100} if small else {}
    expected = parse(data, shortcut=False, **limits)
    assert parse(data, **limits) == expected
    assert parse(data, reads, **limits) == expected
    assert parse(data, [1], **limits) == expected


@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("split", ["one read", "bytewise", "straddling"])
def test_a_text_delta_beyond_the_event_bound_is_a_protocol_error_after_the_earlier_text(
    shortcut: bool, split: str
) -> None:
    # Text deltas are cut out of a read by ResponsesParser's own separator; the SSE bounds
    # still hold there: one data line past max_event_size ends the stream with a typed error,
    # also when the whole oversize block reaches the block handler at once (its start pending
    # from one read, its end in the next: "straddling").
    head = sse(text_delta("a"), text_delta("b"))
    big = sse(text_delta("x" * 300), numbered=False)
    body = head + big + sse(text_delta("c"), COMPLETED, numbered=False)
    limit = 250
    assert limit < len(big) < 2 * limit
    reads = {
        "one read": None,
        "bytewise": [1],
        "straddling": [len(head) + limit - 10, limit, limit, limit, 4096],
    }[split]
    out = parse(body, reads, shortcut=shortcut, max_line_size=1000, max_event_size=limit)
    assert out.text == "ab"
    assert out.error is StreamProtocolError
    assert "max_event_size" in (out.message or "")
