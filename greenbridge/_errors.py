"""The exception hierarchy: one root, builtin families reused where users expect them."""

from __future__ import annotations

import asyncio

__all__ = (
    "BufferLimitExceeded",
    "BusyResourceError",
    "ClosedResourceError",
    "GreenbridgeError",
    "NoGreenContext",
    "SwitchFinishedError",
    "WouldBlock",
)


class GreenbridgeError(Exception):
    """Root of the errors greenbridge defines itself.

    Network failures use the builtin ``ConnectionError`` family, timeouts the builtin
    ``TimeoutError`` and cancellation ``asyncio.CancelledError``, as users expect.
    """


class NoGreenContext(GreenbridgeError, RuntimeError):
    """A green-only call (``await_from_green`` and everything built on it) was made outside a green
    fiber: from a coroutine, a loop callback, another thread, or after the loop finished.

    The message says what to do instead.
    """


class ClosedResourceError(GreenbridgeError):
    """*Your* code closed this resource (a flow, a stream, a listener) and then used it again."""


class SwitchFinishedError(GreenbridgeError, RuntimeError):
    """A ``Switch`` was used after its block exited (or after it failed and stopped accepting
    work)."""


class BufferLimitExceeded(GreenbridgeError, ValueError):
    """A ``BufReader`` would have to buffer more than its ``max_size`` to satisfy the request:
    the guard against untrusted input that never ends a line."""


class BusyResourceError(GreenbridgeError, RuntimeError):
    """Two fibers used one exclusive resource at once: two readers (or two writers) of one
    connection or flow, two fibers accepting on one listener. Each such resource serves one
    fiber at a time; give each fiber its own resource, or serialise them with a ``gb.Mutex``."""


class WouldBlock(GreenbridgeError):
    """A non-blocking variant (``op_nowait``, trio's convention) could not complete at once: the
    blocking ``op`` would have had to wait. Raised by ``Stream.take_nowait`` / ``add_nowait``,
    ``Mutex.lock_nowait`` and ``Semaphore.acquire_nowait``; call the blocking variant from green
    code to wait instead."""


class _StreamEmpty(WouldBlock, asyncio.QueueEmpty):
    """``Stream.take_nowait`` on an empty stream: a ``WouldBlock`` that is also the
    ``asyncio.QueueEmpty`` it raised before ``WouldBlock`` existed, so older ``except`` clauses
    still catch it."""


class _StreamFull(WouldBlock, asyncio.QueueFull):
    """``Stream.add_nowait`` on a full stream: a ``WouldBlock`` that is also the
    ``asyncio.QueueFull`` it raised before ``WouldBlock`` existed, so older ``except`` clauses
    still catch it."""
