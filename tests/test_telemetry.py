"""OpenTelemetry hooks (trio_llmstream._telemetry) against the SDK's in-memory exporter and
reader: names, kinds, parentage, attributes and data points for success, retry, failure,
cancellation, tool calls and fallback; content capture and secrets; the no-op paths.

Each test gets its own SDK providers (passed explicitly), so the process's global providers
stay untouched; the global path is checked in a subprocess (test_telemetry_process.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from trio_llmstream import ToolOutcome, ToolOutcomeKind, _telemetry
from trio_llmstream._exceptions import (
    APIStatusError,
    APITimeoutError,
    RetriesExhaustedError,
    StreamInterrupted,
    StreamTruncatedError,
)
from trio_llmstream._models import (
    AttemptMetrics,
    ChatContext,
    ChatRequest,
    CollectedChoice,
    CollectedResponse,
    CompletionUsage,
    FunctionCall,
    LLMMetrics,
    StreamStatus,
    ToolSpec,
)
from trio_llmstream._telemetry import (
    CAPTURE_CONTENT_ENV,
    DURATION_BUCKETS,
    NOOP,
    TOKEN_BUCKETS,
    StreamTelemetry,
    describe_llm,
    open_stream_telemetry,
)
from trio_llmstream.providers.openai import OpenAILLM

KEY = "sk-test-5f3c9a1be7d24c08a6e1"


class FakeClock:
    """The runtime's clock, moved by hand: span times and durations are exact."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class CompatLLM:
    """Shaped like OpenAILLM as telemetry sees it (model, base_url, credential header)."""

    otel_provider_name = "openai"

    def __init__(
        self,
        model: str = "gpt-4o",
        base_url: str = "https://api.example.com/v1",
        key: str = KEY,
        label: str | None = None,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.label = label or f"openai:{model}"
        self._headers = {"authorization": f"Bearer {key}", "accept": "text/event-stream"}


class AnthropicLLM:  # the class name alone gives the provider name
    def __init__(self) -> None:
        self.model = "claude-sonnet-4"
        self.base_url = "https://api.anthropic.com"
        self.label = "anthropic:claude-sonnet-4"


@attrs.define
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    clock: FakeClock

    def open(self, llm: object, request: ChatRequest | None = None) -> StreamTelemetry:
        return open_stream_telemetry(
            llm,
            request or make_request(),
            clock=self.clock,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
        )

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.finished() if s.name == name]
        assert len(found) == 1, [s.name for s in self.finished()]
        return found[0]

    def points(self) -> dict[str, list[HistogramDataPoint]]:
        data = self.reader.get_metrics_data()
        out: dict[str, list[HistogramDataPoint]] = {}
        if data is None:
            return out
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "trio_llmstream"
                for metric in scope.metrics:
                    out.setdefault(metric.name, []).extend(
                        p for p in metric.data.data_points if isinstance(p, HistogramDataPoint)
                    )
        return out

    def everything(self) -> str:
        """Every exported span and data point as text, to search for what must not be there."""
        parts = [span.to_json() for span in self.finished()]
        data = self.reader.get_metrics_data()
        if data is not None:
            parts.append(data.to_json())
        return "\n".join(parts)


def make_otel() -> Otel:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    return Otel(spans, reader, tracer_provider, MeterProvider(metric_readers=[reader]), FakeClock())


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Otel]:
    monkeypatch.delenv(CAPTURE_CONTENT_ENV, raising=False)
    made = make_otel()
    yield made
    made.tracer_provider.shutdown()
    made.meter_provider.shutdown()


def make_request(**kwargs: Any) -> ChatRequest:
    ctx = ChatContext()
    ctx.add_message(role="system", content="You are terse.")
    ctx.add_message(role="user", content="Weather in Paris?")
    return ChatRequest(messages=tuple(ctx.messages), **kwargs)


def usage(prompt: int, completion: int, **kwargs: Any) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        **kwargs,
    )


def make_metrics(
    attempts: list[AttemptMetrics],
    *,
    status: StreamStatus = StreamStatus.COMPLETED,
    ttft: float | None = 0.25,
    duration: float = 2.0,
    error: BaseException | None = None,
) -> LLMMetrics:
    usages = [a.usage for a in attempts if a.usage is not None]
    return LLMMetrics(
        label="openai:gpt-4o",
        request_ids=tuple(a.request_id for a in attempts if a.request_id),
        status=status,
        attempts=tuple(attempts),
        ttft=ttft,
        duration=duration,
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        total_tokens=sum(u.total_tokens for u in usages),
        tokens_per_second=None,
        cancelled=status is StreamStatus.CANCELLED,
        error=error,
    )


def run_attempt(
    otel: Otel,
    telemetry: StreamTelemetry,
    record: AttemptMetrics,
    provider: object | None = None,
) -> None:
    """The attempt takes record.duration on the clock, then its backoff is slept."""
    otel.clock.advance(record.duration)
    telemetry.attempt_finished(record, provider)
    otel.clock.advance(record.backoff)


def ns(seconds: float) -> int:
    return round(seconds * 1e9)


def base_attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# -- success ------------------------------------------------------------------------------------


