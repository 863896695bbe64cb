"""Per-attempt connection options: retry budget, backoff and time limits.

The names ``max_retry``, ``retry_interval`` and ``timeout`` are livekit-agents' own, so its users
feel at home. What livekit cannot express lives in ``timeouts``: separate limits for connecting,
for the first data event, for the first *visible* output, and for the idle gap between data
events, and these may change per attempt
(``timeouts=lambda attempt: Timeouts(first_token=0.5 * 2**attempt)``) without any mutable state.
An overall deadline is the caller's ``trio.fail_after`` around the block; the backoff sleeps
respect it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["DEFAULT_API_CONNECT_OPTIONS", "APIConnectOptions", "Hedge", "Timeouts"]


def _positive_or_none(_inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attr.name} must be a positive number of seconds or None, not {value!r}")


@attrs.frozen
class Timeouts:
    """Time limits of one attempt, in seconds; None means no limit.

    Each limit measures *progress*, and progress is a complete server-sent event carrying data
    (the provider calls ``ChunkEmitter.send`` once per read that completed one or more):
    keep-alive comments, blank lines and partial lines are never progress, so a server that
    trickles bytes without ever completing an event cannot keep an attempt alive.

    - ``connect``: to establish the connection (enforced by the provider's transport);
    - ``headers``: from the attempt's start to the response headers (enforced by the provider;
      None by default because ``first_event`` bounds that wait too);
    - ``first_event``: from the attempt's start to the first data event;
    - ``idle``: after the first data event, the longest time without another one. It never
      runs before the first event (that is ``first_event``'s job: a model may think for
      minutes before its first byte), and time spent waiting for a slow consumer never counts;
    - ``first_token``: from the attempt's start to its first *visible* output (text,
      reasoning or a complete tool call). Role-only chunks, usage and keep-alives do not stop
      this clock, so a server that opens the stream and never produces a token is failed over.

    Each that fires raises ``APITimeoutError`` naming it (``limit``); it is retryable.

    Why these defaults (connect 60 s, first_event/idle/first_token 900 s): with default
    options no stream can hang forever, yet a legitimate server is never failed for being
    slow. Reasoning models are routinely silent for minutes before their first token, and a
    busy client with thousands of streams takes time to read them; openai-python waits 600 s
    per read, so a server that answers within 10 minutes must never fail here, and 15 minutes
    leave margin over that. ``connect`` also covers waiting for a free connection in the
    client's pool and for the server to accept: a server hit by a burst of connections keeps
    the excess in its listen backlog, and the client's kernel retransmits the SYN after 1, 3,
    7, 15 and 31 s. With 10 s (livekit's value) about a fifth of 10,000 concurrent streams on
    one small machine failed to connect to a healthy loopback server; 60 s lets a busy server
    accept them, and a dead one fails within a minute. These defaults are for safety, not
    for latency: an interactive application that would rather retry than wait sets tight
    limits, for instance for a voice agent (fail over quickly, give each retry twice the
    patience)::

        APIConnectOptions(
            max_retry=3,
            timeouts=lambda attempt: Timeouts(
                connect=2.0,
                first_event=2.0 * 2**attempt,
                first_token=2.5 * 2**attempt,
                idle=1.0 * 2**attempt,
            ),
        )

    Set ``first_event`` together with ``idle``: the latter only runs once data flows.
    """

    connect: float | None = attrs.field(default=60.0, validator=_positive_or_none)
    first_token: float | None = attrs.field(default=900.0, validator=_positive_or_none)
    idle: float | None = attrs.field(default=900.0, validator=_positive_or_none)
    first_event: float | None = attrs.field(default=900.0, validator=_positive_or_none)
    headers: float | None = attrs.field(default=None, validator=_positive_or_none)


@attrs.frozen
class APIConnectOptions:
    """Retry and timeout options, applied per attempt.

    - ``max_retry``: how many times to retry after the first attempt (so at most
      ``max_retry + 1`` attempts);
    - ``retry_interval``: the base of the exponential backoff: the delay after attempt ``k``
      (0-based) is ``retry_interval * 2**k``, capped at ``max_retry_interval``, times a random
      factor in [0.5, 1) so that many clients do not retry in step;
    - ``retry_after_cap``: the longest server-requested ``Retry-After`` waited for; a server
      that asks for longer makes the stream give up at once (the error keeps ``retry_after``,
      so the caller can reschedule the whole request);
    - ``timeout``: livekit's single limit, used only when ``timeouts`` is not given. None
      (the default) means ``Timeouts()``'s defaults. A number keeps livekit's meaning, where
      it is the HTTP client's connect and read timeout: ``connect``, ``first_event`` (the
      read that waits for the first data) and ``idle`` all take it, the other limits keep
      their defaults. (Until this release the default was 10 s for connect and idle, and the
      idle clock ran from the attempt's start: any server silent for 10 s failed.)
    - ``timeouts``: a ``Timeouts``, or a function from the 0-based attempt number to one.
    """

    max_retry: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    retry_interval: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    max_retry_interval: float = attrs.field(default=8.0, validator=attrs.validators.ge(0))
    retry_after_cap: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    timeout: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    timeouts: Timeouts | Callable[[int], Timeouts] | None = None

    @property
    def max_attempts(self) -> int:
        return self.max_retry + 1

    def timeouts_for(self, attempt: int) -> Timeouts:
        """The limits for the 0-based ``attempt``."""
        spec = self.timeouts
        if spec is None:
            if self.timeout is None:
                return _DEFAULT_TIMEOUTS
            t = self.timeout
            return Timeouts(connect=t, first_event=t, idle=t)
        if isinstance(spec, Timeouts):
            return spec
        result = spec(attempt)
        if not isinstance(result, Timeouts):
            raise TypeError(
                f"APIConnectOptions.timeouts({attempt}) returned {type(result).__name__}, "
                "expected a Timeouts"
            )
        return result


@attrs.frozen
class Hedge:
    """Hedged attempts: ``open_llm_stream(..., hedge=Hedge(after=0.8))``.

    When the newest running attempt has delivered no visible output ``after`` seconds after it
    started, one more attempt starts (on the next provider of a ``FallbackLLM``, else on the
    same ``LLM``) while the others keep running, up to ``max_in_flight`` attempts at once. The
    first attempt whose visible output the consumer takes wins; every other is cancelled at
    once (its connection closed) and recorded with its usage. Each hedged attempt is an
    attempt of ``APIConnectOptions.max_retry``'s budget. No hedge starts while an attempt is
    handing visible output over (the consumer is slow, or the stream is held) or has finished
    without any (it waits for the others; see ``open_llm_stream``).
    """

    after: float = attrs.field(validator=_positive_or_none)
    max_in_flight: int = attrs.field(default=2, validator=attrs.validators.ge(2))


_DEFAULT_TIMEOUTS = Timeouts()

DEFAULT_API_CONNECT_OPTIONS = APIConnectOptions()
