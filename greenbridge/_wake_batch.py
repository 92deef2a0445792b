"""The wake batch: how transport callbacks wake the fibers waiting on them.

A protocol callback (``buffer_updated``, ``datagram_received``, ``connection_lost`` ...) does not
resume a parked fiber itself: it hands the fiber's Waiter to its loop's ``WakeBatch``, which
wakes every Waiter handed to it during one loop iteration from a single ``call_soon`` callback of
its own, in order. That callback runs in the loop greenlet at a shallow C stack, so
``Waiter.wake`` still switches straight into each fiber (no Task step), but the switch is cheap:
greenlet saves and restores the part of the waker's C stack that lies below the fiber's stack
base, and inside a transport callback (uvloop: ``uv_run`` -> ``uv__read`` -> the protocol) that
part is several kilobytes, copied out and back on every resumption.

Rejected design
---------------
Resuming the fiber from inside ``buffer_updated`` (the prototype's choice, DESIGN.md section 2).
Measured with ``benchmarks/bench_echo.py`` (50 connections, 1 KiB ping-pong, server CPU per
round trip, three interleaved runs each): 8.1-8.6 us on uvloop and 8.8-9.0 us on the asyncio
loop, against 7.1-7.2 us and 8.0-8.2 us with the batch -- 10-20% more round trips per second
for the batch. A micro-benchmark pins the cause: the same wake-up costs 1.8 us from a shallow
caller, 2.3 us five C-level calls deeper and 3.4 us twenty deeper.

Every state change happens *before* a waiter is handed to the batch: a batched waiter is resumed
when the loop next runs its ready callbacks, and then finds the state as the callbacks left it.

``PyWakeBatch`` below has a C twin in ``_speedups.c``, which ``WakeBatch`` is whenever the C
``Waiter`` is in use (``_waiter.SPEEDUPS``); it wakes a C Waiter without a method call.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

from . import _waiter
from ._waiter import Waiter

__all__ = ("PyWakeBatch", "WakeBatch", "wake_batch")


class PyWakeBatch:
    """Waiters woken by the transport callbacks of one loop, resumed together, in order, from one
    loop callback of their own: see the module memo."""

    __slots__ = ("_scheduled", "_waiters")

    def __init__(self) -> None:
        # Invariant: _scheduled is True exactly while a flush is scheduled with the loop, and
        # then _waiters is not empty. (No reference to the loop: it keys the batch weakly.)
        self._waiters: list[Waiter] = []
        self._scheduled = False

    def add(self, waiter: Waiter) -> None:
        """Wake ``waiter`` at the loop's next run of its ready callbacks. Called on the loop."""
        self._waiters.append(waiter)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.wake()


if TYPE_CHECKING:
    WakeBatch = PyWakeBatch
else:
    WakeBatch = _waiter._CWakeBatch if _waiter.SPEEDUPS else PyWakeBatch

_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WakeBatch] = weakref.WeakKeyDictionary()


def wake_batch() -> WakeBatch:
    """The running loop's batch (made on first use; it goes with its loop)."""
    loop = asyncio.get_running_loop()
    batch = _batches.get(loop)
    if batch is None:
        batch = _batches[loop] = WakeBatch()
    return batch
