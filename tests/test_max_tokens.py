"""``open_llm_stream(max_tokens=...)`` reaches every protocol's own parameter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trio_llmstream import (
    LLM,
    AnthropicLLM,
    ChatContext,
    GeminiLLM,
    OpenAILLM,
    OpenAIResponsesLLM,
    open_llm_stream,
)
from trio_llmstream.testing import (
    anthropic_text_stream,
    gemini_text_stream,
    open_mock_server,
    responses_text_stream,
    text_stream,
)

CASES: list[tuple[str, Callable[[str, str], LLM], Any, Callable[[dict[str, Any]], Any]]] = [
    ("openai", lambda base, origin: OpenAILLM("m", base_url=base, api_key="k"),
     text_stream("hi"), lambda body: body.get("max_tokens")),
    ("anthropic", lambda base, origin: AnthropicLLM("m", base_url=origin, api_key="k"),
     anthropic_text_stream("hi"), lambda body: body.get("max_tokens")),
    ("responses", lambda base, origin: OpenAIResponsesLLM("m", base_url=base, api_key="k"),
     responses_text_stream("hi"), lambda body: body.get("max_output_tokens")),
    ("gemini", lambda base, origin: GeminiLLM("m", base_url=base, api_key="k"),
     gemini_text_stream("hi"),
     lambda body: body.get("generationConfig", {}).get("maxOutputTokens")),
]


@pytest.mark.parametrize(("name", "make", "script", "sent"), CASES, ids=[c[0] for c in CASES])
async def test_max_tokens_is_sent_in_each_protocols_own_parameter(
    name: str,
    make: Callable[[str, str], LLM],
    script: Any,
    sent: Callable[[dict[str, Any]], Any],
) -> None:
    ctx = ChatContext()
    ctx.add_message(role="user", content="hi")
    async with open_mock_server(script, script) as server:
        llm = make(server.base_url, server.origin)
        async with llm:
            async with open_llm_stream(llm, chat_ctx=ctx, max_tokens=77) as stream:
                await stream.collect()
            async with open_llm_stream(llm, chat_ctx=ctx) as stream:
                await stream.collect()
    with_limit, without = (r.json for r in server.chat_requests)
    assert sent(with_limit) == 77
    if name == "anthropic":
        assert sent(without) == 4096  # Anthropic requires one: the constructor's default
    else:
        assert sent(without) is None
