"""Waiter: the one-shot wake-up internal waits use, including direct resumption of fibers.

Every test that makes a Waiter runs on both implementations (``impl``): the Python class and
its C version in ``_speedups``; a differential property holds them to the same results.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

import greenbridge as gb
from greenbridge import _waiter, _wake_batch
from greenbridge._waiter import PyWaiter, Waiter
from greenbridge._wake_batch import PyWakeBatch, WakeBatch

Run = Callable[..., Any]
Impl = Callable[[], Waiter]

C_SKIP_REASON = (
    "GREENBRIDGE_NO_SPEEDUPS is set: the C Waiter is not in use"
    if os.environ.get("GREENBRIDGE_NO_SPEEDUPS")
    else "the C accelerator is not built (python setup.py build_ext --inplace)"
)
CWaiter: Any = Waiter if _waiter.SPEEDUPS else None
CWakeBatch: Any = WakeBatch if _waiter.SPEEDUPS else None


@pytest.fixture(params=["python", "c"])
def impl(request: pytest.FixtureRequest) -> Impl:
    """The Waiter class under test."""
    if request.param == "python":
        return PyWaiter
    if CWaiter is None:
        pytest.skip(C_SKIP_REASON)
    return CWaiter  # type: ignore[no-any-return]


@pytest.fixture(params=["python", "c"])
def batch_impl(request: pytest.FixtureRequest) -> Callable[[], WakeBatch]:
    """The WakeBatch class under test."""
    if request.param == "python":
        return PyWakeBatch
    if CWakeBatch is None:
        pytest.skip(C_SKIP_REASON)
    return CWakeBatch  # type: ignore[no-any-return]


async def _ready(value: Any) -> Any:
    return value


def test_wake_before_wait_returns_at_once(run_green: Run, impl: Impl) -> None:
    def green() -> Any:
        waiter = impl()
        assert waiter.wake("early") is True
        assert waiter.wake("again") is False
        assert waiter.done()
        return waiter.wait()

    assert run_green(green) == "early"


def test_wake_from_a_loop_callback_resumes_the_fiber_directly(run_green: Run, impl: Impl) -> None:
    record: list[str] = []

    def green() -> None:
        waiter = impl()

        def callback() -> None:
            record.append("callback wakes")
            assert waiter.wake("value") is True
            record.append("wake returned")

        asyncio.get_running_loop().call_soon(callback)
        record.append(f"fiber got {waiter.wait()}")

    run_green(green)
    assert record == ["callback wakes", "fiber got value", "wake returned"]


def test_directly_resumed_fiber_sees_its_task_and_awaits_inside_it(run_async: Run, impl: Impl) -> None:
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
        waiter = impl()
        hosting = asyncio.create_task(gb.spawn_green(green, waiter))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        loop.call_soon(waiter.wake, "done")
        return await hosting

    assert run_async(main) == "done"
    assert record == [("its own task is current", True), ("awaits inside its task", True)]


def test_directly_resumed_fiber_may_finish_and_park_again(run_async: Run, impl: Impl) -> None:
    record: list[str] = []

    def green(first: Waiter, second: Waiter) -> str:
        record.append(first.wait())
        record.append(second.wait())  # parks again while resumed directly
        return "finished while resumed directly"

    async def main() -> str:
        first, second = impl(), impl()
        task = asyncio.create_task(gb.spawn_green(green, first, second))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        loop.call_soon(first.wake, "one")
        loop.call_soon(second.wake, "two")
        return await task

    assert run_async(main) == "finished while resumed directly"
    assert record == ["one", "two"]


def test_wake_from_another_fiber_goes_through_the_task(run_async: Run, impl: Impl) -> None:
    record: list[str] = []

    def sleeper(waiter: Waiter) -> None:
        record.append(f"sleeper got {waiter.wait()}")

    def waker(waiter: Waiter) -> None:
        assert waiter.wake("hello") is True
        record.append("waker went on")

    async def main() -> None:
        waiter = impl()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gb.spawn_green(sleeper, waiter))
            await asyncio.sleep(0)
            tg.create_task(gb.spawn_green(waker, waiter))

    run_async(main)
    assert record == ["waker went on", "sleeper got hello"]


def test_cancelled_waiter_refuses_values(run_async: Run, impl: Impl) -> None:
    async def main() -> None:
        waiter = impl()
        task = asyncio.create_task(gb.spawn_green(waiter.wait))
        await asyncio.sleep(0)
        task.cancel()
        assert waiter.wake("lost?") is False  # the fiber is being cancelled: caller keeps it
        with pytest.raises(asyncio.CancelledError):
            await task
        assert waiter.take_back() == (False, None)
        assert waiter.wake("after") is False

    run_async(main)


def test_value_accepted_before_a_cancellation_can_be_taken_back(run_async: Run, impl: Impl) -> None:
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
        waiter = impl()
        task = asyncio.create_task(gb.spawn_green(green, waiter))
        await asyncio.sleep(0)
        await gb.spawn_green(other_fiber, waiter, task)
        return await task

    result = run_async(main)
    # Either the fiber got the item, or it was interrupted and the item comes back: never lost.
    assert result in ("item", ("taken back", (True, "item")))


def test_cancellation_while_running_directly_is_delivered_at_the_next_park(
    run_async: Run, impl: Impl
) -> None:
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
        first, second = impl(), impl()
        hosting = asyncio.create_task(gb.spawn_green(green, first, second))
        await asyncio.sleep(0)
        asyncio.get_running_loop().call_soon(first.wake)
        with pytest.raises(asyncio.CancelledError):
            await hosting
        assert second.wake() is False

    run_async(main)
    assert record == ["cancelled at the next park"]


def test_fail_and_cancel(run_green: Run, impl: Impl) -> None:
    def green() -> list[str]:
        record = []
        failing = impl()
        asyncio.get_running_loop().call_soon(failing.fail, KeyError("k"))
        try:
            failing.wait()
        except KeyError:
            record.append("failed")
        cancelled = impl()
        asyncio.get_running_loop().call_soon(cancelled.cancel)
        try:
            cancelled.wait()
        except asyncio.CancelledError:
            record.append("cancelled")
        assert cancelled.cancel() is False
        with pytest.raises(RuntimeError, match="called again"):
            _interrupted_waiter(impl).wait()
        return record

    assert run_green(green) == ["failed", "cancelled"]


def _interrupted_waiter(impl: Impl) -> Waiter:
    waiter = impl()
    waiter._state = 4  # _TAKEN_BACK: wait() must not hand out the value twice
    return waiter


def test_wait_twice_and_outside_green_are_errors(run_async: Run, impl: Impl) -> None:
    async def main() -> None:
        with pytest.raises(gb.NoGreenContext):
            impl().wait()
        waiter = impl()
        task = asyncio.create_task(gb.spawn_green(waiter.wait))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="called twice"):
            await gb.spawn_green(waiter.wait)
        waiter.wake(1)
        assert await task == 1

    run_async(main)


def test_foreign_convention_while_resumed_directly(run_async: Run, impl: Impl) -> None:
    from sqlalchemy.util import await_

    def green(waiter: Waiter) -> Any:
        waiter.wait()
        return await_(_ready("through the driver"))

    async def main() -> Any:
        waiter = impl()
        task = asyncio.create_task(gb.spawn_green(green, waiter))
        await asyncio.sleep(0)
        asyncio.get_running_loop().call_soon(waiter.wake)
        return await task

    assert run_async(main) == "through the driver"


def test_waiter_inside_sqlalchemy_greenlet_spawn(run_async: Run, impl: Impl) -> None:
    from sqlalchemy.util import greenlet_spawn

    async def main() -> Any:
        waiter = impl()
        asyncio.get_running_loop().call_soon(waiter.wake, "foreign")
        return await greenlet_spawn(waiter.wait)

    assert run_async(main) == "foreign"


def test_many_fibers_ping_pong_directly(run_async: Run, impl: Impl) -> None:
    """Two fibers handing a counter back and forth through loop callbacks, many times."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        boxes: dict[str, Waiter] = {"a": impl(), "b": impl()}

        def player(me: str, other: str, rounds: int) -> int:
            last = 0
            for _ in range(rounds):
                last = boxes[me].wait()
                boxes[me] = impl()
                loop.call_soon(boxes[other].wake, last + 1)
            return last

        a = asyncio.create_task(gb.spawn_green(player, "a", "b", 500))
        b = asyncio.create_task(gb.spawn_green(player, "b", "a", 500))
        await asyncio.sleep(0)
        boxes["a"].wake(0)
        results = await asyncio.gather(a, b)
        return max(results)

    assert run_async(main) == 999


