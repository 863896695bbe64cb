"""The OpenAI-compatible chat-completions provider: a thin I/O shell over the sans-IO core.

One attempt is one ``POST {base_url}/chat/completions`` with ``stream: true``. The body is read
with ``aiter_bytes()`` (never ``aiter_lines()``, which splits on characters SSE does not treat as
line ends) and each read goes through :class:`ChatCompletionParser` into the runtime's emitter.
This module does three things the core cannot: it builds the request, it classifies HTTP
statuses and headers into typed errors, and it translates httpx's exceptions into ours — at
exactly one place, :func:`translate_httpx_error`, whose table a test checks covers every httpx
exception class.

Works against OpenAI, vLLM, Ollama's ``/v1``, llama.cpp's server, OpenRouter, Groq and any other
server speaking the same wire format.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import msgspec
import trio

from .._core._openai import ChatCompletionParser
from .._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ProviderError,
    StreamProtocolError,
)
from .._llm import LLM, AttemptInfo, ChunkEmitter
from .._models import ChatMessage, ChatRequest, LLMCapabilities, NamedToolChoice

__all__ = ["OpenAILLM", "translate_httpx_error"]

# An error body is read for its message, never without bound.
MAX_ERROR_BODY = 64 * 1024
# After [DONE], the rest of the body (normally just the end of the chunked encoding) is drained
# so the connection can go back to the pool, within these bounds.
DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 0.05

_encoder = msgspec.json.Encoder()


def _message(exc: httpx.HTTPError | httpx.StreamError | httpx.InvalidURL) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _timeout_limit(limit: str) -> Callable[[Any, float | None], APIError]:
    def make(exc: Any, seconds: float | None) -> APIError:
        return APITimeoutError(limit, seconds or 0.0)  # type: ignore[arg-type]

    return make


def _connection(retryable: bool) -> Callable[[Any, float | None], APIError]:
    def make(exc: Any, seconds: float | None) -> APIError:
        return APIConnectionError(_message(exc), retryable=retryable)

    return make


def _protocol(exc: Any, seconds: float | None) -> APIError:
    return StreamProtocolError(_message(exc))


def _status(exc: Any, seconds: float | None) -> APIError:
    response = exc.response
    return APIStatusError(_message(exc), status_code=response.status_code)


def _usage_bug(exc: Any, seconds: float | None) -> APIError:
    # Misuse of httpx's streaming API is a bug in the caller's client set-up or in us:
    # reported as a non-retryable connection error naming the httpx class.
    return APIConnectionError(f"httpx misuse: {_message(exc)}", retryable=False)


# Every httpx exception class, most specific first where it matters, to our error. Timeouts:
# a pool or write timeout is part of getting the request out (the "connect" limit); a read
# timeout cannot happen with read=None, but if a caller's client sets one it is an idle gap.
HTTPX_ERRORS: dict[type[Exception], Callable[[Any, float | None], APIError]] = {
    httpx.ConnectTimeout: _timeout_limit("connect"),
    httpx.PoolTimeout: _timeout_limit("connect"),
    httpx.WriteTimeout: _timeout_limit("connect"),
    httpx.ReadTimeout: _timeout_limit("idle"),
    httpx.TimeoutException: _timeout_limit("connect"),
    httpx.ConnectError: _connection(True),
    httpx.ReadError: _connection(True),
    httpx.WriteError: _connection(True),
    httpx.CloseError: _connection(True),
    httpx.NetworkError: _connection(True),
    httpx.RemoteProtocolError: _connection(True),  # e.g. peer closed mid-body
    httpx.LocalProtocolError: _connection(False),
    httpx.ProtocolError: _connection(True),
    httpx.ProxyError: _connection(True),
    httpx.UnsupportedProtocol: _connection(False),
    httpx.TransportError: _connection(True),
    httpx.DecodingError: _protocol,
    httpx.TooManyRedirects: _connection(False),
    httpx.HTTPStatusError: _status,
    httpx.RequestError: _connection(True),
    httpx.HTTPError: _connection(True),
    httpx.InvalidURL: _connection(False),
    httpx.CookieConflict: _usage_bug,
    httpx.StreamConsumed: _usage_bug,
    httpx.StreamClosed: _usage_bug,
    httpx.ResponseNotRead: _usage_bug,
    httpx.RequestNotRead: _usage_bug,
    httpx.StreamError: _usage_bug,
}

HTTPXError = (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL, httpx.CookieConflict)


def translate_httpx_error(exc: Exception, *, connect_timeout: float | None = None) -> APIError:
    """Our error for an httpx exception: the one place where httpx errors are translated."""
    for cls in type(exc).__mro__:
        make = HTTPX_ERRORS.get(cls)
        if make is not None:
            return make(exc, connect_timeout)
    return APIConnectionError(_message(exc))  # type: ignore[arg-type]  # pragma: no cover


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms``, then ``retry-after`` (seconds
    or an HTTP date). None if absent or unparsable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if value >= 0 else None


def _should_retry(headers: httpx.Headers) -> bool | None:
    value: str | None = headers.get("x-should-retry")
    if value is None:
        return None
    return value.strip().lower() == "true"


def _error_message(body: bytes) -> tuple[str, object]:
    text = body.decode("utf-8", "replace")
    try:
        parsed: object = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return (text[:300] or "(empty body)"), text
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"], parsed
        if isinstance(err, str):
            return err, parsed
    return text[:300], parsed


class _RequestBody(httpx.AsyncByteStream):
    """The request body as a stream whose iterator is not an async generator.

    httpx wraps ``content=bytes`` in a stream iterated by an async generator; a send cut
    short (cancellation, a dropped connection) leaves that generator suspended, and trio
    reports it as a ResourceWarning when it is collected. A plain iterator has nothing to
    finalize.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._data)


