"""A loopback mock OpenAI-compatible server that runs inside the caller's trio program.

::

    async with open_mock_server(text_stream("Hello world")) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            ...  # POST /chat/completions gets the scripted stream
        assert server.requests[0].json["stream"] is True

How it works. :func:`open_mock_server` runs hypercorn's trio worker on ``127.0.0.1`` port 0 (a
free port the kernel picks) in a nursery of its own, waits until it listens, and yields a
:class:`MockLLMServer`. The application is a plain ASGI callable written here: it answers the
lifespan protocol, reads each request body in full, records the request, and picks a
response: the server's ``handler`` if it returns one, else, for a POST to a *generation
endpoint* under the prefix, the next scripted response from the queue (or a 500 saying no
script was left), else a 404. The generation endpoints are those of every wire protocol the
library speaks: ``<prefix>/chat/completions`` (OpenAI-compatible), ``<prefix>/responses``
(OpenAI Responses), ``<prefix>/messages`` (Anthropic, whose clients add ``/v1`` themselves:
give them ``server.origin``) and ``<prefix>/models/{model}:streamGenerateContent`` (Gemini), so
one server can play any protocol, or several in turn.

Disconnects. While a response plays, a second task waits on the ASGI ``receive`` callable.
Once the request body has been read, the only message that can arrive there is
``http.disconnect``, which hypercorn sends when the client's side of the connection closes
(it reads the socket all the time, so it notices an early ``aclose`` of a streamed response
at once). The watcher then records the disconnect and cancels the playing task, so a stalled or
slow script stops as soon as nobody listens. (Sending to a gone client does not raise in
hypercorn, so the watcher is the only reliable signal.)

Dropped connections. A :class:`~trio_llmstream.testing.DropConnection` step makes the
application return after the response has started but before its final (``more_body=False``)
body message. Hypercorn then ends the stream as incomplete and, because its HTTP/1.1 state is
not at the end of a message, closes the connection instead of recycling it: the client sees the
bytes so far and then EOF inside a chunked body, which httpx reports as
``httpx.RemoteProtocolError`` ("incomplete chunked read"). No exception is raised in the
application, so nothing is logged.

Stopping. Leaving the ``async with`` block cancels every open response (each then closes its
connection the same way a drop does; the response head and the final body message are sent
shielded, because inside those sends hypercorn updates its connection state in our task),
then triggers hypercorn's graceful shutdown, which closes idle keep-alive connections and the
listener, and runs the lifespan shutdown. The server task runs in a shielded cancel scope so
that this cleanup also completes when the caller is being cancelled: otherwise hypercorn's
connection tasks would be cancelled half-way through closing their sockets and leave them to
the garbage collector, with ``ResourceWarning``\\s. A deadline (``stop_timeout``) bounds the
whole shutdown regardless.
"""

from __future__ import annotations

import collections
import enum
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs
import msgspec
import trio

from .._asgi import (
    BodyTooLarge,
    Receive,
    Scope,
    ScopeSet,
    Send,
    hypercorn_config,
    read_body,
    watch_disconnect,
)
from .._util import open_owner_nursery
from ._script import MockResponse, PlanAction, ResponseLike, as_response, error_response

if TYPE_CHECKING:
    from hypercorn.config import Config

__all__ = [
    "Handler",
    "MockLLMServer",
    "RecordedRequest",
    "ResponseOutcome",
    "open_mock_server",
]

_LOGGER = logging.getLogger("trio_llmstream.testing.server")


class ResponseOutcome(enum.Enum):
    """How the server's response to a recorded request ended."""

    PENDING = "pending"
    """Still being read, decided or played."""
    COMPLETED = "completed"
    """The whole body was sent, including scripts that end without ``[DONE]``."""
    DISCONNECTED = "disconnected"
    """The client went away before the body was finished (closed the response or the
    connection); the server stopped playing at once."""
    DROPPED = "dropped"
    """A :class:`~trio_llmstream.testing.DropConnection` step aborted the connection mid-body."""
    CANCELLED = "cancelled"
    """The server stopped (its ``async with`` block was left) while the response was open."""


