"""Slow clients: a response holds at most a bounded number of unsent bytes, and one whose
client does not keep up ends at an event boundary; the client resumes by ``Last-Event-ID``
and loses nothing. And the ending the relay has to make up when the journal cannot take the
seal of an abandoned run: the browser neither misses it nor reconnects in a loop."""

from __future__ import annotations

from functools import partial

import httpx
import pytest
import trio
import trio.testing

from trio_llmstream import OpenAILLM
from trio_llmstream.journal import (
    Follower,
    JournalEntry,
    MemoryJournal,
    RecordOptions,
    RelayApp,
    StreamAbandoned,
    decode_chunk,
    serve_relay,
)
from trio_llmstream.journal._relay import _EventStream, _TooSlow
from trio_llmstream.journal._sse import parse_resume_id
from trio_llmstream.testing import open_mock_server, text_stream

from .sse_client import Event, check_stream, parse_block, read_events, throttled_read
from .test_cli import open_relay_process
from .test_relay import MESSAGES

N = 50_000


async def test_a_throttled_follower_of_a_50000_entry_run_gets_every_entry_once() -> None:
    # About 10 MB of events: well over what the kernel's socket buffers hold (a few MB on
    # loopback), so that the relay feels the client's pauses.
    pieces = [f"w{i} {'x' * 80} " for i in range(N)]
    async with (
        open_mock_server(text_stream(pieces)) as upstream,
        open_relay_process("--upstream", upstream.base_url, "--model", "m",
                           "--max-entries", "60000", "--slow-client-timeout", "0.3") as relay,
        httpx.AsyncClient(base_url=relay.url, timeout=30) as client,
    ):
        created = (await client.post("/v1/runs", json=MESSAGES)).json()
        events_url = created["events"]
        # Let the writer get well ahead (the reader is then the bottleneck throughout).
        with trio.fail_after(120):
            while (await client.get(created["info"])).json()["last_seq"] < N // 2:
                await trio.sleep(0.1)
        seen: list[Event] = []
        responses = cut = 0
        with trio.fail_after(240):
            while not (seen and seen[-1].event == "end"):
                status, events, clean = await throttled_read(
                    relay.url, events_url, last_event_id=seen[-1].id if seen else None,
                    pause_every=1024 * 1024, pause=0.6)
                assert status == 200
                responses += 1
                cut += clean and not (events and events[-1].event == "end")
                seen += events
    # Every entry exactly once, in order, across the reconnections, and one end.
    end = check_stream(seen)
    assert end["status"] == "completed"
    text = "".join(decode_chunk(e.data).text for e in seen if e.event == "message")
    assert text == "".join(pieces)
    assert len(seen) >= N + 1
    # The relay ended responses because the client lagged (cleanly, between events).
    assert cut >= 1
    assert responses == cut + 1
    assert "read too slowly" in relay.text
    print(f"throttled follower: {len(seen)} events in {responses} responses")


# -- the buffer, in process -----------------------------------------------------------------------


async def test_the_unsent_bytes_are_bounded_and_a_stuck_client_ends_the_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[bytes] = []
    release = trio.Event()

    async def send(message: dict[str, object]) -> None:
        body = message["body"]
        assert isinstance(body, bytes)
        sent.append(body)
        await release.wait()  # the client reads nothing until released

    stream = _EventStream(send, max_unsent=1000, slow_timeout=5.0)
    event = b"x" * 300
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.write)
        queued = 0
        start = trio.current_time()
        with pytest.raises(_TooSlow):
            while True:
                await stream.put(event)
                queued += 1
                # Held for the connection: the piece being sent and the buffer, bounded.
                assert len(stream._buffer) <= 1000 + len(event)
        # It waited the full slow timeout with the buffer full, not more.
        assert trio.current_time() - start == pytest.approx(5.0)
        assert len(sent) == 1  # one send in flight, blocked: the rest is in the buffer
        # The client reads again: everything queued is sent, in order, in few sends.
        release.set()
        await stream.flush()
        assert b"".join(sent) == event * queued
        nursery.cancel_scope.cancel()


async def test_a_reader_that_keeps_up_is_never_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[bytes] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message["body"])  # type: ignore[arg-type]
        await trio.sleep(1.0)  # slow, but moving

    stream = _EventStream(send, max_unsent=1000, slow_timeout=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.write)
        for i in range(200):
            await stream.put(b"%04d\n" % i)
        await stream.flush()
        nursery.cancel_scope.cancel()
    assert b"".join(sent) == b"".join(b"%04d\n" % i for i in range(200))
    assert len(sent) < 200  # coalesced


