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
        int(raw_id) if raw_id is not None else None,
        fields.get("event", b"message").decode(),
        fields["data"],
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
