"""Synchronisation for green code: Promise, Stream, Mutex, Semaphore, Condition, Event.

Every blocking operation here parks on a ``ParkingLot`` (``_parking``) and is a suspension
point, hence a cancellation point. Two rules hold for all of them, both kept by the lot:

* Hand-off: whoever makes a waiter runnable hands it what it waited for (the item, the lock, the
  permit) in the same step, so a newcomer cannot overtake a woken waiter, and waiters are served
  first come, first served.
* Nothing is lost to cancellation: a waiter cancelled before the hand-off is skipped (``wake``
  refuses the value and the giver keeps it); one cancelled after it gives the value back
  (the lot's ``give_back``) -- the item goes back to the head of the stream, the permit to the
  next waiter -- before ``CancelledError`` is raised.

None of these objects is thread-safe: use them from the loop's thread, from green code (the
blocking operations) or from anywhere on that thread (the non-blocking ones).
"""

from __future__ import annotations

import asyncio
import warnings
from collections import deque
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from ._core import spawn_green
from ._errors import WouldBlock, _StreamEmpty, _StreamFull
from ._parking import ParkingLot

__all__ = ("Condition", "Event", "Mutex", "Promise", "Semaphore", "Stream")

T = TypeVar("T")

_PENDING, _RESOLVED, _REJECTED = 0, 1, 2


class Promise(Generic[T]):
    """A value that becomes available later, exactly once: resolved with a value or rejected
    with an exception. Any number of fibers (``await_()``) and coroutines (``await p``) may wait
    for it.

    Waiting does not own the producer: a waiter that is cancelled stops waiting, and whatever
    resolves the promise carries on (Eio's rule).
    """

    __slots__ = ("_outcome", "_state", "_waiters")

    def __init__(self) -> None:
        # Invariants: _waiters is empty unless _state is _PENDING; _outcome is the value when
        # _RESOLVED, the exception when _REJECTED.
        self._state = _PENDING
        self._outcome: Any = None
        self._waiters = ParkingLot()

    def __repr__(self) -> str:
        state = ("pending", "resolved", "rejected")[self._state]
        return f"<Promise {state}>"

    def is_resolved(self) -> bool:
        """True once resolved or rejected."""
        return self._state != _PENDING

    def resolve(self, value: T) -> None:
        """Fulfil the promise with ``value`` and wake every waiter. Never suspends.

        Raises ``asyncio.InvalidStateError`` when it was already resolved or rejected, and
        ``RuntimeError`` (changing nothing) when called from another thread than the loop of a
        fiber waiting on it.
        """
        self._settle(_RESOLVED, value)

    def reject(self, exc: BaseException) -> None:
        """Fail the promise: every ``await_()`` raises ``exc``. Never suspends.

        Raises ``asyncio.InvalidStateError`` when it was already resolved or rejected, and
        ``TypeError`` when ``exc`` is not an exception instance.
        """
        if not isinstance(exc, BaseException):
            raise TypeError(f"Promise.reject() needs an exception instance, got {type(exc).__name__!r}")
        self._settle(_REJECTED, exc)

    def _settle(self, state: int, outcome: Any) -> None:
        if self._state != _PENDING:
            raise asyncio.InvalidStateError(f"{self!r} was already resolved; a promise settles once")
        self._waiters.check_waker()  # from another thread: refused before any change
        self._state, self._outcome = state, outcome
        self._waiters.unpark_all()

    def await_(self) -> T:
        """Wait until the promise is resolved; return its value or raise its exception.

        Returns at once when it already is. A suspension point otherwise: cancelling the waiting
        fiber raises ``CancelledError`` and leaves the promise and its producer alone. Raises
        ``NoGreenContext`` outside green code.
        """
        if self._state == _PENDING:
            self._waiters.park()
        return self._result()

    def _result(self) -> T:
        if self._state == _REJECTED:
            raise self._outcome
        return self._outcome  # type: ignore[no-any-return]

    def __await__(self) -> Generator[Any, None, T]:
        """``await promise`` from asyncio code: the value, or the exception raised."""
        if self._state == _PENDING:
            yield from spawn_green(self.await_).__await__()
        return self._result()


