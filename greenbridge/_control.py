"""The plumbing: how control and cancellation move between fibers, their Tasks and wakers.

Everything that switches a fiber out and back in, that delivers or withdraws a cancellation,
lives here; the rest of greenbridge (the driver and ``await_from_green`` in ``_core``,
``Waiter`` and the wait queue ``_parking.ParkingLot``, ``Switch``, the combinators, the
primitives, flows and servers) uses these functions and nothing lower. trio's split is the
model: the objects that *start* a cancellation (``Switch``, ``gb.timeout``, a ``Task.cancel()``
from asyncio) are elsewhere; this module only *carries* it.

The rules, and the one place each is enforced
=============================================
1. A fiber suspends only by switching to its parent (``_park``; ``await_from_green`` for an
   asyncio awaitable), and is switched into only by its driver or -- while parked -- by a waker
   running in its parent when that is not a fiber (``_resume``): a fiber is the parent only while
   it runs the driver (an inline ``await_from_green(spawn_green(...))``) or, under an eager task
   factory, until the Task it created is stepped again, and neither is a place to run another
   fiber's code.
2. The parent of a fiber is the greenlet that steps its driver *now*: ``_core._drive`` re-parents
   it on every Task step (an eager task factory steps a Task's first step inside its creator).
3. A directly resumed fiber runs with its own Task current (``_resume``, through
   ``_swap_current_task`` or ``_enter_task``/``_leave_task``), and goes back inside its Task's
   step before it awaits asyncio code or reports its outcome (``_return_to_task``).
4. Cancellation is asyncio's ``CancelledError``, thrown in by the Task at a suspension point; it
   is never raised between two suspension points. A cancellation requested while the fiber runs
   is visible as ``_cancel_pending``; a cancellation taken but owed to the caller is re-armed
   with ``_rearm`` (``protect``, ``fiber.any``), never dropped; one that arrived after the fiber's
   function had finished is withdrawn with ``uncancel`` (``_finish_in_task``) so that the Task's
   ``cancelling()`` count stays true for TaskGroups and timeouts.
5. A waker never hands a value to a fiber whose Task is being cancelled: ``_resume`` returns
   False and the waker keeps the value (the wait queue passes it on); a value accepted before the
   cancellation landed is taken back by the waiter (``Waiter.take_back``).
6. Wakers run only on the loop's thread: ``_resume`` raises ``RuntimeError`` at once, before
   anything changes, when called from another thread.
7. The interpreter may raise ``KeyboardInterrupt`` at any line; inside these functions it is
   deferred to the next safe point (``_ki``) so that no fiber, Task or wait is left half-switched.

Direct resumption
=================
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from greenlet import GreenletExit, getcurrent, greenlet

from ._accelerator import speedups

if TYPE_CHECKING:
    from ._core import _Stepper

__all__ = ()

# asyncio's bookkeeping of the running Task, used to make a directly resumed fiber's Task current
# (the same functions asyncio's C Task step uses; present on every supported Python).
_enter_task = asyncio.tasks._enter_task
_leave_task = asyncio.tasks._leave_task
_swap_current_task = getattr(asyncio.tasks, "_swap_current_task", None)
_get_running_loop = asyncio._get_running_loop
# _task_of(loop): the Task ``loop`` is stepping now, or None. Python 3.12 and later implement
# asyncio.current_task in C; 3.11's is Python code around a dict lookup (about 1,500 instructions
# a call, most of a spawn's cost), so there the lookup reads that dict, asyncio's own (the C Task's
# step and uvloop's record the running Task in it).
_task_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]
if sys.version_info >= (3, 12):
    _task_of = asyncio.current_task
else:
    _task_of = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]


def _running_task() -> asyncio.Task[Any] | None:
    """The Task being stepped now, None outside one (or with no running loop)."""
    loop = _get_running_loop()
    return None if loop is None else _task_of(loop)

class _Fiber(greenlet):
    """The greenlet that runs green functions; see ``_core``'s memo for its role. Defined here,
    with the plumbing that moves control in and out of it. Its state is in slots, which cost less
    to read and write on the hot path than the instance dictionary greenlets have."""

    __slots__ = ("_call", "_direct", "_handover", "_outcome", "_park", "_stepper", "_task")

    # The de-facto convention that SQLAlchemy's ``await_`` and awaitlet look for.
    __sqlalchemy_greenlet_provider__ = True

    def __init__(self, run: Any, parent: greenlet) -> None:
        # The C driver makes its fibers without this frame (_speedups.c, "Fibers' bookkeeping":
        # fibers_new_fiber sets the same slots to the same values): keep the two in step.
        super().__init__(run, parent)
        # The first call of a new fiber, (fn, args, kwargs), until the fiber starts it (see
        # _core._fiber_main); None from then on.
        self._call: tuple[Any, tuple[Any, ...], dict[str, Any]] | None = None
        # This fiber's idle _Stepper, None while await_from_green is using it.
        self._stepper: _Stepper | None = None
        # An awaitable a waker handed over for the driver to await (see _pass_to_driver), else
        # None.
        self._handover: Any = None
        # The outcome of the finished call, from _FINISHED until the driver takes it.
        self._outcome: tuple[Any, Any] | None = None
        # Direct resumption (see "Direct resumption" below). _park is the Future the hosting Task
        # waits on while the fiber is parked by a Waiter; _direct is True while the fiber was last
        # resumed by a waker rather than by its driver, i.e. it is not inside its Task's step.
        self._park: asyncio.Future[Any] | None = None
        self._direct = False
        # The Task hosting the fiber's current call (recorded by the driver, or when the fiber
        # parks inside it): the task a direct waker makes current while the fiber runs.
        self._task: asyncio.Task[Any] | None = None


# A fiber parked by a Waiter (greenbridge's own waits: flows, streams, promises, locks) hands its
# driver a Future, ``_park``, that the hosting Task then waits on. A waker running in the loop
# greenlet -- typically a protocol callback -- may switch straight into the parked fiber
# (``_wake_direct``) instead of completing that Future and letting the Task wake the fiber one
# loop iteration later. The fiber then runs outside its Task's step (``_direct``), with its Task
# still waiting on the same, still pending ``_park``. When it parks again it switches back to the
# waker (``_PARKED``); when it needs its Task again -- to await asyncio code, or to report that
# its function finished -- it completes ``_park`` and switches back to the waker
# (``_return_to_task``), and its driver resumes it at the next Task step.
#
# Invariants: only a greenlet that is the fiber's parent, and not itself a fiber, switches into it
# directly (a waker in any fiber -- even the creator that ran an eager Task's first step and is
# still the parent -- completes ``_park`` instead); a directly resumed
# fiber never switches to its parent with anything its driver would have to interpret, except the
# foreign convention's awaitable, which ``_wake_direct`` passes on to the driver (``_foreign``).

# What a parked fiber hands a direct waker; and what a direct waker sends in.
_PARKED: Any = object()
_WOKEN: Any = object()


def _park(fiber: _Fiber) -> None:
    """Suspend ``fiber`` (the caller) until a waker or its Task resumes it.

    Raises what the Task throws in (cancellation). The caller re-checks its own condition.
    """
    if fiber._direct:
        park = fiber._park
        assert park is not None
        if park.done():
            # Cancelled while we ran outside the Task: let the Task deliver it.
            fiber._direct = False
        try:
            fiber._direct = fiber.parent.switch(_PARKED) is _WOKEN  # type: ignore[union-attr]
        except BaseException:
            fiber._direct = False
            raise
        return
    park = fiber._park
    if park is None or park.done():
        loop = asyncio.get_running_loop()
        park = fiber._park = loop.create_future()
        fiber._task = _task_of(loop)
    park._asyncio_future_blocking = True
    try:
        fiber._direct = fiber.parent.switch(park) is _WOKEN  # type: ignore[union-attr]
    except BaseException:
        fiber._direct = False
        raise


def _return_to_task(fiber: _Fiber) -> None:
    """Called by a directly resumed fiber that needs its Task's step: come back inside it."""
    park = fiber._park
    fiber._direct = False
    assert park is not None
    if not park.done():
        park.set_result(None)
    fiber.parent.switch(_PARKED)  # type: ignore[union-attr]


