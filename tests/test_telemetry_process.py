"""Telemetry in fresh processes: without opentelemetry, without an application that uses it,
through the global providers, and the console set-up of ``chat --otel``.

Each case runs in a subprocess because each is about process-wide state (what is importable,
what was imported, the global providers, which can be set only once).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Drives every hook once, with a model stream: an attempt, a tool call and the end.
_DRIVE = """
import trio
from trio_llmstream._models import (
    AttemptMetrics, ChatContext, ChatRequest, CompletionUsage, FunctionCall, LLMMetrics,
    StreamStatus,
)
from trio_llmstream import ToolOutcome, ToolOutcomeKind
from trio_llmstream._telemetry import open_stream_telemetry

class LLM:
    otel_provider_name = "openai"
    model = "gpt-4o"
    base_url = "https://api.example.com/v1"
    label = "openai:gpt-4o"

async def drive():
    ctx = ChatContext()
    ctx.add_message(role="user", content="hi")
    telemetry = open_stream_telemetry(LLM(), ChatRequest(messages=tuple(ctx.messages)))
    with telemetry.activate():
        await trio.sleep(0)
    usage = CompletionUsage(completion_tokens=2, prompt_tokens=3, total_tokens=5)
    record = AttemptMetrics(attempt=0, request_id="chatcmpl-1", duration=0.0, usage=usage,
                            committed=True)
    telemetry.attempt_finished(record)
    call = FunctionCall("call_1", "get_weather", "{}")
    tool = telemetry.tool_started(call)
    with tool:
        await trio.sleep(0)
    tool.finished(ToolOutcome(call, ToolOutcomeKind.RESULT, value="ok"))
    telemetry.finished(LLMMetrics(
        label="openai:gpt-4o", request_ids=("chatcmpl-1",), status=StreamStatus.COMPLETED,
        attempts=(record,), ttft=0.0, duration=0.0, prompt_tokens=3, completion_tokens=2,
        total_tokens=5, tokens_per_second=None, cancelled=False,
    ), finish_reasons=["stop"])
    return telemetry
"""


def _run(*parts: str, **env: str) -> str:
    """Run the script made of ``parts`` (each dedented on its own); return its stdout."""
    import os

    code = "\n".join(textwrap.dedent(part) for part in parts)
    full_env = {**os.environ, **env}
    full_env.pop("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_without_opentelemetry_every_hook_is_a_noop() -> None:
    out = _run(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        import io
        """,
        _DRIVE,
        """
        from trio_llmstream import _telemetry
        telemetry = trio.run(drive)
        assert telemetry is _telemetry.NOOP, telemetry
        # The provider variables make it try the import: it fails quietly, once.
        assert _telemetry._otel_unavailable
        assert sys.modules["opentelemetry"] is None
        buffer = io.StringIO()
        assert _telemetry.install_console_exporters(out=buffer) is None
        print(buffer.getvalue(), end="")
        """,
        OTEL_PYTHON_TRACER_PROVIDER="sdk_tracer_provider",
    )
    assert out.count("\n") == 1
    assert "trio_llmstream[otel]" in out
    assert "opentelemetry-sdk" in out


def test_not_imported_until_the_application_imports_it() -> None:
    pytest.importorskip("opentelemetry")
    _run(
        """
        import sys
        """,
        _DRIVE,
        """
        import trio_llmstream
        from trio_llmstream import _telemetry
        assert trio.run(drive) is _telemetry.NOOP
        # Installed, but nobody used it: the library did not pay for importing it.
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
        """
    )


def test_global_providers_and_scope() -> None:
    pytest.importorskip("opentelemetry.sdk")
    out = _run(
        _DRIVE,
        """
        import json
        # Imported before the application sets its providers, as in real programs.
        from trio_llmstream import _telemetry
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        # API imported, no SDK provider yet: nothing to record.
        assert trio.run(drive) is _telemetry.NOOP
        spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(tracer_provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        assert trio.run(drive).enabled
        data = reader.get_metrics_data()
        print(json.dumps({
            "spans": sorted(
                [s.name, s.instrumentation_scope.name, s.instrumentation_scope.version]
                for s in spans.get_finished_spans()
            ),
            "metrics": sorted(
                [sm.scope.name, m.name] for rm in data.resource_metrics
                for sm in rm.scope_metrics for m in sm.metrics
            ),
        }))
        """
    )
    seen = json.loads(out)
    import trio_llmstream

    version = trio_llmstream.__version__
    assert seen["spans"] == [
        ["attempt gpt-4o", "trio_llmstream", version],
        ["chat gpt-4o", "trio_llmstream", version],
        ["execute_tool get_weather", "trio_llmstream", version],
    ]
    assert seen["metrics"] == [
        ["trio_llmstream", "gen_ai.client.operation.duration"],
        ["trio_llmstream", "gen_ai.client.operation.time_to_first_chunk"],
        ["trio_llmstream", "gen_ai.client.token.usage"],
        ["trio_llmstream", "gen_ai.execute_tool.duration"],
    ]


def test_console_exporters_for_chat_otel() -> None:
    pytest.importorskip("opentelemetry.sdk")
    out = _run(
        _DRIVE,
        """
        import sys
        from trio_llmstream._telemetry import install_console_exporters
        shutdown = install_console_exporters(out=sys.stdout)
        assert shutdown is not None
        assert trio.run(drive).enabled
        shutdown()
        shutdown()  # idempotent: the metrics are printed once
        """
    )
    assert '"name": "chat gpt-4o"' in out
    assert '"name": "execute_tool get_weather"' in out
    assert "gen_ai.client.operation.duration" in out
    assert "gen_ai.client.token.usage" in out
    assert out.count('"name": "gen_ai.client.operation.duration"') == 1
