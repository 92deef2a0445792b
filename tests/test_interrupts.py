"""KeyboardInterrupt and SystemExit: ``gb.run`` cleans up and re-raises, like ``asyncio.run``.

Each scenario raises the interrupt somewhere (the main green function, a green fiber in another
Task, a coroutine Task, a fiber resumed directly by a loop callback, green code nested inside a
coroutine) while bystanders -- a green fiber and a coroutine, both asleep -- are running. The
green program and its pure-asyncio twin (every green function written as a coroutine, run by
``asyncio.Runner``) must behave the same: the same exception object re-raised, the same
``finally`` blocks run (a green one that suspends while unwinding included), the same asyncio log.
Then no fiber, greenlet or descriptor is left.

A real SIGINT needs a process of its own (the signal handler ``asyncio.Runner`` installs, and a
second SIGINT raising ``KeyboardInterrupt`` inside running green code): those scenarios run in a
subprocess.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from _reliability import live_greenlets, watch

import greenbridge as gb
from greenbridge._core import _live_fibers, _loop_factory
from greenbridge._waiter import Waiter

WHERE = ("main", "green task", "async task", "woken fiber", "nested", "switch fiber")
FOREVER = 3600


class Scenario:
    """One interrupt scenario, written once in green style and once with coroutines only."""

    def __init__(self, where: str, exc: BaseException) -> None:
        self.where = where
        self.exc = exc
        self.record: list[str] = []

    # -- the green program ---------------------------------------------------------------------

    def green_bystander(self) -> None:
        try:
            gb.sleep(FOREVER)
        finally:
            self.record.append("green bystander unwinding")
            gb.sleep(0)  # suspending while cancelled: allowed, as in a coroutine
            self.record.append("green bystander cleaned up")

    def green_raiser(self) -> None:
        try:
            raise self.exc
        finally:
            self.record.append("raiser finally")

    def green_woken_raiser(self, waiter: Waiter) -> None:
        waiter.wait()
        self.green_raiser()

    async def nested_coroutine(self) -> None:
        await gb.spawn_green(self.green_raiser)

    def green_main(self) -> None:
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(gb.spawn_green(self.green_bystander)),
            loop.create_task(self.bystander()),
        ]
        gb.sleep(0)  # the bystanders start and fall asleep
        try:
            if self.where == "main":
                self.green_raiser()
            elif self.where == "nested":
                gb.await_from_green(self.nested_coroutine())
            elif self.where == "green task":
                tasks.append(loop.create_task(gb.spawn_green(self.green_raiser)))
            elif self.where == "async task":
                tasks.append(loop.create_task(self.raiser()))
            elif self.where == "woken fiber":
                waiter = Waiter()
                tasks.append(loop.create_task(gb.spawn_green(self.green_woken_raiser, waiter)))
                gb.sleep(0)  # it parks
                loop.call_soon(waiter.wake)  # resumed directly, from the loop callback
            elif self.where == "switch fiber":
                with gb.Switch() as sw:
                    sw.fork(self.green_raiser)
                    gb.sleep(FOREVER)
            gb.sleep(FOREVER)
        finally:
            self.record.append("main finally")
            del tasks

    # -- the pure-asyncio twin -----------------------------------------------------------------

    async def bystander(self) -> None:
        try:
            await asyncio.sleep(FOREVER)
        finally:
            self.record.append("async bystander unwinding")
            await asyncio.sleep(0)
            self.record.append("async bystander cleaned up")

    async def raiser(self) -> None:
        try:
            raise self.exc
        finally:
            self.record.append("raiser finally")

    async def woken_raiser(self, future: asyncio.Future[None]) -> None:
        await future
        await self.raiser()

    async def async_main(self) -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self.async_green_bystander()), loop.create_task(self.bystander())]
        await asyncio.sleep(0)
        try:
            if self.where in ("main", "nested"):
                await self.raiser()
            elif self.where in ("green task", "async task"):
                tasks.append(loop.create_task(self.raiser()))
            elif self.where == "woken fiber":
                future = loop.create_future()
                tasks.append(loop.create_task(self.woken_raiser(future)))
                await asyncio.sleep(0)
                loop.call_soon(future.set_result, None)
            elif self.where == "switch fiber":
                async with asyncio.TaskGroup() as group:
                    group.create_task(self.raiser())
                    await asyncio.sleep(FOREVER)
            await asyncio.sleep(FOREVER)
        finally:
            self.record.append("main finally")
            del tasks

    async def async_green_bystander(self) -> None:
        """The green bystander's twin, recording the same lines."""
        try:
            await asyncio.sleep(FOREVER)
        finally:
            self.record.append("green bystander unwinding")
            await asyncio.sleep(0)
            self.record.append("green bystander cleaned up")


