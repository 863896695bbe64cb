"""End to end: OpenAIResponsesLLM + open_llm_stream against the loopback mock server.

Real HTTP on 127.0.0.1: text, reasoning, tool calls, usage and every ending; retries before
the commit point and ``StreamInterrupted`` after it; truncation; the tool loop sending results
back as ``function_call_output`` items; and the replay property: a recorded turn sent back
arrives with the provider-owned items byte-equal.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_llmstream import (
    APIConnectOptions,
    ChatChunk,
    ChatContext,
    ChatMessage,
    FunctionCall,
    FunctionTool,
    OpenAIResponsesLLM,
    ProviderError,
    ProviderItem,
    StreamInterrupted,
    StreamStatus,
    StreamTruncatedError,
    Timeouts,
    ToolOutcome,
    open_llm_stream,
    open_tool_loop,
)
from trio_llmstream.testing import (
    KeepAlive,
    MockLLMServer,
    RawBytes,
    ResponsesEvent,
    inject_fault,
    open_mock_server,
    responses_error_event,
    responses_stream,
    responses_text_stream,
    responses_tool_call_stream,
)

TEXT = "The quick brown fox jumps over the lazy dog."
OPTIONS = APIConnectOptions(
    max_retry=2,
    retry_interval=0.01,
    max_retry_interval=0.02,
    timeouts=Timeouts(connect=2.0, first_token=1.0, idle=0.5),
)


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="system", content="Be brief.")
    c.add_message(role="user", content="hi")
    return c


@pytest.fixture
async def server() -> AsyncIterator[MockLLMServer]:
    async with open_mock_server() as srv:
        yield srv


@pytest.fixture
async def llm(server: MockLLMServer) -> AsyncIterator[OpenAIResponsesLLM]:
    async with OpenAIResponsesLLM("gpt-mock", base_url=server.base_url, api_key="sk-resp-e2e") as p:
        yield p


async def test_text_reasoning_usage(server: MockLLMServer, llm: OpenAIResponsesLLM) -> None:
    server.enqueue(
        responses_text_stream(TEXT, reasoning=["Plan.", "Answer."], encrypted_content="enc==")
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        result = await stream.collect()
    assert result.text == TEXT
    assert result.reasoning == "Plan.\n\nAnswer."
    assert result.finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.cached_tokens) == (10, 2)
    assert stream.status is StreamStatus.COMPLETED
    [item] = result.provider_items
    assert (item.provider, item.kind) == ("openai.responses", "reasoning")
    request = server.last_request
    assert request.path == "/v1/responses"
    assert request.headers["authorization"] == "Bearer sk-resp-e2e"
    body = request.json
    assert body["stream"] is True
    assert body["store"] is False
    assert "include" not in body  # not a reasoning model as far as we know: no include
    assert body["model"] == "gpt-mock"
    assert body["input"] == [
        {"type": "message", "role": "system", "content": "Be brief."},
        {"type": "message", "role": "user", "content": "hi"},
    ]


async def test_length_and_content_filter(server: MockLLMServer, llm: OpenAIResponsesLLM) -> None:
    for ending, finish in [("max_output_tokens", "length"), ("content_filter", "content_filter")]:
        server.enqueue(responses_stream(text=TEXT, ending=ending))  # type: ignore[arg-type]
        async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
            result = await stream.collect()
        assert (result.text, result.finish_reason) == (TEXT, finish)
        assert stream.status is StreamStatus.COMPLETED


async def test_overloaded_before_text_is_retried(
    server: MockLLMServer, llm: OpenAIResponsesLLM
) -> None:
    # The error comes after lifecycle events only: nothing visible, so the attempt is retried.
    failing = inject_fault(responses_text_stream(TEXT), responses_error_event(
        "Overloaded", type="overloaded_error"), after=4)
    server.enqueue(failing, responses_text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        texts = [c.text async for c in stream]
    assert "".join(texts) == TEXT  # once
    assert stream.status is StreamStatus.COMPLETED
    first = stream.metrics.attempts[0].error
    assert isinstance(first, ProviderError)
    assert first.type == "overloaded_error"
    assert len(server.chat_requests) == 2


async def test_overloaded_after_text_interrupts(
    server: MockLLMServer, llm: OpenAIResponsesLLM
) -> None:
    # created, in_progress, item added, part added, then 3 deltas of 4 characters.
    failing = inject_fault(
        responses_text_stream(TEXT, chunk_size=4),
        responses_error_event("Overloaded", type="overloaded_error", nested=False),
        after=7,
    )
    server.enqueue(failing, responses_text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert isinstance(info.value.cause, ProviderError)
    assert info.value.partial.text == TEXT[:12]
    assert len(server.chat_requests) == 1  # never regenerated


async def test_truncation_is_truncated(server: MockLLMServer, llm: OpenAIResponsesLLM) -> None:
    cut = responses_stream(text=TEXT, ending=None)
    server.enqueue(cut, cut, cut)
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert isinstance(info.value.cause, StreamTruncatedError)
    assert stream.status is StreamStatus.TRUNCATED
    # Before any text: retried, then truncated for good once retries run out.
    empty = responses_stream(ending=None)
    server.enqueue(empty, empty, empty)
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(Exception):  # noqa: B017 - the kind is asserted below
            await stream.collect()
    assert stream.status is StreamStatus.TRUNCATED


async def test_pings_and_drop_before_commit(
    server: MockLLMServer, llm: OpenAIResponsesLLM
) -> None:
    steps = responses_text_stream(TEXT)
    server.enqueue(inject_fault(steps, "drop", after=3), (KeepAlive(), *steps))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        assert (await stream.collect()).text == TEXT
    assert len(server.chat_requests) == 2


async def test_tool_loop(server: MockLLMServer, llm: OpenAIResponsesLLM) -> None:
    async def get_weather(city: str) -> str:
        return f"sunny in {city}"

    tool = FunctionTool(
        get_weather, "get_weather", "Weather for a city",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    server.enqueue(
        responses_tool_call_stream(
            [("get_weather", '{"city": "Oslo"}'), ("get_weather", '{"city": "Lima"}')],
            text="Checking.", reasoning="Need weather.", encrypted_content="ENC", fragments=5,
        ),
        responses_text_stream("Oslo and Lima are sunny."),
    )
    conversation = ctx()
    events: list[object] = []
    async with open_tool_loop(llm, conversation, [tool], conn_options=OPTIONS) as loop:
        async for event in loop:
            events.append(event)
    assert loop.stop_reason == "no_tool_calls"
    outcomes = [e for e in events if isinstance(e, ToolOutcome)]
    assert sorted(o.output for o in outcomes) == ["sunny in Lima", "sunny in Oslo"]
    text = "".join(e.text for e in events if isinstance(e, ChatChunk))
    assert text == "Checking.Oslo and Lima are sunny."
    first, second = server.chat_requests
    assert first.json["tools"] == [
        {
            "type": "function", "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]},
            "strict": False,
        }
    ]
    items = second.json["input"]
    assert [i.get("type") for i in items] == [
        "message", "message", "reasoning", "message", "function_call", "function_call",
        "function_call_output", "function_call_output",
    ]
    reasoning = items[2]
    assert reasoning["encrypted_content"] == "ENC"
    assert items[3] == {"type": "message", "role": "assistant", "content": "Checking."}
    assert [i["call_id"] for i in items[4:]] == ["call_mock_0", "call_mock_1"] * 2
    assert items[4]["id"] == "fc_mock_0"  # the recorded item, not a rebuilt one
    assert [i["output"] for i in items[6:]] == ["sunny in Oslo", "sunny in Lima"]
    # The replayed items are byte-equal to the items the server sent.
    sent = first.response.body_bytes()  # type: ignore[union-attr]
    recorded = conversation.messages[2].provider_items
    assert [i.kind for i in recorded] == ["reasoning", "function_call", "function_call"]
    for item in recorded:
        assert item.data.encode() in sent
        assert item.data.encode() in second.body


def test_body_options_and_tool_choice() -> None:
    from trio_llmstream import ChatRequest, NamedToolChoice, ToolSpec

    llm = OpenAIResponsesLLM(
        "o4-mini", api_key="k", store=True, reasoning={"effort": "low", "summary": "auto"},
        max_output_tokens=50, strict_tools=True, extra_body={"metadata": {"a": "b"}},
    )
    request = ChatRequest(
        messages=(ChatMessage(role="user", content="x"),),
        tools=(ToolSpec("f"),),
        tool_choice=NamedToolChoice("f"),
        temperature=0.5,
        parallel_tool_calls=False,
        extra={"top_p": 0.9},
    )
    body = llm.build_body(request)
    assert body["store"] is True
    assert "include" not in body  # stored: reasoning is referenced by id
    assert body["tool_choice"] == {"type": "function", "name": "f"}
    assert body["tools"][0]["strict"] is True
    assert body["parallel_tool_calls"] is False
    assert (body["temperature"], body["top_p"], body["max_output_tokens"]) == (0.5, 0.9, 50)
    assert body["reasoning"] == {"effort": "low", "summary": "auto"}
    assert body["metadata"] == {"a": "b"}
    assert repr(llm) == (
        "OpenAIResponsesLLM(model='o4-mini', base_url='https://api.openai.com/v1', api_key=set)"
    )
    assert llm.otel_provider_name == "openai"
    assert llm.base_url == "https://api.openai.com/v1"
    assert OpenAIResponsesLLM("m", include=[]).build_body(request).get("include") is None
    reasoning = OpenAIResponsesLLM("o4-mini", reasoning={"effort": "low"})
    assert reasoning.build_body(request)["include"] == ["reasoning.encrypted_content"]
    assert OpenAIResponsesLLM("o4-mini", include=["x"]).build_body(request)["include"] == ["x"]
    for choice in ("auto", "required", "none"):
        assert llm.build_body(ChatRequest(messages=(), tool_choice=choice))["tool_choice"] == choice
    with pytest.raises(ValueError, match="n must be 1"):
        llm.build_body(ChatRequest(messages=(), n=2))


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-123456")
    assert OpenAIResponsesLLM("m")._headers["authorization"] == "Bearer sk-from-env-123456"


def test_unstored_reasoning_without_encrypted_content_is_rebuilt() -> None:
    from trio_llmstream.providers.responses import input_items

    reasoning = '{"type":"reasoning","id":"rs_1","summary":[]}'
    call = '{"type":"function_call","id":"fc_1","call_id":"c1","name":"f","arguments":"{}"}'
    message = ChatMessage(
        role="assistant",
        tool_calls=(FunctionCall("c1", "f", "{}"),),
        provider_items=(
            ProviderItem("openai.responses", "reasoning", reasoning),
            ProviderItem("openai.responses", "function_call", call),
        ),
    )
    rebuilt = [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]
    assert input_items([message]) == rebuilt
    # Stored, the ids resolve server-side: the recorded items go back as they are.
    assert [bytes(i) for i in input_items([message], store=True)] == [
        reasoning.encode(), call.encode()
    ]


def test_dropped_calls_and_foreign_items_are_not_replayed() -> None:
    from trio_llmstream.providers.responses import input_items

    recorded = '{"type":"function_call","id":"fc_1","call_id":"c1","name":"f","arguments":"{}"}'
    message = ChatMessage(
        role="assistant",
        content="t",
        tool_calls=(FunctionCall("c2", "g", '{"a": 1}'),),
        provider_items=(
            ProviderItem("openai.responses", "function_call", recorded),  # c1 was dropped
            ProviderItem("anthropic", "thinking", '{"x": 1}'),
            ProviderItem("openai.responses", "function_call", "not json"),
        ),
    )
    items = input_items([message])
    assert items == [
        {"type": "message", "role": "assistant", "content": "t"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a": 1}'},
    ]


# -- the replay property -------------------------------------------------------------------------

_json_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=15, deadline=None)
@given(
    summary=_json_text,
    encrypted=_json_text.filter(bool),
    arguments=st.dictionaries(_json_text, _json_text, max_size=3),
    spacing=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
)
def test_a_recorded_turn_replays_byte_equal(
    summary: str, encrypted: str, arguments: dict[str, str], spacing: int | None,
    ascii_only: bool,
) -> None:
    import trio

    async def main() -> None:
        # Items written by hand in any JSON spacing and escaping: what comes back is what went.
        def dump(value: object) -> str:
            return json.dumps(value, indent=spacing, ensure_ascii=ascii_only).replace("\n", " ")

        reasoning = dump({"id": "rs_1", "type": "reasoning",
                          "summary": [{"type": "summary_text", "text": summary}],
                          "encrypted_content": encrypted})
        call = dump({"id": "fc_1", "type": "function_call", "call_id": "call_1",
                     "name": "f", "arguments": json.dumps(arguments)})

        def item_done(n: int, raw: str) -> RawBytes:
            data = f'{{"type":"response.output_item.done","sequence_number":{n},"item":{raw}}}'
            return RawBytes(b"event: response.output_item.done\ndata: " + data.encode() + b"\n\n")

        steps = (
            *responses_stream(ending=None),
            item_done(2, reasoning),
            item_done(3, call),
            ResponsesEvent({"type": "response.completed", "sequence_number": 4,
                            "response": {"id": "resp_mock"}}),
        )
        async with open_mock_server(steps, responses_text_stream("ok")) as srv:
            async with OpenAIResponsesLLM("m", base_url=srv.base_url, api_key="k") as llm:
                conversation = ChatContext()
                conversation.add_message(role="user", content="go")
                async with open_llm_stream(llm, chat_ctx=conversation) as stream:
                    result = await stream.collect()
                sent_items = [i.data for i in result.provider_items]
                conversation.messages.append(result.message())
                conversation.add_tool_result(result.function_calls[0], "done")
                async with open_llm_stream(llm, chat_ctx=conversation) as stream:
                    await stream.collect()
            first_body = srv.chat_requests[0].response.body_bytes()  # type: ignore[union-attr]
            replay = srv.chat_requests[1].body
        for data in sent_items:
            assert data.encode() in first_body  # recorded exactly as sent...
            assert data.encode() in replay  # ...and sent back exactly

    trio.run(main)


# -- the mock server's faults on a Responses transcript ------------------------------------------

FAULTS = [
    ("drop", "APIConnectionError", StreamStatus.FAILED),
    ("stall", "APITimeoutError", StreamStatus.FAILED),
    ("error_event", "ProviderError", StreamStatus.FAILED),
    ("truncate", "StreamTruncatedError", StreamStatus.TRUNCATED),
]


@pytest.mark.parametrize(("fault", "cause", "status"), FAULTS)
async def test_fault_before_commit_is_retried_once(
    server: MockLLMServer, llm: OpenAIResponsesLLM, fault: str, cause: str, status: StreamStatus
) -> None:
    # After the four lifecycle events: nothing visible yet.
    server.enqueue(inject_fault(responses_text_stream(TEXT), fault, after=4),  # type: ignore[arg-type]
                   responses_text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        texts = [c.text async for c in stream]
    assert "".join(texts) == TEXT
    assert stream.status is StreamStatus.COMPLETED
    assert [type(a.error).__name__ for a in stream.metrics.attempts] == [cause, "NoneType"]


@pytest.mark.parametrize(("fault", "cause", "status"), FAULTS)
async def test_fault_after_commit_interrupts(
    server: MockLLMServer, llm: OpenAIResponsesLLM, fault: str, cause: str, status: StreamStatus
) -> None:
    server.enqueue(
        inject_fault(responses_text_stream(TEXT, chunk_size=4), fault, after=7),  # type: ignore[arg-type]
        responses_text_stream(TEXT),
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert type(info.value.cause).__name__ == cause
    assert info.value.partial.text == TEXT[:12]
    assert stream.status is status
    assert len(server.chat_requests) == 1


async def test_status_errors_reuse_the_chat_classification(
    server: MockLLMServer, llm: OpenAIResponsesLLM
) -> None:
    from trio_llmstream import APIStatusError
    from trio_llmstream.testing import error_response

    server.enqueue(error_response(429, "slow down", retry_after=0.05), responses_text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        assert (await stream.collect()).text == TEXT
    server.enqueue(error_response(400, "bad input sk-resp-e2e", type="invalid_request_error"))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(APIStatusError) as info:
            await stream.collect()
    assert "sk-resp-e2e" not in str(info.value)  # the key echoed back is redacted
    assert len(server.chat_requests) == 3


async def test_a_failed_attempt_keeps_its_partial_usage(
    server: MockLLMServer, llm: OpenAIResponsesLLM
) -> None:
    server.enqueue(responses_stream(ending="failed"), responses_text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        assert (await stream.collect()).text == TEXT
    failed, ok = stream.metrics.attempts
    assert isinstance(failed.error, ProviderError)
    assert failed.usage is not None
    assert failed.usage.source == "provider_partial"
    assert ok.usage is not None
    assert ok.usage.source == "provider"
