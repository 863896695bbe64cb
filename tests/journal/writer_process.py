"""A writer process for the journal tests: records an endless slow source into Redis until
it is killed. Usage: python writer_process.py REDIS_URL PREFIX RUN_ID"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import trio

from trio_llmstream import ChatChunk, Choice, ChoiceDelta
from trio_llmstream.journal import RecordOptions, open_redis_journal, record


async def endless() -> AsyncIterator[ChatChunk]:
    n = 0
    while True:
        n += 1
        yield ChatChunk("w", [Choice(ChoiceDelta(content=f"c{n}"))])
        await trio.sleep(0.02)


async def main(url: str, prefix: str, run_id: str) -> None:
    options = RecordOptions(flush_interval=0.0, heartbeat_interval=0.1)
    async with open_redis_journal(url, prefix=prefix) as journal:
        await record(journal, run_id, endless(), options=options)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