class Stream(Generic[T]):
    """A bounded FIFO queue between fibers, with backpressure (Eio's ``Stream``).

    ``Stream(capacity)`` buffers up to ``capacity`` items; ``add`` blocks while it is full.
    ``Stream(0)`` buffers nothing: ``add`` waits until a ``take`` receives the item (a
    rendezvous). ``len(stream)`` is the number of buffered items.

    Cancellation never loses an item: an item handed to a taker that is cancelled before it
    could return goes back to the head of the stream (transiently above capacity if need be).
    """

    __slots__ = ("_adders", "_capacity", "_items", "_takers")

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"Stream capacity must be an int >= 0, got {capacity!r}")
        # Invariants: _takers only holds fibers (possibly cancelled) while _items is empty;
        # _adders (each parked with its item as data) only while the buffer is full.
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._takers = ParkingLot()
        self._adders = ParkingLot()

    @property
    def capacity(self) -> int:
        """The number of items the stream buffers before ``add`` blocks."""
        return self._capacity

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<Stream {len(self._items)}/{self._capacity} items>"

    def add(self, item: T) -> None:
        """Append ``item``; when the stream is full, wait until there is room (or a taker).

        A suspension point when it has to wait: cancelled while waiting, the item is not added
        and ``CancelledError`` is raised -- unless a taker had already received it (a
        cancellation racing with the hand-off), in which case ``CancelledError`` is raised all
        the same but the item was delivered exactly once. Raises ``NoGreenContext`` when it has
        to wait outside green code.
        """
        if not self._give(item):
            self._adders.park(item)  # handed over means taken: nothing to give back

    def add_nowait(self, item: T) -> None:
        """Append ``item`` without waiting. Never suspends.

        Raises ``gb.WouldBlock`` when the stream is full and no taker is waiting (it is also an
        ``asyncio.QueueFull``, what this method raised before ``WouldBlock`` existed).
        """
        if not self._give(item):
            raise _StreamFull(f"{self!r} is full: no room and no taker; add() waits for one")

    def take(self) -> T:
        """Remove and return the oldest item, waiting for one if the stream is empty.

        A suspension point when it has to wait: cancelled while waiting, no item is consumed
        (one already handed over is put back at the head). Raises ``NoGreenContext`` when it has
        to wait outside green code.
        """
        if self._items or self._adders:
            found, item = self._take_ready()
            if found:
                return item  # type: ignore[no-any-return]
        return self._takers.park(give_back=self._put_back)  # type: ignore[no-any-return]

    def take_nowait(self) -> T:
        """Remove and return the oldest item without waiting. Never suspends.

        Raises ``gb.WouldBlock`` when there is none (it is also an ``asyncio.QueueEmpty``, what
        this method raised before ``WouldBlock`` existed).
        """
        found, item = self._take_ready()
        if not found:
            raise _StreamEmpty(f"{self!r} is empty; take() waits for an item")
        return item  # type: ignore[no-any-return]

    # -- internals ---------------------------------------------------------------------------

    def _give(self, item: T) -> bool:
        """Hand ``item`` to the first live taker, or buffer it; False when neither is possible."""
        if self._takers.unpark(item):
            return True
        if len(self._items) < self._capacity:
            self._items.append(item)
            return True
        return False

    def _take_ready(self) -> tuple[bool, Any]:
        """The oldest item if one is available without waiting: buffered, or from a blocked
        adder (which is released)."""
        items, adders = self._items, self._adders
        if items:
            item = items.popleft()
            # Room for one more: the first live blocked adder's item moves into the buffer.
            while len(items) < self._capacity and (pending := adders.pop()) is not None:
                items.append(pending.data)  # in place before the adder may run
                if pending.wake():
                    break
                items.pop()  # that adder was cancelled: its item is not ours
            return True, item
        while (pending := adders.pop()) is not None:
            if pending.wake():
                return True, pending.data
        return False, None

    def _put_back(self, item: T) -> None:
        """An item a cancelled taker had received: it was the oldest, so it goes first."""
        if not self._takers.unpark(item):
            self._items.appendleft(item)


