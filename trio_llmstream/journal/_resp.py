"""A small RESP2 client on trio sockets: the journal's transport to a single Redis node.

Why not coredis here? coredis sends every command through a writer task, a reader task, a
request queue and a pool lock (through anyio): ~300 µs of CPU per command on a small machine,
against ~50 µs for the round trip itself, which was most of a live follower's lag (issue 16).
Here a command is packed, sent and its reply read by the calling task itself, with nothing in
between. It speaks exactly what ``RedisJournal`` needs (``EVALSHA``/``EVAL``, ``XREAD BLOCK``,
``PING``, ``DEL``, ``AUTH``, ``SELECT``) to one node over plain TCP; clusters, TLS and anything
configured by URL options stay with coredis (see ``_redis.py``).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any

import trio


class _RespError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``, ``-LOADING ...``)."""

    # Error replies that mean "not now" (the server is loading, a replica, failing over,
    # or busy running a script) rather than "never": the recorder and followers retry them.
    # (MOVED / ASK are not: they mean a cluster node was given without cluster=True.)
    TRANSIENT = (b"LOADING", b"READONLY", b"MASTERDOWN", b"TRYAGAIN", b"CLUSTERDOWN", b"BUSY")

    def __init__(self, message: bytes) -> None:
        super().__init__(message.decode("utf-8", "replace"))
        self.code = message.split(b" ", 1)[0]

    @property
    def transient(self) -> bool:
        return self.code in self.TRANSIENT


class _RespConnectionError(ConnectionError):
    """The connection to Redis failed, closed, or broke the protocol."""


class _Incomplete(Exception):
    """The buffer does not hold a whole reply yet."""


