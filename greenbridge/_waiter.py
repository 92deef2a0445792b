"""One-shot wake-ups for green fibers: the primitive every greenbridge-internal wait is built on.

Promises, Streams, locks and flows all reduce to "this fiber waits until something wakes it".
They use ``Waiter`` rather than ``await_from_green(future)`` so that the fast path lives in one
place: a waker running in the loop greenlet (a protocol callback, a coroutine, a loop callback)
switches straight into the parked fiber instead of going through a Future and a Task wake-up one
loop iteration later (see "direct resumption" in ``_core``).

Rules every user of a Waiter follows:

* ``wait()`` is called at most once, from green code; ``wake``/``fail``/``cancel`` from anywhere
  on the loop's thread (green code, a coroutine, a protocol or loop callback).
* ``wake`` may run the woken fiber before it returns: call it once your own state is consistent
  (after appending the data, after releasing the lock), never in the middle of an update.
* ``wake``/``fail`` return whether the outcome was accepted. ``False`` means the waiter was
  already woken, failed or cancelled, or its fiber is being cancelled: the caller still owns the
  value (hand it to another waiter or keep it) -- this is how no item is lost to a cancelled
  waiter.
* If ``wait()`` raises ``CancelledError`` although a value had already been accepted (the
  cancellation arrived between the wake-up and the fiber running), ``take_back()`` returns
  ``(True, value)`` and the caller must put the value back where it came from.

Two implementations
-------------------
``PyWaiter`` below, and the same class in C in ``_speedups.c`` (a wait and a wake-up without a
Python frame between the caller and ``_park``/``_resume``). ``Waiter`` is the C one when the
accelerator is built and ``GREENBRIDGE_NO_SPEEDUPS`` is unset, as for ``_park`` and ``_resume``;
else this one. The C one takes the rare paths through the Python helpers here
(``_foreign_future``) and in ``_control`` (``_check_waker_thread``). ``tests/test_waiter.py``
runs every test on both, and a differential test holds them to the same results.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from greenlet import getcurrent

from ._accelerator import speedups
from ._control import _check_waker_thread, _Fiber, _park, _resume
from ._core import _no_green_message, await_from_green, in_green
from ._errors import NoGreenContext

__all__ = ("SPEEDUPS", "PyWaiter", "Waiter")

_PENDING = 0  # nobody woke it yet
_WOKEN = 1  # _value is the value
_FAILED = 2  # _value is the exception
_CANCELLED = 3  # cancel() was called, or the waiting fiber was cancelled before any wake
_TAKEN_BACK = 4  # woken, but the fiber was cancelled before it could return the value


class PyWaiter:
    """A one-shot wake-up for the green fiber that calls ``wait()``. See the module docstring."""

    __slots__ = ("_fiber", "_future", "_state", "_value")

    def __init__(self) -> None:
        # Invariants: _fiber is the fiber parked in wait() (None before and after); _value is
        # meaningful in the _WOKEN, _FAILED and _TAKEN_BACK states only. _future is used instead
        # of parking when wait() runs in another library's green context (the greenlet
        # convention), where greenbridge cannot park the greenlet itself.
        self._fiber: _Fiber | None = None
        self._state = _PENDING
        self._value: Any = None
        self._future: Any = None

    def wait(self) -> Any:
        """Suspend the calling fiber until ``wake``/``fail``; return the value or raise the error.

        Returns at once when already woken. A suspension point: cancelling the fiber raises
        ``CancelledError`` here (then see ``take_back``); after ``cancel()`` it raises
        ``CancelledError`` too. Raises ``NoGreenContext`` outside green code and ``RuntimeError``
        when called a second time.
        """
        if self._state == _PENDING:
            fiber = getcurrent()
            if self._fiber is not None or self._future is not None:
                raise RuntimeError("Waiter.wait() was called twice")
            if type(fiber) is not _Fiber:
                return self._wait_foreign()
            self._fiber = fiber
            try:
                while self._state == _PENDING:
                    _park(fiber)
            except BaseException:
                self._state = _TAKEN_BACK if self._state == _WOKEN else _CANCELLED
                raise
            finally:
                self._fiber = None
        return self._outcome()

    def _outcome(self) -> Any:
        state = self._state
        if state == _WOKEN:
            return self._value
        if state == _FAILED:
            raise self._value
        if state == _CANCELLED:
            raise asyncio.CancelledError("the wait was cancelled")
        raise RuntimeError("Waiter.wait() was called again after it was interrupted")

    def _wait_foreign(self) -> Any:
        self._future = future = _foreign_future()
        try:
            await_from_green(future)
        except BaseException:
            self._state = _TAKEN_BACK if self._state == _WOKEN else _CANCELLED
            raise
        return self._outcome()

    def check_waker(self) -> None:
        """Raise ``RuntimeError`` now, changing nothing, when a ``wake`` from the caller would
        come from another thread than the waiting fiber's loop (see ``_check_waker_thread``)."""
        fiber = self._fiber
        if fiber is not None and getcurrent() is not fiber.parent:
            _check_waker_thread(fiber)

    def _settle(self, state: int, value: Any) -> bool:
        if self._state != _PENDING:
            return False
        fiber = self._fiber
        if fiber is not None:
            if getcurrent() is not fiber.parent:  # a direct waker is on the fiber's thread
                _check_waker_thread(fiber)
            self._state, self._value = state, value
            if not _resume(fiber):  # its Task is being cancelled: refuse the value
                self._state, self._value = _PENDING, None
                return False
            return True
        future = self._future
        if future is not None:
            if future.done():
                return False
            future.set_result(None)
        self._state, self._value = state, value
        return True

    def wake(self, value: Any = None) -> bool:
        """Resume the waiting fiber with ``value`` -- possibly running it before returning.

        False when already woken, failed or cancelled, or when the fiber is being cancelled: the
        caller keeps ``value``. Never suspends.
        """
        return self._settle(_WOKEN, value)

    def fail(self, exc: BaseException) -> bool:
        """Resume the waiting fiber by raising ``exc`` in it; False as for ``wake``."""
        return self._settle(_FAILED, exc)

    def done(self) -> bool:
        """True once woken, failed or cancelled."""
        return self._state != _PENDING

    def cancel(self) -> bool:
        """Cancel the wait from outside: ``wait()`` raises ``CancelledError``. False when the
        waiter was already woken, failed or cancelled."""
        return self._settle(_CANCELLED, None)

    def take_back(self) -> tuple[bool, Any]:
        """After ``wait()`` raised ``CancelledError``: ``(True, value)`` when a value had been
        accepted by ``wake`` anyway (put it back), else ``(False, None)``."""
        if self._state == _TAKEN_BACK:
            value, self._value = self._value, None
            self._state = _CANCELLED
            return True, value
        return False, None


def _foreign_future() -> asyncio.Future[None]:
    """The Future a wait in another library's green context awaits (the greenlet convention);
    ``NoGreenContext`` outside green code. Both Waiters' ``_wait_foreign`` take it from here."""
    if not in_green():
        raise NoGreenContext(_no_green_message("a greenbridge wait"))
    return asyncio.get_running_loop().create_future()


# The C version (see "Two implementations" in the module memo): with the C _park and _resume, or
# not at all.
SPEEDUPS = False
if TYPE_CHECKING:
    Waiter = PyWaiter
else:
    Waiter = PyWaiter
    if (_speedups := speedups()) is not None and hasattr(_speedups, "init_waiter"):
        Waiter, _CWakeBatch = _speedups.init_waiter(
            _foreign_future, await_from_green, _check_waker_thread, asyncio.CancelledError
        )
        SPEEDUPS = True
