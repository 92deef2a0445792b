"""Switches: Eio's structured concurrency for green code.

Theory of operation
===================
A ``Switch`` is entered by a fiber, the *host*; the ``with`` block is its *body*. Each fiber
forked on the switch is an asyncio Task running ``spawn_green(Switch._run_child, ...)``; the
switch records it as a ``_Child``. ``__exit__`` waits until no child is left, runs the release
hooks, then raises what failed.

Rules (each one is a test):

1. The block returns only when every fiber forked on the switch has finished.
2. A failure -- an exception out of the body or out of a non-promise fiber, or ``sw.fail(exc)``
   -- fails the switch: every fiber on it is cancelled, and so is the body (its host Task is
   cancelled while the body runs). The block then raises the failure itself when there is one,
   a ``BaseExceptionGroup`` (an ``ExceptionGroup`` for ``Exception`` s) when there are several.
   A fiber ending in ``CancelledError`` is not a failure, and cancellation never hides one.
3. Daemon fibers are cancelled once the body and every non-daemon fiber have finished.
4. Release hooks run last-in first-out, after every fiber ended, each under ``protect``.
5. A switch whose host Task is cancelled from asyncio cancels all its fibers, waits for them,
   and raises ``CancelledError`` (unless a fiber failed for real: then that failure).
6. A finished switch -- from its release phase on -- refuses new work with
   ``SwitchFinishedError``; ``on_release`` then runs the hook at once before raising.
7. A cancellation pending when the switch is entered is raised at entry (``__enter__``).
8. A fiber forked once the switch has failed or been cancelled, or once its non-daemon work is
   done, never starts (``_Child.doomed``); a child whose Task asyncio cancels before its first
   step is accounted for by a done-callback (``_watch_unstarted``).
9. ``cancel_fibers()`` cancels the fibers running on the switch (not the caller, not the body)
   without failing it; the switch carries on. Each fiber is cancelled by its switch at most once
   (``_Child.cancel_requested``), whichever of these rules asks first.

Scheduling order of ``fork``
----------------------------
``fork`` creates the fiber's Task at once and returns; the fiber starts the next time the
forking fiber suspends, after whatever was already ready to run, and fibers forked in a row start
in the order they were forked (asyncio's ready queue is FIFO, on asyncio and on uvloop alike).
Under an eager task factory the Task's first step runs inside ``fork``; ``_child_main`` (or the
C driver, which is the Task's coroutine with the accelerator) then only reschedules itself (a
bare yield), so the order is the same in every mode.
A fiber then runs until its own next suspension point. Runs are therefore deterministic.

Cancellation bookkeeping
------------------------
The switch cancels its body by ``host.cancel()`` only while the body runs, at most once, and
undoes that with ``host.uncancel()`` on exit; it compares ``host.cancelling()`` with the value
it had on entry to tell its own cancellation from one that came from asyncio. So a switch works
inside a fiber that earlier swallowed a ``CancelledError`` (which leaves the count raised), and
asyncio scopes around a switch (``asyncio.timeout``, ``TaskGroup``) see the count they expect.

Rejected designs
----------------
* Running the first fiber of ``fork`` eagerly (Eio's order): it needs a Task step that is not
  the Task's own, which asyncio cannot give; a custom eager task factory would make the order
  depend on the loop's configuration.
* Done-callbacks on each child Task for the bookkeeping: one more loop callback per fiber and a
  bookkeeping step a loop iteration late; the child's own ``finally`` does it in the same step.
"""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet

from ._cancel import _fiber_task, protect, yield_
from ._control import _cancel_pending, _running_task
from ._core import _C_DRIVER, _drive
from ._errors import SwitchFinishedError
from ._sync import Promise
from ._waiter import Waiter

__all__ = ("Switch",)

T = TypeVar("T")
P = ParamSpec("P")


