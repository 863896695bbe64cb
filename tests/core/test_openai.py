"""Tests for the chat-completions chunk assembler and parser (trio_llmstream._core._openai).

Transcripts are composed from the documented wire formats of OpenAI, vLLM, Ollama (``/v1``)
and llama.cpp's server. Every transcript must give the same outcome (chunks, text, calls, error)
however its bytes are cut into reads, and the parser's shortcut must agree with the plain
``SSEDecoder`` + ``ChatCompletionAssembler.feed_events`` on any input.
"""

from __future__ import annotations

import copy
import gc
import itertools
import json
import pickle
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    ChatChunk,
    Choice,
    ChoiceDelta,
    CompletionUsage,
    FunctionCall,
    ProviderError,
    StreamProtocolError,
    StreamTruncatedError,
)
from trio_llmstream._core import _build, _openai
from trio_llmstream._core._build import NO_CALLS, NO_CHOICES
from trio_llmstream._core._openai import ChatCompletionAssembler, ChatCompletionParser
from trio_llmstream._core._sse import ServerSentEvent, SSEDecoder

# -- helpers ------------------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    chunks: list[ChatChunk]
    error: type[BaseException] | None
    message: str | None
    done: bool
    usage: CompletionUsage | None
    finish_reasons: dict[int, str]
    request_id: str | None
    # For each chunk, the number of the read that delivered it (len(reads) for end()). Not
    # part of equality: whole and chunked runs differ here by design.
    timeline: list[int] = attrs.field(factory=list, eq=False)

    @property
    def text(self) -> str:
        return "".join(c.delta.content or "" for k in self.chunks for c in k.choices)

    def texts(self, index: int) -> str:
        return "".join(
            c.delta.content or "" for k in self.chunks for c in k.choices if c.index == index
        )

    @property
    def reasoning(self) -> str:
        return "".join(c.delta.reasoning or "" for k in self.chunks for c in k.choices)

    def calls(self, index: int = 0) -> list[FunctionCall]:
        return [
            call
            for k in self.chunks
            for c in k.choices
            if c.index == index
            for call in c.delta.tool_calls
        ]


def outcome_of(
    holder: ChatCompletionParser | ChatCompletionAssembler,
    chunks: list[ChatChunk],
    timeline: list[int] | None = None,
) -> Outcome:
    err = holder.error
    return Outcome(
        timeline=timeline or [],
        chunks=chunks,
        error=type(err) if err is not None else None,
        message=str(err) if err is not None else None,
        done=holder.done,
        usage=holder.usage,
        finish_reasons=dict(holder.finish_reasons),
        request_id=holder.request_id,
    )


def parse(body: bytes, reads: Sequence[int] | None = None, **kwargs: Any) -> Outcome:
    """Run ``body`` through a ChatCompletionParser, cut at the given read sizes (cycled)."""
    parser = ChatCompletionParser(**kwargs)
    chunks: list[ChatChunk] = []
    timeline: list[int] = []
    pos = 0
    i = 0
    while pos < len(body):
        size = len(body) if not reads else max(1, reads[i % len(reads)])
        got = parser.feed(body[pos : pos + size])
        pos += size
        chunks.extend(got)
        timeline.extend([i] * len(got))
        i += 1
        if parser.finished:
            assert parser.feed(b"data: [DONE]\n\n") == []  # input after the end is ignored
            break
    got = parser.end()
    chunks.extend(got)
    timeline.extend([-1] * len(got))
    assert parser.finished
    assert parser.end() == []
    return outcome_of(parser, chunks, timeline)


def reference(body: bytes, reads: Sequence[int] | None = None, **kwargs: Any) -> Outcome:
    """The plain composition: SSEDecoder events into ChatCompletionAssembler.feed_events."""
    decoder_kwargs = {k: kwargs.pop(k) for k in ("max_line_size", "max_event_size") if k in kwargs}
    decoder = SSEDecoder(**decoder_kwargs)
    asm = ChatCompletionAssembler(**kwargs)
    chunks: list[ChatChunk] = []
    timeline: list[int] = []
    pos = 0
    i = 0
    try:
        while pos < len(body) and not asm.finished:
            size = len(body) if not reads else max(1, reads[i % len(reads)])
            got = asm.feed_events(decoder.feed(body[pos : pos + size]))
            chunks.extend(got)
            timeline.extend([i] * len(got))
            i += 1
            pos += size
        if not asm.finished:
            got = asm.feed_events(decoder.end())
            chunks.extend(got)
            timeline.extend([-1] * len(got))
    except StreamProtocolError as exc:
        if not asm.finished:
            asm.error = exc
            asm.finished = True
    got = asm.end()
    chunks.extend(got)
    timeline.extend([-1] * len(got))
    return outcome_of(asm, chunks, timeline)


def events(*items: tuple[str, str] | str) -> list[ServerSentEvent]:
    return [
        ServerSentEvent(data=item) if isinstance(item, str) else ServerSentEvent(*item)
        for item in items
    ]


def assemble(*items: tuple[str, str] | str, end: bool = True, **kwargs: Any) -> Outcome:
    asm = ChatCompletionAssembler(**kwargs)
    chunks = asm.feed_events(events(*items))
    if end:
        chunks.extend(asm.end())
    return outcome_of(asm, chunks)


def body_of(*items: str | dict[str, Any]) -> bytes:
    """An SSE body: dicts become ``data:`` JSON events; strings are raw SSE text."""
    parts = []
    for item in items:
        if isinstance(item, dict):
            parts.append("data: " + json.dumps(item, separators=(",", ":")) + "\n\n")
        else:
            parts.append(item)
    return "".join(parts).encode()


RID = "chatcmpl-9xYzA1b2C3d4E5f6G7h8I9j0KlMn"


def oai(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    *,
    index: int = 0,
    usage: dict[str, Any] | None = None,
    choices: list[dict[str, Any]] | None = None,
    rid: str = RID,
) -> dict[str, Any]:
    """An OpenAI chat.completion.chunk, with the fields OpenAI sends."""
    if choices is None:
        choices = [
            {"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
        ]
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_7f6be3efb0",
        "choices": choices,
        "usage": usage,
        "obfuscation": "Qx81",
    }


def fragment(
    index: int, *, id: str | None = None, name: str | None = None, args: str | None = None
) -> dict[str, Any]:
    frag: dict[str, Any] = {"index": index}
    if id is not None:
        frag["id"] = id
        frag["type"] = "function"
    fn: dict[str, Any] = {}
    if name is not None:
        fn["name"] = name
    if args is not None:
        fn["arguments"] = args
    if fn:
        frag["function"] = fn
    return frag


