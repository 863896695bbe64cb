"""Fallback, hedging and holding end to end over loopback: two mock servers play two
OpenAI-compatible providers, and OpenAILLM talks real HTTP to both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from trio_llmstream import (
    APIConnectOptions,
    ChatContext,
    FallbackLLM,
    Hedge,
    StreamInterrupted,
    StreamStatus,
    open_llm_stream,
)
from trio_llmstream.providers.openai import OpenAILLM
from trio_llmstream.testing import (
    Delay,
    DropConnection,
    MockLLMServer,
    ResponseOutcome,
    error_response,
    inject_fault,
    open_mock_server,
    text_stream,
)

ANSWER = "The backup answers in full."


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hi")
    return c


@pytest.fixture
async def servers() -> AsyncIterator[tuple[MockLLMServer, MockLLMServer]]:
    async with open_mock_server() as primary, open_mock_server() as backup:
        yield primary, backup


def fallback(primary: MockLLMServer, backup: MockLLMServer) -> FallbackLLM:
    return FallbackLLM([
        OpenAILLM("m", base_url=primary.base_url, api_key="sk-primary", label="primary"),
        OpenAILLM("m", base_url=backup.base_url, api_key="sk-backup", label="backup"),
    ])


@pytest.mark.parametrize("status", [401, 404, 503])
async def test_a_failing_primary_falls_back_to_the_backup(
    status: int, servers: tuple[MockLLMServer, MockLLMServer]
) -> None:
    primary, backup = servers
    primary.enqueue(error_response(status))
    backup.enqueue(text_stream(ANSWER))
    async with fallback(primary, backup) as llm, open_llm_stream(
        llm, chat_ctx=ctx(), conn_options=APIConnectOptions(max_retry=1)
    ) as stream:
        text = (await stream.collect()).text
    assert text == ANSWER
    assert [a.label for a in stream.metrics.attempts] == ["primary", "backup"]
    assert stream.metrics.status is StreamStatus.COMPLETED
    assert len(primary.chat_requests) == len(backup.chat_requests) == 1


async def test_after_output_the_backup_is_never_asked(
    servers: tuple[MockLLMServer, MockLLMServer],
) -> None:
    primary, backup = servers
    primary.enqueue(inject_fault(text_stream("first words then", chunk_size=6), DropConnection(),
                                 after=3))
    backup.enqueue(text_stream(ANSWER))
    async with fallback(primary, backup) as llm, open_llm_stream(
        llm, chat_ctx=ctx(), conn_options=APIConnectOptions(max_retry=3)
    ) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert info.value.partial.text == "first words "
    assert backup.chat_requests == []
    assert stream.metrics.status is StreamStatus.FAILED


async def test_a_hedge_to_the_backup_wins_and_the_primary_is_closed(
    servers: tuple[MockLLMServer, MockLLMServer],
) -> None:
    primary, backup = servers
    primary.enqueue((Delay(5.0), *text_stream("too late")))
    backup.enqueue(text_stream(ANSWER))
    t0 = trio.current_time()
    async with fallback(primary, backup) as llm, open_llm_stream(
        llm, chat_ctx=ctx(), hedge=Hedge(after=0.2)
    ) as stream:
        text = (await stream.collect()).text
    assert text == ANSWER
    assert trio.current_time() - t0 < 3.0
    with trio.fail_after(5):
        assert await primary.chat_requests[0].wait_finished() is ResponseOutcome.DISCONNECTED
    loser, winner = stream.metrics.attempts
    assert (loser.label, loser.committed, loser.error) == ("primary", False, None)
    assert (winner.label, winner.committed) == ("backup", True)


async def test_a_held_stream_discarded_closes_its_connection(
    servers: tuple[MockLLMServer, MockLLMServer],
) -> None:
    primary, _ = servers
    primary.enqueue(text_stream(ANSWER * 4, delay=0.1))  # still sending when discarded
    async with OpenAILLM("m", base_url=primary.base_url, api_key="sk") as llm, open_llm_stream(
        llm, chat_ctx=ctx(), hold=True
    ) as stream:
        with trio.fail_after(5):
            while not primary.chat_requests:
                await trio.sleep(0.01)
        await trio.sleep(0.2)
        await stream.discard()
    with trio.fail_after(5):
        outcome = await primary.chat_requests[0].wait_finished()
    assert outcome is ResponseOutcome.DISCONNECTED
    assert stream.status is StreamStatus.DISCARDED
    assert stream.metrics.ttft is None


async def test_a_held_stream_adopted_delivers_everything(
    servers: tuple[MockLLMServer, MockLLMServer],
) -> None:
    primary, backup = servers
    primary.enqueue(error_response(500))
    backup.enqueue(text_stream(ANSWER))
    async with fallback(primary, backup) as llm, open_llm_stream(
        llm, chat_ctx=ctx(), hold=True
    ) as stream:
        await trio.sleep(0.3)  # the primary failed and the backup answered, invisibly
        assert stream.function_calls == []
        assert stream.status is StreamStatus.RUNNING
        await stream.adopt()
        text = (await stream.collect()).text
    assert text == ANSWER
    assert [a.label for a in stream.metrics.attempts] == ["primary", "backup"]


# -- across protocols ------------------------------------------------------------------------


async def test_fallback_crosses_protocols_before_the_commit_point(
    servers: tuple[MockLLMServer, MockLLMServer],
) -> None:
    # An OpenAI-compatible primary answers 529 (overloaded); the backup speaks
    # Anthropic Messages. The consumer sees the backup's answer once, nothing of the primary.
    from trio_llmstream import AnthropicLLM
    from trio_llmstream.testing import anthropic_text_stream

    primary, backup = servers
    primary.enqueue(error_response(529, "overloaded", type="overloaded_error"))
    backup.enqueue(anthropic_text_stream(ANSWER))
    llm = FallbackLLM([
        OpenAILLM("m", base_url=primary.base_url, api_key="sk-primary", label="primary"),
        AnthropicLLM("claude", base_url=backup.origin, api_key="sk-backup", label="backup"),
    ])
    async with llm, open_llm_stream(llm, chat_ctx=ctx()) as stream:
        text = "".join([chunk.text async for chunk in stream])
    assert text == ANSWER
    assert stream.status is StreamStatus.COMPLETED
    assert [a.label for a in stream.metrics.attempts] == ["primary", "backup"]
    assert [r.path for r in backup.chat_requests] == ["/v1/messages"]


async def test_no_other_protocol_is_asked_after_the_commit_point(
    servers: tuple[MockLLMServer, MockLLMServer],
) -> None:
    from trio_llmstream import GeminiLLM

    primary, backup = servers
    primary.enqueue(inject_fault(text_stream(ANSWER, chunk_size=4), DropConnection(), after=3))
    llm = FallbackLLM([
        OpenAILLM("m", base_url=primary.base_url, api_key="sk-primary", label="primary"),
        GeminiLLM("g", base_url=backup.base_url, api_key="sk-backup", label="backup"),
    ])
    with pytest.raises(StreamInterrupted) as info:
        async with llm, open_llm_stream(llm, chat_ctx=ctx()) as stream:
            async for _ in stream:
                pass
    assert info.value.partial.text
    assert ANSWER.startswith(info.value.partial.text)
    assert backup.chat_requests == []