def run_scenario(
    where: str, exc_type: type[BaseException], backend: str, *, green: bool
) -> tuple[Scenario, Any]:
    scenario = Scenario(where, exc_type("interrupted"))
    with watch(backend) as report:
        with pytest.raises(exc_type) as info:
            if green:
                gb.run(scenario.green_main, backend=backend, debug=True)
            else:
                with asyncio.Runner(debug=True, loop_factory=_loop_factory(backend)) as runner:
                    runner.run(scenario.async_main())
        assert info.value is scenario.exc
        # Let the run's Tasks be collected inside the watch, so that what asyncio logs about
        # them is attributed to this run: the traceback holds their frames.
        scenario.exc.__traceback__ = None
        del info
    return scenario, report


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("where", WHERE)
def test_gb_run_cleans_up_and_reraises_like_asyncio_run(
    where: str, exc_type: type[BaseException], gb_backend: str
) -> None:
    green, green_report = run_scenario(where, exc_type, gb_backend, green=True)
    everything = {
        "raiser finally",
        "main finally",
        "green bystander unwinding",
        "green bystander cleaned up",
        "async bystander unwinding",
        "async bystander cleaned up",
    }
    assert set(green.record) == everything
    assert green.record.count("main finally") == 1
    assert green_report.fds_after == green_report.fds_before
    assert green_report.greenlets == [] and green_report.fibers == []
    assert green_report.warnings == []
    assert _live_fibers() == [] and live_greenlets() == []
    if where == "switch fiber":
        # The twin, a TaskGroup child raising the interrupt, is no reference: asyncio re-raises
        # it out of the TaskGroup while asyncio.run cancels the leftovers, which cuts that
        # clean-up short ("Task was destroyed but it is pending!"). A Switch lets it finish.
        assert green_report.log == []
        return

    twin, twin_report = run_scenario(where, exc_type, gb_backend, green=False)
    assert sorted(green.record) == sorted(twin.record)
    # The asyncio log is the one asyncio.run produces for the same program (an interrupt
    # escaping from a Task other than the main one leaves that Task's exception unretrieved,
    # and asyncio says so).
    assert twin_report.warnings == []
    assert green_report.log == twin_report.log


def test_an_interrupt_from_a_bystander_during_cleanup_still_lets_gb_run_finish(gb_backend: str) -> None:
    """A KeyboardInterrupt raised by a fiber's ``finally`` while ``gb.run`` cancels leftovers
    is reported the way ``asyncio.run`` reports it: the shutdown goes on, the interrupt
    propagates, no fiber is left."""
    record: list[str] = []

    def stubborn() -> None:
        try:
            gb.sleep(FOREVER)
        finally:
            record.append("stubborn finally")
            raise KeyboardInterrupt("during shutdown")

    def main() -> str:
        asyncio.get_running_loop().create_task(gb.spawn_green(stubborn))
        gb.sleep(0)
        return "main done"

    with pytest.raises(KeyboardInterrupt, match="during shutdown"):
        gb.run(main, backend=gb_backend)
    assert record == ["stubborn finally"]
    assert _live_fibers() == [] and live_greenlets() == []


def _nested_protect(depth: int, innermost: Callable[[], None], record: list[str]) -> Callable[[], None]:
    """A main function that runs ``innermost`` ``depth`` calls of ``gb.protect`` deep, each level
    in a fiber of its own Task, recording each level's ``finally``."""

    def level(n: int) -> None:
        try:
            if n == depth:
                innermost()
            else:
                gb.protect(level, n + 1)
        finally:
            record.append(f"level {n} finally")

    return functools.partial(level, 0)


def _ctrl_c_twice(frame: FrameType) -> None:
    """Deliver Ctrl-C twice as the signal would, landing in ``frame``."""
    handler = signal.getsignal(signal.SIGINT)
    assert callable(handler)
    handler(signal.SIGINT, frame)
    handler(signal.SIGINT, frame)


