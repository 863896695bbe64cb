"""The exceptions trio_llmstream raises, all under one root.

::

    LLMStreamError                      root; never raised itself
    ├── APIError                        a failed attempt; .retryable decides retries
    │   ├── APIConnectionError          could not reach the server / lost it   (retryable)
    │   │   └── APITimeoutError         .limit: "connect" | "first_token" | "idle" (retryable)
    │   ├── APIStatusError              non-2xx answer: .status_code, .body, .request_id,
    │   │                               .retry_after   (408/409/429/5xx retryable, other 4xx not)
    │   ├── ProviderError               an error the server sent inside a 200 stream:
    │   │                               .type, .code   (retryable by type: overloaded, server
    │   │                               error, rate limit yes; invalid request no)
    │   ├── StreamTruncatedError        the body ended without [DONE] or finish reason
    │   │                               (retryable: the same request may well succeed)
    │   ├── StreamProtocolError         malformed SSE or JSON, or a size bound exceeded
    │   │                               (not retryable: a broken server breaks again)
    │   └── RetriesExhaustedError       every attempt failed retryably: .attempts, .errors
    ├── StreamInterrupted               failed after output reached the consumer; never
    │                                   retried: .partial (what was delivered), .cause
    └── SegmentError                    a segment of a turn (open_turn) failed: .segment_id,
                                        .index, .label, .cause

Every class states whether it is retryable as a class attribute; instances may refine it
(``APIStatusError`` by status code, ``ProviderError`` by error type). The runtime reads only
``error.retryable``: classifying HTTP or provider errors is the provider's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._models import CollectedResponse

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "LLMStreamError",
    "ProviderError",
    "RetriesExhaustedError",
    "SegmentError",
    "StreamInterrupted",
    "StreamProtocolError",
    "StreamTruncatedError",
    "TimeoutLimit",
]

TimeoutLimit = Literal["connect", "headers", "first_event", "first_token", "idle"]


class LLMStreamError(Exception):
    """Root of every exception this library raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIError(LLMStreamError):
    """One attempt at a request failed. ``retryable`` says whether trying again may help."""

    retryable = False

    def __init__(
        self, message: str, *, retryable: bool | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.request_id = request_id


class APIConnectionError(APIError):
    """The server could not be reached, or the connection was lost. Retryable."""

    retryable = True


class APITimeoutError(APIConnectionError):
    """A time limit of one attempt fired. ``limit`` names it. Retryable.

    - ``"connect"``: establishing the connection took too long;
    - ``"headers"``: the response headers did not arrive in time (from the attempt's start);
    - ``"first_event"``: no complete data event arrived in time (from the attempt's start);
      keep-alive comments and partial lines are not progress;
    - ``"first_token"``: no visible output (text, reasoning or a complete tool call) arrived in
      time; role-only chunks and keep-alives do not count;
    - ``"idle"``: after the first data event, too long passed without another one.

    See ``Timeouts`` for what each measures exactly.
    """

    retryable = True

    def __init__(
        self,
        limit: TimeoutLimit,
        seconds: float,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(
            f"{limit} timeout: exceeded {seconds:g}s", request_id=request_id
        )
        self.limit: TimeoutLimit = limit
        self.seconds = seconds


def status_is_retryable(status_code: int) -> bool:
    """The HTTP statuses worth retrying: 408, 409, 429 and every 5xx."""
    return status_code in (408, 409, 429) or status_code >= 500


class APIStatusError(APIError):
    """The server answered with a non-success HTTP status.

    Retryable for 408, 409, 429 and 5xx unless ``retryable`` says otherwise (a server's
    ``x-should-retry`` header, say). ``retry_after`` is the delay in seconds the server asked
    for, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: object = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            f"HTTP {status_code}: {message}",
            retryable=status_is_retryable(status_code) if retryable is None else retryable,
            request_id=request_id,
        )
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after


# Error types that servers put in an in-stream error payload and that a retry can cure.
# OpenAI uses "server_error" / "rate_limit_exceeded"; Anthropic-style proxies "overloaded_error";
# vLLM "InternalServerError"; others send codes like 429 or 503 as ``code``.
_RETRYABLE_PROVIDER_TYPES = frozenset(
    {
        "server_error",
        "internal_server_error",
        "internalservererror",
        "internal_error",
        "api_error",
        "overloaded",
        "overloaded_error",
        "service_unavailable",
        "serviceunavailableerror",
        "rate_limit_exceeded",
        "rate_limit_error",
        "ratelimiterror",
        "rate_limit",
        "timeout",
        "timeout_error",
    }
)


def provider_error_is_retryable(type_: str | None, code: str | int | None) -> bool:
    """Classify an in-stream error by its type or code, never by the 200 status it came in."""
    for key in (type_, code):
        if key is None:
            continue
        text = str(key).strip().lower()
        if text in _RETRYABLE_PROVIDER_TYPES:
            return True
        # ASCII and short: str.isdigit() is also true of "²", which int() rejects, and the
        # server may send thousands of digits (past int()'s limit); a status has three.
        if text.isascii() and text.isdigit() and len(text) <= 3 and status_is_retryable(int(text)):
            return True
    return False


class ProviderError(APIError):
    """An error the server reported inside the event stream (after a 200 status).

    ``type`` and ``code`` are the server's own; ``retryable`` follows from them: overloaded,
    server errors and rate limits are retryable, invalid requests and unknown types are not.
    """

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,  # the wire name
        code: str | int | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(
            message,
            retryable=provider_error_is_retryable(type, code) if retryable is None else retryable,
            request_id=request_id,
        )
        self.type = type
        self.code = code


class StreamTruncatedError(APIError):
    """The response body ended without ``[DONE]``, a finish reason or an error. Retryable.

    A truncated stream is never reported as complete.
    """

    retryable = True


class StreamProtocolError(APIError):
    """The server broke the protocol: malformed SSE or JSON, or a size bound was exceeded."""

    retryable = False


class RetriesExhaustedError(APIError):
    """Every attempt failed with a retryable error and no attempt (or time) is left.

    ``attempts`` is how many attempts were made and ``errors`` holds each attempt's error, in
    order; ``__cause__`` is the last of them. ``retryable`` is the last error's, so an outer
    fallback can decide whether another provider is worth a try.
    """

    def __init__(self, errors: Sequence[APIError], *, reason: str = "no attempts left") -> None:
        if not errors:
            raise ValueError("RetriesExhaustedError needs at least one attempt error")
        last = errors[-1]
        super().__init__(
            f"gave up after {len(errors)} attempt{'s' if len(errors) != 1 else ''} "
            f"({reason}); last error: {type(last).__name__}: {last}",
            retryable=last.retryable,
            request_id=last.request_id,
        )
        self.attempts = len(errors)
        self.errors: tuple[APIError, ...] = tuple(errors)


class StreamInterrupted(LLMStreamError):
    """The stream failed after visible output had reached the consumer.

    It is never retried: regenerating would repeat output the user has already seen or heard.
    ``partial`` is everything the consumer received (text, reasoning, complete tool calls);
    ``cause`` (also ``__cause__``) is the error that ended the stream.
    """

    retryable = False

    def __init__(self, partial: CollectedResponse, cause: BaseException) -> None:
        super().__init__(
            f"stream interrupted after output was delivered "
            f"({len(partial.text)} chars of text): {type(cause).__name__}: {cause}"
        )
        self.partial = partial
        self.cause = cause


class SegmentError(LLMStreamError):
    """A segment's source failed (while opening, iterating or closing); the turn stopped there.

    ``segment_id``, ``index`` and ``label`` name the segment; ``cause`` (also ``__cause__``) is
    what the source raised, e.g. an LLM stream's ``StreamInterrupted``. Not retryable: the
    items before it were delivered.
    """

    retryable = False

    def __init__(
        self, segment_id: str, index: int, label: str | None, cause: BaseException
    ) -> None:
        name = f"{segment_id!r}" + (f" ({label})" if label and label != segment_id else "")
        super().__init__(
            f"segment {index} {name} failed: {type(cause).__name__}: {cause}"
        )
        self.segment_id = segment_id
        self.index = index
        self.label = label
        self.cause = cause
