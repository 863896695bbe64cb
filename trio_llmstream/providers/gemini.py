"""The Google Gemini provider: ``streamGenerateContent?alt=sse``, a thin I/O shell over the core.

One attempt is one ``POST {base_url}/models/{model}:streamGenerateContent?alt=sse`` with the
key in the ``x-goog-api-key`` header (never in the URL, where proxies and access logs would
keep it). The body is read exactly as :mod:`trio_llmstream.providers._http` reads every body —
raw transport reads, identity encoding requested, bounded inflation, windows, the quiet-bytes
bound, early exit without reading on — and fed to :class:`GeminiStreamParser`, which adds what
Gemini needs on top of the SSE framing: a stream is complete only when every candidate has a
``finishReason`` (there is no ``[DONE]``), and an error object after some frames, framed or
raw, is a ``ProviderError`` (see ``_core/_gemini.py``). httpx exceptions are translated by the
one boundary, :func:`~trio_llmstream.providers._http.translate_httpx_error`.

The request. ``ChatContext`` messages become ``contents``: system messages are joined into
``systemInstruction``; user messages are ``user`` turns; assistant messages are ``model`` turns
whose parts are, in order, the thought part (only when a thought signature must go back on it),
the text, and one ``functionCall`` part per call with its ``args`` embedded as the exact JSON
text the model sent; each ``thoughtSignature`` the stream delivered (a ``ProviderItem`` of kind
``thought_signature``) goes back, byte-equal, on the part it came on (the call with the same
id, the text part, or the thought part). Tool results become ``functionResponse`` parts of a
``user`` turn: the call's name and, as ``response``, the result's JSON object, or
``{"result": <value or text>}`` for anything else (Gemini requires an object). Consecutive turns
of one role are merged, so the results of parallel calls travel together. Call ids the server
gave are sent back on both the call and its response; the ids this library generated
(``call_<n>``) are not, since the server never issued them. Tools become one
``{"functionDeclarations": [...]}`` with each schema as ``parametersJsonSchema`` (full JSON
Schema; ``parameters`` only takes Gemini's OpenAPI subset); ``tool_choice`` becomes
``toolConfig.functionCallingConfig`` (``auto`` -> AUTO, ``required`` -> ANY, ``none`` -> NONE,
a named tool -> ANY with ``allowedFunctionNames``); ``n`` -> ``candidateCount``,
``temperature`` -> ``generationConfig``.

Secrets: every exception leaving :meth:`GeminiLLM.run_attempt` is scrubbed of the key by one
:class:`~trio_llmstream.providers._redact.Redactor`.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import httpx
import msgspec

from .._core._gemini import GeminiStreamParser, gemini_error
from .._exceptions import APIError, APIStatusError, StreamProtocolError
from .._models import ChatMessage, ChatRequest, LLMCapabilities, NamedToolChoice, ProviderItem
from ._http import (
    StreamingHTTPLLM,
    _should_retry,
    parse_retry_after,
)
from ._redact import Redactor

__all__ = ["GeminiLLM"]

DEFAULT_BASE_URL: Final = "https://generativelanguage.googleapis.com/v1beta"
MAX_ERROR_BODY: Final = 64 * 1024
_GENERATED_ID = re.compile(r"call_\d+")
_decode_any = msgspec.json.Decoder().decode
_TOOL_MODES: Final = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


# -- request building -----------------------------------------------------------------------------


def _signatures(items: Sequence[ProviderItem]) -> list[dict[str, Any]]:
    # The thought signatures among an assistant message's items; others (and items that are
    # not ours or not valid JSON, which a user may have built by hand) are skipped.
    found: list[dict[str, Any]] = []
    for item in items:
        if item.provider != "gemini" or item.kind != "thought_signature":
            continue
        try:
            info = _decode_any(item.data)
        except (msgspec.MsgspecError, RecursionError, ValueError):
            continue
        if isinstance(info, dict) and isinstance(info.get("signature"), str):
            found.append(info)
    return found


def _args(arguments: str) -> Any:
    # The call's arguments embedded byte-equal when they are a JSON object (they are what the
    # model sent); a hand-made call with other text is wrapped so the request stays valid.
    try:
        value = _decode_any(arguments)
    except (msgspec.MsgspecError, RecursionError, ValueError):
        return {"arguments": arguments}
    if isinstance(value, dict):
        return msgspec.Raw(arguments.encode())
    return {"arguments": value}


def _server_id(call_id: str) -> bool:
    return _GENERATED_ID.fullmatch(call_id) is None


def _model_parts(message: ChatMessage) -> list[dict[str, Any]]:
    sigs = _signatures(message.provider_items)

    def take(kind: str, call_id: str | None = None) -> str | None:
        for info in sigs:
            if info.get("type") == kind and (call_id is None or info.get("call_id") == call_id):
                sigs.remove(info)
                signature: str = info["signature"]
                return signature
        return None

    parts: list[dict[str, Any]] = []
    thought_sig = take("thought")
    if thought_sig is not None:
        parts.append(
            {"text": message.reasoning or "", "thought": True, "thoughtSignature": thought_sig}
        )
    text_sig = take("text")
    if message.content or text_sig is not None:
        part: dict[str, Any] = {"text": message.content or ""}
        if text_sig is not None:
            part["thoughtSignature"] = text_sig
        parts.append(part)
    for call in message.tool_calls:
        fc: dict[str, Any] = {"name": call.name, "args": _args(call.arguments)}
        if _server_id(call.call_id):
            fc["id"] = call.call_id
        part = {"functionCall": fc}
        sig = take("function_call", call.call_id)
        if sig is not None:
            part["thoughtSignature"] = sig
        parts.append(part)
    return parts


def _response_object(output: str | None) -> Any:
    text = output or ""
    try:
        value = _decode_any(text)
    except (msgspec.MsgspecError, RecursionError, ValueError):
        return {"result": text}
    if isinstance(value, dict):
        return msgspec.Raw(text.encode())
    return {"result": value}


def build_contents(
    messages: Sequence[ChatMessage],
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """``contents`` and ``systemInstruction`` (or None) for a conversation."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call id -> function name, from the latest assistant turns

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for message in messages:
        role = message.role
        if role == "system":
            if message.content:
                system.append(message.content)
        elif role == "user":
            add("user", [{"text": message.content or ""}])
        elif role == "assistant":
            for call in message.tool_calls:
                names[call.call_id] = call.name
            add("model", _model_parts(message))
        else:
            call_id = message.tool_call_id or ""
            response: dict[str, Any] = {
                "name": message.name or names.get(call_id, ""),
                "response": _response_object(message.content),
            }
            if call_id and _server_id(call_id):
                response["id"] = call_id
            add("user", [{"functionResponse": response}])
    instruction = {"parts": [{"text": "\n\n".join(system)}]} if system else None
    return contents, instruction


