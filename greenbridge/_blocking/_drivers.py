"""Database drivers that wait in C: their own hooks, installed when the package is importable.

* psycopg2 -- ``psycopg2.extensions.set_wait_callback``, its official hook for coroutine
  libraries: libpq is driven without blocking and ``_psycopg2_wait(conn)`` is called whenever it
  would block. The hook is process-wide, so outside a fiber it waits as psycopg2's own
  ``extras.wait_select`` does (the original ``select.select``, Ctrl-C cancelling the query).
  A fiber cancelled in the middle of a query (``gb.timeout``...) cancels the query on the
  server, then the ``CancelledError`` goes on -- and psycopg2 closes that connection, as it does
  whenever a wait callback raises.
* psycopg 3 -- its sync connections consume libpq "generators" in ``psycopg.waiting.wait`` and
  ``wait_conn`` (the former in C, where nothing of ours would be seen): both are replaced by
  versions that wait on the loop in a fiber and call the originals elsewhere. Its connection
  already cancels the running query when the wait is interrupted; ``CancelledError`` is added
  to the interruptions it handles that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import select
from collections.abc import Generator
from typing import Any

from ._patch import Attribute, Patch
from ._wait import READ, WRITE, green_loop, wait_fds

__all__ = ("patches",)

_orig_select = select.select


class _WaitCallback:
    """psycopg2's wait callback: set ours, and on revert put back the one set before (usually
    none) -- unless somebody replaced ours meanwhile, which is then theirs to keep."""

    __slots__ = ("callback", "extensions", "saved")

    def __init__(self, extensions: Any, callback: Any) -> None:
        self.extensions = extensions
        self.callback = callback
        self.saved: Any = None

    def apply(self) -> None:
        self.saved = self.extensions.get_wait_callback()
        self.extensions.set_wait_callback(self.callback)

    def revert(self) -> None:
        if self.extensions.get_wait_callback() is self.callback:
            self.extensions.set_wait_callback(self.saved)
        self.saved = None


def _psycopg2_patches() -> list[Patch]:
    try:
        extensions = importlib.import_module("psycopg2.extensions")
    except ImportError:
        return []
    POLL_OK, POLL_READ, POLL_WRITE = extensions.POLL_OK, extensions.POLL_READ, extensions.POLL_WRITE

    def plain_wait(conn: Any) -> None:
        while True:
            try:
                state = conn.poll()
                if state == POLL_OK:
                    return
                if state == POLL_READ:
                    _orig_select([conn.fileno()], [], [])
                elif state == POLL_WRITE:
                    _orig_select([], [conn.fileno()], [])
                else:
                    raise conn.OperationalError(f"bad state from poll: {state}")
            except KeyboardInterrupt:
                conn.cancel()  # the loop ends with the server's error

    def green_wait(loop: asyncio.AbstractEventLoop, conn: Any) -> None:
        while True:
            state = conn.poll()
            if state == POLL_OK:
                return
            if state == POLL_READ:
                wait_fds(loop, ((conn.fileno(), READ),), None)
            elif state == POLL_WRITE:
                wait_fds(loop, ((conn.fileno(), WRITE),), None)
            else:
                raise conn.OperationalError(f"bad state from poll: {state}")

    def wait_callback(conn: Any) -> None:
        loop = green_loop()
        if loop is None:
            return plain_wait(conn)
        try:
            return green_wait(loop, conn)
        except asyncio.CancelledError:
            # psycopg2 closes a connection whose wait callback raised (its rule: the protocol
            # state is unknown). Stop the query on the server first (libpq's PQcancel, a short
            # blocking exchange on a second connection), so that it does not run on unseen.
            with contextlib.suppress(Exception):
                conn.cancel()
            raise

    return [_WaitCallback(extensions, wait_callback)]


def _psycopg_patches() -> list[Patch]:
    try:
        waiting = importlib.import_module("psycopg.waiting")
        connection = importlib.import_module("psycopg.connection")
    except ImportError:
        return []
    WAIT_R, WAIT_W = waiting.WAIT_R, waiting.WAIT_W
    READY_NONE, READY_R, READY_W = waiting.READY_NONE, waiting.READY_R, waiting.READY_W
    wait_timeout = importlib.import_module("psycopg.errors")._WaitTimeout
    orig_wait = waiting.wait
    orig_wait_conn = waiting.wait_conn

    def waits_for(fileno: int, state: int) -> list[tuple[int, int]]:
        waits = []
        if state & WAIT_R:
            waits.append((fileno, READ))
        if state & WAIT_W:
            waits.append((fileno, WRITE))
        return waits

    def ready_now(fileno: int, state: int) -> Any:
        r, w, _ = _orig_select([fileno] if state & WAIT_R else [], [fileno] if state & WAIT_W else [], [], 0)
        return (READY_R if r else READY_NONE) | (READY_W if w else READY_NONE)

    def green_wait(
        gen: Generator[Any, Any, Any], fileno: int, interval: float = 0.0, timeout: float | None = None
    ) -> Any:
        loop = green_loop()
        if loop is None:
            return orig_wait(gen, fileno, interval=interval, timeout=timeout)
        deadline = None if timeout is None else loop.time() + timeout
        try:
            state = next(gen)
            while True:
                if not wait_fds(loop, waits_for(fileno, state), deadline):
                    raise wait_timeout("wait timeout expired")
                state = gen.send(ready_now(fileno, state))
        except StopIteration as stop:
            return stop.value

    def green_wait_conn(
        gen: Generator[Any, Any, Any], interval: float = 0.0, timeout: float | None = None
    ) -> Any:
        loop = green_loop()
        if loop is None:
            return orig_wait_conn(gen, interval=interval, timeout=timeout)
        deadline = None if timeout is None else loop.time() + timeout
        try:
            fileno, state = next(gen)
            while True:
                if not wait_fds(loop, waits_for(fileno, state), deadline):
                    raise wait_timeout("wait timeout expired")
                fileno, state = gen.send(ready_now(fileno, state))
        except StopIteration as stop:
            return stop.value

    green_wait.__doc__ = orig_wait.__doc__
    green_wait_conn.__doc__ = orig_wait_conn.__doc__
    interrupted = (*connection._INTERRUPTED, asyncio.CancelledError)
    return [
        Attribute(waiting, "wait", green_wait),
        Attribute(waiting, "wait_conn", green_wait_conn),
        Attribute(connection, "_INTERRUPTED", interrupted),
    ]


def patches() -> list[Patch]:
    """The drivers' hooks, for the drivers that are importable."""
    return _psycopg2_patches() + _psycopg_patches()
