"""The driver of a ``spawn_green`` call, stepped by hand: the Python generator ``_core._drive_py``
and the accelerator's ``_speedups.Driver`` must behave alike, as a generator does, for
everything a coroutine or a Task can do to it (send, throw in its three forms, close, being
collected while suspended). The rest of the suite runs the driver the selected build uses.

A fiber hands its driver something to yield by switching to its parent with it (``None``, as a
bare ``yield`` in a coroutine): that is how these tests make the driver suspend.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import types
import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest
from greenlet import getcurrent

import greenbridge as gb
from greenbridge import _core

Drive = Callable[..., Any]
Run = Callable[..., Any]

DRIVERS = [pytest.param(_core._drive_py, id="python")]
if _core._C_DRIVER is not None:
    DRIVERS.append(pytest.param(_core._drive, id="c"))


@pytest.fixture(params=DRIVERS)
def drive(request: pytest.FixtureRequest) -> Drive:
    return request.param  # type: ignore[no-any-return]


def suspend(value: Any = None) -> Any:
    """In a fiber: make the driver yield ``value`` to whoever steps it; return what it sends."""
    return getcurrent().parent.switch(value)


class Boom(Exception):
    pass


def test_the_c_driver_is_used_exactly_when_the_accelerator_is() -> None:
    assert (_core._drive is not _core._drive_py) == _core.SPEEDUPS == (_core._C_DRIVER is not None)


def test_it_yields_what_the_fiber_hands_over_and_returns_the_result(drive: Drive) -> None:
    def fn(a: int, b: int) -> int:
        return a + b + suspend() + suspend()

    it = drive(fn, (1, 2), {})
    assert it.send(None) is None
    assert it.send(10) is None
    with pytest.raises(StopIteration) as stop:
        it.send(100)
    assert stop.value.value == 113
    with pytest.raises(StopIteration):  # finished: as an exhausted generator
        it.send(None)


def test_next_steps_it_as_send_none(drive: Drive) -> None:
    it = drive(lambda: suspend(), (), {})
    assert next(it) is None
    with pytest.raises(StopIteration) as stop:
        next(it)
    assert stop.value.value is None


def test_a_value_sent_into_a_fresh_driver_is_refused(drive: Drive) -> None:
    ran = []
    it = drive(ran.append, (1,), {})
    with pytest.raises(TypeError, match="can't send non-None value to a just-started generator"):
        it.send(5)
    assert ran == []
    with pytest.raises(StopIteration):  # still fresh: it starts normally
        it.send(None)
    assert ran == [1]


def test_a_throw_into_a_fresh_driver_raises_there_and_finishes_it(drive: Drive) -> None:
    ran = []
    it = drive(ran.append, (1,), {})
    with pytest.raises(Boom):
        it.throw(Boom("early"))
    with pytest.raises(StopIteration):
        it.send(None)
    assert ran == []


def test_what_is_thrown_in_goes_into_the_fiber(drive: Drive) -> None:
    def fn() -> str:
        try:
            suspend()
        except Boom as exc:
            return f"caught {exc}"
        return "not thrown"

    it = drive(fn, (), {})
    it.send(None)
    with pytest.raises(StopIteration) as stop:
        it.throw(Boom("in"))
    assert stop.value.value == "caught in"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(lambda: (Boom("x"),), id="instance"),
        pytest.param(lambda: (Boom,), id="class"),
        pytest.param(lambda: (Boom, "x"), id="class-value"),
    ],
)
def test_throw_takes_an_exception_in_each_form_a_generator_does(
    drive: Drive, args: Callable[[], tuple[Any, ...]]
) -> None:
    caught: list[BaseException] = []

    def fn() -> None:
        try:
            suspend()
        except Boom as exc:
            caught.append(exc)

    it = drive(fn, (), {})
    it.send(None)
    with warnings.catch_warnings():
        # Python 3.12 deprecates the signature with a value for generators (not for this test).
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(StopIteration):
            it.throw(*args())
    assert len(caught) == 1 and type(caught[0]) is Boom


def test_throw_refuses_what_is_not_an_exception(drive: Drive) -> None:
    it = drive(lambda: suspend(), (), {})
    it.send(None)
    with pytest.raises(TypeError, match="exceptions must be classes or instances deriving from"):
        it.throw(42)
    # Nothing was thrown in: the fiber is still suspended and finishes normally.
    with pytest.raises(StopIteration):
        it.send(None)


def test_the_exception_of_the_function_propagates_with_its_frames(drive: Drive) -> None:
    def failing() -> None:
        suspend()
        raise Boom("out")

    it = drive(failing, (), {})
    it.send(None)
    with pytest.raises(Boom) as info:
        it.send(None)
    names = [entry.name for entry in info.traceback]
    assert "failing" in names and "_fiber_main" not in names


def test_a_stopiteration_of_the_function_becomes_a_runtimeerror(drive: Drive) -> None:
    def stops() -> None:
        raise StopIteration("inner")

    it = drive(stops, (), {})
    with pytest.raises(RuntimeError, match="generator raised StopIteration") as info:
        it.send(None)
    assert isinstance(info.value.__cause__, StopIteration)
    assert info.value.__cause__.args == ("inner",)


def suspended_in_try_finally(drive: Drive) -> tuple[Any, list[str]]:
    """A driver whose fiber is suspended inside ``try``/``finally``, and the list its ``finally``
    appends to."""
    unwound: list[str] = []

    def fn() -> None:
        try:
            suspend()
        finally:
            unwound.append("finally")

    it = drive(fn, (), {})
    it.send(None)
    return it, unwound


def test_close_unwinds_a_suspended_fiber(drive: Drive) -> None:
    it, unwound = suspended_in_try_finally(drive)
    assert it.close() is None
    assert unwound == ["finally"]
    with pytest.raises(StopIteration):
        it.send(None)


def test_close_of_a_fiber_that_ignores_generatorexit_raises_runtimeerror(drive: Drive) -> None:
    def stubborn() -> None:
        try:
            suspend()
        except GeneratorExit:
            suspend()

    it = drive(stubborn, (), {})
    it.send(None)
    with pytest.raises(RuntimeError, match="generator ignored GeneratorExit"):
        it.close()
    with pytest.raises(StopIteration):  # it is still suspended, and can finish
        it.send(None)


def test_close_of_a_fresh_driver_runs_nothing(drive: Drive) -> None:
    ran = []
    it = drive(ran.append, (1,), {})
    it.close()
    with pytest.raises(StopIteration):
        it.send(None)
    assert ran == []


def test_an_error_raised_while_closing_propagates(drive: Drive) -> None:
    def fn() -> None:
        try:
            suspend()
        except GeneratorExit:
            raise Boom("while closing") from None

    it = drive(fn, (), {})
    it.send(None)
    with pytest.raises(Boom, match="while closing"):
        it.close()


def test_a_driver_collected_while_suspended_unwinds_its_fiber(drive: Drive) -> None:
    it, unwound = suspended_in_try_finally(drive)
    del it
    gc.collect()
    assert unwound == ["finally"]


def test_a_driver_that_is_not_callable_fails_on_its_first_step(drive: Drive) -> None:
    it = drive(42, (), {})
    with pytest.raises(TypeError, match="spawn_green\\(\\) needs a callable, got 'int'"):
        it.send(None)


class _Foreign:
    """An awaitable handed over by the foreign convention, whose iterator records what it gets."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def __await__(self) -> Generator[Any, Any, str]:
        try:
            got = yield None
            self.log.append(f"sent {got}")
            got = yield None
            self.log.append(f"sent {got}")
        except Boom as exc:
            self.log.append(f"thrown {exc}")
            return "recovered"
        except GeneratorExit:
            self.log.append("closed")
            raise
        return "done"


