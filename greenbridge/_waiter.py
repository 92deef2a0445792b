"""One-shot wake-ups for green fibers: the primitive every greenbridge-internal wait is built on.

Promises, Streams, locks and flows all reduce to "this fiber waits until something wakes it".
They use ``Waiter`` rather than ``await_from_green(future)`` directly so that the mechanism can
be made faster in one place (resuming a fiber straight from the loop callback that wakes it,
DESIGN.md section 2) without touching them.

Rules every user of a Waiter follows:

* ``wait()`` is called at most once, from green code; ``wake``/``fail`` from anywhere on the
  loop's thread (green code, a coroutine, a protocol callback).
* ``wake``/``fail`` return whether the outcome was accepted. ``False`` means the waiter was
  already woken or its fiber was cancelled: the caller still owns the value (hand it to another
  waiter or keep it) -- this is how no item is lost to a cancelled waiter.
* If ``wait()`` raises ``CancelledError`` although a value had already been accepted (the
  cancellation arrived between the wake-up and the fiber running), ``take_back()`` returns
  ``(True, value)`` and the caller must put the value back where it came from.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._core import await_from_green

__all__ = ("Waiter",)


class Waiter:
    """A one-shot wake-up for the green fiber that calls ``wait()``. See the module docstring."""

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # Invariant: the future is pending until woken, failed or cancelled (fiber cancelled).
        self._future: asyncio.Future[Any] = (loop or asyncio.get_running_loop()).create_future()

    def wait(self) -> Any:
        """Suspend the calling fiber until ``wake``/``fail``; return the value or raise the error.

        A suspension point: cancelling the fiber raises ``CancelledError`` here (then see
        ``take_back``). Raises ``NoGreenContext`` outside green code.
        """
        return await_from_green(self._future)

    def wake(self, value: Any = None) -> bool:
        """Resume the waiting fiber with ``value``; False if it was already woken or cancelled."""
        future = self._future
        if future.done():
            return False
        future.set_result(value)
        return True

    def fail(self, exc: BaseException) -> bool:
        """Resume the waiting fiber by raising ``exc`` in it; False as for ``wake``."""
        future = self._future
        if future.done():
            return False
        future.set_exception(exc)
        return True

    def done(self) -> bool:
        """True once woken, failed or cancelled."""
        return self._future.done()

    def cancel(self) -> bool:
        """Cancel the wait from outside: ``wait()`` raises ``CancelledError``."""
        return self._future.cancel()

    def take_back(self) -> tuple[bool, Any]:
        """After ``wait()`` raised ``CancelledError``: ``(True, value)`` when a value had been
        accepted by ``wake`` anyway (put it back), else ``(False, None)``."""
        future = self._future
        if future.done() and not future.cancelled() and future.exception() is None:
            return True, future.result()
        return False, None
