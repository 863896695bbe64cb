"""The relay's spans (issue 15's relay part), over real HTTP in process with the SDK's
in-memory exporter: a ``relay run`` span per run, a child of the caller's trace when the POST
carries a W3C ``traceparent``, with the run's ``chat`` span under it; a SERVER ``relay
follow`` span per follower connection."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from trio_llmstream import OpenAILLM, _telemetry
from trio_llmstream.journal import MemoryJournal, RelayApp, serve_relay
from trio_llmstream.testing import open_mock_server, text_stream

from .sse_client import check_stream, read_events
from .test_relay import MESSAGES, TEXT

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


async def traced_runs() -> tuple[list[ReadableSpan], dict[str, Any], dict[str, Any]]:
    # Two runs through a relay, the first POSTed with a traceparent; the finished spans.
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with _telemetry.use_providers(provider):
        async with (
            open_mock_server(*[text_stream(TEXT, chunk_size=10)] * 2) as upstream,
            OpenAILLM("mock", base_url=upstream.base_url, api_key="k") as llm,
            trio.open_nursery() as nursery,
        ):
            app = RelayApp(MemoryJournal(), llm)
            url = await nursery.start(partial(serve_relay, app, port=0))
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                traced = (await client.post("/v1/runs", json=MESSAGES,
                                            headers={"traceparent": TRACEPARENT})).json()
                _, events = await read_events(client, traced["events"])
                assert check_stream(events)["status"] == "completed"
                plain = (await client.post("/v1/runs", json=MESSAGES)).json()
                _, events = await read_events(client, plain["events"])
                assert check_stream(events)["status"] == "completed"
                with trio.fail_after(5):
                    while app.running:
                        await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    return list(spans.get_finished_spans()), traced, plain


async def test_run_and_follow_spans_join_the_callers_trace() -> None:
    finished, traced, plain = await traced_runs()
    runs = {s.attributes["trio_llmstream.run.id"]: s for s in finished if s.name == "relay run"}
    follows = [s for s in finished if s.name == "relay follow"]
    assert set(runs) == {traced["id"], plain["id"]}
    run = runs[traced["id"]]
    # The traced run is in the caller's trace, a child of the caller's span.
    assert run.kind is SpanKind.INTERNAL
    assert run.context.trace_id == TRACE_ID
    assert run.parent is not None
    assert run.parent.span_id == PARENT_ID
    assert run.parent.is_remote
    # The other one starts a trace of its own.
    assert runs[plain["id"]].context.trace_id != TRACE_ID
    assert runs[plain["id"]].parent is None
    # One SERVER span per follower connection, with the run id.
    assert len(follows) == 2
    assert {s.attributes["trio_llmstream.run.id"] for s in follows} == set(runs)
    assert all(s.kind is SpanKind.SERVER for s in follows)
    # No token in any span.
    text = "\n".join(s.to_json() for s in finished)
    assert traced["token"] not in text
    assert plain["token"] not in text


async def test_the_runs_stream_span_is_a_child_of_the_run_span() -> None:
    finished, traced, _ = await traced_runs()
    run = next(s for s in finished if s.name == "relay run"
               and s.attributes["trio_llmstream.run.id"] == traced["id"])
    chats = [s for s in finished if s.name.startswith("chat ")]
    assert len(chats) == 2
    assert any(c.parent is not None and c.parent.span_id == run.context.span_id
               for c in chats)
