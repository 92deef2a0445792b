"""Misuse gets a clear, documented error -- never a hang, a crash or a silent wrong answer.

Grouped by what is misused: the crossing points (wrong thread, wrong loop, no loop, re-entrant
``gb.run``, reused coroutines, non-awaitables), the time and adapter helpers, Waiters, Switches,
promises and the other synchronisation objects, and flows (closed, shut down, over-read). Each
test states the error users can rely on; messages are checked for the hint they give.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _net_helpers import serving

import greenbridge as gb
from greenbridge import flow, net
from greenbridge._waiter import Waiter

# -- the crossing points -------------------------------------------------------------------------


def test_await_from_green_in_another_thread_raises_no_green_context(run_green: Callable[..., Any]) -> None:
    """A plain thread started by green code is not green; the coroutine handed over is closed
    (no "never awaited" warning) and the message points at run_coroutine_threadsafe."""
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            gb.await_from_green(asyncio.sleep(0))
        except BaseException as exc:
            errors.append(exc)

    def main() -> None:
        thread = threading.Thread(target=in_thread)
        thread.start()
        gb.run_in_thread(thread.join)

    run_green(main)
    (error,) = errors
    assert isinstance(error, gb.NoGreenContext) and isinstance(error, RuntimeError)
    assert "run_coroutine_threadsafe" in str(error)


def test_green_calls_inside_run_in_thread_raise_no_green_context(run_green: Callable[..., Any]) -> None:
    """The function given to ``run_in_thread`` runs in an executor thread: not green."""

    def blocking() -> str:
        with pytest.raises(gb.NoGreenContext):
            gb.sleep(0)
        return "checked"

    assert run_green(lambda: gb.run_in_thread(blocking)) == "checked"


def test_each_thread_may_run_its_own_program() -> None:
    """``gb.run`` in two threads at once: two loops, two fiber pools, no interference."""
    barrier = threading.Barrier(2)

    def program(n: int) -> int:
        gb.run_in_thread(barrier.wait)  # both loops are running now
        gb.sleep(0)
        return n * 10

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: gb.run(program, n), [1, 2]))
    assert results == [10, 20]


def test_awaiting_a_future_of_another_loop_fails_like_await_does(
    run_green: Callable[..., Any],
) -> None:
    """The same ``RuntimeError`` asyncio raises for ``await`` of a foreign loop's Future, in
    green code and in a coroutine; the fiber goes on and nothing is left pending."""
    other = asyncio.new_event_loop()
    try:

        def green() -> str:
            with pytest.raises(RuntimeError, match="attached to a different loop"):
                gb.await_from_green(other.create_future())
            return "still running"

        async def native() -> None:
            with pytest.raises(RuntimeError, match="attached to a different loop"):
                await other.create_future()

        def main() -> str:
            gb.await_from_green(native())
            return gb.await_from_green(gb.spawn_green(green))

        assert run_green(main) == "still running"
    finally:
        other.close()


def test_await_from_green_in_a_coroutine_or_a_callback_says_to_use_await(
    run_green: Callable[..., Any],
) -> None:
    errors: list[BaseException] = []

    def callback() -> None:
        try:
            gb.sleep(0)
        except gb.NoGreenContext as exc:
            errors.append(exc)

    async def coroutine() -> None:
        with pytest.raises(gb.NoGreenContext, match="use 'await'") as info:
            gb.await_from_green(asyncio.sleep(0))
        errors.append(info.value)

    def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(callback)
        loop.call_soon(done.set_result, None)
        gb.await_from_green(done)
        # In a Task of its own: a coroutine that green code awaits directly runs inside the
        # fiber, where green calls work (nesting, contract point 4).
        gb.await_from_green(loop.create_task(coroutine()))

    run_green(main)
    assert len(errors) == 2 and all("spawn_green" in str(e) for e in errors)


def test_green_calls_after_the_loop_finished_raise_no_green_context() -> None:
    """A green helper kept past ``gb.run`` (a closure, a callback) fails cleanly afterwards."""
    kept: list[Callable[[], None]] = []
    gb.run(lambda: kept.append(lambda: gb.sleep(0)))
    with pytest.raises(gb.NoGreenContext, match="no event loop is running"):
        kept[0]()
    with pytest.raises(gb.NoGreenContext):
        Waiter().wait()


@pytest.mark.parametrize("where", ["green", "coroutine"])
def test_gb_run_is_not_reentrant(where: str, run_green: Callable[..., Any]) -> None:
    async def from_coroutine() -> None:
        gb.run(int)

    def main() -> None:
        if where == "green":
            gb.run(int)
        else:
            gb.await_from_green(from_coroutine())

    with pytest.raises(RuntimeError, match="cannot be called while an event loop is running"):
        run_green(main)


def test_a_spawn_green_coroutine_is_awaited_once(run_async: Callable[..., Any]) -> None:
    async def main() -> None:
        coro = gb.spawn_green(int, 7)
        assert await coro == 7
        with pytest.raises(RuntimeError, match=r"cannot reuse already awaited coroutine|already awaited"):
            await coro

    run_async(main)


def test_a_spawn_green_coroutine_closed_before_its_first_step_runs_nothing() -> None:
    """Like a coroutine closed unstarted: the function never runs, no warning follows."""
    ran: list[str] = []
    coro = gb.spawn_green(ran.append, "ran")
    coro.close()
    assert ran == []


@pytest.mark.parametrize(
    ("call", "error", "hint"),
    [
        (lambda: gb.await_from_green(42), TypeError, "needs an awaitable"),
        (lambda: gb.await_from_green(asyncio.sleep), TypeError, "call it"),
        (lambda: gb.await_from_green(gb.spawn_green(42)), TypeError, "callable"),
        (lambda: gb.enter(open), TypeError, "async context manager"),
        (lambda: gb.iterate([1, 2]), TypeError, "plain iterable"),
    ],
    ids=["non-awaitable", "coroutine-function", "non-callable", "enter-non-acm", "iterate-list"],
)
def test_wrong_argument_types_are_refused_with_a_hint(
    call: Callable[[], Any], error: type[BaseException], hint: str, run_green: Callable[..., Any]
) -> None:
    def main() -> None:
        with pytest.raises(error, match=hint):
            call()

    run_green(main)


def test_unknown_backend_is_refused_before_anything_runs() -> None:
    ran: list[str] = []
    with pytest.raises(ValueError, match=re.escape("'asyncio', 'asyncio+eager' or 'uvloop'")):
        gb.run(ran.append, "ran", backend="trio")
    assert ran == []


# -- time ----------------------------------------------------------------------------------------


def test_a_timeout_block_is_entered_once(run_green: Callable[..., Any]) -> None:
    def main() -> None:
        block = gb.timeout(1)
        with block:
            pass
        with pytest.raises(RuntimeError, match="cannot be entered twice"):
            with block:
                pass

    run_green(main)


def test_a_timeout_block_outside_green_code_raises_no_green_context() -> None:
    with pytest.raises(gb.NoGreenContext):
        with gb.timeout(1):
            pass


# -- waiters and synchronisation ----------------------------------------------------------------


def test_a_waiter_is_waited_on_once(run_green: Callable[..., Any]) -> None:
    def main() -> None:
        waiter = Waiter()
        assert waiter.wake("v")
        assert waiter.wait() == "v"
        assert not waiter.wake("again")  # refused: the caller keeps its value

        shared = Waiter()
        first = asyncio.get_running_loop().create_task(gb.spawn_green(shared.wait))
        gb.sleep(0)  # the first fiber parks on it
        with pytest.raises(RuntimeError, match="called twice"):
            shared.wait()
        assert shared.wake("for the first")
        assert gb.await_from_green(first) == "for the first"

    run_green(main)


def test_a_promise_settles_once(run_green: Callable[..., Any]) -> None:
    def main() -> None:
        promise: gb.Promise[int] = gb.Promise()
        promise.resolve(1)
        with pytest.raises(asyncio.InvalidStateError, match="settles once"):
            promise.resolve(2)
        with pytest.raises(asyncio.InvalidStateError):
            promise.reject(ValueError("late"))
        assert promise.await_() == 1  # the first value stands
        with pytest.raises(TypeError, match="exception instance"):
            gb.Promise().reject("not an exception")  # type: ignore[arg-type]

    run_green(main)


def test_synchronisation_objects_refuse_impossible_requests(run_green: Callable[..., Any]) -> None:
    def main() -> None:
        with pytest.raises(ValueError):
            gb.Stream(-1)
        with pytest.raises(asyncio.QueueEmpty):
            gb.Stream(1).take_nowait()
        with pytest.raises(RuntimeError, match="unlocked"):
            gb.Mutex().unlock()
        with pytest.raises(ValueError):
            gb.Semaphore(-1)
        with pytest.raises(RuntimeError, match="mutex held"):
            gb.Condition().wait()

    run_green(main)


# -- switches ------------------------------------------------------------------------------------


def test_a_finished_switch_refuses_new_work(run_green: Callable[..., Any]) -> None:
    ran: list[str] = []

    def main() -> None:
        with gb.Switch() as sw:
            sw.fork(ran.append, "inside")
        for use in (
            lambda: sw.fork(ran.append, "late fork"),
            lambda: sw.fork_daemon(ran.append, "late daemon"),
            lambda: sw.fork_promise(ran.append, "late promise"),
        ):
            with pytest.raises(gb.SwitchFinishedError, match="still open"):
                use()
        with pytest.raises(RuntimeError, match="used once"):
            with sw:
                pass

    run_green(main)
    assert ran == ["inside"]


def test_a_switch_not_entered_yet_refuses_work(run_green: Callable[..., Any]) -> None:
    def main() -> None:
        sw = gb.Switch()
        with pytest.raises(RuntimeError, match="before entering it"):
            sw.fork(int)

    run_green(main)


def test_a_switch_outside_green_code_raises_no_green_context() -> None:
    with pytest.raises(gb.NoGreenContext):
        with gb.Switch():
            pass


# -- flows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: flow.buffer_sink(bytearray()), id="buffer_sink"),
        pytest.param(lambda: gb.BufWriter(flow.buffer_sink(bytearray())), id="BufWriter"),
    ],
)
def test_writing_to_a_closed_sink_raises_closed_resource_error(make: Callable[[], flow.Sink]) -> None:
    sink = make()
    sink.write(b"before")
    sink.close()
    sink.close()  # closing twice is fine
    with pytest.raises(gb.ClosedResourceError):
        sink.write(b"after")
    with pytest.raises(gb.ClosedResourceError):
        with sink:
            pass


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: flow.string_source(b"data"), id="string_source"),
        pytest.param(lambda: gb.BufReader(flow.string_source(b"data")), id="BufReader"),
    ],
)
def test_reading_a_closed_source_raises_closed_resource_error(make: Callable[[], flow.Source]) -> None:
    source = make()
    source.close()
    with pytest.raises(gb.ClosedResourceError):
        source.read()


def test_a_closed_bufreader_raises_closed_resource_error_even_after_end_of_input() -> None:
    """``close()`` then parsing is the caller's bug, whatever the reader had seen: the error
    must say so (``ClosedResourceError``), not report the end of the input (``EOFError``)."""
    reader = gb.BufReader(flow.string_source(b"last line"))
    assert reader.line() == b"last line"
    assert reader.at_end_of_input()
    reader.close()
    with pytest.raises(gb.ClosedResourceError):
        reader.line()


def test_a_connection_refuses_use_after_close_and_writes_after_shutdown(
    run_green: Callable[..., Any],
) -> None:
    def echo_once(conn: net.Connection, addr: Any) -> None:
        while data := conn.read():
            conn.write(data)

    def main() -> None:
        with net.listen("127.0.0.1", 0) as listener:
            with serving(listener, echo_once):
                conn = net.connect(*listener.address[:2])
                conn.write(b"ping")
                assert flow.read_exact(conn, 4) == b"ping"
                conn.shutdown("send")
                with pytest.raises(gb.ClosedResourceError, match="shutdown"):
                    conn.write(b"after shutdown")
                assert conn.read() == b""  # the server saw our end and closed
                conn.close()
                conn.close()
                with pytest.raises(gb.ClosedResourceError):
                    conn.write(b"after close")
                with pytest.raises(gb.ClosedResourceError):
                    conn.read()
                with net.connect(*listener.address[:2]) as other:
                    with pytest.raises(ValueError, match="'send', 'receive' or 'all'"):
                        other.shutdown("both")  # type: ignore[arg-type]

    run_green(main)


def test_a_closed_listener_refuses_accept(run_green: Callable[..., Any]) -> None:
    def main() -> None:
        listener = net.listen("127.0.0.1", 0)
        listener.close()
        with pytest.raises(gb.ClosedResourceError):
            listener.accept()
        with pytest.raises(gb.ClosedResourceError):
            with listener:
                pass

    run_green(main)
