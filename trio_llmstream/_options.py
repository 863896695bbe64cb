"""Per-attempt connection options: retry budget, backoff and time limits.

The names ``max_retry``, ``retry_interval`` and ``timeout`` are livekit-agents' own, so its users
feel at home. What livekit cannot express lives in ``timeouts``: separate limits for connecting,
for the first *visible* output, and for the idle gap between chunks, and these may change per
attempt (``timeouts=lambda attempt: Timeouts(first_token=0.5 * 2**attempt)``) without any
mutable state. An overall deadline is the caller's ``trio.fail_after`` around the block; the
backoff sleeps respect it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["DEFAULT_API_CONNECT_OPTIONS", "APIConnectOptions", "Timeouts"]


def _positive_or_none(_inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attr.name} must be a positive number of seconds or None, not {value!r}")


@attrs.frozen
class Timeouts:
    """Time limits of one attempt, in seconds; None means no limit.

    - ``connect``: to establish the connection (enforced by the provider's transport);
    - ``first_token``: from the start of the attempt to its first *visible* output (text,
      reasoning or a complete tool call). Role-only chunks, usage and keep-alives do not stop
      this clock, so a server that opens the stream and never produces a token is failed over;
    - ``idle``: the longest gap between two data events from the server (a keep-alive comment
      does not count as data). Time spent waiting for a slow consumer never counts.

    Each that fires raises ``APITimeoutError`` naming it; it is retryable.
    """

    connect: float | None = attrs.field(default=10.0, validator=_positive_or_none)
    first_token: float | None = attrs.field(default=None, validator=_positive_or_none)
    idle: float | None = attrs.field(default=10.0, validator=_positive_or_none)
    # Added for the progress-based limits (semantics and defaults being reworked):
    # ``first_event``: from the start of the attempt to its first complete data event;
    # ``headers``: from the start of the attempt to the response headers (the provider's).
    first_event: float | None = attrs.field(default=None, validator=_positive_or_none)
    headers: float | None = attrs.field(default=None, validator=_positive_or_none)



@attrs.frozen
class APIConnectOptions:
    """Retry and timeout options, applied per attempt.

    - ``max_retry``: how many times to retry after the first attempt (so at most
      ``max_retry + 1`` attempts);
    - ``retry_interval``: the base of the exponential backoff: the delay after attempt ``k``
      (0-based) is ``retry_interval * 2**k``, capped at ``max_retry_interval``, times a random
      factor in [0.5, 1) so that many clients do not retry in step;
    - ``retry_after_cap``: the longest server-requested ``Retry-After`` honoured; a longer
      request is clamped to it;
    - ``timeout``: livekit's single limit; the default ``connect`` and ``idle`` limit when
      ``timeouts`` is not given;
    - ``timeouts``: a ``Timeouts``, or a function from the 0-based attempt number to one.
    """

    max_retry: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    retry_interval: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    max_retry_interval: float = attrs.field(default=8.0, validator=attrs.validators.ge(0))
    retry_after_cap: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    timeouts: Timeouts | Callable[[int], Timeouts] | None = None

    @property
    def max_attempts(self) -> int:
        return self.max_retry + 1

    def timeouts_for(self, attempt: int) -> Timeouts:
        """The limits for the 0-based ``attempt``."""
        spec = self.timeouts
        if spec is None:
            return Timeouts(connect=self.timeout, first_token=None, idle=self.timeout)
        if isinstance(spec, Timeouts):
            return spec
        result = spec(attempt)
        if not isinstance(result, Timeouts):
            raise TypeError(
                f"APIConnectOptions.timeouts({attempt}) returned {type(result).__name__}, "
                "expected a Timeouts"
            )
        return result


DEFAULT_API_CONNECT_OPTIONS = APIConnectOptions()
