"""OpenTelemetry for streams, attempts and tool calls, per the GenAI semantic conventions.

What is emitted. Per stream, one CLIENT span ``chat {model}``: the convention's logical
operation, covering every attempt (retries included). Per attempt, a CLIENT child span
``attempt {model}``. Per tool call, an INTERNAL child span ``execute_tool {name}``. And the
convention's histograms, with its bucket boundaries: ``gen_ai.client.operation.duration``,
``gen_ai.client.token.usage``, ``gen_ai.client.operation.time_to_first_chunk``,
``gen_ai.client.operation.time_per_output_chunk`` and ``gen_ai.execute_tool.duration``. All
through the *global* tracer and meter providers, instrumentation scope ``trio_llmstream``:
there is nothing to call, and without an SDK nothing is recorded.

Attempts are child spans, not span events, because an attempt is an operation of its own:
it has a duration (an event has only a time), an outcome that deserves an error status of its
own (a retried 503 is an error of the attempt, not of the stream that then succeeded), and,
with fallback or hedging, a provider, model and server of its own. As spans they show in a
trace waterfall as bars with the backoff as the gap between them, and they can be searched
("attempts that failed with a 429 on server X") like any client call. They deliberately carry
neither ``gen_ai.operation.name`` nor ``gen_ai.usage.*`` (their usage goes under
``trio_llmstream.attempt.*``): backends that aggregate GenAI spans would otherwise count one
logical call several times. An attempt's span is created when its record arrives, with the
start time computed from its duration: the runtime reports attempts from the supervisor,
after the fact, and nothing runs per chunk.

Cost. Nothing here runs per chunk: the hooks run once per stream, per attempt and per tool
call. ``opentelemetry`` is never imported by this library on its own initiative: a provider
can only have been installed by code that imported ``opentelemetry.trace`` or
``opentelemetry.metrics`` (or by the ``OTEL_PYTHON_*_PROVIDER`` variables), so until one of
those happened every stream gets the shared no-op object and the import costs nothing — also
when the ``otel`` extra is absent. With the API imported but no SDK provider set, streams get
the no-op object too (a look at the API's globals: about 1 µs per stream, against 0.5 µs
without it). With an SDK, the SDK's own span and histogram work is the cost, once per stream.
A failing hook never breaks a stream: it is logged (with its traceback once per hook) and
ignored.

Chunk metrics. ``time_to_first_chunk`` is the stream's ``ttft``: from the stream's start to
the first *visible* chunk the consumer received (the commit point), across retries — the
latency a user perceives; role-only and keep-alive chunks do not count. The convention records
``time_per_output_chunk`` once per chunk; doing that would put telemetry on the per-chunk path,
so it is recorded once per stream with the stream's mean (the time from the first visible
chunk to the last, over the chunks after the first): a histogram of per-stream means.

Time. Span times come from the runtime's clock (``trio.current_time`` by default), anchored to
the wall clock once per stream, so a span's duration is exactly the duration the runtime
measured (and tests under trio's mock clock are deterministic).

Content and secrets. Prompts, outputs, tool arguments and results are recorded only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` asks for span content (``true``,
``SPAN_ONLY`` or ``SPAN_AND_EVENT``); each text part is then bounded to
``MAX_CONTENT_CHARS``. Error messages count as content (servers echo prompts in validation
errors): by default a span's status description is a summary built from typed fields only
(class, HTTP status, time limit, provider error type). Whatever is recorded, the provider's API
key is removed from it first, and ``server.address`` is a host name, never a URL's user info.

``error.type`` is the class name of the library's exception that ended the stream (the
attempt's own error on attempt spans; ``timeout`` for a tool that timed out, or the tool's
exception class); a cancelled stream or tool call gets ``error.type = "cancelled"`` with an
unset status — cancelling is the caller's decision, not a failure, but its duration must not
pass for a completed call's in the histograms.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import attrs
import trio

from ._models import AttemptMetrics, ChatRequest, CollectedResponse, LLMMetrics, StreamStatus

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import Histogram, MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from ._models import FunctionCall
    from ._tools._execute import ToolOutcome

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "INSTRUMENTATION_SCOPE",
    "ProviderInfo",
    "RelaySpan",
    "StreamTelemetry",
    "ToolTelemetry",
    "describe_llm",
    "install_console_exporters",
    "open_stream_telemetry",
    "relay_span",
    "use_providers",
]

logger = logging.getLogger("trio_llmstream")

INSTRUMENTATION_SCOPE: Final = "trio_llmstream"
CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_CAPTURE_ON: Final = frozenset({"true", "span_only", "span_and_event"})

# A captured text part longer than this is cut (the JSON around it stays valid): opting in to
# content must not make one span hold a whole book.
MAX_CONTENT_CHARS: Final = 16_384
# A status description (a summary of the error) is a line, not a body.
_MAX_DESCRIPTION: Final = 512
_REDACTED: Final = "[REDACTED]"

# The convention's ExplicitBucketBoundaries (semantic-conventions-genai, gen-ai-metrics.md).
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)
TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)

# ``gen_ai.provider.name`` for LLM classes that do not declare ``otel_provider_name``. The
# OpenAI-compatible ones are ``openai`` whatever server they point at: ``server.address``
# tells those apart (the convention's own advice).
_PROVIDER_BY_CLASS: Final = {
    "OpenAILLM": "openai",
    "OpenAIResponsesLLM": "openai",
    "AnthropicLLM": "anthropic",
    "GeminiLLM": "gcp.gemini",
}
_DEFAULT_PORTS: Final = {"https": 443, "http": 80}

# Request parameters that may travel in ``ChatRequest.extra``, by wire name.
_EXTRA_PARAMS: Final = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}
# Header names whose values are credentials, looked for on a provider's ``_headers``.
_SECRET_HEADERS: Final = ("authorization", "api-key", "x-api-key", "x-goog-api-key")


# -- provider description ---------------------------------------------------------------------


@attrs.frozen
class ProviderInfo:
    """What telemetry says about an LLM: the convention's provider name, model and server."""

    provider_name: str
    model: str | None = None
    server_address: str | None = None
    server_port: int | None = None

    def attributes(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {"gen_ai.provider.name": self.provider_name}
        if self.model:
            out["gen_ai.request.model"] = self.model
        if self.server_address:
            out["server.address"] = self.server_address
            if self.server_port is not None:
                out["server.port"] = self.server_port
        return out


def _provider_name(llm: object) -> str:
    declared = getattr(llm, "otel_provider_name", None)
    if isinstance(declared, str) and declared:
        return declared
    for cls in type(llm).__mro__:
        name = _PROVIDER_BY_CLASS.get(cls.__name__)
        if name is not None:
            return name
    # Not a provider the convention knows: a custom value, as it allows.
    return type(llm).__name__


def describe_llm(llm: object) -> ProviderInfo:
    """The provider name, model and server of ``llm``.

    The provider name is the LLM's ``otel_provider_name`` attribute when it declares one (a
    class attribute: ``"openai"``, ``"anthropic"``, ``"gcp.gemini"``...), else it follows from
    its class (``OpenAILLM`` and ``OpenAIResponsesLLM``: ``openai``), else the class name. The
    model is its ``model`` attribute; the server its ``base_url``'s host and port (never its
    user info, path or query).
    """
    model = getattr(llm, "model", None)
    address: str | None = None
    port: int | None = None
    base_url = getattr(llm, "base_url", None)
    if isinstance(base_url, str) and base_url:
        try:
            parts = urlsplit(base_url)
            address = parts.hostname
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:  # a malformed port: leave the server out rather than guess
            address, port = None, None
    return ProviderInfo(
        provider_name=_provider_name(llm),
        model=model if isinstance(model, str) and model else None,
        server_address=address or None,
        server_port=port if address else None,
    )


def _secrets_of(llm: object) -> tuple[str, ...]:
    """The credentials an LLM sends, so that no recorded text can carry them.

    A provider may declare them with ``otel_secrets()``; otherwise the values of its
    credential headers (``_headers``, as the OpenAI provider keeps them) are used.
    """
    found: list[str] = []
    declare = getattr(llm, "otel_secrets", None)
    if callable(declare):
        found.extend(s for s in declare() if isinstance(s, str))
    headers = getattr(llm, "_headers", None)
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            if isinstance(name, str) and name.lower() in _SECRET_HEADERS and isinstance(
                value, str
            ):
                found.append(value)
                scheme, _, token = value.partition(" ")
                if token and scheme.lower() in ("bearer", "basic", "token"):
                    found.append(token)
    # Longest first, so that "Bearer sk-..." goes before "sk-...". Very short values would
    # redact ordinary words and are no real key.
    return tuple(sorted({s for s in found if len(s) >= 8}, key=len, reverse=True))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


def _bounded(text: str, limit: int = MAX_CONTENT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "…[truncated]"


# -- errors -------------------------------------------------------------------------------------


def error_type(error: BaseException) -> str:
    """``error.type`` for an exception: its class name (low cardinality, documented)."""
    return type(error).__qualname__


def _safe_summary(error: BaseException) -> str:
    """A description built from typed fields only: no server-supplied text."""
    name = type(error).__qualname__
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return f"{name}: HTTP {status}"
    limit = getattr(error, "limit", None)
    seconds = getattr(error, "seconds", None)
    if isinstance(limit, str) and isinstance(seconds, (int, float)):
        return f"{name}: {limit} timeout after {seconds:g}s"
    kind = getattr(error, "type", None)
    code = getattr(error, "code", None)
    if isinstance(kind, str) or isinstance(code, (str, int)):
        details = ", ".join(
            f"{k}={v}" for k, v in (("type", kind), ("code", code)) if v is not None
        )
        return f"{name}: {details}"
    errors = getattr(error, "errors", None)
    if isinstance(errors, tuple) and errors:
        return f"{name}: {len(errors)} attempts; last {_safe_summary(errors[-1])}"
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{name}: {_safe_summary(cause)}"
    return name


# -- content capture ----------------------------------------------------------------------------


def capture_content_enabled() -> bool:
    """True when the convention's content-capture setting asks for content on spans."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in _CAPTURE_ON


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _scrubbed_json(value: Any, secrets: Sequence[str]) -> str:
    return _scrub(json.dumps(value, ensure_ascii=False, default=str), secrets)


def _input_messages(request: ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in request.messages:
        parts: list[dict[str, Any]] = []
        if message.role == "tool":
            parts.append({
                "type": "tool_call_response",
                "id": message.tool_call_id,
                "response": _bounded(message.content or ""),
            })
        elif message.content:
            parts.append({"type": "text", "content": _bounded(message.content)})
        for call in message.tool_calls:
            parts.append({
                "type": "tool_call",
                "id": call.call_id,
                "name": call.name,
                "arguments": _arguments(_bounded(call.arguments)),
            })
        entry: dict[str, Any] = {"role": message.role, "parts": parts}
        if message.name and message.role != "tool":
            entry["name"] = message.name
        out.append(entry)
    return out


def _output_messages(response: CollectedResponse) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for choice in response.choices:
        parts: list[dict[str, Any]] = []
        if choice.reasoning:
            parts.append({"type": "reasoning", "content": _bounded(choice.reasoning)})
        if choice.text:
            parts.append({"type": "text", "content": _bounded(choice.text)})
        for call in choice.function_calls:
            parts.append({
                "type": "tool_call",
                "id": call.call_id,
                "name": call.name,
                "arguments": _arguments(_bounded(call.arguments)),
            })
        out.append({
            "role": "assistant",
            "parts": parts,
            # The schema requires one; a stream that did not finish has none to give.
            "finish_reason": choice.finish_reason or "error",
        })
    return out


def _request_attributes(request: ChatRequest) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = float(request.temperature)
    if request.n is not None and request.n != 1:
        attributes["gen_ai.request.choice.count"] = request.n
    for key, value in request.extra.items():
        name = _EXTRA_PARAMS.get(key)
        if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes.setdefault(name, value)
        elif key == "stop":
            if isinstance(value, str):
                attributes["gen_ai.request.stop_sequences"] = [value]
            elif isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
                attributes["gen_ai.request.stop_sequences"] = list(value)
    for name in ("gen_ai.request.top_p", "gen_ai.request.top_k",
                 "gen_ai.request.frequency_penalty", "gen_ai.request.presence_penalty"):
        if name in attributes:
            attributes[name] = float(attributes[name])
    for name in ("gen_ai.request.max_tokens", "gen_ai.request.seed"):
        if name in attributes and not isinstance(attributes[name], int):
            del attributes[name]  # the convention types these as int
    return attributes


# -- the OpenTelemetry side, loaded only when an application uses it ------------------------------


class _Otel:
    """The ``opentelemetry`` API, imported once an application has imported it itself."""

    def __init__(self) -> None:
        from opentelemetry import context, metrics, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.context = context
        self.metrics = metrics
        self.trace = trace
        self.SpanKind = SpanKind
        self.Status = Status
        self.StatusCode = StatusCode
        no_meter: tuple[type, ...] = (metrics.NoOpMeterProvider,)
        try:
            from opentelemetry.metrics import _internal as metrics_internal
            from opentelemetry.metrics._internal import _ProxyMeterProvider

            no_meter += (_ProxyMeterProvider,)
        except ImportError:  # pragma: no cover - a future API without the private names
            metrics_internal = None  # type: ignore[assignment]
        self._metrics_internal = metrics_internal
        self._no_meter = no_meter
        self._no_tracer = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        # Stand-ins for a provider that is not set, shared so the cache below keeps working.
        self._no_tracer_provider = trace.NoOpTracerProvider()
        self._no_meter_provider = metrics.NoOpMeterProvider()
        self._instruments: dict[tuple[int, int], _Instruments] = {}

    def _global_tracer_provider(self) -> TracerProvider | None:
        # ``get_tracer_provider()`` looks the environment up on every call while no provider
        # is set (microseconds, per stream); the API's own global says the same for free.
        current: TracerProvider | None = getattr(self.trace, "_TRACER_PROVIDER", None)
        if current is None and not _environment_names_providers():
            return None
        return self.trace.get_tracer_provider()

    def _global_meter_provider(self) -> MeterProvider | None:
        current: MeterProvider | None = getattr(self._metrics_internal, "_METER_PROVIDER", None)
        if current is None and not _environment_names_providers():
            return None
        return self.metrics.get_meter_provider()

    def instruments(
        self,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
    ) -> _Instruments | None:
        """Instruments of the given providers (default: the global ones), or None when
        neither records anything."""
        tp = tracer_provider or self._global_tracer_provider() or self._no_tracer_provider
        mp = meter_provider or self._global_meter_provider() or self._no_meter_provider
        traced = not isinstance(tp, self._no_tracer)
        metered = not isinstance(mp, self._no_meter)
        if not (traced or metered):
            return None
        key = (id(tp), id(mp))
        found = self._instruments.get(key)
        if found is None or found.tracer_provider is not tp or found.meter_provider is not mp:
            found = self._instruments[key] = _Instruments(self, tp, mp, traced, metered)
        return found


class _Instruments:
    """One tracer and the five histograms, per pair of providers."""

    def __init__(
        self,
        otel: _Otel,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        traced: bool,
        metered: bool,
    ) -> None:
        from . import __version__

        self.otel = otel
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.traced = traced
        self.metered = metered
        self.tracer = tracer_provider.get_tracer(INSTRUMENTATION_SCOPE, __version__)
        meter = meter_provider.get_meter(INSTRUMENTATION_SCOPE, __version__)

        def seconds(name: str, description: str) -> Histogram:
            return meter.create_histogram(
                name, unit="s", description=description,
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )

        self.duration = seconds("gen_ai.client.operation.duration", "GenAI operation duration.")
        self.ttfc = seconds(
            "gen_ai.client.operation.time_to_first_chunk",
            "Time from the start of the operation to the first visible chunk.",
        )
        self.tpoc = seconds(
            "gen_ai.client.operation.time_per_output_chunk",
            "Mean time per output chunk after the first, one value per stream.",
        )
        self.tool_duration = seconds(
            "gen_ai.execute_tool.duration", "The duration of a single tool execution."
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )


_otel: _Otel | None = None
_otel_unavailable = False
_providers_from_env: bool | None = None


def _environment_names_providers() -> bool:
    """Whether ``OTEL_PYTHON_{TRACER,METER}_PROVIDER`` name providers for the API to load.

    Read once: an environment lookup costs microseconds, and this runs per stream.
    """
    global _providers_from_env
    if _providers_from_env is None:
        _providers_from_env = (
            "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
            or "OTEL_PYTHON_METER_PROVIDER" in os.environ
        )
    return _providers_from_env


def _load_otel() -> _Otel | None:
    """The API, once an application could have installed a provider; None until then."""
    global _otel, _otel_unavailable
    if _otel is not None:
        return _otel
    if _otel_unavailable:
        return None
    modules = sys.modules
    if (
        modules.get("opentelemetry.trace") is None
        and modules.get("opentelemetry.metrics") is None
        and not _environment_names_providers()
    ):
        return None  # nobody imported it: no provider can be set, and the import costs ms
    try:
        _otel = _Otel()
    except ImportError:
        _otel_unavailable = True
        return None
    return _otel


# -- the hooks ----------------------------------------------------------------------------------

_reported: set[str] = set()


def _failed(what: str) -> None:
    """A hook failed: log it with its traceback once per hook, then quietly (a broken
    exporter or an old API would otherwise log on every stream). Never raises."""
    if what in _reported:
        logger.debug("telemetry: %s failed again; ignored", what, exc_info=True)
    else:
        _reported.add(what)
        logger.exception("telemetry: %s failed; ignored (logged once)", what)



class ToolTelemetry:
    """One tool call's span. A context manager: inside it the span is the current span (the
    tool's own spans nest under it). ``finished(outcome)`` ends it once.

    This base class is the no-op, shared by every call when telemetry is off.
    """

    __slots__ = ()

    def __enter__(self) -> ToolTelemetry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def finished(self, outcome: ToolOutcome | None) -> None:
        """Record the call's one outcome (None: it never got one) and end its span."""


class StreamTelemetry:
    """The telemetry of one stream; see the module docstring for what is emitted.

    This base class is the no-op, shared by every stream when telemetry is off (no
    ``opentelemetry``, or no SDK provider): its hooks do nothing. ``enabled`` is False on it,
    so a caller can skip computing arguments it would only pass to telemetry.

    Hooks never raise (a failing hook is logged) and never block.
    """

    __slots__ = ()
    enabled = False

    def activate(self) -> _Activation:
        """A context manager making the stream's span the current span while the task that
        runs the attempts is inside it, so spans of instrumented libraries (an HTTP client's)
        nest under the stream. No effect when telemetry is off."""
        return _Activation(None, None)

    def attempt_finished(
        self, record: AttemptMetrics, provider: object | None = None
    ) -> None:
        """Record one attempt as a child span. ``provider`` is the LLM (or its label) that ran
        it, when it is not the stream's own (fallback, hedging)."""

    def tool_started(self, call: FunctionCall, *, description: str | None = None) -> ToolTelemetry:
        """Start the span of one tool call (a child of the stream's span)."""
        return _NOOP_TOOL

    def finished(
        self,
        metrics: LLMMetrics,
        *,
        finish_reasons: Iterable[str | None] = (),
        response_model: str | None = None,
        output_chunks: int | None = None,
        generation_time: float | None = None,
        response: Callable[[], CollectedResponse] | None = None,
    ) -> None:
        """End the stream's span and record its metrics. Call exactly once, with the stream's
        one ``LLMMetrics``.

        ``finish_reasons``: per choice, in index order (None entries are skipped).
        ``output_chunks`` and ``generation_time``: the chunks delivered from the first visible
        one on, and the seconds from that chunk to the last; they give the mean time per
        output chunk. ``response``: called only when content capture is on, for the output
        messages.
        """


_NOOP_TOOL: Final = ToolTelemetry()
NOOP: Final = StreamTelemetry()


class _Activation:
    __slots__ = ("_context", "_otel", "_token")

    def __init__(self, otel: _Otel | None, context: Context | None) -> None:
        self._otel = otel
        self._context = context
        self._token: object | None = None

    def __enter__(self) -> None:
        if self._otel is not None and self._context is not None:
            self._token = self._otel.context.attach(self._context)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._otel is not None and self._token is not None:
            token, self._token = self._token, None
            self._otel.context.detach(token)


class _Clock:
    """The runtime's clock, anchored once to the wall clock: span times in ns."""

    __slots__ = ("_now", "_t0", "_wall0")

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._t0 = now()
        self._wall0 = time.time_ns()

    def now(self) -> float:
        return self._now()

    def wall(self, t: float) -> int:
        return self._wall0 + round((t - self._t0) * 1e9)


class _RecordingStreamTelemetry(StreamTelemetry):
    __slots__ = (
        "_capture",
        "_clock",
        "_ended",
        "_info",
        "_ins",
        "_llm",
        "_otel",
        "_parent",
        "_secrets",
        "_span",
        "_span_context",
        "_started_at",
    )
    enabled = True

    def __init__(
        self,
        instruments: _Instruments,
        llm: object,
        request: ChatRequest,
        clock: Callable[[], float],
    ) -> None:
        otel = self._otel = instruments.otel
        self._ins = instruments
        self._llm = llm
        self._info = describe_llm(llm)
        self._clock = _Clock(clock)
        self._started_at = self._clock.now()
        self._capture = capture_content_enabled()
        self._secrets: tuple[str, ...] | None = None
        self._ended = False
        # The caller's current context (its active span, if any) is the parent.
        self._parent = otel.context.get_current()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            **self._info.attributes(),
            "gen_ai.request.stream": True,
            **_request_attributes(request),
        }
        label = getattr(llm, "label", None)
        if isinstance(label, str):
            attributes["trio_llmstream.llm.label"] = self._scrubbed(label)
        if self._capture:
            attributes["gen_ai.input.messages"] = _scrubbed_json(
                _input_messages(request), self.secrets
            )
            if request.tools:
                attributes["gen_ai.tool.definitions"] = _scrubbed_json(
                    [
                        {"type": "function", "name": t.name, "description": t.description,
                         "parameters": dict(t.parameters)}
                        for t in request.tools
                    ],
                    self.secrets,
                )
        self._span: Span | None = None
        self._span_context: Context | None = None
        if instruments.traced:
            name = f"chat {self._info.model}" if self._info.model else "chat"
            span = self._span = instruments.tracer.start_span(
                name,
                context=self._parent,
                kind=otel.SpanKind.CLIENT,
                attributes=attributes,
                start_time=self._clock.wall(self._started_at),
            )
            self._span_context = otel.trace.set_span_in_context(span, self._parent)

    @property
    def secrets(self) -> tuple[str, ...]:
        if self._secrets is None:
            self._secrets = _secrets_of(self._llm)
        return self._secrets

    def _scrubbed(self, text: str) -> str:
        return _scrub(text, self.secrets)

    def _describe(self, error: BaseException) -> str:
        text = f"{type(error).__qualname__}: {error}" if self._capture else _safe_summary(error)
        return _bounded(self._scrubbed(text), _MAX_DESCRIPTION)

    def activate(self) -> _Activation:
        return _Activation(self._otel, self._span_context)

    def attempt_finished(
        self, record: AttemptMetrics, provider: object | None = None
    ) -> None:
        # A failing hook is logged and ignored: telemetry never breaks a stream.
        try:
            self._attempt_finished(record, provider)
        except Exception:
            _failed("attempt_finished")

    def _attempt_finished(self, record: AttemptMetrics, provider: object | None) -> None:
        if self._span is None or self._ended:
            return
        otel = self._otel
        end = self._clock.now()
        if provider is None:
            provider = getattr(record, "provider", None)
        if provider is None or provider is self._llm:
            info = self._info
        elif isinstance(provider, str):
            info = ProviderInfo(provider_name=self._info.provider_name, model=None)
        else:
            info = describe_llm(provider)
        attributes: dict[str, Any] = {
            **info.attributes(),
            "trio_llmstream.attempt.number": record.attempt,
            "trio_llmstream.attempt.committed": record.committed,
            "trio_llmstream.attempt.backoff": float(record.backoff),
        }
        if isinstance(provider, str):
            attributes["trio_llmstream.llm.label"] = self._scrubbed(provider)
        elif provider is not None and provider is not self._llm:
            label = getattr(provider, "label", None)
            if isinstance(label, str):
                attributes["trio_llmstream.llm.label"] = self._scrubbed(label)
        if record.request_id:
            attributes["trio_llmstream.attempt.request_id"] = self._scrubbed(record.request_id)
        if record.usage is not None:
            attributes["trio_llmstream.attempt.input_tokens"] = record.usage.prompt_tokens
            attributes["trio_llmstream.attempt.output_tokens"] = record.usage.completion_tokens
        error = record.error
        if error is not None:
            attributes["error.type"] = error_type(error)
            status = getattr(error, "status_code", None)
            if isinstance(status, int):
                attributes["http.response.status_code"] = status
            retryable = getattr(error, "retryable", None)
            if isinstance(retryable, bool):
                attributes["trio_llmstream.error.retryable"] = retryable
        name = f"attempt {info.model}" if info.model else "attempt"
        span = self._ins.tracer.start_span(
            name,
            context=self._span_context,
            kind=otel.SpanKind.CLIENT,
            attributes=attributes,
            start_time=self._clock.wall(end - max(0.0, record.duration)),
        )
        if error is not None:
            span.set_status(otel.Status(otel.StatusCode.ERROR, self._describe(error)))
        span.end(end_time=self._clock.wall(end))

    def tool_started(self, call: FunctionCall, *, description: str | None = None) -> ToolTelemetry:
        try:
            return _RecordingToolTelemetry(self, call, description)
        except Exception:
            _failed("tool_started")
            return _NOOP_TOOL

    def finished(
        self,
        metrics: LLMMetrics,
        *,
        finish_reasons: Iterable[str | None] = (),
        response_model: str | None = None,
        output_chunks: int | None = None,
        generation_time: float | None = None,
        response: Callable[[], CollectedResponse] | None = None,
    ) -> None:
        try:
            self._finished(
                metrics, finish_reasons, response_model, output_chunks, generation_time,
                response,
            )
        except Exception:
            _failed("finished")

    def _finished(
        self,
        metrics: LLMMetrics,
        finish_reasons: Iterable[str | None],
        response_model: str | None,
        output_chunks: int | None,
        generation_time: float | None,
        response: Callable[[], CollectedResponse] | None,
    ) -> None:
        if self._ended:
            return
        self._ended = True
        otel = self._otel
        end = self._clock.now()
        common: dict[str, Any] = {"gen_ai.operation.name": "chat", **self._info.attributes()}
        if response_model:
            common["gen_ai.response.model"] = response_model
        failure: str | None = None
        if metrics.status is StreamStatus.CANCELLED:
            failure = "cancelled"
        elif metrics.error is not None:
            failure = error_type(metrics.error)
        elif metrics.status is not StreamStatus.COMPLETED:
            failure = metrics.status.value  # pragma: no cover - every failure carries an error
        input_tokens, output_tokens, cached, reasoning = _usage(metrics.attempts)
        reported = any(a.usage is not None for a in metrics.attempts)

        span = self._span
        if span is not None and span.is_recording():
            attributes: dict[str, Any] = {
                "trio_llmstream.stream.status": metrics.status.value,
                "trio_llmstream.stream.attempts": len(metrics.attempts),
            }
            if response_model:
                attributes["gen_ai.response.model"] = response_model
            if metrics.request_id:
                attributes["gen_ai.response.id"] = self._scrubbed(metrics.request_id)
            reasons = [r for r in finish_reasons if r is not None]
            if reasons:
                attributes["gen_ai.response.finish_reasons"] = reasons
            if reported:
                attributes["gen_ai.usage.input_tokens"] = input_tokens
                attributes["gen_ai.usage.output_tokens"] = output_tokens
                if cached is not None:
                    attributes["gen_ai.usage.cache_read.input_tokens"] = cached
                if reasoning is not None:
                    attributes["gen_ai.usage.reasoning.output_tokens"] = reasoning
            if metrics.ttft is not None:
                attributes["gen_ai.response.time_to_first_chunk"] = float(metrics.ttft)
            if failure is not None:
                attributes["error.type"] = failure
            if self._capture and response is not None:
                attributes["gen_ai.output.messages"] = _scrubbed_json(
                    _output_messages(response()), self.secrets
                )
            span.set_attributes(attributes)
            if metrics.error is not None and metrics.status is not StreamStatus.CANCELLED:
                span.set_status(
                    otel.Status(otel.StatusCode.ERROR, self._describe(metrics.error))
                )
        if span is not None:
            span.end(end_time=self._clock.wall(end))

        ins = self._ins
        if not ins.metered:
            return
        duration_attributes = dict(common)
        if failure is not None:
            duration_attributes["error.type"] = failure
        ins.duration.record(max(0.0, metrics.duration), duration_attributes)
        if reported:
            ins.tokens.record(input_tokens, {**common, "gen_ai.token.type": "input"})
            ins.tokens.record(output_tokens, {**common, "gen_ai.token.type": "output"})
        if metrics.ttft is not None:
            ins.ttfc.record(metrics.ttft, common)
        if (
            output_chunks is not None
            and output_chunks >= 2
            and generation_time is not None
            and generation_time >= 0
        ):
            ins.tpoc.record(generation_time / (output_chunks - 1), common)


def _usage(
    attempts: Sequence[AttemptMetrics],
) -> tuple[int, int, int | None, int | None]:
    """Usage summed over every attempt (failed ones were billed too)."""
    input_tokens = output_tokens = 0
    cached: int | None = None
    reasoning: int | None = None
    for attempt in attempts:
        usage = attempt.usage
        if usage is None:
            continue
        input_tokens += usage.prompt_tokens
        output_tokens += usage.completion_tokens
        if usage.cached_tokens is not None:
            cached = (cached or 0) + usage.cached_tokens
        if usage.reasoning_tokens is not None:
            reasoning = (reasoning or 0) + usage.reasoning_tokens
    return input_tokens, output_tokens, cached, reasoning


class _RecordingToolTelemetry(ToolTelemetry):
    __slots__ = ("_activation", "_done", "_name", "_span", "_started_at", "_stream")

    def __init__(
        self, stream: _RecordingStreamTelemetry, call: FunctionCall, description: str | None
    ) -> None:
        self._stream = stream
        self._name = call.name
        self._done = False
        self._started_at = stream._clock.now()
        otel = stream._otel
        self._span: Span | None = None
        context: Context | None = None
        if stream._ins.traced:
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": call.name,
                "gen_ai.tool.call.id": call.call_id,
                "gen_ai.tool.type": "function",
            }
            if description:
                attributes["gen_ai.tool.description"] = description
            if stream._capture:
                attributes["gen_ai.tool.call.arguments"] = stream._scrubbed(
                    _bounded(call.arguments)
                )
            self._span = stream._ins.tracer.start_span(
                f"execute_tool {call.name}",
                context=stream._span_context or stream._parent,
                kind=otel.SpanKind.INTERNAL,
                attributes=attributes,
                start_time=stream._clock.wall(self._started_at),
            )
            context = otel.trace.set_span_in_context(self._span, stream._span_context)
        self._activation = _Activation(otel, context)

    def __enter__(self) -> ToolTelemetry:
        try:
            self._activation.__enter__()
        except Exception:
            _failed("tool span activation")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._activation.__exit__(exc_type, exc, tb)
        except Exception:
            _failed("tool span deactivation")

    def finished(self, outcome: ToolOutcome | None) -> None:
        try:
            self._finished(outcome)
        except Exception:
            _failed("a tool call's finished")

    def _finished(self, outcome: ToolOutcome | None) -> None:
        if self._done:
            return
        self._done = True
        stream = self._stream
        otel = stream._otel
        end = stream._clock.now()
        kind = "cancelled" if outcome is None else outcome.kind.value
        failure: str | None = None
        error = None if outcome is None else outcome.error
        if kind == "timeout":
            failure = "timeout"
        elif kind == "cancelled":
            failure = "cancelled"
        elif kind == "error":
            failure = error_type(error) if error is not None else "tool_error"
        span = self._span
        if span is not None:
            attributes: dict[str, Any] = {"trio_llmstream.tool.outcome": kind}
            if failure is not None:
                attributes["error.type"] = failure
            if stream._capture and outcome is not None and kind == "result":
                attributes["gen_ai.tool.call.result"] = stream._scrubbed(
                    _bounded(outcome.output)
                )
            span.set_attributes(attributes)
            if kind in ("error", "timeout"):
                if stream._capture and outcome is not None:
                    description = _bounded(stream._scrubbed(outcome.message), _MAX_DESCRIPTION)
                elif error is not None:
                    description = _safe_summary(error)
                else:
                    description = kind
                span.set_status(otel.Status(otel.StatusCode.ERROR, description))
            span.end(end_time=stream._clock.wall(end))
        if stream._ins.metered:
            metric_attributes: dict[str, Any] = {
                "gen_ai.tool.name": self._name,
                "gen_ai.tool.type": "function",
            }
            if failure is not None:
                metric_attributes["error.type"] = failure
            stream._ins.tool_duration.record(max(0.0, end - self._started_at), metric_attributes)


