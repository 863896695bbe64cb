"""The SSE relay: an ASGI app that runs LLM streams in the background and serves them as
resumable server-sent events, and :func:`run_relay`, what the ``python -m trio_llmstream
relay`` command runs (its options are parsed in ``trio_llmstream.__main__``).

Routes (under ``path_prefix``, ``/v1`` by default):

- ``POST /v1/runs`` with ``{"messages": [{"role": "user", "content": "..."}], "temperature":
  0.2, "max_tokens": 256, "run_id": "optional-id"}`` creates the run in the journal, starts it
  in the background and answers ``201 {"id": ..., "events": "/v1/runs/<id>/events"}`` (409
  if ``run_id`` is taken, 503 when the relay is at ``max_runs`` or the journal is down).
- ``GET /v1/runs/<id>/events`` streams the run's entries as SSE (see ``_sse``) after the
  position given by the ``Last-Event-ID`` header (or a ``last_event_id`` query parameter, for
  clients that cannot set headers), live until the ``end`` event. 404 for an unknown run; 204
  when the client already has the ``end`` event (this is how an EventSource is told to stop
  reconnecting); 410 if the entries after that position were trimmed.
- ``GET /v1/runs/<id>`` answers the run's state as JSON.

Ownership. Runs belong to the app's lifespan: the lifespan task opens the nursery that every
run task runs in, so nothing outlives the app. A run task records an ``open_llm_stream`` into
the journal with :func:`record`; it is not tied to any client connection, so clients come
and go, here or on another process sharing the journal (Redis), and resume by event id.
Each events response watches ``http.disconnect`` (hypercorn does not fail a send to a gone
client) and stops following at once when its client leaves; it sends a comment every
``keepalive`` seconds of silence so that proxies keep the connection open.

Stopping (:meth:`RelayApp.shutdown`, called by :func:`serve_relay` before the server stops):
new runs are refused, running runs are cancelled (each writes its *cancelled* terminal
entry), event streams get a moment to deliver those endings, then the rest are cut (their
clients reconnect, to another process if there is one, and resume).
"""

from __future__ import annotations

import logging
import secrets
import signal
import urllib.parse
from collections.abc import Iterable
from typing import Any, Literal

import msgspec
import trio

from .. import _asgi
from .._asgi import Receive, Scope, Send
from .._llm import LLM
from .._models import ChatContext, ChatMessage
from .._options import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from .._stream import open_llm_stream
from ._base import Journal, RunInfo, check_run_id
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
from ._sse import format_sse, format_sse_end, parse_event_id, sse_comment, sse_retry

__all__ = ["RelayApp", "run_relay", "serve_relay"]

logger = logging.getLogger("trio_llmstream.journal.relay")


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


class _EventStream:
    # One SSE response body: serialized sends (entries and keep-alives come from two tasks).
    __slots__ = ("_lock", "_send", "last_sent")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = trio.Lock()
        self.last_sent = trio.current_time()

    async def send(self, data: bytes) -> None:
        async with self._lock:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
            self.last_sent = trio.current_time()


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


async def _error(send: Send, status: int, message: str, **extra: Any) -> None:
    headers = [(b"retry-after", b"1")] if status == 503 else []
    await _json_response(send, status, {"error": {"message": message, **extra}}, headers)


