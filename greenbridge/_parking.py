"""The one fair wait queue: fibers park in FIFO order and are handed what they wait for.

Every blocking primitive (``Promise``, ``Stream``, ``Mutex``, ``Semaphore``, ``Condition``,
``Event``), the connection drainers and ``run_server``'s slots wait here (trio's ``ParkingLot``
is the model). A lot owns the three things each of them used to write by hand:

1. **Order.** Fibers are served first come, first served: ``unpark`` wakes the oldest parked
   fiber that can still take a value, ``unpark_all`` every one of them in parking order.
2. **Hand-off.** The waker hands the value (the item, the permit, the lock) in the same step as
   the wake-up, so a newcomer cannot overtake a woken fiber.
3. **Clean-up on cancellation, value never lost.** A fiber cancelled while parked leaves the
   queue; one cancelled after a value was handed to it (the cancellation raced with the wake-up)
   gives the value back through the ``give_back`` it parked with -- the permit to the next
   fiber, the item to the head of the stream -- before ``CancelledError`` is raised. A fiber
   being cancelled is never handed a value at all (``Waiter.wake`` refuses it; see rule 5 of
   ``_control``), so ``unpark`` moves on to the next one.

A parked fiber may carry ``data`` (a blocked ``Stream.add`` carries its item); ``pop`` hands the
oldest live entry to a waker that must read the data before deciding what to hand over.

Not thread-safe, like every primitive: park from green code, unpark from the loop's thread.

Where a lot is not used, on purpose: a connection's reader and writer, a listener's acceptor and
a datagram endpoint's receiver are one fiber at a time by construction (``_exclusive``: a second
one gets ``BusyResourceError`` instead of queueing), and are woken in batches from protocol
callbacks (``_wake_batch``). A queue of at most one adds nothing there but a deque per
connection and a step on the hot path, so each keeps a single ``Waiter`` slot. ``run_server``'s
connection slots are a ``Semaphore``, hence a lot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ._waiter import Waiter

__all__ = ("ParkingLot", "Parked")


class Parked:
    """One parked fiber: its ``Waiter`` and the ``data`` it parked with."""

    __slots__ = ("data", "waiter")

    # No __init__: ``ParkingLot.park``, which alone makes entries, sets both slots itself (a
    # Python frame less for every parked fiber).
    waiter: Waiter
    data: Any

    def wake(self, value: Any = None) -> bool:
        """Hand ``value`` to the fiber; False when it cannot take it (cancelled meanwhile): the
        caller keeps the value. May run the fiber before returning."""
        return self.waiter.wake(value)


class ParkingLot:
    """A FIFO of parked fibers. See the module docstring for the rules."""

    __slots__ = ("_parked",)

    def __init__(self) -> None:
        # Invariant: every entry's fiber is parked in ``park`` or is being cancelled there (it
        # removes itself on the way out unless a waker popped it first).
        self._parked: deque[Parked] = deque()

    def __len__(self) -> int:
        """The number of parked fibers (some may be on their way out, cancelled)."""
        return len(self._parked)

    def __bool__(self) -> bool:
        return bool(self._parked)

    def __iter__(self) -> Iterator[Parked]:
        return iter(self._parked)

    def park(
        self,
        data: Any = None,
        give_back: Callable[[Any], None] | None = None,
        parked: Callable[[], object] | None = None,
    ) -> Any:
        """Wait, in FIFO order, until a waker hands a value; return it.

        ``parked()``, when given, runs once the fiber is in the queue and before it suspends
        (``Condition.wait`` releases its mutex there, so no notification slips in between).

        A suspension point: cancelled while parked, the fiber leaves the lot; cancelled after a
        value was handed to it, ``give_back(value)`` is called first (when given). Either way the
        ``CancelledError`` (or whatever was thrown in) is re-raised. Raises ``NoGreenContext``
        outside green code, and what ``parked()`` raises (the fiber is then not parked).
        """
        entry = Parked()
        entry.waiter = Waiter()
        entry.data = data
        self._parked.append(entry)
        try:
            if parked is not None:
                parked()
        except BaseException:
            self._discard(entry)
            raise
        try:
            return entry.waiter.wait()
        except BaseException:
            handed, value = entry.waiter.take_back()
            if handed:
                if give_back is not None:
                    give_back(value)
            else:
                self._discard(entry)
            raise

    def pop(self) -> Parked | None:
        """Remove and return the oldest entry, or None; the caller must ``wake`` it or hand on
        what it carries (a cancelled entry's ``wake`` returns False)."""
        parked = self._parked
        return parked.popleft() if parked else None

    def unpark(self, value: Any = None) -> bool:
        """Hand ``value`` to the oldest fiber that can take it; False when none could (the caller
        keeps the value). Never suspends; may run the woken fiber before returning."""
        parked = self._parked
        while parked:
            if parked.popleft().waiter.wake(value):
                return True
        return False

    def unpark_all(self, value: Any = None) -> int:
        """Wake every parked fiber with ``value``, in parking order; return how many took it.
        Fibers parking meanwhile (woken ones may run at once) wait for the next call."""
        parked, self._parked = self._parked, deque()
        woken = 0
        for entry in parked:
            woken += entry.waiter.wake(value)
        return woken

    def check_waker(self) -> None:
        """Raise ``RuntimeError`` now, changing nothing, when waking the oldest parked fiber from
        here would cross threads (see ``Waiter.check_waker``)."""
        if self._parked:
            self._parked[0].waiter.check_waker()

    def _discard(self, entry: Parked) -> None:
        try:
            self._parked.remove(entry)  # entries compare by identity
        except ValueError:
            pass  # already popped by a waker whose wake() it refused
