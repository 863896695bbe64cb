"""Jittered exponential backoff, the one formula every retry loop of the library uses.

After the ``k``-th consecutive failure (0-based) the delay is ``min(cap, initial * 2**k)``
scaled by a factor drawn uniformly from [0.5, 1). Doubling backs off quickly from a struggling
server; the cap keeps a long outage from turning into minutes of silence once it ends. The
jitter scales *down*, never up, so the cap stays a true cap, and its spread keeps a fleet of
clients that failed together from retrying in step (the thundering herd). The random source is
passed in, so tests can make the sequence exact.
"""

from __future__ import annotations

import random

__all__ = ["jittered_backoff"]


def jittered_backoff(initial: float, cap: float, failures: int, rng: random.Random) -> float:
    """The delay after the 0-based ``failures``-th consecutive failure (see the module essay)."""
    # 2**k overflows floats past ~1000; the cap is reached long before.
    base = initial * (2.0 ** min(failures, 64))
    return min(cap, base) * rng.uniform(0.5, 1.0)
