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
   has finished; ``fn``'s result is returned (or its error raised) and the cancellation stays
   pending for the caller's next cancellation point (re-armed, ``_rearm``), so a real error is
   never hidden and clean-up code after ``protect`` still runs up to its next suspension.
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

from ._control import _cancel_pending, _Fiber, _rearm, _return_to_task
from ._core import _no_green_message, await_from_green, in_green, spawn_green
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
    the caller waits for it to finish whatever happens. A cancellation of the caller that
    arrives meanwhile is held back: ``fn``'s result is returned (or its exception raised) all
    the same, and the cancellation is left pending, to be raised at the caller's next
    cancellation point (Eio's rule; ``fiber.check()`` raises it at once). Use it for clean-up
    that must complete::

        try:
            ...
        finally:
            gb.protect(conn.close)

    A suspension point, but never a cancellation point itself. Raises ``NoGreenContext``
    outside green code, before ``fn`` runs; ``CancelledError`` only when ``fn`` itself ended
    cancelled.
    """
    host = _fiber_task("gb.protect()")
    loop = host.get_loop()
    # Sharing the Context (not a copy) keeps protect() transparent: fn sees and sets the caller's
    # context variables. The caller is suspended while fn runs, so the Context is never entered
    # twice at once -- which is also why the Task is made directly rather than by the loop's task
    # factory: an eager factory would step it at once, inside the caller's entered Context.
    task = asyncio.Task(spawn_green(fn, *args, **kwargs), loop=loop, context=getcurrent().gr_context)
    held = False
    try:
        while True:
            try:
                return await_from_green(asyncio.shield(task))
            except asyncio.CancelledError:
                if task.cancelled():
                    held = False  # fn itself ended cancelled: that is what the caller sees
                    raise
                held = True  # ours: held back until fn has finished
    finally:
        if held:
            _rearm(host)
