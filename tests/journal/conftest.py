"""Fixtures of the journal tests: a real Redis server for the session, a journal per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from trio_llmstream.journal import RedisJournal, open_redis_journal

from .redis_server import RedisServer, running_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_journal(redis_server: RedisServer) -> AsyncIterator[RedisJournal]:
    async with open_redis_journal(redis_server.url, prefix=unique_prefix()) as journal:
        yield journal
