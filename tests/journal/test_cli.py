"""``python -m trio_llmstream relay`` as real processes: one with the in-memory journal, and
two sharing Redis, a client resuming on the second what it began on the first."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

import trio_llmstream
import trio_llmstream.journal
from trio_llmstream.testing import open_mock_server, text_stream

from .redis_server import RedisClusterServers, RedisServer, free_port
from .sse_client import Event, check_stream, read_events
from .test_relay import MESSAGES, TEXT, text_of


class RelayProcess:
    """A running ``python -m trio_llmstream relay``: its base URL, its output so far
    (stdout and stderr together), and the process."""

    def __init__(self, process: trio.Process, url: str, output: bytearray) -> None:
        self.process = process
        self.url = url
        self.output = output

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float = 30) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()


@asynccontextmanager
async def open_relay_process(
    *args: str, env: dict[str, str] | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[RelayProcess]:
    """Run the relay command; yield it once listening. When the block ends, a process still
    running is stopped with SIGTERM, which must end it cleanly (exit code 0) after draining;
    a process the block stopped itself is just awaited."""
    port = free_port()
    cmd = [sys.executable, "-m", "trio_llmstream", "relay", *args, "--port", str(port)]
    process = await trio.lowlevel.open_process(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=None if env is None else {**os.environ, **env},
    )
    assert process.stdout is not None
    output = bytearray()
    listening = trio.Event()

    async def drain() -> None:
        assert process.stdout is not None
        while data := await process.stdout.receive_some():
            output.extend(data)
            if b"relay listening on" in output:
                listening.set()
        listening.set()  # ended: the check below says so

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.fail_after(30):
                await listening.wait()
            assert b"relay listening on" in output, output.decode()
            relay = RelayProcess(process, f"http://{host}:{port}", output)
            yield relay
            if process.returncode is None:
                relay.terminate()
                await relay.wait()
                assert b"SIGTERM, draining" in output, output.decode()
        assert process.returncode == 0, output.decode()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        await process.stdout.aclose()


@asynccontextmanager
async def relay_process(*args: str) -> AsyncIterator[str]:
    """Run the relay command; yield its base URL; stop it with SIGTERM, which must end it
    cleanly (exit code 0)."""
    async with open_relay_process(*args) as relay:
        yield relay.url


async def test_relay_command_with_the_memory_journal() -> None:
    async with (
        open_mock_server(text_stream(TEXT, chunk_size=6, delay=0.005)) as upstream,
        relay_process("--upstream", upstream.base_url, "--model", "m") as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        response = await client.post("/v1/runs", json=MESSAGES)
        assert response.status_code == 201
        events_url = response.json()["events"]
        _, events = await read_events(client, events_url)
        assert check_stream(events)["status"] == "completed"
        assert text_of(events) == TEXT
        assert upstream.requests[0].json["model"] == "m"


async def test_relay_command_speaks_another_protocol_upstream() -> None:
    # --provider: the relay streams from an Anthropic Messages upstream; browsers see the
    # same journal events as for any other protocol.
    from trio_llmstream.testing import anthropic_text_stream

    async with (
        open_mock_server(anthropic_text_stream(TEXT)) as upstream,
        relay_process("--provider", "anthropic", "--upstream", upstream.origin,
                      "--model", "claude-x") as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        response = await client.post("/v1/runs", json=MESSAGES)
        assert response.status_code == 201
        _, events = await read_events(client, response.json()["events"])
        assert check_stream(events)["status"] == "completed"
        assert text_of(events) == TEXT
        [request] = upstream.chat_requests
        assert request.path == "/v1/messages"
        assert request.json["model"] == "claude-x"


async def test_two_relay_processes_share_runs_through_redis(redis_server: RedisServer) -> None:
    async with (
        open_mock_server(text_stream(TEXT, chunk_size=2, delay=0.01)) as upstream,
        relay_process("--upstream", upstream.base_url, "--model", "m",
                      "--redis", redis_server.url) as url_a,
        relay_process("--upstream", upstream.base_url, "--model", "m",
                      "--redis", redis_server.url) as url_b,
        httpx.AsyncClient(base_url=url_a, timeout=10) as a,
        httpx.AsyncClient(base_url=url_b, timeout=10) as b,
    ):
        response = await a.post("/v1/runs", json=MESSAGES)
        assert response.status_code == 201
        events_url = response.json()["events"]
        seen: list[Event] = []
        _, first = await read_events(a, events_url, stop_after=6)
        seen += first
        # The browser reconnects, with Last-Event-ID, to the other process.
        _, rest = await read_events(b, events_url, last_event_id=seen[-1].id)
        seen += rest
        assert check_stream(seen)["status"] == "completed"
        assert text_of(seen) == TEXT
        # And a client already at the end is told to stop, by either.
        for client in (a, b):
            status, _ = await read_events(client, events_url, last_event_id=seen[-1].id)
            assert status == 204


def test_relay_command_reports_an_unreachable_redis() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    cmd = [sys.executable, "-m", "trio_llmstream", "relay", "--upstream", "http://127.0.0.1:9/v1",
           "--model", "m", "--redis", url, "--port", str(free_port())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "error: JournalUnavailable: Redis unavailable" in proc.stderr


def imported_modules(path: Path, package: str) -> set[str]:
    """The absolute names of every module ``path`` (a module of ``package``) imports, at any
    place in the file (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_journal_does_not_import_a_provider() -> None:
    # The layers: the journal records and serves any LLM it is given; the command line (in
    # trio_llmstream.__main__) is what builds an OpenAILLM for the relay. (Checked in the
    # source: importing the package imports the providers anyway, for its public API.)
    journal = Path(trio_llmstream.journal.__file__).parent
    modules = sorted(journal.glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        imported = imported_modules(path, "trio_llmstream.journal")
        bad = {m for m in imported
               if m.startswith(("trio_llmstream.providers", "trio_llmstream.__main__"))}
        assert not bad, (path.name, bad)
    # The checker sees a provider import where there is one.
    demo = Path(trio_llmstream.__file__).parent / "_demo.py"
    assert "trio_llmstream.providers.openai" in imported_modules(demo, "trio_llmstream")


# -- journal options: a run's length bound, Redis Cluster ------------------------------------------

LONG = [f"p{i} " for i in range(40)]


async def check_max_entries(*journal_args: str) -> None:
    # A run longer than --max-entries ends with a typed error entry, every entry kept.
    async with (
        open_mock_server(text_stream(LONG, chunk_size=1)) as upstream,
        relay_process("--upstream", upstream.base_url, "--model", "m", "--max-entries", "10",
                      *journal_args) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        response = await client.post("/v1/runs", json=MESSAGES)
        assert response.status_code == 201
        _, events = await read_events(client, response.json()["events"])
        end = check_stream(events)
        assert end["status"] == "failed"
        assert len(events) == 11  # the 10 chunks the cap allows, then the end at seq 11
        error = end["error"]
        assert isinstance(error, dict)
        assert error["type"] == "RunTooLong"
        # Nothing was trimmed: a reader from the start gets the same events.
        _, again = await read_events(client, response.json()["events"])
        assert again == events


async def test_max_entries_bounds_a_run_on_the_memory_journal() -> None:
    await check_max_entries()


async def test_max_entries_bounds_a_run_on_redis(redis_server: RedisServer) -> None:
    await check_max_entries("--redis", redis_server.url)


def test_redis_and_redis_cluster_exclude_each_other() -> None:
    cmd = [sys.executable, "-m", "trio_llmstream", "relay", "--upstream", "http://127.0.0.1:9/v1",
           "--model", "m", "--redis", "redis://a", "--redis-cluster", "redis://b"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr
    proc = subprocess.run([*cmd[:6], "--max-entries", "0"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert "must be at least 1" in proc.stderr


async def test_two_relays_share_runs_through_a_redis_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    # The session's cluster (tests/journal/conftest.py): each node's bus port is chosen free
    # too, where a cluster started with the default (port + 10,000) fails now and then.
    ports = redis_cluster.ports
    url = f"redis://127.0.0.1:{ports[0]}"
    async with (
        open_mock_server(*[text_stream(TEXT, chunk_size=2, delay=0.005)] * 8) as upstream,
        relay_process("--upstream", upstream.base_url, "--model", "m",
                      "--redis-cluster", url) as url_a,
        relay_process("--upstream", upstream.base_url, "--model", "m",
                      "--redis-cluster", f"redis://127.0.0.1:{ports[1]}") as url_b,
        httpx.AsyncClient(base_url=url_a, timeout=10) as a,
        httpx.AsyncClient(base_url=url_b, timeout=10) as b,
    ):
        # Several runs, so that their keys land on different masters.
        for _ in range(8):
            response = await a.post("/v1/runs", json=MESSAGES)
            assert response.status_code == 201
            events_url = response.json()["events"]
            _, first = await read_events(a, events_url, stop_after=5)
            _, rest = await read_events(b, events_url, last_event_id=first[-1].id)
            assert check_stream(first + rest)["status"] == "completed"
            assert text_of(first + rest) == TEXT
