"""Cooperative ``select.select``, ``select.poll``, the ``selectors`` and ``time.sleep``.

The readiness calls follow one pattern: ask the original with a zero timeout (it never blocks);
if nothing is ready and the caller is willing to wait, park the fiber on the loop until one of the
descriptors is ready or the timeout runs out (``wait_fds``), and ask again. Exceptional conditions
(``select``'s third list, ``POLLPRI``) cannot be watched through the loop: they are seen whenever
the call looks again, and at its deadline. ``time.sleep`` in a fiber is ``gb.sleep``.
"""

from __future__ import annotations

import math
import select
import selectors
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .._time import sleep as green_sleep
from ._patch import Attribute, Patch
from ._wait import READ, WRITE, green_loop, wait_fds

__all__ = ("patches",)

T = TypeVar("T")

_orig_select = select.select
_orig_poll = select.poll
_orig_sleep = time.sleep


def _fd(obj: Any) -> int:
    if isinstance(obj, int):
        return obj
    fd = obj.fileno()
    if not isinstance(fd, int):
        raise TypeError("fileno() returned a non-integer")
    return fd


def _deadline_of(loop: Any, timeout: float | None) -> float | None:
    return None if timeout is None else loop.time() + timeout


def select_(
    rlist: Iterable[Any], wlist: Iterable[Any], xlist: Iterable[Any], timeout: float | None = None, /
) -> tuple[list[Any], list[Any], list[Any]]:
    loop = green_loop()
    if loop is None or (timeout is not None and timeout <= 0):
        return _orig_select(rlist, wlist, xlist, timeout)
    rlist, wlist, xlist = list(rlist), list(wlist), list(xlist)
    deadline = _deadline_of(loop, timeout)
    while True:
        ready = _orig_select(rlist, wlist, xlist, 0)
        if any(ready):
            return ready
        waits = [(_fd(obj), READ) for obj in rlist] + [(_fd(obj), WRITE) for obj in wlist]
        if not wait_fds(loop, waits, deadline):
            return _orig_select(rlist, wlist, xlist, 0)


class GreenPoll:
    """A ``select.poll`` object made inside a green fiber: the same methods; ``poll()`` parks the
    fiber instead of blocking when called from one, and is the original anywhere else."""

    __slots__ = ("_events", "_poll")

    def __init__(self) -> None:
        self._poll = _orig_poll()
        self._events: dict[int, int] = {}

    def register(self, fd: Any, eventmask: int = select.POLLIN | select.POLLPRI | select.POLLOUT, /) -> None:
        self._poll.register(fd, eventmask)
        self._events[_fd(fd)] = eventmask

    def modify(self, fd: Any, eventmask: int, /) -> None:
        self._poll.modify(fd, eventmask)
        self._events[_fd(fd)] = eventmask

    def unregister(self, fd: Any, /) -> None:
        self._poll.unregister(fd)
        del self._events[_fd(fd)]

    def poll(self, timeout: float | None = None, /) -> list[tuple[int, int]]:
        loop = green_loop()
        if loop is None or (timeout is not None and timeout == 0):
            return self._poll.poll(timeout)
        seconds = None if timeout is None or timeout < 0 else timeout / 1000  # poll() counts in ms
        deadline = _deadline_of(loop, seconds)
        while True:
            ready = self._poll.poll(0)
            if ready:
                return ready
            waits = []
            for fd, mask in self._events.items():
                if mask & (select.POLLIN | select.POLLPRI):
                    waits.append((fd, READ))
                if mask & select.POLLOUT:
                    waits.append((fd, WRITE))
            if not wait_fds(loop, waits, deadline):
                return self._poll.poll(0)


def poll() -> Any:
    if green_loop() is None:
        return _orig_poll()
    return GreenPoll()


def _selector_select(original: Callable[..., T]) -> Callable[..., T]:
    def select(self: selectors.BaseSelector, timeout: float | None = None) -> T:
        loop = green_loop()
        if loop is None or (timeout is not None and timeout <= 0):
            return original(self, timeout)
        deadline = _deadline_of(loop, timeout)
        while True:
            ready = original(self, 0)
            if ready:
                return ready
            waits = []
            for key in self.get_map().values():
                if key.events & selectors.EVENT_READ:
                    waits.append((key.fd, READ))
                if key.events & selectors.EVENT_WRITE:
                    waits.append((key.fd, WRITE))
            if not wait_fds(loop, waits, deadline):
                return original(self, 0)

    select.__name__ = "select"
    select.__qualname__ = f"{original.__qualname__}"
    select.__doc__ = original.__doc__
    return select


def sleep(seconds: float, /) -> None:
    if green_loop() is None:
        return _orig_sleep(seconds)
    if isinstance(seconds, (str, bytes, bytearray)) or not hasattr(type(seconds), "__float__"):
        raise TypeError(f"'{type(seconds).__name__}' object cannot be interpreted as an integer")
    value = float(seconds)
    if math.isnan(value):
        raise ValueError("Invalid value NaN (not a number)")
    if value < 0:
        raise ValueError("sleep length must be non-negative")
    green_sleep(value)
    return None


def patches() -> list[Patch]:
    """The patches of select, poll, every selector class and time.sleep."""
    found: list[Patch] = [
        Attribute(select, "select", select_),
        Attribute(select, "poll", poll),
        Attribute(time, "sleep", sleep),
    ]
    # Each class that defines select() itself: SelectSelector, _PollLikeSelector (under poll,
    # epoll and devpoll), KqueueSelector -- whichever this platform has.
    for cls in vars(selectors).values():
        if (
            isinstance(cls, type)
            and issubclass(cls, selectors.BaseSelector)
            and cls is not selectors.BaseSelector
            and "select" in cls.__dict__
        ):
            found.append(Attribute(cls, "select", _selector_select(cls.__dict__["select"])))
    return found
