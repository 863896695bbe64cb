"""One rule for the error of every iterator the library hands out (LLMStream, Turn,
ToolLoop): raised in band, once, after the items before it, as itself (its context not
replaced by an end-of-channel signal), and never after the owning block exited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio

from trio_llmstream import (
    APIStatusError,
    ChatContext,
    SegmentError,
    open_llm_stream,
    open_tool_loop,
    open_turn,
)
from trio_llmstream.testing import Fault, ScriptedAttempt, ScriptedLLM, text_chunks

OPEN = Callable[[], AbstractAsyncContextManager[Any]]


def _ctx() -> ChatContext:
    ctx = ChatContext()
    ctx.add_message(role="user", content="hi")
    return ctx


def _failing_llm() -> ScriptedLLM:
    return ScriptedLLM([ScriptedAttempt(text_chunks("partial text"), fault=Fault.fatal(after=2))])


def _stream() -> AbstractAsyncContextManager[Any]:
    return open_llm_stream(_failing_llm(), chat_ctx=_ctx())


def _tool_loop() -> AbstractAsyncContextManager[Any]:
    def noop() -> str:
        return "ok"

    return open_tool_loop(_failing_llm(), _ctx(), [noop])


async def _items_then_boom() -> AsyncIterator[str]:
    yield "a"
    yield "b"
    raise KeyError("boom")


def _turn() -> AbstractAsyncContextManager[Any]:
    return open_turn([_items_then_boom])


CASES: list[tuple[str, OPEN, type[BaseException]]] = [
    ("LLMStream", _stream, Exception),
    ("ToolLoop", _tool_loop, Exception),
    ("Turn", _turn, SegmentError),
]


@pytest.mark.parametrize(("name", "opener", "kind"), CASES, ids=[c[0] for c in CASES])
async def test_raised_once_after_the_items_as_itself(
    name: str, opener: OPEN, kind: type[BaseException]
) -> None:
    items: list[Any] = []
    async with opener() as it:
        with pytest.raises(kind) as info:
            async for item in it:
                items.append(item)
        assert items, "the items before the error are delivered first"
        assert it.error is info.value
        assert not isinstance(info.value.__context__, trio.EndOfChannel | trio.ClosedResourceError)
        # Once: iterating again just ends.
        assert [item async for item in it] == []
    assert it.error is info.value


@pytest.mark.parametrize(("name", "opener", "kind"), CASES, ids=[c[0] for c in CASES])
async def test_never_raised_after_the_block_exited(
    name: str, opener: OPEN, kind: type[BaseException], autojump_clock: trio.abc.Clock
) -> None:
    async with opener() as it:
        await trio.sleep(1)  # the source fails while nobody iterates
    # The block is over: iteration ends quietly; the error stays readable.
    assert [item async for item in it] == []


async def test_the_stream_error_keeps_its_own_cause() -> None:
    async with _stream() as stream:
        with pytest.raises(Exception) as info:
            await stream.collect()
    assert isinstance(info.value.__cause__, APIStatusError)
