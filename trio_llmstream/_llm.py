"""The provider interface: what a wire protocol implements to be streamed by the runtime.

A provider implements one coroutine per *attempt*. It gets the request, a record of the attempt
(its number and time limits) and an emitter. The emitter can hand chunks to the runtime and
nothing else: it cannot close the stream, so a provider bug cannot close the consumer's channel
under the next attempt (the failure behind agents-js #871). Retries, timeouts on visible
output and idle gaps, metrics and cancellation all belong to the runtime; classifying HTTP and
in-stream errors into retryable ``APIError``s belongs to the provider.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from ._models import ChatChunk, ChatRequest, LLMCapabilities, LLMMetrics
from ._options import Timeouts

__all__ = ["LLM", "AttemptInfo", "ChunkEmitter", "MetricsCallback"]

MetricsCallback = Callable[[LLMMetrics], object]


@attrs.frozen
class AttemptInfo:
    """One attempt: its 0-based ``number`` and the ``timeouts`` that apply to it.

    Providers enforce ``timeouts.connect`` and ``timeouts.headers`` (from the attempt's start
    to the response headers) in their transport, raising ``APITimeoutError`` naming the limit;
    the runtime enforces ``first_event``, ``idle`` and ``first_token`` from the provider's
    calls to ``ChunkEmitter.send``.
    """

    number: int
    timeouts: Timeouts


class ChunkEmitter(Protocol):
    """How an attempt hands output to the runtime. It cannot close anything.

    A call to :meth:`send` is the attempt's *progress*, what the time limits measure: the
    first call stops the ``first_event`` clock, each call restarts the ``idle`` clock.
    """

    async def send(self, chunks: Sequence[ChatChunk]) -> None:
        """Hand over the chunks decoded from one read of the response body.

        The contract: call it once per read that completed at least one data-carrying
        server-sent event, with the chunks decoded from that read, even when there are none
        yet (an event holding a fragment of tool-call arguments is progress too). Never call
        it for a read that completed no data event: keep-alive comments, blank lines and a
        line still incomplete at the end of the read are not progress, and a server that
        sends only those must be failed by ``first_event`` or ``idle``. (The OpenAI parser's
        ``progress`` counter tells the two kinds of read apart.)

        Blocks while the consumer is slow (backpressure); that wait never counts against a
        time limit. Cancellation: may be cancelled (a time limit fired, or the stream is
        leaving). Chunks the consumer took before the cancellation landed are delivered
        (and, if visible, commit the attempt, which is then never retried); the others are
        not delivered.
        """
        ...


class LLM(abc.ABC):
    """A chat-completions provider, streamed through ``open_llm_stream``.

    Subclasses implement :meth:`run_attempt`. ``label`` names the provider in metrics;
    ``capabilities`` says what its endpoint supports. Metrics listeners registered with
    :meth:`on_metrics` get every stream's metrics record, once; registering the same callable
    twice keeps one registration (doubled metrics were livekit #3166).
    """

    def __init__(self, *, label: str | None = None, capabilities: LLMCapabilities | None = None):
        self._label = label or type(self).__name__
        self._capabilities = capabilities or LLMCapabilities()
        self._metrics_listeners: dict[MetricsCallback, None] = {}

    @property
    def label(self) -> str:
        return self._label

    @property
    def capabilities(self) -> LLMCapabilities:
        return self._capabilities

    def on_metrics(self, callback: MetricsCallback) -> MetricsCallback:
        """Register ``callback`` for the metrics of every stream of this LLM (idempotent).

        Usable as a decorator. A callback that raises is logged and never breaks a stream.
        """
        self._metrics_listeners[callback] = None
        return callback

    def off_metrics(self, callback: MetricsCallback) -> None:
        """Unregister ``callback``; unknown callbacks are ignored."""
        self._metrics_listeners.pop(callback, None)

    @property
    def metrics_listeners(self) -> tuple[MetricsCallback, ...]:
        return tuple(self._metrics_listeners)

    @abc.abstractmethod
    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        """Run one attempt: send ``request``, hand the response's chunks to ``emit``.

        Return normally only when the response ended properly (``[DONE]`` or a finish reason).
        Raise an ``APIError`` subclass for every failure, with ``retryable`` set truthfully;
        any other exception is treated as a bug and is never retried. Cancellation: the runtime
        cancels this coroutine to enforce time limits and when the consumer leaves; it must
        release its connection when cancelled.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what the provider owns (an HTTP client, say). Idempotent."""

    async def __aenter__(self) -> LLM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
