"""The OpenAI-compatible chat-completions provider: a thin I/O shell over the sans-IO core.

One attempt is one ``POST {base_url}/chat/completions`` with ``stream: true``. This module does
what the core cannot: it builds the request and classifies HTTP statuses, headers and error
bodies into typed errors. The attempt flow, the bounded body reading and the translation of
httpx's exceptions are every provider's, in ``_http.py``.

Secrets. Every exception leaving :meth:`OpenAILLM.run_attempt` passes through one
:class:`~trio_llmstream.providers._redact.Redactor`, which replaces the API key (raw, after
``Bearer``, URL-encoded, JSON- or HTML-escaped, in any case) in its message, args, body, notes
and cause chain: servers that echo the Authorization header cannot make the key reach a log,
metrics, the journal or the relay.

Works against OpenAI, vLLM, Ollama's ``/v1``, llama.cpp's server, OpenRouter, Groq and any other
server speaking the same wire format.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from .._core._openai import ChatCompletionParser
from .._exceptions import APIError, APIStatusError, ProviderError, StreamProtocolError
from .._models import ChatMessage, ChatRequest, LLMCapabilities, NamedToolChoice
from ._http import (
    BodyParser,
    StreamingHTTPLLM,
    _error_message,
    _should_retry,
    parse_retry_after,
)
from ._redact import Redactor

__all__ = ["OpenAILLM"]



def _quota_exhausted(parsed: object) -> bool:
    # OpenAI's 429 for a spent quota: {"error": {"type": "insufficient_quota", "code":
    # "insufficient_quota"}}. Waiting does not refill a quota; retrying only burns time.
    if not isinstance(parsed, dict):
        return False
    err = parsed.get("error", parsed)
    if not isinstance(err, dict):
        return False
    return any(
        isinstance(err.get(key), str) and err[key].strip().lower() == "insufficient_quota"
        for key in ("type", "code")
    )


def _wire_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if message.role == "assistant":
        out["content"] = message.content
        if message.tool_calls:
            out["tool_calls"] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ]
        for item in message.provider_items:
            # DeepSeek refuses a tool-call turn sent back without its reasoning_content.
            if item.provider == "openai.chat" and item.kind == "reasoning_content":
                out["reasoning_content"] = item.data
    else:
        out["content"] = message.content if message.content is not None else ""
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None and message.role != "tool":
        out["name"] = message.name
    return out


class OpenAILLM(StreamingHTTPLLM):
    """Streams chat completions from an OpenAI-compatible ``/chat/completions`` endpoint.

    ``api_key`` falls back to ``$OPENAI_API_KEY``; without either no Authorization header is
    sent (local servers). The key never appears in a repr, a log line, an exception or metrics,
    not even when the upstream echoes it back in an error body, an error event or a header
    (see :mod:`trio_llmstream.providers._redact`; keys shorter than 8 characters, which are
    placeholders rather than secrets, are redacted only where they follow ``Bearer``).
    A caller-supplied ``http_client`` is used as given (transport, limits, proxies) and never
    closed here; otherwise the provider owns one, closed by ``aclose()`` / ``async with``.
    ``extra_headers`` and ``extra_body`` are added to every request.

    Cancellation: an attempt (``run_attempt``) cancelled at any point, by the runtime's time
    limits or because the consumer left, closes its response and connection at once and reads
    no further byte. ``aclose()`` closes the client the provider owns; cancelled midway, it may
    leave pooled idle connections to be closed when the client is garbage-collected.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        include_usage: bool = True,
        label: str | None = None,
        capabilities: LLMCapabilities | None = None,
    ) -> None:
        super().__init__(label=label or f"openai:{model}", capabilities=capabilities)
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._url = f"{self.base_url}/chat/completions"
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._headers: dict[str, str] = {
            "accept": "text/event-stream",
            # Compressed bodies are decoded here with bounded output, never by httpx (see the
            # module docstring); asking for identity makes that the rare case.
            "accept-encoding": "identity",
            "content-type": "application/json",
        }
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._headers.update(extra_headers or {})
        # The one place upstream text is scrubbed of the key (see run_attempt).
        self._redactor = Redactor(key or None)
        self._extra_body = dict(extra_body or {})
        self._include_usage = include_usage
        self._use_client(http_client)

    def __repr__(self) -> str:
        # Never the key; only whether one is set.
        auth = "set" if "authorization" in self._headers else "none"
        return f"OpenAILLM(model={self.model!r}, base_url={self.base_url!r}, api_key={auth})"

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of one attempt."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_wire_message(m) for m in request.messages],
            "stream": True,
        }
        if self._include_usage:
            body["stream_options"] = {"include_usage": True}
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": dict(t.parameters),
                    },
                }
                for t in request.tools
            ]
        choice = request.tool_choice
        if isinstance(choice, NamedToolChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif choice is not None:
            body["tool_choice"] = choice
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            # The parameter every OpenAI-compatible server accepts; OpenAI's reasoning models
            # want max_completion_tokens instead (pass it in ``extra``).
            body["max_tokens"] = request.max_tokens
        if request.n is not None:
            body["n"] = request.n
        if request.parallel_tool_calls is not None and request.tools:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        body.update(self._extra_body)
        body.update(request.extra)
        return body

    def _parser(self) -> BodyParser:
        return ChatCompletionParser()

    async def _status_error(
        self, response: httpx.Response, reads: AsyncIterator[bytes], request_id: str | None
    ) -> APIStatusError:
        body = await self._bounded_body(response, reads)
        message, parsed = _error_message(body)
        retryable = _should_retry(response.headers)
        if response.status_code == 429 and _quota_exhausted(parsed):
            retryable = False
        return APIStatusError(
            message,
            status_code=response.status_code,
            body=parsed,
            request_id=request_id,
            retry_after=parse_retry_after(response.headers),
            retryable=retryable,
        )

    async def _json_instead_of_stream(
        self, response: httpx.Response, reads: AsyncIterator[bytes], request_id: str | None
    ) -> APIError:
        body = await self._bounded_body(response, reads)
        message, parsed = _error_message(body)
        if isinstance(parsed, dict) and "error" in parsed:
            err = parsed["error"]
            type_ = err.get("type") if isinstance(err, dict) else None
            code = err.get("code") if isinstance(err, dict) else None
            return ProviderError(message, type=type_, code=code, request_id=request_id)
        return StreamProtocolError(
            f"expected text/event-stream, got application/json: {message[:200]}",
            request_id=request_id,
        )