class _Once:
    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


async def _unwind(response: httpx.Response, body: AsyncIterator[bytes]) -> None:
    """Close ``response`` and let httpx's chain of body generators finish.

    Leaving ``aiter_bytes()`` early (an error, [DONE] before the end of the body, or
    cancellation while the consumer holds us up) leaves httpx's inner async generators
    suspended; garbage-collected later, trio reports each as a ResourceWarning (httpx #3686),
    and closing the outer generator does not reach the inner ones. Closing the response and
    resuming the outer generator makes the innermost read fail, and that exception unwinds
    every level. Shielded and bounded: it runs also when the attempt is being cancelled.
    """
    if getattr(body, "ag_frame", True) is None:  # the generator already finished
        return
    with trio.CancelScope(shield=True):
        await response.aclose()
        with trio.move_on_after(1.0):
            try:
                async for _ in body:
                    pass
            except Exception:
                pass  # the response is closed: an error here is expected


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
    else:
        out["content"] = message.content if message.content is not None else ""
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None and message.role != "tool":
        out["name"] = message.name
    return out


class OpenAILLM(LLM):
    """Streams chat completions from an OpenAI-compatible ``/chat/completions`` endpoint.

    ``api_key`` falls back to ``$OPENAI_API_KEY``; without either no Authorization header is
    sent (local servers). The key never appears in a repr, a log line, an exception or metrics.
    A caller-supplied ``http_client`` is used as given (transport, limits, proxies) and never
    closed here; otherwise the provider owns one, closed by ``aclose()`` / ``async with``.
    ``extra_headers`` and ``extra_body`` are added to every request.
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
            "content-type": "application/json",
        }
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._headers.update(extra_headers or {})
        self._extra_body = dict(extra_body or {})
        self._include_usage = include_usage
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100)
        )

    def __repr__(self) -> str:
        # Never the key; only whether one is set.
        auth = "set" if "authorization" in self._headers else "none"
        return f"OpenAILLM(model={self.model!r}, base_url={self.base_url!r}, api_key={auth})"

    @property
    def http_client(self) -> httpx.AsyncClient:
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client if this provider created it (not a caller's). Idempotent."""
        if self._owns_client:
            await self._client.aclose()

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
        if request.n is not None:
            body["n"] = request.n
        if request.parallel_tool_calls is not None and request.tools:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        body.update(self._extra_body)
        body.update(request.extra)
        return body

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        """One POST, streamed into ``emit``. Cancellation closes the response and its
        connection at once."""
        connect = attempt.timeouts.connect
        timeout = httpx.Timeout(connect=connect, read=None, write=connect, pool=connect)
        content = _encoder.encode(self.build_body(request))
        http_request = self._client.build_request(
            "POST", self._url, content=content, headers=self._headers, timeout=timeout
        )
        http_request.stream = _RequestBody(content)
        try:
            response = await self._client.send(http_request, stream=True)
            try:
                await self._read(response, emit)
            finally:
                await response.aclose()
        except HTTPXError as exc:
            raise translate_httpx_error(exc, connect_timeout=connect) from exc

    async def _read(self, response: httpx.Response, emit: ChunkEmitter) -> None:
        request_id = response.headers.get("x-request-id")
        if response.status_code >= 300:
            raise await self._status_error(response, request_id)
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            raise await self._json_instead_of_stream(response, request_id)
        body = response.aiter_bytes()
        try:
            await self._stream_body(body, emit, request_id)
        finally:
            await _unwind(response, body)

    async def _stream_body(
        self, body: AsyncIterator[bytes], emit: ChunkEmitter, request_id: str | None
    ) -> None:
        parser = ChatCompletionParser()
        async for data in body:
            chunks = parser.feed(data)
            # A read of keep-alive comments only (it starts with ":") is not data: it must not
            # reset the idle clock (a server pinging forever is still stalled). An int
            # comparison: no slice allocated per read.
            if chunks or (data and data[0] != 0x3A):
                await emit.send(chunks)
            if parser.finished:
                break
        else:
            await emit.send(parser.end())
        error = parser.error
        if error is not None:
            if error.request_id is None:
                error.request_id = request_id
            raise error
        # Finished: drain what little follows [DONE] so the connection can be reused.
        drained = 0
        with trio.move_on_after(DRAIN_SECONDS):
            async for data in body:
                drained += len(data)
                if drained > DRAIN_BYTES:
                    break

    async def _bounded_body(self, response: httpx.Response) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for data in response.aiter_bytes():
            parts.append(data)
            size += len(data)
            if size >= MAX_ERROR_BODY:
                break
        return b"".join(parts)[:MAX_ERROR_BODY]

    async def _status_error(
        self, response: httpx.Response, request_id: str | None
    ) -> APIStatusError:
        body = await self._bounded_body(response)
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
        self, response: httpx.Response, request_id: str | None
    ) -> APIError:
        body = await self._bounded_body(response)
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
