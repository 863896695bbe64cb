"""The pure retry decision, exhaustively."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    ProviderError,
    StreamProtocolError,
    StreamTruncatedError,
)
from trio_llmstream._core._retry import GiveUp, Retry, backoff_delay, decide_retry

errors = st.one_of(
    st.builds(lambda c: APIStatusError("x", status_code=c), st.integers(400, 599)),
    st.builds(
        lambda c, after: APIStatusError("x", status_code=c, retry_after=after),
        st.sampled_from([429, 503, 400]),
        st.sampled_from([0.0, 1.0, 29.5, 30.0, 30.001, 600.0]),
    ),
    st.builds(lambda: APIConnectionError("down")),
    st.builds(lambda: APITimeoutError("idle", 1.0)),
    st.builds(lambda t: ProviderError("x", type=t),
              st.sampled_from(["server_error", "overloaded_error", "invalid_request_error"])),
    st.builds(lambda: StreamTruncatedError("cut")),
    st.builds(lambda: StreamProtocolError("bad")),
    st.builds(lambda: ValueError("bug")),
)


@given(
    error=errors,
    attempt=st.integers(0, 10),
    max_retry=st.integers(0, 5),
    committed=st.booleans(),
    time_left=st.one_of(st.just(math.inf), st.floats(0, 100)),
    seed=st.integers(0, 1000),
)
def test_retry_iff_the_rule_allows(
    error: BaseException, attempt: int, max_retry: int, committed: bool, time_left: float,
    seed: int,
) -> None:
    options = APIConnectOptions(max_retry=max_retry)
    decision = decide_retry(
        options, attempt=attempt, error=error, committed=committed,
        time_left=time_left, rng=random.Random(seed),
    )
    retry_after = getattr(error, "retry_after", None)
    rule = (
        getattr(error, "retryable", False)
        and not isinstance(error, ValueError)
        and not committed
        and attempt + 1 <= max_retry
    )
    too_long = retry_after is not None and retry_after > options.retry_after_cap
    if isinstance(decision, Retry):
        assert rule
        assert not too_long
        assert 0 <= decision.delay < time_left
        if retry_after is None:
            assert decision.delay <= options.max_retry_interval
        else:
            # The server's delay exactly: never sooner (RFC 9110), never clamped.
            assert decision.delay == retry_after
    else:
        assert isinstance(decision, GiveUp)
        if rule:
            if too_long:
                assert f"wait {retry_after:g}s" in decision.reason
            else:
                assert "deadline" in decision.reason


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (403, False), (404, False), (408, True), (409, True),
     (422, False), (429, True), (499, False), (500, True), (502, True), (503, True)],
)
def test_status_classification(status: int, retryable: bool) -> None:
    assert APIStatusError("x", status_code=status).retryable is retryable


def test_provider_error_classified_by_type_not_status() -> None:
    assert ProviderError("x", type="overloaded_error").retryable
    assert ProviderError("x", type="server_error").retryable
    assert ProviderError("x", code="rate_limit_exceeded").retryable
    assert ProviderError("x", code=503).retryable
    assert not ProviderError("x", type="invalid_request_error").retryable
    assert not ProviderError("x").retryable


def test_backoff_grows_and_is_capped() -> None:
    options = APIConnectOptions(retry_interval=0.5, max_retry_interval=4.0)
    rng = random.Random(0)
    for attempt in range(12):
        delay = backoff_delay(options, attempt, rng)
        nominal = min(4.0, 0.5 * 2**attempt)
        assert nominal * 0.5 <= delay <= nominal


def test_retry_after_replaces_backoff_up_to_the_cap() -> None:
    options = APIConnectOptions(retry_after_cap=5.0)
    rng = random.Random(0)
    ask = APIStatusError("x", status_code=429, retry_after=2.5)
    assert decide_retry(options, attempt=0, error=ask, committed=False, rng=rng) == Retry(2.5)
    at_cap = APIStatusError("x", status_code=429, retry_after=5.0)
    assert decide_retry(options, attempt=0, error=at_cap, committed=False, rng=rng) == Retry(5.0)
    decision = decide_retry(
        options, attempt=0, error=ask, committed=False, time_left=1.0, rng=rng
    )
    assert isinstance(decision, GiveUp)


def test_retry_after_above_the_cap_gives_up_at_once_and_keeps_the_delay() -> None:
    # Issue 10, item 6: Retry-After: 600 was clamped to the 30 s cap and retried three times
    # (90 s, then RetriesExhaustedError). Now: give up at once, the delay stays on the error.
    options = APIConnectOptions()  # retry_after_cap=30
    greedy = APIStatusError("x", status_code=429, retry_after=600)
    decision = decide_retry(
        options, attempt=0, error=greedy, committed=False, rng=random.Random(0)
    )
    assert decision == GiveUp(
        "the server asked to wait 600s before retrying, more than retry_after_cap=30s"
    )
    assert greedy.retry_after == 600


def test_jitter_is_deterministic_under_a_seed() -> None:
    options = APIConnectOptions()
    a = [backoff_delay(options, k, random.Random(7)) for k in range(5)]
    b = [backoff_delay(options, k, random.Random(7)) for k in range(5)]
    assert a == b
