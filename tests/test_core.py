"""The crossing contract (DESIGN.md section 1), one test per point, on the selected backend."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from _green_helpers import cancel_once_started

import greenbridge as gb
from greenbridge import _core

Run = Callable[..., Any]

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def ready(x: int) -> int:
    return x


class Boom(Exception):
    pass


class Fatal(BaseException):
    pass


# -- 1. results and exceptions cross both ways ------------------------------------------------------


def test_results_cross_both_ways(run_async: Run) -> None:
    def green(x: int) -> int:
        return gb.await_from_green(double(x)) + gb.await_from_green(ready(x))

    async def main() -> int:
        return await gb.spawn_green(green, 5)

    assert run_async(main) == 15


def test_run_returns_the_result(run_green: Run) -> None:
    def green(a: int, *, b: int) -> tuple[int, int]:
        return gb.await_from_green(double(a)), b

    assert run_green(green, 3, b=4) == (6, 4)


def test_awaitables_of_every_kind(run_green: Run) -> None:
    class Custom:
        def __await__(self) -> Any:
            yield from asyncio.sleep(0).__await__()
            return "custom"

    def green() -> list[Any]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_soon(fut.set_result, "future")
        task = asyncio.ensure_future(double(21))
        done = loop.create_future()
        done.set_result("done")
        return [
            gb.await_from_green(fut),
            gb.await_from_green(task),
            gb.await_from_green(done),
            gb.await_from_green(Custom()),
            gb.await_from_green(asyncio.sleep(0, "sleep")),
        ]

    assert run_green(green) == ["future", 42, "done", "custom", "sleep"]


@pytest.mark.parametrize("exc_type", [Boom, Fatal, KeyError])
def test_exceptions_cross_from_async_to_green(run_green: Run, exc_type: type[BaseException]) -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise exc_type("from async")

    def green() -> str:
        try:
            gb.await_from_green(fails())
        except exc_type as exc:
            return str(exc)
        return "not raised"

    assert run_green(green) == repr("from async") if exc_type is KeyError else "from async"


@pytest.mark.parametrize("exc_type", [Boom, Fatal])
def test_exceptions_cross_from_green_to_async(run_async: Run, exc_type: type[BaseException]) -> None:
    def green() -> None:
        gb.await_from_green(asyncio.sleep(0))
        raise exc_type("from green")

    async def main() -> str:
        try:
            await gb.spawn_green(green)
        except exc_type as exc:
            return str(exc)
        return "not raised"

    assert run_async(main) == "from green"


def _frames(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


# The frames greenbridge itself puts on a traceback: the driver when an exception leaves green
# code; await_from_green when one enters it (the C accelerator's driver and await_from_green have
# no frame).
DRIVER_FRAMES = ["spawn_green"] if _core.SPEEDUPS else ["spawn_green", "_drive"]
AWAIT_FRAMES = [] if _core.SPEEDUPS else ["await_from_green"]


def test_traceback_from_green_shows_user_frames_and_few_bridge_frames(run_async: Run) -> None:
    def inner_green() -> None:
        gb.await_from_green(asyncio.sleep(0))
        raise Boom("deep")

    def outer_green() -> None:
        inner_green()

    async def main() -> BaseException:
        try:
            await gb.spawn_green(outer_green)
        except Boom as exc:
            return exc
        raise AssertionError("not raised")

    exc = run_async(main)
    assert _frames(exc) == ["main", *DRIVER_FRAMES, "outer_green", "inner_green"]


def test_traceback_from_async_shows_user_frames_and_few_bridge_frames(run_green: Run) -> None:
    async def inner_async() -> None:
        await asyncio.sleep(0)
        raise Boom("deep")

    async def outer_async() -> None:
        await inner_async()

    def green() -> BaseException:
        try:
            gb.await_from_green(outer_async())
        except Boom as exc:
            return exc
        raise AssertionError("not raised")

    exc = run_green(green)
    assert _frames(exc) == ["green", *AWAIT_FRAMES, "outer_async", "inner_async"]


def test_traceback_of_an_immediate_failure(run_green: Run) -> None:
    async def fails_at_once() -> None:
        raise Boom("now")

    def green() -> BaseException:
        try:
            gb.await_from_green(fails_at_once())
        except Boom as exc:
            return exc
        raise AssertionError("not raised")

    assert _frames(run_green(green)) == ["green", *AWAIT_FRAMES, "fails_at_once"]


# -- 2. cancellation crosses both ways -----------------------------------------------------------


def test_cancelling_the_task_cancels_the_awaited_coroutine_first(run_async: Run) -> None:
    record: list[str] = []

    async def awaited(started: asyncio.Event) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            record.append("coroutine saw CancelledError")
            raise

    def green(started: asyncio.Event) -> None:
        try:
            gb.await_from_green(awaited(started))
        except asyncio.CancelledError:
            record.append("green call site saw CancelledError")
            raise

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(gb.spawn_green(green, started))
        await started.wait()
        task.cancel("stop")
        with pytest.raises(asyncio.CancelledError):
            await task
        record.append("task cancelled")
        assert task.cancelled()

    run_async(main)
    assert record == ["coroutine saw CancelledError", "green call site saw CancelledError", "task cancelled"]


def test_cancelling_a_green_fiber_cancels_the_task_it_awaits(run_async: Run) -> None:
    async def main() -> None:
        inner = asyncio.create_task(asyncio.Event().wait())
        outer = asyncio.create_task(gb.spawn_green(gb.await_from_green, inner))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert inner.cancelled()

    run_async(main)


def test_cancellation_caught_in_green_code_lets_the_fiber_finish(run_async: Run) -> None:
    def green(started: asyncio.Event) -> str:
        started.set()
        try:
            gb.await_from_green(asyncio.Event().wait())
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 1
            task.uncancel()
            return gb.await_from_green(ready("recovered"))
        return "not cancelled"

    async def main() -> str:
        started = asyncio.Event()
        task = asyncio.create_task(gb.spawn_green(green, started))
        await started.wait()
        task.cancel()
        return await task

    assert run_async(main) == "recovered"


def test_cancel_before_first_step_never_runs_the_function(run_async: Run, gb_backend: str) -> None:
    ran: list[str] = []

    async def main() -> None:
        task = asyncio.create_task(gb.spawn_green(ran.append, "ran"))
        task.cancel()
        if gb_backend == "asyncio+eager":
            # An eager Task's first step ran inside create_task: the function has finished.
            assert task.done() and await task is None
            return
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(main)
    assert ran == (["ran"] if gb_backend == "asyncio+eager" else [])


def test_the_documented_fork_order_holds_with_eager_tasks(run_async: Run, gb_backend: str) -> None:
    """Under an eager task factory too, fork returns before the fiber runs, and fibers start in
    fork order once the forking fiber suspends."""
    if gb_backend == "uvloop" and sys.version_info >= (3, 13):
        pytest.skip("uvloop calls a task factory with eager_start=, which asyncio.eager_task_factory "
                    "does not take on 3.13: the two cannot be combined")
    record: list[str] = []

    def body() -> str:
        with gb.Switch() as sw:
            sw.fork(record.append, "first")
            sw.fork(lambda: (gb.sleep(0.001), record.append("slept")))
            sw.fork(record.append, "second")
            record.append("body")
        return "ok"

    async def main() -> str:
        asyncio.get_running_loop().set_task_factory(getattr(asyncio, "eager_task_factory", None))
        return await gb.spawn_green(body)

    assert run_async(main) == "ok"
    assert record == ["body", "first", "second", "slept"]


def test_protect_and_task_groups_from_green_code_with_eager_tasks(run_async: Run, gb_backend: str) -> None:
    if gb_backend == "uvloop" and sys.version_info >= (3, 13):
        pytest.skip("uvloop calls a task factory with eager_start=, which asyncio.eager_task_factory "
                    "does not take on 3.13: the two cannot be combined")
    def nap_then(i: int) -> int:
        gb.sleep(0.001)
        return i

    def body() -> tuple[str, list[int]]:
        protected = gb.protect(lambda: (gb.sleep(0.001), "protected")[1])

        async def group() -> list[int]:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(gb.spawn_green(nap_then, i)) for i in range(3)]
            return [t.result() for t in tasks]

        return protected, gb.await_from_green(group())

    async def main() -> tuple[str, list[int]]:
        asyncio.get_running_loop().set_task_factory(getattr(asyncio, "eager_task_factory", None))
        return await gb.spawn_green(body)

    assert run_async(main) == ("protected", [0, 1, 2])


def test_an_eagerly_started_fiber_suspends_to_the_loop_after_its_first_step(
    run_async: Run, gb_backend: str
) -> None:
    """A fiber whose first step ran inside its creator (eager tasks) suspends to the loop
    afterwards, even within one await: it never switches into the creator, parked meanwhile."""
    if not hasattr(asyncio, "eager_task_factory"):
        pytest.skip("asyncio.eager_task_factory is new in Python 3.12")
    if gb_backend == "uvloop" and sys.version_info >= (3, 13):
        pytest.skip("uvloop calls a task factory with eager_start=, which asyncio.eager_task_factory "
                    "does not take on 3.13: the two cannot be combined")
    record: list[str] = []

    async def three_steps() -> str:
        for step in ("first", "second", "third"):
            record.append(step)
            await asyncio.sleep(0)
        return "stepped"

    def creator() -> tuple[str, str]:
        task = asyncio.ensure_future(gb.spawn_green(gb.await_from_green, three_steps()))
        record.append("created")
        parked = gb.await_from_green(asyncio.sleep(0.001, "creator woke"))
        return parked, gb.await_from_green(task)

    async def main() -> tuple[str, str]:
        asyncio.get_running_loop().set_task_factory(getattr(asyncio, "eager_task_factory", None))
        return await gb.spawn_green(creator)

    assert run_async(main) == ("creator woke", "stepped")
    assert record == ["first", "created", "second", "third"]


# -- 3. the awaited coroutine runs inside the fiber's own Task ----------------------------------


def test_current_task_in_green_code_is_the_hosting_task(run_async: Run) -> None:
    async def current() -> asyncio.Task[Any] | None:
        return asyncio.current_task()

    def green() -> tuple[Any, Any]:
        return asyncio.current_task(), gb.await_from_green(current())

    async def main() -> None:
        task = asyncio.create_task(gb.spawn_green(green))
        seen_in_green, seen_in_coroutine = await task
        assert seen_in_green is task
        assert seen_in_coroutine is task
        # awaited (not as a Task): the fiber runs in the awaiting Task
        here = asyncio.current_task()
        assert await gb.spawn_green(green) == (here, here)

    run_async(main)


def test_asyncio_timeout_inside_green_code(run_green: Run) -> None:
    def green() -> list[str]:
        record = []
        try:
            with gb.enter(asyncio.timeout(0.01)):
                gb.await_from_green(asyncio.Event().wait())
        except TimeoutError:
            record.append("asyncio.timeout")
        try:
            with gb.timeout(0.01):
                gb.await_from_green(asyncio.sleep(0))
                gb.sleep(10)
        except TimeoutError:
            record.append("gb.timeout over several awaits")
        with gb.timeout(10):
            gb.sleep(0)
        record.append("no timeout")
        return record

    assert run_green(green) == ["asyncio.timeout", "gb.timeout over several awaits", "no timeout"]


def test_asyncio_timeout_around_spawn_green(run_async: Run) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await gb.spawn_green(gb.sleep, 10)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gb.spawn_green(gb.sleep, 10), 0.01)

    run_async(main)


def test_taskgroup_inside_green_code(run_green: Run) -> None:
    def green() -> list[int]:
        with gb.enter(asyncio.TaskGroup()) as tg:
            tasks = [tg.create_task(double(i)) for i in range(3)]
        return [t.result() for t in tasks]

    assert run_green(green) == [0, 2, 4]


def test_spawn_green_with_gather_and_taskgroup(run_async: Run) -> None:
    def green(x: int) -> int:
        return gb.await_from_green(double(x))

    async def main() -> tuple[list[int], list[int]]:
        gathered = await asyncio.gather(*(gb.spawn_green(green, i) for i in range(5)))
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(gb.spawn_green(green, i)) for i in range(5)]
        return gathered, [t.result() for t in tasks]

    assert run_async(main) == ([0, 2, 4, 6, 8], [0, 2, 4, 6, 8])


def test_contextvars_are_shared_with_the_hosting_task(run_async: Run) -> None:
    async def read_and_set() -> str:
        seen = var.get()
        var.set("set by coroutine")
        return seen

    def green() -> tuple[str, str, str]:
        seen_first = var.get()
        var.set("set by green")
        seen_by_coroutine = gb.await_from_green(read_and_set())
        return seen_first, seen_by_coroutine, var.get()

    async def main() -> tuple[Any, str]:
        var.set("set by task")
        result = await gb.spawn_green(green)
        return result, var.get()

    assert run_async(main) == (("set by task", "set by green", "set by coroutine"), "set by coroutine")


def test_contextvars_of_separate_tasks_stay_separate(run_async: Run) -> None:
    def green(name: str) -> str:
        var.set(name)
        gb.sleep(0)
        gb.sleep(0)
        return var.get()

    async def main() -> list[str]:
        return await asyncio.gather(*(gb.spawn_green(green, f"task{i}") for i in range(4)))

    assert run_async(main) == ["task0", "task1", "task2", "task3"]


# -- 4. nesting at any depth ---------------------------------------------------------------------


def test_nesting_fifty_levels_both_ways(run_async: Run) -> None:
    def green(depth: int) -> list[str]:
        if depth == 0:
            return ["bottom"]
        return ["green", *gb.await_from_green(coroutine(depth - 1))]

    async def coroutine(depth: int) -> list[str]:
        await asyncio.sleep(0)
        return ["async", *(await gb.spawn_green(green, depth))]

    async def main() -> list[str]:
        return await coroutine(50)

    layers = run_async(main)
    assert layers == ["async", "green"] * 50 + ["async", "bottom"]


def test_nested_exception_and_cancellation_cross_every_layer(run_async: Run) -> None:
    record: list[str] = []

    def green(depth: int, started: asyncio.Event) -> None:
        try:
            if depth == 0:
                started.set()
                gb.await_from_green(asyncio.Event().wait())
            else:
                gb.await_from_green(coroutine(depth - 1, started))
        except asyncio.CancelledError:
            record.append(f"green{depth}")
            raise

    async def coroutine(depth: int, started: asyncio.Event) -> None:
        try:
            await gb.spawn_green(green, depth, started)
        except asyncio.CancelledError:
            record.append(f"async{depth}")
            raise

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(coroutine(3, started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(main)
    assert record == ["green0", "async0", "green1", "async1", "green2", "async2", "green3", "async3"]


def test_await_from_green_inside_a_coroutine_that_green_code_awaits(run_green: Run) -> None:
    def helper_called_from_async(x: int) -> int:
        # plain def called by a coroutine: still inside the fiber that awaits the coroutine
        return gb.await_from_green(double(x))

    async def coroutine(x: int) -> int:
        await asyncio.sleep(0)
        return helper_called_from_async(x) + 1

    def green() -> int:
        return gb.await_from_green(coroutine(10))

    assert run_green(green) == 21


# -- 5. the de-facto greenlet convention ---------------------------------------------------------


def test_sqlalchemy_await_works_inside_a_greenbridge_fiber(run_green: Run) -> None:
    from sqlalchemy.util import await_

    def green() -> list[Any]:
        results = [await_(double(4)), await_(ready("ready"))]
        try:
            await_(_raise_later())
        except Boom as exc:
            results.append(str(exc))
        results.append(gb.await_from_green(double(1)))
        return results

    assert run_green(green) == [8, "ready", "later", 2]


async def _raise_later() -> None:
    await asyncio.sleep(0)
    raise Boom("later")


def test_sqlalchemy_await_inside_greenbridge_is_cancellable(run_async: Run) -> None:
    from sqlalchemy.util import await_

    record: list[str] = []

    def green(started: asyncio.Event) -> None:
        started.set()
        try:
            await_(asyncio.Event().wait())
        except asyncio.CancelledError:
            record.append("cancelled in green")
            raise

    run_async(cancel_once_started, green)
    assert record == ["cancelled in green"]


def test_awaitlet_works_inside_a_greenbridge_fiber(run_green: Run) -> None:
    from awaitlet import awaitlet

    assert run_green(lambda: awaitlet(double(7))) == 14


def test_await_from_green_works_inside_sqlalchemy_greenlet_spawn(run_async: Run) -> None:
    from sqlalchemy.util import greenlet_spawn

    def sync_code() -> tuple[bool, int]:
        return gb.in_green(), gb.await_from_green(double(3))

    async def main() -> tuple[bool, int]:
        return await greenlet_spawn(sync_code)

    assert run_async(main) == (True, 6)


def test_fibers_advertise_the_provider_attribute(run_green: Run) -> None:
    import greenlet

    assert run_green(lambda: greenlet.getcurrent().__sqlalchemy_greenlet_provider__) is True


# -- 6. misuse gets a clear error ---------------------------------------------------------------


def _assert_closed_without_warning(coro: Any) -> None:
    assert coro.cr_frame is None  # closed: no "never awaited" warning will follow
    gc.collect()


def test_await_from_green_in_a_coroutine_is_a_clear_error(run_async: Run) -> None:
    async def main() -> None:
        coro = double(1)
        with pytest.raises(gb.NoGreenContext, match="use 'await' instead"):
            gb.await_from_green(coro)
        _assert_closed_without_warning(coro)

    run_async(main)


def test_await_from_green_in_a_loop_callback_is_a_clear_error(run_async: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[BaseException] = loop.create_future()
        coro = double(1)

        def callback() -> None:
            try:
                gb.await_from_green(coro)
            except BaseException as exc:
                outcome.set_result(exc)

        loop.call_soon(callback)
        exc = await outcome
        assert isinstance(exc, gb.NoGreenContext) and isinstance(exc, RuntimeError)
        assert "loop callback" in str(exc)
        _assert_closed_without_warning(coro)

    run_async(main)


def test_await_from_green_from_another_thread_is_a_clear_error(run_green: Run) -> None:
    def green() -> BaseException:
        coro = double(1)

        def in_thread() -> BaseException:
            try:
                gb.await_from_green(coro)
            except BaseException as exc:
                return exc
            raise AssertionError("not raised")

        exc = gb.run_in_thread(in_thread)
        _assert_closed_without_warning(coro)
        return exc

    exc = run_green(green)
    assert isinstance(exc, gb.NoGreenContext)
    assert "run_coroutine_threadsafe" in str(exc)


def test_green_function_called_after_the_loop_finished(run_green: Run) -> None:
    @gb.as_green
    async def fetch() -> int:
        return await double(2)

    assert run_green(fetch) == 4
    with pytest.raises(gb.NoGreenContext, match=r"gb\.run"):
        fetch()
    assert not gb.in_green()


def test_run_inside_a_running_loop_is_a_clear_error(run_green: Run, run_async: Run) -> None:
    def green() -> str:
        with pytest.raises(RuntimeError, match="cannot be called while an event loop is running"):
            gb.run(lambda: None)
        return "ok"

    assert run_green(green) == "ok"

    async def main() -> None:
        with pytest.raises(RuntimeError, match="spawn_green"):
            gb.run(lambda: None)

    run_async(main)


def test_bad_arguments_are_clear_errors(run_green: Run, run_async: Run) -> None:
    with pytest.raises(ValueError, match=re.escape("backend must be 'asyncio', 'asyncio+eager' or 'uvloop'")):
        gb.run(lambda: None, backend="trio")
    with pytest.raises(TypeError, match="needs a callable"):
        gb.run(42)  # type: ignore[arg-type]

    async def spawn_non_callable() -> None:
        with pytest.raises(TypeError, match="needs a callable"):
            await gb.spawn_green(42)  # type: ignore[arg-type]

    run_async(spawn_non_callable)

    def green() -> None:
        with pytest.raises(TypeError, match="call it"):
            gb.await_from_green(double)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="needs an awaitable"):
            gb.await_from_green(42)  # type: ignore[arg-type]

    run_green(green)


def test_spawn_green_coroutine_protocol(run_async: Run) -> None:
    record: list[str] = []

    def green() -> None:
        try:
            gb.await_from_green(asyncio.sleep(10))
        finally:
            record.append("finally ran")

    async def main() -> None:
        call = gb.spawn_green(green)
        assert "spawn_green" in repr(call)
        call.send(None)  # runs up to the first suspension
        call.close()  # like a coroutine: the fiber unwinds, finally blocks run
        assert record == ["finally ran"]
        call.close()  # closing twice is harmless
        done = gb.spawn_green(int, "7")
        assert await done == 7
        with pytest.raises(RuntimeError, match="already awaited"):
            await done
        unstarted = gb.spawn_green(record.append, "never")
        with pytest.raises(Boom):
            unstarted.throw(Boom("before start"))
        gb.spawn_green(record.append, "never").close()

    run_async(main)
    assert record == ["finally ran"]


# -- decorators and adapters ---------------------------------------------------------------------


def test_as_async_and_as_green(run_async: Run) -> None:
    @gb.as_green
    async def fetch(x: int, *, times: int = 1) -> int:
        return await double(x) * times

    @gb.as_async
    def compute(x: int) -> int:
        return fetch(x, times=3)

    async def main() -> int:
        return await compute(5)

    assert run_async(main) == 30
    assert compute.__name__ == "compute" and fetch.__name__ == "fetch"


def test_enter_and_iterate(run_green: Run) -> None:
    record: list[str] = []

    class Resource:
        async def __aenter__(self) -> str:
            await asyncio.sleep(0)
            record.append("enter")
            return "resource"

        async def __aexit__(self, *exc: object) -> None:
            await asyncio.sleep(0)
            record.append(f"exit {exc[0].__name__ if exc[0] else None}")

    async def numbers() -> Any:
        try:
            for i in range(10):
                await asyncio.sleep(0)
                yield i
        finally:
            record.append("generator closed")

    def green() -> list[int]:
        with gb.enter(Resource()) as value:
            assert value == "resource"
        with pytest.raises(Boom), gb.enter(Resource()):
            raise Boom
        taken = []
        for i in gb.iterate(numbers()):
            if i == 3:
                break
            taken.append(i)
        assert record[-1] == "generator closed"
        return taken + list(gb.iterate(_count(3)))

    assert run_green(green) == [0, 1, 2, 0, 1, 2]
    assert record == ["enter", "exit None", "enter", "exit Boom", "generator closed"]


async def _count(n: int) -> Any:
    for i in range(n):
        yield i


def test_enter_and_iterate_reject_sync_objects() -> None:
    with pytest.raises(TypeError, match="use 'with' directly"):
        gb.enter(threading.Lock())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="use 'for' directly"):
        gb.iterate([1, 2])  # type: ignore[arg-type]


def test_run_in_thread(run_green: Run) -> None:
    def blocking(x: int) -> tuple[int, str, bool]:
        return x * 2, var.get(), threading.current_thread() is threading.main_thread()

    def green() -> tuple[int, str, bool]:
        var.set("copied into the thread")
        return gb.run_in_thread(blocking, 21)

    assert run_green(green) == (42, "copied into the thread", False)
    with pytest.raises(gb.NoGreenContext):
        gb.run_in_thread(blocking, 1)


def test_run_in_thread_is_cancellable_on_the_green_side(run_green: Run) -> None:
    release = threading.Event()

    def green() -> str:
        try:
            with gb.timeout(0.01):
                gb.run_in_thread(release.wait, 30)
        except TimeoutError:
            return "timed out while the thread ran on"
        finally:
            release.set()
        return "not cancelled"

    assert run_green(green) == "timed out while the thread ran on"


# -- 7. no leaks ----------------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_nothing_is_left_after_a_run(gb_backend: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")

    def worker(i: int) -> int:
        gb.sleep(0)
        return gb.await_from_green(double(i))

    def green() -> int:
        async def spawn_many() -> list[int]:
            return await asyncio.gather(*(gb.spawn_green(worker, i) for i in range(200)))

        background = asyncio.ensure_future(gb.spawn_green(gb.sleep, 3600))  # left running
        total = sum(gb.await_from_green(spawn_many()))
        assert not background.done()
        return total

    before = _open_fds()
    for _ in range(3):
        assert gb.run(green, backend=gb_backend, debug=True) == 2 * sum(range(200))
    gc.collect()
    assert _core._live_fibers() == []
    assert _core._idle_fibers() == []
    assert _open_fds() == before
    # Nothing reported: no task destroyed pending, no error logged. (Debug mode's "Executing ...
    # took 0.1 seconds" measures the machine's load, not what a run leaves behind.)
    reports = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r for r in reports if not r.msg.startswith("Executing ")] == []


def test_idle_fibers_do_not_keep_results_or_contexts_alive(run_async: Run) -> None:
    import weakref

    class Payload:
        pass

    refs: list[weakref.ref[Payload]] = []

    def green() -> Payload:
        payload = Payload()
        refs.append(weakref.ref(payload))
        var.set(payload)  # type: ignore[arg-type]
        return payload

    async def main() -> None:
        await asyncio.create_task(gb.spawn_green(green))

    run_async(main)
    gc.collect()
    assert refs[0]() is None


def test_fibers_are_pooled_and_bounded(run_async: Run) -> None:
    def green(i: int) -> int:
        gb.sleep(0)
        return i

    async def main() -> tuple[int, int, int]:
        # sequential calls reuse one fiber
        for i in range(10):
            assert await gb.spawn_green(green, i) == i
        after_sequential = len(_core._idle_fibers())
        # a burst leaves at most the pool's bound behind
        results = await asyncio.gather(*(gb.spawn_green(green, i) for i in range(_core._POOL_MAX + 50)))
        assert results == list(range(_core._POOL_MAX + 50))
        return after_sequential, len(_core._idle_fibers()), len(_core._live_fibers())

    after_sequential, after_burst, live = run_async(main)
    assert after_sequential == 1
    assert after_burst == _core._POOL_MAX
    assert live == 0
    _core._drain_pool()


def test_runs_in_several_threads_at_once(gb_backend: str) -> None:
    barrier = threading.Barrier(3)

    def green(name: str) -> str:
        gb.sleep(0)
        gb.run_in_thread(barrier.wait, 10)  # all three loops are running at the same time
        return gb.await_from_green(ready(name))

    results: dict[str, str] = {}

    def thread_main(name: str) -> None:
        results[name] = gb.run(green, name, backend=gb_backend)

    threads = [threading.Thread(target=thread_main, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {"t0": "t0", "t1": "t1", "t2": "t2"}