def test_success_span_attributes_and_child_attempt(otel: Otel) -> None:
    request = make_request(
        temperature=0.2, n=2, extra={"max_tokens": 200, "top_p": 1, "stop": ["END"], "seed": 7}
    )
    telemetry = otel.open(CompatLLM(), request)
    assert telemetry.enabled
    record = AttemptMetrics(
        attempt=0, request_id="chatcmpl-1", duration=1.5, committed=True,
        usage=usage(120, 30, cached_tokens=100, reasoning_tokens=12),
    )
    run_attempt(otel, telemetry, record)
    otel.clock.advance(0.5)
    telemetry.finished(
        make_metrics([record], ttft=0.25, duration=2.0),
        finish_reasons=["stop", None, "length"],
        response_model="gpt-4o-2024-08-06",
        output_chunks=31,
        generation_time=1.2,
    )

    stream = otel.span("chat gpt-4o")
    assert stream.kind is SpanKind.CLIENT
    assert stream.parent is None
    assert stream.status.status_code is StatusCode.UNSET
    assert stream.instrumentation_scope is not None
    assert stream.instrumentation_scope.name == "trio_llmstream"
    assert stream.end_time is not None
    assert stream.start_time is not None
    assert stream.end_time - stream.start_time == ns(2.0)
    assert base_attributes(stream) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "server.address": "api.example.com",
        "server.port": 443,
        "gen_ai.request.stream": True,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.choice.count": 2,
        "gen_ai.request.max_tokens": 200,
        "gen_ai.request.top_p": 1.0,
        "gen_ai.request.stop_sequences": ("END",),
        "gen_ai.request.seed": 7,
        "trio_llmstream.llm.label": "openai:gpt-4o",
        "trio_llmstream.stream.status": "completed",
        "trio_llmstream.stream.attempts": 1,
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ("stop", "length"),
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 100,
        "gen_ai.usage.reasoning.output_tokens": 12,
        "gen_ai.response.time_to_first_chunk": 0.25,
    }

    attempt = otel.span("attempt gpt-4o")
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.parent is not None
    assert stream.context is not None
    assert attempt.parent.span_id == stream.context.span_id
    assert attempt.context is not None
    assert attempt.context.trace_id == stream.context.trace_id
    assert attempt.start_time == stream.start_time
    assert attempt.end_time == stream.start_time + ns(1.5)
    attributes = base_attributes(attempt)
    assert attributes["trio_llmstream.attempt.number"] == 0
    assert attributes["trio_llmstream.attempt.committed"] is True
    assert attributes["trio_llmstream.attempt.backoff"] == 0.0
    assert attributes["trio_llmstream.attempt.input_tokens"] == 120
    assert attributes["trio_llmstream.attempt.request_id"] == "chatcmpl-1"
    # Attempts are not logical GenAI operations: no double counting in GenAI backends.
    assert "gen_ai.operation.name" not in attributes
    assert not any(k.startswith("gen_ai.usage.") for k in attributes)
    assert attempt.status.status_code is StatusCode.UNSET


def test_success_metrics_data_points(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    record = AttemptMetrics(
        attempt=0, request_id="chatcmpl-1", duration=1.0, committed=True, usage=usage(120, 30)
    )
    run_attempt(otel, telemetry, record)
    telemetry.finished(
        make_metrics([record], ttft=0.25, duration=1.0),
        response_model="gpt-4o-2024-08-06", output_chunks=31, generation_time=1.2,
    )
    points = otel.points()
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "server.address": "api.example.com",
        "server.port": 443,
        "gen_ai.response.model": "gpt-4o-2024-08-06",
    }
    [duration] = points["gen_ai.client.operation.duration"]
    assert dict(duration.attributes or {}) == common
    assert (duration.count, duration.sum) == (1, 1.0)
    assert tuple(duration.explicit_bounds) == DURATION_BUCKETS

    tokens = {
        (p.attributes or {})["gen_ai.token.type"]: p for p in points["gen_ai.client.token.usage"]
    }
    assert set(tokens) == {"input", "output"}
    assert tokens["input"].sum == 120
    assert tokens["output"].sum == 30
    assert tuple(tokens["input"].explicit_bounds) == TOKEN_BUCKETS
    assert {k: v for k, v in (tokens["input"].attributes or {}).items()
            if k != "gen_ai.token.type"} == common

    [ttfc] = points["gen_ai.client.operation.time_to_first_chunk"]
    assert (ttfc.count, ttfc.sum) == (1, 0.25)
    assert tuple(ttfc.explicit_bounds) == DURATION_BUCKETS
    assert dict(ttfc.attributes or {}) == common
    [tpoc] = points["gen_ai.client.operation.time_per_output_chunk"]
    assert tpoc.count == 1
    assert tpoc.sum == pytest.approx(1.2 / 30)
    assert tuple(tpoc.explicit_bounds) == DURATION_BUCKETS