class RelayApp:
    """The relay as an ASGI application (see the module docstring for its routes).

    ``journal`` stores the runs (a ``MemoryJournal`` for one process; a ``RedisJournal``
    shared by several processes lets any of them serve any run's events); ``llm`` runs them.
    ``max_runs`` bounds runs in progress in this process, ``max_body`` a request's size.
    ``abandon_after`` is the followers' silence limit (see ``Journal.follow``), so it must
    comfortably exceed ``record_options.heartbeat_interval``; ``keepalive`` is the seconds of
    silence before an SSE comment; ``retry_ms`` the reconnection delay suggested to clients.

    Needs an ASGI server that runs the lifespan protocol (hypercorn does): runs are started
    in a nursery owned by the lifespan.
    """

    def __init__(
        self,
        journal: Journal,
        llm: LLM,
        *,
        path_prefix: str = "/v1",
        max_runs: int = 64,
        max_body: int = 1 << 20,
        abandon_after: float = 10.0,
        keepalive: float = 15.0,
        retry_ms: int = 1000,
        stop_grace: float = 1.0,
        record_options: RecordOptions = DEFAULT_RECORD_OPTIONS,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> None:
        if abandon_after <= record_options.heartbeat_interval:
            raise ValueError("abandon_after must exceed the recorder's heartbeat_interval")
        self.journal = journal
        self.llm = llm
        self.path_prefix = path_prefix.rstrip("/")
        self.max_runs = max_runs
        self.max_body = max_body
        self.abandon_after = abandon_after
        self.keepalive = keepalive
        self.retry_ms = retry_ms
        self.stop_grace = stop_grace
        self.record_options = record_options
        self.conn_options = conn_options
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._runs = _asgi.ScopeSet()
        self._streams = _asgi.ScopeSet()

    @property
    def running(self) -> int:
        """Runs in progress in this process."""
        return len(self._runs)

    @property
    def streaming(self) -> int:
        """Event streams open on this process."""
        return len(self._streams)

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

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop gracefully: refuse new runs, cancel running ones (each records a cancelled
        ending), give event streams ``grace`` seconds (default ``stop_grace``) to deliver the
        endings, then cut the rest. Cancellation: stops waiting; the cuts still happen."""
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

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        runs = f"{self.path_prefix}/runs"
        if path == runs:
            if method != "POST":
                await _error(send, 405, "use POST to start a run")
                return
            await self._create(receive, send)
            return
        if path.startswith(runs + "/"):
            rest = path[len(runs) + 1 :]
            run_id, _, tail = rest.partition("/")
            try:
                check_run_id(run_id)
            except ValueError:
                await _error(send, 404, "no such run")
                return
            if tail in ("events", "") and method != "GET":
                await _error(send, 405, "use GET")
                return
            if tail == "events":
                await self._events(scope, receive, send, run_id)
                return
            if tail == "":
                await self._info(send, run_id)
                return
        await _error(send, 404, f"no route for {method} {path}")

    async def _create(self, receive: Receive, send: Send) -> None:
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
            run_id = check_run_id(request.run_id or secrets.token_urlsafe(16))
        except (msgspec.DecodeError, ValueError) as exc:
            await _error(send, 400, f"invalid run request: {exc}")
            return
        nursery = self._nursery
        if nursery is None or self._stopping:
            await _error(send, 503, "the relay is not running (lifespan not started, or "
                         "stopping)")
            return
        if len(self._runs) >= self.max_runs:
            await _error(send, 503, f"too many runs in progress (max_runs={self.max_runs})")
            return
        try:
            await nursery.start(self._run, run_id, ctx, request)
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
        events = f"{self.path_prefix}/runs/{run_id}/events"
        await _json_response(
            send, 201, {"id": run_id, "events": events}, [(b"location", events.encode())]
        )

    async def _run(
        self,
        run_id: str,
        ctx: ChatContext,
        request: _RunRequest,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # One run, in the lifespan's nursery. It never raises into that nursery: a failure
        # to record is logged, and the run's followers end by abandonment.
        started = False
        with self._runs.open():
            try:
                await self.journal.create_run(run_id)
                task_status.started()
                started = True
                extra = {} if request.max_tokens is None else {"max_tokens": request.max_tokens}
                async with open_llm_stream(
                    self.llm,
                    chat_ctx=ctx,
                    conn_options=self.conn_options,
                    temperature=request.temperature,
                    extra=extra,
                ) as stream:
                    result = await record(
                        self.journal, run_id, stream, create=False, options=self.record_options
                    )
                logger.info("run %s: %s after %d chunks", run_id, result.status.value,
                            result.chunks)
            except Exception:
                if not started:
                    raise  # to the POST handler, through nursery.start
                logger.exception("run %s: failed", run_id)

    async def _run_info(self, send: Send, run_id: str) -> RunInfo | None:
        # The run's state, or None once an error response (404, 503, 500) was sent.
        try:
            return await self.journal.info(run_id)
        except RunNotFound:
            await _error(send, 404, f"no run {run_id!r}")
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
        raw: bytes | str | None = None
        for name, value in scope.get("headers", ()):
            if name.lower() == b"last-event-id":
                raw = value
        if raw is None:
            query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
            values = query.get("last_event_id") or query.get("after")
            raw = values[-1] if values else None
        try:
            after = parse_event_id(raw)
        except ValueError as exc:
            await _error(send, 400, str(exc))
            return
        info = await self._run_info(send, run_id)
        if info is None:
            return
        if info.end_seq is not None and after >= info.end_seq:
            # The client has the end event: 204 tells an EventSource to stop reconnecting.
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
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
        stream = _EventStream(send)
        with self._streams.open():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_asgi.watch_disconnect, receive, nursery.cancel_scope.cancel)
                nursery.start_soon(self._keepalive, stream)
                await stream.send(sse_retry(self.retry_ms))
                await self._follow(stream, run_id, after)
                nursery.cancel_scope.cancel()
        # Shielded: hypercorn updates the connection's state inside this send.
        with trio.CancelScope(shield=True) as final:
            final.deadline = trio.current_time() + 1.0
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(self, stream: _EventStream, run_id: str, after: int) -> None:
        follower = self.journal.follow(run_id, after=after, abandon_after=self.abandon_after)
        try:
            async for entry in follower:
                await stream.send(format_sse(entry))
        except StreamAbandoned as exc:
            if exc.entry is not None:
                await stream.send(format_sse(exc.entry))
            else:
                await stream.send(format_sse_end(abandoned_end(run_id, self.abandon_after)))
        except JournalError as exc:
            # The response ends without an end event: the client reconnects with its
            # Last-Event-ID, and gets the entries, a 404 or a 410 then.
            logger.warning("run %s: following failed: %s", run_id, exc)
            await stream.send(sse_comment(f"error: {type(exc).__name__}: {exc}"))

    async def _keepalive(self, stream: _EventStream) -> None:
        while True:
            await trio.sleep_until(stream.last_sent + self.keepalive)
            if trio.current_time() >= stream.last_sent + self.keepalive:
                await stream.send(sse_comment("keep-alive"))


# -- serving -------------------------------------------------------------------------------------


async def serve_relay(
    app: RelayApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    stop_timeout: float = 5.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with hypercorn (trio worker) on ``host``:``port`` until cancelled.

    ``task_status.started`` gets the base URL (``http://127.0.0.1:PORT``; port 0 picks a free
    one). Cancellation: shuts down gracefully (``app.shutdown()``, then hypercorn's own,
    shielded and bounded by ``stop_timeout`` seconds more), then propagates.
    """
    config = _asgi.hypercorn_config(
        host, port, stop_timeout=stop_timeout, logger=logger, needed_by="the relay"
    )
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
    host: str = "127.0.0.1",
    port: int = 8080,
    abandon_after: float = 10.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the relay (what the ``relay`` command runs) on ``host``:``port``: runs go to
    ``llm`` (the caller's, opened and closed by the caller), the journal is Redis at
    ``redis_url`` or in memory. Prints one line once listening; ``task_status`` gets the base
    URL then.

    SIGINT or SIGTERM: stops gracefully (see :func:`serve_relay`) and returns.
    Cancellation: stops gracefully the same way, then propagates.
    """
    if redis_url is None:
        await _serve_until_signal(MemoryJournal(), llm, "memory", host, port, abandon_after,
                                  task_status)
        return
    from ._redis import open_redis_journal

    async with open_redis_journal(redis_url) as journal:
        await journal.ping()  # fail fast on a wrong URL
        await _serve_until_signal(journal, llm, f"redis {redis_url}", host, port,
                                  abandon_after, task_status)


async def _serve_until_signal(
    journal: Journal,
    llm: LLM,
    label: str,
    host: str,
    port: int,
    abandon_after: float,
    task_status: trio.TaskStatus[str],
) -> None:
    app = RelayApp(journal, llm, abandon_after=abandon_after)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url: str = await nursery.start(lambda task_status: serve_relay(
                app, host=host, port=port, task_status=task_status))
            print(f"relay listening on {url} (journal: {label}); POST {url}/v1/runs",
                  flush=True)
            task_status.started(url)
            async for signum in signals:
                print(f"relay: {signal.Signals(signum).name}, stopping", flush=True)
                nursery.cancel_scope.cancel()
                break
