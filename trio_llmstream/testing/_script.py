"""Scripted HTTP responses for the loopback mock server, and builders for realistic ones.

A :class:`MockResponse` is what the mock server answers to one request: a status, headers, and
either a JSON body or a *script* of stream steps played as a server-sent-event body. Steps
are small frozen values (:class:`ChunkEvent`, :class:`Delay`, :class:`DropConnection`...), so
a script is plain data: build it once, inspect it, splice a fault into it with
:func:`inject_fault`, and replay it any number of times.

Why a script is compiled: the server is also used by benchmarks that run a thousand concurrent
streams of a few hundred chunks each. A ``MockResponse`` therefore turns its steps into a
*plan* once, when it is built: every chunk is serialized to its final ``data: ...\\n\\n`` bytes
and wrapped in the ASGI message the server will send, so playing a step costs one ``send``
and nothing else (no JSON encoding, no allocation, no logging per chunk).

Every byte-producing step is sent as its own ``http.response.body`` message, so it leaves the
server as its own HTTP/1.1 chunk, the way real servers flush per token.

The builders (:func:`chat_chunk`, :func:`text_stream`, :func:`tool_call_stream`,
:func:`error_response`...) produce the shapes OpenAI-compatible servers send::

    data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,
           "model":"gpt-mock","choices":[{"index":0,"delta":{"content":"Hel"},
           "finish_reason":null}]}
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import attrs
import msgspec

__all__ = [
    "ChunkEvent",
    "DEFAULT_COMPLETION_ID",
    "DEFAULT_CREATED",
    "DEFAULT_MODEL",
    "Delay",
    "DoneEvent",
    "DropConnection",
    "EndStream",
    "ErrorEvent",
    "KeepAlive",
    "MalformedEvent",
    "MockResponse",
    "PlanAction",
    "PlanOp",
    "RawBytes",
    "ResponseLike",
    "ServerFault",
    "Stall",
    "StreamStep",
    "as_response",
    "chat_chunk",
    "error_response",
    "inject_fault",
    "json_response",
    "sse_response",
    "text_stream",
    "tool_call_stream",
    "usage_chunk",
]

DEFAULT_MODEL = "gpt-mock"
"""The ``model`` the builders put in chunks unless told otherwise."""
DEFAULT_COMPLETION_ID = "chatcmpl-mock"
"""The chunk ``id`` the builders use unless told otherwise (fixed, so tests are deterministic)."""
DEFAULT_CREATED = 1_700_000_000
"""The chunk ``created`` timestamp the builders use unless told otherwise."""

_encode_json = msgspec.json.Encoder().encode


# ---------------------------------------------------------------------------------------------
# Steps


class PlanAction(enum.Enum):
    """The entries of a :attr:`MockResponse.plan` that are neither an ASGI message to send nor
    a delay: what the server does at a :class:`Stall`, a :class:`DropConnection` or an
    :class:`EndStream`."""

    #: Stop sending and hold the response open until the client leaves or the server stops.
    STALL = "stall"
    #: Abort the connection mid-body (the client sees EOF inside a chunked body).
    DROP = "drop"
    #: Finish the body here, whatever steps follow.
    END = "end"


# One compiled step: a prebuilt ASGI body message, a delay in seconds, or a special action.
PlanOp: TypeAlias = "dict[str, Any] | float | PlanAction"


class StreamStep:
    """Base class of every stream step; a script is a sequence of steps.

    Not meant to be subclassed outside this module: the server only knows the steps defined
    here.
    """

    __slots__ = ()

    def _compile(self) -> bytes | float | PlanAction:
        raise NotImplementedError


@attrs.frozen(eq=False)
class ChunkEvent(StreamStep):
    """One SSE event ``data: <json>\\n\\n`` carrying ``data`` serialized as compact JSON.

    ``data`` is usually a ``chat.completion.chunk`` dict from :func:`chat_chunk`. It is encoded
    once, when the :class:`MockResponse` holding it is built; do not mutate it afterwards.
    """

    data: Mapping[str, Any]

    def _compile(self) -> bytes:
        return b"data: " + _encode_json(self.data) + b"\n\n"


@attrs.frozen
class RawBytes(StreamStep):
    """Bytes sent exactly as given, as one HTTP chunk (for framing the other steps can't make).

    An empty ``data`` sends nothing.
    """

    data: bytes

    def _compile(self) -> bytes:
        return self.data


@attrs.frozen
class Delay(StreamStep):
    """Wait ``seconds`` before the next step, with :func:`trio.sleep` (so it follows trio's clock).

    The wait ends early if the client disconnects or the server stops.
    """

    seconds: float

    def __attrs_post_init__(self) -> None:
        if not self.seconds >= 0:
            raise ValueError(f"Delay needs seconds >= 0, got {self.seconds!r}")

    def _compile(self) -> float:
        return float(self.seconds)


@attrs.frozen
class KeepAlive(StreamStep):
    """An SSE comment line, ``: keep-alive\\n\\n`` by default; clients must ignore it."""

    comment: str = "keep-alive"

    def _compile(self) -> bytes:
        return b": " + self.comment.encode() + b"\n\n"


@attrs.frozen
class DoneEvent(StreamStep):
    """The ``data: [DONE]\\n\\n`` sentinel that ends an OpenAI-style stream."""

    def _compile(self) -> bytes:
        return b"data: [DONE]\n\n"


@attrs.frozen
class ErrorEvent(StreamStep):
    """A mid-stream error, as servers send after a 200 status has gone out.

    The data is ``{"error": {"message": ..., "type": ..., "code": ...}}``. By default it is a
    plain ``data:`` event (OpenAI, vLLM); with ``named=True`` it is preceded by an
    ``event: error`` line (as some gateways and the Responses API do). ``extra`` adds fields
    to the inner error object.
    """

    message: str = "The server had an error while processing your request."
    type: str = "server_error"
    code: str | int | None = None
    named: bool = False
    extra: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    def _compile(self) -> bytes:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        error.update(self.extra)
        prefix = b"event: error\n" if self.named else b""
        return prefix + b"data: " + _encode_json({"error": error}) + b"\n\n"


@attrs.frozen
class MalformedEvent(StreamStep):
    """An event whose data is not valid JSON: ``data: {"choices": [\\n\\n`` by default."""

    data: str = '{"choices": ['

    def _compile(self) -> bytes:
        return b"data: " + self.data.encode() + b"\n\n"


@attrs.frozen
class Stall(StreamStep):
    """Send nothing more and keep the response open until the client disconnects or the server
    stops. Steps after a stall are never played."""

    def _compile(self) -> PlanAction:
        return PlanAction.STALL


@attrs.frozen
class DropConnection(StreamStep):
    """Abort the connection here: the client gets the bytes so far and then an incomplete
    chunked body (with httpx, :class:`httpx.RemoteProtocolError`). Later steps are never
    played."""

    def _compile(self) -> PlanAction:
        return PlanAction.DROP


@attrs.frozen
class EndStream(StreamStep):
    """Finish the body cleanly here, skipping any later steps.

    A script that simply runs out of steps also ends cleanly; ``EndStream`` is for cutting an
    existing script short (a stream that ends without ``[DONE]`` or a finish reason).
    """

    def _compile(self) -> PlanAction:
        return PlanAction.END


# ---------------------------------------------------------------------------------------------
# Responses


def _header_pairs(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(name).lower(), str(value)) for name, value in items)


def _steps_tuple(steps: Iterable[StreamStep] | None) -> tuple[StreamStep, ...] | None:
    if steps is None:
        return None
    result = tuple(steps)
    for step in result:
        if not isinstance(step, StreamStep):
            raise TypeError(f"a stream script holds StreamStep objects, got {step!r}")
    return result


def _body_message(body: bytes, *, more: bool) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


_SSE_HEADERS = (("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"))
_JSON_HEADERS = (("content-type", "application/json"),)


@attrs.frozen(eq=False)
class MockResponse:
    """One scripted HTTP response.

    With ``steps`` it is a server-sent-event stream (``content-type: text/event-stream``) that
    plays the steps in order; otherwise, with ``json_body`` it is a JSON document, and with
    neither an empty body. ``headers`` are added to (and, for the same name, replace) the
    defaults for that kind of body; names are compared lower-cased.

    Build one with :func:`sse_response`, :func:`json_response` or :func:`error_response`, or
    pass a plain sequence of steps wherever a response is expected (it means a 200 stream).
    A response is immutable and may be enqueued or returned any number of times; its steps are
    compiled to bytes once, here.
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_header_pairs)
    json_body: Any = None
    steps: tuple[StreamStep, ...] | None = attrs.field(default=None, converter=_steps_tuple)
    _start: dict[str, Any] = attrs.field(init=False, repr=False)
    _plan: tuple[PlanOp, ...] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not 100 <= self.status <= 999:
            raise ValueError(f"HTTP status must be in 100..999, got {self.status}")
        if self.steps is not None and self.json_body is not None:
            raise ValueError("a MockResponse has either steps or a json_body, not both")
        plan: list[PlanOp] = []
        if self.steps is not None:
            defaults: tuple[tuple[str, str], ...] = _SSE_HEADERS
            for step in self.steps:
                op = step._compile()
                if isinstance(op, bytes):
                    if op:
                        plan.append(_body_message(op, more=True))
                else:
                    plan.append(op)
                if op is PlanAction.STALL or op is PlanAction.DROP or op is PlanAction.END:
                    break
        else:
            defaults = () if self.json_body is None else _JSON_HEADERS
            if self.json_body is not None:
                plan.append(_body_message(_encode_json(self.json_body), more=True))
        overridden = {name for name, _ in self.headers}
        headers = [pair for pair in defaults if pair[0] not in overridden]
        headers.extend(self.headers)
        start = {
            "type": "http.response.start",
            "status": self.status,
            "headers": [
                (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers
            ],
        }
        object.__setattr__(self, "_start", start)
        object.__setattr__(self, "_plan", tuple(plan))

    def body_bytes(self) -> bytes:
        """The body a client reads if it reads this response to its end.

        That is every byte the steps produce up to the first :class:`Stall`,
        :class:`DropConnection` or :class:`EndStream`, or the JSON document. Handy as the
        expected value in tests.
        """
        return b"".join(op["body"] for op in self._plan if isinstance(op, dict))

    @property
    def start_message(self) -> dict[str, Any]:
        """The ``http.response.start`` ASGI message (status and headers) the server sends."""
        return self._start

    @property
    def plan(self) -> tuple[PlanOp, ...]:
        """The compiled body, played in order by the server: ``http.response.body`` messages
        to send, delays in seconds (floats) and :class:`PlanAction` entries. Ends at the first
        action; the final (``more_body=False``) message is not included."""
        return self._plan

    @property
    def is_stream(self) -> bool:
        """Whether this response is a server-sent-event stream (it has steps)."""
        return self.steps is not None


ResponseLike: TypeAlias = "MockResponse | Sequence[StreamStep]"
"""What the server accepts as a response: a :class:`MockResponse`, or a sequence of steps (a 200
stream)."""


def as_response(response: ResponseLike) -> MockResponse:
    """``response`` as a :class:`MockResponse` (a sequence of steps becomes a 200 stream)."""
    if isinstance(response, MockResponse):
        return response
    if isinstance(response, str | bytes | Mapping):
        raise TypeError(f"expected a MockResponse or a sequence of steps, got {response!r}")
    return MockResponse(steps=response)


def sse_response(
    steps: Iterable[StreamStep],
    *,
    status: int = 200,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
) -> MockResponse:
    """A server-sent-event response playing ``steps`` (see :class:`MockResponse`)."""
    return MockResponse(status=status, headers=_header_pairs(headers), steps=tuple(steps))


def json_response(
    body: Any,
    *,
    status: int = 200,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
) -> MockResponse:
    """A response whose body is ``body`` serialized as JSON (``content-type: application/json``).

    For example a non-streamed ``chat.completion`` object, or a custom error document.
    """
    return MockResponse(status=status, headers=_header_pairs(headers), json_body=body)


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(
    status: int = 500,
    message: str | None = None,
    *,
    type: str | None = None,
    code: str | int | None = None,
    param: str | None = None,
    retry_after: float | str | None = None,
    retry_after_ms: float | None = None,
    should_retry: bool | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
) -> MockResponse:
    """An OpenAI-style error: ``status`` with ``{"error": {"message", "type", "param", "code"}}``.

    ``type`` defaults by status (``rate_limit_error`` for 429, ``server_error`` for 5xx...) and
    ``message`` to a sentence naming the status. The retry hints become headers:
    ``retry_after`` -> ``Retry-After`` (seconds, or pass a string such as an HTTP date
    verbatim), ``retry_after_ms`` -> ``retry-after-ms``, ``should_retry`` ->
    ``x-should-retry: true|false``. Other ``headers`` are added as given.
    """
    if type is None:
        type = _ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
    if message is None:
        message = f"Mock server error (HTTP {status})."
    pairs: list[tuple[str, str]] = []
    if retry_after is not None:
        pairs.append(("retry-after", _number_text(retry_after)))
    if retry_after_ms is not None:
        pairs.append(("retry-after-ms", _number_text(retry_after_ms)))
    if should_retry is not None:
        pairs.append(("x-should-retry", "true" if should_retry else "false"))
    pairs.extend(_header_pairs(headers))
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return MockResponse(status=status, headers=tuple(pairs), json_body=body)


def _number_text(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


# ---------------------------------------------------------------------------------------------
# Chunk builders


def chat_chunk(
    delta: Mapping[str, Any] | None = None,
    *,
    finish_reason: str | None = None,
    index: int = 0,
    model: str = DEFAULT_MODEL,
    completion_id: str = DEFAULT_COMPLETION_ID,
    created: int = DEFAULT_CREATED,
    usage: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` dict with one choice carrying ``delta``.

    ``usage`` (if given) is added at the top level; ``extra`` adds any other top-level fields
    (``system_fingerprint``, provider extensions...).
    """
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": dict(delta or {}), "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = dict(usage)
    if extra:
        chunk.update(extra)
    return chunk


def usage_chunk(
    prompt_tokens: int,
    completion_tokens: int,
    *,
    model: str = DEFAULT_MODEL,
    completion_id: str = DEFAULT_COMPLETION_ID,
    created: int = DEFAULT_CREATED,
) -> dict[str, Any]:
    """The usage-only chunk OpenAI sends last with ``stream_options.include_usage``:
    ``choices`` is empty and ``usage`` holds the token counts."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _with_delays(chunks: list[StreamStep], delay: float) -> list[StreamStep]:
    if delay <= 0 or not chunks:
        return chunks
    out: list[StreamStep] = []
    for chunk in chunks:
        out.append(Delay(delay))
        out.append(chunk)
    return out


def _ending(
    *,
    finish_reason: str | None,
    usage: bool,
    prompt_tokens: int,
    completion_tokens: int,
    done: bool,
    model: str,
    completion_id: str,
    created: int,
) -> list[StreamStep]:
    # The end every scripted stream shares: a finish chunk, a usage-only chunk, [DONE].
    steps: list[StreamStep] = []
    if finish_reason is not None:
        finish = chat_chunk(
            {}, finish_reason=finish_reason,
            model=model, completion_id=completion_id, created=created,
        )
        steps.append(ChunkEvent(finish))
    if usage:
        counts = usage_chunk(
            prompt_tokens, completion_tokens,
            model=model, completion_id=completion_id, created=created,
        )
        steps.append(ChunkEvent(counts))
    if done:
        steps.append(DoneEvent())
    return steps


def text_stream(
    text: str | Sequence[str],
    *,
    chunk_size: int = 4,
    delay: float = 0.0,
    role_chunk: bool = True,
    finish_reason: str | None = "stop",
    usage: bool = True,
    prompt_tokens: int = 10,
    done: bool = True,
    model: str = DEFAULT_MODEL,
    completion_id: str = DEFAULT_COMPLETION_ID,
    created: int = DEFAULT_CREATED,
) -> tuple[StreamStep, ...]:
    """The steps of a realistic streamed text completion of ``text``.

    In order: a role chunk (``{"role": "assistant", "content": ""}``) if ``role_chunk``; one
    content chunk per ``chunk_size`` characters of ``text`` (or one per item if ``text`` is a
    sequence of pieces); a chunk with an empty delta and ``finish_reason`` (skipped if None);
    a usage-only chunk (``choices: []``, ``completion_tokens`` = number of content chunks) if
    ``usage``; and ``[DONE]`` if ``done``. With ``delay`` > 0 a :class:`Delay` precedes every
    content chunk.
    """
    if isinstance(text, str):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        pieces = [text[i : i + chunk_size] for i in range(0, len(text), chunk_size)]
    else:
        pieces = list(text)
    chunk = functools.partial(chat_chunk, model=model, completion_id=completion_id, created=created)
    steps: list[StreamStep] = []
    if role_chunk:
        steps.append(ChunkEvent(chunk({"role": "assistant", "content": ""})))
    content = [ChunkEvent(chunk({"content": piece})) for piece in pieces]
    steps.extend(_with_delays(list(content), delay))
    steps += _ending(
        finish_reason=finish_reason, usage=usage, prompt_tokens=prompt_tokens,
        completion_tokens=len(pieces), done=done,
        model=model, completion_id=completion_id, created=created,
    )
    return tuple(steps)


def _split(text: str, parts: int) -> list[str]:
    # Near-equal consecutive pieces; never an empty piece.
    if not text:
        return []
    parts = max(1, min(parts, len(text)))
    size, rest = divmod(len(text), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < rest else 0)
        out.append(text[start:end])
        start = end
    return out


def tool_call_stream(
    calls: Sequence[tuple[str, str]],
    *,
    fragments: int = 3,
    call_ids: Sequence[str] | None = None,
    delay: float = 0.0,
    role_chunk: bool = True,
    finish_reason: str | None = "tool_calls",
    usage: bool = True,
    prompt_tokens: int = 10,
    done: bool = True,
    model: str = DEFAULT_MODEL,
    completion_id: str = DEFAULT_COMPLETION_ID,
    created: int = DEFAULT_CREATED,
) -> tuple[StreamStep, ...]:
    """The steps of a streamed completion that requests tool calls.

    ``calls`` is a sequence of ``(name, arguments_json)``. Calls are streamed one after another,
    as OpenAI does: for call ``i`` a header delta ``{"tool_calls": [{"index": i, "id": ...,
    "type": "function", "function": {"name": ..., "arguments": ""}}]}``, then the arguments
    text split into ``fragments`` near-equal pieces, each a delta
    ``{"tool_calls": [{"index": i, "function": {"arguments": piece}}]}``. Ids are ``call_ids``
    or ``call_mock_0``, ``call_mock_1``... Around them: a role chunk (``content: null``), a
    finish chunk with ``finish_reason``, a usage chunk and ``[DONE]``, each switchable as in
    :func:`text_stream`. With ``delay`` > 0 a :class:`Delay` precedes every tool-call chunk.
    """
    if fragments < 1:
        raise ValueError(f"fragments must be >= 1, got {fragments}")
    if call_ids is not None and len(call_ids) != len(calls):
        raise ValueError("call_ids must have one id per call")
    chunk = functools.partial(chat_chunk, model=model, completion_id=completion_id, created=created)
    steps: list[StreamStep] = []
    if role_chunk:
        steps.append(ChunkEvent(chunk({"role": "assistant", "content": None})))
    body: list[StreamStep] = []
    for i, (name, arguments) in enumerate(calls):
        call_id = call_ids[i] if call_ids is not None else f"call_mock_{i}"
        header = {
            "index": i,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        body.append(ChunkEvent(chunk({"tool_calls": [header]})))
        for piece in _split(arguments, fragments):
            delta = {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
            body.append(ChunkEvent(chunk(delta)))
    steps.extend(_with_delays(body, delay))
    steps += _ending(
        finish_reason=finish_reason, usage=usage, prompt_tokens=prompt_tokens,
        completion_tokens=len(body), done=done,
        model=model, completion_id=completion_id, created=created,
    )
    return tuple(steps)


# ---------------------------------------------------------------------------------------------
# Faults

ServerFault: TypeAlias = Literal["drop", "stall", "error", "error_event", "truncate", "malformed"]
"""Names of the faults :func:`inject_fault` knows: ``drop`` (:class:`DropConnection`),
``stall`` (:class:`Stall`), ``error`` (:class:`ErrorEvent`), ``error_event`` (a named
``event: error`` :class:`ErrorEvent`), ``truncate`` (:class:`EndStream`: the body ends cleanly
without ``[DONE]``) and ``malformed`` (:class:`MalformedEvent`)."""

_FAULTS: dict[str, StreamStep] = {
    "drop": DropConnection(),
    "stall": Stall(),
    "error": ErrorEvent(),
    "error_event": ErrorEvent(named=True),
    "truncate": EndStream(),
    "malformed": MalformedEvent(),
}


def inject_fault(
    steps: Iterable[StreamStep],
    fault: ServerFault | StreamStep,
    *,
    after: int,
    then: Iterable[StreamStep] = (),
) -> tuple[StreamStep, ...]:
    """A copy of the script ``steps`` cut after its first ``after`` :class:`ChunkEvent` steps,
    with ``fault`` and then the steps of ``then`` in place of the rest.

    ``after`` counts only :class:`ChunkEvent` steps (a role chunk counts; keep-alives, delays
    and ``[DONE]`` do not); the cut is made right after the ``after``-th chunk, so ``after=0``
    puts the fault first. ``fault`` is a :data:`ServerFault` name or any step. ``then`` lets a
    fault be followed by more, e.g. an error event and then ``[DONE]``::

        inject_fault(text_stream("Hello world"), "error", after=3, then=[DoneEvent()])

    Raises :class:`ValueError` if the script has fewer than ``after`` chunks.
    """
    if after < 0:
        raise ValueError(f"after must be >= 0, got {after}")
    script = list(steps)
    step = _FAULTS[fault] if isinstance(fault, str) else fault
    if not isinstance(step, StreamStep):
        raise TypeError(f"fault must be a fault name or a StreamStep, got {fault!r}")
    cut, seen = 0, 0
    if after > 0:
        for position, item in enumerate(script):
            if isinstance(item, ChunkEvent):
                seen += 1
                if seen == after:
                    cut = position + 1
                    break
        else:
            raise ValueError(f"the script has only {seen} chunks; cannot cut after {after}")
    return (*script[:cut], step, *then)
