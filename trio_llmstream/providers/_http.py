"""What every HTTP provider shares: one attempt's request, its body read with bounded memory,
and httpx's exceptions translated at one place.

Each provider (``openai.py``, ``responses.py``, ``anthropic.py``, ``gemini.py``) builds its
own request and classifies its own statuses and error shapes; the attempt flow
(:func:`post_streaming`: send with the headers limit, unwind, translate), the read loop
(:func:`pump_body`), the error-body reader and the not-an-event-stream error are written here
once. :func:`translate_httpx_error`'s table covers every httpx exception class (a test checks).

Reading the body. The raw bytes are read from ``response.stream`` (never ``aiter_lines()``,
which splits on characters SSE does not treat as line ends, nor ``aiter_bytes()``, which
inflates without bound) and fed to the protocol's parser in windows of at most
:data:`READ_WINDOW` bytes. After each window that completed a data event (the parser's
``progress`` moved) the chunks go to ``emit.send``; windows of keep-alive comments, blank lines
or partial lines never call it, so they never look like progress to the runtime's clocks. More
than :data:`MAX_QUIET_BYTES` of body without a complete data event is a
``StreamProtocolError``: no legitimate server sends megabytes of nothing.

Compression. Every request says ``accept-encoding: identity``: an event stream gains little from
compression (events are small and flushed one by one) and httpx inflates a compressed read
without any bound (about 64 MiB of output per network read; a 0.1 MiB gzip body held hundreds of
MiB). A server or proxy may compress anyway: ``gzip`` and ``deflate`` bodies are then inflated
incrementally, at most :data:`READ_WINDOW` bytes at a time, each window parsed before the next is
produced, so memory stays within the parser's line and event limits whatever the ratio. Any
other encoding (``br``, ``zstd``...) is a ``StreamProtocolError`` naming it; error bodies are
read under the same rules, up to :data:`MAX_ERROR_BODY` decoded bytes.

Content type. A 200 must be an event stream: ``text/event-stream`` (any parameters, any case)
or no content type at all (minimal OpenAI-compatible servers omit it). ``application/json``
holding an error object is a ``ProviderError``; any other type (a proxy's HTML page, plain
text) is a ``StreamProtocolError`` naming the type and quoting the start of the body. Not
retryable: a proxy that answers with a login or error page answers the same way again.

Leaving early. When an attempt ends before its body does (an error, ``[DONE]`` before the end,
the consumer leaving, a time limit), the response is closed and the chain of httpx's body
generators is closed innermost first, without reading another byte on any transport (see
:func:`_close_chain`).
"""

from __future__ import annotations

import contextlib
import email.utils
import gc
import math
import time
import types
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

import httpx
import msgspec
import trio

from .._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    StreamProtocolError,
)
from .._llm import LLM, AttemptInfo, ChunkEmitter
from .._models import ChatChunk, ChatRequest
from .._options import Timeouts
from ._redact import Redactor

__all__ = [
    "BodyParser",
    "StreamingHTTPLLM",
    "not_a_stream_error",
    "parse_retry_after",
    "post_streaming",
    "pump_body",
    "read_error_body",
    "translate_httpx_error",
]

# An error body is read for its message, never without bound (decoded bytes).
MAX_ERROR_BODY = 64 * 1024
# The most body bytes (after decoding) handed to the parser at once. Network reads are at most
# 64 KiB anyway; a larger one (an in-process transport, a decompressed read) is cut up, so the
# parser's own working memory stays proportional to this window and its line/event limits.
READ_WINDOW = 64 * 1024
# The most body bytes (after decoding) without a complete data event: several times the
# parser's line and event limits (1 MiB), far beyond any keep-alive padding.
MAX_QUIET_BYTES = 4 * (1 << 20)
# What a 200 may be labelled as (the media type, lower-cased, without parameters); "" means the
# header is absent.
EVENT_STREAM_TYPES = frozenset({"text/event-stream", ""})
# Content encodings decoded here, with bounded output (see the module docstring).
_ZLIB_WBITS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}
# After [DONE], the rest of the body (normally just the end of the chunked encoding) is drained
# so the connection can go back to the pool, within these bounds.
DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 0.05



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


