"""The ASGI helpers the mock server and the relay share (``trio_llmstream._asgi``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream._asgi import BodyTooLarge, ScopeSet, read_body, watch_disconnect
from trio_llmstream.testing import open_mock_server, text_stream


class Messages:
    """An ASGI ``receive`` playing a list of messages, counting the calls."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        message = self.messages[self.calls]
        self.calls += 1
        return message


def body_messages(parts: list[bytes]) -> list[dict[str, Any]]:
    return [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]


@given(
    parts=st.lists(st.binary(max_size=40), min_size=1, max_size=12),
    limit=st.integers(min_value=0, max_value=300),
)
def test_read_body_is_bounded(parts: list[bytes], limit: int) -> None:
    receive = Messages(body_messages(parts))
    total = sum(map(len, parts))

    async def main() -> None:
        if total <= limit:
            assert await read_body(receive, limit) == b"".join(parts)
            assert receive.calls == len(parts)
        else:
            with pytest.raises(BodyTooLarge) as info:
                await read_body(receive, limit)
            assert info.value.limit == limit
            # It stopped at the message that crossed the limit: never read (held) more.
            sizes = [len(p) for p in parts]
            crossing = next(i for i in range(len(sizes)) if sum(sizes[: i + 1]) > limit)
            assert receive.calls == crossing + 1

    trio.run(main)


async def test_read_body_returns_none_when_the_client_leaves() -> None:
    receive = Messages([*body_messages([b"abc", b"def"])[:1], {"type": "http.disconnect"}])
    assert await read_body(receive, 100) is None


async def test_watch_disconnect_calls_back_once_at_the_disconnect() -> None:
    calls: list[int] = []
    receive = Messages([{"type": "http.request", "body": b"", "more_body": False},
                        {"type": "http.disconnect"}])
    await watch_disconnect(receive, lambda: calls.append(receive.calls))
    assert calls == [2]


async def test_scope_set_waits_for_the_last_task_and_cancels() -> None:
    scopes = ScopeSet()
    with trio.testing.assert_checkpoints():
        await scopes.wait_empty()  # none: at once, but still a checkpoint
    finished: list[str] = []

    async def task(name: str, release: trio.Event) -> None:
        with scopes.open():
            await release.wait()
        finished.append(name)

    release_a, release_b = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task, "a", release_a)
        nursery.start_soon(task, "b", release_b)
        await trio.testing.wait_all_tasks_blocked()
        assert len(scopes) == 2
        waiter_done = trio.Event()

        async def waiter() -> None:
            await scopes.wait_empty()
            waiter_done.set()

        nursery.start_soon(waiter)
        release_a.set()
        await trio.testing.wait_all_tasks_blocked()
        assert finished == ["a"]
        assert not waiter_done.is_set()
        scopes.cancel_all()  # b is cancelled: its scope catches it, the task finishes
        await trio.testing.wait_all_tasks_blocked()
        assert finished == ["a", "b"]
        assert waiter_done.is_set()
        assert len(scopes) == 0
        # cancel_all does not touch tasks that register later.
        with scopes.open() as later:
            assert not later.cancel_called


async def test_a_closed_scope_set_cancels_new_tasks_at_once() -> None:
    scopes = ScopeSet()
    scopes.close()
    assert scopes.closed
    with scopes.open() as scope:
        assert scope.cancel_called
        await trio.sleep_forever()  # returns at once: cancelled
    assert scope.cancelled_caught
    assert len(scopes) == 0


async def test_the_mock_server_refuses_a_body_over_max_body() -> None:
    async with (
        open_mock_server(text_stream("ok"), max_body=1000) as server,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        big = await client.post("/chat/completions", content=b"x" * 5000)
        assert big.status_code == 413
        assert "larger than 1000 bytes" in big.json()["error"]["message"]
        assert server.requests == []  # not recorded: the server did not keep it
        small = await client.post("/chat/completions", json={"stream": True})
        assert small.status_code == 200
        assert len(server.requests) == 1
        await server.wait_idle()
        assert server.open_responses == 0
