"""The cost of crossing between asyncio and direct-style code, greenbridge beside its peers.

Three operations, each timed per operation (ns), as the median of several rounds in one run
(the rounds interleaved: each round times every contender once), on the same loop:

  (a) await_ready   -- green code awaits an awaitable that completes at once
  (b) await_sleep0  -- green code awaits ``asyncio.sleep(0)`` (one real suspension)
  (c) spawn         -- asyncio code runs a trivial direct-style function and gets its result

Peers: native ``await`` (the floor), greenbridge, SQLAlchemy's ``greenlet_spawn``/``await_``,
awaitlet, greenletio and greenback (each skipped with a note when not installed). And two floors
of ``await_sleep0``: native ``sleep(0)`` plus one greenlet switch pair timed in a loop of its own
(the floor by instructions), and the least greenlet bridge (``FLOOR_BRIDGE``, the fewest
instructions any greenlet bridge executes). Neither bounds the time: a switch between the loop's
work misses the caches that a switch alone keeps warm, and the timings follow those misses as
much as the instructions (``bench_instructions.py --misses``).

    python benchmarks/bench_crossing.py [--loops asyncio,uvloop] [--rounds 7] [--n 20000]
    python benchmarks/bench_crossing.py --json results.json

A benchmark, not a test: it never fails on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from greenlet import getcurrent, greenlet

import greenbridge as gb

Bridge = dict[str, Any]


async def _ready() -> int:
    return 1


def _trivial() -> int:
    return 1


# -- the bridges: each gives spawn(fn) -> coroutine and await_(awaitable) -> result ---------------


def _bridges() -> dict[str, Bridge | str]:
    bridges: dict[str, Bridge | str] = {
        "greenbridge": {"spawn": gb.spawn_green, "await_": gb.await_from_green},
    }
    try:
        from sqlalchemy.util import await_ as sa_await
        from sqlalchemy.util import greenlet_spawn

        bridges["sqlalchemy"] = {"spawn": greenlet_spawn, "await_": sa_await}
    except ImportError as exc:
        bridges["sqlalchemy"] = f"not installed ({exc})"
    try:
        from awaitlet import async_def, awaitlet

        bridges["awaitlet"] = {"spawn": async_def, "await_": awaitlet}
    except ImportError as exc:
        bridges["awaitlet"] = f"not installed ({exc})"
    try:
        import greenletio

        bridges["greenletio"] = {
            "spawn": lambda fn, *a: greenletio.async_(fn)(*a),
            "await_": greenletio.await_,
        }
    except ImportError as exc:
        bridges["greenletio"] = f"not installed ({exc})"
    try:
        import greenback

        async def greenback_spawn(fn: Callable[..., Any], *args: Any) -> Any:
            await greenback.ensure_portal()
            return fn(*args)

        bridges["greenback"] = {
            "spawn": greenback_spawn,
            "await_": greenback.await_,
            "setup": greenback.ensure_portal,
        }
    except ImportError as exc:
        bridges["greenback"] = f"not installed ({exc})"
    return bridges


# -- the operations ---------------------------------------------------------------------------------


async def _timed_native(op: str, n: int) -> float:
    if op == "await_ready":
        start = time.perf_counter()
        for _ in range(n):
            await _ready()
    elif op == "await_sleep0":
        start = time.perf_counter()
        for _ in range(n):
            await asyncio.sleep(0)
    else:  # spawn: calling the plain function is the floor
        start = time.perf_counter()
        for _ in range(n):
            _trivial()
    return time.perf_counter() - start


async def _timed_bridge(bridge: Bridge, op: str, n: int) -> float:
    spawn = bridge["spawn"]
    await_ = bridge["await_"]
    if "setup" in bridge:
        await bridge["setup"]()
    if op == "spawn":
        start = time.perf_counter()
        for _ in range(n):
            await spawn(_trivial)
        return time.perf_counter() - start

    def body() -> float:
        if op == "await_ready":
            start = time.perf_counter()
            for _ in range(n):
                await_(_ready())
        else:
            sleep = asyncio.sleep
            start = time.perf_counter()
            for _ in range(n):
                await_(sleep(0))
        return time.perf_counter() - start

    return await spawn(body)  # type: ignore[no-any-return]


async def _timed_switch_pair(n: int) -> float:
    """A switch into a plain greenlet and back out, ``n`` times: what greenlet itself costs a
    suspension (the floor of one is native ``sleep(0)`` plus one such pair)."""
    main = getcurrent()

    def body() -> None:
        while True:
            main.switch()

    into = greenlet(body).switch
    start = time.perf_counter()
    for _ in range(n):
        into()
    return time.perf_counter() - start


def _floor_spawn(fn: Callable[[], Any]) -> Awaitable[Any]:
    """The least a greenlet bridge can do: ``fn`` in a plain greenlet whose switches out hand
    this coroutine an awaitable, awaited and its result switched back in (no error handling,
    no Task or context bookkeeping)."""
    async def drive() -> Any:
        child = greenlet(fn)
        value = child.switch()
        while not child.dead:
            value = child.switch(await value)
        return value

    return drive()


def _floor_await(awaitable: Any) -> Any:
    parent = getcurrent().parent
    assert parent is not None
    return parent.switch(awaitable)


#: The least greenlet bridge, in the shape of the others: a suspension with nothing but the switches
#: and the await, in the same loop iteration as the loop's own work (which a tight loop of switches
#: alone never shares the CPU's caches with).
FLOOR_BRIDGE: Bridge = {"spawn": _floor_spawn, "await_": _floor_await}


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _sample(loop_name: str, run: Callable[[], Awaitable[float]], n: int) -> float:
    """ns per operation of one round, on a fresh loop."""
    with asyncio.Runner(loop_factory=_loop_factory(loop_name)) as runner:
        return runner.run(_as_coro(run)) / n * 1e9


async def _as_coro(run: Callable[[], Awaitable[float]]) -> float:
    return await run()


OPS = ("await_ready", "await_sleep0", "spawn")


def bench(loops: list[str], rounds: int, n: int) -> dict[str, Any]:
    """Every (loop, operation, contender) once per round, the rounds interleaved, and the median
    of each: this machine's speed drifts by tens of percent over a minute, and a contender timed
    in consecutive rounds would take whatever speed the machine had then; interleaved, every
    contender samples the same stretches of time."""
    bridges = _bridges()
    results: dict[str, Any] = {"n": n, "rounds": rounds, "loops": {}, "skipped": {}, "floors": {}}
    for name, bridge in bridges.items():
        if isinstance(bridge, str):
            results["skipped"][name] = bridge
    # (loop, table, row, column, what to time)
    configs: list[tuple[str, str, str, str, Callable[[], Awaitable[float]]]] = []
    for loop_name in loops:
        for op in OPS:
            configs.append((loop_name, "loops", op, "native", lambda op=op: _timed_native(op, n)))  # type: ignore[misc]
            for name, bridge in bridges.items():
                if not isinstance(bridge, str):
                    run = lambda b=bridge, op=op: _timed_bridge(b, op, n)  # type: ignore[misc]  # noqa: E731
                    configs.append((loop_name, "loops", op, name, run))
        configs.append((loop_name, "floors", "", "switch_pair", lambda: _timed_switch_pair(n)))
        least = lambda: _timed_bridge(FLOOR_BRIDGE, "await_sleep0", n)  # noqa: E731
        configs.append((loop_name, "floors", "", "greenlet_bridge", least))
    samples: list[list[float]] = [[] for _ in configs]
    for _ in range(rounds):
        for config, taken in zip(configs, samples, strict=True):
            taken.append(_sample(config[0], config[4], n))
    for (loop_name, table, row, column, _), taken in zip(configs, samples, strict=True):
        place = results[table].setdefault(loop_name, {})
        if row:
            place = place.setdefault(row, {})
        place[column] = statistics.median(taken)
    return results


def format_table(results: dict[str, Any]) -> str:
    from report import floor_notes  # beside this script: the report renders the same notes

    lines = []
    for loop_name, table in results["loops"].items():
        peers = list(next(iter(table.values())).keys())
        lines.append(f"### loop: {loop_name} (median ns per operation; ratio = greenbridge / peer)")
        lines.append("")
        lines.append("| operation | " + " | ".join(peers) + " |")
        lines.append("|---" * (len(peers) + 1) + "|")
        for op, row in table.items():
            ours = row["greenbridge"]
            cells = []
            for peer in peers:
                value = row[peer]
                ratio = "" if peer == "greenbridge" else f" ({ours / value:.2f}x)"
                cells.append(f"{value:,.0f}{ratio}")
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += floor_notes(results, loop_name)
    for name, why in results["skipped"].items():
        lines.append(f"- {name}: skipped, {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--json", help="also write the raw figures to this file")
    args = parser.parse_args(argv)
    results = bench(args.loops.split(","), args.rounds, args.n)
    print(f"Python {sys.version.split()[0]}, n={args.n}, rounds={args.rounds}\n")
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
