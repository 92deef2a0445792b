"""Property-based tests: random programs mixing green fibers and asyncio tasks.

Hypothesis generates program trees. Each node runs either as green code or as a coroutine, and
its parent reaches it through one of the crossings (a plain call, ``spawn_green``,
``await_from_green``, ``as_async`` / ``as_green``, a nested fiber, a Task); nodes nest, run
children concurrently in a ``TaskGroup``, put timeouts (``gb.timeout`` / ``asyncio.timeout``)
around them, cancel them at a chosen point, raise ``Exception`` and ``BaseException`` subclasses,
block forever (only under a deadline), park on a ``Waiter`` that a loop callback wakes, fails or
cancels (the direct-resumption path), and suspend inside ``finally``.

Every run is checked against the invariants of the reliability contract (docs/reliability.md):

1. every node that starts records exactly one outcome, after its ``finally`` ran;
2. that outcome reaches exactly one awaiter, its parent, as the very same object (a Task that
   was cancelled reports a fresh ``CancelledError``, so there only the type is compared);
3. a ``TaskGroup``'s error group holds exactly its failed children's exceptions; a timeout that
   fires turns its child's ``CancelledError`` into ``TimeoutError``;
4. nothing survives the run: no Task, fiber, greenlet or file descriptor; asyncio debug mode
   logs nothing and no warning is emitted.

Programs whose timing is counted in loop iterations (not seconds) are also run a second time
with every node turned into a coroutine, and each node's trace must be identical in both runs:
the crossings are transparent to asyncio's scheduling, to the iteration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from _reliability import after_hops, hypothesis_settings, watch
from hypothesis import example, given
from hypothesis import strategies as st

import greenbridge as gb
from greenbridge._core import _loop_factory
from greenbridge._waiter import Waiter

# -- the program model ---------------------------------------------------------------------------

GREEN, ASYNC = "green", "async"
LEAVES = ("value", "raise", "raise_base", "block", "sleep", "wait", "agen", "thread")
BRANCHES = ("seq", "catch", "timeout", "cancel", "group", "switch")


@dataclass(frozen=True)
class Node:
    """One step of a program. ``arg`` is a count of loop iterations (yields, or hops before a
    timeout fires / a cancel is sent), or -- when ``seconds`` is set -- real time in seconds."""

    kind: str
    side: str
    via: int = 0  # which crossing the parent uses to reach this node (see Program.call_*)
    arg: int = 0
    seconds: float | None = None
    cleanup: bool = False  # suspend once in the finally block
    children: tuple[Node, ...] = ()
    id: int = 0

    def walk(self) -> Any:
        yield self
        for child in self.children:
            yield from child.walk()


def _number(node: Node, counter: itertools.count[int], deadline: bool) -> Node:
    """Give every node an id; turn a ``block`` leaf without a deadline above it into a value
    (nothing would ever wake it)."""
    kind = node.kind
    if kind == "block" and not deadline:
        kind = "value"
    below = deadline or kind in ("timeout", "cancel")
    children = tuple(
        # A switch's daemons (forked children with via 1) are cancelled when its work is done.
        _number(child, counter, below or (kind == "switch" and child.via == 1 and i < len(node.children) - 1))
        for i, child in enumerate(node.children)
    )
    return replace(node, kind=kind, id=next(counter), children=children)


def number(node: Node) -> Node:
    return _number(node, itertools.count(1), False)


def all_async(node: Node) -> Node:
    """The twin of a program with every node a coroutine reached by a plain ``await``."""
    assert node.kind != "switch", "a Switch has no coroutine twin"
    return replace(node, side=ASYNC, via=0, children=tuple(all_async(c) for c in node.children))


def realtime(node: Node) -> bool:
    return any(n.seconds is not None for n in node.walk())


sides = st.sampled_from((GREEN, ASYNC))
vias = st.integers(0, 2)
hops = st.integers(0, 3)


def programs(*, real_time: bool, wakeups: bool) -> st.SearchStrategy[Node]:
    """Program trees; ``real_time`` adds sleeps and timeouts in seconds, ``wakeups`` adds
    ``wait`` leaves woken from loop callbacks (a Waiter's direct resumption on the green side,
    one loop iteration sooner than a Future would, so not comparable with the twin) and
    ``switch`` nodes (green structured concurrency, which has no coroutine twin either)."""
    seconds = st.sampled_from((0.0005, 0.001, 0.003)) if real_time else st.none()
    excluded = {"sleep", "thread"} if not real_time else set()
    if not wakeups:
        excluded.add("wait")
    leaf_kinds = tuple(k for k in LEAVES if k not in excluded)
    leaf = st.builds(
        Node, kind=st.sampled_from(leaf_kinds), side=sides, via=vias, arg=hops, cleanup=st.booleans()
    ).map(lambda n: replace(n, seconds=0.001) if n.kind in ("sleep", "thread") else n)

    def extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        many = st.lists(children, min_size=1, max_size=3).map(tuple)
        # The last child of a switch is its body; the others are forked on it: via 0 fork,
        # 1 fork_daemon, 2 fork_promise.
        switch = st.builds(Node, kind=st.just("switch"), side=st.just(GREEN), via=vias, children=many)
        return st.one_of(
            *([switch] if wakeups else []),
            st.builds(Node, kind=st.just("seq"), side=sides, via=vias, cleanup=st.booleans(), children=many),
            st.builds(Node, kind=st.just("group"), side=sides, via=vias, children=many),
            st.builds(
                Node, kind=st.just("catch"), side=sides, via=vias, children=children.map(lambda c: (c,))
            ),
            st.builds(
                Node,
                kind=st.just("timeout"),
                side=sides,
                via=vias,
                arg=hops,
                seconds=seconds,
                children=children.map(lambda c: (c,)),
            ),
            st.builds(
                Node,
                kind=st.just("cancel"),
                side=sides,
                via=vias,
                arg=hops,
                children=children.map(lambda c: (c,)),
            ),
        )

    return st.recursive(leaf, extend, max_leaves=14).map(number)


@functools.cache
def await_of_spawn_green_works() -> bool:
    """Whether ``await_from_green(spawn_green(fn))`` works on this core; while it does not
    (pinned by test_await_from_green_accepts_a_spawn_green_coroutine), programs reach a nested
    fiber through a coroutine instead, so that the other properties keep being checked."""

    def probe() -> bool:  # in a thread of its own: the caller may be inside a running loop
        try:
            return bool(gb.run(lambda: gb.await_from_green(gb.spawn_green(int)) == 0))
        except TypeError:
            return False

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(probe).result()


# -- the interpreter -----------------------------------------------------------------------------


class Boom(Exception):
    def __init__(self, node_id: int) -> None:
        super().__init__(node_id)
        self.node_id = node_id


class BaseBoom(BaseException):
    def __init__(self, node_id: int) -> None:
        super().__init__(node_id)
        self.node_id = node_id


@dataclass(eq=False)
class Token:
    """A node's result: a fresh object, so identity tells which awaiter received it."""

    node_id: int