@pytest.mark.parametrize("lands", ["program", "plumbing"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_ctrl_c_twice_inside_nested_protect_unwinds_every_level(
    depth: int, lands: str, gb_backend: str
) -> None:
    """Ctrl-C twice in a function ``gb.protect`` runs inside ``gb.protect``: every level's
    ``finally`` runs once, ``gb.run`` raises ``KeyboardInterrupt`` and no fiber is left. In the
    program's frame the second Ctrl-C raises there, and the interrupt leaves the loop once from
    each level's Task, all but the first while the leftovers are cancelled; that cut the sweep
    short and left the outer levels suspended for ever. In greenbridge's frames it is owed."""
    record: list[str] = []

    def innermost() -> None:
        gb.sleep(0)
        # sys._getframe(1): _fiber_main, which called this function (depth >= 1)
        _ctrl_c_twice(sys._getframe() if lands == "program" else sys._getframe(1))

    main = _nested_protect(depth, innermost, record)
    with watch(gb_backend) as report, pytest.raises(KeyboardInterrupt):
        gb.run(main, backend=gb_backend, debug=True)
    assert sorted(record) == [f"level {n} finally" for n in range(depth + 1)]
    assert report.problems() == []
    assert _live_fibers() == [] and live_greenlets() == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_an_interrupt_raised_inside_nested_protect_is_reraised_after_every_level_unwound(
    depth: int, exc_type: type[BaseException], gb_backend: str
) -> None:
    """The same without a signal: the interrupt raised by the innermost protected function
    comes out of ``gb.run`` (the same object) once every level has unwound."""
    record: list[str] = []
    exc = exc_type("interrupted")

    def innermost() -> None:
        gb.sleep(0)
        raise exc

    with watch(gb_backend) as report:
        with pytest.raises(exc_type) as info:
            gb.run(_nested_protect(depth, innermost, record), backend=gb_backend, debug=True)
        assert info.value is exc
        exc.__traceback__ = None
        del info
    assert sorted(record) == [f"level {n} finally" for n in range(depth + 1)]
    assert report.problems() == []
    assert _live_fibers() == [] and live_greenlets() == []


# -- real signals, in a subprocess ---------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import greenbridge as gb

    backend, mode = sys.argv[1], sys.argv[2]
    record = []

    def bystander():
        try:
            gb.sleep(3600)
        finally:
            record.append("bystander finally")
            gb.sleep(0)
            record.append("bystander cleaned up")

    def main():
        asyncio.get_running_loop().create_task(gb.spawn_green(bystander))
        gb.sleep(0)
        try:
            print("ready", flush=True)
            if mode == "suspended":
                gb.sleep(3600)
            else:  # busy: never suspends, so only a second SIGINT can stop it
                task = asyncio.current_task()
                announced = False
                while True:
                    if task.cancelling() and not announced:
                        print("cancel requested", flush=True)
                        announced = True
        finally:
            record.append("main finally")

    try:
        gb.run(main, backend=backend)
    except KeyboardInterrupt:
        record.append("KeyboardInterrupt")
    from greenbridge._core import _live_fibers
    print(",".join(record), len(_live_fibers()), flush=True)
    """
)


def _child(backend: str, mode: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDEVMODE"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, backend, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _expect_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == expected, (line, proc.stderr.read() if proc.stderr else "")


def test_sigint_while_green_code_is_suspended(gb_backend: str) -> None:
    """One SIGINT: asyncio.Runner cancels the main Task, the green main unwinds at its
    suspension point, everything else is cancelled, ``gb.run`` raises KeyboardInterrupt."""
    with _child(gb_backend, "suspended") as proc:
        _expect_line(proc, "ready")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == "main finally,bystander finally,bystander cleaned up,KeyboardInterrupt 0"


def test_second_sigint_interrupts_green_code_that_never_suspends(gb_backend: str) -> None:
    """The first SIGINT only requests the main Task's cancellation (green code that never
    suspends cannot see it); the second raises KeyboardInterrupt right inside the running fiber,
    which unwinds; the bystander is cancelled; ``gb.run`` re-raises."""
    with _child(gb_backend, "busy") as proc:
        _expect_line(proc, "ready")
        proc.send_signal(signal.SIGINT)
        _expect_line(proc, "cancel requested")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == "main finally,bystander finally,bystander cleaned up,KeyboardInterrupt 0"
