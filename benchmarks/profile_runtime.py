"""Measurements behind benchmarks/PROFILE.md (issue 16): where a chunk's time and a stream's
memory go. Not a benchmark of record (bench_e2e.py is); each command isolates one cost.

    .venv/bin/python benchmarks/profile_runtime.py memory [--chunks 10000] [--repeat 5]
        in memory, one event per piece: ours with the default bounds (1,024 chunks and 16 KiB),
        at buffer_size 16 (the count bound alone before issue 16) and 0, our parser alone, the
        floor; each with GC on and off; GC collections and time per 10,000 chunks, and task
        steps per 1,000 chunks (the hand-offs: two steps each)
    .venv/bin/python benchmarks/profile_runtime.py accumulator [--alone]
        _Accumulator.add alone, µs/chunk at 1k / 10k / 50k / 200k chunks (and with compaction
        off), and (without --alone) ours end to end in memory at 1k / 10k / 50k against the floor
    .venv/bin/python benchmarks/profile_runtime.py concurrent --variant ours|httpx-sse|floor
        [--streams 1000] [--gc-off]
        N streams x 200 events over loopback (server in its own process), with a trio
        Instrument counting task steps (scheduling rounds) per stream, GC collections and their
        time (gc.callbacks), net GC-tracked allocations per chunk, peak RSS growth per stream,
        and the bytes held in h11 receive buffers (sampled every 100 ms)
    .venv/bin/python benchmarks/profile_runtime.py spin-memory --seconds 20
        loop the in-memory per-event stream (a target for py-spy record)

py-spy: ``py-spy record -r 250 -f raw -o OUT -- python benchmarks/profile_runtime.py ...`` then
``python benchmarks/_pyspy_top.py OUT`` for self and inclusive time by function.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_e2e as e2e
import httpx
import trio

from trio_llmstream import (
    ChatChunk,
    Choice,
    ChoiceDelta,
    OpenAILLM,
    open_llm_stream,
)
from trio_llmstream import _stream as runtime

URL = f"{e2e.MOCK_BASE}/chat/completions"


# -- GC accounting -------------------------------------------------------------------------------


class GCMeter:
    """Collections per generation and the time spent in them, through gc.callbacks."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = 0.0
        self.steps = 0  # task steps of the measured run (time_memory)
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.count[info["generation"]] += 1

    def __enter__(self) -> GCMeter:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    def tracked_per_chunk(self, chunks: int) -> float:
        # A gen-0 collection runs each time (tracked allocations - deallocations) reaches the
        # threshold: collections x threshold is the net tracked growth between collections.
        return self.count[0] * gc.get_threshold()[0] / chunks


# -- in memory -----------------------------------------------------------------------------------


async def ours_buffer(llm: OpenAILLM, n: int, buffer_size: int) -> str:
    parts: list[str] = []
    async with open_llm_stream(
        llm, chat_ctx=e2e.CTX, conn_options=e2e.OPTIONS, extra={"model": f"bench-{n}"},
        buffer_size=buffer_size,
    ) as stream:  # fmt: skip
        async for chunk in stream:
            parts.append(chunk.text)
    return "".join(parts)


def time_memory(
    kind: str, n: int, gc_on: bool, buffer_size: int = runtime.DEFAULT_BUFFER_SIZE
) -> tuple[float, GCMeter]:
    """One trio.run: warm-up stream, then one timed n-event stream; µs/chunk (CPU). The
    meter also counts the timed stream's task steps (``meter.steps``)."""
    meter = GCMeter()

    async def main() -> float:
        if kind == "floor" or kind == "parser":
            client = e2e.mock_httpx_client(None)
            fn = e2e.stream_floor if kind == "floor" else e2e.stream_parser_only
            run = lambda m: fn(client, URL, m)  # noqa: E731
        else:
            client = e2e.mock_httpx_client(None)
            llm = OpenAILLM("bench", base_url=e2e.MOCK_BASE, api_key="k", http_client=client)
            run = lambda m: ours_buffer(llm, m, buffer_size)  # noqa: E731
        e2e.check(e2e.N_WARM, await run(e2e.N_WARM), kind)
        gc.collect()
        if not gc_on:
            gc.disable()
        try:
            steps = StepCounter()
            trio.lowlevel.add_instrument(steps)
            with meter:
                c0 = time.process_time()
                text = await run(n)
                cpu = time.process_time() - c0
            trio.lowlevel.remove_instrument(steps)
            meter.steps = steps.steps
        finally:
            gc.enable()
        e2e.check(n, text, kind)
        await client.aclose()
        return cpu / n * 1e6

    return trio.run(main), meter


