"""Waiter: the one-shot wake-up internal waits use, including direct resumption of fibers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import greenbridge as gb
from greenbridge._waiter import Waiter

Run = Callable[..., Any]


async def _ready(value: Any) -> Any:
    return value


def test_wake_before_wait_returns_at_once(run_green: Run) -> None:
    def green() -> Any:
        waiter = Waiter()
        assert waiter.wake("early") is True
        assert waiter.wake("again") is False
        assert waiter.done()
        return waiter.wait()

    assert run_green(green) == "early"


def test_wake_from_a_loop_callback_resumes_the_fiber_directly(run_green: Run) -> None:
    record: list[str] = []

    def green() -> None:
        waiter = Waiter()

        def callback() -> None:
            record.append("callback wakes")
            assert waiter.wake("value") is True
            record.append("wake returned")

        asyncio.get_running_loop().call_soon(callback)
        record.append(f"fiber got {waiter.wait()}")

    run_green(green)
    assert record == ["callback wakes", "fiber got value", "wake returned"]


def test_directly_resumed_fiber_sees_its_task_and_awaits_inside_it(run_async: Run) -> None:
    record: list[Any] = []

    def green(waiter: Waiter) -> str:
        value = waiter.wait()
        record.append(("its own task is current", asyncio.current_task() is hosting))
        task_seen = gb.await_from_green(_current_task())
        record.append(("awaits inside its task", task_seen is hosting))
        gb.sleep(0)
        return value

    async def _current_task() -> Any:
        return asyncio.current_task()

    hosting: asyncio.Task[Any]

    async def main() -> str:
        nonlocal hosting
        waiter = Waiter()
        hosting = asyncio.create_task(gb.spawn_green(green, waiter))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        loop.call_soon(waiter.wake, "done")
        return await hosting

    assert run_async(main) == "done"
    assert record == [("its own task is current", True), ("awaits inside its task", True)]


def test_directly_resumed_fiber_may_finish_and_park_again(run_async: Run) -> None:
    record: list[str] = []

    def green(first: Waiter, second: Waiter) -> str:
        record.append(first.wait())
        record.append(second.wait())  # parks again while resumed directly
        return "finished while resumed directly"

    async def main() -> str:
        first, second = Waiter(), Waiter()
        task = asyncio.create_task(gb.spawn_green(green, first, second))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        loop.call_soon(first.wake, "one")
        loop.call_soon(second.wake, "two")
        return await task

    assert run_async(main) == "finished while resumed directly"
    assert record == ["one", "two"]


def test_wake_from_another_fiber_goes_through_the_task(run_async: Run) -> None:
    record: list[str] = []

    def sleeper(waiter: Waiter) -> None:
        record.append(f"sleeper got {waiter.wait()}")

    def waker(waiter: Waiter) -> None:
        assert waiter.wake("hello") is True
        record.append("waker went on")

    async def main() -> None:
        waiter = Waiter()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gb.spawn_green(sleeper, waiter))
            await asyncio.sleep(0)
            tg.create_task(gb.spawn_green(waker, waiter))

    run_async(main)
    assert record == ["waker went on", "sleeper got hello"]


def test_cancelled_waiter_refuses_values(run_async: Run) -> None:
    async def main() -> None:
        waiter = Waiter()
        task = asyncio.create_task(gb.spawn_green(waiter.wait))
        await asyncio.sleep(0)
        task.cancel()
        assert waiter.wake("lost?") is False  # the fiber is being cancelled: caller keeps it
        with pytest.raises(asyncio.CancelledError):
            await task
        assert waiter.take_back() == (False, None)
        assert waiter.wake("after") is False

    run_async(main)


def test_value_accepted_before_a_cancellation_can_be_taken_back(run_async: Run) -> None:
    def green(waiter: Waiter) -> Any:
        try:
            return waiter.wait()
        except asyncio.CancelledError:
            return ("taken back", waiter.take_back())

    def other_fiber(waiter: Waiter, target: asyncio.Task[Any]) -> None:
        assert waiter.wake("item") is True  # through the Task: not run yet
        target.cancel()
        target.uncancel()  # keep the Task usable: only the wait is interrupted

    async def main() -> Any:
        waiter = Waiter()
        task = asyncio.create_task(gb.spawn_green(green, waiter))
        await asyncio.sleep(0)
        await gb.spawn_green(other_fiber, waiter, task)
        return await task

    result = run_async(main)
    # Either the fiber got the item, or it was interrupted and the item comes back: never lost.
    assert result in ("item", ("taken back", (True, "item")))


def test_cancellation_while_running_directly_is_delivered_at_the_next_park(run_async: Run) -> None:
    record: list[str] = []

    def green(first: Waiter, second: Waiter) -> None:
        first.wait()  # resumed directly by the callback, its own Task current all the same
        assert asyncio.current_task() is hosting
        hosting.cancel()
        try:
            second.wait()
        except asyncio.CancelledError:
            record.append("cancelled at the next park")
            raise

    hosting: asyncio.Task[Any]

    async def main() -> None:
        nonlocal hosting
        first, second = Waiter(), Waiter()
        hosting = asyncio.create_task(gb.spawn_green(green, first, second))
        await asyncio.sleep(0)
        asyncio.get_running_loop().call_soon(first.wake)
        with pytest.raises(asyncio.CancelledError):
            await hosting
        assert second.wake() is False

    run_async(main)
    assert record == ["cancelled at the next park"]


def test_fail_and_cancel(run_green: Run) -> None:
    def green() -> list[str]:
        record = []
        failing = Waiter()
        asyncio.get_running_loop().call_soon(failing.fail, KeyError("k"))
        try:
            failing.wait()
        except KeyError:
            record.append("failed")
        cancelled = Waiter()
        asyncio.get_running_loop().call_soon(cancelled.cancel)
        try:
            cancelled.wait()
        except asyncio.CancelledError:
            record.append("cancelled")
        assert cancelled.cancel() is False
        with pytest.raises(RuntimeError, match="called again"):
            _interrupted_waiter().wait()
        return record

    assert run_green(green) == ["failed", "cancelled"]


def _interrupted_waiter() -> Waiter:
    waiter = Waiter()
    waiter._state = 4  # _TAKEN_BACK: wait() must not hand out the value twice
    return waiter


def test_wait_twice_and_outside_green_are_errors(run_async: Run) -> None:
    async def main() -> None:
        with pytest.raises(gb.NoGreenContext):
            Waiter().wait()
        waiter = Waiter()
        task = asyncio.create_task(gb.spawn_green(waiter.wait))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="called twice"):
            await gb.spawn_green(waiter.wait)
        waiter.wake(1)
        assert await task == 1

    run_async(main)


def test_foreign_convention_while_resumed_directly(run_async: Run) -> None:
    from sqlalchemy.util import await_

    def green(waiter: Waiter) -> Any:
        waiter.wait()
        return await_(_ready("through the driver"))

    async def main() -> Any:
        waiter = Waiter()
        task = asyncio.create_task(gb.spawn_green(green, waiter))
        await asyncio.sleep(0)
        asyncio.get_running_loop().call_soon(waiter.wake)
        return await task

    assert run_async(main) == "through the driver"


def test_waiter_inside_sqlalchemy_greenlet_spawn(run_async: Run) -> None:
    from sqlalchemy.util import greenlet_spawn

    async def main() -> Any:
        waiter = Waiter()
        asyncio.get_running_loop().call_soon(waiter.wake, "foreign")
        return await greenlet_spawn(waiter.wait)

    assert run_async(main) == "foreign"


def test_many_fibers_ping_pong_directly(run_async: Run) -> None:
    """Two fibers handing a counter back and forth through loop callbacks, many times."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        boxes: dict[str, Waiter] = {"a": Waiter(), "b": Waiter()}

        def player(me: str, other: str, rounds: int) -> int:
            last = 0
            for _ in range(rounds):
                last = boxes[me].wait()
                boxes[me] = Waiter()
                loop.call_soon(boxes[other].wake, last + 1)
            return last

        a = asyncio.create_task(gb.spawn_green(player, "a", "b", 500))
        b = asyncio.create_task(gb.spawn_green(player, "b", "a", 500))
        await asyncio.sleep(0)
        boxes["a"].wake(0)
        results = await asyncio.gather(a, b)
        return max(results)

    assert run_async(main) == 999