def _parse(data: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 value of ``data`` at ``pos``, and the position after it. Bulk and simple
    strings are ``bytes``, nil is ``None``, an error is a :class:`_RespError` value (raised
    by the caller when it is the whole reply). Raises ``_Incomplete`` if ``data`` ends first."""
    end = data.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = data[pos]
    if kind == 36:  # $: bulk string
        n = int(data[pos + 1:end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if stop + 2 > len(data):
            raise _Incomplete
        return data[end + 2:stop], stop + 2
    if kind == 42:  # *: array
        n = int(data[pos + 1:end])
        if n < 0:
            return None, end + 2
        pos = end + 2
        size = len(data)
        items: list[Any] = []
        append = items.append
        for _ in range(n):
            if pos >= size:
                raise _Incomplete
            if data[pos] != 36:
                item, pos = _parse(data, pos)
                append(item)
                continue
            # A bulk string, inline: most of a page's values are (one call fewer each).
            end = data.find(b"\r\n", pos)
            if end < 0:
                raise _Incomplete
            length = int(data[pos + 1:end])
            if length < 0:
                append(None)
                pos = end + 2
                continue
            stop = end + 2 + length
            if stop + 2 > size:
                raise _Incomplete
            append(data[end + 2:stop])
            pos = stop + 2
        return items, pos
    if kind == 58:  # :: integer
        return int(data[pos + 1:end]), end + 2
    if kind == 43:  # +: simple string
        return data[pos + 1:end], end + 2
    if kind == 45:  # -: error
        return _RespError(data[pos + 1:end]), end + 2
    raise _RespConnectionError(f"not a RESP2 reply from Redis (type byte {kind!r})")


def _pack(args: Sequence[bytes | str | int]) -> bytes:
    """A command in RESP2 (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


_RECEIVE_SIZE = 1 << 18  # whatever the socket holds, up to 256 KiB, in one read


class _RespConnection:
    """One connection: a command is sent and its reply read by the calling task itself."""

    __slots__ = ("_buf", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def call(self, payload: bytes) -> Any:
        """Send one command and return its reply (an error reply as a ``_RespError`` value).
        If this raises or is cancelled, the connection's state is unknown: close it."""
        await self.stream.send_all(payload)
        buf = self._buf
        while True:
            if buf:
                # Parse from an immutable copy, so that the values are bytes; a reply that
                # came in several reads is parsed again from its start (reads are large, so
                # that is rare and a few times at most: Redis sends 64 KiB per turn).
                data = bytes(buf)
                try:
                    value, pos = _parse(data, 0)
                except _Incomplete:
                    pass
                except ValueError as exc:
                    raise _RespConnectionError(f"malformed reply from Redis: {exc}") from exc
                else:
                    del buf[:pos]
                    return value
            received = await self.stream.receive_some(_RECEIVE_SIZE)
            if not received:
                raise _RespConnectionError("Redis closed the connection")
            buf += received


class _RespPool:
    """Connections to one Redis node, at most ``max_connections`` of them, each used by one
    command at a time (so a blocked ``XREAD`` holds one, as with coredis). Connecting is
    lazy. A connection whose command failed, timed out or was cancelled is closed, never
    reused (its reply may still be on the way); error *replies* leave it usable.

    Cancellation: a cancelled command closes its connection; the command may or may not have
    run in Redis (so only idempotent writes go through here: the journal's scripts are)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None,
        password: str | None,
        db: int,
        connect_timeout: float,
        max_connections: int,
    ) -> None:
        self.host = host
        self.port = port
        self._hello: list[bytes] = []  # sent once per new connection, before any command
        if password is not None:
            auth: list[bytes | str | int] = ["AUTH", password]
            if username:
                auth.insert(1, username)
            self._hello.append(_pack(auth))
        if db:
            self._hello.append(_pack(["SELECT", db]))
        self._connect_timeout = connect_timeout
        self._limit = trio.Semaphore(max_connections)
        self._idle: list[_RespConnection] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"_RespPool({self.host}:{self.port})"

    async def _connect(self) -> _RespConnection:
        with trio.move_on_after(self._connect_timeout):
            stream = await trio.open_tcp_stream(self.host, self.port)
            try:
                conn = _RespConnection(stream)
                for command in self._hello:
                    reply = await conn.call(command)
                    if isinstance(reply, _RespError):
                        raise reply
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return conn
        raise _RespConnectionError(
            f"could not connect to Redis at {self.host}:{self.port} within "
            f"{self._connect_timeout:g} s"
        )

    async def execute(self, payload: bytes) -> Any:
        """Run one packed command; return its reply, or raise its error reply
        (``_RespError``) or the connection's failure (``OSError``, ``trio.BrokenResourceError``,
        ``_RespConnectionError``)."""
        if self._closed:
            raise _RespConnectionError("the journal's Redis connections are closed")
        try:
            self._limit.acquire_nowait()
        except trio.WouldBlock:
            await self._limit.acquire()
        try:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                reply = await conn.call(payload)
            except BaseException as exc:
                await trio.aclose_forcefully(conn.stream)
                if not isinstance(exc, trio.Cancelled):
                    # The server went away (or hung): the idle connections are most likely
                    # dead too; drop them rather than fail one retry on each.
                    idle, self._idle = self._idle, []
                    for other in idle:
                        await trio.aclose_forcefully(other.stream)
                raise
            if self._closed:
                await trio.aclose_forcefully(conn.stream)
            else:
                self._idle.append(conn)
        finally:
            self._limit.release()
        if isinstance(reply, _RespError):
            raise reply
        return reply

    async def evalsha(self, sha: str, source: str, keys: Sequence[str],
                      args: Sequence[bytes | str | int]) -> Any:
        """Run a Lua script by its SHA1, loading it (``EVAL``) if Redis does not have it
        (a restarted server, ``SCRIPT FLUSH``)."""
        try:
            return await self.execute(_pack(["EVALSHA", sha, len(keys), *keys, *args]))
        except _RespError as exc:
            if exc.code != b"NOSCRIPT":
                raise
        return await self.execute(_pack(["EVAL", source, len(keys), *keys, *args]))

    async def aclose(self) -> None:
        """Close the idle connections; one in use is closed when its command returns."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)


def _resp_pools(url: str, connect_timeout: float, max_connections: int,
                max_blocking_connections: int) -> tuple[_RespPool, _RespPool] | None:
    """Pools for the direct transport, if ``url`` is one it speaks: ``redis://`` with an
    optional user, password and database number, and no query options. Anything else
    (``rediss://``, ``unix://``, options) is coredis's: it gets the URL then."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "redis" or parts.query or parts.fragment:
        return None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        return None
    username = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    if password is None and username is not None:
        return None  # a user without a password: coredis's reading of it
    common: dict[str, Any] = dict(
        username=username, password=password,
        db=int(path or 0), connect_timeout=connect_timeout,
    )
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    return (_RespPool(host, port, max_connections=max_connections, **common),
            _RespPool(host, port, max_connections=max_blocking_connections, **common))
