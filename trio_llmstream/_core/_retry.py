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

Several providers (``FallbackLLM``) share one budget of attempts. The next attempt goes to the
next provider still worth asking in this stream: ``decide_next`` is told only whether that is a
*fresh* step (the next provider in the order: no backoff, since a different server owes us
nothing for the previous one's failure, and its ``Retry-After`` is not ours either) or a *wrap*
(the order starts over, so a server that failed is asked again: the backoff of round ``k``, the
number of wraps before this one). With a single provider every retry is a wrap and round ``k``
is the attempt number, so ``decide_retry`` is ``decide_next`` for one provider.
"""

from __future__ import annotations

import math
import random
from typing import Literal

import attrs

from .._exceptions import APIError
from .._options import APIConnectOptions
from ._backoff import jittered_backoff

__all__ = [
    "GiveUp",
    "Retry",
    "RetryDecision",
    "Step",
    "backoff_delay",
    "decide_next",
    "decide_retry",
]


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
    """The jittered exponential delay after the 0-based ``attempt`` (``_core/_backoff.py``'s
    formula with the options' interval and cap)."""
    return jittered_backoff(options.retry_interval, options.max_retry_interval, attempt, rng)


#: How the next attempt would move through the providers: to the next one in the order
#: ("next"), back to the start of the order ("wrap"), or nowhere (None: no provider is left
#: that a retry could help).
Step = Literal["next", "wrap"] | None


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
    retryable = isinstance(error, APIError) and error.retryable
    return decide_next(
        options,
        attempt=attempt,
        error=error,
        committed=committed,
        step="wrap" if retryable else None,
        round=attempt,
        time_left=time_left,
        rng=rng,
    )


def decide_next(
    options: APIConnectOptions,
    *,
    attempt: int,
    error: BaseException,
    committed: bool,
    step: Step,
    round: int,
    time_left: float = math.inf,
    rng: random.Random,
) -> RetryDecision:
    """Decide whether another attempt follows the failed one, and after how long.

    ``attempt`` is the 0-based number of the last attempt started (the budget used);
    ``step`` says where the next attempt would go (see ``Step``; the caller knows which
    providers are left), ``round`` how many times the order has wrapped before. A fresh
    provider is asked at once; a wrap waits the backoff of ``round`` (or the server's
    ``Retry-After``, within ``retry_after_cap``). Never after the commit, never for an error
    that is not an ``APIError`` (a bug), never past the budget or the caller's deadline.
    """
    if not isinstance(error, APIError):
        return GiveUp("not an API error")
    if committed:
        return GiveUp("output was already delivered")
    if step is None:
        return GiveUp("error is not retryable")
    if attempt + 1 >= options.max_attempts:
        return GiveUp("no attempts left")
    if step == "next":
        delay = 0.0
    else:
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after >= 0:
            delay = float(retry_after)
            if delay > options.retry_after_cap:
                return GiveUp(
                    f"the server asked to wait {delay:g}s before retrying, more than "
                    f"retry_after_cap={options.retry_after_cap:g}s"
                )
        else:
            delay = backoff_delay(options, round, rng)
    if delay >= time_left:
        return GiveUp("the caller's deadline leaves no time for another attempt")
    return Retry(delay)
