"""GeminiLLM without a network: the request body, the key's whereabouts, the URL."""

from __future__ import annotations

import json

import msgspec
import pytest

from trio_llmstream import (
    ChatMessage,
    ChatRequest,
    FunctionCall,
    GeminiLLM,
    NamedToolChoice,
    ProviderItem,
    ToolSpec,
)
from trio_llmstream.providers.gemini import build_contents


def sig(data: dict[str, object]) -> ProviderItem:
    return ProviderItem("gemini", "thought_signature", json.dumps(data))


def encoded(value: object) -> object:
    # What goes on the wire (Raw values embedded), parsed back.
    return json.loads(msgspec.json.encode(value))


async def test_url_key_header_and_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", "google-key-0123456789")
    async with GeminiLLM("models/gemini-2.5-pro") as llm:
        assert llm.url == (
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro"
            ":streamGenerateContent?alt=sse"
        )
        assert llm._headers["x-goog-api-key"] == "google-key-0123456789"
        assert "google-key" not in repr(llm)
        assert llm.otel_provider_name == "gcp.gemini"
        assert llm.model == "models/gemini-2.5-pro"
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-key-0123456789")
    async with GeminiLLM("m", base_url="http://h/v1/") as llm:
        assert llm._headers["x-goog-api-key"] == "gemini-key-0123456789"  # GEMINI_ first
        assert llm.url == "http://h/v1/models/m:streamGenerateContent?alt=sse"
        assert "key" not in llm.url.split("?")[1].replace("alt=sse", "")
    async with GeminiLLM("m", api_key="explicit-key-000000") as llm:
        assert llm._headers["x-goog-api-key"] == "explicit-key-000000"


async def test_body_tools_tool_choice_and_generation_config() -> None:
    tool = ToolSpec(
        "get_weather",
        "Weather.",
        {"type": "object", "properties": {"city": {"type": "string"}}, "anyOf": [{}]},
    )
    messages = (ChatMessage(role="user", content="hi"),)
    async with GeminiLLM("m", api_key="k" * 20, include_thoughts=True, max_output_tokens=64) as llm:
        body = llm.build_body(
            ChatRequest(messages, tools=(tool,), tool_choice="required", temperature=0.5, n=2)
        )
        assert body["tools"] == [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Weather.",
                        "parametersJsonSchema": dict(tool.parameters),
                    }
                ]
            }
        ]
        assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
        assert body["generationConfig"] == {
            "temperature": 0.5,
            "candidateCount": 2,
            "maxOutputTokens": 64,
            "thinkingConfig": {"includeThoughts": True},
        }
        named = llm.build_body(ChatRequest(messages, tool_choice=NamedToolChoice("f")))
        assert named["toolConfig"] == {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}
        }
        for choice, mode in (("auto", "AUTO"), ("none", "NONE")):
            body = llm.build_body(ChatRequest(messages, tool_choice=choice))  # type: ignore[arg-type]
            assert body["toolConfig"]["functionCallingConfig"]["mode"] == mode
        plain = llm.build_body(ChatRequest(messages, extra={"safetySettings": []}))
        assert set(plain) == {"contents", "generationConfig", "safetySettings"}


def test_contents_roles_system_and_merging() -> None:
    contents, system = build_contents(
        [
            ChatMessage(role="system", content="A."),
            ChatMessage(role="user", content="one"),
            ChatMessage(role="system", content="B."),
            ChatMessage(role="user", content="two"),
            ChatMessage(role="assistant", content="ok"),
            ChatMessage(role="assistant"),  # empty: no turn at all
        ]
    )
    assert system == {"parts": [{"text": "A.\n\nB."}]}
    assert contents == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "ok"}]},
    ]


def test_signatures_go_back_on_their_parts_byte_equal() -> None:
    calls = (
        FunctionCall("call_0", "a", '{"x":  1}'),
        FunctionCall("srv-7", "b", "{}"),
    )
    items = (
        sig({"part": 0, "type": "thought", "signature": "VEhPVUdIVA=="}),
        sig({"part": 1, "type": "text", "signature": "VEVYVA=="}),
        sig(
            {
                "part": 3,
                "type": "function_call",
                "name": "b",
                "call_id": "srv-7",
                "signature": "Q0FMTA==",
            }
        ),
        ProviderItem("anthropic", "thinking", "{}"),  # another provider's: ignored
        ProviderItem("gemini", "thought_signature", "not json"),  # unusable: ignored
    )
    message = ChatMessage(
        role="assistant",
        content="Sure.",
        tool_calls=calls,
        reasoning="Hmm.",
        provider_items=items,
    )
    contents, _ = build_contents([ChatMessage(role="user", content="q"), message])
    assert encoded(contents[1]) == {
        "role": "model",
        "parts": [
            {"text": "Hmm.", "thought": True, "thoughtSignature": "VEhPVUdIVA=="},
            {"text": "Sure.", "thoughtSignature": "VEVYVA=="},
            {"functionCall": {"name": "a", "args": {"x": 1}}},
            {
                "functionCall": {"name": "b", "args": {}, "id": "srv-7"},
                "thoughtSignature": "Q0FMTA==",
            },
        ],
    }
    assert b'"args":{"x":  1}' in msgspec.json.encode(contents)
    # Reasoning without a signature is not sent back (Gemini ignores past thoughts).
    bare = ChatMessage(role="assistant", content="x", reasoning="r")
    assert build_contents([bare])[0] == [{"role": "model", "parts": [{"text": "x"}]}]


def test_tool_results_are_function_responses_with_object_responses() -> None:
    call = FunctionCall("call_0", "f", "{}")
    server = FunctionCall("srv-1", "g", "{}")
    contents, _ = build_contents(
        [
            ChatMessage(role="assistant", tool_calls=(call, server)),
            ChatMessage(role="tool", content='{"temp": 21, "ok": true}', tool_call_id="call_0"),
            ChatMessage(role="tool", content="plain text", tool_call_id="srv-1"),
            ChatMessage(role="tool", content="[1, 2]", tool_call_id="missing", name="h"),
        ]
    )
    assert encoded(contents[1]) == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "f", "response": {"temp": 21, "ok": True}}},
            {
                "functionResponse": {
                    "name": "g",
                    "response": {"result": "plain text"},
                    "id": "srv-1",
                }
            },
            {"functionResponse": {"name": "h", "response": {"result": [1, 2]}, "id": "missing"}},
        ],
    }


def test_hand_made_arguments_that_are_not_an_object_still_make_a_valid_request() -> None:
    message = ChatMessage(
        role="assistant",
        tool_calls=(FunctionCall("call_0", "f", "not json"), FunctionCall("call_1", "g", "[1]")),
    )
    contents, _ = build_contents([message])
    assert encoded(contents) == [
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "f", "args": {"arguments": "not json"}}},
                {"functionCall": {"name": "g", "args": {"arguments": [1]}}},
            ],
        }
    ]