# -- an ending the journal could not take ----------------------------------------------------------


class UnsealableJournal(MemoryJournal):
    """A journal whose followers find the run abandoned but could not write its seal (the
    journal went down at that moment)."""

    def follow(self, run_id: str, **kwargs: float) -> Follower:  # type: ignore[override]
        inner = super().follow(run_id, **kwargs)  # type: ignore[arg-type]

        class Unsealable(Follower):
            def __init__(self) -> None:
                self.inner = inner

            async def __anext__(self) -> JournalEntry:
                try:
                    return await self.inner.__anext__()
                except StreamAbandoned as exc:
                    # As if the seal had not been written: no entry to send.
                    raise StreamAbandoned(run_id, last_seq=exc.last_seq, entry=None) from None

        return Unsealable()


async def test_an_unwritten_seal_ends_with_an_id_that_stops_the_browser() -> None:
    journal = UnsealableJournal()
    async with (
        open_mock_server() as upstream,
        OpenAILLM("mock", base_url=upstream.base_url, api_key="k") as llm,
        trio.open_nursery() as nursery,
    ):
        app = RelayApp(journal, llm, abandon_after=0.3,
                       record_options=RecordOptions(heartbeat_interval=0.1))
        url = await nursery.start(partial(serve_relay, app, port=0))
        await journal.create_run("dead")
        chunk = decode_chunk(b'{"id":"x","choices":[{"delta":{"content":"hi"}}]}')
        await journal.append("dead", [JournalEntry(1, chunk=chunk), JournalEntry(2, chunk=chunk)])
        token = await app.grant("dead")
        path = f"/v1/runs/dead/events?token={token}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            async with client.stream("GET", path) as response:
                body = await response.aread()
            blocks = [b for b in body.split(b"\n\n") if b]
            events = [e for e in map(parse_block, blocks) if e is not None]
            assert [e.event for e in events] == ["message", "message", "end"]
            ending = blocks[-1]
            assert ending.startswith(b"id: 2-end\nevent: end\n")
            assert events[-1].raw_id == b"2-end"
            assert events[-1].json()["error"]["type"] == "StreamAbandoned"  # type: ignore[index]
            # A day's retry comes before it, so a page that does not close the EventSource
            # does not reconnect at once...
            assert blocks[-2] == b"retry: 86400000"
            # ... and when it does, with that id, it is told to stop (204).
            response = await client.get(path, headers={"last-event-id": "2-end"})
            assert response.status_code == 204
            status, _ = await read_events(client, path + "&last_event_id=2-end")
            assert status == 204
        nursery.cancel_scope.cancel()


def test_resume_ids() -> None:
    assert parse_resume_id(None) == (0, False)
    assert parse_resume_id(b"17") == (17, False)
    assert parse_resume_id(" 17-end ") == (17, True)
    for bad in ("-end", "x-end", "17-end-end", "17end", "-1", "1.5"):
        with pytest.raises(ValueError):
            parse_resume_id(bad)


async def test_keepalive_waits_while_a_send_is_stuck(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that stopped reading: the send never returns. The keep-alive task must keep
    # sleeping (not spin on a deadline in the past), and add nothing to the buffer.
    blocked = trio.Event()

    async def send(message: dict[str, object]) -> None:
        blocked.set()
        await trio.sleep_forever()

    wakeups = 0
    real_sleep_until = trio.sleep_until

    async def counting_sleep_until(deadline: float) -> None:
        nonlocal wakeups
        wakeups += 1
        assert wakeups < 1000, "the keep-alive task spins"
        await real_sleep_until(deadline)

    monkeypatch.setattr(trio, "sleep_until", counting_sleep_until)
    app = RelayApp(MemoryJournal(), llm=None, keepalive=15.0)  # type: ignore[arg-type]
    stream = _EventStream(send, max_unsent=1000, slow_timeout=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.write)
        await stream.put(b"data: x\n\n")
        await blocked.wait()
        nursery.start_soon(app._keepalive, stream)
        await trio.sleep(300)
        assert wakeups <= 300 / 15 + 2
        assert not stream._buffer  # no comment queued behind the stuck send
        nursery.cancel_scope.cancel()