def _finish_in_task(fiber: _Fiber) -> None:
    """A directly resumed fiber whose call has finished goes back to its Task to report.

    Its function has already returned or raised: a cancellation its Task receives meanwhile came
    too late to interrupt it (as ``Task.cancel()`` of a coroutine that has returned would be). The
    outcome wins, and the cancellation request is withdrawn (``uncancel``) so that the Task's
    ``cancelling()`` count stays true for TaskGroups and timeouts.
    """
    try:
        _return_to_task(fiber)
    except GreenletExit:
        raise
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
            _withdrawn_from(task)
    except GeneratorExit:  # the driver was closed: the outcome is reported all the same
        pass


def _withdrawn_from(task: asyncio.Task[Any]) -> None:
    """A cancellation withdrawn from ``task`` (``_finish_in_task``) may be a Ctrl-C's, when
    ``task`` is ``gb.run``'s program: that interrupt is owed then, not dropped."""
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(handler, _SigintHandler) and handler.main is task and handler.interrupts:
        handler.owed = True


def _resume(fiber: _Fiber) -> bool:
    """Resume a fiber parked by ``_park``: directly when the caller is its parent (the loop
    greenlet), else through its Task. False when the fiber's Task is being cancelled (the park
    Future is done), in which case the fiber will see ``CancelledError`` and is not resumed."""
    park = fiber._park
    if park is None or park.done():
        return False
    waker = getcurrent()
    if waker is fiber.parent and type(waker) is not _Fiber:
        # The fiber runs as its own Task, as far as asyncio.current_task() can tell, for as long
        # as it runs here; whatever Task the waker runs in is current again afterwards.
        loop = park.get_loop()
        task = fiber._task
        assert task is not None  # recorded by _park, which created ``park`` inside the Task
        if _swap_current_task is not None:  # Python >= 3.12: one call each way
            waker_task = _swap_current_task(loop, task)
            try:
                fiber._direct = True
                out = fiber.switch(_WOKEN)
            finally:
                _swap_current_task(loop, waker_task)
        else:
            waker_task = _task_of(loop)
            if waker_task is not None:
                _leave_task(loop, waker_task)
            _enter_task(loop, task)
            try:
                fiber._direct = True
                out = fiber.switch(_WOKEN)
            finally:
                _leave_task(loop, task)
                if waker_task is not None:
                    _enter_task(loop, waker_task)
        if out is not _PARKED:
            _pass_to_driver(fiber, out)
    else:
        fiber._direct = False
        park.set_result(None)
    return True


