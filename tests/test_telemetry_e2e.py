"""Telemetry end to end: open_llm_stream (OpenAILLM over the loopback mock server, and the
scripted provider) with the SDK's in-memory exporter and reader.

These run once the runtime calls the hooks (see trio_llmstream/_telemetry.py); until then the
module is skipped as a whole.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from trio_llmstream import (
    APIConnectOptions,
    ChatContext,
    CompletionUsage,
    FunctionCall,
    OpenAILLM,
    StreamInterrupted,
    StreamStatus,
    Timeouts,
    function_tool,
    open_llm_stream,
)
from trio_llmstream._telemetry import CAPTURE_CONTENT_ENV, use_providers
from trio_llmstream.testing import (
    Fault,
    MockLLMServer,
    ScriptedAttempt,
    ScriptedLLM,
    error_response,
    inject_fault,
    open_mock_server,
    text_chunks,
    text_stream,
)

KEY = "sk-e2e-otel-7d1f0c3b9a"
TEXT = "The quick brown fox jumps over the lazy dog."
OPTIONS = APIConnectOptions(
    max_retry=2, retry_interval=0.01, max_retry_interval=0.02,
    timeouts=Timeouts(connect=2.0, first_token=1.0, idle=0.3),
)


class Recorded:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name.startswith(prefix)]

    def points(self, name: str) -> list[HistogramDataPoint]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == name for p in m.data.data_points if isinstance(p, HistogramDataPoint)
        ]


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    monkeypatch.delenv(CAPTURE_CONTENT_ENV, raising=False)
    recorded = Recorded()
    with use_providers(recorded.tracer_provider, recorded.meter_provider):
        yield recorded
    recorded.tracer_provider.shutdown()
    recorded.meter_provider.shutdown()


@pytest.fixture
async def server() -> AsyncIterator[MockLLMServer]:
    async with open_mock_server() as srv:
        yield srv


@pytest.fixture
async def llm(server: MockLLMServer) -> AsyncIterator[OpenAILLM]:
    async with OpenAILLM("mock-model", base_url=server.base_url, api_key=KEY) as provider:
        yield provider


def ctx(text: str = "hi") -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content=text)
    return c


def attrs_of(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


async def test_openai_stream_retry_then_success(
    otel: Recorded, server: MockLLMServer, llm: OpenAILLM
) -> None:
    server.enqueue(error_response(503, "busy"), text_stream(TEXT, chunk_size=3))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS,
                               temperature=0.3) as stream:
        assert (await stream.collect()).text == TEXT
    assert stream.metrics is not None
    [chat] = otel.named("chat ")
    assert chat.name == "chat mock-model"
    assert chat.kind is SpanKind.CLIENT
    attributes = attrs_of(chat)
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == int(server.base_url.split(":")[2].split("/")[0])
    assert attributes["gen_ai.request.temperature"] == 0.3
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["gen_ai.usage.output_tokens"] == stream.metrics.completion_tokens
    assert attributes["trio_llmstream.stream.attempts"] == 2
    attempts = sorted(otel.named("attempt "), key=lambda s: s.start_time or 0)
    assert [attrs_of(a).get("http.response.status_code") for a in attempts] == [503, None]
    assert attempts[0].status.status_code is StatusCode.ERROR
    for span in attempts:
        assert span.parent is not None
        assert chat.context is not None
        assert span.parent.span_id == chat.context.span_id
    [ttfc] = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert stream.metrics.ttft is not None
    assert ttfc.sum == pytest.approx(stream.metrics.ttft)
    [tpoc] = otel.points("gen_ai.client.operation.time_per_output_chunk")
    assert tpoc.count == 1
    [duration] = otel.points("gen_ai.client.operation.duration")
    assert duration.sum == pytest.approx(stream.metrics.duration)
    assert KEY not in "".join(s.to_json() for s in otel.finished())


async def test_openai_interrupted_after_commit(
    otel: Recorded, server: MockLLMServer, llm: OpenAILLM
) -> None:
    server.enqueue(inject_fault(text_stream(TEXT, chunk_size=4), "drop", after=4))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted):
            await stream.collect()
    [chat] = otel.named("chat ")
    assert chat.status.status_code is StatusCode.ERROR
    assert attrs_of(chat)["error.type"] == "StreamInterrupted"
    [attempt] = otel.named("attempt ")
    assert attrs_of(attempt)["trio_llmstream.attempt.committed"] is True
    assert attrs_of(attempt)["error.type"] == "APIConnectionError"
    [duration] = otel.points("gen_ai.client.operation.duration")
    assert (duration.attributes or {})["error.type"] == "StreamInterrupted"


async def test_cancelled_by_early_break(otel: Recorded, autojump_clock: trio.abc.Clock) -> None:
    usage = CompletionUsage(completion_tokens=0, prompt_tokens=12, total_tokens=12)
    chunks = [*text_chunks("one two three four five six")]
    chunks.insert(1, text_chunks("", role=False, finish_reason=None, usage=usage)[0])
    llm = ScriptedLLM([ScriptedAttempt(chunks, delay=1.0)])
    async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
        async for chunk in stream:
            if chunk.text:
                break
    [chat] = otel.named("chat")
    assert chat.name == "chat"  # the scripted provider names no model
    assert chat.status.status_code is StatusCode.UNSET
    assert attrs_of(chat)["error.type"] == "cancelled"
    assert attrs_of(chat)["gen_ai.usage.input_tokens"] == 12
    [duration] = otel.points("gen_ai.client.operation.duration")
    assert (duration.attributes or {})["error.type"] == "cancelled"
    assert duration.sum == pytest.approx(3.0)  # three chunks, one second apart (mock clock)


async def test_tool_loop_spans_nest_under_the_stream(
    otel: Recorded, autojump_clock: trio.abc.Clock
) -> None:
    @function_tool
    async def get_weather(city: str) -> str:
        """Current weather."""
        await trio.sleep(2.0)
        return f"rainy in {city}"

    call = FunctionCall("call_1", "get_weather", json.dumps({"city": "Paris"}))
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("", tool_calls=[call],
                                                   finish_reason="tool_calls"))])
    async with open_llm_stream(llm, chat_ctx=ctx(), tools=[get_weather]) as stream:
        await stream.collect()
        [outcome] = await stream.wait_for_tools()
    assert outcome.ok
    [chat] = otel.named("chat")
    [tool] = otel.named("execute_tool ")
    assert tool.name == "execute_tool get_weather"
    assert tool.kind is SpanKind.INTERNAL
    assert tool.parent is not None
    assert chat.context is not None
    assert tool.parent.span_id == chat.context.span_id
    assert attrs_of(tool)["gen_ai.tool.call.id"] == "call_1"
    assert attrs_of(tool)["gen_ai.tool.description"] == "Current weather."
    assert attrs_of(tool)["trio_llmstream.tool.outcome"] == "result"
    [duration] = otel.points("gen_ai.execute_tool.duration")
    assert duration.sum == pytest.approx(2.0)


async def test_failed_stream_and_fatal_error(otel: Recorded) -> None:
    llm = ScriptedLLM([ScriptedAttempt(text_chunks("x"), fault=Fault.fatal())])
    with pytest.raises(Exception):  # noqa: B017 - the type is checked on the span below
        async with open_llm_stream(llm, chat_ctx=ctx()) as stream:
            await stream.collect()
    assert stream.status is StreamStatus.FAILED
    [chat] = otel.named("chat")
    assert chat.status.status_code is StatusCode.ERROR
    assert attrs_of(chat)["error.type"] == "APIStatusError"
    assert chat.status.description == "APIStatusError: HTTP 400"
