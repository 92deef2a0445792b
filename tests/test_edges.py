"""The edges of asyncio where the seams used to break: cancel-every-task sweeps, threads and
lifetimes, the public namespace. Each test runs on every backend."""

from __future__ import annotations

import asyncio
import gc
import io
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from greenlet import greenlet

import greenbridge as gb
from greenbridge._core import _Fiber, _idle_fibers

Run = Callable[..., Any]


# -- cancellation sweeps -----------------------------------------------------------------------------


def test_a_sweep_that_cancels_every_task_finishes_the_switch(run_async: Run) -> None:
    """Shutdown code cancels every task, the switch's host and a child that has not run yet."""
    record: list[str] = []

    def body(main: asyncio.Task[Any]) -> None:
        with gb.Switch() as sw:
            sw.fork(gb.sleep, 1)
            for task in asyncio.all_tasks():
                if task is not main:
                    task.cancel()
            gb.sleep(0)
        record.append("not reached")

    async def main() -> None:
        me = asyncio.current_task()
        assert me is not None
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(gb.spawn_green(body, me))
        record.append("switch finished cancelled")

    run_async(main)
    assert record == ["switch finished cancelled"]


def test_a_sweep_rejects_the_promise_of_an_unstarted_fiber(run_async: Run) -> None:
    def body(main: asyncio.Task[Any]) -> str:
        with gb.Switch() as sw:
            promise = sw.fork_promise(lambda: "never")
            for task in asyncio.all_tasks():
                if task is not main and task is not asyncio.current_task():
                    task.cancel()
        with pytest.raises(asyncio.CancelledError):
            promise.await_()
        return "ok"

    async def main() -> str:
        me = asyncio.current_task()
        assert me is not None
        return await asyncio.create_task(gb.spawn_green(body, me))

    assert run_async(main) == "ok"


def test_runner_close_after_the_main_task_ends_finishes_every_switch(gb_backend: str) -> None:
    """asyncio.Runner.close() cancels the leftovers, some of which have not run their first step."""
    from greenbridge._core import _loop_factory

    record: list[str] = []

    def background() -> None:
        try:
            with gb.Switch() as sw:
                for _ in range(3):
                    sw.fork(gb.sleep, 10)
                gb.sleep(10)
        except asyncio.CancelledError:
            record.append("switch cancelled")
            raise

    async def main() -> None:
        asyncio.get_running_loop().create_task(gb.spawn_green(background))
        await asyncio.sleep(0)

    with asyncio.Runner(loop_factory=_loop_factory(gb_backend)) as runner:
        runner.run(main())
    assert record == ["switch cancelled"]


# -- threads and lifetimes ---------------------------------------------------------------------------


def _greenbridge_greenlets() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is _Fiber and not obj.dead)


def test_idle_fibers_do_not_outlive_asyncio_run(gb_backend: str) -> None:
    from greenbridge._core import _loop_factory

    async def main() -> int:
        results = await asyncio.gather(*(gb.spawn_green(gb.sleep, 0) for _ in range(2000)))
        return len(results)

    before = _greenbridge_greenlets()
    with asyncio.Runner(loop_factory=_loop_factory(gb_backend)) as runner:
        assert runner.run(main()) == 2000
    assert _idle_fibers() == []
    assert _greenbridge_greenlets() == before


def test_many_threads_each_running_a_loop_leave_no_fibers(gb_backend: str) -> None:
    from greenbridge._core import _loop_factory

    errors: list[BaseException] = []

    def in_thread() -> None:
        async def main() -> None:
            for _ in range(100):
                await gb.spawn_green(lambda: None)

        try:
            with asyncio.Runner(loop_factory=_loop_factory(gb_backend)) as runner:
                runner.run(main())
            assert _idle_fibers() == []
        except BaseException as exc:  # reported below
            errors.append(exc)

    for _ in range(8):  # 8 waves of 50 threads: 400 threads in all, bounded concurrency
        threads = [threading.Thread(target=in_thread) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    gc.collect()
    dead_threads_fibers = [obj for obj in gc.get_objects() if type(obj) is _Fiber]
    assert len(dead_threads_fibers) <= len(_idle_fibers()) + 1


def test_dump_fibers_and_the_leak_check_see_only_this_threads_fibers(run_green: Run) -> None:
    """A fiber parked in another thread's loop is neither dumped nor counted as our leak."""
    from greenbridge._core import _live_fibers

    parked = threading.Event()
    release = threading.Event()

    def other_thread() -> None:
        def wait_for_release() -> None:
            while not release.is_set():
                gb.sleep(0.005)

        def main() -> None:
            with gb.Switch() as sw:
                sw.fork(wait_for_release)
                parked.set()

        gb.run(main)

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert parked.wait(10)
        assert _live_fibers() == []
        out = io.StringIO()
        gb.dump_fibers(file=out)
        assert "wait_for_release" not in out.getvalue()
    finally:
        release.set()
        thread.join()


def test_waking_a_primitive_from_another_thread_is_a_clear_error(run_green: Run) -> None:
    def main() -> str:
        promise: gb.Promise[str] = gb.Promise()
        errors: list[BaseException] = []

        def from_thread() -> None:
            try:
                promise.resolve("from another thread")
            except RuntimeError as exc:
                errors.append(exc)

        def resolve_later() -> None:
            thread = threading.Thread(target=from_thread)
            thread.start()
            gb.await_from_green(asyncio.to_thread(thread.join))
            assert len(errors) == 1 and "call_soon_threadsafe" in str(errors[0])
            promise.resolve("from the loop's thread")  # nothing was lost: it still works

        with gb.Switch() as sw:
            sw.fork(resolve_later)
            with gb.timeout(10):
                return promise.await_()

    assert run_green(main) == "from the loop's thread"


# -- the public namespace -----------------------------------------------------------------------------


def test_public_submodules_are_attributes_of_the_package() -> None:
    code = (
        "import greenbridge as gb\n"
        "assert gb.fiber.first is not None and gb.flow.copy is not None\n"
        "assert gb.net.connect is not None and gb.testing.virtual_clock is not None\n"
        "try:\n    gb.nonexistent\nexcept AttributeError as exc:\n    assert 'nonexistent' in str(exc)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_package_imports_no_public_submodule() -> None:
    code = (
        "import sys, greenbridge\n"
        "public = ('greenbridge.net', 'greenbridge.flow', 'greenbridge.testing')\n"
        "loaded = [m for m in public if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_greenlet_type_is_used_for_fibers() -> None:
    assert issubclass(_Fiber, greenlet)