_providers_override: ContextVar[tuple[TracerProvider | None, MeterProvider | None] | None] = (
    ContextVar("trio_llmstream_otel_providers", default=None)
)


@contextmanager
def use_providers(
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Iterator[None]:
    """Streams opened inside this block (in this task, and tasks it starts) use these
    providers instead of the global ones. For tests: the global providers can be set only
    once per process."""
    token = _providers_override.set((tracer_provider, meter_provider))
    try:
        yield
    finally:
        _providers_override.reset(token)


def open_stream_telemetry(
    llm: object,
    request: ChatRequest,
    *,
    clock: Callable[[], float] | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> StreamTelemetry:
    """The telemetry of a stream opening now; call it in the caller's task (its current span
    becomes the parent).

    Returns the shared no-op when there is nothing to record (see the module docstring). The
    providers default to the global ones; ``clock`` to ``trio.current_time``. Never raises.
    """
    try:
        if tracer_provider is None and meter_provider is None:
            override = _providers_override.get()
            if override is not None:
                tracer_provider, meter_provider = override
        if tracer_provider is None and meter_provider is None:
            otel = _load_otel()
        else:  # explicit providers: the application has the API in hand
            global _otel
            otel = _otel = _otel or _Otel()
        if otel is None:
            return NOOP
        instruments = otel.instruments(tracer_provider, meter_provider)
        if instruments is None:
            return NOOP
        return _RecordingStreamTelemetry(
            instruments, llm, request, clock or trio.current_time
        )
    except Exception:
        _failed("opening a stream's telemetry")
        return NOOP


# -- the relay: a span per run and per follower connection ----------------------------------------


class RelaySpan:
    """A span around a relay run or a follower connection; see :func:`relay_span`.

    A context manager: inside it the span is current, so the streams a run opens are its
    children. This base class is the no-op.
    """

    __slots__ = ()

    def __enter__(self) -> RelaySpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        """Add an attribute (a count of events sent, say) before the span ends."""


_NOOP_RELAY: Final = RelaySpan()


class _RecordingRelaySpan(RelaySpan):
    __slots__ = ("_activation", "_otel", "_span")

    def __init__(self, otel: _Otel, span: Span, context: Context) -> None:
        self._otel = otel
        self._span = span
        self._activation = _Activation(otel, context)

    def __enter__(self) -> RelaySpan:
        try:
            self._activation.__enter__()
        except Exception:
            _failed("relay span activation")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._activation.__exit__(exc_type, exc, tb)
            otel = self._otel
            if exc is not None:
                if isinstance(exc, trio.Cancelled) or _only_cancelled(exc):
                    self._span.set_attribute("error.type", "cancelled")
                else:
                    self._span.set_attribute("error.type", error_type(exc))
                    self._span.set_status(otel.Status(otel.StatusCode.ERROR, _safe_summary(exc)))
            self._span.end()
        except Exception:
            _failed("relay span end")

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        try:
            self._span.set_attribute(key, value)
        except Exception:
            _failed("relay span attribute")


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


class _AsgiHeaders:
    """The W3C propagator's getter over ASGI headers (lower-case byte pairs)."""

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in headers:
            key = name.decode("latin-1").lower()
            if key in ("traceparent", "tracestate"):
                self._values.setdefault(key, []).append(value.decode("latin-1"))

    def get(self, carrier: object, key: str) -> list[str] | None:
        return self._values.get(key.lower())

    def keys(self, carrier: object) -> list[str]:
        return list(self._values)


def relay_span(
    name: str,
    *,
    run_id: str,
    headers: Iterable[tuple[bytes, bytes]] | None = None,
    server: bool = False,
) -> RelaySpan:
    """A span for the relay: ``relay run`` (INTERNAL, around a run's task) or ``relay follow``
    (``server=True``: SERVER, around one follower connection), with ``trio_llmstream.run.id``.

    With ``headers`` (the ASGI request's), a W3C ``traceparent``/``tracestate`` makes the span
    a child of the caller's span, in the caller's trace; a malformed one is ignored. Without,
    the current span is the parent. Leaving with an exception records it (cancellation:
    ``error.type = "cancelled"``, status unset). The shared no-op when nothing records.
    Never raises.
    """
    try:
        override = _providers_override.get()
        if override is not None and override[0] is not None:
            otel: _Otel | None = _otel or _Otel()
        else:
            otel = _load_otel()
        if otel is None:
            return _NOOP_RELAY
        instruments = otel.instruments(override[0] if override else None, None)
        if instruments is None or not instruments.traced:
            return _NOOP_RELAY
        parent = otel.context.get_current()
        if headers is not None:
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            getter = _AsgiHeaders(headers)
            if getter.get(None, "traceparent"):
                parent = TraceContextTextMapPropagator().extract(
                    None, context=otel.context.Context(), getter=getter  # type: ignore[arg-type]
                )
        span = instruments.tracer.start_span(
            name,
            context=parent,
            kind=otel.SpanKind.SERVER if server else otel.SpanKind.INTERNAL,
            attributes={"trio_llmstream.run.id": run_id},
        )
        return _RecordingRelaySpan(otel, span, otel.trace.set_span_in_context(span, parent))
    except Exception:
        _failed("relay_span")
        return _NOOP_RELAY


# -- console set-up for ``chat --otel`` ---------------------------------------------------------


def install_console_exporters(out: Any = None) -> Callable[[], None] | None:
    """Install SDK providers that print spans and metrics to ``out`` (default: stderr, so
    the answer on stdout stays clean) and return a function that flushes and shuts them down.

    Without the SDK, prints one line naming the extra to install and returns None. Call it
    once, before the first stream; the global providers can be set only once per process.
    """
    stream = out if out is not None else sys.stderr
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        print(
            "telemetry: the OpenTelemetry SDK is not installed; "
            "pip install 'trio_llmstream[otel]' opentelemetry-sdk",
            file=stream,
        )
        return None
    resource = Resource.create({"service.name": "trio_llmstream-chat"})
    tracer_provider = TracerProvider(resource=resource)
    # Simple (synchronous) export: a newcomer sees each span as it ends.
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=stream)))
    reader = PeriodicExportingMetricReader(
        ConsoleMetricExporter(out=stream), export_interval_millis=3_600_000
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)

    done = False

    def shutdown() -> None:
        # Metrics are printed once, here (the hour-long interval never elapses in a chat).
        # Idempotent; without it, the SDK's own exit handler does the same.
        nonlocal done
        if not done:
            done = True
            tracer_provider.shutdown()
            meter_provider.shutdown()

    return shutdown
