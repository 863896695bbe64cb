"""The retry decision, as a pure function.

Whether to try an attempt again depends on five things and nothing else: the error (is it
retryable? did the server ask for a delay?), whether the attempt *committed* (output reached the
consumer, after which regenerating would repeat it), how many attempts were made, how much of
the caller's deadline is left, and the options. Keeping the rule in one pure function makes it
testable exhaustively and keeps the trio loop free of policy.

Backoff is exponential with jitter: after attempt ``k`` (0-based) the delay is
``min(max_retry_interval, retry_interval * 2**k)`` scaled by a factor drawn uniformly from
[0.5, 1). Scaling down, never up, keeps the cap a true cap, and the spread keeps a fleet of
clients that failed together from retrying together. A server's ``Retry-After`` replaces the
computed delay: the server knows better than our guess. RFC 9110 says a client ought to wait
that long, so we never retry sooner; but a request to wait longer than ``retry_after_cap`` is
not something to sleep through inside one stream (a quota reset in ten minutes, say): we give
up at once, and the error keeps its ``retry_after`` so that the caller can reschedule. If the
delay would outlast the caller's deadline, we give up at once rather than sleep into a timeout.
"""

from __future__ import annotations

import math
import random

import attrs

from .._exceptions import APIError
from .._options import APIConnectOptions

__all__ = ["GiveUp", "Retry", "RetryDecision", "backoff_delay", "decide_retry"]


@attrs.frozen
class Retry:
    """Try again after ``delay`` seconds."""

    delay: float


@attrs.frozen
class GiveUp:
    """Do not try again; ``reason`` says why, for messages and metrics."""

    reason: str


RetryDecision = Retry | GiveUp


def backoff_delay(options: APIConnectOptions, attempt: int, rng: random.Random) -> float:
    """The jittered exponential delay after the 0-based ``attempt``."""
    # 2**attempt overflows floats past ~1000; the cap is reached long before.
    base = options.retry_interval * (2.0 ** min(attempt, 64))
    return min(options.max_retry_interval, base) * rng.uniform(0.5, 1.0)


def decide_retry(
    options: APIConnectOptions,
    *,
    attempt: int,
    error: BaseException,
    committed: bool,
    time_left: float = math.inf,
    rng: random.Random,
) -> RetryDecision:
    """Decide whether the failed 0-based ``attempt`` is tried again, and after how long.

    Retry iff the error is an ``APIError`` marked retryable, the attempt did not commit,
    another attempt is allowed, the server did not ask to wait longer than
    ``options.retry_after_cap``, and the delay fits in ``time_left`` (the caller's deadline).
    """
    if not isinstance(error, APIError):
        return GiveUp("not an API error")
    if committed:
        return GiveUp("output was already delivered")
    if not error.retryable:
        return GiveUp("error is not retryable")
    if attempt + 1 >= options.max_attempts:
        return GiveUp("no attempts left")
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int | float) and retry_after >= 0:
        delay = float(retry_after)
        if delay > options.retry_after_cap:
            return GiveUp(
                f"the server asked to wait {delay:g}s before retrying, more than "
                f"retry_after_cap={options.retry_after_cap:g}s"
            )
    else:
        delay = backoff_delay(options, attempt, rng)
    if delay >= time_left:
        return GiveUp("the caller's deadline leaves no time for another attempt")
    return Retry(delay)