_decode_json = msgspec.json.Decoder().decode


@attrs.define(eq=False)
class RecordedRequest:
    """One request the mock server received, and what became of its response.

    The request fields are set when the body has been read; ``status`` when the response
    starts; ``outcome`` (and ``error``/``exception``) when it ends. Records are created by the
    server and appended to :attr:`MockLLMServer.requests` in arrival order.
    """

    index: int
    """Position in :attr:`MockLLMServer.requests` (0 for the first request)."""
    method: str
    """``"POST"``, ``"GET"``..."""
    path: str
    """The URL path, e.g. ``"/v1/chat/completions"``."""
    query: str
    """The raw query string (without ``?``), usually empty."""
    headers: dict[str, str]
    """Request headers, names lower-cased; repeated headers are joined with ``", "``."""
    body: bytes
    """The raw request body."""
    json: Any
    """The body parsed as JSON, or None if it is empty or not JSON."""
    status: int | None = None
    """The response status, once the response has started."""
    outcome: ResponseOutcome = ResponseOutcome.PENDING
    """How the response ended (see :class:`ResponseOutcome`)."""
    response: MockResponse | None = None
    """The response that was (or is being) played."""
    unscripted: bool = False
    """True if this chat-completions request found the script queue empty (and got a 500)."""
    error: str | None = None
    """What went wrong on the server's side, if anything: no script left, no route, or an
    exception from the handler."""
    exception: BaseException | None = None
    """The exception the handler raised for this request, if it did."""
    _done: trio.Event = attrs.field(factory=trio.Event, repr=False)

    @property
    def disconnected(self) -> bool:
        """Whether the client disconnected before the response was finished."""
        return self.outcome is ResponseOutcome.DISCONNECTED

    @property
    def finished(self) -> bool:
        """Whether the response has ended, one way or another."""
        return self.outcome is not ResponseOutcome.PENDING

    async def wait_finished(self) -> ResponseOutcome:
        """Wait until the response has ended, and return its outcome.

        Useful after closing a client-side response early: the server learns of the disconnect
        a moment later. Cancellation: safe at any point; cancelling it only stops the waiting.
        """
        await self._done.wait()
        return self.outcome


_HandlerResult: TypeAlias = "ResponseLike | None"
Handler: TypeAlias = Callable[[RecordedRequest], "_HandlerResult | Awaitable[_HandlerResult]"]
"""A callable deciding the response to a request, sync or async.

It gets the :class:`RecordedRequest` (body already read) and returns a
:class:`~trio_llmstream.testing.MockResponse`, a sequence of steps (a 200 stream), or None to
fall back to the scripted queue (for chat completions) or a 404. It is called for every request,
on any path. If it raises, the client gets a 500 and the exception is recorded and, by default,
re-raised when the server's ``async with`` block ends.
"""