def test_direct_resumption_from_inside_another_task_restores_that_task(run_async: Run, impl: Impl) -> None:
    seen: list[Any] = []

    def green(waiter: Waiter) -> None:
        waiter.wait()
        seen.append(asyncio.current_task())

    async def main() -> None:
        waiter = impl()
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
    assert _waiter.SPEEDUPS == in_c
    assert (Waiter is not PyWaiter) == (WakeBatch is not PyWakeBatch) == in_c


def test_park_and_resume_refuse_what_is_not_a_fiber_and_change_nothing(impl: Impl) -> None:
    from greenbridge import _control

    waiter = impl()
    for function in (_control._park, _control._resume):
        with pytest.raises((TypeError, AttributeError)):
            function(waiter)  # type: ignore[arg-type]
    assert not waiter.done()


# -- both implementations: the same errors, the same documentation, no reference kept ------------


def _error(call: Callable[[], Any]) -> tuple[type[BaseException], str] | None:
    try:
        call()
    except (TypeError, AttributeError) as exc:
        return type(exc), str(exc)
    return None


def test_bad_arguments_give_the_python_versions_errors(impl: Impl) -> None:
    waiter = impl()
    # The same error; the message names the class (PyWaiter.wake() or Waiter.wake()).
    for call, message in [
        (lambda: waiter.wake(1, 2), r"wake\(\) takes from 1 to 2 positional arguments but 3 were given"),
        (lambda: waiter.wake(x=1), r"wake\(\) got an unexpected keyword argument 'x'"),
        (lambda: waiter.wake(1, value=2), r"wake\(\) got multiple values for argument 'value'"),
        (lambda: waiter.fail(), r"fail\(\) missing 1 required positional argument: 'exc'"),
        (
            lambda: waiter.fail(KeyError(), KeyError()),
            r"fail\(\) takes 2 positional arguments but 3 were given",
        ),
        (lambda: waiter.fail(exc=KeyError(), x=1), r"fail\(\) got an unexpected keyword argument 'x'"),
        (lambda: waiter.done(1), r"done\(\) takes"),
        (lambda: waiter.cancel(1), r"cancel\(\) takes"),
        (lambda: waiter.take_back(1), r"take_back\(\) takes"),
        (lambda: waiter.wait(1), r"wait\(\) takes"),
        (lambda: waiter.check_waker(1), r"check_waker\(\) takes"),
        (lambda: impl(1), r"takes"),  # type: ignore[call-arg]
    ]:
        with pytest.raises(TypeError, match=message):
            call()
    with pytest.raises(AttributeError):
        waiter.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        __import__("weakref").ref(waiter)
    assert not waiter.done() and waiter.take_back() == (False, None)  # nothing changed
    assert waiter.wake(value="by keyword") is True and waiter.take_back() == (False, None)
    failing = impl()
    assert failing.fail(exc=KeyError("k")) is True and failing.done()


