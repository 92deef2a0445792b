"""The core bridge: green fibers hosted by asyncio Tasks, and the two crossing points.

Theory of operation
===================

Roles of the greenlets
----------------------
* The **loop greenlet** is whichever greenlet called ``loop.run_forever`` (for ``gb.run`` and
  ``asyncio.run`` that is the thread's main greenlet). Every Task step, every loop callback runs
  in it.
* A **fiber greenlet** (class ``_Fiber``) runs direct-style functions, one at a time. The driver
  of a ``spawn_green`` call takes one on its first step -- from this thread's pool of idle fibers,
  or a new one -- and makes the driver's greenlet its ``parent``: the loop greenlet when the
  call is a Task's own coroutine, an outer fiber's greenlet when green code awaits, inline, a
  coroutine that itself awaits ``spawn_green(...)``. When the function has returned or raised,
  the fiber reports ``_FINISHED`` to its driver and waits in the pool for its next call.

The driver
----------
``spawn_green(fn, ...)`` is an ``async def`` whose body awaits ``_drive(call)``, a generator (a
``types.coroutine``). The Task steps it natively: the driver switches into the fiber; when the
fiber suspends, the driver gets back what the fiber wants its Task to wait on and yields that to
the Task. What the Task throws in (cancellation, an awaited future's error) is thrown into the
fiber. When the fiber reports ``_FINISHED`` the driver returns the result, or raises the
exception, so the awaiter sees it with the user's own frames on the traceback.

With the C accelerator, ``_drive`` is ``_speedups.drive``: the same steps in an object of 96
bytes that the coroutine steps through ``am_send``, where a suspended generator costs about 600
(itself and the frame object greenlet makes for it when it switches away). A fiber forked on a
``Switch`` goes further: its Task is made of the driver itself, with no coroutine around it
(``Switch._fork``). The C driver behaves as the generator does to whoever steps it (send, throw,
close, collection while suspended: ``tests/test_driver.py`` runs both); a traceback has no
``_drive`` frame, and no line of it can be traced or interrupted.

Inline stepping
---------------
``await_from_green(aw)`` does not hand ``aw`` to the driver. It steps ``aw.__await__()``
*in the fiber's greenlet*, exactly as the interpreter does for ``await``. Only when the iterator
yields (a Future with ``_asyncio_future_blocking`` set, or ``None`` for a bare yield) does the
fiber switch to its parent, handing over the yielded value unchanged; the driver yields it to
the Task, and whatever the Task sends or throws back is passed down into the iterator.
Consequences, each relied on elsewhere:

1. An awaitable that completes without suspending costs no greenlet switch.
2. The awaited coroutine runs inside the hosting Task's step: ``asyncio.current_task()``,
   ``asyncio.timeout()``, TaskGroups and cancel scopes behave as under a native ``await``.
3. Cancelling the Task throws ``CancelledError`` into the awaited coroutine first (through the
   Future it waits on), then out of ``await_from_green`` at the green call site.
4. Nesting works at any depth: a coroutine stepped inline may itself ``await spawn_green(...)``
   (that inner driver simply runs in the outer fiber's greenlet), or call green code that
   ``await_from_green``s again (it runs in the same fiber).

The stepping itself has two implementations with one behaviour: ``_speedups.c`` (optional, used
when it was compiled; it uses ``PyIter_Send``, which reports a return value without raising) for
the common case, and the pure-Python ``_Stepper`` (a long-lived generator that delegates with
``yield from``, so finishing an await costs no ``StopIteration`` either) for everything else.

Direct resumption
-----------------
greenbridge's own waits (``Waiter``: flows, streams, promises, locks) park the fiber on a Future,
``_park``, that its Task waits on. A waker running in the loop greenlet (a protocol callback)
switches straight into the parked fiber instead of completing that Future: no Task wake-up, no
loop iteration. The fiber then runs outside its Task's step (``_direct``) -- though with its
Task made current, so ``asyncio.current_task()`` in green code is always the hosting Task --
until it parks again (back to the waker) or needs its Task's step (to await asyncio code, or to
finish): then it completes ``_park`` and its driver resumes it inside the Task. That plumbing --
parking, resuming, delivering and withdrawing cancellation, KeyboardInterrupt protection -- lives
in ``_control``, whose memo states its rules and where each is enforced.

Greenlet copies the part of the waker's C stack below the fiber's base on every
switch, so a switch from deep inside a transport callback costs more than from a shallow one:
the connection protocol (``_protocol.py``) therefore wakes its readers from one ``call_soon``
callback per loop turn rather than from ``buffer_updated`` itself (measured 10-20 % more round
trips).

Invariants
----------
* A fiber greenlet is switched into only by its driver, or -- while parked -- by a waker running
  in its parent greenlet; it switches out only to its parent (whichever of the two resumed it).
* A value the fiber hands its driver is a raw yield of the awaited iterator (``None`` or a Future
  whose ``_asyncio_future_blocking`` is true), ``_FINISHED``, or -- the foreign convention, see
  below -- an awaitable the driver must await to completion and answer with its result.
* The fiber shares the hosting Task's ``contextvars.Context`` object (``gr_context``), so a
  ``ContextVar.set`` in green code is seen by the coroutines it awaits and vice versa. An idle
  fiber holds no context, no call and no result.

The foreign convention
----------------------
SQLAlchemy's ``await_`` and awaitlet check ``__sqlalchemy_greenlet_provider__`` on the current
greenlet and call ``greenlet.getcurrent().parent.switch(awaitable)``, expecting the awaitable's
result (or exception) back. ``_Fiber`` carries that attribute and the driver recognises such a
hand-over (anything that is neither a raw yield nor ``_FINISHED``), awaits the awaitable itself
inside the Task, and switches the outcome back in. Conversely ``await_from_green`` works inside
any greenlet carrying the attribute (e.g. inside SQLAlchemy's ``greenlet_spawn``).

Rejected designs (figures: benchmarks/bench_crossing.py, median ns, CPython 3.11, asyncio loop)
-----------------------------------------------------------------------------------------------
* Handing every awaitable to the driver to ``await`` (SQLAlchemy's design): two greenlet switches
  even for awaitables that never suspend (about 660 ns where inline stepping costs 80 with the
  accelerator, 225 without), and an awaited coroutine cannot call back into green code.
* A new greenlet per call: its first switch allocates a fresh interpreter data stack, about
  7,500 ns of a spawn; a pooled fiber costs a switch (spawning: about 1,300 ns in all).
* A hand-written coroutine object in Python as the driver (``send``/``throw`` methods): a
  Python-level call per Task step and a ``StopIteration`` per spawn; the generator driver
  measured 3 % faster on a suspension and 8 % faster on a spawn. In C the same object is the
  faster and lighter one (a spawn 18 % fewer instructions than the generator's): it is the
  accelerator's driver.
* Stepping with ``iterator.send`` from Python: every finished await raises ``StopIteration``
  (about 30 ns more than the ``_Stepper``; the C accelerator avoids both).
* One Task per ``spawn_green`` call: ``await spawn_green(fn)`` instead runs the fiber inside the
  awaiting Task, so awaiting it costs no Task and no loop iteration, and ``current_task()`` in
  green code is the Task that awaited it.
* Resuming fibers through their Task only: a Waiter woken from a loop callback costs about
  4,200 ns a round (future, Task wake-up, loop iteration); direct resumption about 2,500.
* A fiber's state in the greenlet's instance dictionary: ``_Fiber.__slots__`` cut a spawn by
  about 2,000 instructions of 17,700 (``benchmarks/bench_instructions.py``, CPython 3.11);
  ``asyncio.current_task()`` (Python code on 3.11: about 1,500 instructions) is read from
  asyncio's dict instead (``_control._task_of``); and the pool's guard is checked at each spawn
  against the loop the driver already looked up, not at each return to an empty pool.
* Making each new fiber through ``_Fiber.__init__`` when the C driver is used: a Python frame
  calling greenlet's ``__init__`` through ``super()`` and storing seven slots, for every fiber
  that does not come from the pool (all but 128 of 100,000 forked at once). The C driver sets the
  same slots itself (``_speedups.c``, "Fibers' bookkeeping"); with the C thread check of a wake
  from another fiber, and ``Switch.fork``'s, ``_fiber_main``'s and ``ParkingLot.park``'s helper
  calls inlined, a forked fiber that waits on an Event costs 89,438 instructions instead of
  96,175 (``bench_instructions.py --ops fork``, N = 1000 and 4000, CPython 3.11, asyncio loop).
* CPython's own allocation of each new fiber's interpreter data stack (a 16 KiB chunk, one mmap
  when the greenlet starts and one munmap when it dies): with 100,000 fibers forked at once a
  third of the time went to the kernel (1.8-2.2 s of system time in about 7 s). The accelerator
  serves those chunks from slabs instead (``_speedups.c``, "Fibers' bookkeeping"): system time
  0.7-0.9 s, about 45 us a fiber where it was about 68 (wall time, same run as above), and the
  same resident memory per parked fiber (7,291 B, ``mem_breakdown.py --sizes 10000``). The
  instruction counts above do not see it: they count user space only.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import functools
import inspect
import signal
import sys
import threading
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from typing import Any, ParamSpec, TypeVar, cast

from greenlet import GreenletExit, getcurrent, greenlet

from ._accelerator import speedups
from ._control import (
    _UNPROTECTED_CODES,
    _Fiber,
    _finish_in_task,
    _return_to_task,
    _running_task,
    _SigintHandler,
    _task_of,
    _thread_root,
)
from ._errors import NoGreenContext

_get_running_loop = asyncio._get_running_loop

__all__ = (
    "as_async",
    "as_green",
    "await_from_green",
    "in_green",
    "run",
    "spawn_green",
)


P = ParamSpec("P")
T = TypeVar("T")

_CoroutineType = types.CoroutineType


# What a fiber hands its driver when the function it ran has returned or raised; the outcome is
# then in the fiber's ``_outcome``: (_RETURNED, result) or (_RAISED, exception).
_FINISHED: Any = object()
_RETURNED: Any = object()
_RAISED: Any = object()

# A fiber that finished its function waits here for the next one instead of dying. A new greenlet
# costs a fresh interpreter data stack on its first switch (about 7 us, most of a spawn); a pooled
# one costs a switch. Per thread, since greenlets cannot cross threads. Bounded so that a burst of
# spawns does not pin memory; ``run`` empties it on exit so that nothing outlives the loop.
_POOL_MAX = 128
_local = threading.local()


class _Pool(list[_Fiber]):
    """This thread's idle fibers. ``loop`` is the loop whose shutdown will empty the pool (see
    ``_guard_pool``), ``guard`` the async generator that does it: both kept on the pool itself, so
    that the check on every spawn costs one attribute read. The guard holds that loop anyway
    (through the finalizer hook the loop gave it), until the loop's ``shutdown_asyncgens()``
    closes it or another loop's guard replaces it."""

    __slots__ = ("guard", "loop")

    def __init__(self) -> None:
        super().__init__()
        self.guard: AsyncGenerator[None, None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None


def _idle_fibers() -> _Pool:
    try:
        return _local.idle  # type: ignore[no-any-return]
    except AttributeError:
        idle = _local.idle = _Pool()
        return idle


async def _pool_guard() -> AsyncGenerator[None, None]:
    """An async generator whose only job is to be closed by ``loop.shutdown_asyncgens()``.

    Idle fibers must not outlive the loop they served: a thread that ends with fibers in its pool
    leaks them for good (a greenlet cannot be killed from another thread). ``asyncio.run``,
    ``asyncio.Runner`` and ``gb.run`` all call ``shutdown_asyncgens()`` before closing the loop,
    on asyncio's loop and on uvloop alike, so a guard registered with the running loop (through
    its first-iteration hook) empties the pool then, for the price of one generator per loop.
    """
    try:
        yield
    finally:
        _drain_pool()
        # Done: drop the guard, whose first-iteration hook left it holding the loop.
        idle = _idle_fibers()
        idle.guard = idle.loop = None


def _guard_pool(idle: _Pool, loop: asyncio.AbstractEventLoop | None) -> None:
    """Make ``loop``, the running loop, empty this thread's pool when it shuts down; called by
    ``_drive`` when ``idle.loop`` is another loop (or none). The fiber a spawn takes goes back to
    the pool under the loop that spawned it, so a pool guarded at every spawn is guarded whenever
    it holds a fiber. A guard of an earlier loop that was closed without ``shutdown_asyncgens()``
    is closed first, which lets that loop's idle fibers die."""
    if loop is None:  # a driver stepped by hand, outside a running loop: nothing to guard with
        return
    old = idle.guard
    if old is not None:  # a guard of a loop that was closed without shutdown_asyncgens()
        idle.guard = None
        with contextlib.suppress(StopIteration):
            old.aclose().send(None)
    guard = _pool_guard()
    with contextlib.suppress(StopIteration):
        guard.asend(None).send(None)  # first iteration: the loop's hook now tracks the guard
    idle.guard, idle.loop = guard, loop


def _fiber_main() -> Any:
    """The body of every fiber greenlet: run one call, report, wait in the pool for the next.

    Started with no arguments, its first call waiting in ``_call``: the arguments a greenlet is
    started with stay referenced (by greenlet) until its run function returns, so a pooled fiber
    would keep its first call's function and arguments alive. Later calls come as the values of
    its switches."""
    fiber: _Fiber = getcurrent()  # type: ignore[assignment]  # (no typing.cast: a call per fiber)
    fn, args, kwargs = fiber._call  # type: ignore[misc]
    fiber._call = None
    try:
        idle: _Pool = _local.idle  # what _idle_fibers() returns, without its call: the driver made it
    except AttributeError:
        idle = _idle_fibers()
    while True:
        try:
            # Calls of a fixed arity, not ``fn(*args, **kwargs)``: the interpreter runs a Python
            # function called so in the caller's own C frame, where a call with ``*`` or ``**``
            # nests another C frame of the interpreter on the fiber's stack -- which greenlet
            # keeps a copy of for every suspended fiber (about 370 B each on CPython 3.11).
            if kwargs:
                fiber._outcome = (_RETURNED, fn(*args, **kwargs))
            elif not args:
                fiber._outcome = (_RETURNED, fn())
            elif len(args) == 1:
                fiber._outcome = (_RETURNED, fn(args[0]))
            elif len(args) == 4:  # Switch._run_child
                fiber._outcome = (_RETURNED, fn(args[0], args[1], args[2], args[3]))
            else:
                fiber._outcome = (_RETURNED, fn(*args))
        except GreenletExit:
            raise  # the greenlet is being killed (collected while suspended): let it die
        except BaseException as exc:
            fiber._outcome = (_RAISED, exc)
        fn = args = kwargs = None  # an idle fiber keeps nothing alive
        if fiber._direct:
            _finish_in_task(fiber)  # the driver, not a waker, must receive the outcome
        fiber._park = fiber._task = None
        if len(idle) >= _POOL_MAX:
            return _FINISHED
        idle.append(fiber)
        fn, args, kwargs = fiber.parent.switch(_FINISHED)  # type: ignore[union-attr]


# What a stepper yields when the awaitable it was given has finished; the outcome is on it.
_STEPPED: Any = object()


class _Stepper:
    """Steps awaitables for ``await_from_green`` with ``yield from``, i.e. in C.

    Driving a coroutine from Python with ``send`` ends in a ``StopIteration`` for every
    awaitable; a long-lived generator that delegates with ``yield from`` lets the interpreter
    take the return value without raising, and reports it by yielding ``_STEPPED``. Each fiber
    keeps one (``_Fiber._stepper``); an await nested inside another one in the same fiber (an
    awaited coroutine calling green code that awaits) takes a fresh one while the first is busy.
    """

    __slots__ = ("error", "result", "step")

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.step = self._steps()
        self.step.send(None)

    @types.coroutine
    def _steps(self) -> Generator[Any, Any, None]:
        awaitable = yield
        while True:
            try:
                if type(awaitable) is _CoroutineType:
                    self.result = yield from awaitable  # type: ignore[misc]
                else:
                    self.result = yield from _await_iter(awaitable)
            except BaseException as exc:
                self.error = exc
            awaitable = None
            awaitable = yield _STEPPED


# ``greenlet.switch`` unbound: the driver calls it with the fiber rather than keeping the bound
# ``fiber.switch`` (a 72-byte object per suspended fiber). And every local of ``_drive`` costs
# 16 B per suspended fiber, 8 in the generator and 8 in the frame object greenlet makes for it
# when it switches into the fiber: ``driver`` is the greenlet stepping the driver, at each step.
_switch = greenlet.switch


@types.coroutine
def _drive(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Generator[Any, Any, Any]:
    """The driver: a generator the hosting Task steps (through ``spawn_green``'s coroutine).

    Takes a fiber, switches into it; passes on to the Task what the fiber yields (raw yields),
    throws into the fiber what the Task throws in; awaits, itself, awaitables handed over by the
    foreign convention; returns the function's result or raises its exception.
    """
    if not callable(fn):
        raise TypeError(f"spawn_green() needs a callable, got {type(fn).__name__!r}")
    driver = getcurrent()
    loop = _get_running_loop()
    idle = _idle_fibers()
    if idle.loop is not loop:
        _guard_pool(idle, loop)
    if idle:
        fiber = idle.pop()
        fiber.parent = driver
    else:
        fiber = _Fiber(_fiber_main, driver)
        fiber._call = (fn, args, kwargs)  # a new fiber starts with no arguments: see _fiber_main
    fiber.gr_context = driver.gr_context
    # The Task stepping the driver: the fiber's own (none when stepped by hand, with no loop).
    fiber._task = None if loop is None else _task_of(loop)
    out = _switch(fiber, fn, args, kwargs) if fiber._call is None else _switch(fiber)
    del fn, args, kwargs
    while True:
        if out is _FINISHED:
            fiber.gr_context = None  # an idle fiber must not keep the Task's context alive
            tag, outcome = fiber._outcome  # type: ignore[misc]
            fiber._outcome = None
            if tag is _RAISED:
                # Drop the _fiber_main frame: the user's frames come right after the driver's.
                out = outcome.__traceback__
                raise outcome.with_traceback(out.tb_next if out is not None else None)
            return outcome
        if out is None or getattr(out, "_asyncio_future_blocking", False):
            # Each resumption below re-parents the fiber to whoever steps the Task now (rule 2 of
            # _control): a Task's steps normally all run in the loop greenlet, but under
            # asyncio.eager_task_factory its first one ran inside whatever created it -- maybe
            # another fiber, which then became the parent. Inline: it runs on every suspension.
            try:
                value = yield out
            except BaseException as exc:  # cancellation & co.: into the fiber
                if fiber.parent is not (driver := getcurrent()):
                    fiber.parent = driver
                out = fiber.throw(exc)
            else:
                if fiber.parent is not (driver := getcurrent()):
                    fiber.parent = driver
                if fiber._handover is None:
                    out = _switch(fiber, value)
                else:
                    out, fiber._handover = fiber._handover, None
        else:
            # The foreign convention: an awaitable to await on the fiber's behalf.
            try:
                value = yield from _await_iter(out)
            except BaseException as exc:  # every outcome goes back to the fiber
                out = fiber.throw(exc)
            else:
                out = _switch(fiber, value)


def _await_iter(awaitable: Any) -> Any:
    """The iterator ``await awaitable`` would step, or TypeError naming what was passed."""
    if type(awaitable) is _CoroutineType:
        return awaitable
    try:
        method = type(awaitable).__await__
    except AttributeError:
        if inspect.isgenerator(awaitable) and awaitable.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE:
            return awaitable
        raise TypeError(
            f"await_from_green() needs an awaitable (a coroutine, Future, Task or an object with "
            f"__await__), got {type(awaitable).__name__!r}; if you meant to call a coroutine "
            f"function, call it: await_from_green(fn(...))"
        ) from None
    return method(awaitable)


async def spawn_green(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` in a new green fiber; called from asyncio code.

    A coroutine function: ``await`` the coroutine, or pass it to ``asyncio.create_task``,
    ``gather``, ``TaskGroup.create_task``, ``wait_for``. The fiber runs inside the Task that
    awaits the coroutine (``asyncio.current_task()`` in ``fn`` is that Task) and shares its
    contextvars. Nothing runs until the coroutine is first stepped.

    The result of ``fn`` is the coroutine's result; an exception ``fn`` raises (any
    ``BaseException``) propagates to the awaiter with ``fn``'s frames on its traceback.
    Cancelling the awaiting Task cancels what ``fn`` is waiting on (see ``await_from_green``).

    Raises ``TypeError`` when ``fn`` is not callable (on the first step, like any coroutine).
    """
    return await _drive(fn, args, kwargs)  # type: ignore[no-any-return]


def _bad_yield(out: Any) -> RuntimeError:
    """The error a Task throws into a coroutine that yielded ``out`` (neither ``None`` nor a
    blocking Future): the same messages as ``asyncio.Task``, so that a buggy awaitable fails in
    green code exactly as under a native ``await``."""
    task = asyncio.current_task()
    if getattr(out, "_asyncio_future_blocking", None) is not None:
        return RuntimeError(f"yield was used instead of yield from in task {task!r} with {out!r}")
    if inspect.isgenerator(out):
        return RuntimeError(
            f"yield was used instead of yield from for generator in task {task!r} with {out!r}"
        )
    return RuntimeError(f"Task got bad yield: {out!r}")


def await_from_green(awaitable: Awaitable[T]) -> T:
    """Wait, from green code, for an asyncio awaitable; return its result or raise its exception.

    ``awaitable`` is a coroutine, Future, Task or any object with ``__await__``. It is stepped
    inside the calling fiber, within the fiber's own Task, just as ``await`` would: an awaitable
    that completes without suspending costs no switch; ``asyncio.current_task()`` and contextvars
    are those of the Task hosting the fiber.

    This is a suspension point, hence a cancellation point: when the hosting Task is cancelled,
    ``CancelledError`` is first thrown into the awaited coroutine (which may clean up) and then
    raised here. Awaiting an asyncio Task and being cancelled cancels that Task (asyncio's rule).

    Raises ``NoGreenContext`` (a ``RuntimeError``) when called outside a green fiber -- from a
    coroutine, a loop callback, another thread, or after the loop finished; a coroutine passed in
    is then closed, so no "never awaited" warning follows. Raises ``TypeError`` for an object that
    is not awaitable.
    """
    current = getcurrent()
    if type(current) is not _Fiber:
        return _await_outside_fiber(current, awaitable)
    if current._direct:
        try:
            _return_to_task(current)
        except BaseException:
            # Cancelled on the way back to the Task: the awaitable is never stepped; close it,
            # as the driver's Task would close a coroutine cancelled before its first step.
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise
    stepper = current._stepper
    if stepper is None:  # first await in this fiber, or an await nested inside another
        stepper = _Stepper()
    else:
        current._stepper = None
    step = stepper.step
    out = step.send(awaitable)
    if out is not _STEPPED:
        checked = False  # the first suspension is allowed (``_check_suspension``)
        while True:
            if out is not None and not getattr(out, "_asyncio_future_blocking", False):
                # A buggy awaitable: fail it as a Task would, not as a foreign hand-over.
                out = step.throw(_bad_yield(out))
            elif not checked:
                try:
                    _check_suspension(current)
                except NoGreenContext as exc:
                    out = step.throw(exc)
                else:
                    checked = True
                    continue
            else:
                # The parent is looked up at every suspension, never kept: under an eager task
                # factory the fiber's first step ran in its creator, and ``_drive`` re-parents it
                # to the loop greenlet before the next one.
                try:
                    value = current.parent.switch(out)  # type: ignore[union-attr]
                except BaseException as exc:
                    out = step.throw(exc)
                else:
                    out = step.send(value)
            if out is _STEPPED:
                break
    current._stepper = stepper
    error = stepper.error
    if error is not None:
        stepper.error = None
        # Drop the stepper's own frame: the awaited coroutine's frames follow this one.
        tb = error.__traceback__
        raise error.with_traceback(tb.tb_next if tb is not None else None)
    result = stepper.result
    stepper.result = None
    return cast(T, result)


def _check_suspension(fiber: _Fiber) -> None:
    """Raise ``NoGreenContext`` when ``fiber`` is running a step of another Task than its own.

    That happens under an eager task factory: a Task that green code creates (``create_task``,
    a ``TaskGroup``) takes its first step at once, on the fiber's stack; its coroutine is asyncio
    code and must ``await``, since suspending the fiber would suspend the creator instead. Called
    when an awaitable stepped by ``await_from_green`` is about to suspend (an awaitable that is
    ready costs nothing more). The C accelerator makes the same test itself and calls this
    function only to raise.
    """
    if _running_task() is not fiber._task:
        raise NoGreenContext(
            "await_from_green() was called from a coroutine running in a Task of its own that was "
            "started inside green code (an eager task factory runs a new Task's first step at "
            "once, in its creator): in a coroutine use 'await'; to run direct-style code from it "
            "use 'await gb.spawn_green(fn, ...)'"
        )


# The optional C accelerator (``_speedups.c``, see ``_accelerator``) takes over the common case
# of await_from_green and calls the Python implementation above for every other one.
_await_from_green_py = await_from_green
_drive_py = _drive
_C_DRIVER: Any = None  # the type of the C driver's objects, when it is used
SPEEDUPS = False
if (_speedups := speedups()) is not None:
    await_from_green = _speedups.init(
        _Fiber,
        getcurrent,
        _await_from_green_py,
        _check_suspension,
        f"await_from_green(awaitable, /)\n--\n\n{_await_from_green_py.__doc__}",
        _bad_yield,
        _get_running_loop,
        _task_of,
    )
    # The driver too: an object of 96 bytes in place of a generator and its frame (about 600 B
    # per suspended fiber), stepped by the coroutine through ``am_send``. See _speedups.c.
    _drive = _speedups.init_driver(
        _Fiber,
        getcurrent,
        _FINISHED,
        _RAISED,
        _fiber_main,
        _local,
        _idle_fibers,
        _guard_pool,
        _await_iter,
        _get_running_loop,
        _task_of,
    )
    _C_DRIVER = _speedups.Driver
    # A coroutine to asyncio (asyncio.iscoroutine), which a Task is made of: Switch._fork makes
    # a forked fiber's Task of the driver itself.
    collections.abc.Coroutine.register(_C_DRIVER)
    SPEEDUPS = True


def _await_outside_fiber(current: greenlet, awaitable: Awaitable[T]) -> T:
    if getattr(current, "__sqlalchemy_greenlet_provider__", False) and current.parent is not None:
        # Inside another library's green context (e.g. SQLAlchemy's greenlet_spawn): use the
        # convention it implements.
        return cast(T, current.parent.switch(awaitable))
    if inspect.iscoroutine(awaitable):
        awaitable.close()
    raise NoGreenContext(_no_green_message("await_from_green()"))


def _no_green_message(what: str) -> str:
    current: greenlet | None = getcurrent()
    while current is not None and type(current) is not _Fiber:
        current = current.parent
    if current is not None:
        return (
            f"{what} was called outside a green fiber, in a plain greenlet started inside one. "
            f"Only the fiber itself can wait: call it from the fiber's own code, or run this "
            f"code in a fiber of its own (sw.fork(fn) on a gb.Switch, or 'await "
            f"gb.spawn_green(fn)' from asyncio code)."
        )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if _in_loop_worker_thread():
            return (
                f"{what} was called outside a green fiber, in a worker thread of a running event "
                f"loop (FastAPI and Starlette run plain 'def' endpoints and dependencies in such "
                f"threads, loop.run_in_executor too). Green code runs on the loop's thread: "
                f"decorate the function with @gb.as_async so that the framework awaits it in a "
                f"fiber, or from this thread call anyio.from_thread.run(gb.spawn_green, fn) or "
                f"asyncio.run_coroutine_threadsafe(gb.spawn_green(fn), loop).result()."
            )
        return (
            f"{what} was called outside a green fiber, and no event loop is running in this "
            f"thread. Start green code with gb.run(fn) or 'await gb.spawn_green(fn)'; to reach a "
            f"loop that runs in another thread use asyncio.run_coroutine_threadsafe()."
        )
    return (
        f"{what} was called outside a green fiber, from asyncio code (a coroutine or a loop "
        f"callback). In a coroutine use 'await' instead; to run direct-style code from asyncio "
        f"use 'await gb.spawn_green(fn, ...)'."
    )


def _in_loop_worker_thread() -> bool:
    """A thread that a running loop hands work to: anyio's workers (Starlette, FastAPI), or an
    executor's (asyncio's and uvloop's default executors name theirs ``asyncio_N``, ``uvloop_N``;
    other executors ``ThreadPoolExecutor-N_M``)."""
    thread = threading.current_thread()
    if thread.name.startswith(("asyncio_", "uvloop_", "AnyIO worker thread", "ThreadPoolExecutor-")):
        return True
    anyio_loop = sys.modules.get("anyio._core._eventloop")
    threadlocals = getattr(anyio_loop, "threadlocals", None)
    return getattr(threadlocals, "current_token", None) is not None


def in_green() -> bool:
    """True when the caller runs in a green fiber, i.e. ``await_from_green`` may be called."""
    current = getcurrent()
    return type(current) is _Fiber or (
        bool(getattr(current, "__sqlalchemy_greenlet_provider__", False))
        and current.parent is not None
    )


# The backends ``gb.run`` and the pytest plugin know; "asyncio+eager" is asyncio's loop with
# ``asyncio.eager_task_factory`` (Python 3.12+), where a new Task's first step runs inside the
# code that creates it -- possibly a fiber.
BACKENDS = ("asyncio", "asyncio+eager", "uvloop")


def _eager_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined, unused-ignore]
    return loop


def _loop_factory(backend: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if backend == "asyncio":
        return None
    if backend == "asyncio+eager":
        if not hasattr(asyncio, "eager_task_factory"):
            raise RuntimeError(
                "backend='asyncio+eager' needs Python 3.12 or later (asyncio.eager_task_factory)"
            )
        return _eager_loop
    if backend == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise RuntimeError(
                "backend='uvloop' needs the uvloop package: pip install 'greenbridge[uvloop]'"
            ) from exc
        return cast(Callable[[], asyncio.AbstractEventLoop], uvloop.new_event_loop)
    raise ValueError(f"backend must be 'asyncio', 'asyncio+eager' or 'uvloop', got {backend!r}")


def run(
    fn: Callable[..., T],
    /,
    *args: Any,
    backend: str = "asyncio",
    debug: bool = False,
    **kwargs: Any,
) -> T:
    """Run ``fn(*args, **kwargs)`` in a green fiber on a new event loop; return its result.

    The entry point of a direct-style program, like ``asyncio.run``: a new loop (``backend``
    ``"asyncio"``, ``"asyncio+eager"`` -- asyncio's loop with ``asyncio.eager_task_factory``,
    Python 3.12+ -- or ``"uvloop"``), ``fn`` run in a fiber hosted by the main Task; on exit the
    Tasks left over are cancelled and awaited, async generators and the default executor are
    shut down, and the loop is closed. ``debug=True`` turns on asyncio's debug mode.
    An exception ``fn`` raises (``KeyboardInterrupt`` and ``SystemExit`` included) is re-raised
    after that clean-up. A ``KeyboardInterrupt`` or ``SystemExit`` that a leftover Task ends with
    while it is cancelled (``gb.protect`` re-raising its function's, for one) does not cut that
    clean-up short, as it would under ``asyncio.run``: it is raised once every leftover has ended.

    Raises ``RuntimeError`` when an event loop is already running in this thread (from green code
    call ``fn`` directly; from a coroutine ``await gb.spawn_green(fn)``), ``ValueError`` for an
    unknown backend, ``RuntimeError`` when uvloop is asked for and not installed or eager tasks on
    Python 3.11.
    """
    if asyncio._get_running_loop() is not None:
        raise RuntimeError(
            "gb.run() cannot be called while an event loop is running in this thread: from green "
            "code call the function directly; from a coroutine use 'await gb.spawn_green(fn)'"
        )
    factory = _loop_factory(backend)
    if not callable(fn):
        raise TypeError(f"gb.run() needs a callable, got {type(fn).__name__!r}")
    handler = None
    try:
        handler = _install_sigint_handler()
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            if handler is not None:
                handler.loop = runner.get_loop()
            result = _run_main(runner, spawn_green(fn, *args, **kwargs), handler)
    except BaseException as exc:
        if handler is not None and handler.owed and not isinstance(exc, KeyboardInterrupt):
            # A Ctrl-C owed by the plumbing: asyncio.run would have raised it where it landed,
            # so it wins over the error the program ended with (kept as its context).
            raise KeyboardInterrupt()  # noqa: B904
        raise
    finally:
        # Whichever handler of ours is in place (an interrupt may have come between installing
        # it and knowing it), Python's default comes back.
        if threading.current_thread() is threading.main_thread() and isinstance(
            signal.getsignal(signal.SIGINT), _SigintHandler
        ):
            signal.signal(signal.SIGINT, signal.default_int_handler)
        main = handler.main if handler is not None else None
        if main is not None and main.done() and not main.cancelled():
            # A KeyboardInterrupt escapes Task steps, and the loop: one that ended the main Task
            # while the Runner closed (gb.protect re-raises its function's) was never retrieved
            # from it, and its Task would log so. gb.run raises it: consume it, as
            # run_until_complete does for the Tasks it creates.
            main.exception()
        _drain_pool()
    if handler is not None and handler.owed:
        raise KeyboardInterrupt()  # it arrived in the plumbing during the shutdown
    return result


def _cancel_leftovers(loop: asyncio.AbstractEventLoop, handler: _SigintHandler | None) -> None:
    """Cancel the Tasks left over and run them to their end: ``asyncio.Runner.close``'s first
    step (``asyncio.runners._cancel_all_tasks``), which then finds nothing left, carried on past
    a ``KeyboardInterrupt`` or ``SystemExit`` that one of those Tasks ends with.

    asyncio re-raises such an exception out of the loop from the step of the Task it ends, and
    so cuts the Runner's own sweep short: the other leftovers are never resumed again, and their
    fibers never unwind. That happens whenever one leftover ends with an interrupt another one
    awaits -- ``gb.protect`` nested in ``gb.protect``, interrupted in the innermost function: the
    interrupt leaves the loop from the innermost Task (ending the program), again from the next
    one, whose ``protect`` re-raises it while the sweep runs, and the outer ``protect`` is never
    resumed with it. Here the sweep goes on (each Task is cancelled once, as by the Runner) and
    the first such exception is raised once every leftover has ended, as it would have been
    raised out of the Runner's sweep. An interrupt that no Task ended with (raised in the loop's
    own code), or the third Ctrl-C of a shutdown (see ``_SigintHandler``), still ends it at once.
    """
    to_cancel = asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    escaped: list[BaseException] = []
    pending = to_cancel
    while pending:
        try:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        except (KeyboardInterrupt, SystemExit) as exc:
            ended = any(t.done() and not t.cancelled() and t.exception() is exc for t in to_cancel)
            if not ended or (handler is not None and handler.shutdown_interrupts >= 3):
                raise
            escaped.append(exc)
            pending = {task for task in pending if not task.done()}
            if not pending:
                # The gather may have completed in the loop iteration that the exception ended
                # (uvloop runs the rest of it), its done callback then left a stop request
                # behind that would cut the Runner's next run short: let it be taken here.
                loop.call_soon(loop.stop)
                loop.run_forever()
        else:
            pending = set()
    for task in to_cancel:
        if task.cancelled():
            continue
        error = task.exception()
        if error is not None and not any(error is seen for seen in escaped):  # those propagate
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during asyncio.run() shutdown",
                    "exception": error,
                    "task": task,
                }
            )
    if escaped:
        raise escaped[0]


def _install_sigint_handler() -> _SigintHandler | None:
    """greenbridge's SIGINT handler (``_control._SigintHandler``) in place of asyncio.Runner's,
    where Runner would install its own (the main thread, Python's default handler)."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        return None
    handler = _SigintHandler(None)
    signal.signal(signal.SIGINT, handler)
    return handler


def _run_main(runner: asyncio.Runner, main: Coroutine[Any, Any, T], handler: _SigintHandler | None) -> T:
    """``runner.run(main)``, with the program's Task known to ``handler``, then the leftovers
    cancelled (``_cancel_leftovers``) whatever the program ended with."""
    try:
        if handler is None:
            return runner.run(main)

        async def record_main() -> T:
            handler.main = asyncio.current_task()
            return await main

        try:
            return runner.run(record_main())
        except asyncio.CancelledError:
            if handler.interrupts:
                raise KeyboardInterrupt() from None  # as asyncio.Runner: the program was interrupted
            raise
    finally:
        # Here, not in a try statement of gb.run's: the line event of a ``try`` there, inside the
        # ``with``, falls outside every handler on Python 3.11, so an interrupt delivered on it
        # (by a trace function) would skip the Runner's clean-up and gb.run's altogether.
        _cancel_leftovers(runner.get_loop(), handler)


def as_async(fn: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorator: a direct-style ``def`` becomes an ``async def`` that runs it in a green fiber
    through ``spawn_green``. Signature and metadata are kept (``functools.wraps``)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return await _drive(fn, args, kwargs)  # type: ignore[no-any-return]

    return wrapper


def as_green(afn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Decorator: an ``async def`` becomes a plain ``def`` for green code, awaiting the coroutine
    through ``await_from_green`` (so calling it outside green code raises ``NoGreenContext``)."""

    @functools.wraps(afn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return await_from_green(afn(*args, **kwargs))

    return wrapper


def _live_fibers() -> list[greenlet]:
    """This thread's fibers running a call right now (suspended or not); idle pooled fibers and
    other threads' fibers are not counted."""
    import gc

    idle = {id(fiber) for fiber in _idle_fibers()}
    root = _thread_root(getcurrent())
    return [
        obj
        for obj in gc.get_objects()
        if type(obj) is _Fiber and not obj.dead and id(obj) not in idle and _thread_root(obj) is root
    ]


def _drain_pool() -> None:
    """Let this thread's idle fibers die (each is switched into once, to leave its loop)."""
    idle = _idle_fibers()
    here = getcurrent()
    while idle:
        fiber = idle.pop()
        fiber.parent = here  # it dies back into the caller, whatever it last served
        fiber.throw(GreenletExit)


# Entry points, not plumbing: an interrupt landing there (or in the loop they run, for the sweep of
# the leftovers, as in asyncio.Runner.close) is raised as asyncio.run would raise it.
_UNPROTECTED_CODES.update((run.__code__, _install_sigint_handler.__code__, _cancel_leftovers.__code__))
