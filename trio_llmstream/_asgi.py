"""What the package's two ASGI applications share: the loopback mock server
(``trio_llmstream.testing``) and the SSE relay (``trio_llmstream.journal``).

- :func:`hypercorn_config`: the server settings both run with;
- :func:`read_body`: a request body, read in full up to a bound;
- :func:`watch_disconnect`: the task that notices a client leaving mid-response;
- :class:`ScopeSet`: the cancel scopes of running tasks of one kind (responses, runs), to
  cancel them all and to wait until none is left;
- :func:`header` and :func:`with_headers`: read a request header, add response headers.

hypercorn itself is imported only inside :func:`hypercorn_config`, so this module imports
without the ``server`` extra.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import trio

if TYPE_CHECKING:
    from hypercorn.config import Config

__all__ = [
    "BodyTooLarge",
    "Message",
    "Receive",
    "Scope",
    "ScopeSet",
    "Send",
    "header",
    "hypercorn_config",
    "read_body",
    "watch_disconnect",
    "with_headers",
]

Scope: TypeAlias = dict[str, Any]
Message: TypeAlias = dict[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]


def hypercorn_config(
    host: str, port: int, *, stop_timeout: float, logger: logging.Logger, needed_by: str
) -> Config:
    """The hypercorn settings our loopback servers share (the mock server, the relay).

    Quiet (no access log, errors to ``logger``, no server header), bounded shutdown, and a
    keep-alive timeout longer than clients' own pool expiry (httpx: 5 s), so that a client
    never reuses a pooled connection at the moment the server closes it (a spurious "Server
    disconnected"); idle connections are still closed at once when the server stops.

    Raises :class:`ImportError` naming the ``server`` extra (and ``needed_by``, the feature
    that wanted it) if hypercorn is not installed.
    """
    try:
        from hypercorn.config import Config
    except ImportError as exc:
        raise ImportError(
            f"{needed_by} needs hypercorn: pip install 'trio_llmstream[server]'"
        ) from exc
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = stop_timeout
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = logger
    config.keep_alive_timeout = 75
    return config


def header(scope: Scope, name: bytes) -> bytes | None:
    """The value of the request header ``name`` (lower-case bytes), the last one if repeated;
    None without it."""
    found: bytes | None = None
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            found = value
    return found


def with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """``send``, adding ``headers`` to the response's start message (for headers every
    response of a request gets, such as CORS). ``send`` itself when there are none."""
    if not headers:
        return send

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return send_with_headers


class BodyTooLarge(Exception):
    """A request body exceeded the limit given to :func:`read_body`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client left before sending all of it.

    Raises :class:`BodyTooLarge` as soon as more than ``limit`` bytes arrived, so a client
    cannot make the server hold more than ``limit`` bytes (plus one ASGI message) of it.
    Cancellation: safe at any point; the body read so far is dropped.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        part: bytes = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise BodyTooLarge(limit)
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


async def watch_disconnect(receive: Receive, on_disconnect: Callable[[], object]) -> None:
    """Call ``on_disconnect()`` once the client disconnects, then return.

    Run it as a task beside a response, after the request body was read: the only message
    left to receive then is ``http.disconnect``. hypercorn does not fail a send to a client
    that has gone, so this is the one reliable way to learn of it. Cancellation: just stops
    watching.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


class ScopeSet:
    """The cancel scopes of running tasks of one kind, to cancel them all and to wait until
    none is left.

    A task registers for its lifetime with ``with scopes.open() as scope: ...``. After
    :meth:`close`, a task that registers is cancelled at once (a server that is stopping
    starts no new work).
    """

    def __init__(self) -> None:
        self._scopes: set[trio.CancelScope] = set()
        self._empty = trio.Event()
        self._empty.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._scopes)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @contextmanager
    def open(self) -> Iterator[trio.CancelScope]:
        """A cancel scope registered here until the block ends (cancelled already if the set
        is closed)."""
        with trio.CancelScope() as scope:
            self.add(scope)
            try:
                yield scope
            finally:
                self.discard(scope)

    def add(self, scope: trio.CancelScope) -> None:
        """Register ``scope`` (cancelled at once if the set is closed)."""
        if not self._scopes:
            self._empty = trio.Event()
        self._scopes.add(scope)
        if self._closed:
            scope.cancel()

    def discard(self, scope: trio.CancelScope) -> None:
        """Forget ``scope``; wakes :meth:`wait_empty` when it was the last one."""
        self._scopes.discard(scope)
        if not self._scopes:
            self._empty.set()

    def cancel_all(self) -> None:
        """Cancel every registered scope (tasks registering later are not affected)."""
        for scope in list(self._scopes):
            scope.cancel()

    def close(self) -> None:
        """Cancel every registered scope, and every scope registered from now on."""
        self._closed = True
        self.cancel_all()

    async def wait_empty(self) -> None:
        """Wait until no scope is registered (returns at once if none is). Cancellation: safe;
        it only stops the waiting."""
        while self._scopes:
            await self._empty.wait()
        await trio.lowlevel.checkpoint()