def test_direct_resumption_from_inside_another_task_restores_that_task(run_async: Run) -> None:
    seen: list[Any] = []

    def green(waiter: Waiter) -> None:
        waiter.wait()
        seen.append(asyncio.current_task())

    async def main() -> None:
        waiter = Waiter()
        fiber_task = asyncio.create_task(gb.spawn_green(green, waiter))
        await asyncio.sleep(0)
        me = asyncio.current_task()
        waiter.wake()  # from this coroutine: the fiber runs here, as fiber_task
        assert asyncio.current_task() is me
        await fiber_task
        seen.append(fiber_task)

    run_async(main)
    assert seen[0] is seen[1]


def test_the_c_park_and_resume_are_used_exactly_when_the_accelerator_is() -> None:
    """``_control`` and ``_core`` take their C functions together, or neither does (the
    GREENBRIDGE_NO_SPEEDUPS=1 environment and a missing build run the Python ones)."""
    from greenbridge import _control, _core

    in_c = _control._park is not _control._park_py
    assert in_c == (_control._resume is not _control._resume_py) == _core.SPEEDUPS


def test_park_and_resume_refuse_what_is_not_a_fiber_and_change_nothing() -> None:
    from greenbridge import _control

    waiter = Waiter()
    for function in (_control._park, _control._resume):
        with pytest.raises((TypeError, AttributeError)):
            function(waiter)  # type: ignore[arg-type]
    assert not waiter.done()