def test_an_awaitable_handed_over_is_awaited_on_the_fibers_behalf(drive: Drive) -> None:
    foreign = _Foreign()
    it = drive(lambda: suspend(foreign), (), {})
    assert it.send(None) is None
    assert it.send(1) is None
    with pytest.raises(StopIteration) as stop:
        it.send(2)
    assert stop.value.value == "done"
    assert foreign.log == ["sent 1", "sent 2"]


def test_a_throw_while_awaiting_a_hand_over_goes_to_its_iterator(drive: Drive) -> None:
    foreign = _Foreign()
    it = drive(lambda: suspend(foreign), (), {})
    it.send(None)
    with pytest.raises(StopIteration) as stop:
        it.throw(Boom("x"))
    assert stop.value.value == "recovered"
    assert foreign.log == ["thrown x"]


def test_closing_while_awaiting_a_hand_over_closes_its_iterator_then_the_fiber(drive: Drive) -> None:
    foreign = _Foreign()
    seen: list[str] = []

    def fn() -> None:
        try:
            suspend(foreign)
        except GeneratorExit:
            seen.append("GeneratorExit")
            raise

    it = drive(fn, (), {})
    it.send(None)
    it.close()
    assert foreign.log == ["closed"]
    assert seen == ["GeneratorExit"]


