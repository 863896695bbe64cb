"""Hypothesis strategies for chunk sequences and fault plans (needs ``hypothesis``).

- :func:`chunk_sequences` draws a response as ``ChatChunk``s: an optional role chunk, text and
  reasoning pieces, complete tool calls, a finish chunk and an optional usage chunk;
- :func:`fault_plans` draws a script for ``ScriptedLLM``: per attempt, the chunks, an optional
  fault after some chunks, delays and batch sizes.
"""

from __future__ import annotations

from hypothesis import strategies as st

from .._exceptions import APIStatusError
from .._models import ChatChunk, Choice, ChoiceDelta, CompletionUsage, FunctionCall
from ._scripted import Fault, FaultKind, ScriptedAttempt

__all__ = ["chunk_sequences", "fault_plans", "faults"]

_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8
)


@st.composite
def chunk_sequences(
    draw: st.DrawFn,
    *,
    min_visible: int = 0,
    max_visible: int = 8,
    request_id: str | None = None,
) -> list[ChatChunk]:
    """A plausible response's chunks; ``min_visible``..``max_visible`` carry visible output."""
    rid = request_id or draw(st.sampled_from(["req-a", "req-b", "req-c"]))
    chunks: list[ChatChunk] = []
    if draw(st.booleans()):
        chunks.append(ChatChunk(rid, [Choice(ChoiceDelta(role="assistant"))]))
    count = draw(st.integers(min_visible, max_visible))
    calls = 0
    for _ in range(count):
        kind = draw(st.sampled_from(["text", "text", "text", "reasoning", "tool"]))
        if kind == "text":
            delta = ChoiceDelta(content=draw(_text))
        elif kind == "reasoning":
            delta = ChoiceDelta(reasoning=draw(_text))
        else:
            calls += 1
            delta = ChoiceDelta(
                tool_calls=[FunctionCall(f"call_{calls}", "tool", f'{{"n": {calls}}}')]
            )
        chunks.append(ChatChunk(rid, [Choice(delta)]))
    finish = "tool_calls" if calls else "stop"
    chunks.append(ChatChunk(rid, [Choice(ChoiceDelta(), finish_reason=finish)]))
    if draw(st.booleans()):
        n = draw(st.integers(0, 1000))
        chunks.append(ChatChunk(rid, [], usage=CompletionUsage(n, 7, n + 7)))
    return chunks


def faults(max_after: int = 10) -> st.SearchStrategy[Fault]:
    """A fault of any kind after 0..max_after chunks."""
    after = st.integers(0, max_after)
    return st.one_of(
        st.builds(
            Fault,
            st.just(FaultKind.ERROR),
            after,
            st.sampled_from([429, 500, 503, 400, 401]).map(
                lambda code: APIStatusError("scripted", status_code=code)
            ),
        ),
        st.builds(Fault, st.just(FaultKind.STALL), after),
        st.builds(Fault, st.just(FaultKind.TRUNCATE), after),
        st.builds(
            Fault,
            st.just(FaultKind.PROVIDER_ERROR),
            after,
            provider_type=st.sampled_from(["server_error", "invalid_request_error"]),
        ),
        st.builds(Fault, st.just(FaultKind.BUG), after),
    )


@st.composite
def fault_plans(
    draw: st.DrawFn,
    *,
    max_attempts: int = 4,
    fault_probability: float = 0.6,
    aligned: bool = False,
) -> list[ScriptedAttempt]:
    """A script of 1..max_attempts attempts, each possibly failing.

    ``aligned=True`` draws attempts that send at exact multiples of 0.25 s from their start
    (``ScriptedAttempt.aligned``), so that time limits that are multiples of 0.25 s fire at
    the very instant a batch arrives.
    """
    delays = [0.0, 0.25, 0.5] if aligned else [0.0, 0.0, 0.01, 0.5]
    n = draw(st.integers(1, max_attempts))
    plan = []
    for _ in range(n):
        chunks = draw(chunk_sequences())
        fault = None
        if draw(st.floats(0, 1)) < fault_probability:
            fault = draw(faults(max_after=len(chunks)))
        plan.append(
            ScriptedAttempt(
                chunks=chunks,
                fault=fault,
                delay=draw(st.sampled_from(delays)),
                batch_size=draw(st.sampled_from([1, 1, 2, 3, 8])),
                aligned=aligned,
            )
        )
    return plan