class _Inflater:
    """Incremental gzip/deflate decoding whose output comes in windows of bounded size.

    ``zlib``'s ``max_length`` stops inflating when a window is full and keeps the rest of the
    input as ``unconsumed_tail``; the next window is produced only when the caller asks for it,
    after it has parsed the previous one. Trailing bytes after the end of the compressed data
    are ignored, as httpx does. ``deflate`` is zlib-wrapped by the standard and raw by some
    servers: the first two bytes tell which (a zlib header is a multiple of 31 with method 8).
    """

    __slots__ = ("_decompressor", "_head", "encoding")

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._head = b""
        self._decompressor: Any = None
        if encoding != "deflate":
            self._decompressor = zlib.decompressobj(_ZLIB_WBITS[encoding])

    def windows(self, data: bytes) -> Iterator[bytes]:
        d = self._decompressor
        if d is None:
            head = self._head = self._head + data
            if len(head) < 2:
                return
            zlib_wrapped = head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
            d = self._decompressor = zlib.decompressobj(
                zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS
            )
            data, self._head = head, b""
        pending = data
        while not d.eof:
            try:
                out = d.decompress(pending, READ_WINDOW)
            except zlib.error as exc:
                raise StreamProtocolError(
                    f"the body is not valid {self.encoding} ({exc})", retryable=False
                ) from None
            if out:
                yield out
            pending = d.unconsumed_tail
            # A full window may leave output pending inside zlib even when all input was taken.
            if not pending and len(out) < READ_WINDOW:
                return


def _identity_windows(data: bytes) -> Iterator[bytes]:
    if len(data) <= READ_WINDOW:
        yield data
        return
    view = memoryview(data)
    for start in range(0, len(data), READ_WINDOW):
        yield bytes(view[start : start + READ_WINDOW])


def _body_decoder(headers: httpx.Headers) -> Callable[[bytes], Iterator[bytes]]:
    """How to turn raw reads into bounded windows of body bytes, by ``content-encoding``."""
    value = headers.get("content-encoding", "")
    codings = [c.strip().lower() for c in value.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return _identity_windows
    if len(codings) == 1 and codings[0] in _ZLIB_WBITS:
        return _Inflater(codings[0]).windows
    raise StreamProtocolError(
        f"unsupported content-encoding {value!r} (identity was requested; gzip and deflate "
        "are decoded)",
        retryable=False,
    )


def _media_type(headers: httpx.Headers) -> str:
    value: str = headers.get("content-type", "")
    return value.split(";", 1)[0].strip().lower()


def _reads(response: httpx.Response) -> AsyncIterator[bytes]:
    """The response's raw (not decoded) reads, straight from its transport stream."""
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream):  # pragma: no cover - a sync transport
        raise APIConnectionError(
            "httpx misuse: the response stream is synchronous", retryable=False
        )
    return stream.__aiter__()


def _suspended_chain(reads: AsyncIterator[bytes]) -> list[types.AsyncGeneratorType[Any, Any]]:
    # The async generators suspended under ``reads``, outermost first. Each level of httpx's
    # body (client, transport, httpcore pool, connection, the connection's receive loop, or an
    # in-process transport's own generator) iterates the next with ``async for``, which keeps
    # the inner generator only on the suspended frame's value stack: the garbage collector's
    # view of the outer generator is the one public way to reach it.
    chain: list[types.AsyncGeneratorType[Any, Any]] = []
    current: object = reads
    while (
        isinstance(current, types.AsyncGeneratorType)
        and current.ag_frame is not None
        and not current.ag_running
        and len(chain) < 32
    ):
        chain.append(current)
        inner = [
            ref
            for ref in gc.get_referents(current)
            if isinstance(ref, types.AsyncGeneratorType) and ref is not current
        ]
        current = inner[0] if len(inner) == 1 else None
    return chain


async def _close_chain(reads: AsyncIterator[bytes]) -> None:
    """Close every suspended generator under ``reads``, innermost first, reading nothing.

    Closing only the outermost generator would drop the inner ones unfinished, and trio
    reports each as a ResourceWarning when it is collected (httpx #3686). Resuming the chain
    until it ends (closing the response first, so that the innermost read fails) does finish
    every level, but on a transport whose body does not stop at ``aclose()`` (an
    ``httpx.MockTransport`` body, an in-process ASGI app) it reads the whole rest of the body.
    Closing innermost first throws ``GeneratorExit`` at each level's ``yield``: no level reads,
    and each outer level then drops an inner generator that has already finished.
    """
    for generator in reversed(_suspended_chain(reads)):
        # A level failing to clean up must not stop the others from closing.
        with contextlib.suppress(Exception):
            await generator.aclose()


async def _unwind(response: httpx.Response, reads: AsyncIterator[bytes]) -> None:
    """Close ``response`` (and its connection, unless it was read to the end) and the chain of
    body generators under ``reads``. Reads no further byte. Shielded and bounded: it runs also
    when the attempt is being cancelled."""
    with trio.CancelScope(shield=True):
        with trio.move_on_after(1.0):
            await response.aclose()
            await _close_chain(reads)