OPENAI_USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

# -- transcripts --------------------------------------------------------------------------------
# Each is (name, body, check) where check(outcome) asserts what the transcript must give.

OPENAI_TEXT = body_of(
    oai({"role": "assistant", "content": "", "refusal": None}),
    oai({"content": "Hello"}),
    oai({"content": ","}),
    oai({"content": " wörld 東京 😀\u2028!"}),
    oai({}, "stop"),
    oai(choices=[], usage=OPENAI_USAGE),
    "data: [DONE]\n\n",
)

ONE_TOOL_PIECES = ['{"', "location", '": "', "Paris", ",", ' France", "', 'unit": "celsius"}']
ONE_TOOL_ARGS = "".join(ONE_TOOL_PIECES)
OPENAI_ONE_TOOL = body_of(
    oai(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [fragment(0, id="call_Wx1", name="get_weather", args="")],
            "refusal": None,
        }
    ),
    *[
        oai({"tool_calls": [fragment(0, args=piece)]})
        for piece in ONE_TOOL_PIECES
    ],
    oai({}, "tool_calls"),
    "data: [DONE]\n\n",
)

OPENAI_PARALLEL = body_of(
    oai({"role": "assistant", "content": None}),
    oai({"tool_calls": [fragment(0, id="call_A", name="get_weather", args="")]}),
    oai({"tool_calls": [fragment(0, args='{"city": ')]}),
    oai({"tool_calls": [fragment(0, args='"Oslo"}')]}),
    oai({"tool_calls": [fragment(1, id="call_B", name="get_time", args="")]}),
    oai({"tool_calls": [fragment(1, args='{"tz": "Europe/Oslo"}')]}),
    oai({}, "tool_calls"),
    oai(choices=[], usage=OPENAI_USAGE),
    "data: [DONE]\n\n",
)

# Three whole calls in one delta (a server that batches), then the finish in its own chunk.
THREE_IN_ONE = body_of(
    oai(
        {
            "role": "assistant",
            "tool_calls": [
                fragment(0, id="call_1", name="a", args='{"x": 1}'),
                fragment(1, id="call_2", name="b", args='{"y": 2}'),
                fragment(2, id="call_3", name="c", args="{}"),
            ],
        }
    ),
    oai({}, "tool_calls"),
    "data: [DONE]\n\n",
)

# vLLM: reasoning_content, then a tool call whose last fragment shares the finish chunk.
VLLM_TOOL = body_of(
    {
        "id": "chatcmpl-2f6c",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "Qwen/Qwen3-8B",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
             "finish_reason": None}
        ],
    },
    *[
        {
            "id": "chatcmpl-2f6c",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": "Qwen/Qwen3-8B",
            "choices": [
                {"index": 0, "delta": {"reasoning_content": piece}, "logprobs": None,
                 "finish_reason": None}
            ],
        }
        for piece in ["The user", " wants", " the weather."]
    ],
    {
        "id": "chatcmpl-2f6c",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "Qwen/Qwen3-8B",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {"id": "chatcmpl-tool-8e1", "type": "function", "index": 0,
                         "function": {"name": "get_weather"}}
                    ]
                },
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    },
    {
        "id": "chatcmpl-2f6c",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "Qwen/Qwen3-8B",
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
                "arguments": '{"city": "'}}]}, "logprobs": None, "finish_reason": None}
        ],
    },
    {
        "id": "chatcmpl-2f6c",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "Qwen/Qwen3-8B",
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
                "arguments": 'Lyon"}'}}]}, "logprobs": None, "finish_reason": "tool_calls",
             "stop_reason": None}
        ],
        "usage": {"prompt_tokens": 210, "total_tokens": 245, "completion_tokens": 35},
    },
    "data: [DONE]\n\n",
)

# Ollama /v1: role on every delta, "reasoning", a whole tool call in one chunk, usage chunk.
OLLAMA = body_of(
    *[
        {
            "id": "chatcmpl-417",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": "qwen3:8b",
            "system_fingerprint": "fp_ollama",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "", "reasoning": piece},
                 "finish_reason": None}
            ],
        }
        for piece in ["Okay", ", a joke."]
    ],
    *[
        {
            "id": "chatcmpl-417",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": "qwen3:8b",
            "system_fingerprint": "fp_ollama",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": piece},
                 "finish_reason": None}
            ],
        }
        for piece in ["Why", " did", " the chicken..."]
    ],
    {
        "id": "chatcmpl-417",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "qwen3:8b",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "call_k2v", "index": 0, "type": "function",
                         "function": {"name": "laugh", "arguments": '{"volume":11}'}}
                    ],
                },
                "finish_reason": None,
            }
        ],
    },
    {
        "id": "chatcmpl-417",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "qwen3:8b",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""},
             "finish_reason": "tool_calls"}
        ],
    },
    {
        "id": "chatcmpl-417",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "qwen3:8b",
        "system_fingerprint": "fp_ollama",
        "choices": [],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
    },
    "data: [DONE]\n\n",
)

# llama.cpp server: role chunk with content null, text, then usage and timings in the finish
# chunk itself; no usage-only chunk.
LLAMACPP = (
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant",'
    b'"content":null}}],"created":1767225600,"id":"chatcmpl-Lc9","model":"gpt-3.5-turbo",'
    b'"system_fingerprint":"b6000-1a2b3c","object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"Hi"}}],'
    b'"created":1767225600,"id":"chatcmpl-Lc9","model":"gpt-3.5-turbo",'
    b'"system_fingerprint":"b6000-1a2b3c","object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" there"}}],'
    b'"created":1767225600,"id":"chatcmpl-Lc9","model":"gpt-3.5-turbo",'
    b'"system_fingerprint":"b6000-1a2b3c","object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1767225600,'
    b'"id":"chatcmpl-Lc9","model":"gpt-3.5-turbo","system_fingerprint":"b6000-1a2b3c",'
    b'"object":"chat.completion.chunk","usage":{"completion_tokens":2,"prompt_tokens":11,'
    b'"total_tokens":13},"timings":{"prompt_n":11,"prompt_ms":21.5,"prompt_per_token_ms":1.95,'
    b'"prompt_per_second":511.6,"predicted_n":2,"predicted_ms":30.1,'
    b'"predicted_per_token_ms":15.05,"predicted_per_second":66.4}}\n\n'
    b"data: [DONE]\n\n"
)

