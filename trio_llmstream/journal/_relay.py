"""The SSE relay: an ASGI app that runs LLM streams in the background and serves them as
resumable server-sent events, and :func:`run_relay`, what the ``python -m trio_llmstream
relay`` command runs (its options are parsed in ``trio_llmstream.__main__``).

Routes (under ``path_prefix``, ``/v1`` by default):

- ``POST /v1/runs`` (``Content-Type: application/json``, else 415) with ``{"messages":
  [{"role": "user", "content": "..."}], "temperature": 0.2, "max_tokens": 256, "run_id":
  "optional-id"}`` creates the run in the journal, starts it in the background and answers
  ``201 {"id": ..., "events": "/v1/runs/<id>/events?token=...", "info": "/v1/runs/<id>?token=
  ...", "token": ...}``. 401 without valid credentials (when ``authorize`` is set), 400 for a
  ``run_id`` outside ``[A-Za-z0-9._~-]{1,128}``, 409 if ``run_id`` is taken, 429 (with
  ``Retry-After``) when the caller already has ``max_runs_per_client`` runs in progress here,
  503 (with ``Retry-After``) when the relay is at ``max_runs``, draining, or the journal is
  down.
- ``GET /v1/runs/<id>/events`` streams the run's entries as SSE (see ``_sse``) after the
  position given by the ``Last-Event-ID`` header (or a ``last_event_id`` query parameter, for
  clients that cannot set headers), live until the ``end`` event. 204 when the client already
  has the ``end`` event (this is how an EventSource is told to stop reconnecting); 410 if the
  entries after that position were trimmed.
- ``GET /v1/runs/<id>`` answers the run's state as JSON.
- ``GET /v1/health``: 200 ``{"status": "ok"}``, or 503 ``{"status": "draining"}`` once the
  relay drains (for a load balancer's readiness check).
- ``OPTIONS`` anything: the CORS preflight (see below).

Who may do what. ``authorize`` (an async callable from the request's ASGI scope to a
principal, a string, or None to refuse; :func:`bearer_authorizer` checks ``Authorization:
Bearer`` tokens) guards ``POST``: without it every caller is the principal ``anonymous``
(for a relay on loopback). A run belongs to the principal that created it. Its two GET URLs
carry a per-run read token (``?token=``, 256 random bits): a capability, so that a browser's
EventSource, which cannot set headers, can read the run. A GET is allowed with that token, or
with credentials that ``authorize`` maps to the run's owner; anything else is answered 404,
exactly like a run that does not exist, so that run ids cannot be probed. The relay keeps only
SHA-256 hashes of the token and of the owner (see :class:`RunGrants`: with a Redis journal in
Redis beside the run's keys, so that every relay on that Redis can check them), compares them
in constant time (``hmac.compare_digest``) and never logs a token (the server's access log is
off; a proxy in front must not log query strings, or must redact ``token``).

Browsers. ``POST`` takes only ``application/json``: a cross-site page can send a "simple"
request (``text/plain``, no preflight) but not this one, which a browser preflights.
``allow_origins`` lists the origins (``https://app.example``) whose pages may call the relay:
their requests get ``Access-Control-Allow-Origin`` for that origin (and ``Vary: Origin``) and
their preflights are answered (methods ``GET, POST``, headers ``Authorization, Content-Type,
Last-Event-ID``, cached ``cors_max_age`` seconds). No CORS header is ever sent to another
origin; the default allows none.

Ownership. Runs belong to the app's lifespan: the lifespan task opens the nursery that every
run task runs in, so nothing outlives the app. A run task records an ``open_llm_stream`` into
the journal with :func:`record`; it is not tied to any client connection, so clients come
and go, here or on another process sharing the journal (Redis), and resume by event id.
Each events response watches ``http.disconnect`` (hypercorn does not fail a send to a gone
client) and stops following at once when its client leaves; it sends a comment every
``keepalive`` seconds of silence so that proxies keep the connection open.

Slow clients. Each events response has a buffer of at most ``max_unsent`` bytes between the
journal and the connection; a writer task sends whatever it holds in one piece. When it is
full the response stops reading the journal (nothing piles up in memory); if it stays full for
``slow_client_timeout`` seconds (the client reads too slowly, or not at all), the response
ends once the buffer is sent, at an event boundary, and the client resumes with its
``Last-Event-ID``: nothing is lost, as long as the journal keeps the run's entries (a live run
is never trimmed).

Stopping. :meth:`RelayApp.drain` (what SIGTERM starts in :func:`run_relay`): new runs get 503
with ``Retry-After`` and the health route says ``draining``; followers are served as usual;
running runs go on to their natural end for up to ``drain_timeout`` seconds. Then
:meth:`RelayApp.shutdown`: runs still in progress are cancelled (each records its *cancelled*
ending), event streams get ``stop_grace`` seconds to deliver the endings, then the rest are
cut (their clients reconnect, to another process if there is one, and resume).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import signal
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

import msgspec
import trio

from .. import _asgi
from .._asgi import Receive, Scope, Send
from .._llm import LLM
from .._models import ChatContext, ChatMessage
from .._options import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from .._stream import open_llm_stream
from .._telemetry import relay_span
from ._base import Journal, RunInfo
from ._errors import (
    EntriesExpired,
    JournalError,
    JournalFull,
    JournalUnavailable,
    RunExists,
    RunNotFound,
    StreamAbandoned,
)
from ._memory import MemoryJournal, abandoned_end
from ._record import DEFAULT_RECORD_OPTIONS, RecordOptions, record
from ._sse import format_sse, format_sse_end, parse_resume_id, sse_comment, sse_retry

__all__ = [
    "Authorize",
    "MemoryRunGrants",
    "RedisRunGrants",
    "RelayApp",
    "RunGrants",
    "bearer_authorizer",
    "check_origin",
    "is_loopback",
    "run_relay",
    "serve_relay",
]

logger = logging.getLogger("trio_llmstream.journal.relay")

Authorize = Callable[[Scope], Awaitable[str | None]]
"""Maps a request's ASGI scope to a principal (who is asking), or None to refuse it."""

