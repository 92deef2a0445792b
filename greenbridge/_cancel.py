"""Cancellation for green code: the rules, ``protect``, and the fiber-level checks.

The rules
=========
1. Cancellation is asyncio's: cancelling the Task that hosts a fiber (``task.cancel()``, an
   ``asyncio.timeout`` or ``gb.timeout`` expiring, a failing ``Switch`` or ``TaskGroup``) raises
   ``asyncio.CancelledError`` in the fiber.
2. It is delivered only at suspension points: ``await_from_green``, every greenbridge wait
   (``sleep``, ``Promise.await_``, ``Stream.take``, locks, flows...), ``fiber.yield_()`` and
   ``fiber.check()``. Code between two suspension points runs to the next one undisturbed.
3. It is edge-triggered, as in asyncio: one ``cancel()`` raises one ``CancelledError``. A fiber
   that catches it and carries on is not cancelled again (unlike Eio, where a cancelled context
   stays cancelled), and the Task's ``cancelling()`` count stays raised; greenbridge's own
   scopes (``Switch``, ``gb.timeout``) measure that count from their entry, so they keep working
   inside such a fiber, and so do ``asyncio.timeout`` and ``TaskGroup``.
4. ``protect(fn)`` runs ``fn`` shielded: a cancellation that arrives meanwhile waits until ``fn``
   has finished, then is raised (``fn``'s own error, if any, wins: cancellation never hides a
   real error).
5. Waiting for something does not cancel its producer when the waiter is cancelled, with one
   exception inherited from asyncio. ``Promise.await_()`` cancelled: the fiber resolving the
   promise carries on (Eio's rule). ``await_from_green(task)`` cancelled: ``task`` is cancelled
   too (asyncio's rule for ``await task``); wrap it in ``asyncio.shield`` to avoid that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

from greenlet import getcurrent

from ._core import _Fiber, _no_green_message, _return_to_task, await_from_green, in_green, spawn_green
from ._errors import NoGreenContext
from ._waiter import Waiter

__all__ = ("await_cancel", "check", "protect", "yield_")

T = TypeVar("T")
P = ParamSpec("P")


def _fiber_task(what: str) -> asyncio.Task[Any]:
    """The Task hosting the calling fiber.

    A fiber resumed directly by a waker runs outside its Task's step, where
    ``asyncio.current_task()`` is somebody else's; it first goes back inside its Task (one loop
    iteration, where a pending cancellation is raised). Raises ``NoGreenContext`` outside green.
    """
    fiber = getcurrent()
    if type(fiber) is _Fiber and fiber._direct:
        _return_to_task(fiber)
    task = asyncio.current_task() if in_green() else None
    if task is None:
        raise NoGreenContext(_no_green_message(what))
    return task


def _cancel_pending(task: asyncio.Task[Any]) -> bool:
    """True when ``task.cancel()`` was called while it ran and its next step will raise.

    Reads ``_must_cancel``, which both the C and the Python Task implement; there is no public
    way to see a cancellation requested while the Task is running.
    """
    return bool(getattr(task, "_must_cancel", False))


def yield_() -> None:
    """Let every other ready fiber and Task run one step, then carry on.

    A suspension point, hence a cancellation point. Raises ``NoGreenContext`` outside green code.
    """
    await_from_green(asyncio.sleep(0))


def check() -> None:
    """Raise ``CancelledError`` now if the calling fiber has a cancellation pending.

    A cancellation requested while the fiber runs (for instance it called ``sw.fail(exc)`` on its
    own switch) is otherwise only delivered at its next suspension; ``check()`` delivers it here,
    so long computations can poll for it. Suspends only in that case (and, once, after a direct
    resumption, see ``_fiber_task``). Raises ``NoGreenContext`` outside green code.
    """
    task = _fiber_task("fiber.check()")
    if _cancel_pending(task):
        await_from_green(asyncio.sleep(0))  # the Task's next step raises CancelledError here


def await_cancel() -> NoReturn:
    """Suspend until the calling fiber is cancelled, then raise ``CancelledError``.

    A fiber that only holds a resource open (a daemon, a server's accept loop) waits here.
    A suspension point. Raises ``NoGreenContext`` outside green code.
    """
    if not in_green():
        raise NoGreenContext(_no_green_message("fiber.await_cancel()"))
    Waiter().wait()  # nobody wakes it: only cancellation ends the wait
    raise AssertionError("unreachable: a Waiter nobody holds was woken")


def protect(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` shielded from cancellation and return its result.

    ``fn`` runs in a fiber of its own Task that shares the caller's ``contextvars.Context``, and
    the caller waits for it to finish whatever happens. If the caller is cancelled meanwhile, the
    cancellation is held back until ``fn`` has finished, then raised here as ``CancelledError``
    (``fn``'s result is dropped; if ``fn`` raised, its exception is raised instead: cancellation
    never hides a real error). Use it for clean-up that must complete::

        try:
            ...
        finally:
            gb.protect(conn.close)

    A suspension point (a cancellation point only at its end). Raises ``NoGreenContext`` outside
    green code, before ``fn`` runs.
    """
    if not in_green():
        raise NoGreenContext(_no_green_message("gb.protect()"))
    loop = asyncio.get_running_loop()
    # Sharing the Context (not a copy) keeps protect() transparent: fn sees and sets the caller's
    # context variables. The caller is suspended while fn runs, so the Context is never entered
    # twice at once.
    task = loop.create_task(spawn_green(fn, *args, **kwargs), context=getcurrent().gr_context)
    cancelled = False
    while True:
        try:
            result = await_from_green(asyncio.shield(task))
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise  # fn itself ended cancelled
            cancelled = True  # ours: held back until fn has finished
    if cancelled:
        raise asyncio.CancelledError()  # fn returned: deliver what was held back
    return result