def _pass_to_driver(fiber: _Fiber, awaitable: Any) -> None:
    """A directly resumed fiber used the foreign convention (``parent.switch(awaitable)``):
    hand the awaitable to its driver and let its Task step await it."""
    assert fiber._park is not None
    fiber._direct = False
    fiber._handover = awaitable
    fiber._park.set_result(None)


# The optional C accelerator (``_speedups.c``, see ``_accelerator``) has ``_park`` and
# ``_resume`` too, step for step: they are on the path of every direct resumption (a read woken by
# its transport costs one of each). Without it, the Python functions above; both pass the same
# tests.
_park_py, _resume_py = _park, _resume
if (_speedups := speedups()) is not None:
    _park, _resume = _speedups.init_control(
        _Fiber,
        getcurrent,
        _PARKED,
        _WOKEN,
        _pass_to_driver,
        _task_of,
        _enter_task,
        _leave_task,
        _swap_current_task,
        asyncio.get_running_loop,
    )


def _thread_root(glet: Any) -> Any:
    """The main greenlet of the thread ``glet`` belongs to (every parent chain ends there)."""
    while glet.parent is not None:
        glet = glet.parent
    return glet


def _check_waker_thread(fiber: _Fiber) -> None:
    """Raise ``RuntimeError`` when the caller cannot wake ``fiber``: it runs in another thread
    than the loop the fiber is parked on. Called before anything is changed. (The C Waiter
    tests the thread roots itself first, and calls this only when they differ.)"""
    park = fiber._park
    if park is None:
        return
    if asyncio._get_running_loop() is park.get_loop() or _thread_root(getcurrent()) is _thread_root(fiber):
        return
    raise RuntimeError(
        "a greenbridge primitive (Promise, Stream, Event, a lock...) was used from another thread "
        "than its event loop's; they are not thread-safe: from another thread call "
        "loop.call_soon_threadsafe(promise.resolve, value) (or the method you need) instead"
    )


def _cancel_pending(task: asyncio.Task[Any]) -> bool:
    """True when ``task.cancel()`` was called while it ran and its next step will raise.

    Reads ``_must_cancel``, which both the C and the Python Task implement; there is no public
    way to see a cancellation requested while the Task is running.
    """
    return bool(getattr(task, "_must_cancel", False))


def _rearm(task: asyncio.Task[Any]) -> None:
    """Leave a cancellation that was taken (raised and caught) pending again for ``task``'s
    next step, without changing its ``cancelling()`` count.

    Caveat before Python 3.13: ``uncancel()`` does not withdraw a re-armed cancellation, so one
    re-armed inside an ``asyncio.timeout`` block that is left without suspending again surfaces
    at the next suspension after the block (``gb.timeout`` delivers it on exit instead).
    """
    task.uncancel()
    task.cancel()