ANONYMOUS = "anonymous"
"""The principal of every caller when the relay has no ``authorize`` hook."""

RUN_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
"""What a run id is: characters that stay themselves in a URL path segment."""


def check_relay_run_id(run_id: str) -> str:
    """``run_id`` if it fits in a URL path segment as is, else ``ValueError``: 1 to 128 of
    ``A-Z a-z 0-9 . _ ~ -``, and not ``.`` or ``..`` (which URLs resolve away)."""
    if not RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        raise ValueError(
            f"a run id is 1 to 128 of the characters A-Z a-z 0-9 . _ ~ - (and not . or ..): "
            f"{run_id[:140]!r}"
        )
    return run_id


def check_origin(origin: str) -> str:
    """``origin`` if it is a web origin as browsers send it (``scheme://host[:port]``, no
    path, no trailing slash), else ``ValueError``."""
    parsed = urllib.parse.urlsplit(origin)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or \
            origin != f"{parsed.scheme}://{parsed.netloc}":
        raise ValueError(f"an origin is scheme://host[:port], nothing more: {origin!r}")
    return origin


def bearer_authorizer(tokens: Iterable[str]) -> Authorize:
    """An ``authorize`` hook that accepts ``Authorization: Bearer <token>`` for any of
    ``tokens``. The principal is ``bearer:`` and the first 16 hex digits of the token's
    SHA-256: the same token is the same principal on every relay, and the token itself never
    appears in it. Compared in constant time, against every token (no early exit)."""
    digests = [hashlib.sha256(t.encode()).digest() for t in tokens if t]
    if not digests:
        raise ValueError("bearer_authorizer needs at least one non-empty token")

    async def authorize(scope: Scope) -> str | None:
        value = _asgi.header(scope, b"authorization")
        if value is None:
            return None
        scheme, _, token = value.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip()).digest()
        match: bytes | None = None
        for known in digests:
            if hmac.compare_digest(digest, known):
                match = known
        return None if match is None else "bearer:" + match.hex()[:16]

    return authorize


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def _owner_hash(principal: str) -> str:
    return _sha256(b"trio_llmstream-owner\0" + principal.encode())


def _grant_bytes(token: str, owner: str) -> bytes:
    return _grant_encoder.encode(_Grant(_sha256(token), _owner_hash(owner)))


# -- grants: who may read a run ------------------------------------------------------------------


class _Grant(msgspec.Struct, array_like=True):
    token_sha256: str  # hex SHA-256 of the run's read token
    owner_sha256: str  # hex SHA-256 of its creator's principal (see _owner_hash)


_grant_encoder = msgspec.json.Encoder()
_grant_decoder = msgspec.json.Decoder(_Grant)


class RunGrants(Protocol):
    """Where the relay keeps, per run, the hashes of its read token and of its owner.

    It must be shared by every relay that serves the run's events (the journal's reach).
    Methods may raise ``JournalUnavailable`` (retryable) or ``JournalError``.
    """

    async def put(self, run_id: str, grant: bytes) -> None:
        """Store the run's grant (replacing any). Cancellation: may or may not be stored."""

    async def get(self, run_id: str) -> bytes | None:
        """The run's grant, None if unknown. Cancellation: harmless."""

    async def touch(self, run_id: str) -> None:
        """Keep the grant as long as the run's entries from now on. Cancellation: harmless."""


