"""Testing helpers: a virtual clock that makes timeouts instant and exact.

::

    from greenbridge import testing

    def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            gb.with_timeout(30, gb.sleep, 3600)
        assert loop.time() == 30.0          # exact, and no real time passed

    with testing.virtual_clock() as clock:
        gb.run(main)                          # or asyncio.run(...), asyncio.Runner()

The loop's clock (``loop.time()``, hence ``call_later``, ``gb.sleep``, ``gb.timeout``,
``asyncio.sleep``, ``asyncio.timeout``) is virtual: it starts at ``start`` and stands still while
anything is ready to run. When every fiber and Task is blocked and only timers are pending, it
jumps straight to the next timer -- at once, or after ``autojump_threshold`` real seconds
without I/O, for tests that also wait for real sockets or threads (as trio's ``MockClock``).

The virtual loop is asyncio's own selector loop with a different clock: uvloop keeps its timers
inside libuv, on the real clock, so ``gb.run(..., backend="uvloop")`` ignores the virtual clock.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ("VirtualClock", "VirtualClockLoop", "virtual_clock")


class VirtualClock:
    """A virtual time source for event loops; see the module docstring.

    ``clock.new_event_loop`` is a loop factory (``asyncio.Runner(loop_factory=...)``); every
    loop it makes shares this clock.
    """

    __slots__ = ("_autojump_threshold", "_now")

    def __init__(self, start: float = 0.0, *, autojump_threshold: float = 0.0) -> None:
        if not (math.isfinite(autojump_threshold) and autojump_threshold >= 0):
            raise ValueError(f"autojump_threshold must be a finite number >= 0, got {autojump_threshold!r}")
        self._now = float(start)
        self._autojump_threshold = autojump_threshold

    def __repr__(self) -> str:
        return f"<VirtualClock now={self._now!r}>"

    def time(self) -> float:
        """The current virtual time, as ``loop.time()`` reports it."""
        return self._now

    def jump(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (timers now due run at the loop's next
        iteration). Raises ``ValueError`` for a negative value: time never goes back."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back in time (jump by {seconds!r})")
        self._now += seconds

    def new_event_loop(self) -> VirtualClockLoop:
        """A new event loop on this clock."""
        return VirtualClockLoop(self)


class _AutojumpSelector(selectors.BaseSelector):
    """The loop's selector, wrapped: a select that would block until the next timer first polls
    for I/O (for ``autojump_threshold`` real seconds), then advances the virtual clock to that
    timer instead of sleeping."""

    def __init__(self, loop: VirtualClockLoop, selector: selectors.BaseSelector) -> None:
        self._loop = loop
        self._selector = selector

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            # Nothing scheduled (wait for I/O for real, as a frozen clock must), or work ready.
            return self._selector.select(timeout)
        clock = self._loop._clock
        events = self._selector.select(min(timeout, clock._autojump_threshold))
        if not events:
            self._loop._advance(timeout)
        return events

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._selector.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._selector.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._selector.modify(fileobj, events, data)

    def close(self) -> None:
        self._selector.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._selector.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._selector.get_map()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """asyncio's selector event loop whose ``time()`` is a ``VirtualClock``."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        super().__init__(_AutojumpSelector(self, selectors.DefaultSelector()))

    def time(self) -> float:
        return self._clock._now

    def _advance(self, timeout: float) -> None:
        """Nothing is ready and no I/O came: move the clock to the next timer, exactly."""
        clock = self._clock
        target = clock._now + timeout
        # The loop computed ``timeout`` from the earliest live timer; land on its deadline
        # itself rather than on ``now + (when - now)``, which may differ in the last bit.
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if scheduled and scheduled[0].when() <= target:
            target = scheduled[0].when()
        clock._now = max(clock._now, target)


@contextmanager
def virtual_clock(start: float = 0.0, *, autojump_threshold: float = 0.0) -> Iterator[VirtualClock]:
    """Within the block, new event loops -- ``gb.run(fn)`` with the default ``backend="asyncio"``,
    ``asyncio.run``, ``asyncio.Runner()``, ``asyncio.new_event_loop()`` and the
    ``run_green``/``run_async`` test fixtures on the asyncio backend -- run on a
    ``VirtualClock`` (yielded). Does not suspend. Restores the previous loop factory on exit.
    Raises ``ValueError`` for a negative or infinite ``autojump_threshold``.

    It swaps ``asyncio``'s own ``new_event_loop`` for the block rather than setting an event
    loop policy: Python 3.14 deprecates the policy API (and 3.16 removes it), while
    ``asyncio.Runner`` -- hence ``asyncio.run`` and ``gb.run`` -- makes its loop with
    ``asyncio.events.new_event_loop()`` on every version from 3.11 on.
    """
    clock = VirtualClock(start, autojump_threshold=autojump_threshold)
    previous = (asyncio.events.new_event_loop, asyncio.new_event_loop)
    asyncio.events.new_event_loop = asyncio.new_event_loop = clock.new_event_loop
    try:
        yield clock
    finally:
        asyncio.events.new_event_loop, asyncio.new_event_loop = previous