async def post_streaming(
    client: httpx.AsyncClient,
    url: str,
    content: bytes,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    read: Callable[[httpx.Response, AsyncIterator[bytes]], Awaitable[None]],
) -> None:
    """POST ``content`` and hand the streamed response and its raw reads to ``read``: the
    attempt flow every provider shares. ``timeouts.connect`` bounds connecting, writing and
    waiting for a pooled connection, ``timeouts.headers`` the wait for the response headers;
    the body is always unwound (closed, reading nothing more) however ``read`` ends, and
    httpx's exceptions are translated here. Cancellation: closes the response and its
    connection at once.
    """
    connect = timeouts.connect
    timeout = httpx.Timeout(connect=connect, read=None, write=connect, pool=connect)
    http_request = client.build_request(
        "POST", url, content=content, headers=headers, timeout=timeout
    )
    http_request.stream = _RequestBody(content)
    headers_limit = timeouts.headers
    try:
        with trio.move_on_after(math.inf if headers_limit is None else headers_limit) as wait:
            response = await client.send(http_request, stream=True)
        if wait.cancelled_caught:
            assert headers_limit is not None
            # Had the attempt itself been cancelled at the same moment, that wins.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise APITimeoutError("headers", headers_limit)
        reads = _reads(response)
        try:
            await read(response, reads)
        finally:
            await _unwind(response, reads)
    except HTTPXError as exc:
        raise translate_httpx_error(exc, connect_timeout=connect) from exc


class BodyParser(Protocol):
    """What :func:`pump_body` needs of a protocol's bytes-level parser."""

    @property
    def progress(self) -> int: ...

    @property
    def finished(self) -> bool: ...

    @property
    def error(self) -> APIError | None: ...

    def feed(self, data: bytes) -> list[ChatChunk]: ...

    def end(self) -> list[ChatChunk]: ...


async def pump_body(
    parser: BodyParser,
    reads: AsyncIterator[bytes],
    decode: Callable[[bytes], Iterator[bytes]],
    emit: ChunkEmitter,
    request_id: str | None,
) -> None:
    """Feed a streamed response body to ``parser`` and its chunks to ``emit``: the read loop
    every provider shares, whatever its protocol's parser.

    One ``send`` per read (window) that completed a data event, never for keep-alives or
    partial lines; at most ``MAX_QUIET_BYTES`` of body without one; the parser's error (with
    the response's request id) raised after the chunks before it; a short drain after the
    terminal event so the connection can be reused. Cancellation: stops in the read or the
    send it lands in, before any further read; the caller closes the response.
    """
    quiet = 0  # body bytes since the last complete data event
    identity = decode is _identity_windows
    async for data in reads:
        # The common read (uncompressed, at most one window) skips the window generator.
        windows = (data,) if identity and len(data) <= READ_WINDOW else decode(data)
        for window in windows:
            progress = parser.progress
            chunks = parser.feed(window)
            # Progress is a complete data event, not a byte: keep-alive comments, blank
            # lines and partial lines never call send, so they never reset the runtime's
            # idle clock. A normal read is one window, so this is one send per read.
            if chunks or parser.progress != progress:
                quiet = 0
                await emit.send(chunks)
            else:
                quiet += len(window)
            if parser.finished:
                break
            if quiet > MAX_QUIET_BYTES:
                raise StreamProtocolError(
                    f"more than {MAX_QUIET_BYTES} bytes of body without a complete event",
                    request_id=request_id,
                )
        if parser.finished:
            break
        # No cancellation check here: a cancelled attempt stops before its next read all the
        # same. It can only be cancelled while suspended, in the transport (a trio socket read
        # checks first) or in ``emit.send``, which raises Cancelled after a wait for the
        # consumer that a cancellation met (see ``_AttemptEmitter._wait_taken``).
    else:
        progress = parser.progress
        chunks = parser.end()
        if chunks or parser.progress != progress:
            await emit.send(chunks)
    error = parser.error
    if error is not None:
        if error.request_id is None:
            error.request_id = request_id
        raise error
    # Finished: drain what little follows [DONE] so the connection can be reused.
    drained = 0
    with trio.move_on_after(DRAIN_SECONDS):
        async for data in reads:
            drained += len(data)
            if drained > DRAIN_BYTES:
                break


async def read_error_body(
    response: httpx.Response, reads: AsyncIterator[bytes], redactor: Redactor
) -> bytes:
    """An error response's body for its message: at most ``MAX_ERROR_BODY`` decoded bytes,
    inflated window by window, with the key taken out before anything is parsed or quoted."""
    # At most MAX_ERROR_BODY decoded bytes, inflated window by window; the key is taken
    # out before anything is parsed or quoted (run_attempt scrubs the result again).
    try:
        decode = _body_decoder(response.headers)
    except StreamProtocolError as exc:
        return f"(body not decoded: {exc})".encode()
    parts: list[bytes] = []
    size = 0
    try:
        async for data in reads:
            for window in decode(data):
                parts.append(window)
                size += len(window)
                if size >= MAX_ERROR_BODY:
                    break
            if size >= MAX_ERROR_BODY:
                break
    except StreamProtocolError:
        pass  # a corrupt compressed error body: what was decoded is still worth quoting
    return redactor.data(b"".join(parts)[:MAX_ERROR_BODY])


