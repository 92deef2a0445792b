"""greenbridge.testing: the virtual clock."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import greenbridge as gb
from greenbridge import testing
from greenbridge._core import _live_fibers


def test_a_long_timeout_runs_instantly_at_an_exact_virtual_time() -> None:
    def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            gb.with_timeout(30, gb.sleep, 3600)
        return loop.time(), clock.time()

    started = time.monotonic()
    with testing.virtual_clock() as clock:
        assert gb.run(main, debug=True) == (30.0, 30.0)
    assert time.monotonic() - started < 5  # no real half-minute
    assert not _live_fibers()


def test_the_clock_starts_where_asked_and_stands_still_while_work_is_ready() -> None:
    def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times = [loop.time()]
        for _ in range(100):
            gb.sleep(0)  # ready work: the clock does not move
        times.append(loop.time())
        gb.sleep(0.5)
        times.append(loop.time())
        return times

    with testing.virtual_clock(start=1000.0):
        assert gb.run(main) == [1000.0, 1000.0, 1000.5]


def test_asyncio_run_and_explicit_loop_factory_use_the_clock() -> None:
    async def main() -> float:
        await asyncio.sleep(42)
        return asyncio.get_running_loop().time()

    with testing.virtual_clock():
        assert asyncio.run(main()) == 42.0
    clock = testing.VirtualClock(start=1.0)
    with asyncio.Runner(loop_factory=clock.new_event_loop) as runner:
        assert runner.run(main()) == 43.0
    assert clock.time() == 43.0


def test_jump_moves_time_forward_and_timers_fire() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        record: list[str] = []
        loop.call_later(10, record.append, "timer")
        clock.jump(10)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        record.append(f"now {loop.time()}")
        return record

    clock = testing.VirtualClock()
    with asyncio.Runner(loop_factory=clock.new_event_loop) as runner:
        assert runner.run(main()) == ["timer", "now 10.0"]
    with pytest.raises(ValueError):
        clock.jump(-1)


def test_autojump_threshold_lets_real_io_arrive_first() -> None:
    def blocking() -> str:
        time.sleep(0.01)  # real time, in a thread
        return "thread done"

    def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        with gb.timeout(10):  # a pending timer the clock could jump to
            result = gb.run_in_thread(blocking)
        return result, loop.time()

    with testing.virtual_clock(autojump_threshold=2.0):
        result, at = gb.run(main)
    assert result == "thread done"
    assert at == 0.0  # the clock never jumped: the thread answered first


def test_the_previous_loop_factory_is_restored_and_bad_thresholds_rejected() -> None:
    before = asyncio.new_event_loop
    with testing.virtual_clock():
        assert asyncio.new_event_loop is not before
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, testing.VirtualClockLoop)
        finally:
            loop.close()
    assert asyncio.new_event_loop is before and asyncio.events.new_event_loop is before
    for bad in (-1.0, float("inf")):
        with pytest.raises(ValueError):
            testing.VirtualClock(autojump_threshold=bad)


def test_the_clock_never_touches_the_event_loop_policy_api(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python 3.14 deprecates get/set_event_loop_policy; with warnings as errors a use would fail.
    def deprecated(*args: object) -> None:
        raise AssertionError("the event loop policy API is deprecated from Python 3.14 on")

    monkeypatch.setattr(asyncio, "get_event_loop_policy", deprecated)
    monkeypatch.setattr(asyncio, "set_event_loop_policy", deprecated)
    with testing.virtual_clock(start=5.0):
        assert gb.run(gb.sleep, 1.0) is None
        assert asyncio.run(_loop_time()) == 6.0
    source = Path(testing.__file__).read_text()
    assert "EventLoopPolicy" not in source and "event_loop_policy" not in source


async def _loop_time() -> float:
    return asyncio.get_running_loop().time()
