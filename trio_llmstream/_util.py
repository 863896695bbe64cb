"""Small structured-concurrency helpers shared by the async context managers of the library."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, NoReturn, TypeVar

import trio

__all__ = ["InBandError", "NoPublicConstructor", "open_owner_nursery"]

_T = TypeVar("_T")
_E = TypeVar("_E", bound=BaseException)


class NoPublicConstructor(type):
    """Metaclass of the classes whose instances only an ``open_*`` function makes.

    A live stream or turn is only valid inside the block that owns its tasks, so calling the
    class is a ``TypeError`` naming the function to use (the class's ``_made_by``); the library
    builds instances with ``Cls._create(...)``. Combine with ``typing.final``: a subclass could
    not be built either.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        made_by = getattr(cls, "_made_by", "the library's open_* functions")
        raise TypeError(f"{cls.__qualname__} has no public constructor; use {made_by}")

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


@asynccontextmanager
async def open_owner_nursery(
    on_exit: Callable[[BaseException | None], object],
) -> AsyncIterator[trio.Nursery]:
    """A nursery for the tasks an ``open_*`` context manager owns, whose body is the caller's.

    When the block ends — normally, by the caller's exception or by cancellation —
    ``on_exit(exc)`` is called (with the block's exception, or None) so the owner can stop its
    tasks, and the nursery waits for them. The block's own exception is then re-raised
    *outside* the nursery, so it propagates as itself: with strict exception groups a nursery
    would wrap it in an ``ExceptionGroup``, and a user's ``except KeyError`` around
    ``async with open_llm_stream(...)`` would stop matching.
    """
    body_exc: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except BaseException as exc:
            body_exc = exc
        finally:
            on_exit(body_exc)
    if body_exc is not None:
        try:
            raise body_exc
        finally:
            body_exc = None  # break the frame <-> traceback reference cycle


class InBandError(Generic[_E]):
    """The one rule for the error of the library's iterators (a stream, a turn, a tool loop).

    The error is raised *in band*: from the iterator, after every item delivered before it,
    exactly once (a second call ends iteration), never after the owning block has exited (the
    error then stays readable as ``.error``), and as the very exception object that ended the
    source, so ``except StreamInterrupted`` and ``__cause__`` work as expected. Call
    :meth:`raise_once` when the items are exhausted, outside any ``except`` block, so the
    exception's ``__context__`` is not overwritten with the end-of-channel signal.
    """

    __slots__ = ("error", "raised")

    def __init__(self) -> None:
        self.error: _E | None = None
        self.raised = False

    def raise_once(self, *, closed: bool = False) -> None:
        """Raise the error if there is one, it was not raised yet and ``closed`` is false."""
        error = self.error
        if error is not None and not self.raised and not closed:
            self.raised = True
            raise error

