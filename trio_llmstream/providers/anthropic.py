"""The Anthropic Messages provider: a thin I/O shell over the sans-IO assembler.

One attempt is one ``POST {base_url}/v1/messages`` with ``stream: true``, the key in
``x-api-key`` and ``anthropic-version: 2023-06-01``. The body is read exactly as
:mod:`trio_llmstream.providers._http` reads one (whose pieces this module reuses: the one
httpx boundary :func:`~trio_llmstream.providers._http.translate_httpx_error`, identity
encoding with bounded inflation, read windows, the quiet-bytes bound, closing without reading
on, the headers limit, the redaction boundary), and fed to an
:class:`~trio_llmstream._core._anthropic.AnthropicParser` (the shared event-stream parser over
the Anthropic assembler, with a framing shortcut for Anthropic's two-line blocks).

The request. A ``ChatContext`` becomes Anthropic's shape:

- ``system`` messages -> the top-level ``system`` string (several joined by blank lines);
- ``user`` messages -> ``{"role": "user", "content": text}``;
- ``assistant`` messages -> content blocks in the order Anthropic requires: first the
  message's Anthropic ``provider_items`` (thinking and redacted-thinking blocks) spliced into
  the body *as the stored JSON text*, never decoded and re-encoded, so the signature and every
  other byte arrive as the server sent them; then the text; then one ``tool_use`` block per
  call whose ``input`` is the call's ``arguments`` text, also spliced verbatim when it is a
  JSON object (arguments that are not a JSON object, which fine-grained tool streaming can
  produce, are sent as ``{"INVALID_JSON": "<text>"}``, the form Anthropic documents);
- ``tool`` messages -> ``tool_result`` blocks in a ``user`` message; consecutive results share
  one message, as Anthropic expects the results of parallel calls;
- tools -> ``{"name", "description", "input_schema"}``; ``tool_choice`` ``auto`` /
  ``required`` / ``none`` / a name -> ``{"type": "auto" | "any" | "none" | "tool"}``;
  ``parallel_tool_calls=False`` -> ``disable_parallel_tool_use``.

Errors. A non-2xx status is an ``APIStatusError`` (529 "overloaded" and every 5xx, 408, 409
and 429 retryable, ``x-should-retry`` honoured, ``retry-after`` parsed); an in-stream
``event: error`` a ``ProviderError`` keeping Anthropic's error type (retryable for
``overloaded_error``, ``api_error``, ``rate_limit_error``; never retried after the commit
point, which the runtime decides); a body ending before ``message_stop`` a
``StreamTruncatedError``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import msgspec

from .._core._anthropic import AnthropicParser
from .._exceptions import (
    APIError,
    APIStatusError,
    ProviderError,
    StreamProtocolError,
)
from .._models import ChatMessage, ChatRequest, LLMCapabilities, NamedToolChoice
from ._http import (
    StreamingHTTPLLM,
    _error_message,
    _should_retry,
    parse_retry_after,
)
from ._redact import Redactor

__all__ = ["ANTHROPIC_VERSION", "AnthropicLLM", "build_messages"]

#: The ``anthropic-version`` header sent with every request.
ANTHROPIC_VERSION = "2023-06-01"
#: The ``ProviderItem.provider`` this protocol reads back.
PROVIDER = "anthropic"
_REPLAYED_KINDS = frozenset({"thinking", "redacted_thinking"})

_decode_any = msgspec.json.Decoder().decode
_JSON_ERRORS = (msgspec.MsgspecError, RecursionError, ValueError, OverflowError)


def _json_object(text: str) -> bool:
    try:
        return isinstance(_decode_any(text), dict)
    except _JSON_ERRORS:
        return False


def _assistant_blocks(message: ChatMessage) -> list[Any]:
    blocks: list[Any] = []
    for item in message.provider_items:
        if item.provider != PROVIDER or item.kind not in _REPLAYED_KINDS:
            continue  # another protocol's item: not ours to send
        if not _json_object(item.data):
            raise APIError(
                f"a stored Anthropic {item.kind} item is not a JSON object; it cannot be "
                "replayed",
                retryable=False,
            )
        # Spliced into the body as is: the signature must come back byte for byte.
        blocks.append(msgspec.Raw(item.data.encode("utf-8", "surrogatepass")))
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        arguments = call.arguments.strip() or "{}"
        if _json_object(arguments):
            tool_input: Any = msgspec.Raw(arguments.encode("utf-8", "surrogatepass"))
        else:
            tool_input = {"INVALID_JSON": call.arguments}
        blocks.append(
            {"type": "tool_use", "id": call.call_id, "name": call.name, "input": tool_input}
        )
    return blocks


def build_messages(messages: tuple[ChatMessage, ...]) -> tuple[str | None, list[dict[str, Any]]]:
    """``(system, messages)`` in Anthropic's format (see the module docstring).

    Raises ``APIError`` (not retryable) for a stored Anthropic item that is not JSON.
    """
    system: list[str] = []
    out: list[dict[str, Any]] = []
    results: list[Any] | None = None  # the content of the open tool-results message
    for message in messages:
        role = message.role
        if role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content or "",
            }
            if results is None:
                results = [block]
                out.append({"role": "user", "content": results})
            else:
                results.append(block)
            continue
        results = None
        if role == "system":
            if message.content:
                system.append(message.content)
        elif role == "user":
            out.append({"role": "user", "content": message.content or ""})
        else:
            blocks = _assistant_blocks(message)
            if blocks:  # an empty assistant turn is something Anthropic refuses
                out.append({"role": "assistant", "content": blocks})
    return ("\n\n".join(system) if system else None), out


class AnthropicLLM(StreamingHTTPLLM):
    """Streams from Anthropic's Messages API (``POST {base_url}/v1/messages``).

    ``api_key`` falls back to ``$ANTHROPIC_API_KEY`` and is sent as ``x-api-key`` with
    ``anthropic-version: 2023-06-01``; it never appears in a repr, an exception, a log line or
    metrics, even when the upstream echoes it. ``max_tokens`` is required by Anthropic and
    sent with every request. A caller-supplied ``http_client`` is used as given and never
    closed here; otherwise the provider owns one, closed by ``aclose()`` / ``async with``.
    ``extra_headers`` (``anthropic-beta``, say) and ``extra_body`` (``thinking``, ``metadata``,
    ``top_k``...) are added to every request; ``ChatRequest.extra`` to one.
    """

    otel_provider_name = "anthropic"

    request_id_headers = ("request-id", "x-request-id")

    def __init__(
        self,
        model: str,
        *,
        max_tokens: int = 4096,
        api_key: str | None = None,
        base_url: str = "https://api.anthropic.com",
        http_client: httpx.AsyncClient | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        label: str | None = None,
        capabilities: LLMCapabilities | None = None,
    ) -> None:
        super().__init__(
            label=label or f"anthropic:{model}",
            capabilities=capabilities or LLMCapabilities(supports_reasoning=True),
        )
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self.model = model
        self.max_tokens = max_tokens
        self.base_url = base_url.rstrip("/")
        self._url = f"{self.base_url}/v1/messages"
        key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY")
        self._headers: dict[str, str] = {
            "accept": "text/event-stream",
            # Compressed bodies are decoded with bounded output, never by httpx.
            "accept-encoding": "identity",
            "content-type": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if key:
            self._headers["x-api-key"] = key
        self._headers.update(extra_headers or {})
        self._redactor = Redactor(key or None)
        self._extra_body = dict(extra_body or {})
        self._use_client(http_client)

    def __repr__(self) -> str:
        auth = "set" if "x-api-key" in self._headers else "none"
        return f"AnthropicLLM(model={self.model!r}, base_url={self.base_url!r}, api_key={auth})"

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of one attempt. Replayed items are ``msgspec.Raw`` values, spliced
        verbatim when the body is encoded (``encode_body``, msgspec)."""
        if request.n not in (None, 1):
            raise APIError(
                f"Anthropic Messages makes one choice per request, not n={request.n}",
                retryable=False,
            )
        system, messages = build_messages(request.messages)
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens or self.max_tokens,
            "messages": messages,
            "stream": True,
        }
        if system is not None:
            body["system"] = system
        if request.tools:
            body["tools"] = [
                {
                    "name": t.name,
                    "description": t.description,
                    "input_schema": dict(t.parameters),
                }
                for t in request.tools
            ]
        choice: dict[str, Any] | None = None
        wanted = request.tool_choice
        if isinstance(wanted, NamedToolChoice):
            choice = {"type": "tool", "name": wanted.name}
        elif wanted == "required":
            choice = {"type": "any"}
        elif wanted is not None:
            choice = {"type": wanted}
        if request.parallel_tool_calls is False and request.tools:
            choice = choice or {"type": "auto"}
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if choice is not None and (request.tools or choice["type"] == "none"):
            body["tool_choice"] = choice
        if request.temperature is not None:
            body["temperature"] = request.temperature
        body.update(self._extra_body)
        body.update(request.extra)
        return body

    def _parser(self) -> AnthropicParser:
        return AnthropicParser()

    async def _status_error(
        self, response: httpx.Response, reads: AsyncIterator[bytes], request_id: str | None
    ) -> APIStatusError:
        body = await self._bounded_body(response, reads)
        message, parsed = _error_message(body)
        return APIStatusError(
            message,
            status_code=response.status_code,
            body=parsed,
            request_id=request_id,
            retry_after=parse_retry_after(response.headers),
            retryable=_should_retry(response.headers),
        )

    async def _json_instead_of_stream(
        self, response: httpx.Response, reads: AsyncIterator[bytes], request_id: str | None
    ) -> APIError:
        body = await self._bounded_body(response, reads)
        message, parsed = _error_message(body)
        if isinstance(parsed, dict) and "error" in parsed:
            err = parsed["error"]
            type_ = err.get("type") if isinstance(err, dict) else None
            return ProviderError(
                message, type=type_ if isinstance(type_, str) else None, request_id=request_id
            )
        return StreamProtocolError(
            f"expected text/event-stream, got application/json: {message[:200]}",
            request_id=request_id,
        )
