"""The loopback mock server, over real HTTP on 127.0.0.1 with httpx.

These tests use real time (no autojump clock: real sockets do not follow a fake clock) with
small delays, so the file stays fast.

A note on reading: httpx's byte iterators are nested async generators, and closing the outer
one early does not close the inner ones (encode/httpx#3686), which trio then reports as a
ResourceWarning when they are garbage collected. ``close_early`` below closes the response
first and then drains the iterator, so every generator finishes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from trio_llmstream.testing._script import (
    ChunkEvent,
    Delay,
    DoneEvent,
    DropConnection,
    EndStream,
    ErrorEvent,
    KeepAlive,
    MalformedEvent,
    MockResponse,
    RawBytes,
    Stall,
    chat_chunk,
    error_response,
    inject_fault,
    json_response,
    sse_response,
    text_stream,
    tool_call_stream,
)
from trio_llmstream.testing._server import (
    MockLLMServer,
    RecordedRequest,
    ResponseOutcome,
    open_mock_server,
)

REQUEST = {"model": "gpt-mock", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def events(body: bytes) -> list[bytes]:
    return [block for block in body.split(b"\n\n") if block]


def data_json(body: bytes) -> list[Any]:
    out = []
    for block in events(body):
        assert block.startswith(b"data: ")
        payload = block[len(b"data: ") :]
        if payload != b"[DONE]":
            out.append(json.loads(payload))
    return out


async def post(client: httpx.AsyncClient, server: MockLLMServer, **kwargs: Any) -> httpx.Response:
    return await client.post(
        server.chat_completions_url, json=kwargs.pop("json", REQUEST), **kwargs
    )


async def read_body(response: httpx.Response) -> bytes:
    parts = [part async for part in response.aiter_bytes()]
    return b"".join(parts)


async def close_early(response: httpx.Response, iterator: AsyncIterator[bytes]) -> None:
    """Close a streamed response mid-body, then let httpx's generators finish."""
    await response.aclose()
    with pytest.raises(httpx.HTTPError):
        async for _ in iterator:
            pass


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as c:
        yield c


# -- plain responses -------------------------------------------------------------------------