async def not_a_stream_error(
    response: httpx.Response,
    reads: AsyncIterator[bytes],
    redactor: Redactor,
    request_id: str | None,
) -> StreamProtocolError:
    """The error for a 200 that is not an event stream (a proxy's HTML page, say): names the
    content type and quotes the start of the body; not retryable, the same answer comes
    again."""
    body = await read_error_body(response, reads, redactor)
    excerpt = " ".join(body[:400].decode("utf-8", "replace").split())[:200]
    content_type = response.headers.get("content-type", "")
    return StreamProtocolError(
        f"expected text/event-stream, got {content_type!r}"
        + (f": {excerpt}" if excerpt else " (empty body)"),
        retryable=False,
        request_id=request_id,
    )


_encode_json = msgspec.json.Encoder().encode


class StreamingHTTPLLM(LLM):
    """What every HTTP provider's attempt is: one POST to ``_url``, its response judged and its
    body pumped into the protocol's parser, every exception scrubbed of the key on the way out.

    A provider sets ``_url``, ``_headers`` and ``_redactor`` and calls :meth:`_use_client` in
    its constructor, and supplies :meth:`build_body` (or :meth:`encode_body`), :meth:`_parser`,
    :meth:`_status_error` and :meth:`_json_instead_of_stream`; ``request_id_headers`` names
    the response headers that carry its request id (the first present wins).
    """

    request_id_headers: tuple[str, ...] = ("x-request-id",)

    _url: str
    _headers: dict[str, str]
    _redactor: Redactor
    _client: httpx.AsyncClient
    _owns_client: bool

    def _use_client(self, http_client: httpx.AsyncClient | None) -> None:
        # A caller's client is used as given and never closed here; our own has no
        # connection cap (streams are long) and keeps 100 idle connections.
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100)
        )

    @property
    def http_client(self) -> httpx.AsyncClient:
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client if this provider created it (not a caller's). Idempotent."""
        if self._owns_client:
            await self._client.aclose()

    def build_body(self, request: ChatRequest) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_body(self, request: ChatRequest) -> bytes:
        """The bytes of one attempt's JSON body (``msgspec.Raw`` values in it spliced verbatim)."""
        return _encode_json(self.build_body(request))

    def _parser(self) -> BodyParser:  # pragma: no cover - abstract
        """A fresh parser for one response body."""
        raise NotImplementedError

    async def _status_error(
        self, response: httpx.Response, reads: AsyncIterator[bytes], request_id: str | None
    ) -> APIError:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _json_instead_of_stream(
        self, response: httpx.Response, reads: AsyncIterator[bytes], request_id: str | None
    ) -> APIError:  # pragma: no cover - abstract
        raise NotImplementedError

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        """One POST, streamed into ``emit``.

        ``attempt.timeouts.connect`` bounds connecting and sending (httpx's timeouts);
        ``attempt.timeouts.headers`` bounds the time until the response headers arrive
        (``APITimeoutError("headers")``). Every exception leaving here has the API key
        redacted from all upstream-supplied text (see :mod:`._redact`). Cancellation closes the
        response and its connection at once, and reads nothing more.
        """
        try:
            content = self.encode_body(request)

            async def read(response: httpx.Response, reads: AsyncIterator[bytes]) -> None:
                await self._read(response, reads, emit)

            await post_streaming(
                self._client, self._url, content, self._headers, attempt.timeouts, read
            )
        except Exception as exc:
            # The one boundary: whatever the upstream said (status bodies, in-stream errors
            # built by the parser, headers, httpx's own messages) is scrubbed here, in place,
            # before the runtime logs, retries, records or relays it.
            self._redactor.scrub_exception(exc)
            raise

    async def _read(
        self, response: httpx.Response, reads: AsyncIterator[bytes], emit: ChunkEmitter
    ) -> None:
        headers = response.headers
        request_id = None
        for name in self.request_id_headers:
            request_id = headers.get(name)
            if request_id:
                break
        if response.status_code >= 300:
            raise await self._status_error(response, reads, request_id)
        media_type = _media_type(headers)
        if media_type == "application/json" or media_type.endswith("+json"):
            raise await self._json_instead_of_stream(response, reads, request_id)
        if media_type not in EVENT_STREAM_TYPES:
            raise await not_a_stream_error(response, reads, self._redactor, request_id)
        await pump_body(self._parser(), reads, _body_decoder(headers), emit, request_id)

    async def _bounded_body(self, response: httpx.Response, reads: AsyncIterator[bytes]) -> bytes:
        return await read_error_body(response, reads, self._redactor)
