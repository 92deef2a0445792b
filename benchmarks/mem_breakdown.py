"""Where the memory of an idle fiber goes: RSS, tracemalloc sites and object types per fiber.

For N fibers (or greenlets, or Tasks) that each wait on one shared event, every measurement in a
fresh subprocess:

* ``rss``: resident-set growth per fiber once all N are parked (as ``bench_fibers.py``);
* ``traced``: what tracemalloc sees allocated per fiber (a separate run: tracing costs memory of
  its own), with the top allocation sites; the rest of the RSS growth is memory allocated outside
  Python's allocators -- CPython 3.11+'s frame data-stack chunks (``_PyObject_VirtualAlloc``:
  mmap, or with greenbridge's accelerator a slab of chunks) of each greenlet -- plus
  page-granularity slack;
* ``types``: the gc-tracked objects alive per fiber, by type, with ``sys.getsizeof`` bytes
  (objects not tracked by the gc -- strings, ints -- are not counted there);
* ``stack``: greenlet's saved C stack per parked greenlet (``_stack_saved``), for the modes with
  greenlets.

Modes: ``greenbridge`` (``Switch.fork`` + ``gb.Event``), ``greenlet`` (a bare greenlet switched
out at the same Python depth as a parked fiber, no loop), ``asyncio`` (a Task waiting on an
``asyncio.Event``), ``gevent`` (``gevent.spawn`` + ``gevent.event.Event``; run with a Python that
has gevent).

    python benchmarks/mem_breakdown.py [--sizes 10000,100000] [--modes greenbridge,greenlet,asyncio]

A benchmark, not a test: it never fails on a figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

MODES = ("greenbridge", "greenlet", "asyncio", "gevent")


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Probe:
    """What is measured once all N are parked; ``how`` is rss, traced or types."""

    def __init__(self, n: int, how: str) -> None:
        self.n = n
        self.how = how
        self.parked = 0
        self.result: dict[str, Any] = {}
        gc.collect()
        if how == "traced":
            import tracemalloc

            tracemalloc.start(1)
            self.before = tracemalloc.take_snapshot()
        elif how == "types":
            self.types_before = Counter(type(o).__name__ for o in gc.get_objects())
        self.baseline = _rss()

    def measure(self, glets: Callable[[], list[Any]] | None = None) -> None:
        n = self.n
        if self.how == "rss":
            self.result["rss"] = (_rss() - self.baseline) / n
            if glets is not None:
                found = glets()
                self.result["stack"] = sum(g._stack_saved for g in found) / max(len(found), 1)
                self.result["greenlets"] = len(found) / n
        elif self.how == "traced":
            import tracemalloc

            after = tracemalloc.take_snapshot()
            stats = after.compare_to(self.before, "lineno")
            total = sum(s.size_diff for s in stats)
            self.result["traced"] = total / n
            self.result["sites"] = [
                (f"{os.path.basename(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                 s.size_diff / n, s.count_diff / n)
                for s in stats[:15]
                if s.size_diff / n >= 4
            ]
            tracemalloc.stop()
        else:
            objs = gc.get_objects()
            counts: Counter[str] = Counter()
            sizes: Counter[str] = Counter()
            for o in objs:
                name = type(o).__name__
                counts[name] += 1
                sizes[name] += sys.getsizeof(o)
            rows = []
            for name, count in counts.items():
                extra = count - self.types_before.get(name, 0)
                if extra >= n // 2:
                    rows.append((name, extra / n, sizes[name] / counts[name] * extra / n))
            rows.sort(key=lambda row: -row[2])
            self.result["types"] = rows


def _fibers_of(cls: type) -> Callable[[], list[Any]]:
    return lambda: [o for o in gc.get_objects() if isinstance(o, cls) and o and not o.dead]


def _greenbridge(n: int, how: str) -> dict[str, Any]:
    import greenbridge as gb
    from greenbridge import fiber
    from greenbridge._control import _Fiber

    def main() -> dict[str, Any]:
        event = gb.Event()
        probe = Probe(n, how)

        def waiter() -> None:
            probe.parked += 1
            event.wait()

        with gb.Switch() as sw:
            for _ in range(n):
                sw.fork(waiter)
            while probe.parked < n:
                fiber.yield_()
            probe.measure(_fibers_of(_Fiber))
            event.set()
        return probe.result

    return gb.run(main)


def _greenlet(n: int, how: str) -> dict[str, Any]:
    """Bare greenlets parked at a parked fiber's Python depth and C nesting: the run function
    calls through ``f(*args)`` twice (each a C-level call on 3.11, as in ``_fiber_main`` and
    ``Switch._run_child``), then five plain Python calls down to ``parent.switch()``."""
    from greenlet import getcurrent, greenlet

    main_glet = getcurrent()

    def d5() -> None:
        main_glet.switch()

    def d4() -> None:
        d5()

    def d3() -> None:
        d4()

    def d2() -> None:
        d3()

    def d1() -> None:
        d2()

    def c2(*args: Any) -> None:
        d1(*args)

    def c1(*args: Any) -> None:
        c2(*args)

    probe = Probe(n, how)
    glets = [greenlet(c1) for _ in range(n)]
    for glet in glets:
        glet.switch()
    probe.measure(lambda: glets)
    for glet in glets:
        glet.switch()
    return probe.result


def _asyncio(n: int, how: str) -> dict[str, Any]:
    import asyncio

    async def main() -> dict[str, Any]:
        event = asyncio.Event()
        probe = Probe(n, how)

        async def waiter() -> None:
            probe.parked += 1
            await event.wait()

        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(waiter())
            while probe.parked < n:
                await asyncio.sleep(0)
            probe.measure()
            event.set()
        return probe.result

    return asyncio.run(main())


def _gevent(n: int, how: str) -> dict[str, Any]:
    import gevent
    import gevent.event

    event = gevent.event.Event()
    probe = Probe(n, how)

    def waiter() -> None:
        probe.parked += 1
        event.wait()

    glets = [gevent.spawn(waiter) for _ in range(n)]
    while probe.parked < n:
        gevent.sleep(0)
    probe.measure(lambda: glets)
    event.set()
    gevent.joinall(glets)
    return probe.result


_RUNNERS = {"greenbridge": _greenbridge, "greenlet": _greenlet, "asyncio": _asyncio, "gevent": _gevent}


def _child(mode: str, n: int, how: str) -> None:
    print(json.dumps(_RUNNERS[mode](n, how)))


def _measure(python: str, mode: str, n: int, how: str) -> dict[str, Any]:
    out = subprocess.run(
        [python, __file__, "--child", mode, str(n), how],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--modes", default="greenbridge,greenlet,asyncio")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the children")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, n, how = args.child
        _child(mode, int(n), how)
        return
    for n in (int(s) for s in args.sizes.split(",")):
        for mode in args.modes.split(","):
            res: dict[str, Any] = {}
            for how in ("rss", "traced", "types"):
                res.update(_measure(args.python, mode, n, how))
            line = f"N={n:,} {mode}: rss {res['rss']:,.0f} B, traced {res['traced']:,.0f} B"
            if "stack" in res:
                line += f", saved C stack {res['stack']:,.0f} B ({res['greenlets']:.2f} greenlets/fiber)"
            print(line + f", untraced {res['rss'] - res['traced']:,.0f} B")
            for site, size, count in res["sites"]:
                print(f"    site {site:<28} {size:8,.1f} B  {count:5.2f} blocks")
            for name, count, size in res["types"]:
                print(f"    type {name:<28} {size:8,.1f} B  {count:5.2f} objects")


if __name__ == "__main__":
    main()
