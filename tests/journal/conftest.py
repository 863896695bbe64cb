"""Fixtures of the journal tests: a real Redis server for the session, a journal per test."""

from __future__ import annotations

import gc
import pathlib
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from trio_llmstream.journal import RedisJournal, open_redis_journal

from .redis_server import RedisClusterServers, RedisServer, running_redis, running_redis_cluster

HERE = pathlib.Path(__file__).parent

# coredis 6.9 leaves the anyio memory streams of a connection attempt that failed unclosed
# (coredis/connection/_base.py, BaseConnection.run: they are only closed once connected);
# they warn (ResourceWarning) when garbage-collected. Tests that stop or kill Redis make
# connections fail on purpose, so these warnings are expected in the journal tests: they are
# ignored there (and only there, and only these), and every test that used Redis collects
# its garbage when it ends, so that none is left for a later test to trip over.
COREDIS_FAILED_CONNECTIONS = (
    r"ignore:Exception ignored in. <function MemoryObject(Send|Receive)Stream.__del__"
    ":pytest.PytestUnraisableExceptionWarning"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings(COREDIS_FAILED_CONNECTIONS))


@pytest.fixture(autouse=True)
def _collect_coredis_garbage(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if {"redis_server", "redis_cluster", "open_journal", "tmp_path"} & set(
        request.fixturenames
    ):
        # The test's fixture values (a journal, its clients and their pools) would otherwise
        # stay reachable through the test item until the session ends: drop them first.
        request.node.funcargs.clear()  # type: ignore[attr-defined]
        gc.collect()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster on loopback for the session, stopped at its end."""
    with running_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_journal(redis_server: RedisServer) -> AsyncIterator[RedisJournal]:
    async with open_redis_journal(redis_server.url, prefix=unique_prefix()) as journal:
        yield journal
