"""RedisJournal on a real Redis Cluster (3 masters on loopback, from Debian's redis-server).

The journal's contract tests run against the cluster too (``test_contract.py``); here: the key
scheme (every key of a run in one slot, runs spread over the nodes), several clients sharing
runs, and a node going down.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from trio_llmstream import ChatChunk, Choice, ChoiceDelta, StreamStatus
from trio_llmstream.journal import (
    JournalEntry,
    JournalUnavailable,
    RunEnd,
    open_redis_journal,
    record,
)

from .conftest import unique_prefix
from .helpers import Source, check_run, read_all
from .redis_server import RedisClusterServers, running_redis_cluster

DONE = RunEnd(StreamStatus.COMPLETED, "stop")


def chunk(n: int) -> ChatChunk:
    return ChatChunk("r", [Choice(ChoiceDelta(content=f"c{n}"))])


def chunks(n: int) -> list[ChatChunk]:
    return [chunk(i) for i in range(1, n + 1)]


def keys_on(cluster: RedisClusterServers, port: int, prefix: str) -> set[str]:
    out = subprocess.run(
        [cluster.cli, "-p", str(port), "--scan", "--pattern", f"{prefix}:*"],
        capture_output=True, check=True, timeout=10,
    ).stdout.decode()
    return set(out.split())


async def test_every_key_of_a_run_is_in_one_slot_and_runs_spread(
    redis_cluster: RedisClusterServers,
) -> None:
    prefix = unique_prefix()
    run_ids = [f"run-{i}" for i in range(30)] + ["a:b", "x.y~z-1", "UPPER_lower", "9" * 128]
    async with open_redis_journal(redis_cluster.url, cluster=True, prefix=prefix) as journal:
        for run_id in run_ids:
            await record(journal, run_id, Source([chunk(1), DONE]), meta=b"owner")
            slots = {await journal.client.cluster_keyslot(key) for key in journal.keys(run_id)}
            # The hash tag is exactly the run id: its slot, whatever the prefix.
            assert slots == {await journal.client.cluster_keyslot(f"{{{run_id}}}")}
    per_node = [keys_on(redis_cluster, port, prefix) for port in redis_cluster.ports]
    assert sum(len(keys) for keys in per_node) == 2 * len(run_ids)
    assert sum(1 for keys in per_node if keys) >= 2  # spread over the cluster
    for run_id in run_ids:
        entries_key, meta_key = journal.keys(run_id)
        [node] = [keys for keys in per_node if entries_key in keys]
        assert meta_key in node


async def test_a_prefix_with_a_brace_is_refused(redis_cluster: RedisClusterServers) -> None:
    # It would change the hash tag, and so split a run's keys over slots.
    for prefix in ("a{b", "a}b", "{app}"):
        with pytest.raises(ValueError, match="braces"):
            async with open_redis_journal(redis_cluster.url, cluster=True, prefix=prefix):
                pass


async def test_two_cluster_clients_share_runs(redis_cluster: RedisClusterServers) -> None:
    # Two clients stand for two relay processes: written through one, followed through
    # both, the reader moving between them, on runs that live on different nodes.
    prefix = unique_prefix()
    async with (
        open_redis_journal(redis_cluster.url, cluster=True, prefix=prefix) as one,
        open_redis_journal(
            f"redis://127.0.0.1:{redis_cluster.ports[-1]}", cluster=True, prefix=prefix
        ) as two,
    ):
        for run_id in ("a", "b", "c"):
            seen: list[JournalEntry] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(record, one, run_id,
                                    Source([*chunks(30), DONE], delay=0.002))
                position, clients = 0, [two, one]
                while not (seen and seen[-1].is_terminal):
                    follower = clients[0].follow(run_id, after=position)
                    async for entry in follower:
                        seen.append(entry)
                        if entry.seq % 7 == 0:
                            break
                    position = follower.position
                    clients.reverse()
            check_run(seen, chunks(30), StreamStatus.COMPLETED)


async def test_a_node_down_is_journal_unavailable_and_other_nodes_serve(
    tmp_path: Path,
) -> None:
    # A cluster of its own: this test stops one of its masters. Without full coverage
    # required, the other masters go on serving their slots.
    extra = ("--cluster-require-full-coverage", "no")
    with running_redis_cluster(tmp_path, extra_args=extra) as cluster:
        async with open_redis_journal(
            cluster.url, cluster=True, prefix="t", command_timeout=1.0, connect_timeout=0.2
        ) as journal:
            runs = [f"r{i}" for i in range(12)]
            for run_id in runs:
                await journal.create_run(run_id)
            victim = cluster.ports[-1]
            on_victim = keys_on(cluster, victim, "t")
            lost = [r for r in runs if journal.keys(r)[1] in on_victim]
            kept = [r for r in runs if r not in lost]
            assert lost
            assert kept
            process = cluster.processes[cluster.ports.index(victim)]
            process.kill()
            process.wait()
            # Every operation on a run of the dead node is a typed, retryable outage...
            with trio.fail_after(5), pytest.raises(JournalUnavailable) as exc:
                await journal.append(lost[0], [JournalEntry(1, chunk=chunk(1))])
            assert exc.value.retryable
            with trio.fail_after(5), pytest.raises(JournalUnavailable):
                await read_all(journal, lost[0], unavailable_after=0.5)
            with trio.fail_after(5), pytest.raises(JournalUnavailable):
                await journal.heartbeat(lost[-1])
            # ...while the runs of the other nodes carry on.
            for run_id in kept:
                await record(journal, run_id, Source([chunk(1), DONE]), create=False)
                check_run(await read_all(journal, run_id), [chunk(1)], StreamStatus.COMPLETED)
