"""The OpenAI Responses API provider: ``POST {base_url}/responses`` with ``stream: true``.

A thin shell: the request body is built here; everything about HTTP (statuses, Retry-After,
content types, bounded and decompressed body reading, early exit without reading on, httpx's
exceptions translated at their one boundary, the key redacted from every error) is the
chat-completions provider's, reused as it is (``OpenAIResponsesLLM`` extends ``OpenAILLM``
and replaces only the request body and the body parser); the events become chunks in the
sans-IO :mod:`trio_llmstream._core._responses`.

The request
-----------

- Messages become ``input`` items, in order: system and user messages are message items
  (``{"type": "message", "role": ..., "content": text}``); a ``tool`` message is a
  ``function_call_output`` with the ``call_id`` it answers.
- An assistant message becomes, in order: the ``openai.responses`` provider items recorded
  from its response (reasoning items, with ``encrypted_content`` when it was requested, and
  the ``function_call`` items), sent back byte-equal; its text as an assistant message item,
  placed before its first function call (where the Responses API put it); and a
  ``function_call`` item for each tool call no recorded item covers. A recorded call the
  message no longer carries is not sent (an application may drop calls from history). With
  ``store`` False a reasoning item can only go back with its ``encrypted_content``, and a
  recorded call only with its reasoning item: if any reasoning item lacks it, the turn is
  sent rebuilt from its text and calls instead, which the API accepts.
- Tools in the flat form ``{"type": "function", "name", "description", "parameters",
  "strict": false}``: the Responses API makes function tools strict by default, which would
  refuse every schema that is not written for strict mode; ``strict_tools=True`` asks for it.
  ``tool_choice``: ``"auto"``/``"required"``/``"none"`` as is, a named tool as
  ``{"type": "function", "name": ...}``.
- ``store`` is False by default: the conversation lives in the caller's ``ChatContext``, and
  nothing is kept server-side that the caller did not ask for. Reasoning items can then only be
  replayed with their encrypted content, so ``include`` defaults to
  ``["reasoning.encrypted_content"]`` when ``store`` is False and ``reasoning`` is given (a
  reasoning model: the others refuse the field with a 400); pass ``include`` to choose.
  ``reasoning`` (e.g. ``{"effort": "low", "summary": "auto"}``) and ``max_output_tokens`` are
  passed when given; ``extra_body`` and ``ChatRequest.extra`` are
  merged last. ``n`` greater than 1 is not supported by the Responses API: a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx
import msgspec

from .._core._responses import PROVIDER, ResponsesParser
from .._models import ChatMessage, ChatRequest, LLMCapabilities, NamedToolChoice, ProviderItem
from ._http import BodyParser
from .openai import OpenAILLM

__all__ = ["OpenAIResponsesLLM"]

_ENCRYPTED_REASONING = "reasoning.encrypted_content"


def _decoded(data: str) -> dict[str, Any]:
    # A recorded item as JSON ({} if it is not an object we can read).
    try:
        value = msgspec.json.decode(data)
    except (msgspec.MsgspecError, RecursionError, ValueError, OverflowError):
        return {}
    return value if isinstance(value, dict) else {}


def _decoded_call_id(data: str) -> str | None:
    call_id = _decoded(data).get("call_id")
    return call_id if isinstance(call_id, str) else None


def _replayable(items: Sequence[ProviderItem], store: bool) -> bool:
    # Unstored, a reasoning item can only be sent back with its encrypted content (an id alone
    # is "not found"); and a recorded call without the reasoning item it followed is refused
    # ("provided without its required 'reasoning' item"). So if one reasoning item cannot go
    # back, none of the recorded items do: the turn is rebuilt from its text and calls.
    if store:
        return True
    return all(
        _decoded(item.data).get("encrypted_content")
        for item in items
        if item.kind == "reasoning"
    )


def _assistant_items(message: ChatMessage, store: bool) -> list[Any]:
    """The input items of one assistant message (see the module docstring)."""
    out: list[Any] = []
    wanted = {call.call_id for call in message.tool_calls}
    covered: set[str] = set()
    text_placed = not message.content
    recorded = [item for item in message.provider_items if item.provider == PROVIDER]
    if not _replayable(recorded, store):
        recorded = []
    for item in recorded:
        if item.kind == "function_call":
            call_id = _decoded_call_id(item.data)
            if call_id is None or call_id not in wanted or call_id in covered:
                continue
            covered.add(call_id)
            if not text_placed:
                out.append(_text_message("assistant", message.content))
                text_placed = True
        # Byte-equal: the recorded JSON text goes into the body as is.
        out.append(msgspec.Raw(item.data.encode()))
    if not text_placed:
        out.append(_text_message("assistant", message.content))
    for call in message.tool_calls:
        if call.call_id not in covered:
            out.append(
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                }
            )
    return out


def _text_message(role: str, content: str | None) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": content or ""}


def input_items(messages: Sequence[ChatMessage], *, store: bool = False) -> list[Any]:
    """A conversation as Responses ``input`` items (recorded items as ``msgspec.Raw``)."""
    out: list[Any] = []
    for message in messages:
        if message.role == "assistant":
            out.extend(_assistant_items(message, store))
        elif message.role == "tool":
            out.append(
                {
                    "type": "function_call_output",
                    "call_id": message.tool_call_id,
                    "output": message.content or "",
                }
            )
        else:
            out.append(_text_message(message.role, message.content))
    return out


class OpenAIResponsesLLM(OpenAILLM):
    """Streams from the OpenAI Responses API (``POST {base_url}/responses``).

    ``api_key`` falls back to ``$OPENAI_API_KEY`` (sent as a bearer token; never shown in a
    repr, log line, metric or error, even when echoed back). A caller's ``http_client`` is used
    as given and never closed; otherwise the provider owns one, closed by ``aclose()`` /
    ``async with``. ``store``, ``include``, ``reasoning``, ``max_output_tokens`` and
    ``strict_tools`` shape the request (see the module docstring); ``extra_headers`` and
    ``extra_body`` are added to every request. Cancellation: an attempt's connection is closed
    at once and nothing more is read, as for :class:`OpenAILLM`.
    """

    otel_provider_name: ClassVar[str] = "openai"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str = "https://api.openai.com/v1",
        http_client: httpx.AsyncClient | None = None,
        store: bool = False,
        include: Sequence[str] | None = None,
        reasoning: Mapping[str, Any] | None = None,
        max_output_tokens: int | None = None,
        strict_tools: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        label: str | None = None,
        capabilities: LLMCapabilities | None = None,
    ) -> None:
        super().__init__(
            model,
            base_url=base_url,
            api_key=api_key,
            http_client=http_client,
            extra_headers=extra_headers,
            extra_body=extra_body,
            include_usage=False,
            label=label or f"openai-responses:{model}",
            capabilities=capabilities or LLMCapabilities(supports_reasoning=True),
        )
        self._url = f"{self.base_url}/responses"
        self._store = store
        if include is None:
            # Only for reasoning models: the others answer 400 "Encrypted content is not
            # supported with this model" (pydantic-ai #2865).
            include = (_ENCRYPTED_REASONING,) if not store and reasoning is not None else ()
        self._include = list(include)
        self._reasoning = dict(reasoning) if reasoning is not None else None
        self._max_output_tokens = max_output_tokens
        self._strict_tools = strict_tools

    def __repr__(self) -> str:
        auth = "set" if "authorization" in self._headers else "none"
        return (
            f"OpenAIResponsesLLM(model={self.model!r}, base_url={self.base_url!r}, "
            f"api_key={auth})"
        )

    def _parser(self) -> BodyParser:
        return ResponsesParser()

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of one attempt."""
        if request.n is not None and request.n != 1:
            raise ValueError("the Responses API returns one output per request (n must be 1)")
        body: dict[str, Any] = {
            "model": self.model,
            "input": input_items(request.messages, store=self._store),
            "stream": True,
            "store": self._store,
        }
        if self._include:
            body["include"] = list(self._include)
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": dict(t.parameters),
                    "strict": self._strict_tools,
                }
                for t in request.tools
            ]
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        choice = request.tool_choice
        if isinstance(choice, NamedToolChoice):
            body["tool_choice"] = {"type": "function", "name": choice.name}
        elif choice is not None:
            body["tool_choice"] = choice
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if self._reasoning is not None:
            body["reasoning"] = dict(self._reasoning)
        max_tokens = request.max_tokens or self._max_output_tokens
        if max_tokens is not None:
            body["max_output_tokens"] = max_tokens
        body.update(self._extra_body)
        body.update(request.extra)
        return body
