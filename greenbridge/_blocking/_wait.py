"""Waiting on file descriptors from a green fiber: the one primitive every patched call uses.

A patched call never blocks the thread. It makes one non-blocking attempt; when the operating
system says "not yet" it parks the fiber on an asyncio Future that a loop reader or writer
completes (``_wait``), then tries again. Rules:

1. One loop registration per (descriptor, direction), however many fibers wait on it: a table
   of waiting Futures per key (``_Waiters``), because ``loop.add_reader`` on a descriptor that
   already has a reader silently replaces it and the first fiber would never wake.
2. Every wait removes what it registered, on every exit path (readiness, deadline, cancellation).
3. A deadline is the loop's clock (``loop.time()``), so a socket timeout is measured the way
   ``gb.timeout`` is; reaching it returns False and the caller raises the ``TimeoutError`` the
   unpatched call would have raised.
4. A wait is a suspension point, hence a cancellation point: ``CancelledError`` (from
   ``gb.timeout``, a failing ``Switch`` or a cancelled Task) comes out of it unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

from .._core import await_from_green, in_green
from ._watchdog import watch

__all__ = ("READ", "WRITE", "green_loop", "wait_fds")

READ = 1
WRITE = 2


class _Waiters(threading.local):
    """Per thread (one running loop per thread): the Futures waiting on each (fd, direction).

    Invariant: a key is present iff the loop has a reader (READ) or writer (WRITE) registered on
    that descriptor by us, and its set is non-empty.
    """

    def __init__(self) -> None:
        self.table: dict[tuple[int, int], set[asyncio.Future[bool]]] = {}


_waiters = _Waiters()


def green_loop() -> asyncio.AbstractEventLoop | None:
    """The running loop when the caller is a green fiber on it; None anywhere else (a thread
    without a loop, plain code, a loop callback), where patched calls run the original."""
    if not in_green():
        return None
    loop = asyncio._get_running_loop()
    if loop is not None:
        watch(loop)
    return loop


def _wake(key: tuple[int, int]) -> None:
    for future in _waiters.table.get(key, ()):
        if not future.done():
            future.set_result(True)


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


def _register(loop: asyncio.AbstractEventLoop, fd: int, direction: int, future: asyncio.Future[bool]) -> None:
    key = (fd, direction)
    waiting = _waiters.table.get(key)
    if waiting is None:
        if direction == READ:
            loop.add_reader(fd, _wake, key)
        else:
            loop.add_writer(fd, _wake, key)
        waiting = _waiters.table[key] = set()
    waiting.add(future)


def _unregister(
    loop: asyncio.AbstractEventLoop, fd: int, direction: int, future: asyncio.Future[bool]
) -> None:
    key = (fd, direction)
    waiting = _waiters.table.get(key)
    if waiting is None:
        return
    waiting.discard(future)
    if not waiting:
        del _waiters.table[key]
        # The descriptor may have been closed meanwhile (by another fiber): nothing left to remove.
        try:
            if direction == READ:
                loop.remove_reader(fd)
            else:
                loop.remove_writer(fd)
        except (OSError, ValueError):
            pass


def wait_fds(
    loop: asyncio.AbstractEventLoop,
    waits: Iterable[tuple[int, int]],
    deadline: float | None,
) -> bool:
    """Suspend the calling fiber until one of ``waits`` -- (fd, READ or WRITE) pairs -- is ready
    (True) or the loop's clock reaches ``deadline`` (False; None waits without limit).

    A suspension point, hence a cancellation point (``CancelledError`` is raised unchanged).
    Raises ``ValueError`` for a descriptor the loop cannot watch (closed, or -1).
    """
    future: asyncio.Future[bool] = loop.create_future()
    registered: list[tuple[int, int]] = []
    timer = None
    try:
        for fd, direction in waits:
            if fd < 0:
                raise ValueError(f"cannot wait on file descriptor {fd} (the socket is closed)")
            _register(loop, fd, direction, future)
            registered.append((fd, direction))
        if deadline is not None:
            timer = loop.call_at(deadline, _expire, future)
        return await_from_green(future)
    finally:
        if timer is not None:
            timer.cancel()
        for fd, direction in registered:
            _unregister(loop, fd, direction, future)
