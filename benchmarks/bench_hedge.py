"""Hedged streams against a heavy-tailed upstream: time to first token, p50 and p99.

    .venv/bin/python benchmarks/bench_hedge.py

An in-memory provider plays an upstream whose time to first token has a heavy tail: 90% of
attempts answer after a log-normal delay (median 300 ms), 10% are stuck in a queue for a Pareto
delay of 1.5 s and more (the livekit-style "cold replica" or overloaded shard). Each attempt
draws its own delay from a seeded RNG, so a hedged attempt is an independent draw, as a second
request to a load balancer is. The same streams run without a hedge, with a hedge after 0.5 s
and after 0.8 s (max two in flight), on one LLM and on a FallbackLLM of two such upstreams.

Time is trio's MockClock (virtual, autojump): the figures are the policy's effect on latency,
exactly reproducible, free of the shared machine's noise; the runtime's own cost per stream is
measured separately (wall clock, same run) and is microseconds. Also shown: how many attempts
the hedge started per stream (the cost in requests) and their share of cancelled losers.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence

import trio
import trio.testing

from trio_llmstream import (
    LLM,
    APIConnectOptions,
    AttemptInfo,
    ChatChunk,
    ChatContext,
    ChatRequest,
    Choice,
    ChoiceDelta,
    ChunkEmitter,
    FallbackLLM,
    Hedge,
    open_llm_stream,
)

STREAMS = 2000
SEED = 1234


class HeavyTailLLM(LLM):
    """First token after a heavy-tailed delay, then 20 tokens 20 ms apart."""

    def __init__(self, seed: int, label: str, gap: float = 0.02) -> None:
        super().__init__(label=label)
        self._rng = random.Random(seed)
        self._gap = gap
        self.attempts = 0
        rid = label
        self._role = [ChatChunk(rid, [Choice(ChoiceDelta(role="assistant"))])]
        self._tokens = [ChatChunk(rid, [Choice(ChoiceDelta(content=f"t{i} "))]) for i in range(20)]
        self._finish = [ChatChunk(rid, [Choice(ChoiceDelta(), finish_reason="stop")])]

    def first_token_delay(self) -> float:
        rng = self._rng
        if rng.random() < 0.9:
            return rng.lognormvariate(-1.2, 0.35)  # median e^-1.2 ~ 0.30 s
        return 1.5 * rng.paretovariate(1.5)  # >= 1.5 s, heavy tail

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        self.attempts += 1
        await trio.sleep(self.first_token_delay())
        await emit.send(self._role + self._tokens[:1])
        for token in self._tokens[1:]:
            if self._gap:
                await trio.sleep(self._gap)
            else:
                await trio.lowlevel.checkpoint()  # one read per token
            await emit.send([token])
        await emit.send(self._finish)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def ttfts(llm: LLM, hedge: Hedge | None) -> tuple[list[float], int]:
    ctx = ChatContext()
    ctx.add_message(role="user", content="hi")
    options = APIConnectOptions(max_retry=2)
    out: list[float] = []
    attempts = 0

    async def one() -> None:
        nonlocal attempts
        async with open_llm_stream(llm, chat_ctx=ctx, conn_options=options, hedge=hedge) as s:
            await s.collect()
        assert s.metrics.ttft is not None
        out.append(s.metrics.ttft)
        attempts += len(s.metrics.attempts)

    # 100 concurrent streams at a time, as a busy gateway would run them.
    for start in range(0, STREAMS, 100):
        async with trio.open_nursery() as nursery:
            for _ in range(min(100, STREAMS - start)):
                nursery.start_soon(one)
    return out, attempts


def run_virtual(make: str, hedge: Hedge | None) -> tuple[list[float], int]:
    result: list[tuple[list[float], int]] = []

    async def main() -> None:
        if make == "one":
            llm: LLM = HeavyTailLLM(SEED, "upstream")
        else:
            llm = FallbackLLM([HeavyTailLLM(SEED, "a"), HeavyTailLLM(SEED + 1, "b")])
        result.append(await ttfts(llm, hedge))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result[0]


def main() -> None:
    print(f"{STREAMS} streams, heavy-tailed first-token latency (virtual time, seed {SEED})")
    print(f"{'llm':<10} {'hedge':<16} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} "
          f"{'attempts/stream':>16} {'p99 ratio':>10}")
    for make in ("one", "fallback"):
        base_p99 = None
        for hedge in (None, Hedge(after=0.8), Hedge(after=0.5)):
            t, attempts = run_virtual(make, hedge)
            p50, p99 = percentile(t, 50) * 1000, percentile(t, 99) * 1000
            if base_p99 is None:
                base_p99 = p99
            name = "none" if hedge is None else f"after={hedge.after}s"
            print(f"{make:<10} {name:<16} {p50:8.0f} {p99:8.0f} {statistics.mean(t) * 1000:8.0f} "
                  f"{attempts / len(t):16.2f} {p99 / base_p99:10.2f}")
    # The machinery's own cost, wall clock: streams whose tokens come at once (the hedge is
    # armed but never fires: what every hedged stream pays).
    for hedge in (None, Hedge(after=0.5)):
        best = float("inf")
        for _ in range(3):
            async def fast() -> None:
                llm = HeavyTailLLM(SEED, "x", gap=0.0)
                llm.first_token_delay = lambda: 0.0  # type: ignore[method-assign]
                ctx = ChatContext()
                ctx.add_message(role="user", content="hi")
                for _ in range(300):
                    async with open_llm_stream(llm, chat_ctx=ctx, hedge=hedge) as s:  # noqa: B023
                        await s.collect()

            t0 = time.perf_counter()
            trio.run(fast)
            best = min(best, (time.perf_counter() - t0) / 300)
        name = "none" if hedge is None else "after=0.5s"
        print(f"wall clock per 22-chunk stream, hedge {name}: {best * 1e6:.0f} us")


if __name__ == "__main__":
    main()
