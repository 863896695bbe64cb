"""Journal benchmarks: write throughput and write-to-follower latency, memory and Redis.

    .venv/bin/python benchmarks/bench_journal.py [--redis URL] [--quick]

Without ``--redis`` a private ``redis-server`` is started on a free loopback port (no
persistence) and stopped at the end. Everything is measured in the same run:

1. Write throughput: ``record()`` of a source that yields chunks as fast as it can, until the
   terminal entry is written, in chunks per second (median of paired rounds: the configs take
   turns, so a noisy neighbour hits them alike). The defaults (write whatever is ready as soon
   as the previous write is done, up to 256 entries: batches form only under load) against
   the former policy (64 entries, held up to 10 ms) and one write per chunk, for
   MemoryJournal and RedisJournal; and, as the floor for Redis, the same chunks sent as bare
   ``XADD``s without the journal's Lua script, TTL or checks: over a raw trio socket (one
   per round trip, and pipelined 256 at a time: the physical floor of this machine), and
   through coredis (one per round trip, pipelined 64: the client the journal used before).
2. Latency: a source paced like a fast model (one chunk every 5 ms); the time from the
   recorder taking a chunk from the source to a live follower (``journal.follow``) returning
   it; percentiles, for the defaults and the former 10 ms timer.
3. Both at once: the throughput run of 1. on Redis with the defaults and a live follower, its
   lag under that load; against its floor: bare pipelined XADDs over a raw socket with a bare
   ``XREAD BLOCK`` follower in the same process (entries parsed, and parsed and decoded to
   ``ChatChunk``s as a journal follower must); then the targets of the performance issue.
4. Relay throughput: ``python -m trio_llmstream relay`` as a process (memory journal), one
   finished run of 200 entries read at once by 1,000 followers over loopback HTTP, in events
   per second delivered; without auth (followers use the run's read token, as a browser
   does) and with ``--auth-token-env`` (followers use the creator's bearer token: the hook
   and the owner check on every connection).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import trio

from trio_llmstream import ChatChunk, Choice, ChoiceDelta, StreamStatus
from trio_llmstream.journal import (
    Journal,
    MemoryJournal,
    RecordOptions,
    RunEnd,
    encode_chunk,
    open_redis_journal,
    record,
)

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and", "runs")
DONE = RunEnd(StreamStatus.COMPLETED, "stop")


def make_chunks(n: int) -> list[ChatChunk]:
    return [
        ChatChunk("chatcmpl-9f8e7d6c5b4a", [Choice(ChoiceDelta(content=WORDS[i % len(WORDS)] + " "))])
        for i in range(n)
    ]


# -- a private redis-server ----------------------------------------------------------------------


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: apt-get install redis-server, or pass --redis URL")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                        s.sendall(b"PING\r\n")
                        if s.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait()


# -- throughput ----------------------------------------------------------------------------------


async def fast_source(chunks: list[ChatChunk]) -> AsyncIterator[ChatChunk | RunEnd]:
    for chunk in chunks:
        yield chunk
    yield DONE


async def throughput(journal: Journal, chunks: list[ChatChunk], options: RecordOptions,
                     run: str) -> float:
    start = time.perf_counter()
    result = await record(journal, run, fast_source(chunks), options=options)
    elapsed = time.perf_counter() - start
    assert result.chunks == len(chunks), result
    await journal.delete_run(run)
    return len(chunks) / elapsed


async def paired_throughput(
    journal: Journal, configs: dict[str, tuple[RecordOptions, int]], rounds: int, tag: str
) -> dict[str, float]:
    """Median chunks/s per config over ``rounds`` rounds, the configs taking turns."""
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(rounds):
        for name, (options, n) in configs.items():
            run = f"{tag}-{r}-{len(rates[name])}-{abs(hash(name)) % 10_000}"
            rates[name].append(await throughput(journal, make_chunks(n), options, run))
    return {name: statistics.median(values) for name, values in rates.items()}


async def throughput_with_follower(journal: Journal, n: int, options: RecordOptions,
                                   run: str) -> tuple[float, list[float]]:
    """Throughput of a source that never waits, with a live follower: chunks/s and the
    follower's lag per chunk (from the recorder taking it to the follower returning it)."""
    chunks = make_chunks(n)
    taken: list[float] = [0.0] * (n + 1)
    lags: list[float] = []

    async def timed() -> AsyncIterator[ChatChunk | RunEnd]:
        for seq, chunk in enumerate(chunks, 1):
            taken[seq] = time.perf_counter()
            yield chunk
        yield DONE

    elapsed = 0.0

    async def write(task_status: trio.TaskStatus[None]) -> None:
        nonlocal elapsed
        start = time.perf_counter()
        await record(journal, run, timed(), options=options, task_status=task_status)
        elapsed = time.perf_counter() - start

    async with trio.open_nursery() as nursery:
        await nursery.start(write)
        async for entry in journal.follow(run, page_size=1024):
            if entry.chunk is not None:
                lags.append(time.perf_counter() - taken[entry.seq])
    await journal.delete_run(run)
    return n / elapsed, lags


