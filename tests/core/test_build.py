"""The slot-filling builders (trio_llmstream._core._build) that every protocol's assembler uses.

They must give genuine public objects, equal to constructed ones, and never a fresh empty list:
an empty ``tool_calls`` or ``choices`` is the model's shared read-only one (issue 16: one
GC-tracked object fewer per chunk).
"""

from __future__ import annotations

import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_llmstream import (
    ChatChunk,
    Choice,
    ChoiceDelta,
    CompletionUsage,
    FunctionCall,
    ProviderItem,
)
from trio_llmstream._core._build import (
    NO_CALLS,
    NO_CHOICES,
    make_choice,
    make_chunk,
    make_delta,
)

_opt_text = st.none() | st.text(max_size=5)
_calls = st.lists(st.builds(FunctionCall, st.text(max_size=3), st.text(max_size=3), st.text()))
_items = st.lists(st.builds(ProviderItem, st.text(max_size=3), st.text(max_size=3), st.text()))


@given(
    role=st.sampled_from([None, "assistant"]),
    content=_opt_text,
    calls=_calls,
    reasoning=_opt_text,
    items=_items,
    index=st.integers(0, 3),
    finish=_opt_text,
    native=_opt_text,
    usage=st.none() | st.builds(CompletionUsage, st.integers(0, 9), st.integers(0, 9)),
    n_choices=st.integers(0, 2),
)
def test_builders_give_what_the_constructors_give(
    role: str | None,
    content: str | None,
    calls: list[FunctionCall],
    reasoning: str | None,
    items: list[ProviderItem],
    index: int,
    finish: str | None,
    native: str | None,
    usage: CompletionUsage | None,
    n_choices: int,
) -> None:
    given_calls = list(calls)
    delta = make_delta(role, content, given_calls, reasoning, items)  # type: ignore[arg-type]
    expected_delta = ChoiceDelta(
        role=role,  # type: ignore[arg-type]
        content=content,
        tool_calls=calls,
        reasoning=reasoning,
        provider_items=tuple(items),
    )
    assert type(delta) is ChoiceDelta
    assert delta == expected_delta
    assert repr(delta) == repr(expected_delta)
    # A non-empty list is kept as given (no copy); an empty one becomes the shared one.
    assert delta.tool_calls is (given_calls if calls else NO_CALLS)

    choice = make_choice(delta, index, finish, native)
    assert type(choice) is Choice
    assert choice == Choice(expected_delta, index, finish, native)

    choices = [choice] * n_choices
    chunk = make_chunk("r", choices, usage)
    assert type(chunk) is ChatChunk
    assert chunk == ChatChunk("r", [Choice(expected_delta, index, finish, native)] * n_choices,
                              usage)  # fmt: skip
    assert chunk.choices is (choices if choices else NO_CHOICES)


def test_existing_call_forms_still_work() -> None:
    # The other protocols' assemblers call the builders positionally, four or five arguments
    # for make_delta, three or four for make_choice, with a fresh [] for no calls.
    delta = make_delta("assistant", None, [], None)
    assert delta == ChoiceDelta(role="assistant")
    assert delta.tool_calls is NO_CALLS
    assert make_delta(None, "x", [], None, ()).content == "x"
    assert make_choice(delta, 0, None) == Choice(delta)
    assert make_chunk("r", [], None).choices is NO_CHOICES


def test_a_built_text_chunk_holds_four_tracked_objects() -> None:
    chunk = make_chunk("r", [make_choice(make_delta(None, "hi", [], None), 0, None)], None)
    choice = chunk.choices[0]
    parts = [chunk, chunk.choices, choice, choice.delta]
    assert all(gc.is_tracked(p) for p in parts)
    assert choice.delta.tool_calls is NO_CALLS
    assert not gc.is_tracked(choice.delta.provider_items)  # the empty tuple


def test_a_built_chunk_cannot_grow_through_its_empty_lists() -> None:
    chunk = make_chunk("r", [make_choice(make_delta(None, "hi", [], None), 0, None)], None)
    with pytest.raises(TypeError, match="read-only"):
        chunk.choices[0].delta.tool_calls.append(FunctionCall("c", "f", "{}"))
    usage_only = make_chunk("r", [], CompletionUsage(1, 2, 3))
    with pytest.raises(TypeError, match="read-only"):
        usage_only.choices.append(chunk.choices[0])
    assert usage_only.choices == []
