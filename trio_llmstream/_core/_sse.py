"""Server-sent events: bytes -> ServerSentEvent, by the WHATWG event-stream rules.

(The decoder is being written; this module currently holds the event type only.)
"""

from __future__ import annotations

import attrs

__all__ = ["ServerSentEvent"]


@attrs.frozen
class ServerSentEvent:
    """One dispatched event.

    ``event`` is the type ("message" unless an ``event:`` field set one), ``data`` the data lines
    joined with "\\n", ``id`` the last event id seen so far in the stream ("" when none was set)
    and ``retry`` the reconnection time in milliseconds if this block carried a valid one.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None