CANCELLED = "<task cancelled>"  # what a parent records for a child Task that ended cancelled


def describe(outcome: Any) -> Any:
    """A comparable description of an outcome, for the event trace."""
    if isinstance(outcome, Token):
        return ("ok", outcome.node_id)
    if isinstance(outcome, (Boom, BaseBoom)):
        return (type(outcome).__name__, outcome.node_id)
    if isinstance(outcome, BaseExceptionGroup):
        return ("group", tuple(sorted(map(describe, outcome.exceptions), key=repr)))
    if isinstance(outcome, BaseException):
        return (type(outcome).__name__,)
    return outcome


def failed_at_once(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` failed within ``create_task``, i.e. in an eager first step: its
    TaskGroup is then shutting down, and on Python 3.12 creating another Task in it raises
    ``RuntimeError`` and leaves the coroutine never awaited (asyncio's own behaviour, the same
    in coroutines; gh-116720 changed it in 3.13). So a group node stops creating children."""
    return task.done() and not task.cancelled() and task.exception() is not None


class Program:
    """Runs one program tree and records what happened."""

    def __init__(self, root: Node) -> None:
        self.root = root
        self.events: list[tuple[Any, ...]] = []
        self.outcomes: dict[int, Any] = {}
        self.received: defaultdict[int, list[Any]] = defaultdict(list)
        self.by_task: set[int] = set()  # ids of nodes reached through a Task of their own
        self.tasks: list[asyncio.Task[Any]] = []
        self.leftover_tasks: set[asyncio.Task[Any]] | None = None
        self.errors: list[str] = []
        self.waits: dict[int, dict[str, Any]] = {}  # what each side of a green wait saw

    # -- bookkeeping ----------------------------------------------------------------------------

    def _outcome(self, node: Node, outcome: Any) -> None:
        if node.id in self.outcomes:
            self.errors.append(f"node {node.id} finished twice")
        self.outcomes[node.id] = outcome
        self.events.append(("outcome", node.id, describe(outcome)))

    def _receive(self, child: Node, outcome: Any) -> None:
        self.received[child.id].append(outcome)
        self.events.append(("recv", child.id, describe(outcome)))

    def _receive_task(self, child: Node, task: asyncio.Task[Any]) -> None:
        if not task.done():
            self.errors.append(f"the task of node {child.id} is still running after its parent")
            return
        if task.cancelled():
            self._receive(child, CANCELLED)
        else:
            error = task.exception()
            self._receive(child, task.result() if error is None else error)

    # -- green nodes ----------------------------------------------------------------------------

    def green(self, node: Node) -> Token:
        if not gb.in_green():
            self.errors.append(f"green node {node.id} runs outside green code")
        self.events.append(("start", node.id))
        try:
            try:
                result = self._green_body(node)
            finally:
                self.events.append(("finally", node.id))
                if node.cleanup:  # a suspension while unwinding (may be cancelled again)
                    gb.sleep(0)
        except BaseException as exc:
            self._outcome(node, exc)
            raise
        self._outcome(node, result)
        return result

    def _green_body(self, node: Node) -> Token:
        kind = node.kind
        if kind in LEAVES:
            for _ in range(node.arg):
                gb.sleep(0)
            if kind == "sleep":
                gb.sleep(node.seconds or 0)
            elif kind == "raise":
                raise Boom(node.id)
            elif kind == "raise_base":
                raise BaseBoom(node.id)
            elif kind == "block":
                gb.await_from_green(asyncio.get_running_loop().create_future())
            elif kind == "wait":
                return self._green_wait(node)
            elif kind == "agen":
                for i in gb.iterate(self._agen(node)):
                    if i == node.arg:
                        break  # gb.iterate closes the generator at once
            elif kind == "thread":
                gb.run_in_thread(time.sleep, node.seconds or 0)
            return Token(node.id)
        if kind == "seq":
            for child in node.children:
                self.call_from_green(child)
        elif kind == "catch":
            try:
                self.call_from_green(node.children[0])
            except Exception:
                pass
        elif kind == "timeout":
            with gb.timeout(node.seconds if node.seconds is not None else None) as cm:
                stop = self._arm(node, cm)
                try:
                    self.call_from_green(node.children[0])
                finally:
                    stop()
        elif kind == "cancel":
            child = node.children[0]
            task = self._task_for(child)
            stop = after_hops(node.arg, task.cancel)
            try:
                gb.await_from_green(task)
            except asyncio.CancelledError:
                if not task.cancelled() or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
            finally:
                stop()
                self._receive_task(child, task)
        elif kind == "switch":
            self._switch(node)
        elif kind == "group":
            tasks: list[tuple[Node, asyncio.Task[Any]]] = []
            try:
                with gb.enter(asyncio.TaskGroup()) as tg:
                    for child in node.children:
                        tasks.append((child, task := self._task_for(child, tg.create_task)))
                        if failed_at_once(task):
                            break  # the group is shutting down (eager tasks)
            finally:
                for child, task in tasks:
                    self._receive_task(child, task)
        return Token(node.id)

    def _switch(self, node: Node) -> None:
        """Fork all children but the last on a Switch, run the last as its body; two release
        hooks record when they run. Promises are checked once every fiber has finished."""
        *forked, body = node.children
        promises: list[tuple[Node, gb.Promise[Any]]] = []
        try:
            with gb.Switch() as sw:
                for k in (0, 1):
                    sw.on_release(self.events.append, ("release", node.id, k))
                for child in forked:
                    if child.via == 0:
                        sw.fork(self.call_from_green, child)
                    elif child.via == 1:
                        sw.fork_daemon(self.call_from_green, child)
                    else:
                        promises.append((child, sw.fork_promise(self.call_from_green, child)))
                self.call_from_green(body)
        finally:
            for child, promise in promises:
                self._check_promise(child, promise)

    def _check_promise(self, child: Node, promise: gb.Promise[Any]) -> None:
        """A fork_promise fiber's outcome is its promise's, exactly (the fibers have ended)."""
        if not promise.is_resolved():
            self.errors.append(f"the promise of node {child.id} is still pending after its switch")
            return
        try:
            got = promise.await_()
        except BaseException as exc:
            got = exc
        outcome = self.outcomes.get(child.id, "never started")
        if child.id not in self.outcomes:
            if not isinstance(got, asyncio.CancelledError):
                self.errors.append(f"node {child.id} never ran, its promise holds {got!r}")
        elif got is not outcome:
            self.errors.append(f"node {child.id} ended with {outcome!r}, its promise holds {got!r}")

    def _green_wait(self, node: Node) -> Token:
        """Park on a Waiter that a loop callback wakes (``via`` 0), fails (1) or cancels (2)
        ``arg`` hops from now. ``wake`` may run this fiber before it returns, so what each side
        saw is recorded and compared after the run (``check_waits``)."""
        waiter = Waiter()
        token = Token(node.id)
        record = self.waits[node.id] = {"token": token}
        settle = (lambda: waiter.wake(token), lambda: waiter.fail(Boom(node.id)), waiter.cancel)[node.via]

        def waker() -> None:
            record["settled"] = settle()

        stop = after_hops(node.arg, waker)
        try:
            value = waiter.wait()
        except asyncio.CancelledError:
            record["got"] = ("cancelled", waiter.take_back())
            raise
        except Boom:
            record["got"] = ("failed",)
            raise
        finally:
            stop()
        record["got"] = ("value", value)
        return token

    def call_from_green(self, child: Node) -> Token:
        """Reach ``child`` from green code, by the crossing ``child.via`` selects."""
        try:
            if child.side == GREEN:
                if child.via == 0:
                    result = self.green(child)
                elif child.via == 1 and await_of_spawn_green_works():  # a nested fiber, same Task
                    result = gb.await_from_green(gb.spawn_green(self.green, child))
                else:  # green -> async -> green
                    result = gb.await_from_green(self._through_async(child))
            elif child.via == 0:
                result = gb.await_from_green(self.coroutine(child))
            else:
                result = gb.as_green(self.coroutine)(child)
        except BaseException as exc:
            self._receive(child, exc)
            raise
        self._receive(child, result)
        return result

    async def _through_async(self, child: Node) -> Token:
        return await gb.spawn_green(self.green, child)

    # -- async nodes ----------------------------------------------------------------------------

    async def coroutine(self, node: Node) -> Token:
        self.events.append(("start", node.id))
        try:
            try:
                result = await self._async_body(node)
            finally:
                self.events.append(("finally", node.id))
                if node.cleanup:  # a suspension while unwinding (may be cancelled again)
                    await asyncio.sleep(0)
        except BaseException as exc:
            self._outcome(node, exc)
            raise
        self._outcome(node, result)
        return result

    async def _async_body(self, node: Node) -> Token:
        kind = node.kind
        if kind in LEAVES:
            for _ in range(node.arg):
                await asyncio.sleep(0)
            if kind == "sleep":
                await asyncio.sleep(node.seconds or 0)
            elif kind == "raise":
                raise Boom(node.id)
            elif kind == "raise_base":
                raise BaseBoom(node.id)
            elif kind == "block":
                await asyncio.get_running_loop().create_future()
            elif kind == "wait":
                return await self._async_wait(node)
            elif kind == "agen":
                async with contextlib.aclosing(self._agen(node)) as agen:
                    async for i in agen:
                        if i == node.arg:
                            break
            elif kind == "thread":
                await asyncio.get_running_loop().run_in_executor(None, time.sleep, node.seconds or 0)
            return Token(node.id)
        if kind == "seq":
            for child in node.children:
                await self.call_from_async(child)
        elif kind == "catch":
            try:
                await self.call_from_async(node.children[0])
            except Exception:
                pass
        elif kind == "timeout":
            async with asyncio.timeout(node.seconds if node.seconds is not None else None) as cm:
                stop = self._arm(node, cm)
                try:
                    await self.call_from_async(node.children[0])
                finally:
                    stop()
        elif kind == "cancel":
            child = node.children[0]
            task = self._task_for(child)
            stop = after_hops(node.arg, task.cancel)
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled() or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
            finally:
                stop()
                self._receive_task(child, task)
        elif kind == "group":
            tasks: list[tuple[Node, asyncio.Task[Any]]] = []
            try:
                async with asyncio.TaskGroup() as tg:
                    for child in node.children:
                        tasks.append((child, task := self._task_for(child, tg.create_task)))
                        if failed_at_once(task):
                            break  # the group is shutting down (eager tasks)
            finally:
                for child, task in tasks:
                    self._receive_task(child, task)
        return Token(node.id)

    async def _agen(self, node: Node) -> AsyncIterator[int]:
        """An async generator of three items, suspending before each; it records when it is
        closed (``arg`` < 3: the loop breaks after item ``arg``)."""
        self.events.append(("agen started", node.id))
        try:
            for i in range(3):
                await asyncio.sleep(0)
                yield i
        finally:
            self.events.append(("agen closed", node.id))

    async def _async_wait(self, node: Node) -> Token:
        """The coroutine counterpart of ``_green_wait``, on a Future."""
        future: asyncio.Future[Token] = asyncio.get_running_loop().create_future()
        token = Token(node.id)

        def settle() -> None:
            if future.done():
                return
            if node.via == 0:
                future.set_result(token)
            elif node.via == 1:
                future.set_exception(Boom(node.id))
            else:
                future.cancel()

        stop = after_hops(node.arg, settle)
        try:
            return await future
        finally:
            stop()

    async def call_from_async(self, child: Node) -> Token:
        """Reach ``child`` from a coroutine, by the crossing ``child.via`` selects."""
        try:
            if child.side == ASYNC:
                result = await self.coroutine(child)
            elif child.via == 0:
                result = await gb.spawn_green(self.green, child)
            else:
                result = await gb.as_async(self.green)(child)
        except BaseException as exc:
            self._receive(child, exc)
            raise
        self._receive(child, result)
        return result

    # -- shared ---------------------------------------------------------------------------------

    def _arm(self, node: Node, cm: asyncio.Timeout) -> Callable[[], None]:
        """A timeout counted in loop iterations: expire ``node.arg`` hops from now."""
        if node.seconds is not None:
            return lambda: None
        loop = asyncio.get_running_loop()
        return after_hops(node.arg, lambda: None if cm.expired() else cm.reschedule(loop.time()))

    def _task_for(
        self, child: Node, create: Callable[..., asyncio.Task[Any]] | None = None
    ) -> asyncio.Task[Any]:
        create = create or asyncio.get_running_loop().create_task
        coro = gb.spawn_green(self.green, child) if child.side == GREEN else self.coroutine(child)
        task = create(coro)
        self.by_task.add(child.id)
        self.tasks.append(task)
        return task

    # -- entry points ---------------------------------------------------------------------------

    def green_main(self) -> Token:
        asyncio.get_running_loop().slow_callback_duration = 1.0
        main = asyncio.current_task()
        try:
            return self.call_from_green(self.root)
        finally:
            self.leftover_tasks = asyncio.all_tasks() - {main}

    async def async_main(self) -> Token:
        asyncio.get_running_loop().slow_callback_duration = 1.0
        try:
            return await self.call_from_async(self.root)
        finally:
            self.leftover_tasks = asyncio.all_tasks() - {asyncio.current_task()}


# -- running and checking ------------------------------------------------------------------------


def execute(root: Node, backend: str, *, entry: str) -> tuple[Program, Any]:
    """Run ``root`` (through ``gb.run`` for ``entry="green"``, a plain asyncio Runner for
    ``entry="async"``) with leak checks around it; return the program and its final outcome."""
    program = Program(root)
    with watch(backend, greenlets=entry == "green") as report:
        final: Any
        try:
            if entry == "green":
                final = gb.run(program.green_main, backend=backend, debug=True)
            else:
                with asyncio.Runner(debug=True, loop_factory=_loop_factory(backend)) as runner:
                    final = runner.run(program.async_main())
        except BaseException as exc:
            final = exc
    problems = report.problems()
    assert not problems, problems
    return program, final


def check(program: Program, final: Any) -> None:
    """The invariants of the module docstring, on one finished run."""
    root = program.root
    assert not program.errors, program.errors
    check_waits(program)
    assert program.leftover_tasks == set(), f"tasks left running: {program.leftover_tasks}"
    assert all(task.done() for task in program.tasks)

    starts = [e[1] for e in program.events if e[0] == "start"]
    finals = [e[1] for e in program.events if e[0] == "finally"]
    assert len(starts) == len(set(starts)), "a node started twice"
    assert sorted(starts) == sorted(finals), "a finally block did not run (or ran twice)"
    assert set(program.outcomes) == set(starts), "a started node has no outcome"
    closed = [e[1] for e in program.events if e[0] == "agen closed"]
    assert len(closed) == len(set(closed)), "an async generator was closed twice"
    for node_id in closed:  # closed before its node ended, by the node itself
        events = program.events
        assert events.index(("agen closed", node_id)) < next(
            i for i, e in enumerate(events) if e[0] == "finally" and e[1] == node_id
        )
    started = [e[1] for e in program.events if e[0] == "agen started"]
    assert sorted(closed) == sorted(started), "an async generator was left open"

    for node in root.walk():
        started = node.id in program.outcomes
        got = program.received.get(node.id, [])
        outcome = program.outcomes.get(node.id)
        if node is root:
            assert started
            if isinstance(outcome, asyncio.CancelledError):
                assert isinstance(final, asyncio.CancelledError)
            else:
                assert final is outcome, f"the program returned {final!r}, its root ended with {outcome!r}"
            continue
        if not started:
            # Never started: never seen, except as a Task cancelled before its first step.
            assert got in ([], [CANCELLED]), f"node {node.id} never ran but its parent got {got!r}"
            if got:
                assert node.id in program.by_task
            continue
        assert len(got) == 1, f"node {node.id} ended with {outcome!r}; its parent received {got!r}"
        if node.id in program.by_task and isinstance(outcome, asyncio.CancelledError):
            assert got[0] == CANCELLED, f"node {node.id} was cancelled, its parent got {got[0]!r}"
        else:
            assert got[0] is outcome, f"node {node.id} ended with {outcome!r}; its parent got {got[0]!r}"

        inner = program.outcomes.get(node.children[0].id) if node.children else None
        if node.kind == "timeout" and isinstance(outcome, TimeoutError) and outcome is not inner:
            # This timeout's own TimeoutError (not one from a nested timeout passing through).
            assert isinstance(inner, asyncio.CancelledError), f"timeout fired but its child ended {inner!r}"
            assert outcome.__cause__ is inner
        if node.kind == "switch":
            check_switch(program, node, outcome)
        if node.kind == "group":
            failed = [
                program.outcomes[c.id]
                for c in node.children
                if isinstance(program.outcomes.get(c.id), BaseException)
                and not isinstance(program.outcomes[c.id], asyncio.CancelledError)
            ]
            if isinstance(outcome, BaseExceptionGroup):
                assert {id(e) for e in outcome.exceptions} == {id(e) for e in failed}, (outcome, failed)
            else:
                assert not failed, f"group {node.id} ended {outcome!r} although {failed!r} failed"


def check_switch(program: Program, node: Node, outcome: Any) -> None:
    """Eio's rules: the release hooks ran once each, last-in first-out, after every fiber and
    the body ended; the switch raised its one failure itself, several as a group, and nothing
    (or a cancellation from outside) when nothing failed."""
    *forked, body = node.children
    releases = [i for i, e in enumerate(program.events) if e[0] == "release" and e[1] == node.id]
    assert [program.events[i][2] for i in releases] == [1, 0], releases
    inside = {n.id for child in node.children for n in child.walk()}
    last_inside = max((i for i, e in enumerate(program.events) if e[1] in inside), default=-1)
    assert releases[0] > last_inside, "a release hook ran before every fiber had finished"
    failures = [
        program.outcomes[c.id]
        for c in [*(c for c in forked if c.via != 2), body]
        if isinstance(program.outcomes.get(c.id), BaseException)
        and not isinstance(program.outcomes[c.id], asyncio.CancelledError)
    ]
    if not failures:
        assert isinstance(outcome, (Token, asyncio.CancelledError)), (outcome, failures)
    elif len(failures) == 1:
        assert outcome is failures[0], (outcome, failures)
    else:
        assert isinstance(outcome, BaseExceptionGroup), (outcome, failures)
        assert {id(e) for e in outcome.exceptions} == {id(e) for e in failures}, (outcome, failures)


def check_waits(program: Program) -> None:
    """Nothing handed to a Waiter is lost or delivered twice: a value ``wake`` accepted was
    returned by ``wait`` or given back by ``take_back``; one it refused was not delivered."""
    for node_id, record in program.waits.items():
        node = next(n for n in program.root.walk() if n.id == node_id)
        settled, got = record.get("settled"), record["got"]
        if node.via == 0:
            if settled:
                assert got in (("value", record["token"]), ("cancelled", (True, record["token"]))), record
            else:
                assert got == ("cancelled", (False, None)), record
        elif node.via == 1:
            # An accepted failure is raised -- or, when the fiber is cancelled before it runs
            # again, dropped for the CancelledError (take_back() only returns values; the
            # errors greenbridge itself fails waiters with are kept in state anyway, e.g. a
            # closed connection).
            if settled:
                assert got in (("failed",), ("cancelled", (False, None))), record
            else:
                assert got == ("cancelled", (False, None)), record
        else:
            assert got == ("cancelled", (False, None)), record


def per_node(events: list[tuple[Any, ...]]) -> dict[int, list[tuple[Any, ...]]]:
    """The trace seen from each node: its own events in order. (Across sibling Tasks the order
    is not deterministic: a TaskGroup cancels its Tasks in the order of a set.)"""
    out: defaultdict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for event in events:
        out[event[1]].append(event)
    return dict(out)


def run_and_check(root: Node, backend: str) -> Program:
    program, final = execute(root, backend, entry="green")
    check(program, final)
    return program


# -- the properties ------------------------------------------------------------------------------

ONE_OF_EACH = number(
    Node(
        "group",
        GREEN,
        children=(
            Node(
                "catch",
                GREEN,
                children=(Node("timeout", GREEN, arg=1, children=(Node("block", ASYNC, cleanup=True),)),),
            ),
            Node("cancel", ASYNC, arg=0, children=(Node("block", GREEN, via=1, cleanup=True),)),
            Node("catch", ASYNC, children=(Node("raise", GREEN, via=2, arg=2),)),
            Node(
                "seq", GREEN, via=2, children=(Node("value", ASYNC, via=1), Node("agen", GREEN, via=1, arg=1))
            ),
        ),
    )
)


NESTED_TIMEOUTS = number(
    Node(
        "seq",
        GREEN,
        children=(
            Node(
                "timeout",
                GREEN,
                arg=1,
                children=(Node("timeout", GREEN, children=(Node("value", GREEN, arg=2),)),),
            ),
        ),
    )
)


@hypothesis_settings(ci_examples=160)
@given(root=programs(real_time=False, wakeups=False))
@example(root=ONE_OF_EACH)
@example(root=NESTED_TIMEOUTS)  # both expire: the inner one's TimeoutError passes the outer one
def test_counted_programs_keep_the_invariants_and_match_pure_asyncio(root: Node, gb_backend: str) -> None:
    """Programs timed in loop iterations: the invariants hold, and the trace is the one the
    same program written only with coroutines produces, event for event."""
    green = run_and_check(root, gb_backend)
    twin, twin_final = execute(all_async(root), gb_backend, entry="async")
    check(twin, twin_final)
    assert per_node(green.events) == per_node(twin.events)


SWITCHED = number(
    Node(
        "catch",
        ASYNC,
        children=(
            Node(
                "switch",
                GREEN,
                via=1,
                children=(
                    Node("raise", ASYNC, via=0, arg=1),  # forked: fails the switch
                    Node("block", GREEN, via=1, cleanup=True),  # a daemon, cancelled
                    Node("raise_base", GREEN, via=2, arg=1),  # a promise, rejected
                    Node("wait", GREEN, via=0, arg=3),  # the body, cancelled by the failure
                ),
            ),
        ),
    )
)


@hypothesis_settings(ci_examples=200)
@given(root=programs(real_time=False, wakeups=True))
@example(root=SWITCHED)
def test_programs_with_direct_wakeups_keep_the_invariants(root: Node, gb_backend: str) -> None:
    """Programs whose green fibers also park on Waiters woken (failed, cancelled) from loop
    callbacks -- direct resumption, racing timeouts and cancellations by the iteration."""
    run_and_check(root, gb_backend)


@hypothesis_settings(ci_examples=60)
@given(root=programs(real_time=True, wakeups=True))
def test_programs_in_real_time_keep_the_invariants(root: Node, gb_backend: str) -> None:
    """Programs with real sleeps and timeouts in seconds: timing varies, the invariants hold."""
    run_and_check(root, gb_backend)


@hypothesis_settings(ci_examples=40)
@given(root=programs(real_time=False, wakeups=True))
def test_programs_started_from_asyncio_keep_the_invariants(root: Node, gb_backend: str) -> None:
    """The same programs entered from a plain asyncio Runner (no ``gb.run``): fibers end with
    the run, though idle pooled greenlets may stay for the next one."""
    program, final = execute(root, gb_backend, entry="async")
    check(program, final)


def test_the_example_programs_exercise_every_kind_of_node(gb_backend: str) -> None:
    kinds = {node.kind for root in (ONE_OF_EACH, SWITCHED) for node in root.walk()}
    assert set(BRANCHES) <= kinds and set(LEAVES) - {"sleep", "thread"} <= kinds

    switched = run_and_check(SWITCHED, gb_backend)
    (switch,) = [node for node in SWITCHED.walk() if node.kind == "switch"]
    (raiser,) = [node for node in SWITCHED.walk() if node.kind == "raise"]
    assert switched.outcomes[switch.id] is switched.outcomes[raiser.id]

    program = run_and_check(ONE_OF_EACH, gb_backend)
    assert isinstance(program.outcomes[ONE_OF_EACH.id], Token)
    # The timeout fired, the cancelled task ended cancelled, the caught error was received.
    (raiser,) = [node for node in ONE_OF_EACH.walk() if node.kind == "raise"]
    outcomes = {describe(o) for o in program.outcomes.values()}
    assert {("TimeoutError",), ("CancelledError",), ("Boom", raiser.id)} <= outcomes


@pytest.mark.parametrize("side", [GREEN, ASYNC])
def test_a_block_without_a_deadline_is_turned_into_a_value(side: str) -> None:
    assert number(Node("block", side)).kind == "value"
    assert number(Node("timeout", side, children=(Node("block", side),))).children[0].kind == "block"


def test_await_from_green_accepts_a_spawn_green_coroutine(run_green: Callable[..., Any]) -> None:
    """Green code awaiting ``spawn_green(fn)`` directly: a nested fiber in the same Task
    (contract point 4). ``_GreenCall.__await__`` returns the _GreenCall itself, an iterator
    without ``__iter__``: fine for ``await`` but not for the ``yield from`` that
    ``await_from_green`` steps awaitables with."""

    def inner(x: int) -> int:
        gb.sleep(0)
        return x + 1

    def outer() -> int:
        return gb.await_from_green(gb.spawn_green(inner, 41))

    assert run_green(outer) == 42


# -- regressions found by the properties ---------------------------------------------------------
#
# A fiber that a Waiter resumes directly (from a loop callback) runs outside its Task's step.
# When the same callback then cancels that Task -- a TaskGroup aborting because a sibling failed
# does exactly this -- the cancellation reaches the fiber at the point where it hands control
# back to its Task.


def _resume_directly_then_cancel(green: Callable[[Waiter], Any]) -> Callable[[], Any]:
    """A coroutine function: run ``green(waiter)`` in a Task, let it park on the waiter, then from
    one loop callback wake it (direct resumption) and cancel its Task; return the Task."""

    async def main() -> asyncio.Task[Any]:
        waiter = Waiter()
        task = asyncio.create_task(gb.spawn_green(green, waiter))
        await asyncio.sleep(0)  # the fiber parks

        def wake_then_cancel() -> None:
            assert waiter.wake("woken")
            task.cancel()

        asyncio.get_running_loop().call_soon(wake_then_cancel)
        await asyncio.wait([task])
        return task

    return main


def test_an_error_raised_after_a_direct_wakeup_is_not_lost_to_a_later_cancel(
    run_async: Callable[..., Any],
) -> None:
    """The fiber finished by raising; its Task must end with that error, not ``CancelledError``
    (found as "group ended CancelledError although its children failed")."""

    def green(waiter: Waiter) -> None:
        waiter.wait()
        raise Boom(1)

    task = run_async(_resume_directly_then_cancel(green))
    assert not task.cancelled()
    assert isinstance(task.exception(), Boom)


def test_a_result_returned_after_a_direct_wakeup_is_not_lost_to_a_later_cancel(
    run_async: Callable[..., Any],
) -> None:
    """The fiber finished by returning; the result must reach the Task's awaiter (a returned
    resource, e.g. a connection, would otherwise be dropped without anyone closing it)."""

    def green(waiter: Waiter) -> str:
        return f"{waiter.wait()} and returned"

    task = run_async(_resume_directly_then_cancel(green))
    assert not task.cancelled()
    assert task.result() == "woken and returned"


def test_an_await_after_a_direct_wakeup_closes_its_coroutine_when_cancelled(
    run_async: Callable[..., Any], gb_backend: str
) -> None:
    """``await_from_green(coro)`` that is cancelled while it goes back to its Task must not leave
    ``coro`` un-stepped and unclosed ("coroutine ... was never awaited")."""
    stepped: list[str] = []

    async def body() -> None:
        stepped.append("body")

    def green(waiter: Waiter) -> None:
        waiter.wait()
        gb.await_from_green(body())

    with watch(gb_backend, greenlets=False) as report:
        task = run_async(_resume_directly_then_cancel(green))
        assert task.cancelled()
        del task  # its CancelledError's traceback holds the fiber's frames, hence the coroutine
    assert report.problems() == []


def test_current_task_is_the_fibers_own_after_a_direct_wakeup(run_green: Callable[..., Any]) -> None:
    """Contract point 3: green code sees its hosting Task as ``asyncio.current_task()``. A fiber
    that a Waiter resumed directly from a loop callback runs outside its Task's step, and there
    ``current_task()`` is None (``all_tasks()`` then lists its own Task as a stranger) until its
    next asyncio await -- code that reads it from sync code (sniffio's library detection,
    ``current_task().cancelling()`` bookkeeping) breaks. Found by the properties."""

    def main() -> None:
        task = asyncio.current_task()
        waiter = Waiter()
        asyncio.get_running_loop().call_soon(waiter.wake, None)
        waiter.wait()
        assert asyncio.current_task() is task
        assert asyncio.all_tasks() == {task}

    run_green(main)



def test_an_await_that_suspends_twice_in_an_eager_tasks_first_fiber_returns_to_the_loop(
    run_async: Callable[..., Any], gb_backend: str
) -> None:
    """Under an eager task factory a Task created in green code takes its first step in the
    creator's fiber, so its own fiber first has the creator as parent and the loop greenlet
    after that. An ``await_from_green`` in it that spans that change -- awaiting a nested
    fiber that suspends twice -- must switch to the loop the second time, not to the creator
    (which then woke inside the other Task's step: "Task cannot await on itself"). Found by the
    properties under ``asyncio+eager`` (a ``gb.iterate`` in a nested fiber in a TaskGroup)."""
    if not hasattr(asyncio, "eager_task_factory"):
        pytest.skip("eager tasks need Python 3.12")
    if gb_backend == "uvloop" and sys.version_info >= (3, 13):
        pytest.skip("uvloop calls a task factory with eager_start=, which asyncio.eager_task_factory "
                    "does not take on 3.13: the two cannot be combined")

    def twice() -> str:
        gb.sleep(0)
        gb.sleep(0)
        return "slept twice"

    def nested() -> str:
        return gb.await_from_green(gb.spawn_green(twice))

    def creator() -> str:
        task = asyncio.get_running_loop().create_task(gb.spawn_green(nested))
        return gb.await_from_green(task)

    async def main() -> str:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        return await gb.spawn_green(creator)

    assert run_async(main) == "slept twice"


# -- streams under cancellation ------------------------------------------------------------------

stream_programs = st.fixed_dictionaries(
    {
        "capacity": st.integers(0, 3),
        # (items to add, cancel after this many loop iterations or never)
        "producers": st.lists(
            st.tuples(st.integers(0, 6), st.none() | st.integers(0, 12)), min_size=1, max_size=3
        ),
        # (items to take or "forever", cancel after this many iterations or never, take_nowait?)
        "consumers": st.lists(
            st.tuples(st.none() | st.integers(1, 6), st.none() | st.integers(0, 12), st.booleans()),
            min_size=1,
            max_size=3,
        ),
    }
)


def run_stream_program(spec: dict[str, Any]) -> dict[str, Any]:
    """Producers and consumers on one ``gb.Stream``, each in its own Task, some cancelled at a
    chosen loop iteration; whoever still waits once nothing can move is cancelled, then the
    stream is drained."""
    stream: gb.Stream[tuple[int, int]] = gb.Stream(spec["capacity"])
    added: dict[tuple[int, int], str] = {}
    taken: list[tuple[int, int]] = []
    loop = asyncio.get_running_loop()

    def produce(p: int, n: int) -> None:
        for i in range(n):
            item = (p, i)
            added[item] = "trying"
            try:
                stream.add(item)
            except asyncio.CancelledError:
                added[item] = "cancelled"
                raise
            added[item] = "added"

    def consume(n: int | None, nowait: bool) -> None:
        count = 0
        while n is None or count < n:
            if nowait:
                try:
                    taken.append(stream.take_nowait())
                except asyncio.QueueEmpty:
                    gb.sleep(0)
                    continue
            else:
                taken.append(stream.take())
            count += 1

    def with_cancel(fn: Callable[..., None], hops: int | None, *args: Any) -> asyncio.Task[None]:
        task = loop.create_task(gb.spawn_green(fn, *args))
        if hops is not None:
            after_hops(hops, task.cancel)
        return task

    tasks = [with_cancel(produce, hops, p, n) for p, (n, hops) in enumerate(spec["producers"])]
    tasks += [with_cancel(consume, hops, n, nowait) for n, hops, nowait in spec["consumers"]]
    # Every planned cancellation has fired after 13 iterations and a stream moves an item per
    # iteration at least while anyone can make progress; then whoever still waits (a producer
    # on a full stream, a consumer on an empty one) is cancelled.
    for _ in range(13 + 2 * sum(n for n, _ in spec["producers"])):
        gb.sleep(0)
    for task in tasks:
        task.cancel()
    gb.await_from_green(asyncio.wait(tasks))
    drained = []
    while len(stream):
        drained.append(stream.take_nowait())
    return {"added": added, "taken": taken, "drained": drained}


@hypothesis_settings(ci_examples=150)
@given(spec=stream_programs)
def test_a_stream_loses_and_duplicates_nothing_under_cancellation(
    spec: dict[str, Any], gb_backend: str
) -> None:
    """Every item whose ``add`` returned is taken exactly once or still buffered; an item whose
    ``add`` was cancelled is delivered at most once; nothing else appears; with one consumer,
    each producer's items come out in the order it added them."""
    with watch(gb_backend) as report:
        out = gb.run(run_stream_program, spec, backend=gb_backend, debug=True)
    assert report.problems() == []
    added, taken, drained = out["added"], out["taken"], out["drained"]
    delivered = taken + drained
    assert len(delivered) == len(set(delivered)), f"an item was delivered twice: {delivered}"
    assert set(delivered) <= set(added), "an item nobody added came out"
    lost = [item for item, state in added.items() if state == "added" and item not in delivered]
    assert lost == [], f"added, then lost: {lost}"
    assert not [item for item, state in added.items() if state == "trying"], "an add() never ended"
    if len(spec["consumers"]) == 1:  # with several, the order takes *return* in may differ
        for producer in range(len(spec["producers"])):
            order = [i for p, i in delivered if p == producer]
            assert order == sorted(order), f"producer {producer}'s items came out of order: {order}"
