"""The SSE relay over real HTTP: hypercorn serving RelayApp, an upstream mock server, httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import trio

from trio_llmstream import OpenAILLM, StreamStatus
from trio_llmstream.journal import (
    Journal,
    JournalEntry,
    MemoryJournal,
    RecordOptions,
    RelayApp,
    decode_chunk,
    open_redis_journal,
    serve_relay,
)
from trio_llmstream.testing import (
    ChunkEvent,
    DoneEvent,
    EndStream,
    ErrorEvent,
    Stall,
    chat_chunk,
    open_mock_server,
    text_stream,
)
from trio_llmstream.testing._server import MockLLMServer

from .conftest import unique_prefix
from .helpers import read_all
from .redis_server import RedisServer
from .sse_client import Event, check_stream, read_events

TEXT = "The quick brown fox jumps over the lazy dog, twice: the quick brown fox jumps again."
MESSAGES = {"messages": [{"role": "user", "content": "Tell me about foxes."}]}


def text_of(events: list[Event]) -> str:
    return "".join(decode_chunk(e.data).text for e in events if e.event == "message")


@asynccontextmanager
async def relay(
    journal: Journal, upstream: MockLLMServer, **options: object
) -> AsyncIterator[tuple[httpx.AsyncClient, RelayApp]]:
    async with OpenAILLM("mock", base_url=upstream.base_url, api_key="k") as llm:
        app = RelayApp(journal, llm, **options)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_relay, app, port=0))
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                yield client, app
            nursery.cancel_scope.cancel()


async def start_run(client: httpx.AsyncClient, **body: object) -> str:
    response = await client.post("/v1/runs", json={**MESSAGES, **body})
    assert response.status_code == 201, response.text
    events: str = response.json()["events"]
    assert events.startswith(response.headers["location"] + "/events?token=")
    return events


async def test_a_run_streams_and_resumes_from_every_position() -> None:
    async with (
        open_mock_server(text_stream(TEXT, chunk_size=5, delay=0.002)) as upstream,
        relay(MemoryJournal(), upstream) as (client, _),
    ):
        url = await start_run(client)
        status, events = await read_events(client, url)
        assert status == 200
        end = check_stream(events)
        assert end == {"status": "completed", "finish_reason": "stop", "error": None}
        assert text_of(events) == TEXT
        for after in range(len(events)):
            status, rest = await read_events(client, url, last_event_id=after)
            assert status == 200
            assert rest == events[after:]
        # The client already has the end event: 204 tells an EventSource to stop.
        status, _ = await read_events(client, url, last_event_id=len(events))
        assert status == 204
        # Clients that cannot set headers use the query parameter.
        status, rest = await read_events(client, f"{url}&last_event_id={len(events) - 2}")
        assert rest == events[-2:]
        info = (await client.get(url.replace("/events?", "?"))).json()
        assert info["last_seq"] == info["end_seq"] == len(events)


async def test_resume_on_a_second_app_instance(redis_server: RedisServer) -> None:
    # Two relay instances with their own Redis clients, as two processes would have.
    prefix = unique_prefix()
    async with (
        open_mock_server(text_stream(TEXT, chunk_size=2, delay=0.01)) as upstream,
        open_redis_journal(redis_server.url, prefix=prefix) as journal_a,
        open_redis_journal(redis_server.url, prefix=prefix) as journal_b,
        relay(journal_a, upstream) as (a, app_a),
        relay(journal_b, upstream) as (b, app_b),
    ):
        url = await start_run(a)
        seen: list[Event] = []
        clients = [a, b, a, b]
        while not (seen and seen[-1].event == "end"):
            client = clients[len(seen) // 5 % 4]
            last = seen[-1].id if seen else None
            status, events = await read_events(client, url, last_event_id=last, stop_after=5)
            assert status == 200
            seen += events
        end = check_stream(seen)
        assert end["status"] == "completed"
        assert text_of(seen) == TEXT
        assert app_a.running == 0
        # Each disconnect was noticed: no event stream is left open on either instance.
        with trio.fail_after(2):
            while app_a.streaming or app_b.streaming:
                await trio.sleep(0.01)


async def test_an_error_then_done_upstream_is_one_end_event() -> None:
    script = (
        ChunkEvent(chat_chunk({"role": "assistant", "content": ""})),
        ChunkEvent(chat_chunk({"content": "Hello"})),
        ErrorEvent("overloaded", type="invalid_request_error"),
        DoneEvent(),
    )
    async with (
        open_mock_server(script) as upstream,
        relay(MemoryJournal(), upstream) as (client, _),
    ):
        url = await start_run(client)
        _, events = await read_events(client, url)
        end = check_stream(events)
        assert end["status"] == "failed"
        assert end["error"] == {
            "type": "StreamInterrupted",
            "message": end["error"]["message"],  # type: ignore[index]
            "retryable": False,
            "status_code": None,
            "cause": "ProviderError",
        }
        assert text_of(events) == "Hello"


async def test_an_upstream_cut_without_done_is_truncated() -> None:
    script = (*text_stream("Hello world", done=False, finish_reason=None, usage=False),
              EndStream())
    async with (
        open_mock_server(script) as upstream,
        relay(MemoryJournal(), upstream) as (client, _),
    ):
        url = await start_run(client)
        _, events = await read_events(client, url)
        end = check_stream(events)
        assert end["status"] == "truncated"
        assert text_of(events) == "Hello world"


async def test_an_abandoned_run_ends_with_one_end_event() -> None:
    journal = MemoryJournal()
    async with (
        open_mock_server() as upstream,
        relay(journal, upstream, abandon_after=0.3, record_options=RecordOptions(
            heartbeat_interval=0.1)) as (client, app),
    ):
        # A run whose writer (another process, say) died after two chunks.
        await journal.create_run("dead")
        token = await app.grant("dead")
        chunk = decode_chunk(b'{"id":"x","choices":[{"delta":{"content":"hi"}}]}')
        await journal.append("dead", [JournalEntry(1, chunk=chunk), JournalEntry(2, chunk=chunk)])
        with trio.fail_after(2):
            _, events = await read_events(client, f"/v1/runs/dead/events?token={token}")
        end = check_stream(events)
        assert end["status"] == "failed"
        assert end["error"]["type"] == "StreamAbandoned"  # type: ignore[index]
        assert end["error"]["retryable"] is True  # type: ignore[index]
        status, _ = await read_events(client, f"/v1/runs/dead/events?token={token}",
                                      last_event_id=3)
        assert status == 204


async def test_errors_are_answered_with_statuses() -> None:
    journal = MemoryJournal(max_entries=4)
    async with (
        open_mock_server(text_stream(TEXT, chunk_size=2)) as upstream,
        relay(journal, upstream, max_body=4096) as (client, _),
    ):
        assert (await client.get("/v1/runs/nope/events")).status_code == 404
        assert (await client.get("/v1/runs/nope")).status_code == 404
        assert (await client.get("/v1/runs/bad%20id/events")).status_code == 404
        assert (await client.get("/elsewhere")).status_code == 404
        assert (await client.get("/v1/runs")).status_code == 405
        assert (await client.post("/v1/runs/x/events")).status_code == 405
        json_type = {"content-type": "application/json"}
        assert (await client.post("/v1/runs", content=b"{", headers=json_type)).status_code \
            == 400
        assert (await client.post("/v1/runs", content=b"{}")).status_code == 415
        assert (await client.post("/v1/runs", json={"messages": []})).status_code == 400
        bad_role = {"messages": [{"role": "robot", "content": "x"}]}
        assert (await client.post("/v1/runs", json=bad_role)).status_code == 400
        assert (await client.post("/v1/runs", json={**MESSAGES, "run_id": "a b"})).status_code \
            == 400
        huge = {"messages": [{"role": "user", "content": "x" * 5000}]}
        assert (await client.post("/v1/runs", json=huge)).status_code == 413
        url = await start_run(client, run_id="mine")
        assert url.startswith("/v1/runs/mine/events?token=")
        response = await client.post("/v1/runs", json={**MESSAGES, "run_id": "mine"})
        assert response.status_code == 409
        response = await client.get(url, headers={"last-event-id": "x1"})
        assert response.status_code == 400
        with trio.fail_after(5):
            while (await client.get(url.replace("/events?", "?"))).json()["end_seq"] is None:
                await trio.sleep(0.01)
        # A run is never trimmed; past max_entries=4 it ends with a RunTooLong error, and
        # resuming from any position still gets every entry after it.
        response = await client.get(url, headers={"last-event-id": "1"})
        assert response.status_code == 200
        assert "id: 2\n" in response.text
        assert "RunTooLong" in response.text


async def test_max_runs_is_enforced() -> None:
    async with (
        open_mock_server((Stall(),), (Stall(),)) as upstream,
        relay(MemoryJournal(), upstream, max_runs=1) as (client, app),
    ):
        await start_run(client)
        assert app.running == 1
        response = await client.post("/v1/runs", json=MESSAGES)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"


async def test_stopping_the_relay_cancels_runs_and_ends_their_streams() -> None:
    journal = MemoryJournal()
    events: list[Event] = []
    async with (
        open_mock_server(text_stream(TEXT, chunk_size=1, delay=0.05)) as upstream,
        OpenAILLM("mock", base_url=upstream.base_url, api_key="k") as llm,
        trio.open_nursery() as nursery,
    ):
        app = RelayApp(journal, llm, stop_grace=2.0)
        server = trio.CancelScope()

        async def serve(*, task_status: trio.TaskStatus[str]) -> None:
            with server:
                await serve_relay(app, port=0, task_status=task_status)

        url = await nursery.start(serve)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            events_url = await start_run(client)

            async def read() -> None:
                _, got = await read_events(client, events_url)
                events.extend(got)

            async with trio.open_nursery() as readers:
                readers.start_soon(read)
                await trio.sleep(0.3)
                server.cancel()  # stop the relay: the reader still gets the run's end
    end = check_stream(events)
    assert end["status"] == "cancelled"
    run_id = events_url.split("/")[3]
    entries = await read_all(journal, run_id)
    assert entries[-1].end is not None
    assert entries[-1].end.status is StreamStatus.CANCELLED
    assert len(entries) == len(events)