async def test_error_response_status_headers_and_json(client: httpx.AsyncClient) -> None:
    script = error_response(
        429,
        "Rate limit reached",
        code="rate_limit_exceeded",
        retry_after=2,
        retry_after_ms=1500,
        should_retry=True,
    )
    async with open_mock_server(script) as server:
        response = await post(client, server)
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "2"
    assert response.headers["retry-after-ms"] == "1500"
    assert response.headers["x-should-retry"] == "true"
    assert response.json() == {
        "error": {
            "message": "Rate limit reached",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert server.requests[0].status == 429
    assert server.requests[0].outcome is ResponseOutcome.COMPLETED


async def test_json_response_and_header_override(client: httpx.AsyncClient) -> None:
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
    async with open_mock_server(
        json_response(completion, headers={"Content-Type": "application/json; charset=utf-8"}),
        sse_response([DoneEvent()], headers={"x-request-id": "req-7"}),
    ) as server:
        first = await post(client, server)
        second = await post(client, server)
    assert first.json() == completion
    assert first.headers.get_list("content-type") == ["application/json; charset=utf-8"]
    assert second.headers["content-type"].startswith("text/event-stream")
    assert second.headers["x-request-id"] == "req-7"
    assert second.content == b"data: [DONE]\n\n"


async def test_requests_are_recorded_with_json_bodies(client: httpx.AsyncClient) -> None:
    async with open_mock_server([DoneEvent()], [DoneEvent()]) as server:
        await post(client, server, headers={"Authorization": "Bearer sk-test"})
        await client.post(server.chat_completions_url + "?x=1", content=b"not json")
    first, second = server.requests
    assert isinstance(first, RecordedRequest)
    assert (first.index, first.method, first.path) == (0, "POST", "/v1/chat/completions")
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.json == REQUEST
    assert json.loads(first.body) == REQUEST
    assert second.json is None
    assert second.body == b"not json"
    assert second.query == "x=1"
    assert server.chat_requests == [first, second]
    assert server.last_request is second


async def test_empty_queue_answers_a_clear_500(client: httpx.AsyncClient) -> None:
    async with open_mock_server([DoneEvent()]) as server:
        await post(client, server)
        response = await post(client, server)
        assert server.queued == 0
    assert response.status_code == 500
    message = response.json()["error"]["message"]
    assert "no scripted response left" in message
    record = server.requests[1]
    assert record.unscripted
    assert record.error is not None
    assert "no scripted response left" in record.error
    assert record.status == 500


async def test_unknown_path_is_a_404(client: httpx.AsyncClient) -> None:
    async with open_mock_server() as server:
        response = await client.get(server.base_url + "/models")
    assert response.status_code == 404
    assert "no route for GET /v1/models" in response.json()["error"]["message"]
    assert server.requests[0].error == "no route for GET /v1/models"


# -- stream steps ----------------------------------------------------------------------------


async def test_full_text_stream(client: httpx.AsyncClient) -> None:
    script = text_stream("Hello world", chunk_size=4, model="m-1")
    async with open_mock_server(script) as server:
        async with client.stream("POST", server.chat_completions_url, json=REQUEST) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert "content-length" not in response.headers
            body = await read_body(response)
        assert await server.requests[0].wait_finished() is ResponseOutcome.COMPLETED
    assert body == MockResponse(steps=script).body_bytes()
    assert body.endswith(b"data: [DONE]\n\n")
    chunks = data_json(body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m-1" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello world"
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["Hell", "o wo", "rld"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


async def test_tool_call_stream(client: httpx.AsyncClient) -> None:
    calls = [("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')]
    async with open_mock_server(tool_call_stream(calls, fragments=4)) as server:
        body = (await post(client, server)).content
    chunks = data_json(body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    names: dict[int, str] = {}
    ids: dict[int, str] = {}
    args: dict[int, str] = {}
    fragments = 0
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls", []):
                index = call["index"]
                if "id" in call:
                    ids[index] = call["id"]
                    names[index] = call["function"]["name"]
                    assert call["type"] == "function"
                    args[index] = call["function"]["arguments"]
                else:
                    fragments += 1
                    args[index] += call["function"]["arguments"]
    assert names == {0: "get_weather", 1: "get_time"}
    assert ids == {0: "call_mock_0", 1: "call_mock_1"}
    assert args == {0: calls[0][1], 1: calls[1][1]}
    assert fragments == 8
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert body.endswith(b"data: [DONE]\n\n")


async def test_keep_alive_error_events_malformed_and_raw(client: httpx.AsyncClient) -> None:
    steps = [
        KeepAlive(),
        ChunkEvent(chat_chunk({"content": "a"})),
        ErrorEvent("boom", code="overloaded"),
        ErrorEvent("bang", type="server_error", named=True),
        MalformedEvent(),
        RawBytes(b"retry: 10\n\n"),
    ]
    async with open_mock_server(steps) as server:
        body = (await post(client, server)).content
    assert events(body) == [
        b": keep-alive",
        b'data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"gpt-mock","choices":[{"index":0,"delta":{"content":"a"},'
        b'"finish_reason":null}]}',
        b'data: {"error":{"message":"boom","type":"server_error","code":"overloaded"}}',
        b'event: error\ndata: {"error":{"message":"bang","type":"server_error","code":null}}',
        b'data: {"choices": [',
        b"retry: 10",
    ]


async def test_end_without_done(client: httpx.AsyncClient) -> None:
    truncated = inject_fault(text_stream("Hello world"), "truncate", after=2)
    async with open_mock_server(truncated, [ChunkEvent({"n": 1})]) as server:
        first = await post(client, server)
        second = await post(client, server)
        assert await server.requests[0].wait_finished() is ResponseOutcome.COMPLETED
    assert first.status_code == 200
    assert len(events(first.content)) == 2
    assert b"[DONE]" not in first.content
    assert second.content == b'data: {"n":1}\n\n'


async def test_each_step_is_its_own_http_chunk() -> None:
    steps = [RawBytes(b"ab"), KeepAlive("x"), RawBytes(b""), RawBytes(b"cdef"), DoneEvent()]
    async with open_mock_server(steps) as server:
        stream = await trio.open_tcp_stream(server.host, server.port)
        async with stream:
            await stream.send_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\n"
                b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
            )
            raw = b""
            while chunk := await stream.receive_some():
                raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == (b"2\r\nab\r\n5\r\n: x\n\n\r\n4\r\ncdef\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")


async def test_delays_follow_the_script(client: httpx.AsyncClient) -> None:
    steps = [ChunkEvent({"n": 1}), Delay(0.1), ChunkEvent({"n": 2}), DoneEvent()]
    async with open_mock_server(steps) as server:
        arrivals: list[float] = []
        async with client.stream("POST", server.chat_completions_url, json=REQUEST) as response:
            start = trio.current_time()
            async for part in response.aiter_bytes():
                arrivals.append(trio.current_time() - start)
                assert part.startswith(b"data: ")
    assert len(arrivals) == 3
    assert arrivals[1] - arrivals[0] >= 0.08


def test_text_stream_delay_option() -> None:
    steps = text_stream("abcdef", chunk_size=2, delay=0.5)
    delays = [s for s in steps if isinstance(s, Delay)]
    assert delays == [Delay(0.5)] * 3


# -- faults ----------------------------------------------------------------------------------


async def test_dropped_connection_raises_on_the_client(client: httpx.AsyncClient) -> None:
    script = inject_fault(text_stream("Hello world"), "drop", after=2)
    async with open_mock_server(script) as server:
        received = b""
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            async with client.stream("POST", server.chat_completions_url, json=REQUEST) as r:
                async for part in r.aiter_bytes():
                    received += part
        assert await server.requests[0].wait_finished() is ResponseOutcome.DROPPED
        # The client's pool recovers: the next request gets a fresh connection.
        server.enqueue([DoneEvent()])
        assert (await post(client, server)).content == b"data: [DONE]\n\n"
    assert len(events(received)) == 2


async def test_drop_before_any_chunk(client: httpx.AsyncClient) -> None:
    async with open_mock_server([DropConnection()]) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(client, server)
        assert await server.requests[0].wait_finished() is ResponseOutcome.DROPPED


@pytest.mark.parametrize("wait", [Stall(), Delay(30)])
async def test_stall_or_delay_ends_when_the_client_closes(
    client: httpx.AsyncClient, wait: Stall | Delay
) -> None:
    script = inject_fault(text_stream("Hello"), wait, after=1, then=[DoneEvent()])
    async with open_mock_server(script) as server:
        request = client.build_request("POST", server.chat_completions_url, json=REQUEST)
        response = await client.send(request, stream=True)
        iterator = response.aiter_bytes()
        first = await iterator.__anext__()
        assert b'"role":"assistant"' in first
        await trio.sleep(0.1)
        assert server.open_responses == 1
        assert server.requests[0].outcome is ResponseOutcome.PENDING
        await close_early(response, iterator)
        with trio.fail_after(2):
            outcome = await server.requests[0].wait_finished()
        assert outcome is ResponseOutcome.DISCONNECTED
        assert server.requests[0].disconnected
        assert server.open_responses == 0


async def test_early_break_is_seen_as_disconnect(client: httpx.AsyncClient) -> None:
    script = text_stream("x" * 200, chunk_size=1, delay=0.005)
    async with open_mock_server(script) as server:
        async with client.stream("POST", server.chat_completions_url, json=REQUEST) as response:
            iterator = response.aiter_bytes()
            for _ in range(3):
                await iterator.__anext__()
            await close_early(response, iterator)
        with trio.fail_after(2):
            await server.wait_idle()
        assert server.open_responses == 0
        assert server.requests[0].outcome is ResponseOutcome.DISCONNECTED


@pytest.mark.parametrize(
    ("fault", "expected_tail"),
    [
        (
            "error",
            b'data: {"error":{"message":"The server had an error while processing your '
            b'request.","type":"server_error","code":null}}',
        ),
        ("error_event", b"event: error\ndata: {"),
        ("malformed", b'data: {"choices": ['),
    ],
)
async def test_injected_in_band_faults(
    client: httpx.AsyncClient, fault: Any, expected_tail: bytes
) -> None:
    script = inject_fault(text_stream("Hello world"), fault, after=3, then=[DoneEvent()])
    async with open_mock_server(script) as server:
        body = (await post(client, server)).content
    blocks = events(body)
    assert len(blocks) == 5
    assert blocks[3].startswith(expected_tail)
    assert blocks[4] == b"data: [DONE]"


def test_inject_fault_cuts_after_chunks() -> None:
    script = (KeepAlive(), ChunkEvent({"a": 1}), Delay(0.1), ChunkEvent({"b": 2}), DoneEvent())
    assert inject_fault(script, "drop", after=0) == (DropConnection(),)
    assert inject_fault(script, "truncate", after=1) == (KeepAlive(), script[1], EndStream())
    assert inject_fault(script, Stall(), after=2) == (*script[:4], Stall())
    with pytest.raises(ValueError, match="only 2 chunks"):
        inject_fault(script, "drop", after=3)


def test_steps_after_a_terminal_step_are_not_compiled() -> None:
    response = MockResponse(steps=[ChunkEvent({"a": 1}), DropConnection(), ChunkEvent({"b": 2})])
    assert len(response._plan) == 2
    with pytest.raises(TypeError):
        MockResponse(steps=["data: x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not both"):
        MockResponse(steps=[DoneEvent()], json_body={})


# -- handler ---------------------------------------------------------------------------------


async def test_handler_answers_dynamically_and_can_defer_to_the_queue(
    client: httpx.AsyncClient,
) -> None:
    async def handler(request: RecordedRequest) -> Any:
        await trio.sleep(0)
        if request.json and request.json.get("model") == "echo":
            return text_stream(request.json["messages"][-1]["content"], chunk_size=100)
        return None

    async with open_mock_server([ChunkEvent({"queued": True})], handler=handler) as server:
        echo = {"model": "echo", "messages": [{"role": "user", "content": "ping"}]}
        first = data_json((await post(client, server, json=echo)).content)
        second = (await post(client, server)).content
        server.handler = lambda request: error_response(503)
        third = await post(client, server)
    assert first[1]["choices"][0]["delta"]["content"] == "ping"
    assert second == b'data: {"queued":true}\n\n'
    assert third.status_code == 503


async def test_handler_errors_give_500_and_are_reraised(client: httpx.AsyncClient) -> None:
    def handler(request: RecordedRequest) -> Any:
        raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError, match="oops"):
        async with open_mock_server(handler=handler) as server:
            response = await post(client, server)
            assert response.status_code == 500
            assert "ZeroDivisionError: oops" in response.json()["error"]["message"]
            assert isinstance(server.requests[0].exception, ZeroDivisionError)

    async with open_mock_server(handler=handler, raise_handler_errors=False) as server:
        assert (await post(client, server)).status_code == 500


# -- lifecycle -------------------------------------------------------------------------------


async def test_two_servers_get_different_ports(client: httpx.AsyncClient) -> None:
    async with (
        open_mock_server([ChunkEvent({"s": 1})]) as one,
        open_mock_server([ChunkEvent({"s": 2})]) as two,
    ):
        assert one.port != two.port
        assert one.base_url == f"http://127.0.0.1:{one.port}/v1"
        assert (await post(client, one)).content == b'data: {"s":1}\n\n'
        assert (await post(client, two)).content == b'data: {"s":2}\n\n'


async def test_exit_while_client_is_mid_stream_is_prompt(client: httpx.AsyncClient) -> None:
    async with open_mock_server([ChunkEvent({"a": 1}), Stall()]) as server:
        request = client.build_request("POST", server.chat_completions_url, json=REQUEST)
        response = await client.send(request, stream=True)
        iterator = response.aiter_bytes()
        assert await iterator.__anext__() == b'data: {"a":1}\n\n'
        start = trio.current_time()
    assert trio.current_time() - start < 1.0
    assert server.requests[0].outcome is ResponseOutcome.CANCELLED
    assert server.open_responses == 0
    with pytest.raises(httpx.RemoteProtocolError):
        async for _ in iterator:
            pass
    await response.aclose()


async def test_caller_cancellation_still_stops_the_server_cleanly() -> None:
    stream: trio.SocketStream | None = None
    try:
        with trio.move_on_after(0.3) as scope:
            async with open_mock_server([ChunkEvent({"a": 1}), Stall()]) as server:
                stream = await trio.open_tcp_stream(server.host, server.port)
                await stream.send_all(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\n"
                    b"Content-Length: 2\r\n\r\n{}"
                )
                received = b""
                while b'data: {"a":1}' not in received:
                    received += await stream.receive_some()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert stream is not None
        assert server.requests[0].outcome is ResponseOutcome.CANCELLED
        # The server closed the connection mid-body: EOF, without the terminating 0 chunk.
        with trio.fail_after(1):
            while chunk := await stream.receive_some():
                received += chunk
        assert not received.endswith(b"0\r\n\r\n")
    finally:
        if stream is not None:
            await stream.aclose()


async def test_exception_in_block_propagates_unwrapped() -> None:
    with pytest.raises(KeyError, match="mine"):
        async with open_mock_server():
            raise KeyError("mine")


async def test_idle_keep_alive_connections_do_not_delay_exit(client: httpx.AsyncClient) -> None:
    async with open_mock_server(*([[DoneEvent()]] * 5)) as server:
        for _ in range(5):
            await post(client, server)
        start = trio.current_time()
    assert trio.current_time() - start < 1.0


async def test_concurrent_streams(client: httpx.AsyncClient) -> None:
    script = sse_response(text_stream("y" * 50, chunk_size=1))
    expected = script.body_bytes()
    bodies: list[bytes] = []

    async def one(server: MockLLMServer) -> None:
        async with client.stream("POST", server.chat_completions_url, json=REQUEST) as r:
            bodies.append(await read_body(r))

    async with open_mock_server(*([script] * 40)) as server:
        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(one, server)
        await server.wait_idle()
    assert bodies == [expected] * 40
    assert all(r.outcome is ResponseOutcome.COMPLETED for r in server.requests)


def test_delay_rejects_negative() -> None:
    with pytest.raises(ValueError, match="seconds"):
        Delay(-1)


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"POST /v1/chat/co",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}",
    ],
    ids=["nothing", "partial-head", "partial-body"],
)
async def test_exit_with_a_half_sent_request_is_prompt(sent: bytes) -> None:
    async with open_mock_server() as server:
        stream = await trio.open_tcp_stream(server.host, server.port)
        await stream.send_all(sent)
        await trio.sleep(0.05)
        start = trio.current_time()
    try:
        assert trio.current_time() - start < 1.0
        assert server.requests == []
        with trio.fail_after(1):
            while await stream.receive_some():
                pass
    finally:
        await stream.aclose()


async def test_a_tuple_script_is_compiled_once() -> None:
    script = text_stream("abc")
    async with open_mock_server(script, script, list(script)) as server:
        first, second, third = server._queue
    assert first is second
    assert third is not first
    assert third.body_bytes() == first.body_bytes()