def cmd_memory(args: argparse.Namespace) -> None:
    n = args.chunks
    e2e.events(e2e.N_WARM)
    e2e.events(n)
    default = runtime.DEFAULT_BUFFER_SIZE
    variants = [("floor", default), ("parser", default), ("ours", default), ("ours", 16),
                ("ours", 0)]  # fmt: skip
    best: dict[tuple[str, int, bool], float] = {}
    meters: dict[tuple[str, int, bool], GCMeter] = {}
    for _ in range(args.repeat):
        for kind, size in variants:
            for gc_on in (True, False):
                us, meter = time_memory(kind, n, gc_on, size)
                key = (kind, size, gc_on)
                if us < best.get(key, float("inf")):
                    best[key], meters[key] = us, meter
    floor = best[("floor", default, True)]
    print(f"in memory, one event per piece, {n:,} events, best of {args.repeat}, CPU µs/chunk")
    print(f"  {'variant':<28} {'GC on':>7} {'GC off':>7} {'x floor':>8} {'GC share':>9} "
          f"{'gen0/1/2 collections':>21} {'GC ms':>6} {'tracked/chunk':>14} "
          f"{'steps/1k chunks':>16}")  # fmt: skip
    for kind, size in variants:
        on, off = best[(kind, size, True)], best[(kind, size, False)]
        m = meters[(kind, size, True)]
        name = kind if kind != "ours" else f"ours, buffer_size={size}" + (
            " (default)" if size == default else ""
        )
        print(f"  {name:<28} {on:>7.2f} {off:>7.2f} {on / floor:>7.2f}x {1 - off / on:>8.0%} "
              f"{'/'.join(map(str, m.count)):>21} {m.seconds * 1e3:>6.1f} "
              f"{m.tracked_per_chunk(n):>14.2f} {m.steps * 1000 / n:>16.1f}")  # fmt: skip


# -- the accumulator -----------------------------------------------------------------------------


def cmd_accumulator(args: argparse.Namespace) -> None:
    print("_Accumulator.add alone, one chunk per call (as one event per read delivers), "
          "µs/chunk, best of 5")  # fmt: skip
    words = [" the", " quick brown", " fox", " jumps", " über", " 東京 😀"]
    for n in (1_000, 10_000, 50_000, 200_000):
        batches = [[ChatChunk("id", [Choice(ChoiceDelta(content=words[i % 6]))])] for i in range(n)]
        row = []
        for compact in (runtime._COMPACT_AT, 10**9):
            runtime._COMPACT_AT = compact
            best = float("inf")
            for _ in range(5):
                acc = runtime._Accumulator()
                gc.disable()
                t0 = time.perf_counter()
                for batch in batches:
                    acc.add(batch)
                best = min(best, time.perf_counter() - t0)
                gc.enable()
            row.append(best / n * 1e6)
        runtime._COMPACT_AT = 64
        print(f"  {n:>7,} chunks: {row[0]:6.3f} (compact every 64)   {row[1]:6.3f} (no compaction)")
    if args.alone:
        return
    print("\nin memory end to end, one event per piece, CPU µs/chunk, best of 3 (GC on)")
    for n in (1_000, 10_000, 50_000):
        e2e.events(e2e.N_WARM)
        e2e.events(n)
        res = {k: min(time_memory(k, n, True)[0] for _ in range(3)) for k in ("floor", "ours")}
        runtime._COMPACT_AT = 10**9
        nocompact = min(time_memory("ours", n, True)[0] for _ in range(3))
        runtime._COMPACT_AT = 64
        print(f"  {n:>7,} chunks: floor {res['floor']:6.2f}  ours {res['ours']:6.2f} "
              f"({res['ours'] / res['floor']:.2f}x)  ours without compaction {nocompact:6.2f} "
              f"({nocompact / res['floor']:.2f}x)")  # fmt: skip


# -- concurrency ---------------------------------------------------------------------------------


class StepCounter(trio.abc.Instrument):
    """Task steps (one per scheduling round a task runs in) and tasks spawned."""

    def __init__(self) -> None:
        self.steps = 0
        self.tasks = 0
        self.batches = 0  # scheduler loop iterations (one I/O wait each)
        self.by_name: Counter[str] = Counter()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.tasks += 1

    def before_io_wait(self, timeout: float) -> None:
        self.batches += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        self.by_name[task.name] += 1


