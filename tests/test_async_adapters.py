"""gb.enter, gb.iterate and await_from_green behave exactly like the syntax they stand for
(``async with``, ``async for``, ``await`` in a Task), and NoGreenContext says where it was raised."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any

import anyio.to_thread
import greenlet
import pytest

import greenbridge as gb

Run = Callable[..., Any]


class Plain:
    pass


class TypeLevelCM:
    """``__aenter__`` / ``__aexit__`` on the type, decoys on the instance."""

    def __init__(self, record: list[str]) -> None:
        self.record = record
        self.__aenter__ = self.__aexit__ = lambda *a: pytest.fail("instance attribute used")

    async def __aenter__(self) -> str:  # type: ignore[no-redef]
        self.record.append("type enter")
        return "value"

    async def __aexit__(self, *exc_info: object) -> None:  # type: ignore[no-redef]
        self.record.append("type exit")


@pytest.mark.green
def test_enter_looks_the_methods_up_on_the_type() -> None:
    record: list[str] = []
    with gb.enter(TypeLevelCM(record)) as value:
        assert value == "value"
    assert record == ["type enter", "type exit"]
    only_on_instance = Plain()
    only_on_instance.__aenter__ = only_on_instance.__aexit__ = lambda *a: None  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="needs an async context manager"):
        gb.enter(only_on_instance)  # type: ignore[arg-type]


class NoAnext:
    def __aiter__(self) -> object:
        return object()


class InstanceAiter:
    def __init__(self) -> None:
        self.__aiter__ = lambda: pytest.fail("instance attribute used")


def test_iterate_fails_where_async_for_fails(run_green: Run, run_async: Run) -> None:
    async def native(ait: Any) -> str:
        try:
            async for _ in ait:
                pass
        except TypeError as exc:
            return type(exc).__name__
        return "no error"

    def green(ait: Any) -> str:
        try:
            for _ in gb.iterate(ait):
                pass
        except TypeError as exc:
            assert "__anext__" in str(exc) or "async iterable" in str(exc)
            return type(exc).__name__
        return "no error"

    for ait in (NoAnext(), InstanceAiter()):
        assert run_green(green, ait) == run_async(native, ait) == "TypeError"


# -- await_from_green of buggy awaitables ---------------------------------------------------------


class Yields:
    """An awaitable that yields ``make()`` once: a bug, unless that is None or a blocking Future."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def __await__(self) -> Generator[Any, Any, str]:
        try:
            yield self.make()
        except RuntimeError as exc:
            return f"thrown in: {exc}"
        return "resumed"


def _future_not_blocking() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()  # `yield fut` instead of `yield from fut`


@pytest.mark.parametrize(
    "make", [lambda: 42, _future_not_blocking, lambda: (n for n in ())], ids=["int", "future", "generator"]
)
def test_a_bad_yield_fails_as_under_a_native_await(make: Any, run_green: Run, run_async: Run) -> None:
    async def native() -> str:
        return await Yields(make)

    def green() -> str:
        return gb.await_from_green(Yields(make))

    green_says, native_says = run_green(green), run_async(native)
    # The same error is thrown into the awaitable at its yield; only the Task's repr differs.
    first = native_says.split(" in task ")[0].split(": ")[:2]
    assert green_says.split(" in task ")[0].split(": ")[:2] == first
    assert native_says.startswith("thrown in: ")
    if make is not _future_not_blocking and make() == 42:
        assert green_says == "thrown in: Task got bad yield: 42"


@pytest.mark.green
def test_the_foreign_hand_over_still_works() -> None:
    from sqlalchemy.util import await_only

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert await_only(answer()) == 42  # greenlet.getcurrent().parent.switch(awaitable)


# -- where NoGreenContext was raised -------------------------------------------------------------


@pytest.mark.green
def test_no_green_context_in_a_plain_greenlet_inside_a_fiber_says_so() -> None:
    def inner() -> str:
        try:
            gb.await_from_green(asyncio.sleep(0))
        except gb.NoGreenContext as exc:
            return str(exc)
        return "no error"

    message = greenlet.greenlet(inner).switch()
    assert "in a plain greenlet started inside one" in message
    assert "sw.fork(fn)" in message


def _await_in_this_thread() -> str:
    try:
        gb.await_from_green(asyncio.sleep(0))
    except gb.NoGreenContext as exc:
        return str(exc)
    return "no error"


@pytest.mark.green
def test_no_green_context_in_an_executor_thread_names_the_fixes() -> None:
    message = gb.run_in_thread(_await_in_this_thread)
    assert "in a worker thread of a running event loop" in message
    assert "@gb.as_async" in message
    assert "anyio.from_thread.run(gb.spawn_green, fn)" in message
    assert "asyncio.run_coroutine_threadsafe(gb.spawn_green(fn), loop)" in message


def test_no_green_context_in_an_anyio_worker_thread_names_the_fixes(run_async: Run) -> None:
    async def main() -> str:
        return await anyio.to_thread.run_sync(_await_in_this_thread)  # Starlette's threadpool

    message = run_async(main)
    assert "in a worker thread of a running event loop" in message
    assert "FastAPI and Starlette" in message


def test_no_green_context_in_a_thread_without_a_loop_keeps_its_message() -> None:
    assert "no event loop is running in this thread" in _await_in_this_thread()


# -- one rule for every API taking ``fn, *args``: keyword arguments go to ``fn`` ------------------


def _describe(a: int, *, b: int = 0) -> str:
    return f"a={a} b={b}"


@pytest.mark.green
def test_every_api_taking_a_callable_passes_keyword_arguments_on() -> None:
    assert gb.with_timeout(5, _describe, 1, b=2) == "a=1 b=2"
    assert gb.protect(_describe, 1, b=3) == "a=1 b=3"
    assert gb.run_in_thread(_describe, 1, b=4) == "a=1 b=4"
    record: list[str] = []

    def note(a: int, *, b: int = 0) -> None:
        record.append(_describe(a, b=b))

    with gb.Switch() as sw:
        sw.fork(note, 1, b=6)
        sw.fork_daemon(note, 1, b=7)
        promise = sw.fork_promise(_describe, 1, b=8)
        sw.on_release(note, 1, b=9)
    assert promise.await_() == "a=1 b=8"
    assert record == ["a=1 b=6", "a=1 b=7", "a=1 b=9"]


def test_run_and_spawn_green_pass_keyword_arguments_on(run_async: Run) -> None:
    assert gb.run(_describe, 1, b=5) == "a=1 b=5"

    async def main() -> str:
        return await gb.spawn_green(_describe, 1, b=10)

    assert run_async(main) == "a=1 b=10"
