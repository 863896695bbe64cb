"""Several providers behind one ``LLM``: ``FallbackLLM``, its health state, and the route one
stream takes through the providers.

Why the runtime, not the provider, moves between providers. A fallback written as a provider
(``run_attempt`` trying A, then B) cannot know the one thing that matters: whether the consumer
has already *taken* output. Only the runtime's commit point knows it exactly, so the runtime
asks ``route_for`` for a per-stream ``Route`` and runs each attempt on the provider the route
names. Before the commit any failure moves on, after it no other provider is ever asked (the
stream ends with ``StreamInterrupted``), which is the bug behind duplicated fallback output
elsewhere.

The route. A stream's providers are ordered once, when it starts: the healthy ones in the
order given, then the ones cooling down (so they are skipped, and asked only when every
healthy one failed in this stream). Attempt ``k + 1`` goes to the next provider still
*eligible* in this stream: a provider that failed with an error a retry cannot fix (its 400
for a parameter it does not support, 401/403/404, ``insufficient_quota``) is not asked again
by this stream, but the next provider is, at once, because such an error is about that
server. Moving on to the next provider costs no backoff; coming back to the start of the order
(a *wrap*) backs off (round ``k`` of the formula for the ``k``-th wrap). One budget,
``max_retry``, counts every attempt on every provider. With a single ``LLM`` the route has one
provider, every retry is a wrap, and the rule is the plain retry rule.

Health. ``FallbackLLM`` counts, per provider, the attempts that failed in a row, across all
its streams. At ``failure_threshold`` the provider cools down for ``cooldown`` seconds: later
streams order it last. When the cool-down is over it is ordered in its place again (a probe);
one more failure cools it again at once, one success resets the count. Attempts that lost a
hedge race or were cancelled count neither way. The state lives on the instance; trio runs one
task at a time and every update is a few synchronous statements, so concurrent streams of the
same instance never see it half-updated. ``health`` is a snapshot of it for the caller.
Times are on the trio clock (``trio.current_time()``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs
import trio

from ._core._retry import Step
from ._exceptions import APIError
from ._llm import LLM, AttemptInfo, ChunkEmitter
from ._models import ChatRequest
from ._options import APIConnectOptions, Timeouts

__all__ = ["FallbackEntry", "FallbackLLM", "ProviderHealth", "Route", "route_for"]

TimeoutsSpec = Timeouts | Callable[[int], Timeouts] | None


@attrs.frozen
class FallbackEntry:
    """One provider of a ``FallbackLLM`` with its own time limits.

    ``timeouts`` (a ``Timeouts``, or a function from the stream's 0-based attempt number to
    one) replaces ``APIConnectOptions.timeouts`` for the attempts this provider serves: a cold
    secondary may need a longer first-token limit than the primary. None: the stream's own.
    """

    llm: LLM
    timeouts: TimeoutsSpec = None


@attrs.frozen
class ProviderHealth:
    """A provider's health as a ``FallbackLLM`` saw it at the time of the snapshot.

    ``consecutive_failures``: attempts that failed in a row (a success resets it);
    ``cooling_until``: the trio time until which later streams order it last (None: never
    cooled, or a success since); ``cooling``: whether that time was still ahead.
    """

    label: str
    consecutive_failures: int
    cooling_until: float | None
    cooling: bool


class FallbackLLM(LLM):
    """An ``LLM`` made of several: the attempts of one stream move through them in order.

    ``llms``: ``LLM``s or ``FallbackEntry``s (for per-provider time limits), tried in order.
    ``failure_threshold`` failed attempts in a row cool a provider down for ``cooldown``
    seconds (see ``health``). ``label`` names the whole in ``LLMMetrics.label``; each
    ``AttemptMetrics.label`` names the provider that served the attempt.

    Metrics: listeners registered on the ``FallbackLLM`` (and the stream's ``on_metrics``) get
    the stream's whole record. Each provider's own listeners get, once per stream in which it
    served at least one attempt, the same record narrowed to it: its ``label``, only its
    ``attempts`` and ``request_ids``, token counts summed over those attempts; status, error,
    ttft and duration stay the stream's. A callable registered on both gets the whole record
    only (a listener never hears of one stream twice).

    ``run_attempt`` on its own (outside ``open_llm_stream``) runs attempt ``k`` on provider
    ``k mod n``; the runtime does better (see the module docstring).
    """

    def __init__(
        self,
        llms: Sequence[LLM | FallbackEntry],
        *,
        label: str | None = None,
        failure_threshold: int = 3,
        cooldown: float = 30.0,
    ) -> None:
        entries = tuple(e if isinstance(e, FallbackEntry) else FallbackEntry(e) for e in llms)
        if not entries:
            raise ValueError("FallbackLLM needs at least one LLM")
        for entry in entries:
            if not isinstance(entry.llm, LLM):
                raise TypeError(f"FallbackLLM takes LLMs, not {type(entry.llm).__name__}")
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not cooldown >= 0:
            raise ValueError("cooldown must be >= 0 seconds")
        super().__init__(
            label=label or "fallback(" + ",".join(e.llm.label for e in entries) + ")"
        )
        self._entries = entries
        self._failure_threshold = failure_threshold
        self._cooldown = cooldown
        self._failures = [0] * len(entries)
        self._cooling_until: list[float | None] = [None] * len(entries)

    @property
    def entries(self) -> tuple[FallbackEntry, ...]:
        return self._entries

    @property
    def llms(self) -> tuple[LLM, ...]:
        return tuple(entry.llm for entry in self._entries)

    @property
    def health(self) -> tuple[ProviderHealth, ...]:
        """A snapshot of every provider's health, in the configured order."""
        try:
            now = trio.current_time()
        except RuntimeError:  # outside trio: no clock to compare with
            now = -math.inf
        return tuple(
            ProviderHealth(
                label=entry.llm.label,
                consecutive_failures=self._failures[i],
                cooling_until=self._cooling_until[i],
                cooling=(until := self._cooling_until[i]) is not None and until > now,
            )
            for i, entry in enumerate(self._entries)
        )

    def _order(self, now: float) -> list[int]:
        """The providers' indexes for a stream starting at ``now``: healthy ones first."""
        healthy: list[int] = []
        cooling: list[int] = []
        for i, until in enumerate(self._cooling_until):
            (cooling if until is not None and until > now else healthy).append(i)
        cooling.sort(key=lambda i: self._cooling_until[i] or 0.0)
        return healthy + cooling

    def _report(self, index: int, ok: bool, now: float) -> None:
        if ok:
            self._failures[index] = 0
            self._cooling_until[index] = None
            return
        self._failures[index] += 1
        if self._failures[index] >= self._failure_threshold:
            self._cooling_until[index] = now + self._cooldown

    async def run_attempt(
        self, request: ChatRequest, attempt: AttemptInfo, emit: ChunkEmitter
    ) -> None:
        """Run attempt ``k`` on provider ``k mod n`` (the runtime routes by itself instead).

        Cancellation: as the provider's own ``run_attempt``.
        """
        entry = self._entries[attempt.number % len(self._entries)]
        await entry.llm.run_attempt(request, attempt, emit)

    async def aclose(self) -> None:
        """Close every provider. Idempotent if theirs are."""
        for entry in self._entries:
            await entry.llm.aclose()


class Route:
    """The providers one stream moves through (see the module docstring). Positions index
    the stream's order; the runtime asks for the provider, limits and next position."""

    __slots__ = ("_eligible", "_fallback", "_llms", "_order", "_timeouts", "wraps")

    def __init__(self, fallback: FallbackLLM | None, llms: list[LLM], timeouts: list[TimeoutsSpec],
                 order: list[int]) -> None:
        self._fallback = fallback
        self._llms = llms
        self._timeouts = timeouts
        self._order = order
        self._eligible = [True] * len(order)
        #: How many times the order has wrapped (the backoff round of the next wrap).
        self.wraps = 0

    @property
    def multiple(self) -> bool:
        return len(self._order) > 1

    def provider(self, position: int) -> LLM:
        return self._llms[self._order[position]]

    def timeouts(self, position: int, attempt: int, options: APIConnectOptions) -> Timeouts:
        spec = self._timeouts[self._order[position]]
        if spec is None:
            return options.timeouts_for(attempt)
        if isinstance(spec, Timeouts):
            return spec
        result = spec(attempt)
        if not isinstance(result, Timeouts):
            raise TypeError(
                f"FallbackEntry.timeouts({attempt}) returned {type(result).__name__}, "
                "expected a Timeouts"
            )
        return result

    def succeeded(self, position: int) -> None:
        if self._fallback is not None:
            self._fallback._report(self._order[position], True, trio.current_time())

    def failed(self, position: int, error: BaseException) -> None:
        """An attempt on ``position`` failed with ``error``: health, and whether this stream
        may ask that provider again (only if a retry could help: a retryable ``APIError``)."""
        if not (isinstance(error, APIError) and error.retryable):
            self._eligible[position] = False
        if self._fallback is not None:
            self._fallback._report(self._order[position], False, trio.current_time())

    def next_after(self, position: int) -> tuple[int | None, Step]:
        """The next eligible position after ``position`` and how it is reached."""
        n = len(self._order)
        for step in range(1, n + 1):
            candidate = (position + step) % n
            if self._eligible[candidate]:
                return candidate, ("wrap" if candidate <= position else "next")
        return None, None


def route_for(llm: LLM) -> Route:
    """A fresh route for one stream of ``llm``, ordered by the health as it is now."""
    if isinstance(llm, FallbackLLM):
        entries = llm.entries
        return Route(
            llm,
            [entry.llm for entry in entries],
            [entry.timeouts for entry in entries],
            llm._order(trio.current_time()),
        )
    return Route(None, [llm], [None], [0])