def h11_buffered(client: httpx.AsyncClient) -> tuple[int, int]:
    """Bytes held now in the h11 receive buffers of the client's pool's connections (len of
    their bytearrays), and how many connections hold any."""
    total = holding = 0
    pool = client._transport._pool  # type: ignore[attr-defined]
    for conn in list(pool.connections):
        inner = getattr(conn, "_connection", None)
        h11_conn = getattr(inner, "_h11_state", None)
        buf = getattr(h11_conn, "_receive_buffer", None)
        data = getattr(buf, "_data", None)
        if data:
            total += len(data)
            holding += 1
    return total, holding


def cmd_concurrent_child(args: argparse.Namespace) -> None:
    e2e.raise_nofile()
    chunks, streams = args.chunks, args.streams
    e2e.events(chunks)
    base = f"http://127.0.0.1:{args.port}/v1"
    url = f"{base}/chat/completions"
    counter = StepCounter()
    meter = GCMeter()

    async def main() -> dict[str, Any]:
        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=streams, max_keepalive_connections=100),
            timeout=httpx.Timeout(600.0),
        )
        llm = OpenAILLM("bench", base_url=base, api_key="k", http_client=client)
        if args.variant == "ours":
            run = lambda: e2e.stream_ours(llm, chunks, e2e.CONC_OPTIONS)  # noqa: E731
        elif args.variant == "httpx-sse":
            run = lambda: e2e.stream_httpx_sse(client, url, chunks)  # noqa: E731
        else:
            run = lambda: e2e.stream_floor(client, url, chunks)  # noqa: E731
        done = 0
        held_peak = (0, 0)
        lifetimes: list[int] = []

        async def one() -> None:
            nonlocal done
            born = counter.batches
            if await run() == e2e.TEXTS[chunks]:
                done += 1
            lifetimes.append(counter.batches - born)

        snapshot: list[Any] = []
        traced_best = 0

        async def sample(cancel: trio.CancelScope) -> None:
            nonlocal held_peak, traced_best
            with cancel:
                while True:
                    await trio.sleep(0.1)
                    held = h11_buffered(client)
                    held_peak = max(held_peak, held)
                    if args.tm_top:
                        now = tracemalloc.get_traced_memory()[0]
                        if now > traced_best * 1.02:
                            traced_best = now
                            snapshot[:] = [tracemalloc.take_snapshot()]

        gc.collect()
        rss0 = e2e.current_rss_kib()
        if args.gc_off:
            gc.disable()
        if args.tm_top:
            tracemalloc.start()
        trio.lowlevel.add_instrument(counter)
        sampler = trio.CancelScope()
        c0, t0 = time.process_time(), time.perf_counter()
        with meter:
            async with trio.open_nursery() as outer:
                if args.sample_buffers:
                    outer.start_soon(sample, sampler)
                async with trio.open_nursery() as nursery:
                    for _ in range(streams):
                        nursery.start_soon(one)
                sampler.cancel()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        trio.lowlevel.remove_instrument(counter)
        gc.enable()
        tm_top: list[tuple[str, float]] = []
        if snapshot:
            stats = snapshot[0].statistics("filename")
            tm_top = [(str(st.traceback[0].filename).split("site-packages/")[-1],
                       st.size / streams / 1024) for st in stats[:12]]  # fmt: skip
            tracemalloc.stop()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        await client.aclose()
        return {
            "variant": args.variant, "streams": streams, "done": done, "wall": wall, "cpu": cpu,
            "gc_off": args.gc_off, "gc_counts": meter.count, "gc_seconds": meter.seconds,
            "tracked_per_chunk": meter.tracked_per_chunk(streams * chunks),
            "steps_per_stream": counter.steps / streams, "tasks_per_stream": counter.tasks / streams,
            "steps_by_name": counter.by_name.most_common(8),
            "batches": counter.batches, "lifetime_batches": sum(lifetimes) / len(lifetimes),
            "rss_growth_per_stream_kib": (rss1 - rss0) / streams,
            "h11_held_peak_bytes": held_peak[0], "h11_holding_peak": held_peak[1],
            "tm_top": tm_top, "tm_peak_per_stream_kib": traced_best / streams / 1024,
        }  # fmt: skip

    print(json.dumps(trio.run(main)))


