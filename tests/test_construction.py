"""Live objects come only from their ``open_*`` function (NoPublicConstructor)."""

from __future__ import annotations

import pytest

from trio_llmstream import Turn


def test_turn_cannot_be_built_directly() -> None:
    with pytest.raises(TypeError, match=r"Turn has no public constructor; use open_turn\(\)"):
        Turn(segments=(), lookahead=0, lookahead_items=0, handler_nursery=None)