async def raw_xadd(client: Any, key: str, chunks: list[ChatChunk], pipeline: int) -> float:
    payloads = [encode_chunk(c) for c in chunks]
    start = time.perf_counter()
    if pipeline <= 1:
        for i, data in enumerate(payloads, 1):
            await client.xadd(key, {"k": "c", "d": data}, identifier=f"{i}-0")
    else:
        for first in range(0, len(payloads), pipeline):
            async with client.pipeline(transaction=False) as pipe:
                for i in range(first, min(first + pipeline, len(payloads))):
                    pipe.xadd(key, {"k": "c", "d": payloads[i]}, identifier=f"{i + 1}-0")
    return len(chunks) / (time.perf_counter() - start)


# The floors speak RESP themselves (not through the library's client), so that this file
# measures any version of the library against the same floors.


class _Incomplete(Exception):
    pass


def _parse(data: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 value (arrays, bulk strings, integers, nil) at ``pos`` and the end."""
    end = data.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, n = data[pos], int(data[pos + 1:end])
    if kind == 58:  # :
        return n, end + 2
    if n < 0:
        return None, end + 2
    if kind == 36:  # $
        if end + 4 + n > len(data):
            raise _Incomplete
        return data[end + 2:end + 2 + n], end + 4 + n
    items, pos = [], end + 2
    for _ in range(n):
        item, pos = _parse(data, pos)
        items.append(item)
    return items, pos


def _pack(args: list[str | int]) -> bytes:
    words = [str(a).encode() for a in args]
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


async def _raw_connection(url: str) -> trio.SocketStream:
    parts = url.split("//", 1)[1].split("/", 1)[0]
    host, port = parts.rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


def _xadd(key: bytes, seq: int, data: bytes) -> bytes:
    ident = b"%d-0" % seq
    return (b"*7\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\nk\r\n$1\r\nc\r\n"
            b"$1\r\nd\r\n$%d\r\n%s\r\n" % (len(key), key, len(ident), ident, len(data), data))


async def _read_lines(stream: trio.SocketStream, lines: int) -> None:
    """Read until ``lines`` CRLF-terminated lines came (an XADD reply is two)."""
    seen = 0
    while seen < lines:
        data = await stream.receive_some(1 << 18)
        if not data:
            raise ConnectionError("redis closed the connection")
        seen += data.count(b"\r\n")


async def raw_socket_xadd(url: str, key: str, chunks: list[ChatChunk], pipeline: int) -> float:
    """The physical floor: bare XADDs over a raw trio socket, ``pipeline`` per round trip."""
    payloads = [encode_chunk(c) for c in chunks]
    bkey = key.encode()
    stream = await _raw_connection(url)
    async with stream:
        start = time.perf_counter()
        for first in range(0, len(payloads), pipeline):
            batch = payloads[first:first + pipeline]
            await stream.send_all(b"".join(
                _xadd(bkey, first + i + 1, data) for i, data in enumerate(batch)))
            await _read_lines(stream, 2 * len(batch))
        return len(chunks) / (time.perf_counter() - start)


async def raw_floor_with_follower(url: str, key: str, chunks: list[ChatChunk], pipeline: int,
                                  decode: bool) -> tuple[float, list[float]]:
    """Bare pipelined XADDs (as the journal's batches) and, in the same process, a bare
    ``XREAD BLOCK`` follower on its own connection: chunks/s and the follower's lag.
    ``decode``: the follower also decodes each entry to a ``ChatChunk``."""
    from trio_llmstream.journal import decode_chunk

    payloads = [encode_chunk(c) for c in chunks]
    n = len(payloads)
    bkey = key.encode()
    sent = [0.0] * (n + 1)
    lags: list[float] = []
    elapsed = 0.0

    async def write() -> None:
        nonlocal elapsed
        stream = await _raw_connection(url)
        async with stream:
            start = time.perf_counter()
            seq = 0
            for first in range(0, n, pipeline):
                batch = payloads[first:first + pipeline]
                now = time.perf_counter()
                parts = []
                for data in batch:
                    seq += 1
                    sent[seq] = now
                    parts.append(_xadd(bkey, seq, data))
                await stream.send_all(b"".join(parts))
                await _read_lines(stream, 2 * len(batch))
            elapsed = time.perf_counter() - start

    async def follow() -> None:
        stream = await _raw_connection(url)
        async with stream:
            position = 0
            buf = b""
            while position < n:
                await stream.send_all(_pack(["XREAD", "COUNT", 1024, "BLOCK", 5000, "STREAMS",
                                             key, f"{position}-0"]))
                while True:
                    try:
                        reply, _ = _parse(buf, 0)
                        buf = b""
                        break
                    except _Incomplete:
                        buf += await stream.receive_some(1 << 18)
                now = time.perf_counter()
                for ident, fields in reply[0][1]:
                    position = int(ident.split(b"-", 1)[0])
                    if decode:
                        decode_chunk(fields[3])
                    lags.append(now - sent[position])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.sleep(0.05)  # the follower is blocked in XREAD
        nursery.start_soon(write)
    return n / elapsed, lags


# -- latency -------------------------------------------------------------------------------------


async def latency(journal: Journal, n: int, interval: float, options: RecordOptions,
                  run: str) -> list[float]:
    chunks = make_chunks(n)
    taken: dict[int, float] = {}
    lags: list[float] = []

    async def paced() -> AsyncIterator[ChatChunk | RunEnd]:
        next_at = trio.current_time()
        for seq, chunk in enumerate(chunks, 1):
            next_at += interval
            await trio.sleep_until(next_at)
            taken[seq] = time.perf_counter()
            yield chunk
        yield DONE

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: record(
            journal, run, paced(), options=options, task_status=task_status))
        async for entry in journal.follow(run):
            if entry.chunk is not None:
                lags.append(time.perf_counter() - taken[entry.seq])
    return lags


async def raw_latency_floor(url: str, key: str, n: int, interval: float) -> list[float]:
    """The floor of 2.: one bare XADD every ``interval`` over a raw socket, a bare
    ``XREAD BLOCK`` follower (parsing and decoding each entry) in the same process."""
    from trio_llmstream.journal import decode_chunk

    payloads = [encode_chunk(c) for c in make_chunks(n)]
    bkey = key.encode()
    taken = [0.0] * (n + 1)
    lags: list[float] = []

    async def write() -> None:
        stream = await _raw_connection(url)
        async with stream:
            next_at = trio.current_time()
            for seq, data in enumerate(payloads, 1):
                next_at += interval
                await trio.sleep_until(next_at)
                taken[seq] = time.perf_counter()
                await stream.send_all(_xadd(bkey, seq, data))
                await _read_lines(stream, 2)

    async def follow() -> None:
        stream = await _raw_connection(url)
        async with stream:
            position = 0
            while position < n:
                await stream.send_all(_pack(["XREAD", "COUNT", 256, "BLOCK", 5000, "STREAMS",
                                             key, f"{position}-0"]))
                buf = b""
                while True:
                    try:
                        reply, _ = _parse(buf, 0)
                        break
                    except _Incomplete:
                        buf += await stream.receive_some(1 << 18)
                for ident, fields in reply[0][1]:
                    position = int(ident.split(b"-", 1)[0])
                    decode_chunk(fields[3])
                    lags.append(time.perf_counter() - taken[position])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.sleep(0.05)
        nursery.start_soon(write)
    return lags


def percentiles(lags: list[float]) -> str:
    ms = sorted(x * 1000 for x in lags)
    q = statistics.quantiles(ms, n=100)
    return f"p50 {q[49]:6.2f} ms   p90 {q[89]:6.2f} ms   p99 {q[98]:6.2f} ms   max {ms[-1]:6.2f} ms"


async def main(redis_url: str, quick: bool, relay: bool = True) -> None:
    n_fast = 5_000 if quick else 20_000
    n_slow = 1_000 if quick else 4_000
    n_lat = 100 if quick else 400
    rounds = 2 if quick else 5
    defaults = RecordOptions()  # write at once when idle; under load up to 256 per write
    former = RecordOptions(batch_size=64, flush_interval=0.01)  # the policy before
    per_chunk = RecordOptions(batch_size=1)
    print(f"trio_llmstream.journal benchmarks (python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}; redis {redis_url})\n")

    print(f"1. write throughput: record() of a source that never waits, to the terminal entry "
          f"(median of {rounds} paired rounds)")
    labels = {
        "defaults": "defaults (at once when idle, <=256/write)",
        "former": "former (64/write, 10 ms timer)",
        "per chunk": "one write per chunk",
    }
    memory = MemoryJournal(max_entries=100_000)
    mem = await paired_throughput(memory, {
        "defaults": (defaults, n_fast), "former": (former, n_fast),
        "per chunk": (per_chunk, n_fast)}, rounds, "m")
    rows: list[tuple[str, float]] = [(f"memory, {labels[k]}", v) for k, v in mem.items()]
    prefix = f"bench-{os.getpid()}"
    async with open_redis_journal(redis_url, prefix=prefix, max_entries=100_000) as redis:
        red = await paired_throughput(redis, {
            "defaults": (defaults, n_fast), "former": (former, n_fast),
            "per chunk": (per_chunk, n_slow)}, rounds, "r")
        rows += [(f"redis, {labels[k]}", v) for k, v in red.items()]
        floors = {
            "redis floor: bare XADD, raw socket, pipelined 256": (raw_socket_xadd, n_fast, 256),
            "redis floor: bare XADD, raw socket, one per round trip": (
                raw_socket_xadd, n_slow, 1),
            "redis floor: bare XADD, coredis, pipelined 64": (raw_xadd, n_fast, 64),
            "redis floor: bare XADD, coredis, one per round trip": (raw_xadd, n_slow, 1),
        }
        for i, (label, (fn, n, pipeline)) in enumerate(floors.items()):
            key = f"{prefix}:raw{i}"
            where: Any = redis_url if fn is raw_socket_xadd else redis.client
            rows.append((label, await fn(where, key, make_chunks(n), pipeline)))
            await redis.client.delete([key])
        for name, rate in rows:
            print(f"   {name:<56} {rate:>10,.0f} chunks/s")
        r = dict(rows)
        print(f"   defaults / former: memory x{mem['defaults'] / mem['former']:.2f}, "
              f"redis x{red['defaults'] / red['former']:.2f}")
        print(f"   defaults / per chunk: memory x{mem['defaults'] / mem['per chunk']:.1f}, "
              f"redis x{red['defaults'] / red['per chunk']:.1f}")
        print(f"   journal / bare XADD over a raw socket: defaults "
              f"{red['defaults'] / r['redis floor: bare XADD, raw socket, pipelined 256']:.2f}"
              f", per chunk "
              f"{red['per chunk'] / r['redis floor: bare XADD, raw socket, one per round trip']:.2f}")

        print(f"\n2. write-to-follower latency: one chunk every 5 ms, {n_lat} chunks, "
              "a live follower")
        idle_p50: dict[str, float] = {}
        for name, journal in (("memory", memory), ("redis", redis)):
            for label, options in (("defaults", defaults), ("former (10 ms timer)", former)):
                run = f"lat-{name}-{label.split()[0]}"
                lags = await latency(journal, n_lat, 0.005, options, run)
                await journal.delete_run(run)
                idle_p50[f"{name} {label}"] = statistics.median(lags)
                print(f"   {name:<7} {label:<21} {percentiles(lags)}")
        lags = await raw_latency_floor(redis_url, f"{prefix}:rawl", n_lat, 0.005)
        await redis.client.delete([f"{prefix}:rawl"])
        floor_p50 = statistics.median(lags) * 1000
        print(f"   {'redis   floor: bare XADD -> XREAD':<29} {percentiles(lags)}")

        print(f"\n3. both at once, redis, defaults: {n_fast} chunks as fast as the source "
              "gives them, a live follower")
        loaded_rate, loaded_lags = await throughput_with_follower(redis, n_fast, defaults, "both")
        print(f"   {'journal (record + follow)':<34} {loaded_rate:>8,.0f} chunks/s;  lag "
              f"{percentiles(loaded_lags)}")
        floor_rates: dict[bool, float] = {}
        for decode in (False, True):
            key = f"{prefix}:rawf{int(decode)}"
            rate, lags = await raw_floor_with_follower(redis_url, key, make_chunks(n_fast), 256,
                                                       decode)
            await redis.client.delete([key])
            floor_rates[decode] = rate
            label = "floor: bare XADD + XREAD" + (", decoded" if decode else "")
            print(f"   {label:<34} {rate:>8,.0f} chunks/s;  lag {percentiles(lags)}")
        print(f"   journal / floor: x{loaded_rate / floor_rates[False]:.2f} (parsed only), "
              f"x{loaded_rate / floor_rates[True]:.2f} (decoded)")
        p50 = idle_p50["redis defaults"] * 1000
        print("\n   targets (performance issue): journal on Redis, defaults")
        print(f"   - throughput >= 90,000 chunks/s: {red['defaults']:,.0f} "
              f"({'met' if red['defaults'] >= 90_000 else 'NOT met'}; with a live follower "
              f"{loaded_rate:,.0f}, whose floor here is {floor_rates[True]:,.0f} decoded, "
              f"{floor_rates[False]:,.0f} parsed only)")
        print(f"   - write -> live follower p50 <= 1 ms: {p50:.2f} ms "
              f"({'met' if p50 <= 1.0 else 'NOT met'}; floor {floor_p50:.2f} ms)")

    if relay:
        await relay_section(200 if quick else 1_000, 1 if quick else 2)


# -- 4. relay throughput ---------------------------------------------------------------------------

RELAY_TOKEN = "bench-relay-token-0123456789abcdef"


async def relay_throughput(upstream_url: str, followers: int, auth: bool) -> tuple[float, int]:
    """Events per second delivered to ``followers`` concurrent readers of one finished run,
    by a relay process; and the events each got."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "trio_llmstream", "relay", "--upstream", upstream_url,
           "--model", "m", "--port", str(port)]
    env = dict(os.environ)
    headers: dict[str, str] = {}
    if auth:
        cmd += ["--auth-token-env", "BENCH_RELAY_TOKENS"]
        env["BENCH_RELAY_TOKENS"] = RELAY_TOKEN
        headers["authorization"] = f"Bearer {RELAY_TOKEN}"
    process = await trio.lowlevel.open_process(cmd, env=env, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        limits = httpx.Limits(max_connections=followers + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits,
                                     headers=headers) as client:
            with trio.fail_after(30):
                while True:
                    try:
                        await client.get("/v1/health")
                        break
                    except httpx.TransportError:
                        await trio.sleep(0.05)
            created = (await client.post("/v1/runs", json={
                "messages": [{"role": "user", "content": "hi"}]})).json()
            # Followers with auth use the bearer (the owner check); without, the read token.
            path = created["events"].split("?")[0] if auth else created["events"]
            info = created["info"]
            while (await client.get(info)).json()["end_seq"] is None:
                await trio.sleep(0.05)
            counts: list[int] = []

            async def follow() -> None:
                body = bytearray()
                async with client.stream("GET", path) as response:
                    assert response.status_code == 200, response.status_code
                    async for data in response.aiter_bytes():
                        body += data
                counts.append(body.count(b"\nid: ") + body.startswith(b"id: "))

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(followers):
                    nursery.start_soon(follow)
            elapsed = time.perf_counter() - start
    finally:
        process.terminate()
        await process.wait()
    assert len(set(counts)) == 1, "every follower gets the same events"
    return sum(counts) / elapsed, counts[0]


async def relay_section(followers: int, rounds: int = 2) -> None:
    from trio_llmstream.testing import open_mock_server, text_stream

    print(f"\n4. relay throughput: {followers:,} followers of one finished run, loopback HTTP, "
          f"relay process (memory journal); {rounds} rounds, alternating, median")
    words = [WORDS[i % len(WORDS)] + " " for i in range(197)]
    async with open_mock_server(*[text_stream(words)] * (2 * rounds)) as upstream:
        rates: dict[bool, list[float]] = {False: [], True: []}
        events = 0
        for _ in range(rounds):  # alternating: this machine's noise hits both alike
            for auth in (False, True):
                rate, events = await relay_throughput(upstream.base_url, followers, auth)
                rates[auth].append(rate)
        for auth in (False, True):
            label = "auth on (bearer, owner check)" if auth else "no auth (read token)"
            runs = ", ".join(f"{r:,.0f}" for r in rates[auth])
            print(f"   {label:<44} {statistics.median(rates[auth]):>10,.0f} events/s   "
                  f"({events} events each; rounds: {runs})")
        print(f"   auth on / off: "
              f"{statistics.median(rates[True]) / statistics.median(rates[False]):.2f}")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default=None, metavar="URL")
    parser.add_argument("--quick", action="store_true", help="fewer chunks (a smoke run)")
    parser.add_argument("--no-relay", action="store_true", help="skip 4. (relay throughput)")
    args = parser.parse_args()
    if args.redis:
        trio.run(main, args.redis, args.quick, not args.no_relay)
    else:
        with private_redis() as url:
            trio.run(main, url, args.quick, not args.no_relay)