N2 = body_of(
    oai(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
                 {"index": 1, "delta": {"role": "assistant", "content": ""},
                  "finish_reason": None}]),
    oai({"content": "Red"}, index=0),
    oai({"content": "Blue"}, index=1),
    oai({"tool_calls": [fragment(0, id="call_x", name="paint", args='{"c":')]}, index=1),
    oai({"content": " apple"}, index=0),
    oai({"tool_calls": [fragment(0, args='"blue"}')]}, index=1),
    oai({}, "stop", index=0),
    oai({}, "tool_calls", index=1),
    oai(choices=[], usage=OPENAI_USAGE),
    "data: [DONE]\n\n",
)

KEEPALIVE = (
    b": OPENROUTER PROCESSING\n\n"
    + b": keep-alive\n\n"
    + OPENAI_TEXT.replace(b"\n\n", b"\n\n: ping\n\n", 3)
)

TRANSCRIPTS: dict[str, bytes] = {
    "openai_text": OPENAI_TEXT,
    "openai_one_tool": OPENAI_ONE_TOOL,
    "openai_parallel": OPENAI_PARALLEL,
    "three_in_one": THREE_IN_ONE,
    "vllm_tool": VLLM_TOOL,
    "ollama": OLLAMA,
    "llamacpp": LLAMACPP,
    "n2": N2,
    "keepalive": KEEPALIVE,
    "error_after_text": body_of(
        oai({"role": "assistant", "content": ""}),
        oai({"content": "partial"}),
        {"error": {"message": "The server had an error", "type": "server_error",
                   "param": None, "code": None}},
        "data: [DONE]\n\n",
    ),
    "error_event_then_done": body_of(
        oai({"content": "x"}),
        'event: error\ndata: {"message": "Overloaded", "type": "overloaded_error"}\n\n',
        "data: [DONE]\n\n",
    ),
    "no_done_but_finished": body_of(oai({"content": "ok"}), oai({}, "stop")),
    "truncated_mid_json": OPENAI_TEXT[: OPENAI_TEXT.index(b"Hello") + 3],
    "truncated_tool": OPENAI_ONE_TOOL[:700],
    "malformed": body_of(oai({"content": "a"})) + b'data: {"id": "x", "choices": [\n\n',
    "crlf": OPENAI_PARALLEL.replace(b"\n", b"\r\n"),
    "bom": b"\xef\xbb\xbf" + OPENAI_TEXT,
}


# -- transcript expectations --------------------------------------------------------------------


def test_openai_text() -> None:
    out = parse(OPENAI_TEXT)
    assert out.error is None
    assert out.done
    assert out.text == "Hello, wörld 東京 😀\u2028!"
    usage = CompletionUsage(
        completion_tokens=10, prompt_tokens=19, total_tokens=29, cached_tokens=4,
        reasoning_tokens=0,
    )
    assert out.chunks == [
        ChatChunk(RID, [Choice(ChoiceDelta(role="assistant"))]),
        ChatChunk(RID, [Choice(ChoiceDelta(content="Hello"))]),
        ChatChunk(RID, [Choice(ChoiceDelta(content=","))]),
        ChatChunk(RID, [Choice(ChoiceDelta(content=" wörld 東京 😀\u2028!"))]),
        ChatChunk(RID, [Choice(ChoiceDelta(), finish_reason="stop")]),
        ChatChunk(RID, [], usage=usage),
    ]
    assert out.usage == usage
    assert out.finish_reasons == {0: "stop"}
    assert out.request_id == RID


def test_role_only_first_chunk_is_not_visible() -> None:
    out = parse(OPENAI_TEXT)
    first = out.chunks[0]
    assert first.delta == ChoiceDelta(role="assistant")
    assert not first.is_visible
    assert [c.is_visible for c in out.chunks] == [False, True, True, True, False, False]


def test_one_tool_call_in_many_fragments() -> None:
    out = parse(OPENAI_ONE_TOOL)
    assert out.error is None
    assert out.done
    # The role chunk, then one chunk: the call and the finish reason together. Argument
    # fragments alone produce nothing.
    assert out.chunks == [
        ChatChunk(RID, [Choice(ChoiceDelta(role="assistant"))]),
        ChatChunk(
            RID,
            [
                Choice(
                    ChoiceDelta(tool_calls=[FunctionCall("call_Wx1", "get_weather",
                                                         ONE_TOOL_ARGS)]),
                    finish_reason="tool_calls",
                )
            ],
        ),
    ]


def test_parallel_tool_calls_complete_when_the_next_starts() -> None:
    out = parse(OPENAI_PARALLEL)
    assert out.error is None
    assert out.calls() == [
        FunctionCall("call_A", "get_weather", '{"city": "Oslo"}'),
        FunctionCall("call_B", "get_time", '{"tz": "Europe/Oslo"}'),
    ]
    # Call A arrives in the chunk where B starts, before the finish chunk.
    with_calls = [k for k in out.chunks if k.delta and k.delta.tool_calls]
    assert len(with_calls) == 2
    assert with_calls[0].choices[0].finish_reason is None
    assert with_calls[1].choices[0].finish_reason == "tool_calls"


def test_three_calls_in_one_delta_all_survive() -> None:
    out = parse(THREE_IN_ONE)
    assert [c.call_id for c in out.calls()] == ["call_1", "call_2", "call_3"]
    assert [c.arguments for c in out.calls()] == ['{"x": 1}', '{"y": 2}', "{}"]
    # Same, with the finish reason in that very chunk: one chunk carries all three.
    out = assemble(
        json.dumps(
            oai(
                {"tool_calls": [fragment(0, id="c1", name="a", args="{}"),
                                fragment(1, id="c2", name="b", args="{}"),
                                fragment(2, id="c3", name="c", args="{}")]},
                "tool_calls",
            )
        ),
        "[DONE]",
    )
    assert len(out.chunks) == 1
    assert [c.call_id for c in out.chunks[0].delta.tool_calls] == ["c1", "c2", "c3"]
    assert out.chunks[0].choices[0].finish_reason == "tool_calls"


def test_vllm_reasoning_and_call_finishing_in_the_finish_chunk() -> None:
    out = parse(VLLM_TOOL)
    assert out.error is None
    assert out.done
    assert out.reasoning == "The user wants the weather."
    assert out.text == ""
    last = out.chunks[-1]
    assert last.choices[0].finish_reason == "tool_calls"
    assert last.delta.tool_calls == [
        FunctionCall("chatcmpl-tool-8e1", "get_weather", '{"city": "Lyon"}')
    ]
    assert last.usage == CompletionUsage(35, 210, 245)
    assert out.request_id == "chatcmpl-2f6c"


