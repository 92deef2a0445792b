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
    """Held by at most one fiber at a time; see the module docstring."""

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        # Invariant: _busy is True exactly while some fiber's operation holds the slot.
        self._busy = False
        self._message = message

    def acquire(self) -> None:
        """Take the slot. Never suspends. Raises ``BusyResourceError`` when another fiber
        holds it."""
        if self._busy:
            raise BusyResourceError(self._message)
        self._busy = True

    def release(self) -> None:
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self._busy = False
