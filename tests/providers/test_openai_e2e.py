"""End to end: OpenAILLM + open_llm_stream against the real loopback mock server.

Real HTTP on 127.0.0.1 and real time (small limits), every fault kind before and after the
commit point, retries honouring Retry-After, idle stalls, early exits that close the connection
(the server sees the disconnect) and leave the client's pool clean, and a bounded soak.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from trio_llmstream import (
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    ChatContext,
    LLMMetrics,
    OpenAILLM,
    ProviderError,
    RetriesExhaustedError,
    StreamInterrupted,
    StreamProtocolError,
    StreamStatus,
    StreamTruncatedError,
    Timeouts,
    open_llm_stream,
)
from trio_llmstream.testing import (
    Delay,
    KeepAlive,
    MockLLMServer,
    ResponseOutcome,
    StreamStep,
    error_response,
    inject_fault,
    open_mock_server,
    text_stream,
)

TEXT = "The quick brown fox jumps over the lazy dog."
OPTIONS = APIConnectOptions(
    max_retry=2,
    retry_interval=0.01,
    max_retry_interval=0.02,
    timeouts=Timeouts(connect=2.0, first_token=1.0, idle=0.3),
)


def ctx() -> ChatContext:
    c = ChatContext()
    c.add_message(role="user", content="hi")
    return c


@pytest.fixture
async def server() -> AsyncIterator[MockLLMServer]:
    async with open_mock_server() as srv:
        yield srv


@pytest.fixture
async def llm(server: MockLLMServer) -> AsyncIterator[OpenAILLM]:
    async with OpenAILLM("mock", base_url=server.base_url, api_key="sk-e2e") as provider:
        yield provider


def assert_pool_clean(llm: OpenAILLM) -> None:
    pool = llm.http_client._transport._pool  # type: ignore[attr-defined]
    assert all(not c.is_available() or c.is_idle() for c in pool.connections)
    assert not any(
        getattr(c, "_connection", None) is not None and not c.is_idle() and not c.is_closed()
        for c in pool.connections
    )
    assert pool._requests == []


async def test_full_stream(server: MockLLMServer, llm: OpenAILLM) -> None:
    server.enqueue(text_stream(TEXT, chunk_size=3))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        result = await stream.collect()
    assert result.text == TEXT
    assert result.finish_reason == "stop"
    assert stream.status is StreamStatus.COMPLETED
    assert stream.metrics is not None
    assert stream.metrics.completion_tokens == len(range(0, len(TEXT), 3))
    body = server.last_request.json
    assert isinstance(body, dict)
    assert body["stream"] is True
    assert server.last_request.headers["authorization"] == "Bearer sk-e2e"
    assert_pool_clean(llm)


# Each fault before the commit (after the role chunk only) is retried, and the retry's text
# arrives once; after the commit it ends the stream as StreamInterrupted with its cause.
FAULTS: list[tuple[str, type[BaseException], StreamStatus]] = [
    ("drop", APIConnectionError, StreamStatus.FAILED),
    ("stall", APITimeoutError, StreamStatus.FAILED),
    ("error_event", ProviderError, StreamStatus.FAILED),
    ("truncate", StreamTruncatedError, StreamStatus.TRUNCATED),
]


@pytest.mark.parametrize(("fault", "cause", "status"), FAULTS)
async def test_fault_before_commit_is_retried_once(
    server: MockLLMServer, llm: OpenAILLM, fault: str, cause: type, status: StreamStatus
) -> None:
    server.enqueue(inject_fault(text_stream(TEXT), fault, after=1), text_stream(TEXT))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        texts = [c.text async for c in stream]
    assert "".join(texts) == TEXT
    assert stream.status is StreamStatus.COMPLETED
    assert stream.metrics is not None
    assert [type(a.error) for a in stream.metrics.attempts] == [cause, type(None)]
    assert len(server.chat_requests) == 2
    assert_pool_clean(llm)


@pytest.mark.parametrize(("fault", "cause", "status"), FAULTS)
async def test_fault_after_commit_interrupts(
    server: MockLLMServer, llm: OpenAILLM, fault: str, cause: type, status: StreamStatus
) -> None:
    server.enqueue(inject_fault(text_stream(TEXT, chunk_size=4), fault, after=4))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert isinstance(info.value.cause, cause)
    assert info.value.partial.text == TEXT[:12]  # role chunk + 3 content chunks of 4
    assert stream.status is status
    assert len(server.chat_requests) == 1  # never regenerated
    assert_pool_clean(llm)


async def test_malformed_json_is_a_protocol_error(
    server: MockLLMServer, llm: OpenAILLM
) -> None:
    server.enqueue(inject_fault(text_stream(TEXT), "malformed", after=1))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamProtocolError):
            await stream.collect()
    assert len(server.chat_requests) == 1  # not retryable
    server.enqueue(inject_fault(text_stream(TEXT, chunk_size=4), "malformed", after=3))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    assert isinstance(info.value.cause, StreamProtocolError)


async def test_keepalives_are_tolerated_but_do_not_feed_the_first_token_clock(
    server: MockLLMServer, llm: OpenAILLM
) -> None:
    pings: list[StreamStep] = [KeepAlive()] * 3
    server.enqueue((*pings, *text_stream(TEXT)))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        assert (await stream.collect()).text == TEXT
    # A server that only pings until the first-token limit is failed over.
    pinging: list[StreamStep] = []
    for _ in range(40):
        pinging += [KeepAlive(), Delay(0.05)]
    server.enqueue(tuple(pinging), text_stream(TEXT))
    options = APIConnectOptions(
        max_retry=1, retry_interval=0.01, timeouts=Timeouts(first_token=0.5, idle=5)
    )
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=options) as stream:
        assert (await stream.collect()).text == TEXT
    assert stream.metrics is not None
    first = stream.metrics.attempts[0].error
    assert isinstance(first, APITimeoutError)
    assert first.limit == "first_token"


async def test_status_429_with_retry_after_then_success(
    server: MockLLMServer, llm: OpenAILLM
) -> None:
    server.enqueue(error_response(429, "slow down", retry_after=0.3), text_stream(TEXT))
    start = trio.current_time()
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        assert (await stream.collect()).text == TEXT
    assert trio.current_time() - start >= 0.3
    assert stream.metrics is not None
    assert stream.metrics.attempts[0].backoff == pytest.approx(0.3)
    err = stream.metrics.attempts[0].error
    assert isinstance(err, APIStatusError)
    assert err.status_code == 429


async def test_status_400_not_retried(server: MockLLMServer, llm: OpenAILLM) -> None:
    server.enqueue(error_response(400, "bad request", type="invalid_request_error"))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(APIStatusError, match="bad request"):
            await stream.collect()
    assert len(server.chat_requests) == 1


async def test_retries_exhausted_over_http(server: MockLLMServer, llm: OpenAILLM) -> None:
    server.enqueue(*[error_response(503, "down")] * 3)
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(RetriesExhaustedError) as info:
            await stream.collect()
    assert info.value.attempts == 3
    assert all(isinstance(e, APIStatusError) for e in info.value.errors)


async def test_idle_stall_caught_by_idle_timeout(server: MockLLMServer, llm: OpenAILLM) -> None:
    server.enqueue(inject_fault(text_stream(TEXT, chunk_size=4), "stall", after=3))
    start = trio.current_time()
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(StreamInterrupted) as info:
            await stream.collect()
    elapsed = trio.current_time() - start
    assert isinstance(info.value.cause, APITimeoutError)
    assert info.value.cause.limit == "idle"
    assert 0.3 <= elapsed < 2.0
    outcome = await server.last_request.wait_finished()
    assert outcome is ResponseOutcome.DISCONNECTED  # the stalled request was closed
    assert_pool_clean(llm)


async def test_break_mid_stream_closes_the_connection(
    server: MockLLMServer, llm: OpenAILLM
) -> None:
    metrics: list[LLMMetrics] = []
    server.enqueue(text_stream(TEXT * 20, chunk_size=2, delay=0.01))
    async with open_llm_stream(
        llm, chat_ctx=ctx(), conn_options=OPTIONS, on_metrics=metrics.append
    ) as stream:
        async for chunk in stream:
            if chunk.text:
                break
    with trio.fail_after(2):
        outcome = await server.last_request.wait_finished()
    assert outcome is ResponseOutcome.DISCONNECTED
    assert server.open_responses == 0
    assert [m.status for m in metrics] == [StreamStatus.CANCELLED]
    assert metrics[0].cancelled
    assert_pool_clean(llm)


async def test_outside_cancellation_closes_the_connection(
    server: MockLLMServer, llm: OpenAILLM
) -> None:
    server.enqueue(text_stream(TEXT * 20, chunk_size=2, delay=0.01))
    with trio.move_on_after(0.15):
        async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
            async for _ in stream:
                pass
    assert stream.status is StreamStatus.CANCELLED
    with trio.fail_after(2):
        assert await server.last_request.wait_finished() is ResponseOutcome.DISCONNECTED
    assert_pool_clean(llm)


async def test_connection_refused_is_retryable_connection_error() -> None:
    async with open_mock_server() as srv:
        url = srv.base_url
    async with (
        OpenAILLM("m", base_url=url) as llm,
        open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream,
    ):
        with pytest.raises(RetriesExhaustedError) as info:
            await stream.collect()
    assert all(isinstance(e, APIConnectionError) for e in info.value.errors)


async def test_drop_before_headers_via_status_with_headers(
    server: MockLLMServer, llm: OpenAILLM
) -> None:
    server.enqueue(error_response(503, "busy", should_retry=False))
    async with open_llm_stream(llm, chat_ctx=ctx(), conn_options=OPTIONS) as stream:
        with pytest.raises(APIStatusError) as info:
            await stream.collect()
    assert not info.value.retryable
    assert len(server.chat_requests) == 1


# -- soak --------------------------------------------------------------------------------------

SOAK_STREAMS = 200


def soak_script(rng: random.Random) -> tuple[list[tuple[StreamStep, ...]], str]:
    text = f"stream {rng.randrange(10**6)}: " + " ".join(
        rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randrange(3, 12))
    )
    clean = text_stream(text, chunk_size=5, delay=rng.choice([0.0, 0.0, 0.002]))
    responses: list[tuple[StreamStep, ...]] = []
    for _ in range(rng.randrange(0, 3)):
        kind = rng.choice(["drop", "error_event", "truncate", "status", "stall", "none"])
        after = rng.randrange(0, 6)
        if kind == "status":
            responses.append(error_response(rng.choice([429, 500, 503]), "x").steps or ())
        elif kind == "none":
            pass
        else:
            responses.append(inject_fault(clean, kind, after=after))
    responses.append(clean)
    return responses, text


async def test_soak_concurrent_streams_with_random_faults() -> None:
    rng = random.Random(20261121)
    scripts = [soak_script(rng) for _ in range(SOAK_STREAMS)]
    by_prompt = {f"p{i}": s for i, s in enumerate(scripts)}
    cursor: dict[str, int] = {}

    def handler(request):  # type: ignore[no-untyped-def]
        body = request.json
        if not isinstance(body, dict):
            return None
        prompt = body["messages"][-1]["content"]
        responses, _ = by_prompt[prompt]
        n = cursor.get(prompt, 0)
        cursor[prompt] = n + 1
        step_list = responses[min(n, len(responses) - 1)]
        return step_list if step_list else error_response(503, "scripted")

    results: dict[str, tuple[list[str], StreamStatus, BaseException | None]] = {}
    metrics: dict[str, list[LLMMetrics]] = {}
    options = APIConnectOptions(
        max_retry=3, retry_interval=0.01, max_retry_interval=0.05,
        timeouts=Timeouts(connect=5.0, first_token=3.0, idle=1.0),
    )
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=SOAK_STREAMS)
    async with open_mock_server(handler=handler) as srv:
        client = httpx.AsyncClient(limits=limits)
        llm = OpenAILLM("soak", base_url=srv.base_url, http_client=client)

        async def one(prompt: str) -> None:
            c = ChatContext()
            c.add_message(role="user", content=prompt)
            got: list[str] = []
            error: BaseException | None = None
            metrics[prompt] = []
            async with open_llm_stream(
                llm, chat_ctx=c, conn_options=options, on_metrics=metrics[prompt].append
            ) as stream:
                try:
                    async for chunk in stream:
                        if chunk.text:
                            got.append(chunk.text)
                except (StreamInterrupted, RetriesExhaustedError, APIStatusError) as exc:
                    error = exc
            results[prompt] = (got, stream.status, error)

        with trio.fail_after(50):
            async with trio.open_nursery() as nursery:
                for prompt in by_prompt:
                    nursery.start_soon(one, prompt)
            await srv.wait_idle()
        assert srv.open_responses == 0
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert pool._requests == []
        await client.aclose()

    assert len(results) == SOAK_STREAMS
    for prompt, (got, status, error) in results.items():
        _, text = by_prompt[prompt]
        assert len(metrics[prompt]) == 1
        assert metrics[prompt][0].status is status
        joined = "".join(got)
        if status is StreamStatus.COMPLETED:
            assert joined == text  # nothing delivered twice, nothing lost
            assert error is None
        else:
            assert status in (StreamStatus.FAILED, StreamStatus.TRUNCATED)
            assert error is not None
            assert text.startswith(joined)  # a prefix of one attempt: never duplicated


async def test_two_step_tool_loop_over_http(server: MockLLMServer, llm: OpenAILLM) -> None:
    from trio_llmstream import ChatChunk, FunctionTool, StepEnd, ToolOutcome, open_tool_loop
    from trio_llmstream.testing import tool_call_stream

    async def get_weather(city: str) -> str:
        return f"sunny in {city}"

    tool = FunctionTool(
        get_weather, "get_weather", "Weather for a city",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    server.enqueue(
        tool_call_stream(
            [("get_weather", '{"city": "Oslo"}'), ("get_weather", '{"city": "Lima"}')],
            fragments=5,
        ),
        text_stream("Oslo and Lima are sunny."),
    )
    conversation = ctx()
    events: list[object] = []
    async with open_tool_loop(llm, conversation, [tool], conn_options=OPTIONS) as loop:
        async for event in loop:
            events.append(event)
    assert loop.stop_reason == "no_tool_calls"
    outcomes = [e for e in events if isinstance(e, ToolOutcome)]
    assert sorted(o.output for o in outcomes) == ["sunny in Lima", "sunny in Oslo"]
    text = "".join(e.text for e in events if isinstance(e, ChatChunk))
    assert text == "Oslo and Lima are sunny."
    assert sum(isinstance(e, StepEnd) for e in events) == 2
    first, second = server.chat_requests
    assert first.json["tools"][0]["function"]["name"] == "get_weather"  # type: ignore[index]
    messages = second.json["messages"]  # type: ignore[index]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [m["content"] for m in messages[2:]] == ["sunny in Oslo", "sunny in Lima"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'