def test_fail_with_what_is_not_an_exception_raises_as_raise_does(run_green: Run, impl: Impl) -> None:
    def green() -> list[Any]:
        record: list[Any] = []
        for exc in (123, KeyError, ValueError("v")):
            waiter = impl()
            assert waiter.fail(exc) is True  # not checked: raised by wait(), as ``raise exc``
            try:
                waiter.wait()
            except Exception as raised:
                record.append((type(raised), str(raised)))
        return record

    assert run_green(green) == [
        (TypeError, "exceptions must derive from BaseException"),
        (KeyError, ""),
        (ValueError, "v"),
    ]


def test_both_versions_have_the_same_documentation() -> None:
    if CWaiter is None:
        pytest.skip(C_SKIP_REASON)
    import inspect

    for name in ("wait", "wake", "fail", "done", "cancel", "take_back", "check_waker"):
        assert inspect.getdoc(getattr(CWaiter, name)) == inspect.getdoc(getattr(PyWaiter, name)), name
        c_sig, py_sig = (inspect.signature(getattr(cls, name)) for cls in (CWaiter, PyWaiter))
        assert [(p.name, p.default) for p in c_sig.parameters.values()] == [
            (p.name, p.default) for p in py_sig.parameters.values()
        ], name
    assert inspect.getdoc(CWaiter) == inspect.getdoc(PyWaiter)
    assert inspect.getdoc(CWakeBatch.add) == inspect.getdoc(PyWakeBatch.add)
    assert inspect.getdoc(CWakeBatch) == inspect.getdoc(PyWakeBatch)