def cmd_concurrent(args: argparse.Namespace) -> None:
    with e2e.loopback_server() as port:
        for variant in args.variant.split(","):
            for gc_off in (False, True) if args.both_gc else (args.gc_off,):
                cmd = [sys.executable, __file__, "concurrent-child", "--variant", variant,
                       "--port", str(port), "--streams", str(args.streams),
                       "--chunks", str(args.chunks)]  # fmt: skip
                if gc_off:
                    cmd.append("--gc-off")
                if args.sample_buffers:
                    cmd.append("--sample-buffers")
                if args.tm_top:
                    cmd.append("--tm-top")
                if args.py_spy:
                    out = f"{args.py_spy}.{variant}{'.gcoff' if gc_off else ''}.raw"
                    cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200",
                           "-f", "raw", "-o", out, *(["--native"] if args.native else []),
                           "--", *cmd]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode:
                    print(done.stderr[-2000:])
                    continue
                line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
                r = json.loads(line)
                print(f"{variant:<10} GC {'off' if gc_off else 'on '} done {r['done']:,}/"
                      f"{r['streams']:,} wall {r['wall']:.2f} s CPU {r['cpu']:.2f} s | GC "
                      f"{r['gc_seconds']:.2f} s, collections {r['gc_counts']}, net tracked "
                      f"allocations/chunk {r['tracked_per_chunk']:.2f} | steps/stream "
                      f"{r['steps_per_stream']:.0f}, tasks/stream {r['tasks_per_stream']:.1f}, scheduler "
                      f"batches {r['batches']:,}, a stream lives {r['lifetime_batches']:.0f} | "
                      f"RSS growth/stream {r['rss_growth_per_stream_kib']:.0f} KiB | h11 buffers "
                      f"peak {r['h11_held_peak_bytes'] / 2**20:.1f} MiB in "
                      f"{r['h11_holding_peak']:,} conns", flush=True)  # fmt: skip
                print(f"    steps by task: {r['steps_by_name']}", flush=True)
                if r["tm_top"]:
                    print(f"    tracemalloc at its sampled peak: {r['tm_peak_per_stream_kib']:.1f} "
                          "KiB/stream; by file, KiB/stream:")  # fmt: skip
                    for name, kib in r["tm_top"]:
                        print(f"      {kib:7.2f}  {name}")


def cmd_spin_memory(args: argparse.Namespace) -> None:
    e2e.events(e2e.N_WARM)
    e2e.events(e2e.N_LONG)
    kind = args.kind
    size = None if args.read_size == 0 else args.read_size

    async def main() -> int:
        client = e2e.mock_httpx_client(size)
        llm = OpenAILLM("bench", base_url=e2e.MOCK_BASE, api_key="k", http_client=client)
        end = time.perf_counter() + args.seconds
        rounds = 0
        while time.perf_counter() < end:
            if kind == "ours":
                text = await e2e.stream_ours(llm, e2e.N_LONG)
            else:
                text = await e2e.stream_floor(client, URL, e2e.N_LONG)
            e2e.check(e2e.N_LONG, text, kind)
            rounds += 1
        return rounds

    print(f"{trio.run(main)} streams")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("memory")
    p.add_argument("--chunks", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    p = sub.add_parser("accumulator")
    p.add_argument("--alone", action="store_true",
                   help="only _Accumulator.add alone (skip the end-to-end runs)")  # fmt: skip
    for name in ("concurrent", "concurrent-child"):
        p = sub.add_parser(name)
        p.add_argument("--variant", default="ours,httpx-sse,floor")
        p.add_argument("--streams", type=int, default=1_000)
        p.add_argument("--chunks", type=int, default=200)
        p.add_argument("--gc-off", action="store_true")
        p.add_argument("--both-gc", action="store_true")
        p.add_argument("--sample-buffers", action="store_true")
        p.add_argument("--tm-top", action="store_true",
                       help="tracemalloc snapshot at the sampled peak: KiB/stream by file")  # fmt: skip
        p.add_argument("--py-spy", default="", help="record each child with py-spy to PREFIX.*")
        p.add_argument("--native", action="store_true", help="py-spy --native (C frames: GC)")
        p.add_argument("--port", type=int)
    p = sub.add_parser("spin-memory")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--kind", default="ours")
    p.add_argument("--read-size", type=int, default=0, help="0: one event per piece")
    args = parser.parse_args()
    {
        "memory": cmd_memory, "accumulator": cmd_accumulator, "concurrent": cmd_concurrent,
        "concurrent-child": cmd_concurrent_child, "spin-memory": cmd_spin_memory,
    }[args.cmd](args)  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
