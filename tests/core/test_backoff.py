"""The one jittered backoff formula, shared by the retry decision and the journal's loops."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream._core._backoff import jittered_backoff


@given(
    initial=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=60.0),
    failures=st.integers(min_value=0, max_value=5000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_is_the_capped_doubling_scaled_down_by_at_most_half(
    initial: float, cap: float, failures: int, seed: int
) -> None:
    delay = jittered_backoff(initial, cap, failures, random.Random(seed))
    ceiling = min(cap, initial * 2.0 ** min(failures, 64))
    assert 0.5 * ceiling <= delay <= ceiling
    assert delay <= cap


def test_delays_double_until_the_cap() -> None:
    class Top(random.Random):
        def random(self) -> float:
            return 1.0  # uniform(0.5, 1.0) -> 1.0: the undamped delay

    rng = Top()
    assert [jittered_backoff(0.1, 1.0, k, rng) for k in range(6)] == [
        0.1, 0.2, 0.4, 0.8, 1.0, 1.0,
    ]


def test_same_seed_same_sequence_different_seeds_spread() -> None:
    a = [jittered_backoff(1.0, 8.0, k, random.Random(7)) for k in range(4)]
    b = [jittered_backoff(1.0, 8.0, k, random.Random(7)) for k in range(4)]
    assert a == b
    spread = {jittered_backoff(1.0, 8.0, 3, random.Random(seed)) for seed in range(50)}
    assert len(spread) > 40
