"""The combinators of ``greenbridge.fiber``, built only on ``Switch``'s public API.

Each combinator is a ``with Switch() as sw:`` block that forks its functions with ``sw.fork``;
the race (``any``, ``first``) adds ``sw.cancel_fibers()``, called by the first fiber to return a
value. So the combinators follow the switch's rules (see ``_switch``) without a rule of their own,
and anything they do, user code can do with the same calls.

Rejected designs
----------------
* A private fork with an on-value callback and a private "cancel the others" (the first
  version): the combinators then depended on the switch's internals, and users could not write
  their own race.
* The winner failing the race switch with a sentinel exception (``sw.fail``), filtered out on
  exit: failing dooms the losers that have not started yet (they never run), so a value a loser
  returns without suspending is lost to ``combine``; and every real error would come back in a
  group beside the sentinel, to be unpacked again.
* The winner cancelling the losers' Tasks itself: a loser still cleaning up after that
  cancellation would be cancelled a second time if the switch is then cancelled, where the
  switch cancels each fiber once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ._control import _rearm
from ._switch import Switch

__all__ = ("all", "any", "both", "first", "map", "pair")

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

    Raises ``ValueError`` for an empty iterable, ``TypeError`` when one of them is not callable;
    ``CancelledError`` when every function ended cancelled without a value, or when the caller
    was cancelled before any value was obtained.
    """
    fns = list(fns)
    if not fns:
        raise ValueError("fiber.any() needs at least one function")
    for fn in fns:
        if not callable(fn):
            raise TypeError(f"fiber.any() needs callables, got {type(fn).__name__!r}")
    won: list[T] = []
    sw = Switch()

    def race(fn: Callable[[], T]) -> None:
        value = fn()
        if not won:
            won.append(value)
            sw.cancel_fibers()  # the losers; one not started yet runs up to its first suspension
        elif combine is not None:
            won[0] = combine(won[0], value)  # its error fails the switch, like the fiber's own

    host: asyncio.Task[Any] | None = None
    try:
        with sw:
            host = asyncio.current_task()  # the caller's Task (entering made sure it is current)
            for fn in fns:
                sw.fork(race, fn)
    except asyncio.CancelledError:
        if not won:
            raise
        # The caller was cancelled after a value was obtained: keep the value, and re-arm the
        # cancellation for the caller's next suspension point.
        assert host is not None
        _rearm(host)
        return won[0]
    if not won:
        raise asyncio.CancelledError("every fiber of fiber.any() ended cancelled")
    return won[0]