def test_ollama() -> None:
    out = parse(OLLAMA)
    assert out.error is None
    assert out.done
    assert out.reasoning == "Okay, a joke."
    assert out.text == "Why did the chicken..."
    assert out.calls() == [FunctionCall("call_k2v", "laugh", '{"volume":11}')]
    assert out.usage == CompletionUsage(12, 30, 42)
    # The role is repeated on every delta by Ollama and passed on as sent.
    assert all(k.delta.role == "assistant" for k in out.chunks if k.choices)


def test_llamacpp_usage_in_the_finish_chunk() -> None:
    out = parse(LLAMACPP)
    assert out.error is None
    assert out.done
    assert out.text == "Hi there"
    assert out.chunks[-1] == ChatChunk(
        "chatcmpl-Lc9",
        [Choice(ChoiceDelta(), finish_reason="stop")],
        usage=CompletionUsage(2, 11, 13),
    )


def test_usage_only_chunk() -> None:
    out = parse(OPENAI_PARALLEL)
    assert out.chunks[-1].choices == []
    assert out.chunks[-1].usage == out.usage
    assert out.chunks[-1].delta is None
    assert out.usage is not None
    assert out.usage.cached_tokens == 4


def test_reasoning_fields() -> None:
    out = assemble(
        json.dumps(oai({"role": "assistant"})),
        json.dumps(oai({"reasoning_content": "a"})),
        json.dumps(oai({"reasoning": "b"})),
        # Newer vLLM sends both names with the same text: taken once.
        json.dumps(oai({"reasoning": "c", "reasoning_content": "c"})),
        json.dumps(oai({"content": "answer", "reasoning": ""})),
        "[DONE]",
    )
    assert out.reasoning == "abc"
    assert out.text == "answer"
    assert [k.delta.reasoning for k in out.chunks] == [None, "a", "b", "c", None]


def test_n2_choices_kept_apart() -> None:
    out = parse(N2)
    assert out.error is None
    assert out.texts(0) == "Red apple"
    assert out.texts(1) == "Blue"
    assert out.calls(1) == [FunctionCall("call_x", "paint", '{"c":"blue"}')]
    assert out.calls(0) == []
    assert out.finish_reasons == {0: "stop", 1: "tool_calls"}
    first = out.chunks[0]
    assert [c.index for c in first.choices] == [0, 1]


def test_n2_without_done_needs_every_choice_finished() -> None:
    body = N2[: N2.index(b'data: {"id"', N2.index(b'"finish_reason":"stop"'))]
    out = parse(body)  # choice 0 finished, choice 1 not: truncated
    assert out.error is StreamTruncatedError
    assert out.calls(1) == []
    full = N2[: N2.index(b"data: [DONE]")]
    out = parse(full)
    assert out.error is None
    assert not out.done
    assert out.calls(1) == [FunctionCall("call_x", "paint", '{"c":"blue"}')]


def test_error_after_partial_output_in_the_same_read() -> None:
    out = parse(TRANSCRIPTS["error_after_text"])
    assert out.text == "partial"
    assert out.error is ProviderError
    assert out.message == "The server had an error"
    parser = ChatCompletionParser()
    chunks = parser.feed(TRANSCRIPTS["error_after_text"])  # everything in one read
    assert [k.text for k in chunks] == ["", "partial"]
    assert isinstance(parser.error, ProviderError)
    assert parser.error.type == "server_error"
    assert parser.error.retryable
    assert parser.error.request_id == RID
    assert parser.finished
    assert not parser.done


def test_error_event_then_done_is_one_ending() -> None:
    parser = ChatCompletionParser()
    body = TRANSCRIPTS["error_event_then_done"]
    cut = body.index(b"data: [DONE]")
    chunks = parser.feed(body[:cut])
    assert [k.text for k in chunks] == ["x"]
    error = parser.error
    assert isinstance(error, ProviderError)
    assert error.message == "Overloaded"
    assert error.type == "overloaded_error"
    assert error.retryable
    # The [DONE] that follows belongs to the same ending.
    assert parser.feed(body[cut:]) == []
    assert parser.end() == []
    assert parser.error is error
    assert not parser.done


def test_error_data_then_done() -> None:
    out = parse(
        body_of(
            oai({"content": "x"}),
            {"error": {"message": "Rate limit reached", "type": "requests",
                       "code": "rate_limit_exceeded", "param": None}},
            "data: [DONE]\n\n",
        )
    )
    assert out.error is ProviderError
    assert out.message == "Rate limit reached"
    assert not out.done


@pytest.mark.parametrize(
    ("event", "message", "type_", "code", "retryable"),
    [
        (("error", "upstream overloaded"), "upstream overloaded", None, None, False),
        (("error", '{"error": {"message": "boom", "type": "server_error", "code": 500}}'),
         "boom", "server_error", 500, True),
        (("error", '{"message": "bad", "type": "invalid_request_error"}'), "bad",
         "invalid_request_error", None, False),
        (("error", '"just a string"'), "just a string", None, None, False),
        (("message", '{"error": "Internal error"}'), "Internal error", None, None, False),
        (("message", '{"error": {"message": "m", "code": 429, "metadata": {"raw": 1}}}'),
         "m", None, 429, True),
        # Older vLLM: no wrapper, "object": "error".
        (("message", '{"object": "error", "message": "too long", "type": "BadRequestError", '
                     '"param": null, "code": 400}'), "too long", "BadRequestError", 400, False),
        # Odd field types fall back to a generic reading.
        (("message", '{"error": {"message": ["a"], "type": 7, "code": 1.5}}'), '["a"]', "7",
         "1.5", False),
        (("error", ""), "the server sent an error event", None, None, False),
    ],
)
def test_error_payload_shapes(
    event: tuple[str, str], message: str, type_: str | None, code: object, retryable: bool
) -> None:
    asm = ChatCompletionAssembler()
    asm.feed_events(events(json.dumps(oai({"content": "x"})), event, "[DONE]"))
    assert isinstance(asm.error, ProviderError)
    assert asm.error.message == message
    assert asm.error.type == type_
    assert asm.error.code == code
    assert asm.error.retryable is retryable
    assert asm.finished
    assert not asm.done


