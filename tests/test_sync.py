"""Promise, Stream, Semaphore, Mutex, Event, Condition: behaviour, cancellation, no lost items."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import greenbridge as gb
from greenbridge import fiber

Run = Callable[..., Any]


class Boom(Exception):
    pass


def start(fn: Callable[..., Any], *args: Any) -> asyncio.Task[Any]:
    """A fiber in its own Task, so that a test can cancel exactly that fiber."""
    return asyncio.ensure_future(gb.spawn_green(fn, *args))


def settle(task: asyncio.Task[Any]) -> BaseException | None:
    """Wait for ``task`` from green code; its exception (CancelledError included), or None."""
    try:
        gb.await_from_green(asyncio.shield(task))
    except BaseException as exc:
        return exc
    return None


# -- Promise --------------------------------------------------------------------------------


def test_promise_wakes_every_waiter_with_the_value(run_green: Run) -> None:
    def main() -> list[Any]:
        promise: gb.Promise[str] = gb.Promise()
        got: list[Any] = []
        with gb.Switch() as sw:
            for name in ("a", "b"):
                sw.fork(lambda name=name: got.append((name, promise.await_())))
            fiber.yield_()
            assert not promise.is_resolved()
            promise.resolve("v")
        assert promise.is_resolved()
        assert promise.await_() == "v"  # at once
        return got

    assert run_green(main) == [("a", "v"), ("b", "v")]


def test_promise_reject_and_misuse(run_green: Run) -> None:
    def main() -> None:
        promise: gb.Promise[int] = gb.Promise()
        promise.reject(Boom("no"))
        with pytest.raises(Boom):
            promise.await_()
        with pytest.raises(asyncio.InvalidStateError):
            promise.resolve(1)
        with pytest.raises(TypeError):
            gb.Promise().reject("not an exception")  # type: ignore[arg-type]

    run_green(main)


def test_promise_is_awaitable_from_asyncio(run_async: Run) -> None:
    async def main() -> tuple[int, int]:
        promise: gb.Promise[int] = gb.Promise()
        asyncio.get_running_loop().call_later(0.001, promise.resolve, 3)
        pending = await promise
        return pending, await promise

    assert run_async(main) == (3, 3)


def test_promise_waiter_cancelled_leaves_promise_alone(run_green: Run) -> None:
    def main() -> int:
        promise: gb.Promise[int] = gb.Promise()
        waiter = start(promise.await_)
        fiber.yield_()
        waiter.cancel()
        assert isinstance(settle(waiter), asyncio.CancelledError)
        promise.resolve(4)
        return promise.await_()

    assert run_green(main) == 4


# -- Stream ---------------------------------------------------------------------------------


def test_stream_is_fifo_with_backpressure(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        stream: gb.Stream[int] = gb.Stream(2)

        def producer() -> None:
            for i in range(4):
                stream.add(i)
                record.append(f"added {i}")

        with gb.Switch() as sw:
            sw.fork(producer)
            fiber.yield_()
            assert len(stream) == 2  # full: the producer waits
            record.append("full")
            for _ in range(4):
                record.append(f"took {stream.take()}")

    run_green(main)
    assert record == [
        "added 0", "added 1", "full",
        # take() moved the blocked item 2 into the buffer and released the producer, which runs
        # once the consumer waits for item 3.
        "took 0", "took 1", "took 2", "added 2", "added 3", "took 3",
    ]  # fmt: skip


def test_stream_of_capacity_zero_is_a_rendezvous(run_green: Run) -> None:
    record: list[str] = []

    def main() -> None:
        stream: gb.Stream[str] = gb.Stream(0)

        def producer() -> None:
            stream.add("x")
            record.append("add returned")

        with gb.Switch() as sw:
            sw.fork(producer)
            fiber.yield_()
            assert len(stream) == 0
            record.append("producer is waiting")
            record.append(f"took {stream.take()}")

    run_green(main)
    assert record == ["producer is waiting", "took x", "add returned"]


def test_stream_nowait_operations(run_green: Run) -> None:
    def main() -> None:
        stream: gb.Stream[int] = gb.Stream(1)
        with pytest.raises(gb.WouldBlock, match="empty") as empty:
            stream.take_nowait()
        assert isinstance(empty.value, asyncio.QueueEmpty)  # what it raised before WouldBlock
        stream.add_nowait(1)
        with pytest.raises(gb.WouldBlock, match="full") as full:
            stream.add_nowait(2)
        assert isinstance(full.value, asyncio.QueueFull)
        assert not isinstance(full.value, asyncio.QueueEmpty)
        assert (len(stream), stream.capacity) == (1, 1)
        assert stream.take_nowait() == 1
        with pytest.raises(ValueError):
            gb.Stream(-1)

    run_green(main)


def test_stream_cancelled_taker_loses_no_item(run_green: Run) -> None:
    """The item is handed over, then the taker is cancelled before it runs: it goes back."""

    def main() -> list[int]:
        stream: gb.Stream[int] = gb.Stream(1)
        taker = start(stream.take)
        fiber.yield_()  # the taker waits
        stream.add(1)  # handed to the taker...
        stream.add(2)
        taker.cancel()  # ...which is cancelled before it could run
        assert isinstance(settle(taker), asyncio.CancelledError)
        return [stream.take_nowait(), stream.take_nowait()]

    assert run_green(main) == [1, 2]


def test_stream_cancelled_adder_adds_nothing(run_green: Run) -> None:
    def main() -> list[int]:
        stream: gb.Stream[int] = gb.Stream(1)
        stream.add(1)
        with pytest.raises(TimeoutError):
            gb.with_timeout(0.001, stream.add, 2)
        got = [stream.take_nowait()]
        with pytest.raises(asyncio.QueueEmpty):
            stream.take_nowait()
        return got

    assert run_green(main) == [1]


def test_stream_adder_cancelled_after_hand_off_delivers_once(run_green: Run) -> None:
    def main() -> list[int]:
        stream: gb.Stream[int] = gb.Stream(0)
        adder = start(stream.add, 7)
        fiber.yield_()  # the adder waits
        got = stream.take()  # hands the adder its release...
        adder.cancel()  # ...then it is cancelled before it runs
        assert isinstance(settle(adder), asyncio.CancelledError)
        with pytest.raises(asyncio.QueueEmpty):
            stream.take_nowait()
        return [got]

    assert run_green(main) == [7]


def test_stream_take_from_asyncio_callbacks_resumes_takers_in_order(run_green: Run) -> None:
    def main() -> list[tuple[str, int]]:
        stream: gb.Stream[int] = gb.Stream(0)
        got: list[tuple[str, int]] = []
        loop = asyncio.get_running_loop()
        with gb.Switch() as sw:
            for name in ("a", "b"):
                sw.fork(lambda name=name: got.append((name, stream.take())))
            fiber.yield_()
            loop.call_soon(stream.add_nowait, 1)
            loop.call_soon(stream.add_nowait, 2)
        return got

    assert run_green(main) == [("a", 1), ("b", 2)]


# -- Semaphore and Mutex ---------------------------------------------------------------------------


def test_semaphore_limits_concurrency_first_come_first_served(run_green: Run) -> None:
    def main() -> tuple[list[str], int]:
        sem = gb.Semaphore(2)
        order: list[str] = []
        running = peak = 0

        def worker(name: str) -> None:
            nonlocal running, peak
            with sem:
                order.append(name)
                running += 1
                peak = max(peak, running)
                fiber.yield_()
                running -= 1

        gb.fiber.all([lambda n=n: worker(n) for n in "abcde"])
        return order, peak

    assert run_green(main) == (list("abcde"), 2)


def test_semaphore_permit_of_a_cancelled_waiter_is_passed_on(run_green: Run) -> None:
    def main() -> int:
        sem = gb.Semaphore(0)
        first = start(sem.acquire)
        second = start(sem.acquire)
        fiber.yield_()
        sem.release()  # handed to `first`...
        first.cancel()  # ...cancelled before it runs: the permit goes to `second`
        assert isinstance(settle(first), asyncio.CancelledError)
        assert settle(second) is None
        with pytest.raises(gb.WouldBlock):
            sem.acquire_nowait()
        return sem.value

    assert run_green(main) == 0


def test_mutex_excludes_and_rejects_bad_unlock(run_green: Run) -> None:
    def main() -> list[str]:
        mutex = gb.Mutex()
        record: list[str] = []

        def critical(name: str) -> None:
            with mutex:
                record.append(f"{name} in")
                fiber.yield_()
                record.append(f"{name} out")

        fiber.both(lambda: critical("a"), lambda: critical("b"))
        assert not mutex.locked()
        mutex.lock_nowait()
        assert mutex.locked()
        with pytest.raises(gb.WouldBlock):
            mutex.lock_nowait()
        mutex.unlock()
        with pytest.raises(RuntimeError):
            mutex.unlock()
        return record

    assert run_green(main) == ["a in", "a out", "b in", "b out"]


def test_nowait_variants_raise_would_block_outside_green_code_too() -> None:
    # Non-blocking: usable from plain code and loop callbacks, and WouldBlock is a GreenbridgeError.
    sem, mutex = gb.Semaphore(1), gb.Mutex()
    sem.acquire_nowait()
    mutex.lock_nowait()
    for op in (sem.acquire_nowait, mutex.lock_nowait, gb.Stream(0).take_nowait):
        with pytest.raises(gb.GreenbridgeError) as info:
            op()
        assert isinstance(info.value, gb.WouldBlock)
    assert (sem.value, mutex.locked()) == (0, True)


def test_try_lock_and_try_acquire_are_deprecated_aliases_that_still_work() -> None:
    sem, mutex = gb.Semaphore(1), gb.Mutex()
    with pytest.warns(DeprecationWarning, match="acquire_nowait"):
        assert sem.try_acquire() is True
    with pytest.warns(DeprecationWarning, match="acquire_nowait"):
        assert sem.try_acquire() is False
    assert sem.value == 0
    with pytest.warns(DeprecationWarning, match="lock_nowait"):
        assert mutex.try_lock() is True
    with pytest.warns(DeprecationWarning, match="lock_nowait"):
        assert mutex.try_lock() is False
    assert mutex.locked()


def test_mutex_lock_is_cancellable(run_green: Run) -> None:
    def main() -> bool:
        mutex = gb.Mutex()
        mutex.lock()
        with pytest.raises(TimeoutError):
            gb.with_timeout(0.001, mutex.lock)
        mutex.unlock()
        return mutex.locked()

    assert run_green(main) is False


# -- Event and Condition ---------------------------------------------------------------------------


def test_event_wakes_every_waiter_once_set(run_green: Run) -> None:
    def main() -> list[str]:
        event = gb.Event()
        record: list[str] = []
        with gb.Switch() as sw:
            for name in "ab":
                sw.fork(lambda name=name: (event.wait(), record.append(name)))
            fiber.yield_()
            record.append("set")
            event.set()
            event.set()  # idempotent
        event.wait()  # at once
        with pytest.raises(TimeoutError):
            gb.with_timeout(0, gb.Event().wait)
        assert event.is_set()
        return record

    assert run_green(main) == ["set", "a", "b"]


def test_condition_wait_notify(run_green: Run) -> None:
    def main() -> list[str]:
        cond = gb.Condition()
        items: list[int] = []
        record: list[str] = []

        def consumer(name: str) -> None:
            with cond:
                cond.wait_for(lambda: items)
                record.append(f"{name} got {items.pop(0)}")

        with gb.Switch() as sw:
            sw.fork(consumer, "a")
            sw.fork(consumer, "b")
            fiber.yield_()
            with cond:
                items.extend([1, 2])
                cond.notify_all()
        with pytest.raises(RuntimeError):
            cond.wait()  # without the mutex
        return record

    assert run_green(main) == ["a got 1", "b got 2"]


def test_condition_cancelled_waiter_retakes_the_mutex_and_passes_notification_on(run_green: Run) -> None:
    def main() -> list[str]:
        cond = gb.Condition()
        record: list[str] = []

        def waiter(name: str) -> None:
            with cond:
                try:
                    cond.wait()
                except asyncio.CancelledError:
                    record.append(f"{name} cancelled, holds mutex: {cond.mutex.locked()}")
                    raise
                record.append(f"{name} notified")

        first = start(waiter, "first")
        second = start(waiter, "second")
        fiber.yield_()
        with cond:
            cond.notify()  # to `first`...
            first.cancel()  # ...cancelled before it runs: `second` gets the notification
        settle(first)
        settle(second)
        return record

    assert run_green(main) == ["first cancelled, holds mutex: True", "second notified"]
