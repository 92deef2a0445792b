"""Fiber combinators for green code (Eio's ``Fiber`` module): run functions concurrently.

Each combinator runs its functions in fibers on a private ``gb.Switch``, so the switch's rules
hold: it returns only once every fiber it started has finished; the first failure cancels the
others and is raised (an ``ExceptionGroup`` when several fail); cancelling the caller cancels
them all. Fibers start in argument order, the next time the caller suspends (see "Scheduling
order of fork" in ``gb.Switch``), so runs are deterministic.

``first`` and ``any`` race their functions: the first to return a value wins and the others are
cancelled. A value already obtained is never lost to a later cancellation: if the caller is
cancelled while the losers are being cancelled, the winner's value is returned all the same and
the caller's cancellation is delivered at its next suspension point (it is re-armed with
``task.uncancel(); task.cancel()``). Caveat before Python 3.13: ``uncancel()`` does not withdraw
a re-armed cancellation, so if it came from an ``asyncio.timeout``/``gb.timeout`` block that is
left without suspending again, it still surfaces at the next suspension after the block.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ._cancel import await_cancel, check, yield_
from ._control import _rearm
from ._switch import Switch, _Child

__all__ = ("all", "any", "await_cancel", "both", "check", "first", "map", "pair", "yield_")

A = TypeVar("A")
B = TypeVar("B")
T = TypeVar("T")
R = TypeVar("R")


def all(fns: Iterable[Callable[[], object]]) -> None:
    """Run every function of ``fns`` concurrently and wait for all of them.

    A suspension point. Raises the first failure (the others are then cancelled), or an
    ``ExceptionGroup`` of several.
    """
    with Switch() as sw:
        for fn in fns:
            sw.fork(fn)


def both(f: Callable[[], object], g: Callable[[], object]) -> None:
    """Run ``f`` and ``g`` concurrently and wait for both; as ``all([f, g])``."""
    all((f, g))


def pair(f: Callable[[], A], g: Callable[[], B]) -> tuple[A, B]:
    """Run ``f`` and ``g`` concurrently; return ``(f(), g())``. Failures as for ``all``."""
    results: list[Any] = [None, None]

    def run(index: int, fn: Callable[[], Any]) -> None:
        results[index] = fn()

    with Switch() as sw:
        sw.fork(run, 0, f)
        sw.fork(run, 1, g)
    return results[0], results[1]


def map(
    fn: Callable[[T], R], items: Iterable[T], max_fibers: int | None = None
) -> list[R]:
    """``[fn(item) for item in items]``, computed concurrently, in order.

    At most ``max_fibers`` calls run at once (``None``: one fiber per item). A suspension point.
    Failures as for ``all``: the first cancels the calls still running and is raised. Raises
    ``ValueError`` when ``max_fibers`` is less than 1.
    """
    pending = list(items)
    results: list[Any] = [None] * len(pending)
    if max_fibers is not None and max_fibers < 1:
        raise ValueError(f"max_fibers must be at least 1 (or None), got {max_fibers!r}")

    def run_one(index: int) -> None:
        results[index] = fn(pending[index])

    with Switch() as sw:
        if max_fibers is None or max_fibers >= len(pending):
            for index in range(len(pending)):
                sw.fork(run_one, index)
        else:
            indices = iter(range(len(pending)))  # shared: next() never suspends

            def worker() -> None:
                for index in indices:
                    run_one(index)

            for _ in range(max_fibers):
                sw.fork(worker)
    return results


def first(f: Callable[[], T], g: Callable[[], T], *, combine: Callable[[T, T], T] | None = None) -> T:
    """Race ``f`` and ``g``: return the first value, cancel the other. As ``any([f, g])``."""
    return any((f, g), combine=combine)


def any(
    fns: Iterable[Callable[[], T]], *, combine: Callable[[T, T], T] | None = None
) -> T:
    """Race the functions of ``fns``: the first to return a value wins, the others are cancelled.

    When another one also returns a value before its cancellation takes effect, that value is
    dropped -- or, with ``combine``, merged: ``combine(value_so_far, later_value)``. A loser
    ending in ``CancelledError`` is not a failure; any other exception is raised (the first
    failure cancels the rest), even when a value was obtained. A suspension point.

    Raises ``ValueError`` for an empty iterable; ``CancelledError`` when every function ended
    cancelled without a value, or when the caller was cancelled before any value was obtained.
    """
    fns = list(fns)
    if not fns:
        raise ValueError("fiber.any() needs at least one function")
    won: list[T] = []
    sw = Switch()

    def on_value(child: _Child, value: Any) -> None:
        if not won:
            won.append(value)
            sw._cancel_children(child, doom=False)  # the losers run up to their first suspension
        elif combine is not None:
            won[0] = combine(won[0], value)

    try:
        with sw:
            for fn in fns:
                sw._fork(fn, (), False, None, on_value)
    except asyncio.CancelledError:
        if not won:
            raise
        # The caller was cancelled after a value was obtained: keep the value, and re-arm the
        # cancellation for the caller's next suspension point.
        assert sw._host is not None
        _rearm(sw._host)
        return won[0]
    if not won:
        raise asyncio.CancelledError("every fiber of fiber.any() ended cancelled")
    return won[0]
