"""One exclusive slot: the single place that detects two fibers using one resource at once.

A connection has one reading slot and one writing slot, a listener one accepting slot. A fiber
takes the slot for the duration of its operation (``acquire`` / ``release``, or ``with slot:``);
a second fiber arriving meanwhile gets ``BusyResourceError`` at once, and the first one's
operation is not disturbed (trio's ``ConflictDetector`` is the model).
"""

from __future__ import annotations

import types

from ._errors import BusyResourceError

__all__ = ("ExclusiveSlot",)


class ExclusiveSlot:
    """Held by at most one fiber at a time; see the module docstring.

    ``busy`` is True exactly while some fiber's operation holds the slot. A hot path (a
    connection's read and write) takes the slot inline, for the price of two attribute writes::

        if slot.busy:
            slot.acquire()  # raises BusyResourceError
        slot.busy = True
        try:
            ...
        finally:
            slot.busy = False
    """

    __slots__ = ("_message", "busy")

    def __init__(self, message: str) -> None:
        self.busy = False
        self._message = message

    def acquire(self) -> None:
        """Take the slot. Never suspends. Raises ``BusyResourceError`` when another fiber
        holds it."""
        if self.busy:
            raise BusyResourceError(self._message)
        self.busy = True

    def release(self) -> None:
        self.busy = False

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.busy = False