def test_openrouter_error_next_to_choices_wins() -> None:
    out = assemble(
        json.dumps(oai({"content": "partial"})),
        json.dumps({**oai({"content": ""}, "error"),
                    "error": {"code": "server_error", "message": "Provider disconnected"}}),
        "[DONE]",
    )
    assert out.text == "partial"
    assert out.error is ProviderError
    assert out.message == "Provider disconnected"
    assert out.finish_reasons == {}


def test_truncated_mid_json_at_the_end() -> None:
    cut = OPENAI_TEXT.index(b"Hello") + 3
    out = parse(OPENAI_TEXT[:cut])
    assert out.error is StreamTruncatedError
    assert out.chunks == [ChatChunk(RID, [Choice(ChoiceDelta(role="assistant"))])]


def test_malformed_json_event() -> None:
    out = parse(TRANSCRIPTS["malformed"])
    assert out.text == "a"
    assert out.error is StreamProtocolError
    assert out.message is not None
    assert "malformed JSON" in out.message
    assert '{"id": "x"' in out.message


@pytest.mark.parametrize(
    "payload",
    ['[1, 2]', '"text"', "42", '{"choices": 5}', '{"choices": [{"index": "0"}]}',
     '{"choices": [{"delta": {"tool_calls": [{"function": {"arguments": {"a": 1}}}]}}]}'],
)
def test_json_of_the_wrong_shape(payload: str) -> None:
    out = assemble(json.dumps(oai({"content": "a"})), payload, "[DONE]")
    assert out.text == "a"
    assert out.error is StreamProtocolError
    assert out.message is not None
    assert "unexpected JSON" in out.message


def test_missing_done_but_finish_reason_is_complete() -> None:
    out = parse(TRANSCRIPTS["no_done_but_finished"])
    assert out.error is None
    assert not out.done
    assert out.text == "ok"
    assert out.finish_reasons == {0: "stop"}


def test_missing_done_and_finish_is_truncated_without_partial_calls() -> None:
    body = OPENAI_PARALLEL[: OPENAI_PARALLEL.index(b'{\\"tz')]
    body = body[: body.rindex(b"data: ")]  # call B started, never finished
    out = parse(body)
    assert out.error is StreamTruncatedError
    assert out.calls() == [FunctionCall("call_A", "get_weather", '{"city": "Oslo"}')]
    cut = OPENAI_ONE_TOOL.index(b'"finish_reason":"tool_calls"')
    out = parse(OPENAI_ONE_TOOL[: OPENAI_ONE_TOOL.rindex(b"data: ", 0, cut)])
    assert out.error is StreamTruncatedError
    assert out.calls() == []


def test_truncated_with_no_output_at_all() -> None:
    for body in (b"", b": keep-alive\n\n", b"data: {"):
        out = parse(body)
        assert out.error is StreamTruncatedError
        assert out.chunks == []


def test_keepalive_comments_change_nothing() -> None:
    assert parse(KEEPALIVE).chunks == parse(OPENAI_TEXT).chunks


def test_null_and_empty_deltas() -> None:
    out = assemble(
        # Azure: a prompt-filter chunk with no choices and an empty id, then delta null.
        json.dumps({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                    "prompt_filter_results": [{"prompt_index": 0}]}),
        json.dumps(oai({"role": "assistant", "content": ""})),
        json.dumps(oai(choices=[{"index": 0, "delta": None, "finish_reason": None,
                                 "content_filter_results": {}}])),
        json.dumps(oai({})),
        json.dumps(oai({"content": None, "tool_calls": None})),
        json.dumps(oai({"content": "hi"})),
        json.dumps(oai(choices=[{"index": 0, "delta": None, "finish_reason": "content_filter"}])),
        json.dumps({"id": RID, "choices": None, "usage": None}),
        "[DONE]",
    )
    assert out.error is None
    assert out.chunks == [
        ChatChunk(RID, [Choice(ChoiceDelta(role="assistant"))]),
        ChatChunk(RID, [Choice(ChoiceDelta(content="hi"))]),
        ChatChunk(RID, [Choice(ChoiceDelta(), finish_reason="content_filter")]),
    ]
    assert out.request_id == RID


def test_request_id_is_the_first_non_empty_id() -> None:
    out = assemble(
        json.dumps(oai({"role": "assistant"}, rid="")),
        json.dumps(oai({"content": "a"}, rid="req-1")),
        json.dumps(oai({"content": "b"}, rid="req-2")),
        json.dumps(oai({"content": "c"}, rid="")),
        "[DONE]",
    )
    assert out.request_id == "req-1"
    assert [k.request_id for k in out.chunks] == ["", "req-1", "req-2", "req-1"]


def test_oversize_tool_arguments() -> None:
    body = body_of(
        oai({"content": "before"}),
        oai({"tool_calls": [fragment(0, id="c", name="f", args="x" * 60)]}),
        oai({"tool_calls": [fragment(0, args="é" * 30)]}),  # 60 bytes more: 120 > 100
        oai({}, "tool_calls"),
        "data: [DONE]\n\n",
    )
    out = parse(body, max_tool_argument_bytes=100)
    assert out.text == "before"
    assert out.calls() == []
    assert out.error is StreamProtocolError
    assert out.message is not None
    assert "exceed 100 bytes" in out.message
    assert parse(body, max_tool_argument_bytes=120).error is None


def test_too_many_tool_calls() -> None:
    frags = [fragment(i, id=f"c{i}", name="f", args="{}") for i in range(5)]
    out = assemble(json.dumps(oai({"tool_calls": frags})), "[DONE]", max_tool_calls=4)
    assert out.error is StreamProtocolError
    out = assemble(json.dumps(oai({"tool_calls": frags})), "[DONE]", max_tool_calls=5)
    assert out.error is None
    assert len(out.calls()) == 5


def test_too_many_choices() -> None:
    out = assemble(*[json.dumps(oai({"content": "x"}, index=i)) for i in range(4)], "[DONE]",
                   max_choices=3)
    assert out.error is StreamProtocolError
    assert out.text == "xxx"