# -- KeyboardInterrupt protection ----------------------------------------------------------------
#
# asyncio.Runner's SIGINT handler cancels the main Task on the first Ctrl-C and raises
# KeyboardInterrupt on the next one, wherever Python is executing -- possibly in the middle of a
# switch, between making a Task current and the ``try`` that undoes it. ``gb.run`` installs
# ``_SigintHandler`` instead, which behaves the same except where the interrupt lands in
# greenbridge's own frames (trio's ``enable_ki_protection`` is the model): there the first Ctrl-C
# cancels the program from a loop callback instead of in the middle of the line, and a later one
# is owed -- the program is cancelled again and ``gb.run`` raises ``KeyboardInterrupt`` once
# every fiber has unwound, exactly as ``asyncio.run`` ends on an interrupt. A frame is protected
# when the innermost
# frame that is neither asyncio's nor greenlet's machinery belongs to greenbridge; frames of
# user code, including user code greenbridge calls (a fiber's function), are not.

_INFRASTRUCTURE = ("asyncio", "selectors", "greenlet", "contextlib", "functools", "contextvars")
_UNPROTECTED_CODES: set[Any] = set()  # greenbridge frames that are entry points (gb.run)


def _ki_protected(frame: Any, loop_running: bool) -> bool:
    """True when an interrupt arriving in ``frame`` would land inside greenbridge's plumbing.

    While the loop runs, ``asyncio.Runner.run`` is where waiting and user callbacks happen: an
    interrupt whose innermost frames are asyncio's own below it (the selector's wait) is not
    ours to defer, whatever greenbridge frame called ``Runner.run``.
    """
    while frame is not None:
        code = frame.f_code
        module = frame.f_globals.get("__name__", "")
        if module.startswith("greenbridge.") or module == "greenbridge":
            return code not in _UNPROTECTED_CODES
        if module.split(".", 1)[0] not in _INFRASTRUCTURE:
            return False
        if loop_running and code is _RUNNER_RUN:
            return False
        frame = frame.f_back
    return False


_RUNNER_RUN = asyncio.Runner.run.__code__


class _SigintHandler:
    """``gb.run``'s SIGINT handler: asyncio.Runner's, with the interrupt deferred out of the
    plumbing (see above)."""

    __slots__ = ("deferred", "interrupts", "loop", "main", "owed", "shutdown_interrupts")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop  # set once the Runner has made its loop
        self.main: asyncio.Task[Any] | None = None
        self.interrupts = 0
        # deferred: an interrupt is scheduled as a loop callback; owed: one arrived in the
        # plumbing once the program had ended (the loop is shutting down): gb.run raises it last.
        self.deferred = False
        self.owed = False
        self.shutdown_interrupts = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.interrupts += 1
        main = self.main
        running = main is not None and not main.done()
        protected = _ki_protected(frame, self.loop is not None and self.loop.is_running())
        if self.interrupts == 1 and running:
            # As asyncio.Runner, the first Ctrl-C cancels the program -- from a callback of its
            # own when it lands in the plumbing: Task.cancel() cancels the Future the Task waits
            # on, which may be the very one the interrupted line was completing.
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._cancel_main if protected else _nothing)
            if not protected:
                self._cancel_main()
            return
        if main is not None and main.done():
            # The program has ended and the loop is shutting down: interrupting the clean-up
            # (cancelling the leftovers, closing their transports) would leave sockets open and
            # fibers unwound. Owe the interrupt -- unless Ctrl-C keeps coming (a clean-up that
            # hangs): the third one during the shutdown is raised where it lands.
            self.shutdown_interrupts += 1
            if self.shutdown_interrupts < 3:
                self.owed = True
                return
            raise KeyboardInterrupt()
        if not protected:
            raise KeyboardInterrupt()
        # In the plumbing, and Ctrl-C again: the interrupt is owed -- the program is cancelled
        # (again, from a callback) and gb.run raises KeyboardInterrupt once it has cleaned up.
        # (Raising it from a loop callback instead, as a plain asyncio program would, can leave
        # a stop request behind that cuts the loop's shutdown short, on uvloop in particular.)
        self.owed = True
        if running and self.loop is not None and not self.deferred:
            self.deferred = True
            self.loop.call_soon_threadsafe(self._cancel_main)

    def _cancel_main(self) -> None:
        self.deferred = False
        main = self.main
        if main is None or not main.cancel():
            # The program ended before the deferred cancellation reached it: the interrupt is
            # owed, not dropped (asyncio.Runner's Task.cancel() would have reached it in time).
            self.owed = True


def _nothing() -> None:
    pass

