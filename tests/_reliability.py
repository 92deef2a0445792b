"""Shared machinery for the reliability campaign (issue 6): hypothesis profiles and leak probes.

Profiles
--------
The property and fuzz tests take their settings from ``hypothesis_settings(ci_examples)``:

* ``greenbridge-ci`` (the default): derandomized (a fixed seed per test), ``ci_examples``
  examples, no example database -- the same inputs on every CI run, bounded in time.
* ``long`` (``HYPOTHESIS_PROFILE=long pytest tests/test_properties.py``): random seeds and 50x
  the examples, for a hand run before a release. Failures print a reproduction blob.

The profile is chosen here rather than with ``settings.load_profile`` so that it only applies to
these tests, not to every hypothesis test in the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from greenlet import greenlet
from hypothesis import HealthCheck, settings

from greenbridge._core import _live_fibers, _loop_factory

PROFILE_ENV = "HYPOTHESIS_PROFILE"
LONG_FACTOR = 50

_COMMON = dict(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
settings.register_profile("greenbridge-ci", derandomize=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("long", derandomize=False, **_COMMON)  # type: ignore[arg-type]


def profile_name() -> str:
    name = os.environ.get(PROFILE_ENV, "greenbridge-ci")
    return name if name in ("greenbridge-ci", "long") else "greenbridge-ci"


def hypothesis_settings(ci_examples: int) -> settings:
    """The settings for one property: ``ci_examples`` in CI, ``LONG_FACTOR`` times more by hand."""
    name = profile_name()
    examples = ci_examples * LONG_FACTOR if name == "long" else ci_examples
    return settings(settings.get_profile(name), max_examples=examples)


@functools.cache
def warm_up(backend: str) -> None:
    """Run one empty loop of ``backend`` once per process: uvloop (libuv) opens a process-wide
    pipe pair with its first loop and keeps it, which is not a leak of the run being measured."""
    with asyncio.Runner(loop_factory=_loop_factory(backend)) as runner:
        runner.run(asyncio.sleep(0))


def open_fds() -> int:
    """How many file descriptors this process holds (the listing's own descriptor included,
    which is the same one before and after)."""
    return len(os.listdir("/proc/self/fd"))


def live_greenlets() -> list[greenlet]:
    """Greenlets that are started and not dead, except this thread's main greenlet.

    Deliberately no ``gc.collect()`` first: an unreachable but suspended greenlet is a leak even
    though the collector would kill it later (by throwing ``GreenletExit`` into it, i.e. running
    its ``finally`` blocks outside any event loop).
    """
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, greenlet) and obj.parent is not None and bool(obj) and not obj.dead
    ]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Report:
    """What went wrong around one run; ``problems()`` is empty when nothing leaked."""

    fds_before: int = 0
    fds_after: int = 0
    greenlets: list[greenlet] = field(default_factory=list)
    fibers: list[greenlet] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        if self.fds_after != self.fds_before:
            out.append(f"file descriptors: {self.fds_before} before, {self.fds_after} after")
        if self.greenlets:
            out.append(f"{len(self.greenlets)} greenlet(s) left alive: {self.greenlets!r}")
        if self.fibers:
            out.append(f"{len(self.fibers)} green fiber(s) left running: {self.fibers!r}")
        out.extend(f"asyncio logged: {line}" for line in self.log)
        out.extend(f"warning: {line}" for line in self.warnings)
        return out


@contextlib.contextmanager
def watch(backend: str, *, greenlets: bool = True) -> Iterator[Report]:
    """Record descriptors, warnings, asyncio log records (WARNING and up) and surviving
    greenlets and fibers around the body. Check ``report.problems()`` after the block.

    ``backend`` is warmed up first (see ``warm_up``). ``greenlets=False`` skips the greenlet
    census (for runs that legitimately keep pooled idle fibers, i.e. those not started through
    ``gb.run``); live fibers are always checked.
    """
    warm_up(backend)
    report = Report(fds_before=open_fds())
    handler = _Collect()
    logger = logging.getLogger("asyncio")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield report
            finally:
                if greenlets:
                    report.greenlets = live_greenlets()
                report.fibers = _live_fibers()
                # Finalizers of anything the run dropped ("never awaited", "Task was destroyed
                # but it is pending") fire here, inside the capture.
                gc.collect()
        report.warnings = [f"{w.category.__name__}: {w.message}" for w in caught]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        report.fds_after = open_fds()
    report.log = [record.getMessage().splitlines()[0] for record in handler.records]


def after_hops(hops: int, action: Callable[[], object]) -> Callable[[], None]:
    """Call ``action`` from a loop callback ``hops`` loop iterations from now, unless the
    returned ``stop()`` ran first: a deterministic "later" for the random programs."""
    loop = asyncio.get_running_loop()
    alive = True

    def hop(left: int) -> None:
        if not alive:
            return
        if left:
            loop.call_soon(hop, left - 1)
        else:
            action()

    def stop() -> None:
        nonlocal alive
        alive = False

    loop.call_soon(hop, hops)
    return stop
