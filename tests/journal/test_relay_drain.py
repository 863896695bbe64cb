"""Deploys: SIGTERM drains a relay process (new runs refused with 503 and Retry-After,
followers served, running runs carried to their natural end for up to ``--drain-timeout``
seconds, then cancelled with their cancelled ending), and a rolling restart of two relays on
one Redis under load loses no run and leaves no follower without its ``end``."""

from __future__ import annotations

import random

import httpx
import trio

from trio_llmstream.testing import Stall, open_mock_server, text_stream

from .redis_server import RedisServer
from .sse_client import Event, check_stream, read_events
from .test_cli import RelayProcess, open_relay_process
from .test_relay import MESSAGES, TEXT, text_of

TOKEN = "drain-test-token-5f1e"
ENV = {"RELAY_TOKENS": TOKEN}
AUTH = {"authorization": f"Bearer {TOKEN}"}


async def wait_draining(client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        while (await client.get("/v1/health")).status_code != 503:
            await trio.sleep(0.02)


async def test_sigterm_lets_running_runs_end_and_serves_their_followers() -> None:
    script = text_stream(TEXT, chunk_size=2, delay=0.04)  # about 1.7 s
    results: list[list[Event]] = []
    async with (
        open_mock_server(*[script] * 3) as upstream,
        open_relay_process("--upstream", upstream.base_url, "--model", "m",
                           "--auth-token-env", "RELAY_TOKENS", env=ENV) as relay,
        httpx.AsyncClient(base_url=relay.url, timeout=10, headers=AUTH) as client,
    ):
        assert (await client.get("/v1/health")).json() == {"status": "ok"}
        urls = [(await client.post("/v1/runs", json=MESSAGES)).json()["events"]
                for _ in range(3)]

        async def follow(url: str) -> None:
            _, events = await read_events(client, url)
            results.append(events)

        async with trio.open_nursery() as nursery:
            for url in urls[:2]:
                nursery.start_soon(follow, url)
            await trio.sleep(0.3)
            relay.terminate()
            await wait_draining(client)
            # New runs are refused, and told when to come back.
            response = await client.post("/v1/runs", json=MESSAGES)
            assert response.status_code == 503
            assert int(response.headers["retry-after"]) >= 1
            # A follower arriving during the drain is served too.
            nursery.start_soon(follow, urls[2])
            assert relay.process.returncode is None
        # The process leaves once the runs ended.
        assert await relay.wait(15) == 0
    assert len(results) == 3
    for events in results:
        assert check_stream(events)["status"] == "completed"
        assert text_of(events) == TEXT
    assert "drain: every run ended" in relay.text
    assert len(upstream.chat_requests) == 3


async def test_runs_left_after_the_drain_timeout_end_cancelled() -> None:
    async with (
        open_mock_server((*text_stream(["a", "b"], delay=0.01, finish_reason=None,
                                       usage=False, done=False), Stall())) as upstream,
        open_relay_process("--upstream", upstream.base_url, "--model", "m",
                           "--drain-timeout", "0.5") as relay,
        httpx.AsyncClient(base_url=relay.url, timeout=10) as client,
    ):
        url = (await client.post("/v1/runs", json=MESSAGES)).json()["events"]
        async with trio.open_nursery() as nursery:
            got: list[Event] = []

            async def follow() -> None:
                _, events = await read_events(client, url)
                got.extend(events)

            nursery.start_soon(follow)
            await trio.sleep(0.3)
            start = trio.current_time()
            relay.terminate()
            assert await relay.wait(15) == 0
            assert trio.current_time() - start >= 0.5
        end = check_stream(got)
        assert end["status"] == "cancelled"
        assert text_of(got) == "ab"
    assert "1 runs still in progress after 0.5 s" in relay.text


async def test_a_second_signal_stops_at_once() -> None:
    async with (
        open_mock_server((Stall(),)) as upstream,
        open_relay_process("--upstream", upstream.base_url, "--model", "m",
                           "--drain-timeout", "120") as relay,
        httpx.AsyncClient(base_url=relay.url, timeout=10) as client,
    ):
        url = (await client.post("/v1/runs", json=MESSAGES)).json()["events"]
        got: list[Event] = []
        async with trio.open_nursery() as nursery:

            async def follow() -> None:
                _, events = await read_events(client, url)
                got.extend(events)

            nursery.start_soon(follow)
            await trio.sleep(0.3)
            relay.terminate()
            await wait_draining(client)
            relay.terminate()
            assert await relay.wait(10) == 0
        assert check_stream(got)["status"] == "cancelled"
    assert "SIGTERM again, stopping now" in relay.text


# -- a rolling restart ----------------------------------------------------------------------------


async def test_rolling_restart_of_two_relays_on_one_redis(redis_server: RedisServer) -> None:
    most = 60  # runs the upstream can answer
    script = text_stream(TEXT, chunk_size=2, delay=0.06)  # about 2.5 s each
    rng = random.Random(14)
    relays: dict[str, RelayProcess] = {}
    created: list[tuple[str, str]] = []  # (run id, events path)
    followed: dict[str, list[Event]] = {}
    refused = 0
    moved = 0  # followers whose response was cut (by B stopping) and who resumed elsewhere
    stop_load = trio.Event()

    def args(url: str) -> tuple[str, ...]:
        return ("--upstream", url, "--model", "m", "--redis", redis_server.url,
                "--auth-token-env", "RELAY_TOKENS", "--drain-timeout", "20")

    def alive() -> list[str]:
        return [name for name, r in relays.items() if r.process.returncode is None]

    async with (
        open_mock_server(*[script] * most) as upstream,
        httpx.AsyncClient(timeout=10, headers=AUTH) as client,
    ):

        async def start_run() -> None:
            # Like a client behind a load balancer: another relay when one refuses.
            nonlocal refused
            while True:
                names = alive()
                rng.shuffle(names)
                for name in names:
                    try:
                        response = await client.post(f"{relays[name].url}/v1/runs",
                                                     json=MESSAGES)
                    except httpx.TransportError:
                        continue
                    if response.status_code == 503:
                        refused += 1
                        continue
                    assert response.status_code == 201, response.text
                    body = response.json()
                    created.append((body["id"], body["events"]))
                    return
                await trio.sleep(0.05)

        async def follow(run_id: str, path: str) -> None:
            # Like an EventSource: on a cut, reconnect (to whichever relay is up) after the
            # last event seen.
            nonlocal moved
            seen = followed.setdefault(run_id, [])
            responses = 0
            while not (seen and seen[-1].event == "end"):
                names = alive()
                if not names:
                    await trio.sleep(0.05)
                    continue
                base = relays["b" if "b" in names else names[0]].url
                last = seen[-1].id if seen else None
                try:
                    status, events = await read_events(client, base + path,
                                                       last_event_id=last)
                except (httpx.TransportError, httpx.StreamError):
                    await trio.sleep(0.05)
                    continue
                assert status in (200, 503), status
                responses += bool(events)
                seen += events
            moved += responses > 1

        async def load(nursery: trio.Nursery) -> None:
            # Runs keep coming until both relays were restarted.
            while not stop_load.is_set():
                assert len(created) < most
                await start_run()
                nursery.start_soon(follow, *created[-1])
                await trio.sleep(0.25)

        async with (
            open_relay_process(*args(upstream.base_url), env=ENV) as a,
            open_relay_process(*args(upstream.base_url), env=ENV) as b,
        ):
            relays.update(a=a, b=b)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load, nursery)
                await trio.sleep(1.0)
                # Restart A while its runs stream: it drains, B serves the followers.
                a.terminate()
                assert await a.wait(30) == 0
                async with open_relay_process(*args(upstream.base_url), env=ENV) as a2:
                    relays["a2"] = a2
                    await trio.sleep(0.2)
                    # Then B, whose followers move to A2.
                    b.terminate()
                    assert await b.wait(30) == 0
                    await trio.sleep(0.5)
                    stop_load.set()
                    with trio.fail_after(60):
                        while len(followed) < len(created) or not all(
                            s and s[-1].event == "end" for s in followed.values()
                        ):
                            await trio.sleep(0.05)
                    # Every run is complete in the journal, for any relay to serve.
                    for run_id, path in created:
                        info = await client.get(f"{a2.url}/v1/runs/{run_id}")
                        assert info.json()["end_seq"] is not None
                        status, events = await read_events(client, a2.url + path)
                        assert status == 200
                        assert events == followed[run_id]
    assert len(created) >= 10
    for run_id, _ in created:
        events = followed[run_id]
        assert check_stream(events)["status"] == "completed", run_id
        assert text_of(events) == TEXT
    assert len(upstream.chat_requests) == len(created)  # none was started twice
    for relay in (relays["a"], relays["b"]):
        assert "drain: every run ended" in relay.text
    # The drains were seen: POSTs refused (and retried on the other relay), and followers
    # cut when B stopped, resumed on A2 by Last-Event-ID.
    assert refused >= 1
    assert moved >= 1
    print(f"rolling restart: {len(created)} runs, {refused} POSTs refused while draining, "
          f"{moved} followers moved")
