"""The cost of a fiber: greenbridge's Switch beside asyncio Tasks and gevent greenlets.

For N = 1k, 10k, 100k fibers that each wait on one shared Event, every measurement in a fresh
subprocess (so one run's heap does not flatter the next, and the peak RSS is this run's own):

  1. note the process RSS (the baseline), start the clock;
  2. fork N fibers, each running ``waiter()``: count itself as parked, then wait on the Event;
     yield until all N are parked ("spawn": fork + first step + park);
  3. read the RSS again ("idle": growth per parked fiber);
  4. set the Event and wait until every fiber has finished ("wake": wake + finish + join);
  5. read the peak RSS of the process (``ru_maxrss``; "peak": high-water growth per fiber).

Time is wall time per fiber, spawn + wake, with the two phases beside it; memory is bytes per
fiber over the baseline. Medians of ``--rounds`` rounds, interleaved (every contender once per
round).

Contenders: greenbridge (``gb.Switch`` + ``sw.fork`` + ``gb.Event``), asyncio (``TaskGroup`` +
``create_task`` + ``asyncio.Event``), gevent (``gevent.spawn`` + ``gevent.event.Event`` +
``joinall``, on its own hub: the same figures stand in every loop's table; skipped with a note
when not installed). greenbridge and asyncio run on each of ``--loops``.

    python benchmarks/bench_fibers.py [--sizes 1000,10000,100000] [--rounds 3] [--loops asyncio,uvloop]
    python benchmarks/bench_fibers.py --json results.json

A benchmark, not a test: it never fails on a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

IMPLS = ("greenbridge", "asyncio", "gevent")
LOOPS = ("asyncio", "uvloop")
MEASURES = ("time", "spawn", "wake", "idle", "peak")


def _rss() -> int:
    """Resident set size of this process now, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Probe:
    """The clock and the RSS readings of one measurement (steps 1-5 of the module docstring)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parked = 0
        self.baseline = _rss()
        self.started = time.perf_counter()
        self.all_parked = 0.0
        self.idle_rss = 0

    def note_parked(self) -> None:
        self.all_parked = time.perf_counter()
        self.idle_rss = _rss()

    def figures(self) -> dict[str, float]:
        done = time.perf_counter()
        return {
            "time": done - self.started,
            "spawn": self.all_parked - self.started,
            "wake": done - self.all_parked,
            "idle": (self.idle_rss - self.baseline) / self.n,
            # ru_maxrss can lag the RSS just read (the kernel updates its high-water mark lazily)
            "peak": (max(_peak_rss(), self.idle_rss, _rss()) - self.baseline) / self.n,
        }


_MAX_YIELDS = 1000  # a contender that needs more yields than this to park N fibers is broken


def _parked_or_fail(probe: Probe, yields: int) -> bool:
    if yields > _MAX_YIELDS:
        raise RuntimeError(f"only {probe.parked} of {probe.n} fibers parked after {_MAX_YIELDS} yields")
    return probe.parked < probe.n


# -- the contenders, each run inside a child process ----------------------------------------------


def _greenbridge(n: int, loop: str) -> dict[str, float]:
    import greenbridge as gb
    from greenbridge import fiber

    def main() -> dict[str, float]:
        event = gb.Event()
        probe = Probe(n)

        def waiter() -> None:
            probe.parked += 1
            event.wait()

        with gb.Switch() as sw:
            for _ in range(n):
                sw.fork(waiter)
            yields = 0
            while _parked_or_fail(probe, yields):
                fiber.yield_()
                yields += 1
            probe.note_parked()
            event.set()
        return probe.figures()

    return gb.run(main, backend=loop)


def _asyncio(n: int, loop: str) -> dict[str, float]:
    import asyncio

    async def main() -> dict[str, float]:
        event = asyncio.Event()
        probe = Probe(n)

        async def waiter() -> None:
            probe.parked += 1
            await event.wait()

        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(waiter())
            yields = 0
            while _parked_or_fail(probe, yields):
                await asyncio.sleep(0)
                yields += 1
            probe.note_parked()
            event.set()
        return probe.figures()

    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def _gevent(n: int, loop: str) -> dict[str, float]:
    import gevent
    import gevent.event

    gevent.get_hub()  # as gb.run and asyncio.Runner make their loop before the clock starts
    event = gevent.event.Event()
    probe = Probe(n)

    def waiter() -> None:
        probe.parked += 1
        event.wait()

    greenlets = [gevent.spawn(waiter) for _ in range(n)]
    yields = 0
    while _parked_or_fail(probe, yields):
        gevent.sleep(0)
        yields += 1
    probe.note_parked()
    event.set()
    gevent.joinall(greenlets, raise_error=True)
    return probe.figures()


_RUNNERS: dict[str, Callable[[int, str], dict[str, float]]] = {
    "greenbridge": _greenbridge,
    "asyncio": _asyncio,
    "gevent": _gevent,
}


# -- the parent: rounds, medians, the table -------------------------------------------------------


def _measure(impl: str, n: int, loop: str) -> dict[str, float] | str:
    """One measurement in a fresh subprocess: its figures, or why there are none."""
    command = [sys.executable, os.path.abspath(__file__), "--child", impl, str(n), loop]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    except subprocess.TimeoutExpired:
        return "skipped: took over 300 s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return f"skipped: {last}"
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def _contenders(loops: list[str]) -> list[tuple[str, str]]:
    """(impl, loop) pairs; gevent once, on its own hub."""
    pairs = [(impl, loop) for loop in loops for impl in IMPLS if impl != "gevent"]
    return [*pairs, ("gevent", "gevent")]


def run(sizes: list[int], loops: list[str], rounds: int) -> dict[str, Any]:
    """Every contender at every size, ``rounds`` times interleaved; medians per measure."""
    samples: dict[tuple[int, str, str], list[dict[str, float] | str]] = {}
    for round_no in range(rounds):
        for n in sizes:
            for impl, loop in _contenders(loops):
                figures = _measure(impl, n, loop)
                samples.setdefault((n, impl, loop), []).append(figures)
                shown = figures if isinstance(figures, str) else (
                    f"{figures['time'] / n * 1e6:7.2f} us/fiber, {figures['idle']:8,.0f} B idle, "
                    f"{figures['peak']:8,.0f} B peak"
                )
                print(f"round {round_no + 1}: N={n:>7,} {impl:>11} on {loop:>7}: {shown}", file=sys.stderr)
    table: dict[str, dict[str, dict[str, dict[str, float | str]]]] = {}
    for loop in loops:
        for n in sizes:
            row = table.setdefault(loop, {}).setdefault(str(n), {})
            for impl in IMPLS:
                got = samples[(n, impl, "gevent" if impl == "gevent" else loop)]
                numbers = [s for s in got if not isinstance(s, str)]
                if not numbers:
                    row[impl] = {measure: str(got[0]) for measure in MEASURES}
                    continue
                row[impl] = {m: statistics.median(s[m] for s in numbers) for m in MEASURES}
    return {"rounds": rounds, "sizes": sizes, "loops": loops, "figures": table}


def _print_table(results: dict[str, Any]) -> None:
    print(
        f"N fibers each waiting on one Event; medians of {results['rounds']} rounds, one subprocess "
        "per measurement; ratios: greenbridge / the peer"
    )
    print("{:>8} {:>8} {:<12} {:>11} {:>11} {:>11} {:>10} {:>10}".format(
        "loop", "N", "impl", "us/fiber", "idle B", "peak B", "vs asyncio", "vs gevent"
    ))  # fmt: skip
    for loop, by_n in results["figures"].items():
        for n, row in by_n.items():
            ours = row["greenbridge"]
            for impl, f in row.items():
                if isinstance(f["time"], str):
                    print(f"{loop:>8} {int(n):>8,} {impl:<12} {f['time']}")
                    continue
                ratios = ["", ""]
                for i, peer in enumerate(("asyncio", "gevent") if impl == "greenbridge" else ()):
                    theirs = row[peer]
                    ok = not isinstance(ours["time"], str) and not isinstance(theirs["time"], str)
                    ratios[i] = f"{ours['time'] / theirs['time']:.2f}x" if ok else "-"
                print(
                    f"{loop:>8} {int(n):>8,} {impl:<12} {f['time'] / int(n) * 1e6:>11.2f} "
                    f"{f['idle']:>11,.0f} {f['peak']:>11,.0f} {ratios[0]:>10} {ratios[1]:>10}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loops", default=",".join(LOOPS), help="loops for greenbridge and asyncio")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, n, loop = args.child
        print(json.dumps(_RUNNERS[impl](int(n), loop)))
        return
    loops = args.loops.split(",")
    unknown = sorted(set(loops) - set(LOOPS))
    if unknown:
        parser.error(f"unknown loop(s) {', '.join(unknown)}: choose from {', '.join(LOOPS)}")
    results = run([int(s) for s in args.sizes.split(",")], loops, args.rounds)
    _print_table(results)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