def test_no_reference_is_kept_to_values_fibers_or_futures(run_green: Run, impl: Impl) -> None:
    import sys

    token, error = object(), KeyError("k")
    before = sys.getrefcount(token), sys.getrefcount(error)

    def green() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(200):
            waiter = impl()
            loop.call_soon(waiter.wake, token)
            assert waiter.wait() is token
            assert waiter.wake(token) is False  # refused: not kept
            waiter = impl()
            loop.call_soon(waiter.fail, error)
            try:
                waiter.wait()
            except KeyError as raised:
                assert raised is error
            error.__traceback__ = None  # its frames hold the waiters
            waiter = impl()
            assert waiter.wake(token) and waiter.wait() is token

    run_green(green)
    assert (sys.getrefcount(token), sys.getrefcount(error)) == before


def test_a_value_taken_back_is_not_kept(run_async: Run, impl: Impl) -> None:
    import sys

    token = object()
    before = sys.getrefcount(token)

    def green(waiter: Waiter) -> Any:
        try:
            return waiter.wait()
        except asyncio.CancelledError:
            return waiter.take_back()

    async def main() -> Any:
        waiter = impl()
        task = asyncio.create_task(gb.spawn_green(green, waiter))
        await asyncio.sleep(0)
        await gb.spawn_green(waiter.wake, token)  # through the Task: accepted, not run yet
        task.cancel()
        return await task

    for _ in range(50):
        assert run_async(main) == (True, token)
    assert sys.getrefcount(token) == before


def test_waiting_and_waking_in_a_loop_does_not_grow_memory(run_green: Run, impl: Impl) -> None:
    import gc
    import tracemalloc

    def rounds(n: int) -> None:
        loop = asyncio.get_running_loop()
        for i in range(n):
            waiter = impl()
            loop.call_soon(waiter.wake, [i])
            waiter.wait()
            waiter = impl()
            loop.call_soon(waiter.cancel)
            with pytest.raises(asyncio.CancelledError):
                waiter.wait()

    def green() -> int:
        rounds(500)  # warm up: free lists, caches
        tracemalloc.start()
        try:
            gc.collect()  # a cancelled wait's traceback and frames form cycles
            first = tracemalloc.get_traced_memory()[0]
            rounds(3000)
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - first
        finally:
            tracemalloc.stop()

    grown = run_green(green)
    assert grown < 16 * 1024, grown  # one object kept per round would be over 200 KB


# -- the wake batch ------------------------------------------------------------------------------


def test_a_wake_batch_wakes_its_waiters_in_order_from_one_callback(
    run_async: Run, impl: Impl, batch_impl: Callable[[], WakeBatch]
) -> None:
    record: list[Any] = []

    def green(name: str, waiter: Waiter) -> None:
        record.append((name, waiter.wait()))

    async def main() -> None:
        batch = batch_impl()
        waiters = {name: impl() for name in "abc"}
        tasks = [asyncio.create_task(gb.spawn_green(green, name, w)) for name, w in waiters.items()]
        await asyncio.sleep(0)
        assert batch._scheduled is False
        for name in "cab":
            batch.add(waiters[name])
        assert batch._scheduled is True and len(batch._waiters) == 3
        record.append("added")
        await asyncio.sleep(0)
        assert batch._scheduled is False and batch._waiters == []
        batch.add(waiters["a"])  # already woken: refused, nothing else happens
        await asyncio.gather(*tasks)
        await asyncio.sleep(0)
        assert not batch._scheduled

    run_async(main)
    assert record == ["added", ("c", None), ("a", None), ("b", None)]


