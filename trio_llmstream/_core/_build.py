"""Cheap construction of the public chunk objects, shared by every protocol's assembler.

``ChatChunk``, ``Choice`` and ``ChoiceDelta`` are frozen, slotted attrs classes: safe to hand
to users, but building one through attrs' generated ``__init__`` costs several times what
filling its slots does, and a stream builds three per token. So each class gets a private
*twin*: a subclass adding no slots (so the same memory layout), with ``object``'s plain C-level
``__init__``/``__setattr__``. Its instances take attribute stores at full speed (the
interpreter specialises them to direct slot writes); once every slot is filled, assigning
``__class__`` turns the instance into a genuine, frozen instance of the public class. A twin
never escapes the core.

This only works while the public classes stay slotted, without validators, converters or a
post-init hook, and while every builder fills every field: ``_check_fast_construction`` fails
at import when a class's fields no longer match ``FAST_FIELDS``, so adding a field to the data
model cannot silently leave a slot unset.

Empty lists: a chunk without tool calls gets ``NO_CALLS`` and a chunk without choices
``NO_CHOICES``, the model's one shared read-only empty list, never a fresh ``[]``: GC-tracked
objects per text chunk go from five to four (the chunk, its ``choices`` list, the choice, the
delta), which is what collections under concurrency are paid for (benchmarks/PROFILE.md, cost
1). ``make_delta`` and ``make_chunk`` substitute them for an empty list they are given; a copy
of the construction inlined elsewhere should store them directly (``d.tool_calls = NO_CALLS``).
The ``choices`` of a chunk with choices stays a fresh list (not a tuple): it holds a tracked
``Choice``, so a tuple would be tracked as well, and ``chunk.choices == [...]`` must keep
working.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import attrs

from .._models import NO_CALLS as NO_CALLS
from .._models import NO_CHOICES as NO_CHOICES
from .._models import ChatChunk, ChatRole, Choice, ChoiceDelta, CompletionUsage, FunctionCall
from .._models import ProviderItem as ProviderItem

__all__ = [
    "NO_CALLS",
    "NO_CHOICES",
    "FillChoice",
    "FillChunk",
    "FillDelta",
    "make_choice",
    "make_chunk",
    "make_delta",
]


def _twin(cls: type) -> Callable[[], Any]:
    return cast(
        "Callable[[], Any]",
        type(
            f"_Filling{cls.__name__}",
            (cls,),
            {
                "__slots__": (),
                "__init__": object.__init__,
                "__setattr__": object.__setattr__,
                "__delattr__": object.__delattr__,
                "__module__": __name__,
            },
        ),
    )


FillDelta: Final = _twin(ChoiceDelta)
FillChoice: Final = _twin(Choice)
FillChunk: Final = _twin(ChatChunk)

# The fields the builders (and any inlined copy of them) set, in order.
FAST_FIELDS: Final = {
    ChoiceDelta: ("role", "content", "tool_calls", "reasoning", "provider_items"),
    Choice: ("delta", "index", "finish_reason", "native_finish_reason"),
    ChatChunk: ("request_id", "choices", "usage"),
}


def _check_fast_construction() -> None:
    """Fail at import if the public classes no longer allow construction by filling slots."""
    for cls, names in FAST_FIELDS.items():
        fields = attrs.fields(cls)
        if tuple(f.name for f in fields) != names:
            raise RuntimeError(f"{cls.__name__} fields changed; update _core/_build.py")
        if "__slots__" not in cls.__dict__ or hasattr(cls, "__attrs_post_init__"):
            raise RuntimeError(f"{cls.__name__} must stay slotted, without post-init")
        for f in fields:
            if f.validator is not None or f.converter is not None:
                raise RuntimeError(f"{cls.__name__}.{f.name} has a validator or converter")


_check_fast_construction()


def make_delta(
    role: ChatRole | None,
    content: str | None,
    tool_calls: list[FunctionCall],
    reasoning: str | None,
    provider_items: Sequence[ProviderItem] = (),
) -> ChoiceDelta:
    """``tool_calls`` is kept as given (not copied) unless empty: then ``NO_CALLS``."""
    d = FillDelta()
    d.role = role
    d.content = content
    d.tool_calls = tool_calls or NO_CALLS
    d.reasoning = reasoning
    d.provider_items = tuple(provider_items)
    d.__class__ = ChoiceDelta
    return cast(ChoiceDelta, d)


def make_choice(
    delta: ChoiceDelta,
    index: int,
    finish_reason: str | None,
    native_finish_reason: str | None = None,
) -> Choice:
    """``native_finish_reason``: the provider's own word where its vocabulary differs."""
    c = FillChoice()
    c.delta = delta
    c.index = index
    c.finish_reason = finish_reason
    c.native_finish_reason = native_finish_reason
    c.__class__ = Choice
    return cast(Choice, c)


def make_chunk(
    request_id: str, choices: list[Choice], usage: CompletionUsage | None
) -> ChatChunk:
    """``choices`` is kept as given (not copied) unless empty: then ``NO_CHOICES``."""
    k = FillChunk()
    k.request_id = request_id
    k.choices = choices or NO_CHOICES
    k.usage = usage
    k.__class__ = ChatChunk
    return cast(ChatChunk, k)