def test_time_per_output_chunk_needs_two_chunks(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    record = AttemptMetrics(attempt=0, request_id="r", duration=1.0, committed=True)
    run_attempt(otel, telemetry, record)
    telemetry.finished(make_metrics([record]), output_chunks=1, generation_time=0.0)
    points = otel.points()
    assert "gen_ai.client.operation.time_per_output_chunk" not in points
    # No usage was reported: the convention forbids a token-usage data point then.
    assert "gen_ai.client.token.usage" not in points
    assert "gen_ai.usage.input_tokens" not in base_attributes(otel.span("chat gpt-4o"))


# -- retry, failure, cancellation ---------------------------------------------------------------


def test_retry_then_success(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    failed = AttemptMetrics(
        attempt=0, request_id="req-a", duration=0.3, backoff=0.5,
        error=APIStatusError("overloaded", status_code=503), usage=usage(100, 0),
    )
    ok = AttemptMetrics(
        attempt=1, request_id="chatcmpl-2", duration=1.0, committed=True, usage=usage(100, 20)
    )
    run_attempt(otel, telemetry, failed)
    run_attempt(otel, telemetry, ok)
    telemetry.finished(make_metrics([failed, ok], duration=1.8))

    stream = otel.span("chat gpt-4o")
    assert stream.status.status_code is StatusCode.UNSET
    attributes = base_attributes(stream)
    assert "error.type" not in attributes
    assert attributes["trio_llmstream.stream.attempts"] == 2
    assert attributes["gen_ai.response.id"] == "chatcmpl-2"
    # The failed attempt's prompt was billed too.
    assert attributes["gen_ai.usage.input_tokens"] == 200
    assert attributes["gen_ai.usage.output_tokens"] == 20

    attempts = sorted(
        (s for s in otel.finished() if s.name == "attempt gpt-4o"),
        key=lambda s: base_attributes(s)["trio_llmstream.attempt.number"],
    )
    assert len(attempts) == 2
    first, second = attempts
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "APIStatusError: HTTP 503"
    assert base_attributes(first)["error.type"] == "APIStatusError"
    assert base_attributes(first)["http.response.status_code"] == 503
    assert base_attributes(first)["trio_llmstream.error.retryable"] is True
    assert base_attributes(first)["trio_llmstream.attempt.backoff"] == 0.5
    assert second.status.status_code is StatusCode.UNSET
    assert first.end_time is not None
    assert second.start_time is not None
    assert second.start_time - first.end_time == ns(0.5)  # the backoff is the gap
    for span in attempts:
        assert span.parent is not None
        assert stream.context is not None
        assert span.parent.span_id == stream.context.span_id

    [duration] = otel.points()["gen_ai.client.operation.duration"]
    assert "error.type" not in (duration.attributes or {})


def test_failure_sets_error_status_and_reports_usage(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    errors = [
        APIStatusError("rate limited", status_code=429),
        APITimeoutError("first_token", 10.0),
    ]
    records = [
        AttemptMetrics(attempt=0, request_id=None, duration=0.2, backoff=1.0, error=errors[0]),
        AttemptMetrics(
            attempt=1, request_id="chatcmpl-3", duration=10.0, error=errors[1],
            usage=usage(90, 0),
        ),
    ]
    for record in records:
        run_attempt(otel, telemetry, record)
    final = RetriesExhaustedError(errors)
    telemetry.finished(
        make_metrics(records, status=StreamStatus.FAILED, ttft=None, duration=11.2, error=final)
    )
    stream = otel.span("chat gpt-4o")
    assert stream.status.status_code is StatusCode.ERROR
    assert stream.status.description == (
        "RetriesExhaustedError: 2 attempts; last APITimeoutError: first_token timeout after 10s"
    )
    attributes = base_attributes(stream)
    assert attributes["error.type"] == "RetriesExhaustedError"
    assert attributes["trio_llmstream.stream.status"] == "failed"
    assert attributes["gen_ai.usage.input_tokens"] == 90
    assert "gen_ai.response.time_to_first_chunk" not in attributes

    points = otel.points()
    [duration] = points["gen_ai.client.operation.duration"]
    assert (duration.attributes or {})["error.type"] == "RetriesExhaustedError"
    assert duration.sum == 11.2
    assert {p.sum for p in points["gen_ai.client.token.usage"]} == {90, 0}
    assert "gen_ai.client.operation.time_to_first_chunk" not in points


def test_truncated_after_commit_is_an_error(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    cause = StreamTruncatedError("body ended without [DONE]")
    record = AttemptMetrics(
        attempt=0, request_id="chatcmpl-4", duration=2.0, committed=True, error=cause
    )
    run_attempt(otel, telemetry, record)
    final = StreamInterrupted(CollectedResponse(text="Half an ans"), cause)
    telemetry.finished(make_metrics([record], status=StreamStatus.TRUNCATED, error=final))
    stream = otel.span("chat gpt-4o")
    assert stream.status.status_code is StatusCode.ERROR
    assert base_attributes(stream)["error.type"] == "StreamInterrupted"
    assert base_attributes(stream)["trio_llmstream.stream.status"] == "truncated"
    # The summary names the cause but carries none of the delivered text.
    assert stream.status.description == "StreamInterrupted: StreamTruncatedError"
    attempt = otel.span("attempt gpt-4o")
    assert base_attributes(attempt)["trio_llmstream.attempt.committed"] is True
    assert base_attributes(attempt)["error.type"] == "StreamTruncatedError"


def test_cancelled_stream_is_not_an_error_but_is_told_apart(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    record = AttemptMetrics(
        attempt=0, request_id="chatcmpl-5", duration=0.7, committed=True, usage=usage(50, 7)
    )
    run_attempt(otel, telemetry, record)
    telemetry.finished(
        make_metrics([record], status=StreamStatus.CANCELLED, ttft=0.3, duration=0.7)
    )
    stream = otel.span("chat gpt-4o")
    assert stream.status.status_code is StatusCode.UNSET
    attributes = base_attributes(stream)
    assert attributes["error.type"] == "cancelled"
    assert attributes["trio_llmstream.stream.status"] == "cancelled"
    assert attributes["gen_ai.usage.output_tokens"] == 7  # what it had, reported
    points = otel.points()
    [duration] = points["gen_ai.client.operation.duration"]
    assert (duration.attributes or {})["error.type"] == "cancelled"
    assert {p.sum for p in points["gen_ai.client.token.usage"]} == {50, 7}
    assert points["gen_ai.client.operation.time_to_first_chunk"][0].sum == 0.3


def test_finished_twice_records_once(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    record = AttemptMetrics(attempt=0, request_id="r", duration=1.0, usage=usage(1, 1))
    run_attempt(otel, telemetry, record)
    telemetry.finished(make_metrics([record]))
    telemetry.finished(make_metrics([record]))
    telemetry.attempt_finished(record)  # after the end: ignored
    assert [s.name for s in otel.finished()].count("chat gpt-4o") == 1
    assert len(otel.finished()) == 2
    assert otel.points()["gen_ai.client.operation.duration"][0].count == 1


# -- parentage ----------------------------------------------------------------------------------


def test_callers_current_span_is_the_parent(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as outer:
        telemetry = otel.open(CompatLLM())
    # Opened inside the caller's span, finished elsewhere: the parent was captured at open.
    telemetry.finished(make_metrics([]))
    stream = otel.span("chat gpt-4o")
    assert stream.parent is not None
    assert stream.parent.span_id == outer.get_span_context().span_id
    assert stream.context is not None
    assert stream.context.trace_id == outer.get_span_context().trace_id


def test_activate_makes_the_stream_span_current(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    tracer = otel.tracer_provider.get_tracer("httpx-instrumentation")
    before = trace.get_current_span()
    with telemetry.activate(), tracer.start_as_current_span("POST"):
        pass
    assert trace.get_current_span() is before
    telemetry.finished(make_metrics([]))
    stream = otel.span("chat gpt-4o")
    post = otel.span("POST")
    assert post.parent is not None
    assert stream.context is not None
    assert post.parent.span_id == stream.context.span_id


# -- tools --------------------------------------------------------------------------------------


def test_tool_spans_outcomes_and_duration_metric(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    tracer = otel.tracer_provider.get_tracer("app")
    calls = {
        kind: FunctionCall(call_id=f"call_{kind.value}", name="get_weather",
                           arguments='{"city": "Paris"}')
        for kind in ToolOutcomeKind
    }
    outcomes = {
        ToolOutcomeKind.RESULT: ToolOutcome(calls[ToolOutcomeKind.RESULT], ToolOutcomeKind.RESULT,
                                            value={"temp": 12}),
        ToolOutcomeKind.ERROR: ToolOutcome(calls[ToolOutcomeKind.ERROR], ToolOutcomeKind.ERROR,
                                           error=KeyError("city"),
                                           message="get_weather raised KeyError: 'city'"),
        ToolOutcomeKind.TIMEOUT: ToolOutcome(calls[ToolOutcomeKind.TIMEOUT],
                                             ToolOutcomeKind.TIMEOUT, message="timed out"),
        ToolOutcomeKind.CANCELLED: ToolOutcome(calls[ToolOutcomeKind.CANCELLED],
                                               ToolOutcomeKind.CANCELLED, message="cancelled"),
    }
    for seconds, kind in enumerate(ToolOutcomeKind, start=1):
        tool = telemetry.tool_started(calls[kind], description="Current weather")
        with tool, tracer.start_as_current_span(f"inside {kind.value}"):
            otel.clock.advance(seconds)
        tool.finished(outcomes[kind])
        tool.finished(outcomes[kind])  # a second outcome is ignored
    telemetry.finished(make_metrics([]))

    stream = otel.span("chat gpt-4o")
    tools = [s for s in otel.finished() if s.name == "execute_tool get_weather"]
    assert len(tools) == 4
    by_id = {base_attributes(s)["gen_ai.tool.call.id"]: s for s in tools}
    for seconds, kind in enumerate(ToolOutcomeKind, start=1):
        span = by_id[f"call_{kind.value}"]
        assert span.kind is SpanKind.INTERNAL
        assert span.parent is not None
        assert stream.context is not None
        assert span.parent.span_id == stream.context.span_id
        assert span.end_time is not None
        assert span.start_time is not None
        assert span.end_time - span.start_time == ns(seconds)
        attributes = base_attributes(span)
        assert attributes["gen_ai.operation.name"] == "execute_tool"
        assert attributes["gen_ai.tool.name"] == "get_weather"
        assert attributes["gen_ai.tool.type"] == "function"
        assert attributes["gen_ai.tool.description"] == "Current weather"
        assert attributes["trio_llmstream.tool.outcome"] == kind.value
        assert "gen_ai.tool.call.arguments" not in attributes
        assert "gen_ai.tool.call.result" not in attributes
        inner = otel.span(f"inside {kind.value}")
        assert inner.parent is not None
        assert span.context is not None
        assert inner.parent.span_id == span.context.span_id
    assert by_id["call_result"].status.status_code is StatusCode.UNSET
    assert "error.type" not in base_attributes(by_id["call_result"])
    assert by_id["call_error"].status.status_code is StatusCode.ERROR
    assert by_id["call_error"].status.description == "KeyError"  # no message by default
    assert base_attributes(by_id["call_error"])["error.type"] == "KeyError"
    assert by_id["call_timeout"].status.status_code is StatusCode.ERROR
    assert base_attributes(by_id["call_timeout"])["error.type"] == "timeout"
    assert by_id["call_cancelled"].status.status_code is StatusCode.UNSET
    assert base_attributes(by_id["call_cancelled"])["error.type"] == "cancelled"

    points = otel.points()["gen_ai.execute_tool.duration"]
    by_error = {(p.attributes or {}).get("error.type"): p for p in points}
    assert set(by_error) == {None, "KeyError", "timeout", "cancelled"}
    assert by_error[None].sum == 1
    assert by_error["KeyError"].sum == 2
    assert by_error["timeout"].sum == 3
    assert by_error["cancelled"].sum == 4
    for point in points:
        assert (point.attributes or {})["gen_ai.tool.name"] == "get_weather"
        assert tuple(point.explicit_bounds) == DURATION_BUCKETS


def test_tool_without_outcome_counts_as_cancelled(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    tool = telemetry.tool_started(FunctionCall("c1", "lookup", "{}"))
    with tool:
        pass
    tool.finished(None)
    span = otel.span("execute_tool lookup")
    assert base_attributes(span)["trio_llmstream.tool.outcome"] == "cancelled"


def test_unknown_tool_error_without_exception(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    call = FunctionCall("c9", "nope", "{}")
    tool = telemetry.tool_started(call)
    tool.finished(ToolOutcome(call, ToolOutcomeKind.ERROR, message="unknown tool 'nope'"))
    span = otel.span("execute_tool nope")
    assert base_attributes(span)["error.type"] == "tool_error"
    assert span.status.status_code is StatusCode.ERROR


# -- fallback -----------------------------------------------------------------------------------


def test_fallback_attempts_name_their_provider(otel: Otel) -> None:
    primary = CompatLLM("gpt-4o", "https://api.openai.com/v1")
    local = CompatLLM("llama3", "http://localhost:11434/v1", label="ollama:llama3")
    claude = AnthropicLLM()
    telemetry = otel.open(primary)
    run_attempt(otel, telemetry, AttemptMetrics(
        attempt=0, request_id=None, duration=0.1,
        error=APIStatusError("down", status_code=500)))
    run_attempt(otel, telemetry, AttemptMetrics(
        attempt=1, request_id=None, duration=0.1,
        error=APIStatusError("down", status_code=502)), local)
    run_attempt(otel, telemetry, AttemptMetrics(
        attempt=2, request_id="msg_1", duration=1.0, committed=True), claude)
    run_attempt(otel, telemetry, AttemptMetrics(
        attempt=3, request_id="x", duration=0.1), "some-label")
    telemetry.finished(make_metrics([]))

    by_number = {
        base_attributes(s)["trio_llmstream.attempt.number"]: s
        for s in otel.finished() if s.name.startswith("attempt")
    }
    assert by_number[0].name == "attempt gpt-4o"
    assert base_attributes(by_number[0])["server.address"] == "api.openai.com"
    assert by_number[1].name == "attempt llama3"
    local_attributes = base_attributes(by_number[1])
    assert local_attributes["gen_ai.provider.name"] == "openai"
    assert local_attributes["server.address"] == "localhost"
    assert local_attributes["server.port"] == 11434
    assert local_attributes["trio_llmstream.llm.label"] == "ollama:llama3"
    assert by_number[2].name == "attempt claude-sonnet-4"
    claude_attributes = base_attributes(by_number[2])
    assert claude_attributes["gen_ai.provider.name"] == "anthropic"
    assert claude_attributes["server.address"] == "api.anthropic.com"
    assert claude_attributes["server.port"] == 443
    assert by_number[3].name == "attempt"
    assert base_attributes(by_number[3])["trio_llmstream.llm.label"] == "some-label"


# -- describing providers -----------------------------------------------------------------------


async def test_describe_openai_llm_never_shows_user_info() -> None:
    async with OpenAILLM(
        "gpt-4o-mini", base_url="https://user:hunter2-password@proxy.internal:8443/v1",
        api_key=KEY,
    ) as llm:
        info = describe_llm(llm)
        assert info == _telemetry.ProviderInfo(
            provider_name="openai", model="gpt-4o-mini",
            server_address="proxy.internal", server_port=8443,
        )
        assert _telemetry._secrets_of(llm)[0] == f"Bearer {KEY}"
        assert KEY in _telemetry._secrets_of(llm)

        class Tuned(OpenAILLM):
            pass

        async with Tuned("m", base_url="http://10.0.0.5/v1") as tuned:
            assert describe_llm(tuned) == _telemetry.ProviderInfo(
                "openai", "m", "10.0.0.5", 80
            )


def test_describe_llm_declared_unknown_and_malformed() -> None:
    class Gemini:
        otel_provider_name = "gcp.gemini"
        model = "gemini-2.5-flash"
        base_url = "https://generativelanguage.googleapis.com/v1beta"

    assert describe_llm(Gemini()) == _telemetry.ProviderInfo(
        "gcp.gemini", "gemini-2.5-flash", "generativelanguage.googleapis.com", 443
    )

    class ScriptedLLM:
        pass

    assert describe_llm(ScriptedLLM()) == _telemetry.ProviderInfo("ScriptedLLM")

    class Broken:
        model = "m"
        base_url = "http://host:notaport/v1"

    assert describe_llm(Broken()) == _telemetry.ProviderInfo("Broken", "m")


def test_span_name_without_a_model(otel: Otel) -> None:
    class Anonymous:
        label = "anon"

    telemetry = otel.open(Anonymous())
    telemetry.finished(make_metrics([]))
    span = otel.span("chat")
    assert base_attributes(span)["gen_ai.provider.name"] == "Anonymous"
    assert "gen_ai.request.model" not in base_attributes(span)


# -- content capture and secrets ----------------------------------------------------------------


def _full_run(otel: Otel, request: ChatRequest) -> None:
    telemetry = otel.open(CompatLLM(), request)
    # The server echoes the key in an error message and the model in its output.
    echo = APIStatusError(f"invalid key {KEY} for prompt 'Weather in Paris?'", status_code=401,
                          request_id=f"req-{KEY}")
    run_attempt(otel, telemetry, AttemptMetrics(attempt=0, request_id=f"req-{KEY}",
                                                duration=0.1, backoff=0.2, error=echo))
    run_attempt(otel, telemetry, AttemptMetrics(attempt=1, request_id="chatcmpl-9",
                                                duration=1.0, committed=True))
    call = FunctionCall("call_1", "get_weather", json.dumps({"city": "Paris", "token": KEY}))
    tool = telemetry.tool_started(call)
    with tool:
        pass
    tool.finished(ToolOutcome(call, ToolOutcomeKind.RESULT, value=f"rainy; key={KEY}"))
    failing = FunctionCall("call_2", "get_weather", "{}")
    tool = telemetry.tool_started(failing)
    tool.finished(ToolOutcome(failing, ToolOutcomeKind.ERROR, error=ValueError(KEY),
                              message=f"get_weather raised ValueError: {KEY}"))
    response = CollectedResponse(
        text=f"It rains. Your key is {KEY}",
        choices=(CollectedChoice(text=f"It rains. Your key is {KEY}", reasoning="Look it up.",
                                 function_calls=(call,), finish_reason="stop"),),
    )
    telemetry.finished(
        make_metrics([], error=APIStatusError(f"bad {KEY}", status_code=400),
                     status=StreamStatus.FAILED),
        finish_reasons=["stop"],
        response=lambda: response,
    )


def _request_with_secrets() -> ChatRequest:
    ctx = ChatContext()
    ctx.add_message(role="system", content="You are terse.")
    ctx.add_message(role="user", content=f"Weather in Paris? my key is {KEY}")
    ctx.add_message(role="assistant", tool_calls=[FunctionCall("call_0", "get_weather",
                                                               '{"city": "Paris"}')])
    ctx.add_tool_result("call_0", "rainy")
    return ChatRequest(messages=tuple(ctx.messages),
                       tools=(ToolSpec("get_weather", "Current weather"),))


def test_no_content_by_default_and_never_the_key(otel: Otel) -> None:
    _full_run(otel, _request_with_secrets())
    text = otel.everything()
    assert KEY not in text
    for attribute in ("gen_ai.input.messages", "gen_ai.output.messages",
                      "gen_ai.tool.definitions", "gen_ai.tool.call.arguments",
                      "gen_ai.tool.call.result"):
        assert attribute not in text
    assert "Weather in Paris" not in text  # not even from the echoing error message
    assert "It rains" not in text


@pytest.mark.parametrize("setting", ["true", "SPAN_ONLY", "span_and_event"])
def test_content_capture_opt_in(
    otel: Otel, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv(CAPTURE_CONTENT_ENV, setting)
    _full_run(otel, _request_with_secrets())
    assert KEY not in otel.everything()
    stream = base_attributes(otel.span("chat gpt-4o"))
    messages = json.loads(str(stream["gen_ai.input.messages"]))
    assert messages == [
        {"role": "system", "parts": [{"type": "text", "content": "You are terse."}]},
        {"role": "user", "parts": [
            {"type": "text", "content": "Weather in Paris? my key is [REDACTED]"}]},
        {"role": "assistant", "parts": [
            {"type": "tool_call", "id": "call_0", "name": "get_weather",
             "arguments": {"city": "Paris"}}]},
        {"role": "tool", "parts": [
            {"type": "tool_call_response", "id": "call_0", "response": "rainy"}]},
    ]
    assert json.loads(str(stream["gen_ai.output.messages"])) == [
        {"role": "assistant", "finish_reason": "stop", "parts": [
            {"type": "reasoning", "content": "Look it up."},
            {"type": "text", "content": "It rains. Your key is [REDACTED]"},
            {"type": "tool_call", "id": "call_1", "name": "get_weather",
             "arguments": {"city": "Paris", "token": "[REDACTED]"}}]},
    ]
    assert json.loads(str(stream["gen_ai.tool.definitions"]))[0]["name"] == "get_weather"
    span = otel.span("chat gpt-4o")
    assert span.status.description == "APIStatusError: HTTP 400: bad [REDACTED]"
    tools = {base_attributes(s)["gen_ai.tool.call.id"]: base_attributes(s)
             for s in otel.finished() if s.name == "execute_tool get_weather"}
    assert json.loads(str(tools["call_1"]["gen_ai.tool.call.arguments"])) == {
        "city": "Paris", "token": "[REDACTED]"}
    assert tools["call_1"]["gen_ai.tool.call.result"] == "rainy; key=[REDACTED]"


def test_captured_parts_are_bounded(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAPTURE_CONTENT_ENV, "true")
    ctx = ChatContext()
    ctx.add_message(role="user", content="x" * (3 * _telemetry.MAX_CONTENT_CHARS))
    telemetry = otel.open(CompatLLM(), ChatRequest(messages=tuple(ctx.messages)))
    telemetry.finished(make_metrics([]))
    [message] = json.loads(
        str(base_attributes(otel.span("chat gpt-4o"))["gen_ai.input.messages"])
    )
    content = message["parts"][0]["content"]
    assert content.startswith("x" * _telemetry.MAX_CONTENT_CHARS)
    assert content.endswith("[truncated]")
    assert len(content) < _telemetry.MAX_CONTENT_CHARS + 20


@pytest.mark.parametrize("setting", ["", "false", "NO_CONTENT", "EVENT_ONLY", "yes please"])
def test_content_capture_off_settings(monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv(CAPTURE_CONTENT_ENV, setting)
    assert not _telemetry.capture_content_enabled()


def test_secrets_and_scrub() -> None:
    class Declares:
        def __init__(self) -> None:
            self._headers = {
                "x-api-key": "ant-key-0123456789", "Authorization": "Basic dXNlcjpwYXNz"
            }

        def otel_secrets(self) -> list[str]:
            return ["declared-secret-value", "short"]

    secrets = _telemetry._secrets_of(Declares())
    assert "declared-secret-value" in secrets
    assert "ant-key-0123456789" in secrets
    assert "dXNlcjpwYXNz" in secrets
    assert "short" not in secrets  # too short to be a key; would redact ordinary words
    assert _telemetry._scrub("a ant-key-0123456789 b", secrets) == "a [REDACTED] b"


# -- robustness and the no-op -------------------------------------------------------------------


def test_hooks_never_raise(
    otel: Otel, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_telemetry, "_reported", set())

    class Hostile:
        model = "m"

        @property
        def label(self) -> str:
            raise RuntimeError("boom")

    assert otel.open(Hostile()) is NOOP  # opening failed: logged, the stream goes on
    assert "opening a stream's telemetry failed" in caplog.text

    telemetry = otel.open(CompatLLM())
    bad_record: Any = object()
    telemetry.attempt_finished(bad_record)
    assert "attempt_finished failed" in caplog.text
    bad_metrics: Any = object()
    telemetry.finished(bad_metrics)
    assert "finished failed" in caplog.text
    tool = telemetry.tool_started(FunctionCall("c", "t", "{}"))
    bad_outcome: Any = object()
    tool.finished(bad_outcome)
    assert "a tool call's finished failed" in caplog.text
    # Once per hook: a broken set-up does not log a traceback per stream.
    errors = len([r for r in caplog.records if r.levelname == "ERROR"])
    again = otel.open(CompatLLM())
    again.attempt_finished(bad_record)
    again.finished(bad_metrics)
    assert otel.open(Hostile()) is NOOP
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == errors


def test_use_providers_scopes_streams_to_given_providers(otel: Otel) -> None:
    with _telemetry.use_providers(otel.tracer_provider, otel.meter_provider):
        inside = open_stream_telemetry(CompatLLM(), make_request(), clock=otel.clock)
    outside = open_stream_telemetry(CompatLLM(), make_request(), clock=otel.clock)
    assert inside.enabled
    assert outside is NOOP  # no global provider in this process
    inside.finished(make_metrics([]))
    assert [s.name for s in otel.finished()] == ["chat gpt-4o"]


def test_safe_summaries_use_typed_fields_only() -> None:
    from trio_llmstream._exceptions import ProviderError

    secret_text = "the user's prompt, echoed"
    cases = [
        (ProviderError(secret_text, type="overloaded_error", code=529),
         "ProviderError: type=overloaded_error, code=529"),
        (APIStatusError(secret_text, status_code=422), "APIStatusError: HTTP 422"),
        (APITimeoutError("idle", 2.5), "APITimeoutError: idle timeout after 2.5s"),
        (RuntimeError(secret_text), "RuntimeError"),
        (StreamInterrupted(CollectedResponse(text=secret_text), RuntimeError(secret_text)),
         "StreamInterrupted: RuntimeError"),
    ]
    for error, expected in cases:
        assert _telemetry._safe_summary(error) == expected


def test_noop_hooks() -> None:
    assert not NOOP.enabled
    with NOOP.activate():
        pass
    record = AttemptMetrics(attempt=0, request_id=None, duration=1.0)
    NOOP.attempt_finished(record)
    tool = NOOP.tool_started(FunctionCall("c", "t", "{}"))
    with tool:
        pass
    tool.finished(None)
    NOOP.finished(make_metrics([record]))


def test_no_provider_means_noop() -> None:
    # This process never sets global providers (see the module docstring): the proxies are
    # in place, so there is nothing to record.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert open_stream_telemetry(CompatLLM(), make_request()) is NOOP


def test_only_metrics_or_only_traces(otel: Otel) -> None:
    only_metrics = open_stream_telemetry(
        CompatLLM(), make_request(), clock=otel.clock,
        tracer_provider=trace.NoOpTracerProvider(), meter_provider=otel.meter_provider,
    )
    record = AttemptMetrics(attempt=0, request_id="r", duration=1.0, usage=usage(3, 4))
    only_metrics.attempt_finished(record)
    tool = only_metrics.tool_started(FunctionCall("c", "t", "{}"))
    with tool:
        pass
    tool.finished(None)
    only_metrics.finished(make_metrics([record]))
    assert otel.finished() == []
    assert otel.points()["gen_ai.client.operation.duration"][0].count == 1

    from opentelemetry.metrics import NoOpMeterProvider

    only_traces = open_stream_telemetry(
        CompatLLM(), make_request(), clock=otel.clock,
        tracer_provider=otel.tracer_provider, meter_provider=NoOpMeterProvider(),
    )
    only_traces.finished(make_metrics([record]))
    assert [s.name for s in otel.finished()] == ["chat gpt-4o"]


def test_unsampled_stream_still_records_metrics() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry = open_stream_telemetry(
        CompatLLM(), make_request(), clock=FakeClock(),
        tracer_provider=tracer_provider, meter_provider=meter_provider,
    )
    record = AttemptMetrics(attempt=0, request_id="r", duration=1.0)
    telemetry.attempt_finished(record)
    telemetry.finished(make_metrics([record]))
    assert spans.get_finished_spans() == ()
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics
             for m in sm.metrics}
    assert "gen_ai.client.operation.duration" in names
    meter_provider.shutdown()
    tracer_provider.shutdown()


def test_context_is_restored_after_tool_and_activation(otel: Otel) -> None:
    telemetry = otel.open(CompatLLM())
    current = otel_context.get_current()
    with telemetry.activate():
        tool = telemetry.tool_started(FunctionCall("c", "t", "{}"))
        with tool:
            assert trace.get_current_span().get_span_context().is_valid
        tool.finished(None)
    assert otel_context.get_current() == current


# -- the class of defect: whatever the attempts, the span tree and sums hold --------------------

_errors = st.sampled_from([
    None,
    APIStatusError("server error", status_code=503),
    APIStatusError(f"echo {KEY}", status_code=401),
    APITimeoutError("idle", 5.0),
    StreamTruncatedError("cut"),
])
_usages = st.one_of(st.none(), st.builds(
    usage, st.integers(0, 10_000), st.integers(0, 10_000),
    cached_tokens=st.one_of(st.none(), st.integers(0, 100)),
    reasoning_tokens=st.one_of(st.none(), st.integers(0, 100)),
))
_attempts = st.lists(
    st.tuples(
        st.floats(0, 60, allow_nan=False), st.floats(0, 5, allow_nan=False), _errors, _usages,
        st.booleans(),
    ),
    max_size=6,
)


@given(_attempts, st.sampled_from(list(StreamStatus)[1:]))
def test_any_attempt_sequence_gives_a_consistent_tree(
    shape: list[tuple[float, float, BaseException | None, CompletionUsage | None, bool]],
    status: StreamStatus,
) -> None:
    otel = make_otel()
    telemetry = otel.open(CompatLLM())
    records = [
        AttemptMetrics(attempt=i, request_id=f"req-{i}", duration=duration, backoff=backoff,
                       error=error, usage=use, committed=committed)
        for i, (duration, backoff, error, use, committed) in enumerate(shape)
    ]
    for record in records:
        run_attempt(otel, telemetry, record)
    final = records[-1].error if records and status is StreamStatus.FAILED else None
    telemetry.finished(make_metrics(records, status=status, error=final))

    spans = otel.finished()
    [stream] = [s for s in spans if s.name == "chat gpt-4o"]
    attempts = sorted((s for s in spans if s.name == "attempt gpt-4o"),
                      key=lambda s: s.start_time or 0)
    assert len(spans) == 1 + len(records) == 1 + len(attempts)
    assert stream.start_time is not None
    assert stream.end_time is not None
    previous_end = stream.start_time
    for span, record in zip(attempts, records, strict=True):
        assert span.parent is not None
        assert stream.context is not None
        assert span.parent.span_id == stream.context.span_id
        assert base_attributes(span)["trio_llmstream.attempt.number"] == record.attempt
        assert span.start_time is not None
        assert span.end_time is not None
        # In order, not overlapping, inside the stream, separated by the backoffs.
        assert previous_end <= span.start_time <= span.end_time <= stream.end_time
        assert (span.status.status_code is StatusCode.ERROR) == (record.error is not None)
        previous_end = span.end_time
    attributes = base_attributes(stream)
    used = [r.usage for r in records if r.usage is not None]
    if used:
        assert attributes["gen_ai.usage.input_tokens"] == sum(u.prompt_tokens for u in used)
        assert attributes["gen_ai.usage.output_tokens"] == sum(u.completion_tokens for u in used)
    else:
        assert "gen_ai.usage.input_tokens" not in attributes
    assert (stream.status.status_code is StatusCode.ERROR) == (final is not None)
    assert KEY not in otel.everything()
    otel.tracer_provider.shutdown()
    otel.meter_provider.shutdown()


# -- the relay ----------------------------------------------------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_relay_run_span_joins_the_callers_trace(otel: Otel) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode()),
        (b"tracestate", b"vendor=value"),
    ]
    with _telemetry.use_providers(otel.tracer_provider, otel.meter_provider):
        with _telemetry.relay_span("relay run", run_id="run-1", headers=headers) as run:
            telemetry = open_stream_telemetry(CompatLLM(), make_request(), clock=otel.clock)
            run.set_attribute("trio_llmstream.run.events", 3)
        telemetry.finished(make_metrics([]))
    span = otel.span("relay run")
    assert span.kind is SpanKind.INTERNAL
    assert span.context is not None
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.parent.is_remote
    assert span.context.trace_state.get("vendor") == "value"
    assert base_attributes(span) == {
        "trio_llmstream.run.id": "run-1", "trio_llmstream.run.events": 3
    }
    assert span.status.status_code is StatusCode.UNSET
    stream = otel.span("chat gpt-4o")
    assert stream.parent is not None
    assert stream.parent.span_id == span.context.span_id  # the run's stream is its child


@pytest.mark.parametrize("traceparent", [b"garbage", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01",
                                         b"00-xyz", b"x" * 600])
def test_relay_span_ignores_a_malformed_traceparent(otel: Otel, traceparent: bytes) -> None:
    with _telemetry.use_providers(otel.tracer_provider), _telemetry.relay_span(
        "relay run", run_id="r", headers=[(b"traceparent", traceparent)]
    ):
        pass
    span = otel.span("relay run")
    assert span.parent is None  # a new trace, not a broken one


def test_relay_follow_span_records_cancellation_and_errors(otel: Otel) -> None:
    import trio

    async def follow(fail: BaseException | None) -> None:
        with _telemetry.relay_span("relay follow", run_id="r", server=True):
            if fail is not None:
                raise fail
            await trio.sleep_forever()

    async def main() -> None:
        with trio.move_on_after(0.01):
            await follow(None)
        with pytest.raises(ValueError, match="bad"):
            await follow(ValueError(f"bad {KEY}"))

    with _telemetry.use_providers(otel.tracer_provider):
        trio.run(main)
    cancelled, failed = sorted(
        (s for s in otel.finished() if s.name == "relay follow"), key=lambda s: s.start_time or 0
    )
    assert cancelled.kind is SpanKind.SERVER
    assert cancelled.status.status_code is StatusCode.UNSET
    assert base_attributes(cancelled)["error.type"] == "cancelled"
    assert failed.status.status_code is StatusCode.ERROR
    assert base_attributes(failed)["error.type"] == "ValueError"
    assert failed.status.description == "ValueError"
    assert KEY not in otel.everything()


def test_relay_span_noop_without_providers() -> None:
    span = _telemetry.relay_span("relay run", run_id="r", headers=[(b"traceparent", b"x")])
    assert span is _telemetry._NOOP_RELAY
    with span as entered:
        entered.set_attribute("k", 1)
