"""A small SSE reader for the relay tests (it checks the bytes, so it parses them itself)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import httpx
import msgspec


@dataclass
class Event:
    id: int | None
    event: str
    data: bytes
    raw_id: bytes | None = None  # the id as sent, when it is not a seq (a made-up ending)

    def json(self) -> dict[str, object]:
        value = msgspec.json.decode(self.data)
        assert isinstance(value, dict)
        return value


def parse_block(block: bytes) -> Event | None:
    fields: dict[str, bytes] = {}
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        fields[name.decode()] = value[1:] if value.startswith(b" ") else value
    if "data" not in fields:
        return None  # comments, retry-only blocks
    raw_id = fields.get("id")
    return Event(
        int(raw_id) if raw_id is not None and raw_id.isdigit() else None,
        fields.get("event", b"message").decode(),
        fields["data"],
        raw_id,
    )


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: int | None = None,
    stop_after: int | None = None,
) -> tuple[int, list[Event]]:
    """GET an event stream; return its status and events (stopping, and disconnecting,
    after ``stop_after`` events)."""
    headers = {} if last_event_id is None else {"last-event-id": str(last_event_id)}
    events: list[Event] = []
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, events
        assert response.headers["content-type"].startswith("text/event-stream")
        buffer = b""
        iterator = response.aiter_bytes()
        async for data in iterator:
            buffer += data
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                event = parse_block(block)
                if event is None:
                    continue
                events.append(event)
                if stop_after is not None and len(events) >= stop_after:
                    # Disconnect mid-body, then let httpx's nested generators finish (so
                    # none is left for the garbage collector).
                    await response.aclose()
                    with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
                        async for _ in iterator:
                            pass
                    return 200, events
        assert buffer == b""
    return 200, events


def check_stream(events: list[Event], first: int = 1) -> dict[str, object]:
    """Events ``first``.. in order with one ``end`` event, last; return the end's data."""
    assert [e.id for e in events] == list(range(first, first + len(events)))
    ends = [e for e in events if e.event == "end"]
    assert len(ends) == 1
    assert events[-1].event == "end"
    assert all(e.event == "message" for e in events[:-1])
    return ends[0].json()


async def throttled_read(
    base_url: str,
    path: str,
    *,
    last_event_id: int | None = None,
    read_size: int = 16 * 1024,
    pause_every: int = 512 * 1024,
    pause: float = 0.5,
    receive_buffer: int = 64 * 1024,
) -> tuple[int, list[Event], bool]:
    """GET an event stream like a slow client: a small socket receive buffer (so the server
    feels it), reads of at most ``read_size`` bytes and a ``pause`` after every
    ``pause_every`` bytes. Returns the status, the events and whether the response ended
    properly (False if the connection was cut mid-body). HTTP/1.1 with h11 over a plain
    socket: httpx offers no way to set the socket's buffer or to read this slowly."""
    import socket

    import h11
    import trio

    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before connecting: a fixed buffer turns off the kernel's receive-window autotuning.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    conn = h11.Connection(h11.CLIENT)
    headers = [("host", f"{host}:{port}"), ("accept", "text/event-stream")]
    if last_event_id is not None:
        headers.append(("last-event-id", str(last_event_id)))
    events: list[Event] = []
    status = 0
    buffer = bytearray()
    since_pause = 0
    async with stream:
        await stream.send_all(conn.send(h11.Request(method="GET", target=path,
                                                    headers=headers)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return status, events, False
            if event is h11.NEED_DATA:
                data = await stream.receive_some(read_size)
                since_pause += len(data)
                if since_pause >= pause_every:
                    since_pause = 0
                    await trio.sleep(pause)
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                buffer += event.data
                end = buffer.rfind(b"\n\n")
                if end >= 0:
                    for block in bytes(buffer[:end]).split(b"\n\n"):
                        parsed = parse_block(block)
                        if parsed is not None:
                            events.append(parsed)
                    del buffer[: end + 2]
            elif isinstance(event, h11.EndOfMessage):
                assert not buffer, "the response ended inside an event"
                return status, events, True
            elif isinstance(event, h11.ConnectionClosed):
                return status, events, False
