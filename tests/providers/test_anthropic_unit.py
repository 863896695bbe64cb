"""AnthropicLLM without a network: the request it builds, its headers and its key handling."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    AnthropicLLM,
    APIError,
    ChatMessage,
    ChatRequest,
    FunctionCall,
    NamedToolChoice,
    ProviderItem,
    ToolSpec,
)
from trio_llmstream._core._anthropic import AnthropicAssembler
from trio_llmstream._core._parser import EventStreamParser
from trio_llmstream.testing import sse_response
from trio_llmstream.testing._anthropic import anthropic_text_stream

SECRET = "sk-ant-api03-SECRETSECRETSECRET"


def body(llm: AnthropicLLM, request: ChatRequest) -> dict[str, object]:
    decoded = json.loads(llm.encode_body(request))
    assert isinstance(decoded, dict)
    return decoded


def test_defaults_headers_and_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    llm = AnthropicLLM("claude-x")
    assert llm.base_url == "https://api.anthropic.com"
    assert llm._url == "https://api.anthropic.com/v1/messages"
    assert llm._headers["x-api-key"] == SECRET
    assert llm._headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in llm._headers
    assert SECRET not in repr(llm)
    assert AnthropicLLM.otel_provider_name == "anthropic"
    assert llm.model == "claude-x"
    assert llm.max_tokens == 4096
    explicit = AnthropicLLM("m", api_key="other-key-123", base_url="http://h:1/")
    assert explicit._headers["x-api-key"] == "other-key-123"
    assert explicit._url == "http://h:1/v1/messages"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    assert "x-api-key" not in AnthropicLLM("m")._headers
    with pytest.raises(ValueError, match="max_tokens"):
        AnthropicLLM("m", max_tokens=0)


def test_body_shape_system_tools_and_choice() -> None:
    llm = AnthropicLLM("claude-x", max_tokens=100, api_key="k", extra_body={"top_k": 5})
    tool = ToolSpec("get_weather", "Weather", {"type": "object", "properties": {}})
    request = ChatRequest(
        messages=(
            ChatMessage("system", "Be brief."),
            ChatMessage("system", "Be kind."),
            ChatMessage("user", "hi"),
        ),
        tools=(tool,),
        tool_choice="required",
        temperature=0.5,
        parallel_tool_calls=False,
        extra={"metadata": {"user_id": "u"}},
    )
    got = body(llm, request)
    assert got == {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "system": "Be brief.\n\nBe kind.",
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather",
                "input_schema": {"type": "object", "properties": {}},
            }
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "temperature": 0.5,
        "top_k": 5,
        "metadata": {"user_id": "u"},
    }


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (NamedToolChoice("f"), {"type": "tool", "name": "f"}),
    ],
)
def test_tool_choice_mapping(choice: object, wire: dict[str, str]) -> None:
    llm = AnthropicLLM("m", api_key="k")
    request = ChatRequest(
        messages=(ChatMessage("user", "x"),), tools=(ToolSpec("f"),),
        tool_choice=choice,  # type: ignore[arg-type]
    )
    assert body(llm, request)["tool_choice"] == wire


def test_n_above_one_is_refused() -> None:
    llm = AnthropicLLM("m", api_key="k")
    with pytest.raises(APIError, match="n=2") as info:
        llm.build_body(ChatRequest(messages=(ChatMessage("user", "x"),), n=2))
    assert not info.value.retryable


THINKING = '{"type":"thinking","thinking":"Let me see \\u00e9.","signature":"EqQB/+=="}'
REDACTED = '{"type": "redacted_thinking",  "data": "EmwKAhgB"}'


def test_history_replay_order_and_tool_results_merged() -> None:
    llm = AnthropicLLM("m", api_key="k")
    calls = (
        FunctionCall("toolu_1", "f", '{"a": 1,  "b": "x"}'),
        FunctionCall("toolu_2", "g", ""),
        FunctionCall("toolu_3", "h", '{"a": [1, 2'),
    )
    assistant = ChatMessage(
        "assistant",
        "Checking.",
        tool_calls=calls,
        reasoning="Let me see é.",
        provider_items=(
            ProviderItem("anthropic", "thinking", THINKING),
            ProviderItem("gemini", "thought_signature", "xyz"),
            ProviderItem("anthropic", "redacted_thinking", REDACTED),
        ),
    )
    request = ChatRequest(
        messages=(
            ChatMessage("user", "go"),
            assistant,
            ChatMessage("tool", "one", tool_call_id="toolu_1"),
            ChatMessage("tool", "two", tool_call_id="toolu_2"),
            ChatMessage("tool", "three", tool_call_id="toolu_3"),
            ChatMessage("user", "thanks"),
            ChatMessage("assistant", None),  # nothing to send: left out
        )
    )
    raw = llm.encode_body(request)
    # The stored blocks and the arguments arrive byte for byte.
    assert THINKING.encode() in raw
    assert REDACTED.encode() in raw
    assert b'{"a": 1,  "b": "x"}' in raw
    messages = json.loads(raw)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "user"]
    blocks = messages[1]["content"]
    assert [b["type"] for b in blocks] == [
        "thinking", "redacted_thinking", "text", "tool_use", "tool_use", "tool_use"
    ]
    assert blocks[3] == {"type": "tool_use", "id": "toolu_1", "name": "f",
                         "input": {"a": 1, "b": "x"}}
    assert blocks[4]["input"] == {}
    assert blocks[5]["input"] == {"INVALID_JSON": '{"a": [1, 2'}
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "one"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "two"},
        {"type": "tool_result", "tool_use_id": "toolu_3", "content": "three"},
    ]
    assert messages[3] == {"role": "user", "content": "thanks"}


def test_a_corrupt_stored_item_is_a_typed_error() -> None:
    llm = AnthropicLLM("m", api_key="k")
    message = ChatMessage(
        "assistant", "x", provider_items=(ProviderItem("anthropic", "thinking", "{not json"),)
    )
    with pytest.raises(APIError, match="not a JSON object"):
        llm.encode_body(ChatRequest(messages=(ChatMessage("user", "q"), message)))


@given(
    thinking=st.text(max_size=40),
    signature=st.text(alphabet="ABCDEFabcdef0123456789+/=", max_size=40),
    answer=st.text(min_size=1, max_size=20),
)
def test_recorded_thinking_replays_byte_equal(thinking: str, signature: str, answer: str) -> None:
    # What the assembler records from any thinking block is sent back unchanged.
    steps = anthropic_text_stream(answer, thinking=thinking, signature=signature)
    parser = EventStreamParser(AnthropicAssembler())
    chunks = parser.feed(sse_response(steps).body_bytes())
    assert parser.error is None
    items = [i for k in chunks for c in k.choices for i in c.delta.provider_items]
    assert len(items) == 1
    llm = AnthropicLLM("m", api_key="k")
    message = ChatMessage("assistant", answer, provider_items=items)
    raw = llm.encode_body(ChatRequest(messages=(ChatMessage("user", "q"), message)))
    assert items[0].data.encode("utf-8", "surrogatepass") in raw
    replayed = msgspec.json.decode(raw)["messages"][1]["content"][0]
    expected = {"type": "thinking", "thinking": thinking}
    if signature:
        expected["signature"] = signature
    assert replayed == expected