class MemoryRunGrants:
    """Grants in this process (for a ``MemoryJournal``): at most ``max_runs``, the oldest
    forgotten first (the journal has forgotten those runs by then, or soon will)."""

    def __init__(self, max_runs: int = 10_000) -> None:
        self.max_runs = max_runs
        self._grants: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    async def put(self, run_id: str, grant: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._grants[run_id] = grant
        self._grants.move_to_end(run_id)
        while len(self._grants) > self.max_runs:
            self._grants.popitem(last=False)

    async def get(self, run_id: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self._grants.get(run_id)

    async def touch(self, run_id: str) -> None:
        await trio.lowlevel.checkpoint()


class RedisRunGrants:
    """Grants in the journal's Redis, one string key per run beside its entries, in the
    same hash slot (``{prefix}:{<run id>}:a``), expiring with the journal's ``ttl``: every
    relay on that Redis (or Redis Cluster) checks the same grants.

    ``journal`` is a :class:`RedisJournal` (its ``client``, ``prefix``, ``ttl`` and
    ``command_timeout`` are used).
    """

    def __init__(self, journal: Any) -> None:
        self._client = journal.client
        self._prefix: str = journal.prefix
        self._ttl_ms = max(1, int(journal.ttl * 1000))
        self._timeout: float = journal.command_timeout

    def key(self, run_id: str) -> str:
        return f"{self._prefix}:{{{run_id}}}:a"

    async def _call(self, run_id: str, op: Callable[[], Awaitable[Any]]) -> Any:
        from coredis.exceptions import RedisError

        try:
            with trio.fail_after(self._timeout):
                return await op()
        except (RedisError, OSError, trio.TooSlowError) as exc:
            raise JournalUnavailable(
                f"Redis unavailable (grant of run {run_id!r}): {type(exc).__name__}",
                run_id=run_id,
            ) from exc

    async def put(self, run_id: str, grant: bytes) -> None:
        await self._call(run_id, lambda: self._client.set(self.key(run_id), grant,
                                                           px=self._ttl_ms))

    async def get(self, run_id: str) -> bytes | None:
        value = await self._call(run_id, lambda: self._client.get(self.key(run_id)))
        return None if value is None else bytes(value)

    async def touch(self, run_id: str) -> None:
        await self._call(run_id, lambda: self._client.pexpire(self.key(run_id), self._ttl_ms))


def grants_for(journal: Journal) -> RunGrants:
    """The grant store that every relay sharing ``journal`` shares: in Redis for a
    ``RedisJournal``, else in this process."""
    from ._redis import RedisJournal

    if isinstance(journal, RedisJournal):
        return RedisRunGrants(journal)
    if isinstance(journal, MemoryJournal):
        return MemoryRunGrants(max(journal.max_runs, 1_000))
    return MemoryRunGrants()


# -- requests and responses ----------------------------------------------------------------------


class _Message(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_call_id: str | None = None


class _RunRequest(msgspec.Struct, forbid_unknown_fields=True):
    messages: list[_Message]
    temperature: float | None = None
    max_tokens: int | None = None
    run_id: str | None = None


_request_decoder = msgspec.json.Decoder(_RunRequest)
_json = msgspec.json.Encoder()


class _TooSlow(Exception):
    """The client did not read for ``slow_client_timeout`` seconds with the buffer full."""


class _EventStream:
    """One SSE response body: the follower puts events into a buffer of at most
    ``max_unsent`` bytes (plus one event); a writer task (:meth:`write`) sends all of it in one
    piece whenever there is any. So sends are coalesced under load, at most about twice
    ``max_unsent`` bytes are held for the connection (the buffer and the piece being sent),
    and a client that stops reading stops the follower instead of growing memory."""

    __slots__ = ("_buffer", "_changed", "_max", "_send", "_slow", "last_sent", "sending")

    def __init__(self, send: Send, max_unsent: int, slow_timeout: float) -> None:
        self._send = send
        self._max = max_unsent
        self._slow = slow_timeout
        self._buffer = bytearray()
        self._changed = trio.Event()
        self.sending = False
        self.last_sent = trio.current_time()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def put(self, data: bytes) -> None:
        """Queue ``data``; wait while the buffer is full. ``_TooSlow`` if it stayed full for
        ``slow_timeout`` seconds. Cancellation: ``data`` is not queued.

        With room in the buffer it returns without a checkpoint, on purpose: the events a
        follower has at hand (a page of the journal) all go into the buffer before the writer
        runs, and leave in one send. The caller's next journal read is the checkpoint."""
        if len(self._buffer) >= self._max:
            with trio.move_on_after(self._slow):
                while len(self._buffer) >= self._max:
                    await self._changed.wait()
            if len(self._buffer) >= self._max:
                raise _TooSlow
        self._buffer += data
        self._notify()

    @property
    def idle(self) -> bool:
        return not self._buffer and not self.sending

    async def write(self) -> None:
        """The writer task: send what the buffer holds, forever (cancel it when done)."""
        while True:
            while not self._buffer:
                await self._changed.wait()
            data = bytes(self._buffer)
            self._buffer.clear()
            self.sending = True
            self._notify()
            try:
                await self._send({"type": "http.response.body", "body": data,
                                  "more_body": True})
            finally:
                self.sending = False
            self.last_sent = trio.current_time()
            self._notify()

    async def flush(self) -> None:
        """Wait until everything queued was sent. Cancellation: stops waiting."""
        while not self.idle:
            await self._changed.wait()


async def _json_response(
    send: Send, status: int, payload: object, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = _json.encode(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _error(
    send: Send,
    status: int,
    message: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    **extra: Any,
) -> None:
    headers = list(headers)
    if status in (429, 503) and not any(name == b"retry-after" for name, _ in headers):
        headers.append((b"retry-after", b"1"))
    await _json_response(send, status, {"error": {"message": message, **extra}}, headers)


async def _empty(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _query(scope: Scope) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))


_NOT_FOUND = "no such run (or not yours: use the events URL's token, or the creator's " \
    "credentials)"


class RelayApp:
    """The relay as an ASGI application (see the module docstring for its routes and rules).

    ``journal`` stores the runs (a ``MemoryJournal`` for one process; a ``RedisJournal``
    shared by several processes lets any of them serve any run's events); ``llm`` runs them.
    ``authorize`` decides who may start runs (None: anyone who can connect, as
    ``anonymous``; see :func:`bearer_authorizer`); ``grants`` keeps the runs' read-token and
    owner hashes (default: :func:`grants_for` the journal). ``allow_origins`` are the origins
    allowed by CORS. ``max_runs`` bounds runs in progress in this process,
    ``max_runs_per_client`` those of one principal (None: no bound), ``max_body`` a request's
    size. ``abandon_after`` is the followers' silence limit (see ``Journal.follow``), so it
    must comfortably exceed ``record_options.heartbeat_interval``; ``keepalive`` is the
    seconds of silence before an SSE comment; ``retry_ms`` the reconnection delay suggested to
    clients; ``max_unsent`` and ``slow_client_timeout`` bound a slow client (see the module
    docstring).

    Needs an ASGI server that runs the lifespan protocol (hypercorn does): runs are started
    in a nursery owned by the lifespan.
    """

    def __init__(
        self,
        journal: Journal,
        llm: LLM,
        *,
        authorize: Authorize | None = None,
        grants: RunGrants | None = None,
        allow_origins: Sequence[str] = (),
        cors_max_age: int = 600,
        path_prefix: str = "/v1",
        max_runs: int = 64,
        max_runs_per_client: int | None = None,
        max_body: int = 1 << 20,
        abandon_after: float = 10.0,
        keepalive: float = 15.0,
        retry_ms: int = 1000,
        stop_grace: float = 1.0,
        max_unsent: int = 256 * 1024,
        slow_client_timeout: float = 10.0,
        record_options: RecordOptions = DEFAULT_RECORD_OPTIONS,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> None:
        if abandon_after <= record_options.heartbeat_interval:
            raise ValueError("abandon_after must exceed the recorder's heartbeat_interval")
        if max_runs_per_client is not None and max_runs_per_client < 1:
            raise ValueError("max_runs_per_client must be at least 1")
        if max_unsent < 1 or not slow_client_timeout > 0:
            raise ValueError("max_unsent and slow_client_timeout must be positive")
        for origin in allow_origins:
            check_origin(origin)
        self.journal = journal
        self.llm = llm
        self.authorize = authorize
        self.grants = grants if grants is not None else grants_for(journal)
        self.allow_origins = frozenset(allow_origins)
        self.cors_max_age = cors_max_age
        self.path_prefix = path_prefix.rstrip("/")
        self.max_runs = max_runs
        self.max_runs_per_client = max_runs_per_client
        self.max_body = max_body
        self.abandon_after = abandon_after
        self.keepalive = keepalive
        self.retry_ms = retry_ms
        self.stop_grace = stop_grace
        self.max_unsent = max_unsent
        self.slow_client_timeout = slow_client_timeout
        self.record_options = record_options
        self.conn_options = conn_options
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._draining = False
        self._runs = _asgi.ScopeSet()
        self._streams = _asgi.ScopeSet()
        self._per_client: collections.Counter[str] = collections.Counter()
        self.slow_cuts = 0  # responses ended because their client read too slowly

    @property
    def running(self) -> int:
        """Runs in progress in this process."""
        return len(self._runs)

    @property
    def streaming(self) -> int:
        """Event streams open on this process."""
        return len(self._streams)

    @property
    def draining(self) -> bool:
        """Whether :meth:`drain` (or :meth:`shutdown`) was called: new runs are refused."""
        return self._draining or self._stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point. Cancellation (by the server): a lifespan cancels the runs it
        owns, each recording a cancelled ending; an events response just stops."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        # Anything else (websockets) is not served: returning closes it.

    # -- lifespan ------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":  # pragma: no cover - protocol violation
            return
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._stopping = False
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            self._stopping = True
            self._runs.cancel_all()
        self._nursery = None
        await send({"type": "lifespan.shutdown.complete"})

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - a budget, not a limit
        """Start draining: refuse new runs (503 with ``Retry-After``), keep serving
        followers, and wait up to ``timeout`` seconds for the runs in progress to end by
        themselves. True if they all did. Does not cancel anything: call :meth:`shutdown`
        next. Cancellation: stops waiting; the relay stays draining."""
        self._draining = True
        with trio.move_on_after(timeout):
            await self._runs.wait_empty()
        done = not self._runs
        logger.info("drain: %s", "every run ended" if done
                    else f"{len(self._runs)} runs still in progress after {timeout:g} s")
        return done

    async def grant(self, run_id: str, owner: str = ANONYMOUS) -> str:
        """Let the relay serve ``run_id`` (a run recorded into the journal by another
        writer, say) to holders of the read token returned, and to ``owner``'s credentials.
        Replaces any earlier grant of the run. Raises ``JournalUnavailable`` if the grant
        store cannot be reached. Cancellation: the grant may or may not be stored."""
        check_relay_run_id(run_id)
        token = secrets.token_urlsafe(32)
        await self.grants.put(run_id, _grant_bytes(token, owner))
        return token

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop: refuse new runs, cancel running ones (each records a cancelled ending),
        give event streams ``grace`` seconds (default ``stop_grace``) to deliver the endings,
        then cut the rest. Cancellation: stops waiting; the cuts still happen."""
        grace = self.stop_grace if grace is None else grace
        self._stopping = True
        self._runs.cancel_all()
        try:
            with trio.move_on_after(grace):
                await self._runs.wait_empty()
                await self._streams.wait_empty()
        finally:
            self._streams.cancel_all()

    # -- HTTP ----------------------------------------------------------------------------------

    def _cors_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        # Only for an allowed origin; nothing at all otherwise (the browser then refuses).
        origin = _asgi.header(scope, b"origin")
        if origin is None or origin.decode("latin-1") not in self.allow_origins:
            return []
        return [
            (b"access-control-allow-origin", origin),
            (b"vary", b"Origin"),
            (b"access-control-expose-headers", b"Location, Retry-After"),
        ]

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        if method == "OPTIONS":
            await self._preflight(scope, send)
            return
        extra = self._cors_headers(scope)
        if self._stopping:
            # Stopping: no connection is kept alive for another request here.
            extra.append((b"connection", b"close"))
        send = _asgi.with_headers(send, extra)
        runs = f"{self.path_prefix}/runs"
        if path == runs:
            if method != "POST":
                await _error(send, 405, "use POST to start a run", [(b"allow", b"POST")])
                return
            await self._create(scope, receive, send)
            return
        if path == f"{self.path_prefix}/health" and method == "GET":
            if self.draining:
                await _json_response(send, 503, {"status": "draining"},
                                     [(b"retry-after", b"1")])
            else:
                await _json_response(send, 200, {"status": "ok"})
            return
        if path.startswith(runs + "/"):
            rest = path[len(runs) + 1 :]
            run_id, _, tail = rest.partition("/")
            if tail in ("events", "") and method != "GET":
                await _error(send, 405, "use GET", [(b"allow", b"GET")])
                return
            if tail in ("events", ""):
                try:
                    check_relay_run_id(run_id)
                except ValueError:
                    await _error(send, 404, _NOT_FOUND)
                    return
                if not await self._may_read(scope, send, run_id):
                    return
                if tail == "events":
                    with relay_span("relay follow", run_id=run_id, server=True):
                        await self._events(scope, receive, send, run_id)
                else:
                    await self._info(send, run_id)
                return
        await _error(send, 404, f"no route for {method} {path}")

    async def _preflight(self, scope: Scope, send: Send) -> None:
        cors = self._cors_headers(scope)
        requested = _asgi.header(scope, b"access-control-request-method")
        if requested is None:
            # Not a preflight: say what the resource allows.
            await _empty(send, 204, [(b"allow", b"GET, POST, OPTIONS")])
            return
        if not cors:
            # An origin not allowed (or none): no CORS header, so the browser refuses.
            await _error(send, 403, "cross-origin requests from this origin are not allowed")
            return
        await _empty(send, 204, [
            *cors,
            (b"vary", b"Access-Control-Request-Method, Access-Control-Request-Headers"),
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", b"Authorization, Content-Type, Last-Event-ID"),
            (b"access-control-max-age", str(self.cors_max_age).encode()),
        ])

    async def _principal(self, scope: Scope) -> str | None:
        if self.authorize is None:
            return ANONYMOUS
        try:
            principal = await self.authorize(scope)
        except Exception:
            # The hook's failure refuses the request; its message may hold credentials.
            logger.error("authorize hook failed; request refused")
            return None
        return principal or None

    async def _may_read(self, scope: Scope, send: Send, run_id: str) -> bool:
        # The run's read token, or its owner's credentials; else the same 404 as an unknown
        # run (True, or False once an error response was sent).
        try:
            raw = await self.grants.get(run_id)
        except JournalError as exc:
            await _error(send, 503 if exc.retryable else 500, "the journal is unavailable")
            logger.warning("run %s: reading its grant failed: %s", run_id, exc)
            return False
        grant = None
        if raw is not None:
            try:
                grant = _grant_decoder.decode(raw)
            except msgspec.DecodeError:
                logger.error("run %s: malformed grant", run_id)
        if grant is not None:
            tokens = _query(scope).get("token")
            if tokens and hmac.compare_digest(_sha256(tokens[-1]), grant.token_sha256):
                return True
            if self.authorize is not None:
                principal = await self._principal(scope)
                if principal is not None and hmac.compare_digest(
                    _owner_hash(principal), grant.owner_sha256
                ):
                    return True
        await _error(send, 404, _NOT_FOUND)
        return False

    async def _discard_body(self, receive: Receive) -> None:
        # A refused request's body is read (up to max_body) before the answer, so that the
        # connection stays usable: a client that reuses it must not find it closed.
        with contextlib.suppress(_asgi.BodyTooLarge):
            await _asgi.read_body(receive, self.max_body)

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = await self._principal(scope)
        if principal is None:
            await self._discard_body(receive)
            await _error(send, 401, "a valid Authorization: Bearer token is needed",
                         [(b"www-authenticate", b'Bearer realm="trio_llmstream relay"')])
            return
        content_type = _asgi.header(scope, b"content-type") or b""
        if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
            await self._discard_body(receive)
            await _error(send, 415, "the request body must be application/json",
                         [(b"accept-post", b"application/json")])
            return
        try:
            body = await _asgi.read_body(receive, self.max_body)
        except _asgi.BodyTooLarge:
            body = None
        if body is None:
            await _error(send, 413, f"the request body must be JSON of at most {self.max_body} "
                         "bytes")
            return
        try:
            request = _request_decoder.decode(body)
            ctx = ChatContext.from_messages(
                ChatMessage(role=m.role, content=m.content, name=m.name,
                            tool_call_id=m.tool_call_id)
                for m in request.messages
            )
            if not ctx.messages:
                raise ValueError("messages is empty")
            run_id = check_relay_run_id(
                secrets.token_urlsafe(16) if request.run_id is None else request.run_id)
        except (msgspec.DecodeError, ValueError) as exc:
            await _error(send, 400, f"invalid run request: {exc}")
            return
        nursery = self._nursery
        if nursery is None or self.draining:
            await _error(send, 503, "the relay is not running (lifespan not started, or "
                         "draining): try again, or another relay")
            return
        if len(self._runs) >= self.max_runs:
            await _error(send, 503, f"too many runs in progress (max_runs={self.max_runs})")
            return
        limit = self.max_runs_per_client
        if limit is not None and self._per_client[principal] >= limit:
            await _error(send, 429, f"you have {limit} runs in progress here "
                         f"(max_runs_per_client={limit}); wait for one to end",
                         [(b"retry-after", b"5")])
            return
        token = secrets.token_urlsafe(32)  # 256 bits
        grant = _grant_bytes(token, principal)
        # Only the trace context goes to the run's task (never the credentials).
        headers = [(name, value) for name, value in scope.get("headers", ())
                   if name.lower() in (b"traceparent", b"tracestate")]
        # The slot is taken now (not when the run starts) so that concurrent requests of one
        # principal cannot all pass the check; the run task gives it back when it ends.
        self._per_client[principal] += 1
        slot = _Slot(self._per_client, principal)
        try:
            await nursery.start(self._run, run_id, ctx, request, grant, headers, slot)
        except RunExists:
            await _error(send, 409, f"run {run_id!r} already exists")
            return
        except (JournalUnavailable, JournalFull) as exc:
            await _error(send, 503, f"the journal cannot take the run: {exc}")
            return
        except JournalError as exc:
            await _error(send, 500, f"the journal failed: {exc}")
            return
        except RuntimeError:
            # The run task was cancelled before it started: the relay is stopping.
            await _error(send, 503, "the relay is stopping")
            return
        finally:
            if not slot.taken:
                slot.release()
        base = f"{self.path_prefix}/runs/{run_id}"
        query = urllib.parse.urlencode({"token": token})
        await _json_response(
            send,
            201,
            {"id": run_id, "events": f"{base}/events?{query}", "info": f"{base}?{query}",
             "token": token},
            [(b"location", base.encode())],
        )

    async def _run(
        self,
        run_id: str,
        ctx: ChatContext,
        request: _RunRequest,
        grant: bytes,
        headers: list[tuple[bytes, bytes]],
        slot: _Slot,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # One run, in the lifespan's nursery. It never raises into that nursery: a failure
        # to record is logged, and the run's followers end by abandonment.
        slot.taken = True
        started = False
        try:
            with self._runs.open(), relay_span("relay run", run_id=run_id, headers=headers):
                try:
                    await self.journal.create_run(run_id)
                    try:
                        await self.grants.put(run_id, grant)
                    except BaseException:
                        with trio.CancelScope(shield=True) as scope:
                            scope.deadline = trio.current_time() + 1.0
                            with contextlib.suppress(JournalError):
                                await self.journal.delete_run(run_id)
                        raise
                    task_status.started()
                    started = True
                    extra = ({} if request.max_tokens is None
                             else {"max_tokens": request.max_tokens})
                    async with open_llm_stream(
                        self.llm,
                        chat_ctx=ctx,
                        conn_options=self.conn_options,
                        temperature=request.temperature,
                        extra=extra,
                    ) as stream:
                        result = await record(
                            self.journal, run_id, stream, create=False,
                            options=self.record_options,
                        )
                    logger.info("run %s: %s after %d chunks", run_id, result.status.value,
                                result.chunks)
                except Exception:
                    if not started:
                        raise  # to the POST handler, through nursery.start
                    logger.exception("run %s: failed", run_id)
                # The grant lives as long as the run's entries (their TTL restarts at the
                # last write).
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + 2.0
                    try:
                        await self.grants.touch(run_id)
                    except JournalError as exc:
                        logger.warning("run %s: refreshing its grant failed: %s", run_id, exc)
        finally:
            slot.release()

    async def _run_info(self, send: Send, run_id: str) -> RunInfo | None:
        # The run's state, or None once an error response (404, 503, 500) was sent.
        try:
            return await self.journal.info(run_id)
        except RunNotFound:
            await _error(send, 404, _NOT_FOUND)
        except JournalError as exc:
            await _error(send, 503 if exc.retryable else 500, str(exc))
        return None

    async def _info(self, send: Send, run_id: str) -> None:
        info = await self._run_info(send, run_id)
        if info is None:
            return
        await _json_response(
            send,
            200,
            {
                "id": run_id,
                "last_seq": info.last_seq,
                "end_seq": info.end_seq,
                "first_seq": info.first_seq,
                "idle": info.idle,
            },
        )

    async def _events(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> None:
        raw: bytes | str | None = _asgi.header(scope, b"last-event-id")
        if raw is None:
            query = _query(scope)
            values = query.get("last_event_id") or query.get("after")
            raw = values[-1] if values else None
        try:
            after, has_ending = parse_resume_id(raw)
        except ValueError as exc:
            await _error(send, 400, str(exc))
            return
        if self._stopping:
            # Too late to follow here: an empty stream, which an EventSource follows with a
            # reconnection (on a new connection: to another relay behind the same address).
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache")]})
            await send({"type": "http.response.body", "body": sse_retry(self.retry_ms),
                        "more_body": False})
            return
        if has_ending:
            # The client has the ending this relay made up (see _follow): stop it.
            await _empty(send, 204, [])
            return
        info = await self._run_info(send, run_id)
        if info is None:
            return
        if info.end_seq is not None and after >= info.end_seq:
            # The client has the end event: 204 tells an EventSource to stop reconnecting.
            await _empty(send, 204, [])
            return
        if after < info.last_seq and info.first_seq > after + 1:
            await _error(send, 410, str(EntriesExpired(run_id, after, info.first_seq)),
                         first_seq=info.first_seq)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        stream = _EventStream(send, self.max_unsent, self.slow_client_timeout)
        with self._streams.open():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_asgi.watch_disconnect, receive, nursery.cancel_scope.cancel)
                nursery.start_soon(stream.write)
                nursery.start_soon(self._keepalive, stream)
                await stream.put(sse_retry(self.retry_ms))
                try:
                    await self._follow(stream, run_id, after)
                except _TooSlow:
                    # Ended at an event boundary: the client resumes by Last-Event-ID.
                    self.slow_cuts += 1
                    logger.info("run %s: a follower read too slowly; its response ends "
                                "(it resumes by Last-Event-ID)", run_id)
                await stream.flush()
                nursery.cancel_scope.cancel()
        # Shielded: hypercorn updates the connection's state inside this send.
        with trio.CancelScope(shield=True) as final:
            final.deadline = trio.current_time() + 1.0
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(self, stream: _EventStream, run_id: str, after: int) -> None:
        follower = self.journal.follow(run_id, after=after, abandon_after=self.abandon_after)
        try:
            async for entry in follower:
                await stream.put(format_sse(entry))
        except StreamAbandoned as exc:
            if exc.entry is not None:
                await stream.put(format_sse(exc.entry))
            else:
                # The seal could not be written: an ending with an id the relay recognises
                # (a reconnection with it gets 204) and a day's retry, so that a browser
                # neither misses the end nor reconnects in a loop.
                await stream.put(format_sse_end(abandoned_end(run_id, self.abandon_after),
                                                exc.last_seq))
        except JournalError as exc:
            # The response ends without an end event: the client reconnects with its
            # Last-Event-ID, and gets the entries, a 404, a 410 or a 503 then.
            logger.warning("run %s: following failed: %s", run_id, exc)
            await stream.put(sse_comment(f"error: {type(exc).__name__}"))

    async def _keepalive(self, stream: _EventStream) -> None:
        while True:
            await trio.sleep_until(stream.last_sent + self.keepalive)
            if trio.current_time() >= stream.last_sent + self.keepalive:
                # Only into an idle connection: a busy one needs no comment (and one whose
                # client does not read must not get more to hold).
                idle = stream.idle
                stream.last_sent = trio.current_time()
                if idle:
                    await stream.put(sse_comment("keep-alive"))


class _Slot:
    # One principal's run slot (max_runs_per_client), given back exactly once.
    __slots__ = ("_counter", "_principal", "released", "taken")

    def __init__(self, counter: collections.Counter[str], principal: str) -> None:
        self._counter = counter
        self._principal = principal
        self.taken = False
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._counter[self._principal] -= 1
            if self._counter[self._principal] <= 0:
                del self._counter[self._principal]


# -- serving -------------------------------------------------------------------------------------


async def serve_relay(
    app: RelayApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    stop_timeout: float = 5.0,
    backlog: int = 4096,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with hypercorn (trio worker) on ``host``:``port`` until cancelled
    (``backlog``: the listen queue's length; the system may cap it, see ``somaxconn``).

    ``task_status.started`` gets the base URL (``http://127.0.0.1:PORT``; port 0 picks a free
    one). Cancellation: shuts down (``app.shutdown()``: runs still in progress are cancelled;
    call ``app.drain()`` first to let them end), then hypercorn's own, shielded and bounded by
    ``stop_timeout`` seconds more, then propagates.
    """
    config = _asgi.hypercorn_config(
        host, port, stop_timeout=stop_timeout, logger=logger, needed_by="the relay"
    )
    # Followers come in crowds (a thousand reconnecting at once after a deploy): a listen
    # queue of hypercorn's default 100 would reset connections.
    config.backlog = backlog
    config.keep_alive_max_requests = 1_000_000
    from hypercorn.trio import serve

    shutdown = trio.Event()
    server_scope = trio.CancelScope(shield=True)

    async def run_server(*, task_status: trio.TaskStatus[list[str]]) -> None:
        with server_scope:
            await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run_server)
        task_status.started(binds[0])
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + stop_timeout
                await app.shutdown()
            server_scope.deadline = trio.current_time() + stop_timeout
            shutdown.set()


async def run_relay(
    llm: LLM,
    *,
    redis_url: str | None = None,
    redis_cluster: bool = False,
    host: str = "127.0.0.1",
    port: int = 8080,
    max_entries: int | None = None,
    drain_timeout: float = 30.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    **app_options: Any,
) -> None:
    """Run the relay (what the ``relay`` command runs) on ``host``:``port``: runs go to
    ``llm`` (the caller's, opened and closed by the caller), the journal is Redis at
    ``redis_url`` (a Redis Cluster with ``redis_cluster``) or in memory, each run bounded to
    ``max_entries`` entries if given. ``app_options`` go to :class:`RelayApp`
    (``authorize``, ``allow_origins``, ``max_runs_per_client``, ...). Prints one line once
    listening; ``task_status`` gets the base URL then.

    The first SIGTERM or SIGINT drains (see :meth:`RelayApp.drain`) for up to
    ``drain_timeout`` seconds, then stops (runs still in progress are cancelled, their
    followers get the cancelled ending) and returns; a second signal stops at once.
    Cancellation: stops without draining, then propagates.
    """
    bound: dict[str, int] = {} if max_entries is None else {"max_entries": max_entries}
    if redis_url is None:
        await _serve_until_signal(MemoryJournal(**bound), llm, "memory", host, port,
                                  drain_timeout, task_status, app_options)
        return
    from ._redis import open_redis_journal

    options: dict[str, Any] = dict(bound)
    if redis_cluster:
        options["cluster"] = True
    label = f"redis{' cluster' if redis_cluster else ''} {_redact(redis_url)}"
    async with open_redis_journal(redis_url, **options) as journal:
        await journal.ping()  # fail fast on a wrong URL
        await _serve_until_signal(journal, llm, label, host, port, drain_timeout,
                                  task_status, app_options)


def _redact(url: str) -> str:
    # A Redis URL may hold a password: never print it.
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def _serve_until_signal(
    journal: Journal,
    llm: LLM,
    label: str,
    host: str,
    port: int,
    drain_timeout: float,
    task_status: trio.TaskStatus[str],
    app_options: dict[str, Any],
) -> None:
    app = RelayApp(journal, llm, **app_options)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(lambda task_status: serve_relay(
                app, host=host, port=port, task_status=task_status))
            auth = "bearer tokens" if app.authorize is not None else "none (loopback)"
            print(f"relay listening on {url} (journal: {label}; auth: {auth}); "
                  f"POST {url}{app.path_prefix}/runs", flush=True)
            task_status.started(url)
            async for signum in signals:
                name = signal.Signals(signum).name
                print(f"relay: {name}, draining (up to {drain_timeout:g} s; again to stop "
                      "now)", flush=True)
                break
            with trio.CancelScope() as drain_scope:

                async def second_signal() -> None:
                    async for signum in signals:
                        print(f"relay: {signal.Signals(signum).name} again, stopping now",
                              flush=True)
                        drain_scope.cancel()
                        return

                nursery.start_soon(second_signal)
                await app.drain(drain_timeout)
            print(f"relay: stopping ({app.running} runs cancelled)", flush=True)
            nursery.cancel_scope.cancel()