def test_tool_call_leniencies() -> None:
    out = assemble(
        json.dumps(oai({"role": "assistant"}, rid="req-9")),
        # No id: a deterministic one is made up.
        json.dumps(oai({"tool_calls": [fragment(0, name="a", args="{")]})),
        json.dumps(oai({"tool_calls": [{"function": {"arguments": "}"}}]})),  # no index
        json.dumps(oai({"tool_calls": [fragment(1, id="b1", name="b", args="")]})),
        # Same index, different id: another call (servers that number every call 0).
        json.dumps(oai({"tool_calls": [fragment(1, id="b2", name="b", args="[")]})),
        # The id repeated on a later fragment is fine.
        json.dumps(oai({"tool_calls": [fragment(1, id="b2", args="]")]})),
        # No index, new id: the next call.
        json.dumps(
            oai({"tool_calls": [{"id": "c1", "function": {"name": "c", "arguments": "1"}}]})
        ),
        json.dumps(oai({}, "tool_calls")),
        "[DONE]",
    )
    assert out.error is None
    assert out.calls() == [
        FunctionCall("call_req-9_0_0", "a", "{}"),
        FunctionCall("b1", "b", ""),
        FunctionCall("b2", "b", "[]"),
        FunctionCall("c1", "c", "1"),
    ]


def test_fragment_for_a_completed_call_is_a_protocol_error() -> None:
    out = assemble(
        json.dumps(oai({"tool_calls": [fragment(0, id="a", name="a", args="{")]})),
        json.dumps(oai({"tool_calls": [fragment(1, id="b", name="b", args="{}")]})),
        json.dumps(oai({"tool_calls": [fragment(0, args="}")]})),
        "[DONE]",
    )
    assert out.error is StreamProtocolError
    assert out.calls() == [FunctionCall("a", "a", "{")]  # delivered when b started


def test_nameless_call_is_a_protocol_error() -> None:
    out = assemble(json.dumps(oai({"tool_calls": [fragment(0, id="a", args="{}")]})), "[DONE]")
    assert out.error is StreamProtocolError
    assert out.calls() == []


def test_pending_calls_flushed_at_done_and_at_complete_end() -> None:
    # No finish reason, then [DONE]: the open call is delivered in a last chunk.
    out = assemble(json.dumps(oai({"tool_calls": [fragment(0, id="a", name="f", args="{}")]})),
                   "[DONE]", end=False)
    assert out.done
    assert out.calls() == [FunctionCall("a", "f", "{}")]
    # A fragment after the finish reason, and no [DONE]: flushed by end().
    out = assemble(
        json.dumps(oai({}, "tool_calls")),
        json.dumps(oai({"tool_calls": [fragment(0, id="a", name="f", args="{}")]})),
    )
    assert out.error is None
    assert out.calls() == [FunctionCall("a", "f", "{}")]


def test_unknown_event_types_are_ignored() -> None:
    out = assemble(
        ("ping", "{}"),
        json.dumps(oai({"content": "a"})),
        ("response.created", "not json"),
        "[DONE]",
    )
    assert out.error is None
    assert out.text == "a"


def test_blank_and_whitespace_data_are_ignored() -> None:
    out = assemble("", "  ", json.dumps(oai({"content": "a"})), " [DONE] ")
    assert out.error is None
    assert out.done
    assert out.text == "a"


def test_unknown_role_becomes_assistant() -> None:
    out = assemble(json.dumps(oai({"role": "model"})), "[DONE]")
    assert out.chunks[0].delta == ChoiceDelta(role="assistant")


def test_usage_without_total() -> None:
    out = assemble(json.dumps(oai(choices=[], usage={"prompt_tokens": 3,
                                                     "completion_tokens": 4})), "[DONE]")
    assert out.usage == CompletionUsage(4, 3, 7)


def test_sse_bound_violation_becomes_error_after_earlier_chunks() -> None:
    body = body_of(oai({"content": "a"}), oai({"content": "b" * 3000}), "data: [DONE]\n\n")
    for reads in (None, [1], [4096], [7, 300]):
        out = parse(body, reads, max_line_size=2048)
        assert out.text == "a"
        assert out.error is StreamProtocolError
        assert out.message is not None
        assert "max_line_size" in out.message


def test_feed_accepts_any_bytes_like() -> None:
    parser = ChatCompletionParser()
    chunks = parser.feed(bytearray(OPENAI_TEXT[:500]))  # type: ignore[arg-type]
    chunks += parser.feed(memoryview(OPENAI_TEXT)[500:])  # type: ignore[arg-type]
    chunks += parser.feed(b"")
    chunks += parser.end()
    assert chunks == parse(OPENAI_TEXT).chunks
    assert parser.error is None


def test_input_after_the_end_is_ignored() -> None:
    asm = ChatCompletionAssembler()
    assert asm.feed_events(events("[DONE]")) == []
    assert asm.done
    assert asm.finished
    assert asm.feed_events(events(json.dumps(oai({"content": "late"})))) == []
    assert asm.end() == []
    assert asm.error is None


def test_invalid_utf8_is_replaced_as_the_decoder_does() -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"a\xffb"}}]}\n\ndata: [DONE]\n\n'
    out = parse(body)
    assert out.text == "a\ufffdb"
    assert out == reference(body)


# -- the fast construction --------------------------------------------------------------------


def test_fast_built_objects_are_genuine() -> None:
    out = parse(OPENAI_TEXT)
    chunk = out.chunks[1]
    assert type(chunk) is ChatChunk
    assert type(chunk.choices[0]) is Choice
    assert type(chunk.delta) is ChoiceDelta
    assert chunk == ChatChunk(RID, [Choice(ChoiceDelta(content="Hello"), 0, None)], None)
    assert repr(chunk) == repr(ChatChunk(RID, [Choice(ChoiceDelta(content="Hello"))]))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        chunk.request_id = "other"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        chunk.choices[0].delta.content = "other"  # type: ignore[misc]
    assert attrs.evolve(chunk, usage=None) == chunk
    assert pickle.loads(pickle.dumps(chunk)) == chunk
    assert copy.deepcopy(chunk) == chunk
    # Chunks without calls share one empty tool_calls list (they used to get a fresh list each,
    # one GC-tracked object per chunk: issue 16). It refuses to grow, so no chunk's edit can
    # show in another: what a list per chunk used to guarantee.
    assert chunk.delta is not None
    assert out.chunks[2].delta is not None
    assert chunk.delta.tool_calls is out.chunks[2].delta.tool_calls is NO_CALLS
    with pytest.raises(TypeError, match="read-only"):
        chunk.delta.tool_calls.append(FunctionCall("c", "f", "{}"))
    assert out.chunks[2].delta.tool_calls == []