class MockLLMServer:
    """A running loopback mock server; get one from :func:`open_mock_server`.

    Not constructed directly: the object is only useful while its ``async with`` block runs.
    Everything here is meant to be used from the same trio run as the server.
    """

    def __init__(
        self,
        *,
        handler: Handler | None,
        path_prefix: str,
        raise_handler_errors: bool,
        max_body: int = 64 << 20,
    ) -> None:
        self.handler: Handler | None = handler
        """The dynamic handler (see :data:`Handler`); may be replaced at any time."""
        self.requests: list[RecordedRequest] = []
        """Every request received, in arrival order (recorded once its body has been read)."""
        self.host = ""
        """The address the server listens on, e.g. ``"127.0.0.1"``."""
        self.port = 0
        """The port the server listens on."""
        self._origin = ""
        self._prefix = path_prefix.rstrip("/")
        self._chat_path = f"{self._prefix}/chat/completions"
        self._raise_handler_errors = raise_handler_errors
        self._max_body = max_body
        self._queue: collections.deque[MockResponse] = collections.deque()
        self._enqueued = 0
        self._handler_errors: list[BaseException] = []
        # Every HTTP task, from its first receive; and those whose request was recorded and
        # whose response has not ended (the "open responses").
        self._active = ScopeSet()
        self._responses = ScopeSet()
        self._shutdown = trio.Event()
        self._serve_scope: trio.CancelScope | None = None
        self._compiled: dict[int, tuple[ResponseLike, MockResponse]] = {}

    # -- public surface ------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """Scheme, host and port, e.g. ``"http://127.0.0.1:50123"``."""
        return self._origin

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL to give clients, e.g. ``"http://127.0.0.1:50123/v1"``."""
        return self._origin + self._prefix

    @property
    def chat_completions_url(self) -> str:
        """The full URL of the chat-completions endpoint."""
        return self._origin + self._chat_path

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The recorded POSTs to a generation endpoint (any protocol's), in order."""
        return [r for r in self.requests if r.method == "POST" and self._generates(r.path)]

    def _generates(self, path: str) -> bool:
        prefix = self._prefix
        if not path.startswith(prefix + "/"):
            return False
        rest = path[len(prefix):]
        if rest in ("/chat/completions", "/responses", "/messages"):
            return True
        return rest.startswith("/models/") and rest.endswith(":streamGenerateContent")

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request; raises :class:`IndexError` if there was none."""
        return self.requests[-1]

    @property
    def queued(self) -> int:
        """How many scripted responses are still waiting in the queue."""
        return len(self._queue)

    @property
    def open_responses(self) -> int:
        """How many requests are being answered right now (body read, response not ended)."""
        return len(self._responses)

    def enqueue(self, *responses: ResponseLike) -> None:
        """Append scripted responses to the queue.

        Each POST to a generation endpoint (see the module docstring) that the handler does
        not answer takes the next one, in order. A response is a
        :class:`~trio_llmstream.testing.MockResponse` or a sequence of steps (a 200 stream).
        The same response may be enqueued many times; it is compiled once if it is a
        ``MockResponse`` or the same tuple of steps each time (as the builders return), while
        a list is compiled again at every use.
        """
        converted = [self._coerce(response) for response in responses]
        self._queue.extend(converted)
        self._enqueued += len(converted)

    def _coerce(self, response: ResponseLike) -> MockResponse:
        # Compile each distinct tuple of steps once for the server's lifetime (the benchmark
        # enqueues one script a thousand times). The tuple is kept alive, so its id stays its
        # own; lists are mutable and compiled at every use.
        if isinstance(response, tuple):
            cached = self._compiled.get(id(response))
            if cached is not None and cached[0] is response:
                return cached[1]
            compiled = as_response(response)
            self._compiled[id(response)] = (response, compiled)
            return compiled
        return as_response(response)

    async def wait_idle(self) -> None:
        """Wait until no response is open (:attr:`open_responses` is 0).

        Returns at once if none is. Cancellation: safe at any point; it only stops the waiting.
        """
        await self._responses.wait_empty()

    # -- the ASGI application ------------------------------------------------------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        # Websockets are not served: returning without accepting makes hypercorn refuse them.

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._active.open():
            try:
                body = await read_body(receive, self._max_body)
            except BodyTooLarge as exc:
                await self._refuse(send, 413, f"mock server: {exc}")
                return
            if body is None:  # the client left before sending the whole body
                return
            record = self._record(scope, body)
            await self._answer(record, receive, send)

    async def _answer(self, record: RecordedRequest, receive: Receive, send: Send) -> None:
        playback = _Playback()
        with self._responses.open():
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_disconnect, receive,
                                       lambda: playback.on_disconnect(nursery.cancel_scope))
                    playback.outcome = await self._respond(record, send, playback)
                    nursery.cancel_scope.cancel()
            finally:
                # Decided here, not after the nursery: a stop that lands just after the last
                # send must not turn a completed response into a cancelled one.
                outcome = playback.outcome
                if outcome is ResponseOutcome.PENDING:
                    if playback.disconnected:
                        outcome = ResponseOutcome.DISCONNECTED
                    else:
                        outcome = ResponseOutcome.CANCELLED
                record.outcome = outcome
                record._done.set()

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        # A response to a request that is not recorded (its body was too large).
        _LOGGER.warning("%s", message)
        response = error_response(status, message, type="mock_server_error")
        with trio.CancelScope(shield=True):
            await send(response.start_message)
            for op in response.plan:
                if isinstance(op, dict):
                    await send(op)
            await send(_END_OF_BODY)

    def _record(self, scope: Scope, body: bytes) -> RecordedRequest:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        try:
            parsed = _decode_json(body) if body else None
        except msgspec.DecodeError:
            parsed = None
        record = RecordedRequest(
            index=len(self.requests),
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
            body=body,
            json=parsed,
        )
        self.requests.append(record)
        return record

    async def _respond(
        self,
        record: RecordedRequest,
        send: Send,
        playback: _Playback,
    ) -> ResponseOutcome:
        response = await self._choose(record)
        record.response = response
        record.status = response.status
        # The first and the last send are shielded: inside them hypercorn updates its HTTP/1.1
        # state and recycles the connection (restarting its keep-alive task) in our task, and a
        # cancellation landing half-way would leave the connection stuck or make hypercorn try
        # to send a second response head. A cancellation inside a body send is harmless: we
        # return, and hypercorn closes the connection mid-body, as for a drop.
        with trio.CancelScope(shield=True):
            await send(response.start_message)
        for op in response.plan:
            if isinstance(op, dict):
                await send(op)
            elif isinstance(op, float):
                await trio.sleep(op)
            elif op is PlanAction.STALL:
                await trio.sleep_forever()
            elif op is PlanAction.DROP:
                # Returning before the final body message: hypercorn closes the connection.
                return ResponseOutcome.DROPPED
            else:  # PlanAction.END
                break
        # Sending the last body message makes hypercorn deliver http.disconnect to us while the
        # send is still running; that one is the normal end, not the client leaving.
        playback.finishing = True
        with trio.CancelScope(shield=True):
            await send(_END_OF_BODY)
        return ResponseOutcome.COMPLETED

    async def _choose(self, record: RecordedRequest) -> MockResponse:
        handler = self.handler
        if handler is not None:
            try:
                result = handler(record)
                if inspect.isawaitable(result):
                    result = await result
                if result is not None:
                    return self._coerce(result)
            except Exception as exc:
                self._handler_errors.append(exc)
                record.exception = exc
                record.error = f"handler raised {type(exc).__name__}: {exc}"
                return error_response(500, f"mock server: {record.error}", type="mock_server_error")
        if record.method == "POST" and self._generates(record.path):
            if self._queue:
                return self._queue.popleft()
            record.unscripted = True
            record.error = (
                f"no scripted response left for request #{record.index} "
                f"(POST {record.path}); {self._enqueued} were enqueued and all were used"
            )
            return error_response(500, f"mock server: {record.error}", type="mock_server_error")
        record.error = f"no route for {record.method} {record.path}"
        return error_response(404, f"mock server: {record.error}", type="not_found_error")

    # -- lifecycle -----------------------------------------------------------------------------

    async def _serve(
        self,
        config: Config,
        stop_timeout: float,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        from hypercorn.trio import serve

        async def started(*, task_status: trio.TaskStatus[list[str]]) -> None:
            # Our ASGI types are plain dicts (see _asgi), hypercorn's are TypedDicts.
            await serve(
                self._asgi,  # type: ignore[arg-type]
                config,
                shutdown_trigger=self._shutdown.wait,
                task_status=task_status,
            )

        # Shielded: the caller's cancellation must not cut hypercorn's shutdown short (see the
        # module docstring). _begin_stop puts a deadline on this scope instead.
        with trio.CancelScope(shield=True) as scope:
            self._serve_scope = scope
            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(started)
                self._set_address(binds[0])
                task_status.started()
        if scope.cancelled_caught:
            raise RuntimeError(f"the mock server did not stop within {stop_timeout} s")

    def _set_address(self, bind: str) -> None:
        # bind is like "http://127.0.0.1:50123" or "http://[::1]:50123".
        self._origin = bind
        host_port = bind.split("://", 1)[1]
        host, _, port = host_port.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)

    def _begin_stop(self, stop_timeout: float) -> None:
        self._active.close()
        self._shutdown.set()
        if self._serve_scope is not None:
            self._serve_scope.deadline = min(
                self._serve_scope.deadline, trio.current_time() + stop_timeout
            )


_END_OF_BODY: dict[str, Any] = {"type": "http.response.body", "body": b"", "more_body": False}


class _Playback:
    # What the playing task and the disconnect watcher of one response share.
    __slots__ = ("disconnected", "finishing", "outcome")

    def __init__(self) -> None:
        self.outcome = ResponseOutcome.PENDING
        self.finishing = False
        self.disconnected = False

    def on_disconnect(self, playing: trio.CancelScope) -> None:
        # Sending the last body message makes hypercorn deliver http.disconnect while that
        # send runs: then it is the normal end, not the client leaving.
        if not self.finishing:
            self.disconnected = True
            playing.cancel()


def _make_config(host: str, port: int, stop_timeout: float, backlog: int) -> Config:
    config = hypercorn_config(
        host, port, stop_timeout=stop_timeout, logger=_LOGGER, needed_by="the mock server"
    )
    config.backlog = backlog
    config.keep_alive_max_requests = 1_000_000
    return config


@asynccontextmanager
async def open_mock_server(
    *responses: ResponseLike,
    handler: Handler | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    path_prefix: str = "/v1",
    raise_handler_errors: bool = True,
    stop_timeout: float = 5.0,
    backlog: int = 4096,
    max_body: int = 64 << 20,
) -> AsyncIterator[MockLLMServer]:
    """Run a loopback mock OpenAI-compatible server for the duration of the block.

    ``responses`` are enqueued in order (see :meth:`MockLLMServer.enqueue`); each
    ``POST {path_prefix}/chat/completions`` plays the next one. ``handler`` (see
    :data:`Handler`) answers requests dynamically and is asked first. The server listens on
    ``host``:``port`` (port 0: a free port picked by the system) and is ready when the block
    starts; the yielded :class:`MockLLMServer` gives its :attr:`~MockLLMServer.base_url` and
    records every request.

    On leaving the block, open responses are cancelled (their clients see the connection
    close mid-body), idle connections are closed and the server stops; this is prompt even
    with clients still connected. If the handler raised while the block ran and
    ``raise_handler_errors`` is true, the first such exception is re-raised here (unless the
    block itself raised). An exception from the block propagates unchanged.

    Cancellation: entering is not cancellable (binding a loopback port is immediate); if the
    caller is cancelled while inside the block, leaving it still shuts the server down cleanly
    (shielded, bounded by ``stop_timeout`` seconds) before the cancellation propagates.
    ``backlog`` is the listen queue length (large, for benchmarks that open many connections at
    once). A request body larger than ``max_body`` bytes is answered 413 and not recorded
    (the server holds at most that much of it).

    Use it with real time, not an autojump clock: the clock would jump over waits for socket
    I/O. Under load, a trio listener accepts one connection per scheduler pass, so a thousand
    clients connecting at once while other streams are busy take seconds to be accepted: give
    benchmark clients generous timeouts, or connect them before the load starts.
    """
    config = _make_config(host, port, stop_timeout, backlog)
    server = MockLLMServer(
        handler=handler,
        path_prefix=path_prefix,
        raise_handler_errors=raise_handler_errors,
        max_body=max_body,
    )
    server.enqueue(*responses)
    async with open_owner_nursery(lambda _: server._begin_stop(stop_timeout)) as nursery:
        await nursery.start(server._serve, config, stop_timeout)
        yield server
    if server._raise_handler_errors and server._handler_errors:
        first = server._handler_errors[0]
        more = len(server._handler_errors) - 1
        if more:
            first.add_note(f"(the mock server's handler raised {more} more exception(s))")
        raise first
