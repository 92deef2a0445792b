"""The one wait queue under every primitive: FIFO hand-off, clean-up on cancellation, values
given back when a cancellation races with the wake-up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import greenbridge as gb
from greenbridge import fiber
from greenbridge._parking import ParkingLot

Run = Callable[..., Any]


def start(fn: Callable[..., Any], *args: Any) -> asyncio.Task[Any]:
    """A fiber in its own Task, so that a test can cancel exactly that fiber."""
    return asyncio.ensure_future(gb.spawn_green(fn, *args))


def outcome(task: asyncio.Task[Any]) -> Any:
    """Wait for ``task`` from green code: its result, or the exception it ended with."""
    try:
        return gb.await_from_green(asyncio.shield(task))
    except BaseException as exc:
        return exc


def test_fibers_are_served_first_come_first_served(run_green: Run) -> None:
    def main() -> list[str]:
        lot = ParkingLot()
        got: list[str] = []
        with gb.Switch() as sw:
            for name in ("a", "b", "c"):
                sw.fork(lambda name=name: got.append(f"{name}:{lot.park()}"))
            fiber.yield_()
            assert len(lot) == 3
            for value in ("1", "2", "3"):
                assert lot.unpark(value)
                fiber.yield_()
            assert not lot.unpark("nobody") and not lot
        return got

    assert run_green(main) == ["a:1", "b:2", "c:3"]


def test_a_fiber_cancelled_while_parked_leaves_and_is_skipped(run_green: Run) -> None:
    def main() -> tuple[Any, Any, int]:
        lot = ParkingLot()
        first, second = start(lot.park), start(lot.park)
        fiber.yield_()
        first.cancel()  # cancelled, not yet run: it cannot take a value any more
        assert lot.unpark("value")  # ...so the value goes to the next one
        return type(outcome(first)), outcome(second), len(lot)

    assert run_green(main) == (asyncio.CancelledError, "value", 0)


def test_a_value_handed_to_a_fiber_cancelled_before_it_ran_is_given_back(run_green: Run) -> None:
    def main() -> tuple[Any, list[str]]:
        lot = ParkingLot()
        given_back: list[str] = []
        taker = start(lot.park, None, given_back.append)
        fiber.yield_()
        assert lot.unpark("permit")  # handed over...
        taker.cancel()  # ...and cancelled before the taker could return it
        return type(outcome(taker)), given_back

    assert run_green(main) == (asyncio.CancelledError, ["permit"])


def test_unpark_all_wakes_the_parked_in_order_and_not_the_newcomers(run_green: Run) -> None:
    def main() -> tuple[int, list[str], int]:
        lot = ParkingLot()
        record: list[str] = []

        def parker(name: str) -> None:
            record.append(f"{name}:{lot.park()}")
            if name == "a":
                record.append(f"a again:{lot.park()}")  # parks anew: waits for the next call

        with gb.Switch() as sw:
            for name in ("a", "b"):
                sw.fork(parker, name)
            fiber.yield_()
            woken = lot.unpark_all("go")
            fiber.yield_()
            waiting = len(lot)
            lot.unpark_all("later")
        return woken, record, waiting

    assert run_green(main) == (2, ["a:go", "b:go", "a again:later"], 1)


def test_pop_hands_the_waker_the_data_of_the_oldest_entry(run_green: Run) -> None:
    def main() -> tuple[Any, Any]:
        lot = ParkingLot()
        adder = start(lot.park, "the item")
        fiber.yield_()
        entry = lot.pop()
        assert entry is not None and entry.data == "the item" and lot.pop() is None
        assert entry.wake("taken")
        return outcome(adder), entry.data

    assert run_green(main) == ("taken", "the item")


def test_parked_runs_once_queued_and_a_failure_leaves_nothing_parked(run_green: Run) -> None:
    def main() -> list[Any]:
        lot = ParkingLot()
        seen: list[Any] = []

        def failing() -> None:
            seen.append(len(lot))
            raise ValueError("refused")

        with pytest.raises(ValueError, match="refused"):
            lot.park(parked=failing)
        seen.append(len(lot))
        with gb.Switch() as sw:
            sw.fork(lot.unpark, "woken")  # runs once the parker below suspends
            seen.append(lot.park(parked=lambda: seen.append(len(lot))))
        return seen

    assert run_green(main) == [1, 0, 1, "woken"]


def test_parking_outside_green_code_is_refused() -> None:
    with pytest.raises(gb.NoGreenContext):
        ParkingLot().park()