def _tracked_objects(chunk: ChatChunk) -> int:
    """The distinct GC-tracked objects a chunk is made of, not counting shared ones."""
    parts: list[object] = [chunk, chunk.choices, chunk.usage]
    for choice in chunk.choices:
        delta = choice.delta
        parts += [choice, delta, delta.tool_calls, delta.provider_items]
    shared = (NO_CALLS, NO_CHOICES)
    distinct = {id(o): o for o in parts if not any(o is s for s in shared)}
    return sum(gc.is_tracked(o) for o in distinct.values())


def test_text_chunks_hold_four_tracked_objects() -> None:
    # The garbage collector's work under many concurrent streams grows with the tracked
    # objects per chunk (benchmarks/PROFILE.md, cost 1): a text chunk is the chunk, its
    # choices list, the choice and the delta; it was five with a fresh tool_calls list.
    out = parse(OPENAI_TEXT)
    text_chunks = [k for k in out.chunks if k.text and k.delta is not None and not k.delta.role]
    assert len(text_chunks) >= 3
    for chunk in text_chunks:
        assert _tracked_objects(chunk) == 4
    # The general path (the role chunk, the finish chunk) builds no fresh empty list either.
    assert_empty_lists_shared(out.chunks)


def assert_empty_lists_shared(chunks: list[ChatChunk]) -> None:
    for chunk in chunks:
        if not chunk.choices:
            assert chunk.choices is NO_CHOICES
        for choice in chunk.choices:
            if not choice.delta.tool_calls:
                assert choice.delta.tool_calls is NO_CALLS


def test_fast_construction_guard() -> None:
    _build._check_fast_construction()  # passes for the current model

    @attrs.frozen
    class Changed:
        role: str = attrs.field(validator=attrs.validators.instance_of(str))

    saved = dict(_build.FAST_FIELDS)
    try:
        _build.FAST_FIELDS[Changed] = ("role",)  # type: ignore[index]
        with pytest.raises(RuntimeError, match="validator"):
            _build._check_fast_construction()
        del _build.FAST_FIELDS[Changed]  # type: ignore[arg-type]
        _build.FAST_FIELDS[Choice] = ("delta", "index", "finish_reason")
        with pytest.raises(RuntimeError, match="fields changed"):
            _build._check_fast_construction()
    finally:
        _build.FAST_FIELDS.clear()
        _build.FAST_FIELDS.update(saved)


def test_core_imports_no_io_library() -> None:
    for module in (_openai, _build):
        with open(module.__file__, encoding="utf-8") as f:
            source = f.read()
        for name in ("trio", "httpx", "anyio", "asyncio", "socket"):
            assert f"import {name}" not in source
            assert f"from {name}" not in source


# -- chunking invariance and the shortcut against the reference ------------------------------


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_transcripts_under_whole_and_byte_by_byte_reads(name: str) -> None:
    body = TRANSCRIPTS[name]
    whole = parse(body)
    assert parse(body, [1]) == whole
    assert parse(body, [64]) == whole
    assert parse(body, [4096]) == whole
    assert reference(body) == whole
    assert reference(body, [1]) == whole
    for reads in ([1], [64], [7, 300]):
        assert parse(body, reads).timeline == reference(body, reads).timeline


def test_bom_only_at_the_start() -> None:
    chunk = json.dumps(oai({"content": "a"})).encode()
    late_bom = b": keep-alive\n\n\xef\xbb\xbfdata: " + chunk + b"\n\ndata: [DONE]\n\n"
    for reads in (None, [1], [5]):
        out = parse(late_bom, reads)
        assert out == reference(late_bom)
        assert out.text == ""  # the field name is "\ufeffdata": not a data field
    early_bom = b"\xef\xbb\xbfdata: " + chunk + b"\n\ndata: [DONE]\n\n"
    assert parse(early_bom, [1]).text == "a"


def test_crlf_and_bom_transcripts_match_the_lf_ones() -> None:
    assert parse(TRANSCRIPTS["crlf"]) == parse(OPENAI_PARALLEL)
    assert parse(TRANSCRIPTS["bom"]) == parse(OPENAI_TEXT)


reads_strategy = st.lists(st.integers(1, 400), min_size=1, max_size=20)


@given(name=st.sampled_from(sorted(TRANSCRIPTS)), reads=reads_strategy)
def test_transcripts_under_any_chunking(name: str, reads: list[int]) -> None:
    body = TRANSCRIPTS[name]
    assert parse(body, reads) == parse(body)


# Arbitrary event streams: chunk JSON of every kind, plus everything SSE allows around it.

_text = st.text(max_size=6)
_json_chunk = st.fixed_dictionaries(
    {"id": st.sampled_from(["r1", "", "r2"])},
    optional={
        "choices": st.lists(
            st.fixed_dictionaries(
                {"index": st.integers(0, 2)},
                optional={
                    "delta": st.one_of(
                        st.none(),
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "role": st.sampled_from(["assistant", "tool"]),
                                "content": st.one_of(st.none(), _text),
                                "reasoning_content": _text,
                                "reasoning": _text,
                                "tool_calls": st.lists(
                                    st.fixed_dictionaries(
                                        {},
                                        optional={
                                            "index": st.integers(0, 3),
                                            "id": st.sampled_from(["a", "b", ""]),
                                            "function": st.fixed_dictionaries(
                                                {},
                                                optional={
                                                    "name": st.sampled_from(["f", "g", ""]),
                                                    "arguments": _text,
                                                },
                                            ),
                                        },
                                    ),
                                    max_size=3,
                                ),
                            },
                        ),
                    ),
                    "finish_reason": st.sampled_from([None, "stop", "tool_calls", ""]),
                },
            ),
            max_size=2,
        ),
        "usage": st.one_of(
            st.none(), st.fixed_dictionaries({"prompt_tokens": st.integers(0, 9)})
        ),
        "error": st.one_of(st.just("bad"), st.fixed_dictionaries({"message": _text})),
    },
)


def _data_lines(payload: str, split: bool) -> str:
    if split and "\n" in payload:
        return "".join(f"data: {line}\n" for line in payload.split("\n"))
    return f"data: {payload}\n"


