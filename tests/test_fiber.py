"""greenbridge.fiber: combinators, yield_/check/await_cancel, and gb.protect."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import pytest
from _green_helpers import cancel_once_started

import greenbridge as gb
from greenbridge import fiber

Run = Callable[..., Any]

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


class Boom(Exception):
    pass


def ticks(n: int, value: Any, record: list[str] | None = None) -> Callable[[], Any]:
    """A function that yields ``n`` times, then returns ``value`` (recording both ends)."""

    def run() -> Any:
        try:
            for _ in range(n):
                fiber.yield_()
        except asyncio.CancelledError:
            if record is not None:
                record.append(f"{value} cancelled")
            raise
        if record is not None:
            record.append(f"{value} returns")
        return value

    return run


def raise_boom() -> None:
    fiber.yield_()
    raise Boom("boom")


# -- both, pair, all, map ----------------------------------------------------------------------------


def test_pair_returns_both_results_in_argument_order(run_green: Run) -> None:
    assert run_green(fiber.pair, ticks(2, "f"), ticks(1, "g")) == ("f", "g")


def test_both_and_all_wait_for_every_function(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        fiber.both(ticks(2, "f", record), ticks(1, "g", record))
        fiber.all([ticks(3, "a", record), ticks(1, "b", record), ticks(2, "c", record)])

    run_green(main)
    assert record == ["g returns", "f returns", "b returns", "c returns", "a returns"]


def test_a_failure_cancels_the_others_and_is_raised(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        with pytest.raises(Boom):
            fiber.both(ticks(10, "slow", record), raise_boom)
        with pytest.raises(Boom):
            fiber.pair(raise_boom, ticks(10, "other", record))

    run_green(main)
    assert record == ["slow cancelled", "other cancelled"]


def test_map_keeps_order_and_limits_concurrency(run_green: Run) -> None:
    def main() -> tuple[list[int], int]:
        running = peak = 0

        def square(x: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            for _ in range(x % 3):
                fiber.yield_()
            running -= 1
            return x * x

        limited = fiber.map(square, range(10), max_fibers=3)
        assert peak == 3
        assert fiber.map(square, []) == []
        return limited, peak

    assert run_green(main) == ([x * x for x in range(10)], 3)


def test_map_unlimited_and_failing(run_green: Run) -> None:
    def main() -> list[int]:
        def maybe_fail(x: int) -> int:
            fiber.yield_()
            if x == 3:
                raise Boom(x)
            return x

        with pytest.raises(Boom):
            fiber.map(maybe_fail, range(5), max_fibers=2)
        with pytest.raises(ValueError, match="max_fibers"):
            fiber.map(maybe_fail, range(5), max_fibers=0)
        return fiber.map(lambda x: x + 1, range(4))

    assert run_green(main) == [1, 2, 3, 4]


# -- first, any ---------------------------------------------------------------------------------------


def test_first_returns_the_winner_and_cancels_the_loser(run_green: Run) -> None:
    record: list[str] = []
    assert run_green(fiber.first, ticks(5, "slow", record), ticks(1, "fast", record)) == "fast"
    assert record == ["fast returns", "slow cancelled"]


def test_any_with_combine_keeps_values_obtained_at_the_same_time(run_green: Run) -> None:
    def main() -> tuple[int, int]:
        # All three return at their first step: the first wins, the others' values are dropped
        # -- or combined.
        dropped = fiber.any([lambda: 1, lambda: 2, lambda: 3])
        combined = fiber.any([lambda: 1, lambda: 2, lambda: 3], combine=lambda a, b: a + b)
        return dropped, combined

    assert run_green(main) == (1, 6)


def test_any_raises_a_real_error_even_after_a_value(run_green: Run) -> None:
    def fails_on_cancel() -> None:
        try:
            fiber.await_cancel()
        finally:
            raise Boom("cleanup")

    def main() -> None:
        with pytest.raises(Boom, match="cleanup"):
            fiber.first(fails_on_cancel, ticks(1, "winner"))
        with pytest.raises(ValueError):
            fiber.any([])

    run_green(main)


def test_any_refuses_a_non_callable_before_starting_anything(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        with pytest.raises(TypeError, match="callables"):
            fiber.any([lambda: record.append("started"), "not callable"])  # type: ignore[list-item]
        gb.sleep(0)

    run_green(main)
    assert record == []


def test_a_value_obtained_is_not_lost_to_a_later_cancellation(run_async: Run) -> None:
    """The caller is cancelled while the loser cleans up: the winner's value comes back, and the
    cancellation is delivered at the caller's next suspension point."""
    record: list[Any] = []

    def slow_loser(cleaning: asyncio.Event) -> None:
        try:
            fiber.await_cancel()
        finally:
            cleaning.set()
            gb.protect(gb.sleep, 0.005)

    def green(cleaning: asyncio.Event) -> None:
        value = fiber.first(lambda: slow_loser(cleaning), ticks(1, "won"))
        record.append(value)
        try:
            gb.sleep(0)
        except asyncio.CancelledError:
            record.append("cancelled at the next suspension")
            raise

    run_async(cancel_once_started, green)
    assert record == ["won", "cancelled at the next suspension"]


