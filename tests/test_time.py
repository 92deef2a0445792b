"""gb.sleep, gb.timeout, gb.with_timeout: exact virtual times on asyncio's loop (see
greenbridge.testing), and the same behaviour on the real clock of the selected backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import greenbridge as gb
from greenbridge import fiber, testing
from greenbridge._core import _live_fibers

Run = Callable[..., Any]


@pytest.fixture
def run_virtual() -> Iterator[Callable[..., Any]]:
    """``gb.run`` on asyncio's loop under a virtual clock (uvloop's timers are libuv's)."""

    def runner(fn: Callable[..., Any], /, *args: Any) -> Any:
        with testing.virtual_clock():
            return gb.run(fn, *args, debug=True)

    yield runner
    assert not _live_fibers()


def now() -> float:
    return asyncio.get_running_loop().time()


def test_sleep_takes_exactly_its_time(run_virtual: Run) -> None:
    def main() -> list[float]:
        times = []
        for seconds in (1.5, 0.25, 3600):
            gb.sleep(seconds)
            times.append(now())
        return times

    assert run_virtual(main) == [1.5, 1.75, 3601.75]


def test_sleeping_fibers_wake_in_deadline_order(run_virtual: Run) -> None:
    def main() -> list[tuple[str, float]]:
        record: list[tuple[str, float]] = []

        def sleeper(name: str, seconds: float) -> None:
            gb.sleep(seconds)
            record.append((name, now()))

        with gb.Switch() as sw:
            sw.fork(sleeper, "c", 3)
            sw.fork(sleeper, "a", 1)
            sw.fork(sleeper, "b", 2)
        return record

    assert run_virtual(main) == [("a", 1.0), ("b", 2.0), ("c", 3.0)]


def test_sleep_zero_only_yields(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        with gb.Switch() as sw:
            sw.fork(record.append, "other")
            gb.sleep(0)
            record.append("after sleep(0)")
            gb.sleep(-1)

    run_green(main)
    assert record == ["other", "after sleep(0)"]


def test_cancelled_sleep_cancels_its_timer(run_virtual: Run) -> None:
    def main() -> tuple[float, int]:
        with pytest.raises(TimeoutError):
            gb.with_timeout(2, gb.sleep, 100)
        loop = asyncio.get_running_loop()
        pending = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        return now(), len(pending)

    assert run_virtual(main) == (2.0, 0)


def test_timeout_expires_at_exactly_its_deadline(run_virtual: Run) -> None:
    def main() -> list[Any]:
        record: list[Any] = []
        with pytest.raises(TimeoutError):
            with gb.timeout(5):
                gb.sleep(3)
                record.append(now())
                gb.sleep(3)  # expires 2 seconds into this one
        record.append(now())
        with gb.timeout(None):
            gb.sleep(10)
        record.append(now())
        return record

    assert run_virtual(main) == [3.0, 5.0, 15.0]


def test_nested_timeouts_the_inner_fires_first(run_virtual: Run) -> None:
    def main() -> list[str]:
        record = []
        with gb.timeout(10):
            with pytest.raises(TimeoutError):
                with gb.timeout(1):
                    gb.sleep(5)
            record.append(f"inner expired at {now()}")
            gb.sleep(5)
            record.append(f"outer still running at {now()}")
        return record

    assert run_virtual(main) == ["inner expired at 1.0", "outer still running at 6.0"]


def test_timeout_can_be_rescheduled(run_virtual: Run) -> None:
    def main() -> float:
        with pytest.raises(TimeoutError):
            with gb.timeout(1) as deadline:
                deadline.reschedule(now() + 7)
                gb.sleep(100)
        return now()

    assert run_virtual(main) == 7.0


def test_with_timeout_returns_the_result(run_virtual: Run) -> None:
    def slow_add(a: int, b: int) -> int:
        gb.sleep(1)
        return a + b

    def main() -> tuple[int, float]:
        return gb.with_timeout(2, slow_add, 1, 2), now()

    assert run_virtual(main) == (3, 1.0)


def test_timeout_and_sleep_on_the_real_clock(run_green: Run) -> None:
    """The same rules on the selected backend's real clock (uvloop included)."""

    def main() -> str:
        with pytest.raises(TimeoutError):
            gb.with_timeout(0.001, gb.sleep, 10)
        with pytest.raises(TimeoutError):
            with gb.timeout(0):
                fiber.await_cancel()
        gb.sleep(0.001)
        return "ok"

    assert run_green(main) == "ok"


def test_time_functions_outside_green_raise(run_async: Run) -> None:
    async def main() -> None:
        with pytest.raises(gb.NoGreenContext):
            gb.sleep(1)
        with pytest.raises(gb.NoGreenContext):
            with gb.timeout(1):
                pass

    run_async(main)

    with pytest.raises(gb.NoGreenContext):
        gb.sleep(1)
