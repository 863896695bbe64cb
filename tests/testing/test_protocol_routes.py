"""The mock server plays its queue to every protocol's generation endpoint, and only those."""

from __future__ import annotations

import httpx
import pytest

from trio_llmstream.testing import open_mock_server, text_stream


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/models/gemini-2.5-flash:streamGenerateContent",
    ],
)
async def test_each_generation_endpoint_takes_the_next_script(path: str) -> None:
    async with open_mock_server(text_stream("hi")) as server:
        async with httpx.AsyncClient() as client:
            response = await client.post(server.origin + path, json={"stream": True})
            assert response.status_code == 200
            assert "data: [DONE]" in response.text
            assert server.queued == 0
        assert [r.path for r in server.chat_requests] == [path]


@pytest.mark.parametrize(
    "path", ["/v1/models/gemini:generateContent", "/v1/chat", "/messages", "/v1/responses/x"]
)
async def test_other_paths_are_not_generation_endpoints(path: str) -> None:
    async with open_mock_server(text_stream("hi")) as server:
        async with httpx.AsyncClient() as client:
            response = await client.post(server.origin + path, json={})
        assert response.status_code == 404
        assert server.queued == 1
        assert server.chat_requests == []
