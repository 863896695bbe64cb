"""A tiny loopback upstream for hostile-input tests: any ASGI handler, served by hypercorn.

The scripted mock server plays well-formed responses; these tests need bodies it cannot
produce (gzip bombs, arbitrary content types and encodings, headers echoed back, headers that
never come). ``serve(handler)`` runs ``handler(request, send)`` for every HTTP request on a real
``127.0.0.1`` socket and yields the base URL.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

from trio_llmstream._asgi import hypercorn_config

_LOGGER = logging.getLogger("tests.hostile_server")

Send = Callable[[dict[str, Any]], Awaitable[None]]


@attrs.frozen
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Request, Send], Awaitable[None]]


async def start(send: Send, status: int, headers: list[tuple[str, str]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )


async def body(send: Send, data: bytes, *, more: bool = False) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def respond(
    send: Send, status: int, headers: list[tuple[str, str]], data: bytes
) -> None:
    await start(send, status, headers)
    await body(send, data)


def _app(handler: Handler) -> Callable[..., Awaitable[None]]:
    async def app(scope: Any, receive: Callable[[], Awaitable[Any]], send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        parts: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request = Request(scope["path"], headers, b"".join(parts))
        # The client going away mid-body is what these tests provoke on purpose.
        with contextlib.suppress(OSError):
            await handler(request, send)

    return app


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` on a free loopback port; yield ``http://127.0.0.1:PORT/v1``."""
    from hypercorn.trio import serve as hypercorn_serve

    config = hypercorn_config(
        "127.0.0.1", 0, stop_timeout=1.0, logger=_LOGGER, needed_by="the hostile test server"
    )
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(hypercorn_serve, _app(handler), config, shutdown_trigger=shutdown.wait)
        )
        try:
            yield binds[0] + "/v1"
        finally:
            shutdown.set()
            nursery.cancel_scope.cancel()