def _bind(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """``fn`` and positional arguments to call it with later; keyword arguments bound in."""
    return (functools.partial(fn, **kwargs), args) if kwargs else (fn, args)

_NEW, _OPEN, _EXITING, _RELEASING, _FINISHED = range(5)
_STATE_NAMES = ("new", "open", "exiting", "releasing", "finished")

# Diagnostics (``gb.dump_fibers``): the switch each forked fiber runs on, keyed by the fiber's
# greenlet while its function runs; and the host greenlet of every open switch.
_fiber_switch: dict[greenlet, Switch] = {}
_open_switches: dict[Switch, greenlet] = {}


# The keyword arguments of every forked fiber's call: none; only ever read (by ``**``).
_NO_KWARGS: dict[str, Any] = {}


@types.coroutine
def _reschedule() -> Any:
    """A bare yield: the Task steps again at the back of the loop's ready queue."""
    yield


class _Child:
    """One fiber forked on a switch."""

    __slots__ = (
        "cancel_requested",
        "daemon",
        "doomed",
        "forking",
        "promise",
        "started",
        "task",
        "watched",
    )

    # Invariants: started is False until _run_child begins; a child is cancelled through its
    # Task only once started. Before that, doomed (the switch failed, was cancelled, or its
    # non-daemon work is done) makes _run_child skip the function altogether (Eio: "the new
    # fiber doesn't start") and only do the bookkeeping; cancel_requested alone (cancel_fibers,
    # e.g. a loser of fiber.any) makes the fiber cancel itself on start, so that its function
    # runs up to its first suspension point, as Eio's raw forks do. cancel_requested is set at
    # most once: the switch cancels each fiber once (edge-triggered, see _cancel). forking is
    # True only while fork() creates the child's Task (an eager task factory steps it there).
    # watched is True once a done-callback covers a Task cancelled before its first step.

    def __init__(self, daemon: bool, promise: Promise[Any] | None) -> None:
        self.daemon = daemon
        self.promise = promise
        self.started = False
        self.cancel_requested = False
        self.doomed = False
        self.forking = False
        self.watched = False
        self.task: asyncio.Task[None] | None = None


class Switch:
    """A scope that owns fibers: ``with gb.Switch() as sw: sw.fork(fn, *args)``.

    See the module memo for the rules and the scheduling order. The ``with`` statement is a
    suspension point on exit (it waits for the fibers) and may raise the fibers' failures,
    ``CancelledError``, or ``NoGreenContext`` on entry outside green code.
    """

    __slots__ = (
        "_base_cancelling",
        "_children",
        "_errors",
        "_exit_waiter",
        "_failing",
        "_host",
        "_host_cancelled",
        "_loop",
        "_non_daemons",
        "_releases",
        "_state",
    )

    def __init__(self) -> None:
        self._state = _NEW
        self._host: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Invariant: _children holds every forked fiber whose _run_child has not finished;
        # _non_daemons counts the non-daemon ones among them.
        self._children: dict[_Child, None] = {}  # a dict: ordered, so cancellation is in fork order
        self._non_daemons = 0
        # Failures in the order they happened; _failing once any happened (or the host was
        # cancelled from outside): from then on every child is cancelled.
        self._errors: list[BaseException] = []
        self._failing = False
        # True once this switch called host.cancel() (at most once, while the body runs).
        self._host_cancelled = False
        self._base_cancelling = 0
        self._releases: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        # The waiter __exit__ parks on until the last child finishes.
        self._exit_waiter: Waiter | None = None

    @staticmethod
    def run(fn: Callable[[Switch], T]) -> T:
        """Run ``fn(sw)`` with a new switch ``sw``, exactly as ``with Switch() as sw: fn(sw)``,
        and return its result."""
        with Switch() as sw:
            return fn(sw)

    def __repr__(self) -> str:
        return (
            f"<Switch {_STATE_NAMES[self._state]}, {len(self._children)} fiber(s)"
            f"{', failing' if self._failing else ''} at {id(self):#x}>"
        )

    # -- forking -----------------------------------------------------------------------------

    def fork(self, fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Run ``fn(*args, **kwargs)`` in a new fiber on this switch (see the scheduling order above).

        Its exception fails the switch. Never suspends. A fiber forked on a switch that has
        failed or been cancelled, or once its non-daemon work is done, does not start: ``fn``
        never runs (Eio's rule). Raises ``SwitchFinishedError`` from the release hooks on and
        once the switch has finished, ``RuntimeError`` before it is entered, ``TypeError`` at
        once when ``fn`` is not callable.
        """
        # _bind's work inline: one Python call less per fork.
        self._fork(functools.partial(fn, **kwargs) if kwargs else fn, args, False, None)

    def fork_daemon(self, fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Like ``fork``, but the fiber is cancelled once the body and every non-daemon fiber
        have finished (a background service for the others). Its cancellation is not a
        failure; another exception is. Never suspends."""
        self._fork(*_bind(fn, args, kwargs), True, None)

    def fork_promise(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Promise[T]:
        """Like ``fork``, but ``fn``'s result or exception settles the returned promise instead
        of failing the switch (a cancelled fiber rejects it with ``CancelledError``). Never
        suspends."""
        promise: Promise[T] = Promise()
        self._fork(*_bind(fn, args, kwargs), False, promise)
        return promise

    def _fork(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        daemon: bool,
        promise: Promise[Any] | None,
    ) -> None:
        state = self._state
        if state != _OPEN and state != _EXITING:
            self._refuse("fork a fiber on")
        if not callable(fn):
            raise TypeError(f"Switch.fork() needs a callable, got {type(fn).__name__!r}")
        child = _Child(daemon, promise)
        if self._failing or (state == _EXITING and self._non_daemons == 0):
            child.cancel_requested = child.doomed = True  # it will not start (see fork)
        assert self._loop is not None
        # Recorded before its Task exists: an eager task factory steps the Task inside
        # create_task, and _child_main must find the child registered.
        self._children[child] = None
        if not daemon:
            self._non_daemons += 1
        child.forking = True
        try:
            if _C_DRIVER is None:
                coro = self._child_main(child, fn, args)
            else:
                # The C driver is the Task's coroutine itself, and does _child_main's work (given
                # the child, it reschedules a first step taken inside fork): one object of 96 B in
                # place of a coroutine, its frame object and the driver (about 800 B a fiber).
                coro = _drive(Switch._run_child, (self, child, fn, args), _NO_KWARGS, child)  # type: ignore[call-arg]
            child.task = self._loop.create_task(coro)
        except BaseException:
            self._forget(child)
            raise
        finally:
            child.forking = False

    async def _child_main(self, child: _Child, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """The coroutine of a forked fiber's Task."""
        if child.forking:
            # An eager task factory runs this first step inside fork(): start at the back of the
            # ready queue instead, so that the documented fork order holds in every mode.
            await _reschedule()
        # The plain function and a shared empty dict, not a bound method and a dict of its own:
        # the fiber holds what it was called with while it runs (120 B less per fiber).
        await _drive(Switch._run_child, (self, child, fn, args), _NO_KWARGS)

    def _forget(self, child: _Child) -> None:
        del self._children[child]
        if not child.daemon:
            self._non_daemons -= 1

    def _run_child(self, child: _Child, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """The body of every forked fiber: run ``fn``, report its outcome, do the bookkeeping."""
        child.started = True
        if child.doomed:  # the fiber does not start: only the bookkeeping runs
            if child.promise is not None:
                child.promise.reject(asyncio.CancelledError("forked on a switch that was cancelled"))
            self._child_finished(child)
            return
        me = getcurrent()
        _fiber_switch[me] = self
        try:
            if child.cancel_requested:
                assert child.task is not None
                child.task.cancel()  # a race's loser: delivered at fn's first suspension point
            value = fn(*args) if args else fn()  # see _fiber_main: fn() nests no C frame
            if child.promise is not None:
                child.promise.resolve(value)
        except asyncio.CancelledError as exc:
            # A cancelled fiber is not a failure of the switch (as in a TaskGroup).
            if child.promise is not None:
                child.promise.reject(exc)
        except GreenletExit:
            raise  # the fiber's greenlet is being collected: nothing to report to
        except BaseException as exc:
            if child.promise is not None:
                child.promise.reject(exc)
            else:
                self._record_failure(exc)
        finally:
            del _fiber_switch[me]
            self._child_finished(child)

    def _child_finished(self, child: _Child) -> None:
        del self._children[child]  # _forget's work inline: one Python call less per fiber
        if not child.daemon:
            self._non_daemons -= 1
        if self._state == _EXITING:
            if not self._children:
                waiter = self._exit_waiter
                if waiter is not None:
                    waiter.wake()
            elif self._non_daemons == 0:
                self._cancel_daemons()

    # -- failing and cancelling ------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """Fail the switch with ``exc``: record it, cancel every fiber and the body. The block
        raises it on exit (with any other failure). Never suspends; a body calling it is
        cancelled at its next suspension point (``fiber.check()`` delivers it at once).
        Raises ``SwitchFinishedError`` on a finished switch."""
        if self._state not in (_OPEN, _EXITING):
            self._refuse("fail")
        self._record_failure(exc)

    def cancel_fibers(self) -> None:
        """Cancel every fiber running on this switch but the caller, without failing the switch.

        Each one is cancelled once, at its next suspension point (``CancelledError``, which is
        not a failure); one forked but not started yet still starts and is cancelled at its
        first suspension point, so a value it returns without suspending is not lost. The
        calling fiber, when it is one of them, is spared: a fiber that has what the others were
        racing for stops them (``fiber.any`` is built on it). The body is not cancelled and the
        switch carries on: its block exits once the fibers have ended, raising what they raised
        for real, and fibers forked afterwards run as usual. Never suspends. Raises
        ``SwitchFinishedError`` on a finished switch, ``RuntimeError`` before it is entered.
        """
        if self._state not in (_OPEN, _EXITING):
            self._refuse("cancel the fibers of")
        caller = _running_task()
        for child in list(self._children):
            if caller is None or child.task is not caller:
                self._cancel_child(child, False)

    def _record_failure(self, exc: BaseException) -> None:
        self._errors.append(exc)
        self._cancel_all()

    def _cancel_all(self) -> None:
        """Cancel every fiber and, while it runs, the body."""
        self._failing = True
        self._cancel_children()
        if self._state == _OPEN and not self._host_cancelled:
            self._host_cancelled = True
            assert self._host is not None
            self._host.cancel()

    def _cancel_children(self) -> None:
        """Cancel every child; those not started yet never start."""
        for child in list(self._children):
            self._cancel_child(child, True)

    def _cancel_daemons(self) -> None:
        for child in list(self._children):
            if child.daemon:
                self._cancel_child(child, True)

    @staticmethod
    def _cancel_child(child: _Child, doom: bool) -> None:
        if not child.started:
            child.cancel_requested = True
            child.doomed = child.doomed or doom
        elif not child.cancel_requested:
            child.cancel_requested = True
            assert child.task is not None
            child.task.cancel()

    # -- release hooks ---------------------------------------------------------------------------

    def on_release(self, fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Call ``fn(*args, **kwargs)`` when the switch finishes: after every fiber ended, last registered
        first, shielded from cancellation (``protect``). Its exception fails the switch.

        Never suspends. Called once the release phase has begun -- from a release hook, or on a
        finished switch -- ``fn`` is run at once, protected (so the resource is not leaked), and
        then ``SwitchFinishedError`` is raised (Eio's rule). ``fork`` from a release hook raises
        ``SwitchFinishedError`` too: every fiber of the switch has ended by then.
        """
        if self._state == _RELEASING or self._state == _FINISHED:
            try:
                protect(fn, *args, **kwargs)
            finally:
                self._refuse("register a release hook on")
        if self._state == _NEW:
            self._refuse("register a release hook on")
        self._releases.append(_bind(fn, args, kwargs))

    def _refuse(self, what: str) -> None:
        if self._state == _NEW:
            raise RuntimeError(f"cannot {what} a Switch before entering it: use 'with gb.Switch() as sw:'")
        raise SwitchFinishedError(
            f"cannot {what} {self!r}: its block has exited and its fibers have finished; fork on "
            f"a switch that is still open (an enclosing one, or a new 'with gb.Switch()')"
        )

    # -- the block -------------------------------------------------------------------------------

    def __enter__(self) -> Switch:
        """Open the switch in the calling fiber.

        A cancellation already pending for the calling fiber (requested while it ran, e.g. by
        ``task.cancel()`` or an enclosing switch's failure) is raised here, before the body runs:
        entering a switch is then a cancellation point, as in Eio. Otherwise never suspends
        (except once right after a direct resumption). Raises ``NoGreenContext`` outside green
        code, ``RuntimeError`` when the switch was entered before."""
        if self._state != _NEW:
            raise RuntimeError(f"{self!r} was already entered; a Switch is used once")
        host = _fiber_task("gb.Switch()")
        if _cancel_pending(host):
            yield_()  # the Task's next step raises the pending CancelledError here
        self._host = host
        self._loop = host.get_loop()
        self._base_cancelling = host.cancelling()
        self._state = _OPEN
        _open_switches[self] = getcurrent()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        host = self._host
        assert host is not None
        self._state = _EXITING
        try:
            if exc is not None:
                if isinstance(exc, asyncio.CancelledError):
                    self._failing = True  # ours or asyncio's: either way the fibers must stop
                    self._cancel_children()
                else:
                    self._record_failure(exc)
            self._wait_for_children()
            self._state = _RELEASING
            self._run_releases()
            if self._host_cancelled and _cancel_pending(host):
                # Our own host.cancel() (from fail() in the body) was never delivered: take it
                # now, so that no stray cancellation outlives the switch.
                try:
                    yield_()
                except asyncio.CancelledError:
                    pass
        finally:
            self._state = _FINISHED
            del _open_switches[self]
        ours = 1 if self._host_cancelled else 0
        cancelled_from_outside = host.cancelling() - ours > self._base_cancelling
        if self._host_cancelled:
            host.uncancel()
        errors = self._errors
        if errors:
            if len(errors) == 1:
                error = errors[0]
                if error is exc:
                    return  # the body's own exception: let 'with' re-raise it as it is
                _raise_keeping_context(error)
            raise BaseExceptionGroup("several fibers failed on a gb.Switch", errors)
        if cancelled_from_outside and exc is None:
            raise asyncio.CancelledError()  # it arrived while the fibers were finishing
        # Otherwise the body's own outcome stands. It never swallows an exception: the switch
        # cancels its body only when it failed, and then raises the failure instead.

    def _wait_for_children(self) -> None:
        """Park the host until the last child has finished; cancellations from asyncio cancel
        the children (again) and the wait goes on."""
        while self._children:
            if self._non_daemons == 0:
                self._cancel_daemons()
            self._exit_waiter = waiter = Waiter()
            self._watch_unstarted()
            try:
                waiter.wait()
            except asyncio.CancelledError:
                self._failing = True
                self._cancel_children()
            finally:
                self._exit_waiter = None

    def _watch_unstarted(self) -> None:
        """Cover the children whose Task has not taken its first step with a done-callback.

        A Task that asyncio cancels before its first step (a "cancel every task" sweep, a loop
        shutting down) never runs its coroutine, so ``_run_child`` never reports: the callback
        does the bookkeeping instead. Only children still unstarted when the host starts to
        wait pay for it; a started child reports from its own ``finally``.
        """
        for child in self._children:
            if not child.started and not child.watched:
                child.watched = True
                assert child.task is not None
                child.task.add_done_callback(functools.partial(self._unstarted_done, child))

    def _unstarted_done(self, child: _Child, task: asyncio.Task[None]) -> None:
        if not child.started and child in self._children:
            child.started = True
            if child.promise is not None:
                child.promise.reject(asyncio.CancelledError("the fiber was cancelled before it started"))
            self._child_finished(child)

    def _run_releases(self) -> None:
        releases = self._releases
        while releases:
            fn, args = releases.pop()
            try:
                protect(fn, *args)
            except asyncio.CancelledError:
                pass  # held back by protect: counted in host.cancelling(), raised on exit
            except BaseException as exc:
                self._errors.append(exc)


def _raise_keeping_context(error: BaseException) -> None:
    """Raise a fiber's exception from ``__exit__`` without chaining it to the exception the
    body ended with (a ``CancelledError`` the switch itself caused)."""
    context = error.__context__
    try:
        raise error
    finally:
        error.__context__ = context
