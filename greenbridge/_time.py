"""Time for green code: sleep, timeout blocks and timed calls, all on the loop's clock."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import ParamSpec, TypeVar

from ._control import _cancel_pending
from ._core import _no_green_message, await_from_green, in_green
from ._errors import NoGreenContext
from ._waiter import Waiter

__all__ = ("sleep", "timeout", "with_timeout")

T = TypeVar("T")
P = ParamSpec("P")


def sleep(seconds: float) -> None:
    """Suspend the calling fiber for ``seconds``; 0 (or less) just lets other work run first.

    Timed by the loop's clock (``loop.time()``), so a virtual clock (``greenbridge.testing``)
    makes it instant. A suspension point, hence a cancellation point. Raises
    ``NoGreenContext`` outside green code.
    """
    if seconds <= 0:
        await_from_green(asyncio.sleep(0))
        return
    if not in_green():
        raise NoGreenContext(_no_green_message("gb.sleep()"))
    # A Waiter woken by a timer callback: the loop switches straight into the fiber, without the
    # coroutine, Future and Task wake-up that asyncio.sleep would cost.
    waiter = Waiter()
    timer = asyncio.get_running_loop().call_later(seconds, waiter.wake)
    try:
        waiter.wait()
    finally:
        timer.cancel()


class _GreenTimeout(AbstractContextManager[asyncio.Timeout]):
    __slots__ = ("_seconds", "_timeout")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._timeout: asyncio.Timeout | None = None

    def __enter__(self) -> asyncio.Timeout:
        if self._timeout is not None:
            raise RuntimeError("a gb.timeout() block cannot be entered twice")
        if not in_green():
            raise NoGreenContext(_no_green_message("gb.timeout()"))
        task = asyncio.current_task()
        if task is not None and _cancel_pending(task):
            # A cancellation requested before the block and not delivered yet: asyncio.timeout
            # would count it as its own and raise TimeoutError for it once the block expires
            # (which the caller may catch). Entering is then a cancellation point (Eio's rule).
            await_from_green(asyncio.sleep(0))
        self._timeout = asyncio.timeout(self._seconds)
        return await_from_green(self._timeout.__aenter__())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        timeout = self._timeout
        assert timeout is not None
        if exc is None and timeout.expired():
            # The time ran out while the block could not be cancelled (inside gb.protect, which
            # leaves the cancellation pending): leaving the block is then a cancellation point,
            # so that the block raises TimeoutError rather than the cancellation outliving it.
            task = asyncio.current_task()
            if task is not None and _cancel_pending(task):
                try:
                    await_from_green(asyncio.sleep(0))
                except asyncio.CancelledError as cancelled:
                    # TimeoutError when the cancellation is the timeout's own; one requested
                    # from outside as well (the Task cancelled meanwhile) goes on as it came.
                    aexit = timeout.__aexit__(type(cancelled), cancelled, cancelled.__traceback__)
                    await_from_green(aexit)
                    raise
        return await_from_green(timeout.__aexit__(exc_type, exc, tb))


def timeout(seconds: float | None) -> AbstractContextManager[asyncio.Timeout]:
    """A green ``with`` block that may span many suspensions and is cut short after ``seconds``.

    ``with gb.timeout(2.0): ...`` -- when the time runs out while the block is suspended, the
    wait is cancelled and the block raises the builtin ``TimeoutError``; ``None`` means no limit,
    0 or less expires at the first suspension. Built on ``asyncio.timeout`` in the fiber's Task,
    so it nests with asyncio timeouts and can be rescheduled through the ``asyncio.Timeout`` the
    ``with`` yields. A cancellation of the fiber already requested and not yet delivered is
    raised on entry (otherwise, once the block expired, it would come out as ``TimeoutError``).
    Raises ``NoGreenContext`` on entry outside green code.
    """
    return _GreenTimeout(seconds)


def with_timeout(seconds: float | None, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn(*args, **kwargs)`` under ``gb.timeout(seconds)``; return its result or raise
    ``TimeoutError``."""
    with timeout(seconds):
        return fn(*args, **kwargs)