def test_the_wake_batch_is_the_loops_own_and_of_the_selected_version(run_async: Run) -> None:
    async def main() -> None:
        batch = _wake_batch.wake_batch()
        assert batch is _wake_batch.wake_batch()
        assert type(batch) is WakeBatch

    run_async(main)


# -- differential: the C Waiter does what the Python one does ------------------------------------

from _reliability import hypothesis_settings  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_operations = st.one_of(
    st.tuples(
        st.sampled_from(["wake", "fail", "callback_wake", "callback_fail", "fiber_wake"]), st.integers(0, 9)
    ),
    st.tuples(
        st.sampled_from(
            ["cancel", "take_back", "done", "yield", "cancel_task", "check_waker", "callback_cancel"]
        ),
        st.just(0),
    ),
)


def _drive(impl: Impl, mode: str, twice: bool, ops: list[tuple[str, int]], run_async: Run) -> list[Any]:
    """Run one program against ``impl``; every observable result, in order."""
    record: list[Any] = []

    def outcome(waiter: Waiter) -> Any:
        try:
            return ("value", waiter.wait())
        except asyncio.CancelledError as exc:
            return ("cancelled", exc.args, waiter.take_back())
        except (KeyError, RuntimeError) as exc:
            return (type(exc).__name__, exc.args)

    def green(waiter: Waiter) -> Any:
        first = outcome(waiter)
        return (first, outcome(waiter)) if twice else first

    async def main() -> None:
        from sqlalchemy.util import greenlet_spawn

        loop = asyncio.get_running_loop()
        waiter = impl()

        def start() -> asyncio.Task[Any]:
            if mode == "foreign":
                return asyncio.create_task(greenlet_spawn(green, waiter))
            return asyncio.create_task(gb.spawn_green(green, waiter))

        def later(name: str, call: Callable[[], Any]) -> None:
            loop.call_soon(lambda: record.append((name, call())))

        task = None if mode == "after" else start()
        await asyncio.sleep(0)
        for op, arg in ops:
            if op == "wake":
                record.append((op, waiter.wake(arg)))
            elif op == "fail":
                record.append((op, waiter.fail(KeyError(arg))))
            elif op == "callback_wake":
                later(op, lambda arg=arg: waiter.wake(arg))  # type: ignore[misc]
            elif op == "callback_fail":
                later(op, lambda arg=arg: waiter.fail(KeyError(arg)))  # type: ignore[misc]
            elif op == "callback_cancel":
                later(op, waiter.cancel)
            elif op == "fiber_wake":
                record.append((op, await gb.spawn_green(waiter.wake, arg)))
            elif op == "cancel":
                record.append((op, waiter.cancel()))
            elif op == "take_back":
                record.append((op, waiter.take_back()))
            elif op == "done":
                record.append((op, waiter.done()))
            elif op == "yield":
                await asyncio.sleep(0)
            elif op == "cancel_task":
                record.append((op, task.cancel() if task is not None else None))
            elif op == "check_waker":
                record.append((op, waiter.check_waker()))
        if task is None:
            task = start()
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        if not task.done():
            record.append(("still waiting", waiter.done()))
            task.cancel()
        try:
            record.append(("outcome", await task))
        except asyncio.CancelledError:
            record.append(("outcome", "cancelled"))
        record.append(("after", waiter.done(), waiter.take_back(), waiter.wake(-1)))

    run_async(main)
    return record


@hypothesis_settings(ci_examples=150)
@given(
    mode=st.sampled_from(["before", "after", "foreign"]),
    twice=st.booleans(),
    ops=st.lists(_operations, max_size=12),
)
def test_the_c_version_does_what_the_python_version_does(
    run_async: Run, mode: str, twice: bool, ops: list[tuple[str, int]]
) -> None:
    if CWaiter is None:
        pytest.skip(C_SKIP_REASON)
    expected = _drive(PyWaiter, mode, twice, ops, run_async)
    assert _drive(CWaiter, mode, twice, ops, run_async) == expected
