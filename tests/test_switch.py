"""gb.Switch: Eio's rules for structured concurrency, one test each, on the selected backend."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _green_helpers import cancel_once_started

import greenbridge as gb
from greenbridge import fiber

Run = Callable[..., Any]


class Boom(Exception):
    pass


def forever() -> None:
    fiber.await_cancel()


def raise_boom(message: str = "boom") -> None:
    raise Boom(message)


# -- the block waits for every fiber ----------------------------------------------------------------


def test_block_returns_only_when_every_fiber_has_finished(run_green: Run) -> None:
    record: list[str] = []

    def worker(name: str, ticks: int) -> None:
        for _ in range(ticks):
            fiber.yield_()
        record.append(f"{name} done")

    def main() -> None:
        with gb.Switch() as sw:
            sw.fork(worker, "slow", 3)
            sw.fork(worker, "fast", 1)
            record.append("body done")
        record.append("block exited")

    run_green(main)
    assert record == ["body done", "fast done", "slow done", "block exited"]


def test_hundreds_of_fibers_parked_at_once_keep_their_own_frames(run_green: Run) -> None:
    """Each parked fiber's Python frames (its interpreter data stack: with the accelerator, a
    chunk of a slab shared with others) survive the others' running, parking and dying, in
    waves that fill, empty and refill the slabs."""

    def depth_sum(depth: int, event: gb.Event, tag: int) -> int:
        if depth == 0:
            event.wait()
            return tag
        return depth_sum(depth - 1, event, tag) + 1

    def one(results: list[int], event: gb.Event, tag: int) -> None:
        depth = 250 if tag % 7 == 0 else 3  # some spill into a second chunk
        results.append(depth_sum(depth, event, tag) - depth)

    def main() -> None:
        for wave in range(3):
            event = gb.Event()
            results: list[int] = []
            with gb.Switch() as sw:
                for tag in range(200):
                    sw.fork(one, results, event, tag)
                fiber.yield_()
                event.set()
            assert sorted(results) == list(range(200)), wave

    run_green(main)


_SLABS_IN_A_FORKED_CHILD = """
import os, sys
import greenbridge as gb

def fibers(n):
    event = gb.Event()
    done = []
    with gb.Switch() as sw:
        for i in range(n):
            sw.fork(lambda i=i: (event.wait(), done.append(i)))
        gb.fiber.yield_()
        event.set()
    return len(done)

assert gb.run(fibers, 300) == 300
pid = os.fork()
if pid == 0:
    os._exit(0 if gb.run(fibers, 300) == 300 else 1)
