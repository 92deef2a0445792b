"""The cost of a fiber: greenbridge's Switch beside asyncio Tasks and gevent greenlets.

Two measures, for N = 1k, 10k, 100k, each in a fresh subprocess per round so that one run's
heap does not flatter the next:

  time    fork N fibers that each sleep once (a real timer, 0.1 ms), wait for all of them;
          wall time per fiber (us), median of the rounds
  memory  fork N fibers that each park on an event (idle), then read the process RSS; growth
          per idle fiber (bytes), median of the rounds

Contenders: greenbridge (``gb.Switch`` + ``sw.fork(gb.sleep, ...)`` / ``gb.Event``), asyncio
(``TaskGroup`` + ``asyncio.sleep`` / ``asyncio.Event``), gevent (``gevent.spawn`` +
``gevent.sleep`` / ``gevent.event.Event``, skipped with a note when not installed). Ratios:
greenbridge time / asyncio time, greenbridge memory / gevent memory.

    python benchmarks/bench_fibers.py [--sizes 1000,10000,100000] [--rounds 5] [--loop asyncio]
    python benchmarks/bench_fibers.py --json results.json

A benchmark, not a test: it never fails on a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

DELAY = 0.0001  # each fiber's one sleep: a real timer, short enough not to dominate

IMPLS = ("greenbridge", "asyncio", "gevent")


def _rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the contenders, each run inside a child process ----------------------------------------------


def _greenbridge(mode: str, n: int, loop: str) -> float:
    import greenbridge as gb

    def timed() -> float:
        started = time.perf_counter()
        with gb.Switch() as sw:
            for _ in range(n):
                sw.fork(gb.sleep, DELAY)
        return time.perf_counter() - started

    def memory() -> float:
        event = gb.Event()
        before = _rss()
        with gb.Switch() as sw:
            for _ in range(n):
                sw.fork(event.wait)
            gb.sleep(0)  # every fiber runs to its wait
            after = _rss()
            event.set()
        return (after - before) / n

    return gb.run(timed if mode == "time" else memory, backend=loop)


def _asyncio(mode: str, n: int, loop: str) -> float:
    import asyncio

    async def timed() -> float:
        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(asyncio.sleep(DELAY))
        return time.perf_counter() - started

    async def memory() -> float:
        event = asyncio.Event()
        before = _rss()
        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(event.wait())
            await asyncio.sleep(0)
            after = _rss()
            event.set()
        return (after - before) / n

    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(timed() if mode == "time" else memory())


def _gevent(mode: str, n: int, loop: str) -> float:
    import gevent
    import gevent.event

    if mode == "time":
        started = time.perf_counter()
        gevent.joinall([gevent.spawn(gevent.sleep, DELAY) for _ in range(n)])
        return time.perf_counter() - started
    event = gevent.event.Event()
    before = _rss()
    greenlets = [gevent.spawn(event.wait) for _ in range(n)]
    gevent.sleep(0)
    after = _rss()
    event.set()
    gevent.joinall(greenlets)
    return (after - before) / n


_RUNNERS: dict[str, Callable[[str, int, str], float]] = {
    "greenbridge": _greenbridge,
    "asyncio": _asyncio,
    "gevent": _gevent,
}


def _child(impl: str, mode: str, n: int, loop: str) -> None:
    print(json.dumps(_RUNNERS[impl](mode, n, loop)))


# -- the parent: rounds, medians, the table -------------------------------------------------------


def _measure(impl: str, mode: str, n: int, loop: str) -> float | str:
    command = [sys.executable, __file__, "--child", impl, mode, str(n), loop]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return f"skipped: {last}"
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, mode, n, loop = args.child
        _child(impl, mode, int(n), loop)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"loop": args.loop, "delay": DELAY, "rounds": args.rounds, "figures": {}}
    print(f"fibers that each sleep once ({DELAY * 1e3:g} ms), loop={args.loop}, "
          f"median of {args.rounds} rounds, one subprocess per round")
    header = ("N", "impl", "time/fiber", "vs asyncio", "mem/idle fiber", "vs gevent")
    print("{:>7} {:<12} {:>12} {:>11} {:>15} {:>10}".format(*header))
    for n in sizes:
        row: dict[str, dict[str, float | str]] = {}
        for impl in IMPLS:
            figures: dict[str, float | str] = {}
            for mode in ("time", "memory"):
                samples = [_measure(impl, mode, n, args.loop) for _ in range(args.rounds)]
                numbers = [s for s in samples if isinstance(s, float)]
                figures[mode] = statistics.median(numbers) if numbers else str(samples[0])
            row[impl] = figures
        results["figures"][n] = row
        for impl in IMPLS:
            figures = row[impl]
            t, m = figures["time"], figures["memory"]
            if isinstance(t, str) or isinstance(m, str):
                print(f"{n:>7} {impl:<12} {t if isinstance(t, str) else ''}{m if isinstance(m, str) else ''}")
                continue
            base_t, base_m = row["asyncio"]["time"], row["gevent"]["memory"]
            vs_t = f"{t / base_t:.2f}x" if isinstance(base_t, float) else "-"
            vs_m = f"{m / base_m:.2f}x" if isinstance(base_m, float) and base_m > 0 else "-"
            print(f"{n:>7} {impl:<12} {t / n * 1e6:>9.2f} us {vs_t:>11} {m:>12.0f} B {vs_m:>10}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