def test_a_hand_over_that_is_not_awaitable_fails_in_the_fiber(drive: Drive) -> None:
    def fn() -> str:
        try:
            suspend(42)
        except TypeError as exc:
            return str(exc)
        return "not raised"

    it = drive(fn, (), {})
    with pytest.raises(StopIteration) as stop:
        it.send(None)
    assert "needs an awaitable" in stop.value.value


def test_a_forked_fibers_task_is_made_of_the_driver_and_it_is_a_coroutine_to_asyncio(run_green: Run) -> None:
    if _core._C_DRIVER is None:
        pytest.skip("the C accelerator is not used")
    it = _core._drive(lambda: None, (), {})
    assert asyncio.iscoroutine(it)
    it.close()

    def main() -> list[Any]:
        coros: list[Any] = []
        with gb.Switch() as sw:
            sw.fork(lambda: coros.append(asyncio.current_task().get_coro()))  # type: ignore[union-attr]
        return coros

    assert [type(coro) for coro in run_green(main)] == [_core._C_DRIVER]


def test_the_driver_is_no_generator_but_types_coroutine_accepts_its_python_twin() -> None:
    assert isinstance(_core._drive_py((lambda: None), (), {}), types.GeneratorType)


def test_a_task_made_of_the_driver_is_named_by_the_function_its_fiber_runs(run_green: Run) -> None:
    if _core._C_DRIVER is None:
        pytest.skip("the C accelerator is not used")

    def background() -> None:
        pass

    def main() -> str:
        names: list[str] = []
        with gb.Switch() as sw:
            sw.fork(lambda: names.append(repr(asyncio.current_task())))
            sw.fork(background)
            sw.fork(lambda: names.append(repr(asyncio.current_task())))
        return names[0]

    assert "coro=<test_a_task_made_of_the_driver_is_named_by_the_function_its_fiber_runs" in run_green(main)
    assert _core._drive(len, (), {}).__qualname__ == "len"
    assert _core._drive(background, (), {}).__name__ == "background"
    assert _core._drive(object(), (), {}).__qualname__ == "object"


# -- the running loop, as the accelerator finds it ---------------------------------------------------

speedups = _core._speedups if _core.SPEEDUPS else None
needs_speedups = pytest.mark.skipif(speedups is None, reason="the C accelerator is not in use")


@needs_speedups
def test_the_accelerators_running_loop_is_asyncios_in_a_loop_and_none_outside(run_async: Run) -> None:
    # On Python 3.11 the accelerator reads asyncio's holder of the running loop itself (see
    # running_loop_now in _speedups.c); everywhere it must answer as asyncio._get_running_loop.
    assert speedups is not None
    assert speedups.running_loop() is None

    async def inside() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        in_a_fiber = await gb.spawn_green(speedups.running_loop)
        return speedups.running_loop() is loop, in_a_fiber is loop

    assert run_async(inside) == (True, True)
    assert speedups.running_loop() is None


@needs_speedups
def test_each_thread_finds_its_own_running_loop(run_async: Run) -> None:
    assert speedups is not None
    seen: dict[str, bool] = {}
    started, stop = threading.Event(), threading.Event()

    def other() -> None:
        async def main() -> None:
            seen["other sees its loop"] = speedups.running_loop() is asyncio.get_running_loop()
            started.set()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait, 10)

        asyncio.run(main())

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert started.wait(10)

        async def here() -> bool:
            return speedups.running_loop() is asyncio.get_running_loop()

        seen["this thread sees its loop"] = run_async(here)
    finally:
        stop.set()
        thread.join(10)
    assert seen == {"other sees its loop": True, "this thread sees its loop": True}


@needs_speedups
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_loop_inherited_across_a_fork_is_not_running_in_the_child(run_async: Run) -> None:
    # asyncio's rule (its holder keeps the pid that set it): the child of a fork made inside a
    # running loop has no running loop, and may run one of its own.
    assert speedups is not None

    async def fork_inside() -> str:
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
            pid = os.fork()
        if pid == 0:  # the child: report and leave at once, no pytest teardown
            try:
                inherited = speedups.running_loop()

                async def own() -> bool:
                    return speedups.running_loop() is asyncio.get_running_loop()

                report = f"{inherited!r} {asyncio.run(own())} {speedups.running_loop()!r}"
            except BaseException as exc:  # reported to the parent
                report = f"child failed: {exc!r}"
            os.write(write_end, report.encode())
            os._exit(0)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as f:
            report = f.read().decode()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert speedups.running_loop() is asyncio.get_running_loop()
        return report

    assert run_async(fork_inside) == "None True None"