_, status = os.waitpid(pid, 0)
assert gb.run(fibers, 300) == 300
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_process_makes_fibers_as_its_parent_does() -> None:
    """With the accelerator, fibers' data stacks come from slabs with a lock of their own: a
    child made by os.fork() starts with it free and the slabs consistent (a process of its own:
    forking the test process would fork its other threads' state too)."""
    done = subprocess.run(
        [sys.executable, "-c", _SLABS_IN_A_FORKED_CHILD], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_threads_each_running_fibers_on_their_own_loop() -> None:
    """Fibers of several threads, each on its own loop, made and freed at once (the slabs'
    lock serialises their data stacks where the GIL alone might not)."""

    def fibers(n: int) -> int:
        event = gb.Event()
        done: list[int] = []
        with gb.Switch() as sw:
            for i in range(n):
                sw.fork(lambda i=i: (event.wait(), done.append(i)))
            fiber.yield_()
            event.set()
        return len(done)

    results: list[int] = []
    def thread_main() -> None:
        results.extend(gb.run(fibers, 200) for _ in range(3))

    threads = [threading.Thread(target=thread_main) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200] * 12


def test_fork_order_is_deterministic(run_green: Run) -> None:
    """Forked fibers start in fork order, when the forking fiber next suspends."""

    def main() -> list[str]:
        record: list[str] = []

        def child(name: str) -> None:
            record.append(f"{name} starts")
            fiber.yield_()
            record.append(f"{name} resumes")

        with gb.Switch() as sw:
            sw.fork(child, "a")
            sw.fork(child, "b")
            record.append("forked a and b")
            fiber.yield_()
            record.append("body resumes")
            sw.fork(child, "c")
        return record

    expected = [
        "forked a and b",
        "a starts",
        "b starts",
        "body resumes",
        "a resumes",
        "b resumes",
        "c starts",
        "c resumes",
    ]
    assert run_green(main) == expected
    assert run_green(main) == expected


def test_switch_run_passes_the_switch_and_returns_the_result(run_green: Run) -> None:
    def main() -> int:
        results: list[int] = []

        def body(sw: gb.Switch) -> int:
            sw.fork(results.append, 1)
            return 42

        value = gb.Switch.run(body)
        assert results == [1]
        return value

    assert run_green(main) == 42


# -- failures -------------------------------------------------------------------------------


def test_fiber_failure_cancels_siblings_and_body_and_is_raised_itself(run_green: Run) -> None:
    record: list[str] = []
    boom = Boom("fiber")

    def failing() -> None:
        fiber.yield_()
        raise boom

    def sibling() -> None:
        try:
            forever()
        except asyncio.CancelledError:
            record.append("sibling cancelled")
            raise

    def main() -> None:
        with pytest.raises(Boom) as info:
            with gb.Switch() as sw:
                sw.fork(sibling)
                sw.fork(failing)
                try:
                    forever()
                except asyncio.CancelledError:
                    record.append("body cancelled")
                    raise
        assert info.value is boom
        assert info.value.__context__ is None  # not chained to the body's CancelledError
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
        gb.sleep(0)  # no stray cancellation left behind
        record.append("carried on")

    run_green(main)
    assert record == ["sibling cancelled", "body cancelled", "carried on"]


def test_body_failure_cancels_fibers_and_is_raised_with_its_traceback(run_green: Run) -> None:
    record: list[str] = []

    def child() -> None:
        try:
            forever()
        finally:
            record.append("child finished")

    def body_raises() -> None:
        with gb.Switch() as sw:
            sw.fork(child)
            fiber.yield_()
            raise Boom("body")

    def main() -> None:
        with pytest.raises(Boom, match="body") as info:
            body_raises()
        assert "body_raises" in [entry.name for entry in info.traceback]

    run_green(main)
    assert record == ["child finished"]


def test_several_failures_are_raised_as_an_exception_group(run_green: Run) -> None:
    """Eio's "both fibers fail": each fiber gets past its first suspension (protected), so the
    second one has started when the first fails, and both failures are reported."""

    def fail_with(message: str) -> None:
        gb.protect(fiber.yield_)
        raise Boom(message)

    def main() -> None:
        with pytest.raises(ExceptionGroup) as info:
            with gb.Switch() as sw:
                sw.fork(fail_with, "one")
                sw.fork(fail_with, "two")
        assert [str(e) for e in info.value.exceptions] == ["one", "two"]

    run_green(main)


def test_a_fiber_not_started_when_the_switch_fails_never_starts(run_green: Run) -> None:
    """The first fiber fails before the second one's first step: the second never runs."""
    record: list[str] = []

    def fail_with(message: str) -> None:
        record.append(f"{message} runs")
        raise Boom(message)

    def main() -> None:
        with pytest.raises(Boom, match="one"):
            with gb.Switch() as sw:
                sw.fork(fail_with, "one")
                sw.fork(fail_with, "two")

    run_green(main)
    assert record == ["one runs"]


def test_cancellation_never_hides_a_real_error(run_green: Run) -> None:
    """A fiber whose clean-up fails after being cancelled reports that failure too."""

    def bad_cleanup() -> None:
        try:
            forever()
        finally:
            raise Boom("cleanup")

    def first_failure() -> None:
        fiber.yield_()
        raise Boom("first")

    def main() -> None:
        with pytest.raises(ExceptionGroup) as info:
            with gb.Switch() as sw:
                sw.fork(bad_cleanup)
                sw.fork(first_failure)
        assert sorted(str(e) for e in info.value.exceptions) == ["cleanup", "first"]

    run_green(main)


def test_fail_cancels_the_switch_and_raises_on_exit(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        boom = Boom("failed by hand")
        with pytest.raises(Boom) as info:
            with gb.Switch() as sw:
                sw.fork(forever)
                sw.fail(boom)
                record.append("fail() does not suspend")
                try:
                    fiber.check()
                except asyncio.CancelledError:
                    record.append("check() delivers the cancellation")
                    raise
        assert info.value is boom
        gb.sleep(0)

    run_green(main)
    assert record == ["fail() does not suspend", "check() delivers the cancellation"]


def test_fail_then_exit_without_suspending_leaves_no_stray_cancellation(run_green: Run) -> None:
    def main() -> str:
        with pytest.raises(Boom):
            with gb.Switch() as sw:
                sw.fail(Boom())
        gb.sleep(0)
        gb.sleep(0.001)
        return "ok"

    assert run_green(main) == "ok"


def test_a_fiber_forked_on_a_failing_switch_does_not_start(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        with pytest.raises(Boom):
            with gb.Switch() as sw:
                sw.fail(Boom())
                sw.fork(record.append, "late starts")
                promise = sw.fork_promise(record.append, "promised starts")
        with pytest.raises(asyncio.CancelledError):
            promise.await_()

    run_green(main)
    assert record == []


def test_a_fiber_forked_once_non_daemon_work_is_done_does_not_start(run_green: Run) -> None:
    record: list[str] = []

    def daemon(sw: gb.Switch) -> None:
        try:
            fiber.await_cancel()
        finally:
            sw.fork(record.append, "forked by a cancelled daemon")  # refused silently: not started

    def main() -> None:
        with gb.Switch() as sw:
            sw.fork_daemon(daemon, sw)

    run_green(main)
    assert record == []


def test_a_pending_cancellation_is_raised_when_a_switch_is_entered(run_green: Run) -> None:
    """The issue's program: the switch raises at entry, and the later sleep never happens."""
    record: list[str] = []

    def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            with gb.Switch() as sw:
                record.append("body ran")
                sw.fork(record.append, "fiber ran")
            record.append("exited normally")
            gb.sleep(0.5)
        except asyncio.CancelledError:
            record.append("cancelled at entry")

    run_green(main)
    assert record == ["cancelled at entry"]


@pytest.mark.parametrize("combinator", ["both", "all", "pair", "first", "any", "map"])
def test_a_pending_cancellation_is_raised_when_a_combinator_starts(run_green: Run, combinator: str) -> None:
    record: list[str] = []

    def main() -> None:
        calls = {
            "both": lambda: fiber.both(lambda: record.append("f"), lambda: record.append("g")),
            "all": lambda: fiber.all([lambda: record.append("f")]),
            "pair": lambda: fiber.pair(lambda: record.append("f"), lambda: record.append("g")),
            "first": lambda: fiber.first(lambda: record.append("f"), lambda: record.append("g")),
            "any": lambda: fiber.any([lambda: record.append("f")]),
            "map": lambda: fiber.map(record.append, ["f"]),
        }
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            calls[combinator]()

    run_green(main)
    assert record == []


def test_after_fail_in_the_body_a_later_sleep_and_both_are_cancelled(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        with pytest.raises(Boom):
            with gb.Switch() as sw:
                sw.fail(Boom())
                try:
                    fiber.both(lambda: record.append("f"), lambda: record.append("g"))
                except asyncio.CancelledError:
                    record.append("both cancelled")
                    raise

    run_green(main)
    assert record == ["both cancelled"]


def test_on_release_from_a_release_hook_runs_at_once_then_raises(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        with gb.Switch() as sw:

            def hook() -> None:
                record.append("hook")
                try:
                    sw.on_release(record.append, "nested hook")
                except gb.SwitchFinishedError:
                    record.append("on_release refused")
                try:
                    sw.fork(record.append, "forked from a hook")
                except gb.SwitchFinishedError:
                    record.append("fork refused")

            sw.on_release(hook)

    run_green(main)
    assert record == ["hook", "nested hook", "on_release refused", "fork refused"]


# -- daemons, promises, release hooks ----------------------------------------------------------------


def test_daemons_are_cancelled_once_non_daemon_work_is_done(run_green: Run) -> None:
    record: list[str] = []

    def daemon() -> None:
        try:
            forever()
        except asyncio.CancelledError:
            record.append("daemon cancelled")
            raise

    def worker() -> None:
        fiber.yield_()
        fiber.yield_()
        record.append("worker done")

    def main() -> None:
        with gb.Switch() as sw:
            sw.fork_daemon(daemon)
            sw.fork(worker)
            record.append("body done")
        record.append("exited")

    run_green(main)
    assert record == ["body done", "worker done", "daemon cancelled", "exited"]


def test_a_failing_daemon_fails_the_switch(run_green: Run) -> None:
    def daemon() -> None:
        fiber.yield_()
        raise Boom("daemon")

    def main() -> None:
        with pytest.raises(Boom, match="daemon"):
            with gb.Switch() as sw:
                sw.fork_daemon(daemon)
                forever()

    run_green(main)


def test_fork_promise_delivers_value_and_error_to_the_promise(run_green: Run) -> None:
    def main() -> None:
        with gb.Switch() as sw:
            good = sw.fork_promise(lambda: 7)
            bad = sw.fork_promise(lambda: 1 // 0)
            assert good.await_() == 7
            with pytest.raises(ZeroDivisionError):
                bad.await_()
        # The error went to the promise: the switch did not fail.
        with pytest.raises(Boom):
            with gb.Switch() as sw:
                cancelled = sw.fork_promise(forever)
                sw.fork(raise_boom)
        with pytest.raises(asyncio.CancelledError):
            cancelled.await_()

    run_green(main)


def test_release_hooks_run_lifo_after_every_fiber_ended(run_green: Run) -> None:
    record: list[str] = []

    def child() -> None:
        fiber.yield_()
        record.append("child done")

    def main() -> None:
        with gb.Switch() as sw:
            sw.on_release(record.append, "release 1")
            sw.fork(child)
            sw.on_release(record.append, "release 2")
            record.append("body done")

    run_green(main)
    assert record == ["body done", "child done", "release 2", "release 1"]


def test_release_hooks_are_protected_from_cancellation(run_async: Run) -> None:
    record: list[str] = []

    def slow_release() -> None:
        gb.sleep(0.01)  # the host is cancelled while this sleeps
        record.append("release completed")

    def green(started: asyncio.Event) -> None:
        with gb.Switch() as sw:
            sw.on_release(slow_release)
            sw.fork(forever)
            started.set()
            forever()

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(gb.spawn_green(green, started))
        await started.wait()
        task.cancel()
        await asyncio.sleep(0.002)
        task.cancel()  # a second cancellation, during the release hook
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(main)
    assert record == ["release completed"]


def test_a_failing_release_hook_fails_the_switch(run_green: Run) -> None:
    def main() -> None:
        with pytest.raises(Boom, match="release"):
            with gb.Switch() as sw:
                sw.on_release(raise_boom, "release")

    run_green(main)


# -- cancel_fibers ------------------------------------------------------------------------------


def test_cancel_fibers_from_the_body_cancels_the_fibers_not_the_switch(run_green: Run) -> None:
    record: list[str] = []

    def cancelled(name: str) -> None:
        try:
            fiber.await_cancel()
        except asyncio.CancelledError:
            record.append(f"{name} cancelled")
            raise

    def main() -> None:
        with gb.Switch() as sw:
            sw.fork(cancelled, "a")
            sw.fork(cancelled, "b")
            fiber.yield_()  # both are waiting now
            sw.cancel_fibers()
            gb.sleep(0)  # the body is not cancelled
            record.append("body carries on")
            sw.fork(record.append, "forked afterwards runs")
        record.append("block exited normally")

    run_green(main)
    assert record == [
        "a cancelled",
        "b cancelled",
        "body carries on",
        "forked afterwards runs",
        "block exited normally",
    ]


def test_cancel_fibers_spares_the_caller_and_lets_unstarted_fibers_start(run_green: Run) -> None:
    record: list[str] = []

    def winner(sw: gb.Switch) -> None:
        sw.cancel_fibers()
        gb.sleep(0)  # not cancelled: the caller is spared
        record.append("caller carries on")

    def not_started_yet() -> None:
        record.append("started")  # runs up to its first suspension point...
        try:
            gb.sleep(0)
        except asyncio.CancelledError:
            record.append("cancelled there")  # ...where the cancellation lands
            raise

    def main() -> None:
        with gb.Switch() as sw:
            sw.fork(winner, sw)
            sw.fork(not_started_yet)

    run_green(main)
    assert record == ["started", "caller carries on", "cancelled there"]


def test_cancel_fibers_cancels_each_fiber_once(run_green: Run) -> None:
    """A fiber still cleaning up after its cancellation is not cancelled again, by a second
    cancel_fibers nor by the switch failing."""
    record: list[str] = []

    def slow_cleanup() -> None:
        try:
            fiber.await_cancel()
        finally:
            for _ in range(3):
                fiber.yield_()
            record.append("cleanup finished")

    def main() -> None:
        with pytest.raises(Boom):
            with gb.Switch() as sw:
                sw.fork(slow_cleanup)
                fiber.yield_()
                sw.cancel_fibers()
                fiber.yield_()  # the fiber is cleaning up
                sw.cancel_fibers()
                raise Boom()

    run_green(main)
    assert record == ["cleanup finished"]


def test_cancel_fibers_on_a_switch_not_open_raises(run_green: Run) -> None:
    with pytest.raises(RuntimeError, match="before entering"):
        gb.Switch().cancel_fibers()

    def main() -> None:
        with gb.Switch() as sw:
            pass
        with pytest.raises(gb.SwitchFinishedError, match="cancel the fibers"):
            sw.cancel_fibers()

    run_green(main)


# -- misuse ---------------------------------------------------------------------------------


def test_using_a_finished_switch_raises(run_green: Run) -> None:
    released: list[str] = []

    def main() -> None:
        with gb.Switch() as sw:
            pass
        with pytest.raises(gb.SwitchFinishedError, match="fork"):
            sw.fork(lambda: None)
        with pytest.raises(gb.SwitchFinishedError):
            sw.fork_daemon(lambda: None)
        with pytest.raises(gb.SwitchFinishedError):
            sw.fork_promise(lambda: None)
        with pytest.raises(gb.SwitchFinishedError):
            sw.fail(Boom())
        with pytest.raises(gb.SwitchFinishedError):
            sw.on_release(released.append, "run anyway")
        with pytest.raises(RuntimeError, match="already entered"):
            with sw:
                pass
        with gb.Switch() as open_switch:
            with pytest.raises(TypeError, match="callable"):
                open_switch.fork("not callable")  # type: ignore[arg-type]

    run_green(main)
    assert released == ["run anyway"]  # a late release hook still runs: no leak


def test_switch_misuse_before_entering_and_outside_green() -> None:
    sw = gb.Switch()
    with pytest.raises(RuntimeError, match="before entering"):
        sw.fork(lambda: None)
    with pytest.raises(gb.NoGreenContext):
        with gb.Switch():
            pass


# -- cancellation from asyncio and the uncancel bookkeeping -------------------------------------------


def test_switch_cancelled_from_asyncio_cancels_fibers_and_waits_for_them(run_async: Run) -> None:
    record: list[str] = []

    def child(name: str) -> None:
        try:
            forever()
        except asyncio.CancelledError:
            fiber.yield_()  # clean-up that suspends
            record.append(f"{name} cleaned up")
            raise

    def green(started: asyncio.Event) -> None:
        with gb.Switch() as sw:
            sw.fork(child, "a")
            sw.fork(child, "b")
            fiber.yield_()
            started.set()
            forever()

    run_async(cancel_once_started, green)
    record.append("task cancelled")
    assert record == ["a cleaned up", "b cleaned up", "task cancelled"]


def test_timeouts_around_a_switch_see_the_counts_they_expect(run_green: Run) -> None:
    def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        # A failing switch inside a timeout: the switch's error, not a TimeoutError.
        with pytest.raises(Boom):
            with gb.timeout(10):
                with gb.Switch() as sw:
                    sw.fork(raise_boom)
                    forever()
        # A timeout expiring around a switch: TimeoutError, fibers cancelled.
        with pytest.raises(TimeoutError):
            with gb.timeout(0.001):
                with gb.Switch() as sw:
                    sw.fork(forever)
                    forever()
        assert task.cancelling() == 0

    run_green(main)


def test_switch_in_a_fiber_that_swallowed_a_cancellation(run_async: Run) -> None:
    """A fiber that caught CancelledError and carried on keeps cancelling() raised; a switch
    entered afterwards measures from there and still tells its own cancellation apart."""

    def green(started: asyncio.Event) -> str:
        try:
            started.set()
            forever()
        except asyncio.CancelledError:
            pass  # carry on regardless
        with pytest.raises(Boom):
            with gb.Switch() as sw:
                sw.fork(raise_boom)
                forever()
        with pytest.raises(TimeoutError):
            with gb.timeout(0.001):
                forever()
        return "survived"

    async def main() -> tuple[str, int]:
        started = asyncio.Event()
        task = asyncio.create_task(gb.spawn_green(green, started))
        await started.wait()
        task.cancel()
        return await task, task.cancelling()

    assert run_async(main) == ("survived", 1)


def test_task_group_around_green_switches(run_async: Run) -> None:
    def green_fails() -> None:
        with gb.Switch() as sw:
            sw.fork(forever)
            fiber.yield_()
            raise Boom("green")

    async def main() -> None:
        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(gb.spawn_green(green_fails))
                tg.create_task(gb.spawn_green(forever))
        assert [type(e) for e in info.value.exceptions] == [Boom]

    run_async(main)


def test_switch_entered_right_after_a_direct_resumption_uses_its_own_task(run_green: Run) -> None:
    """A fiber woken straight from a loop callback runs outside its Task's step; a switch it
    enters must still cancel the right Task (its own) when a fiber fails."""

    def main() -> str:
        event = gb.Event()
        asyncio.get_running_loop().call_soon(event.set)
        event.wait()  # resumed directly by the callback
        with pytest.raises(Boom):
            with gb.Switch() as sw:
                sw.fork(raise_boom)
                forever()
        fiber.check()
        gb.sleep(0)
        return "ok"

    assert run_green(main) == "ok"


def test_fork_from_asyncio_code_onto_an_open_switch(run_green: Run) -> None:
    """fork never suspends, so a coroutine or a loop callback may fork onto an open switch."""
    record: list[str] = []

    def main() -> None:
        with gb.Switch() as sw:
            asyncio.get_running_loop().call_soon(sw.fork, record.append, "forked from a callback")
            gb.sleep(0)
            gb.sleep(0)

    run_green(main)
    assert record == ["forked from a callback"]


def test_switch_bookkeeping_is_empty_after_many_switches(run_green: Run) -> None:
    from greenbridge import _switch

    def main() -> None:
        for i in range(200):
            try:
                with gb.Switch() as sw:
                    sw.fork(fiber.yield_)
                    sw.fork_daemon(forever)
                    if i % 2:
                        sw.fork(raise_boom)
                    sw.on_release(lambda: None)
            except Boom:
                pass

    run_green(main)
    assert _switch._fiber_switch == {}
    assert _switch._open_switches == {}