class Semaphore:
    """A counter of permits: ``acquire`` takes one, waiting while there is none; ``release``
    gives one back. ``with sem:`` holds a permit for the block. Permits go to waiters first come,
    first served."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: int = 1) -> None:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"Semaphore value must be an int >= 0, got {value!r}")
        # Invariant: _waiters holds (possibly cancelled) fibers only while _value is 0.
        self._value = value
        self._waiters = ParkingLot()

    @property
    def value(self) -> int:
        """The number of permits available right now."""
        return self._value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} value={self._value} waiters={len(self._waiters)}>"

    def acquire(self) -> None:
        """Take a permit, waiting until one is free.

        A suspension point when it has to wait: cancelled while waiting, no permit is taken (one
        already handed over is passed on). Raises ``NoGreenContext`` when it has to wait outside
        green code.
        """
        if self._value > 0:
            self._value -= 1
            return
        self._waiters.park(give_back=self._pass_on)

    def _pass_on(self, _permit: object) -> None:
        """A permit handed to a fiber cancelled before it could use it: to the next one."""
        self.release()

    def acquire_nowait(self) -> None:
        """Take a permit if one is free right now. Never suspends.

        Raises ``gb.WouldBlock`` when none is free (``acquire()`` waits for one).
        """
        if self._value > 0:
            self._value -= 1
            return
        raise WouldBlock(f"{self!r} has no permit free; acquire() waits for one")

    def try_acquire(self) -> bool:
        """Deprecated: use ``acquire_nowait()``, which raises ``gb.WouldBlock`` instead of
        returning False. Takes a permit if one is free right now and returns whether it did;
        never suspends. Emits ``DeprecationWarning``."""
        warnings.warn(
            "Semaphore.try_acquire() is deprecated: use acquire_nowait(), which raises "
            "gb.WouldBlock when no permit is free",
            DeprecationWarning,
            stacklevel=2,
        )
        try:
            self.acquire_nowait()
        except WouldBlock:
            return False
        return True

    def release(self) -> None:
        """Give a permit back: to the first live waiter, else to the counter. Never suspends."""
        if not self._waiters.unpark():
            self._value += 1

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Mutex:
    """Mutual exclusion between fibers (not re-entrant): ``with mutex:``, or ``lock()`` and
    ``unlock()``. Waiters get the lock first come, first served."""

    __slots__ = ("_permits",)

    def __init__(self) -> None:
        self._permits = Semaphore(1)

    def __repr__(self) -> str:
        return f"<Mutex {'locked' if self.locked() else 'unlocked'}>"

    def locked(self) -> bool:
        """True while some fiber holds the lock."""
        return self._permits.value == 0

    def lock(self) -> None:
        """Take the lock, waiting while another fiber holds it.

        A suspension point when it has to wait: cancelled while waiting, the lock is not taken.
        A fiber that locks a mutex it already holds waits forever (not re-entrant). Raises
        ``NoGreenContext`` when it has to wait outside green code.
        """
        self._permits.acquire()

    def lock_nowait(self) -> None:
        """Take the lock if it is free right now. Never suspends.

        Raises ``gb.WouldBlock`` when a fiber holds it (``lock()`` waits for it).
        """
        if self.locked():
            raise WouldBlock(f"{self!r}: another fiber holds it; lock() waits for it")
        self._permits.acquire_nowait()

    def try_lock(self) -> bool:
        """Deprecated: use ``lock_nowait()``, which raises ``gb.WouldBlock`` instead of
        returning False. Takes the lock if it is free right now and returns whether it did;
        never suspends. Emits ``DeprecationWarning``."""
        warnings.warn(
            "Mutex.try_lock() is deprecated: use lock_nowait(), which raises gb.WouldBlock when "
            "the mutex is held",
            DeprecationWarning,
            stacklevel=2,
        )
        try:
            self.lock_nowait()
        except WouldBlock:
            return False
        return True

    def unlock(self) -> None:
        """Release the lock, handing it to the first waiter. Never suspends.

        Raises ``RuntimeError`` when the mutex is not locked.
        """
        if not self.locked():
            raise RuntimeError("Mutex.unlock() called on an unlocked mutex")
        self._permits.release()

    def __enter__(self) -> None:
        self.lock()

    def __exit__(self, *exc_info: object) -> None:
        self.unlock()


class Event:
    """A one-shot flag: ``wait()`` blocks until ``set()`` is called, then never again (like
    trio's Event; make a new one to wait again)."""

    __slots__ = ("_is_set", "_waiters")

    def __init__(self) -> None:
        self._is_set = False
        self._waiters = ParkingLot()

    def __repr__(self) -> str:
        return f"<Event {'set' if self._is_set else 'unset'}>"

    def is_set(self) -> bool:
        """True once ``set()`` was called."""
        return self._is_set

    def set(self) -> None:
        """Set the flag and wake every waiter; idempotent. Never suspends."""
        if self._is_set:
            return
        self._is_set = True
        self._waiters.unpark_all()

    def wait(self) -> None:
        """Return once the flag is set; at once if it already is.

        A suspension point otherwise. Raises ``NoGreenContext`` when it has to wait outside
        green code.
        """
        if not self._is_set:
            self._waiters.park()


class Condition:
    """A condition variable over a ``Mutex``: ``with cond:`` holds the mutex; inside,
    ``cond.wait()`` releases it, waits for ``notify``, and takes it back."""

    __slots__ = ("_mutex", "_waiters")

    def __init__(self, mutex: Mutex | None = None) -> None:
        self._mutex = mutex if mutex is not None else Mutex()
        self._waiters = ParkingLot()

    @property
    def mutex(self) -> Mutex:
        """The mutex this condition releases while waiting."""
        return self._mutex

    def __enter__(self) -> None:
        self._mutex.lock()

    def __exit__(self, *exc_info: object) -> None:
        self._mutex.unlock()

    def wait(self) -> None:
        """Release the mutex, wait for a ``notify``, take the mutex back, return.

        A suspension point. The mutex is held again when it returns *and* when it raises: if
        cancelled, it first takes the mutex back (waiting for it however many cancellations
        arrive), then raises ``CancelledError``; a notification it had received is passed on to
        the next waiter. Raises ``RuntimeError`` when the mutex is not locked.
        """
        if not self._mutex.locked():
            raise RuntimeError("Condition.wait() needs the mutex held: use 'with cond:' first")
        try:
            # In the queue before the mutex is released: no notify can slip in between.
            self._waiters.park(give_back=self._pass_on, parked=self._mutex.unlock)
        finally:
            self._relock()

    def _pass_on(self, _notification: object) -> None:
        """A notification for a fiber cancelled before it could act on it: to the next one."""
        self.notify()

    def _relock(self) -> None:
        cancelled: asyncio.CancelledError | None = None
        while True:
            try:
                self._mutex.lock()
                break
            except asyncio.CancelledError as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled

    def wait_for(self, predicate: Callable[[], T]) -> T:
        """``wait()`` until ``predicate()`` is true; return its value. Same rules as ``wait``."""
        result = predicate()
        while not result:
            self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiting fibers (they run once the notifier releases the mutex).
        Never suspends."""
        while n > 0 and self._waiters.unpark():
            n -= 1

    def notify_all(self) -> None:
        """Wake every waiting fiber. Never suspends."""
        self._waiters.unpark_all()