@st.composite
def sse_blocks(draw: st.DrawFn) -> str:
    kind = draw(
        st.sampled_from(
            ["chunk"] * 8
            + ["pretty", "done", "comment", "blank", "error_event", "other_event", "junk",
               "fields", "nospace", "bad_json", "empty_data", "bom_mid"]
        )
    )
    if kind == "chunk":
        return _data_lines(json.dumps(draw(_json_chunk)), False) + "\n"
    if kind == "pretty":
        return _data_lines(json.dumps(draw(_json_chunk), indent=1), True) + "\n"
    if kind == "done":
        return "data: [DONE]\n\n"
    if kind == "comment":
        return ": keep-alive\n\n"
    if kind == "blank":
        return "\n"
    if kind == "error_event":
        return "event: error\n" + _data_lines(draw(st.sampled_from(
            ['{"error": {"message": "x", "type": "server_error"}}', "plain", '{"a": 1}'])),
            False) + "\n"
    if kind == "other_event":
        return "event: ping\ndata: {}\n\n"
    if kind == "junk":
        return draw(st.sampled_from(["data", "id: 7\n", "retry: 10\n", "foo: bar\n", ":x\n"]))
    if kind == "fields":
        return "id: 5\nretry: 100\n" + _data_lines(json.dumps(draw(_json_chunk)), False) + "\n"
    if kind == "nospace":
        return "data:" + json.dumps(draw(_json_chunk)) + "\n\n"
    if kind == "empty_data":
        return "data:\n\n"
    if kind == "bom_mid":
        # A BOM is only stripped at the very start of a stream; here it spoils the field name.
        return "\ufeffdata: " + json.dumps(draw(_json_chunk)) + "\n\n"
    return "data: {\"choices\": [\n\n"


_ENDINGS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}


@st.composite
def sse_bodies(draw: st.DrawFn) -> bytes:
    blocks = draw(st.lists(sse_blocks(), max_size=12))
    style = draw(st.sampled_from(["lf", "lf", "crlf", "cr", "mixed"]))
    if style == "mixed":
        # LF first, other line endings later: the parser's shortcut must hand over mid-stream.
        endings = [draw(st.sampled_from(["lf", "lf", "lf", "crlf", "cr"])) for _ in blocks]
    else:
        endings = [style] * len(blocks)
    text = "".join(
        block.replace("\n", _ENDINGS[ending]) for block, ending in zip(blocks, endings, strict=True)
    )
    body = text.encode()
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]  # cut anywhere
    if draw(st.integers(0, 9)) == 0:
        body = b"\xef\xbb\xbf" + body
    if draw(st.integers(0, 9)) == 0 and body:
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + b"\xff" + body[at:]  # invalid UTF-8 somewhere
    return body


@given(body=sse_bodies(), reads=reads_strategy, small=st.booleans())
def test_parser_matches_reference_on_any_input(body: bytes, reads: list[int], small: bool) -> None:
    # The shortcut gives the plain decoder's result, however the body is cut.
    limits = {"max_line_size": 200, "max_event_size": 150} if small else {}
    expected = reference(body, **limits)
    assert parse(body, **limits) == expected
    chunked = parse(body, reads, **limits)
    assert chunked == expected
    assert reference(body, reads, **limits) == expected
    # And each chunk is delivered by the same read as the reference delivers it: as soon as
    # its event is complete, never held back.
    assert chunked.timeline == reference(body, reads, **limits).timeline


@given(body=sse_bodies())
def test_parser_byte_by_byte(body: bytes) -> None:
    out = parse(body, [1])
    expected = reference(body, [1])
    assert out == expected
    assert out.timeline == expected.timeline


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_empty_lists_are_shared_in_every_transcript(name: str) -> None:
    assert_empty_lists_shared(parse(TRANSCRIPTS[name]).chunks)
    assert_empty_lists_shared(reference(TRANSCRIPTS[name]).chunks)


@given(body=sse_bodies(), reads=reads_strategy)
def test_empty_lists_are_shared_on_any_input(body: bytes, reads: list[int]) -> None:
    # Whatever the path that built a chunk (the parser's shortcut and fast path, the general
    # path of feed_events, the flush at the end), an empty list in it is the shared one.
    assert_empty_lists_shared(parse(body, reads).chunks)
    assert_empty_lists_shared(reference(body).chunks)


# -- tool-call fragment plans -----------------------------------------------------------------

def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8), _json_containers, max_leaves=8
)


@st.composite
def call_plans(draw: st.DrawFn) -> tuple[list[FunctionCall], list[list[dict[str, Any]]], bool]:
    """Calls, and the deltas (lists of fragments) that stream them, in order."""
    n = draw(st.integers(1, 6))
    calls = []
    fragments: list[dict[str, Any]] = []
    for i in range(n):
        spacing = draw(st.sampled_from([None, 0, 2]))
        args = json.dumps(draw(_json_values), indent=spacing, ensure_ascii=draw(st.booleans()))
        call = FunctionCall(f"call_{i}", draw(st.sampled_from(["f", "get_weather"])), args)
        calls.append(call)
        cuts = sorted(draw(st.sets(st.integers(0, len(args)), max_size=6)) | {0, len(args)})
        pieces = [args[a:b] for a, b in itertools.pairwise(cuts)] or [""]
        first_has_args = draw(st.booleans())
        head = fragment(i, id=call.call_id, name=call.name,
                        args=pieces[0] if first_has_args else None)
        fragments.append(head)
        for piece in pieces[0 if not first_has_args else 1:]:
            fragments.append(fragment(i, args=piece))
    # Group consecutive fragments into deltas.
    deltas: list[list[dict[str, Any]]] = []
    pos = 0
    while pos < len(fragments):
        size = draw(st.integers(1, 4))
        deltas.append(fragments[pos : pos + size])
        pos += size
    finish_with_last = draw(st.booleans())
    return calls, deltas, finish_with_last


@given(plan=call_plans(), reads=reads_strategy)
def test_fragment_plans_reassemble_exactly(
    plan: tuple[list[FunctionCall], list[list[dict[str, Any]]], bool], reads: list[int]
) -> None:
    calls, deltas, finish_with_last = plan
    items: list[dict[str, Any] | str] = [oai({"role": "assistant", "content": None})]
    for i, frags in enumerate(deltas):
        last = i == len(deltas) - 1
        items.append(oai({"tool_calls": frags}, "tool_calls" if last and finish_with_last
                         else None))
    if not finish_with_last:
        items.append(oai({}, "tool_calls"))
    items.append("data: [DONE]\n\n")
    body = body_of(*items)
    for out in (parse(body), parse(body, reads)):
        assert out.error is None
        assert out.calls() == calls  # exact text, index order, each exactly once
    # Cut before the finish reason: no call that was still open is delivered.
    cut = body.index(b'"finish_reason":"tool_calls"')
    out = parse(body[: body.rindex(b"data: ", 0, cut)])
    assert out.error is StreamTruncatedError
    assert out.calls() == calls[: len(out.calls())]
    assert len(out.calls()) < len(calls)