# -- yield_, check, await_cancel ---------------------------------------------------------------


def test_yield_lets_other_fibers_run(run_green: Run) -> None:
    record: list[str] = []

    def other() -> None:
        record.append("other")

    def main() -> None:
        with gb.Switch() as sw:
            sw.fork(other)
            record.append("before yield")
            fiber.yield_()
            record.append("after yield")

    run_green(main)
    assert record == ["before yield", "other", "after yield"]


def test_check_without_pending_cancellation_does_nothing(run_green: Run) -> None:
    def main() -> str:
        fiber.check()
        return "fine"

    assert run_green(main) == "fine"


def test_cancellation_is_delivered_only_at_suspension_points(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        record.append("still running after cancel()")  # no suspension yet
        try:
            fiber.check()
        except asyncio.CancelledError:
            record.append("delivered by check()")
            task.uncancel()

    run_green(main)
    assert record == ["still running after cancel()", "delivered by check()"]


def test_await_cancel_waits_until_cancelled(run_async: Run) -> None:
    async def main() -> None:
        task = asyncio.create_task(gb.spawn_green(fiber.await_cancel))
        await asyncio.sleep(0.001)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(main)


def test_fiber_functions_outside_green_raise(run_async: Run) -> None:
    async def main() -> None:
        for fn in (fiber.yield_, fiber.check, fiber.await_cancel):
            with pytest.raises(gb.NoGreenContext):
                fn()
        with pytest.raises(gb.NoGreenContext):
            gb.protect(print)

    run_async(main)


# -- protect --------------------------------------------------------------------------------


def test_protect_returns_the_result_and_shares_contextvars(run_green: Run) -> None:
    def main() -> tuple[int, str]:
        var.set("caller")

        def inner() -> int:
            assert var.get() == "caller"
            var.set("set inside")
            gb.sleep(0)
            return 5

        return gb.protect(inner), var.get()

    assert run_green(main) == (5, "set inside")


def test_protect_holds_cancellation_back_until_fn_finishes(run_async: Run) -> None:
    """fn's result comes back; the cancellation is raised at the next cancellation point."""
    record: list[str] = []

    def cleanup() -> str:
        gb.sleep(0.005)
        record.append("cleanup finished")
        return "done"

    def green(started: asyncio.Event) -> None:
        started.set()
        record.append(gb.protect(cleanup))
        try:
            gb.sleep(0)
        except asyncio.CancelledError:
            record.append("cancelled at the next suspension")
            raise

    run_async(cancel_once_started, green)
    assert record == ["cleanup finished", "done", "cancelled at the next suspension"]


def test_protect_leaves_the_cancellation_for_fiber_check(run_async: Run) -> None:
    def green(started: asyncio.Event) -> str:
        started.set()
        value = gb.protect(gb.sleep, 0.005)
        assert value is None
        fiber.check()  # raises the cancellation held back by protect
        return "not cancelled"

    assert run_async(cancel_once_started, green).cancelled()


def test_protect_lets_a_real_error_win_over_cancellation(run_async: Run) -> None:
    def failing_cleanup() -> None:
        gb.sleep(0.002)
        raise Boom("cleanup failed")

    async def main() -> None:
        task = asyncio.create_task(gb.spawn_green(gb.protect, failing_cleanup))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(Boom):
            await task

    run_async(main)


def test_protect_under_a_timeout_raises_timeout_after_fn(run_green: Run) -> None:
    def main() -> list[str]:
        record: list[str] = []
        with pytest.raises(TimeoutError):
            with gb.timeout(0.001):
                gb.protect(lambda: (gb.sleep(0.005), record.append("protected sleep done")))
        return record

    assert run_green(main) == ["protected sleep done"]


# -- the two waiting rules -----------------------------------------------------------------------


def test_waiting_on_a_promise_does_not_cancel_its_producer(run_green: Run) -> None:
    def main() -> tuple[bool, int]:
        with gb.Switch() as sw:
            promise = sw.fork_promise(ticks(3, 99))
            with pytest.raises(TimeoutError):
                with gb.timeout(0):
                    promise.await_()
            return promise.is_resolved(), promise.await_()

    assert run_green(main) == (False, 99)


def test_awaiting_a_task_from_green_and_being_cancelled_cancels_it(run_green: Run) -> None:
    def main() -> bool:
        task = asyncio.ensure_future(asyncio.sleep(10))
        with pytest.raises(TimeoutError):
            with gb.timeout(0):
                gb.await_from_green(task)
        return task.cancelled()

    assert run_green(main) is True


# -- a fiber that swallows CancelledError behaves as a coroutine that does ------------------------


def test_swallowed_cancellation_matches_native_asyncio(run_async: Run) -> None:
    """Under asyncio.timeout and in a TaskGroup, green code that catches CancelledError and
    carries on is observed exactly like a native coroutine doing the same."""

    def green_swallower() -> str:
        try:
            fiber.await_cancel()
        except asyncio.CancelledError:
            pass
        gb.sleep(0)
        return "carried on"

    async def native_swallower() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0)
        return "carried on"

    async def under_timeout(make: Callable[[], Any]) -> tuple[Any, ...]:
        async with asyncio.timeout(0.001) as cm:
            result = await make()
        task = asyncio.current_task()
        assert task is not None
        # Then a second timeout in the same Task must still work.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.001):
                await asyncio.Event().wait()
        return result, cm.expired(), task.cancelling()

    async def in_task_group(make: Callable[[], Any]) -> list[Any]:
        results: list[Any] = []

        async def failing() -> None:
            await asyncio.sleep(0.001)
            raise Boom()

        async def child() -> None:
            results.append(await make())

        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(child())
                tg.create_task(failing())
        return [*results, [type(e) for e in info.value.exceptions]]

    async def main() -> None:
        green = lambda: gb.spawn_green(green_swallower)  # noqa: E731
        assert await under_timeout(green) == await under_timeout(native_swallower)
        assert await in_task_group(green) == await in_task_group(native_swallower)
        assert await in_task_group(green) == ["carried on", [Boom]]

    run_async(main)


def test_a_failing_combine_fails_the_race(run_green: Run) -> None:
    def bad_combine(a: int, b: int) -> int:
        raise Boom("combine")

    def main() -> None:
        with pytest.raises(Boom, match="combine"):
            fiber.any([lambda: 1, lambda: 2], combine=bad_combine)

    run_green(main)
