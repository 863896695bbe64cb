"""Server-sent events decoding, usable on its own.

``SSEDecoder`` turns the bytes of a ``text/event-stream`` body into ``ServerSentEvent``s by the
WHATWG rules, incrementally and within fixed memory bounds. It is synchronous and does no I/O:
feed it bytes from any source, in chunks of any size::

    decoder = SSEDecoder()
    async for chunk in response.aiter_bytes():
        for event in decoder.feed(chunk):
            handle(event)
    decoder.end()
"""

from ._core._sse import ServerSentEvent as ServerSentEvent
from ._core._sse import SSEDecoder as SSEDecoder

__all__ = ["SSEDecoder", "ServerSentEvent"]
