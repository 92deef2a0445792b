"""Async context managers, async iterators and blocking calls, usable from green code."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import types
from collections.abc import AsyncIterable, Callable, Generator, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, TypeVar, TypeVarTuple

from ._core import _no_green_message, await_from_green, in_green
from ._errors import NoGreenContext

__all__ = ("enter", "iterate", "run_in_thread")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _EnteredAsync(AbstractContextManager[T]):
    """A synchronous view of one async context manager, for green code.

    ``__aenter__`` and ``__aexit__`` are looked up on the type, both at once, as ``async with``
    does: an instance attribute of either name is ignored.
    """

    __slots__ = ("_acm", "_aenter", "_aexit")

    def __init__(self, acm: AbstractAsyncContextManager[T], aenter: Any, aexit: Any) -> None:
        self._acm = acm
        self._aenter = aenter
        self._aexit = aexit

    def __enter__(self) -> T:
        return await_from_green(self._aenter(self._acm))  # type: ignore[no-any-return]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        return await_from_green(self._aexit(self._acm, exc_type, exc, tb))  # type: ignore[no-any-return]


def enter(acm: AbstractAsyncContextManager[T]) -> AbstractContextManager[T]:
    """Use an async context manager from green code: ``with gb.enter(acm) as value: ...``.

    ``__aenter__`` and ``__aexit__`` are looked up on the type, as ``async with`` does, and awaited
    with ``await_from_green``, so both are suspension (and cancellation) points and run inside the
    fiber's Task -- ``asyncio.timeout()`` and ``TaskGroup`` work this way. Raises ``TypeError`` at
    once when ``acm`` is not an async context manager; ``NoGreenContext`` on entry outside green
    code.
    """
    cls = type(acm)
    aenter = getattr(cls, "__aenter__", None)
    aexit = getattr(cls, "__aexit__", None)
    if aenter is None or aexit is None:
        hint = " (it is a plain context manager: use 'with' directly)" if hasattr(cls, "__enter__") else ""
        raise TypeError(f"gb.enter() needs an async context manager, got {cls.__name__!r}{hint}")
    return _EnteredAsync(acm, aenter, aexit)


def iterate(aiterable: AsyncIterable[T]) -> Iterator[T]:
    """Iterate an async iterable from green code: ``for item in gb.iterate(ait): ...``.

    ``__aiter__`` and ``__anext__`` are looked up on the type, as ``async for`` does. Each step
    awaits ``__anext__`` with ``await_from_green`` (a suspension point). When the loop is left
    early (``break``, an exception), an async generator is closed with ``aclose()`` right away,
    so its ``finally`` blocks run in order. Raises ``TypeError`` at once when the argument is not
    async-iterable, or when its ``__aiter__`` returns an object without ``__anext__``.
    """
    cls = type(aiterable)
    aiter = getattr(cls, "__aiter__", None)
    if aiter is None:
        hint = " (it is a plain iterable: use 'for' directly)" if hasattr(cls, "__iter__") else ""
        raise TypeError(f"gb.iterate() needs an async iterable, got {cls.__name__!r}{hint}")
    iterator = aiter(aiterable)
    anext = getattr(type(iterator), "__anext__", None)
    if anext is None:
        raise TypeError(
            f"gb.iterate(): __aiter__ of {cls.__name__!r} returned an object that does not "
            f"implement __anext__: {type(iterator).__name__!r}"
        )
    return _iterate(iterator, anext)


def _iterate(it: Any, anext: Any) -> Generator[Any, None, None]:
    exhausted = False
    try:
        while True:
            try:
                item = await_from_green(anext(it))
            except StopAsyncIteration:
                exhausted = True
                return
            yield item
    finally:
        aclose = getattr(it, "aclose", None)
        # Closed early: finish the async generator now, in order, if we still can. Outside green
        # code (a generator collected by the GC) asyncio's async-generator hooks finish it.
        if not exhausted and aclose is not None and in_green():
            await_from_green(aclose())


def run_in_thread(fn: Callable[[*Ts], T], /, *args: *Ts) -> T:
    """Run a truly blocking call in the loop's default executor; the fiber waits, the loop runs.

    The caller's contextvars are copied into the thread. A suspension point: if the fiber is
    cancelled meanwhile, ``CancelledError`` is raised here at once, but the thread cannot be
    stopped and runs ``fn`` to its end (its result is then dropped). Raises ``NoGreenContext``
    outside green code, without starting ``fn``.
    """
    if not in_green():
        raise NoGreenContext(_no_green_message("gb.run_in_thread()"))
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await_from_green(loop.run_in_executor(None, call))