# -- errors ---------------------------------------------------------------------------------------


def _error_object(parsed: object) -> dict[str, Any] | None:
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error: dict[str, Any] = parsed["error"]
        return error
    return None


def _retry_delay(error: Mapping[str, Any]) -> float | None:
    # google.rpc.RetryInfo in the details: {"@type": ".../google.rpc.RetryInfo",
    # "retryDelay": "13s"} (a Duration in its JSON form: seconds with an "s").
    details = error.get("details")
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    seconds = float(delay[:-1])
                except ValueError:
                    return None
                if math.isfinite(seconds) and seconds >= 0:
                    return seconds
    return None


class GeminiLLM(StreamingHTTPLLM):
    """Streams from Google Gemini's ``streamGenerateContent`` with ``alt=sse``.

    ``api_key`` falls back to ``$GEMINI_API_KEY``, then ``$GOOGLE_API_KEY``; it is sent in the
    ``x-goog-api-key`` header, never in the URL, and never appears in a repr, an exception,
    a log line or metrics (even when the upstream echoes it). A caller's ``http_client`` is used
    as given and never closed; otherwise the provider owns one, closed by ``aclose()`` /
    ``async with``. ``include_thoughts`` asks for thought summaries (streamed as
    ``reasoning``); ``max_output_tokens`` sets ``generationConfig.maxOutputTokens``;
    ``extra_headers`` and ``extra_body`` are added to every request (``extra_body`` and a
    request's ``extra`` at the top level of the body). An attempt returns normally only when
    every candidate has finished (Gemini has no ``[DONE]``).
    """

    otel_provider_name = "gcp.gemini"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        http_client: httpx.AsyncClient | None = None,
        include_thoughts: bool = False,
        max_output_tokens: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        label: str | None = None,
        capabilities: LLMCapabilities | None = None,
    ) -> None:
        super().__init__(
            label=label or f"gemini:{model}",
            capabilities=capabilities or LLMCapabilities(supports_reasoning=True),
        )
        self.model = model
        self.base_url = base_url.rstrip("/")
        name = model.removeprefix("models/")
        self._url = (
            f"{self.base_url}/models/{urllib.parse.quote(name, safe='-._~')}"
            ":streamGenerateContent?alt=sse"
        )
        key = api_key
        if key is None:
            key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        self._headers: dict[str, str] = {
            "accept": "text/event-stream",
            "accept-encoding": "identity",
            "content-type": "application/json",
        }
        if key:
            self._headers["x-goog-api-key"] = key
        self._headers.update(extra_headers or {})
        self._redactor = Redactor(key or None)
        self._include_thoughts = include_thoughts
        self._max_output_tokens = max_output_tokens
        self._extra_body = dict(extra_body or {})
        self._use_client(http_client)

    def __repr__(self) -> str:
        auth = "set" if "x-goog-api-key" in self._headers else "none"
        return f"GeminiLLM(model={self.model!r}, base_url={self.base_url!r}, api_key={auth})"

    @property
    def url(self) -> str:
        """The endpoint every attempt POSTs to (no secret in it)."""
        return self._url

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of one attempt (values may be ``msgspec.Raw``: exact JSON text)."""
        contents, instruction = build_contents(request.messages)
        body: dict[str, Any] = {"contents": contents}
        if instruction is not None:
            body["systemInstruction"] = instruction
        if request.tools:
            body["tools"] = [
                {
                    "functionDeclarations": [
                        {
                            "name": t.name,
                            "description": t.description,
                            "parametersJsonSchema": dict(t.parameters),
                        }
                        for t in request.tools
                    ]
                }
            ]
        choice = request.tool_choice
        if choice is not None:
            if isinstance(choice, NamedToolChoice):
                config: dict[str, Any] = {"mode": "ANY", "allowedFunctionNames": [choice.name]}
            else:
                config = {"mode": _TOOL_MODES[choice]}
            body["toolConfig"] = {"functionCallingConfig": config}
        generation: dict[str, Any] = {}
        if request.temperature is not None:
            generation["temperature"] = request.temperature
        if request.n is not None:
            generation["candidateCount"] = request.n
        max_tokens = request.max_tokens or self._max_output_tokens
        if max_tokens is not None:
            generation["maxOutputTokens"] = max_tokens
        if self._include_thoughts:
            generation["thinkingConfig"] = {"includeThoughts": True}
        if generation:
            body["generationConfig"] = generation
        body.update(self._extra_body)
        body.update(request.extra)
        return body

    def _parser(self) -> GeminiStreamParser:
        return GeminiStreamParser()

    async def _status_error(
        self, response: httpx.Response, reads: AsyncIterator[bytes], request_id: str | None
    ) -> APIStatusError:
        body = await self._bounded_body(response, reads)
        text = body.decode("utf-8", "replace")
        try:
            parsed: object = _decode_any(body)
        except (msgspec.MsgspecError, RecursionError, ValueError):
            parsed = text
        error = _error_object(parsed)
        retry_after = parse_retry_after(response.headers)
        if error is not None:
            message = error.get("message")
            status = error.get("status")
            shown = message if isinstance(message, str) and message else text[:300]
            if isinstance(status, str) and status:
                shown = f"{status}: {shown}"
            if retry_after is None:
                retry_after = _retry_delay(error)
        else:
            shown = text[:300] or "(empty body)"
        return APIStatusError(
            shown,
            status_code=response.status_code,
            body=parsed,
            request_id=request_id,
            retry_after=retry_after,
            retryable=_should_retry(response.headers),
        )

    async def _json_instead_of_stream(
        self, response: httpx.Response, reads: AsyncIterator[bytes], request_id: str | None
    ) -> APIError:
        body = await self._bounded_body(response, reads)
        try:
            parsed: object = _decode_any(body)
        except (msgspec.MsgspecError, RecursionError, ValueError):
            parsed = None
        error = _error_object(parsed)
        if error is not None:
            return gemini_error(error, request_id=request_id)
        excerpt = body[:200].decode("utf-8", "replace")
        return StreamProtocolError(
            f"expected text/event-stream, got application/json: {excerpt}",
            request_id=request_id,
        )
