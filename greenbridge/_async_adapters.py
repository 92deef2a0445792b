"""Async context managers, async iterators and blocking calls, usable from green code; and
``as_async``, which also turns a direct-style generator function into an async generator
function (a framework's ``yield`` dependency whose body runs in fibers)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import types
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Coroutine, Generator, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, ParamSpec, TypeVar, overload

from . import _core
from ._core import _no_green_message, await_from_green, in_green, spawn_green
from ._errors import NoGreenContext

__all__ = ("as_async", "enter", "iterate", "run_in_thread")

T = TypeVar("T")
Y = TypeVar("Y")
P = ParamSpec("P")


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


def run_in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a truly blocking call in the loop's default executor; the fiber waits, the loop runs.

    The caller's contextvars are copied into the thread. A suspension point: if the fiber is
    cancelled meanwhile, ``CancelledError`` is raised here at once, but the thread cannot be
    stopped and runs ``fn`` to its end (its result is then dropped). Raises ``NoGreenContext``
    outside green code, without starting ``fn``.
    """
    if not in_green():
        raise NoGreenContext(_no_green_message("gb.run_in_thread()"))
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await_from_green(loop.run_in_executor(None, call))


@overload
def as_async(  # type: ignore[overload-overlap]  # a generator function: the first overload wins
    fn: Callable[P, Generator[Y, Any, Any]],
) -> Callable[P, AsyncGenerator[Y, Any]]: ...
@overload
def as_async(fn: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]: ...
def as_async(fn: Callable[P, Any]) -> Callable[P, Any]:
    """Decorator: direct-style code becomes async code that runs it in green fibers.

    A plain ``def`` becomes an ``async def`` that runs it in a fiber through ``spawn_green``. A
    generator function (``def get_db(): with Session() as s: yield s``) becomes an async
    generator function: each step of the generator -- up to the next ``yield``, and its ending
    (``aclose()``, a thrown exception, normal exhaustion) -- runs in a fiber of the Task that
    drives the async generator, so its ``finally`` and ``with`` exits run in green code, on the
    loop, never in a thread. Frameworks that run plain ``def`` endpoints and dependencies in
    worker threads (FastAPI, Starlette) run the decorated ones on the loop instead. Signature and
    metadata are kept (``functools.wraps``). Each step is a suspension point.
    """
    if inspect.isgeneratorfunction(fn):
        return _as_async_generator(fn)
    return _core.as_async(fn)


def _advance(step: Callable[[Any], Any], value: Any) -> tuple[bool, Any]:
    """One step of a generator, in a fiber: (False, yielded) or (True, None) once finished."""
    try:
        return False, step(value)
    except StopIteration:  # not raised out of the fiber: a coroutine may not raise it
        return True, None


def _as_async_generator(fn: Callable[P, Generator[Y, Any, Any]]) -> Callable[P, AsyncGenerator[Y, Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Y, Any]:
        gen = fn(*args, **kwargs)  # runs nothing of the body yet
        step: Callable[[Any], Any] = gen.send
        value: Any = None
        try:
            while True:
                done, item = await spawn_green(_advance, step, value)
                if done:
                    return
                try:
                    value = yield item
                except GeneratorExit:
                    raise  # aclose(): the generator is closed below, in a fiber
                except BaseException as exc:  # athrow(): into the generator, in a fiber
                    step, value = gen.throw, exc
                else:
                    step = gen.send
        finally:
            if inspect.getgeneratorstate(gen) != inspect.GEN_CLOSED:  # at a yield, or unstarted
                await spawn_green(gen.close)

    return wrapper
