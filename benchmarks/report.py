"""Run every benchmark, side by side in one sitting, and write ``RESULTS.md`` and a chart.

The benchmarks (each also runs on its own; see its docstring):

  crossing   bench_crossing.py  crossing between asyncio and direct style: greenbridge, native
                                await, SQLAlchemy, awaitlet, greenletio, greenback
  fibers     bench_fibers.py    the cost of a fiber: greenbridge's Switch, asyncio Tasks, gevent
  echo       bench_echo.py      echo servers: greenbridge's net and flow adapters, asyncio
                                streams, a plain Protocol, gevent -- each against the ceiling
                                (a raw BufferedProtocol) and two bounds (the ceiling written
                                back from a greenlet; with a timer per connection); and the
                                scale curves (connections, message sizes)

Not in the report: ``bench_instructions.py`` counts the instructions of greenbridge's crossing
path under valgrind (no peers; its figures do not move with the machine's load, so it is the
measure for a before/after comparison with another checkout, ``--against``),
``mem_breakdown.py`` (where an idle fiber's memory goes: the detail behind ``bench_fibers``'
figure), and ``bench_blocking.py`` (see docs/blocking.md).

Each runs in a subprocess of its own and hands its figures over as JSON. A benchmark whose
module is missing, or that fails, is noted in the results instead of stopping the report.

    python benchmarks/report.py                 # everything: about ten minutes, machine otherwise idle
    python benchmarks/report.py --quick         # a smoke run: seconds, figures not meaningful
    python benchmarks/report.py --only crossing,fibers
    python benchmarks/report.py --from-figures benchmarks/figures.json   # re-render, measure nothing

Writes ``benchmarks/RESULTS.md`` (tables of medians, and greenbridge's ratio to every peer and
to each ceiling), ``benchmarks/results.png`` (the overview chart it links to) and, beside it,
``echo_connections.png`` and ``echo_sizes.png`` (the echo benchmark's scale curves), and keeps
the raw figures in ``benchmarks/figures.json`` (git-ignored). It also measures how much of the machine other
work used meanwhile, and says so. A report, not a test: it never fails on a figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

PEER_PACKAGES = ("greenlet", "uvloop", "sqlalchemy", "awaitlet", "greenletio", "greenback", "gevent")


@dataclass
class Outcome:
    """What one benchmark produced: its figures (parsed JSON, one entry per run), or why not."""

    name: str
    script: str
    figures: list[Any] = field(default_factory=list)
    problem: str | None = None
    output: str = ""
    args: list[str] = field(default_factory=list)


# -- running the benchmarks -----------------------------------------------------------------------


def _run_script(script: Path, args: list[str], timeout: float) -> tuple[Any, str]:
    """Run ``script`` with ``args --json FILE``; return (parsed JSON, its stdout)."""
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "figures.json"
        done = subprocess.run(
            [sys.executable, str(script), *args, "--json", str(out_file)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise RuntimeError(f"{script.name} failed: {last}")
        try:
            return json.loads(out_file.read_text()), done.stdout
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{script.name} wrote no readable figures ({exc})") from exc


def run_benchmark(name: str, script: str, args: list[str], timeout: float = 1800) -> Outcome:
    """Run one benchmark; never raises for a missing or failing benchmark (see ``problem``)."""
    outcome = Outcome(name, script, args=args)
    path = HERE / script
    if not path.exists():
        outcome.problem = f"not run: benchmarks/{script} is missing"
        return outcome
    print(f"running {script} {' '.join(args)}", file=sys.stderr, flush=True)
    try:
        figures, outcome.output = _run_script(path, args, timeout)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        outcome.problem = f"not run: {exc}"
    else:
        outcome.figures.append(figures)
    return outcome


# -- rendering: one function per benchmark, each robust to a changed or partial format -------------


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ratio(ours: Any, theirs: Any) -> str:
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and theirs > 0:
        return f"{ours / theirs:.2f}x"
    return "n/a"


def render_crossing(outcome: Outcome) -> list[str]:
    """Median ns per operation, per loop; every peer's column with greenbridge's ratio to it;
    the floor of a suspension (``floor_notes``)."""
    results = outcome.figures[0]
    lines = [
        f"{results['n']:,} operations per round, median of {results['rounds']} rounds, each on a fresh "
        "loop. Cells: median ns per operation (greenbridge's time / the peer's: below 1.00x, "
        "greenbridge is faster). `native` is the floor: the same operation as a plain `await` in "
        "a coroutine, no bridge at all (for `spawn`, calling the function directly); a bridge can "
        "only add to it.",
        "",
    ]
    for loop_name, table in results["loops"].items():
        peers = list(next(iter(table.values())).keys())
        lines += [f"**{loop_name}**", "", "| operation | " + " | ".join(peers) + " |"]
        lines.append("|---|" + "---:|" * len(peers))
        for op, row in table.items():
            cells = []
            for peer in peers:
                ratio = "" if peer == "greenbridge" else f" ({_ratio(row['greenbridge'], row[peer])})"
                cells.append(f"{_num(row[peer])}{ratio}")
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += floor_notes(results, loop_name)
    for name, why in results.get("skipped", {}).items():
        lines.append(f"- {name}: skipped, {why}")
    return lines


def floor_notes(results: dict[str, Any], loop_name: str) -> list[str]:
    """The floor of a suspension on ``loop_name`` (native ``sleep(0)`` plus one greenlet switch
    pair, measured in the same run) beside greenbridge's and the peers' ``await_sleep0``."""
    pair = results.get("floors", {}).get(loop_name, {}).get("switch_pair")
    row = results["loops"][loop_name].get("await_sleep0")
    if pair is None or not row:
        return []
    floor = row["native"] + pair

    def per_peer(figure: float) -> str:
        """``figure`` / each peer's await_sleep0."""
        return ", ".join(
            f"{name} {figure / value:.2f}x"
            for name, value in row.items()
            if name not in ("native", "greenbridge")
        )

    peers = per_peer(floor)
    lines = [
        f"Floor of await_sleep0 on {loop_name}: native {row['native']:,.0f} ns + one greenlet "
        f"switch pair {pair:,.0f} ns = {floor:,.0f} ns; "
        f"greenbridge {row['greenbridge'] / floor:.2f}x of it. The floor / each "
        f"peer (the best ratio any greenlet bridge can have to it): {peers}.",
        "",
    ]
    least = results["floors"][loop_name].get("greenlet_bridge")
    if least is not None:
        lines += [
            f"The least greenlet bridge (a plain greenlet handing each awaitable to a coroutine "
            f"that awaits it: no error handling, no Task or context bookkeeping) takes "
            f"{least:,.0f} ns: greenbridge {row['greenbridge'] / least:.2f}x of it, it / "
            f"{per_peer(least)}. Neither is a floor by time. A switch pair in a loop of its own "
            "keeps its code in the CPU's caches, which it does not between the loop's work, so "
            "the sum above is below what any bridge takes; and this bridge, though it executes "
            "fewer instructions than any peer (bench_instructions.py, sleep0-greenlet), need not "
            "take less time: what a suspension costs in time follows the caches and the branch "
            "predictor (bench_instructions.py --misses simulates both) as much as its "
            "instructions.",
            "",
        ]
    return lines


def render_fibers(outcome: Outcome) -> list[str]:
    """Per loop and N: time per fiber (spawn + wake), idle and peak memory per fiber (medians),
    greenbridge's ratio to each peer."""
    results = outcome.figures[0]
    lines = [
        f"N fibers each waiting on one Event; median of {results['rounds']} round(s), every "
        "measurement in a fresh subprocess. Time: wall time per fiber, fork to all parked "
        "(spawn) plus set to all finished (wake). Memory: RSS growth per fiber over the "
        "baseline, with all N parked (idle) and at the process's high-water mark (peak). gevent "
        "runs on its own hub: the same figures stand in each loop's table. Ratios: greenbridge's "
        "figure / the peer's (below 1.00x, greenbridge is lighter). The bounds: a greenbridge "
        "fiber is a greenlet hosted by an asyncio Task, so asyncio's Task (a coroutine and its "
        "Task, no greenlet) is the floor of that design, and gevent (a greenlet and its hub's "
        "bookkeeping, no Task) the floor of a greenlet-only one.",
        "",
    ]
    for loop_name, by_n in results["figures"].items():
        impls = list(next(iter(by_n.values())).keys())
        peers = [impl for impl in impls if impl != "greenbridge"]
        lines += [
            f"**{loop_name}**",
            "",
            "| N | contender | time per fiber (spawn + wake) | idle memory | peak memory | "
            + " | ".join(f"vs {peer} (time, idle, peak)" for peer in peers) + " |",
            "|---:|---|---:|---:|---:|" + "---:|" * len(peers),
        ]
        for n, row in by_n.items():
            count = int(n)
            ours = row.get("greenbridge", {})
            for impl in impls:
                f = row[impl]
                if not isinstance(f["time"], (int, float)):
                    lines.append(f"| {count:,} | {impl} | {f['time']} | | | " + " | " * len(peers))
                    continue
                per = {m: f[m] / count * 1e6 for m in ("time", "spawn", "wake")}
                ratios = [
                    ", ".join(_ratio(ours.get(m), row[peer][m]) for m in ("time", "idle", "peak"))
                    if impl == "greenbridge" else ""
                    for peer in peers
                ]
                lines.append(
                    f"| {count:,} | {impl} | {per['time']:.2f} us ({per['spawn']:.2f} + "
                    f"{per['wake']:.2f}) | {_num(f['idle'])} B | {_num(f['peak'])} B | "
                    + " | ".join(ratios) + " |"
                )
        lines.append("")
    return lines


CEILING = "buffered-protocol"

ECHO_SERVERS = {
    "gb-run_server": "greenbridge: `net.listen` + `net.run_server`, `conn.read()` / `conn.write()`",
    "gb-adapters": "greenbridge over asyncio streams: `flow.source_of_reader` / `sink_of_writer`",
    "streams": "asyncio streams: `reader.read` / `writer.write` + `await drain()`",
    "plain-protocol": "a plain `asyncio.Protocol` echoing in `data_received`: a new `bytes` per "
    "read (asyncio's loop calls `sock.recv(256 KiB)`, allocating 256 KiB and then shrinking it)",
    "buffered-protocol": "**the ceiling**: a raw `asyncio.BufferedProtocol` -- the transport "
    "reads into one preallocated 64 KiB buffer per connection and the server writes a view of "
    "it back: no allocation or copy of the data per read, no Task, no coroutine. Nothing "
    "written in Python on that loop can echo with less work per round trip, and greenbridge's "
    "connections are built on this very protocol, so it bounds what they can reach",
    "gevent": "gevent's `StreamServer`, `sock.recv` / `sock.sendall` (its own libev/libuv hub)",
    "greenlet-floor": "a bound: the ceiling's protocol with the bytes written back from a plain "
    "greenlet that a loop callback switches into -- one callback and two switches a round trip, "
    "no Task, no wait queue, no buffer of its own: the floor of any server whose handler is "
    "direct-style code in a greenlet",
    "buffered-timer": "a bound: the ceiling with a timer pending per connection (an hour away), "
    "as a server with a read timeout has (`run_server`'s `idle_timeout`): what pending timers "
    "cost the loop itself",
}

EchoKey = tuple[str, str]  # server, loop
EchoPoint = tuple[int, int]  # connections, message size


def _echo_samples(outcome: Outcome) -> dict[EchoPoint | None, dict[EchoKey, list[dict[str, Any]]]]:
    """point -> (server, loop) -> its entries over every run. The main table's point is keyed
    None (entries without a point are taken to be at it)."""
    samples: dict[EchoPoint | None, dict[EchoKey, list[dict[str, Any]]]] = {}
    for figures in outcome.figures:
        for entry in figures:
            key = (entry["server"], entry["loop"])
            points: list[EchoPoint | None] = []
            if entry.get("base", True):
                points.append(None)
            if "connections" in entry and "size" in entry:
                points.append((int(entry["connections"]), int(entry["size"])))
            for point in points:
                samples.setdefault(point, {}).setdefault(key, []).append(entry)
    return samples


def echo_medians(
    outcome: Outcome, key: str = "rps", point: EchoPoint | None = None
) -> dict[EchoKey, float]:
    """(server, loop) -> the median of figure ``key`` ("rps": round trips per second, "cpu_us":
    server CPU per round trip, "sys_us": the part of it in the kernel, "load_busy": the load
    process's CPU share) over every run of the
    benchmark, at ``point`` (connections, size; None: the main table's); absent or zero figures
    left out."""
    medians: dict[EchoKey, float] = {}
    for config, entries in _echo_samples(outcome).get(point, {}).items():
        values = [float(e[key]) for e in entries if isinstance(e.get(key), (int, float)) and e[key] > 0]
        if values:
            medians[config] = statistics.median(values)
    return medians


def _ceiling_of(rps: dict[EchoKey, float], server: str, loop: str, ceiling_loop: str) -> float | None:
    """The ceiling to compare (server, loop) with on ``ceiling_loop``: its own loop's, or for
    gevent (its own hub) each loop's in turn."""
    if loop not in (ceiling_loop, "gevent"):
        return None
    return rps.get((CEILING, ceiling_loop))


def _rounds(outcome: Outcome) -> str:
    """How many rounds the figures are the median of, from the arguments the benchmark got."""
    args = outcome.args
    rounds = f"{args[args.index('--rounds') + 1]} round(s)" if "--rounds" in args[:-1] else "the rounds"
    runs = len(outcome.figures)
    return rounds if runs == 1 else f"{rounds}, then of {runs} runs"


LOAD_BUSY = 0.9  # a load process on the CPU this share of the window may be what bounds it


def render_echo(outcome: Outcome) -> list[str]:
    """Round trips per second and server CPU per round trip (medians), every server's ratio to
    the ceiling, greenbridge's ratio to every peer, and the scale curves."""
    rps = echo_medians(outcome, "rps")
    cpu = echo_medians(outcome, "cpu_us")
    busy = echo_medians(outcome, "load_busy")
    kernel = echo_medians(outcome, "sys_us")
    loops = list(dict.fromkeys(loop for _, loop in rps))
    servers = list(dict.fromkeys(server for server, _ in rps))
    ours = [s for s in servers if s.startswith("gb-")]
    peers = [s for s in servers if not s.startswith("gb-") and s != CEILING]  # the ceiling: its own table
    lines = ["The servers:", ""]
    lines += [f"- `{server}`: {ECHO_SERVERS.get(server, '(not described)')}." for server in servers]
    lines += [
        "",
        f"Median of {_rounds(outcome)}, interleaved; server and load in processes of their own, "
        "pinned to different cores. Cells: round trips per second (higher is better) "
        "and, in brackets, the server's CPU time per round trip in us over the same window "
        "(lower is better; a busy machine disturbs it less than throughput)"
        + (", and how much of that was in the kernel: the system calls and the loopback "
           "network stack, which bound the ratios between servers however little their own "
           "code does" if kernel else "")
        + (f"; † marks a load process on the CPU {LOAD_BUSY:.0%}+ of the window, which may then "
           "be what bounds the throughput" if busy else "") + ".",
        "",
        "| server | " + " | ".join(loops) + " |",
        "|---|" + "---:|" * len(loops),
    ]  # fmt: skip
    for server in servers:
        cells = []
        for loop in loops:
            if (server, loop) not in rps:
                cells.append("-")
                continue
            used = cpu.get((server, loop))
            mark = "†" if busy.get((server, loop), 0.0) >= LOAD_BUSY else ""
            in_kernel = kernel.get((server, loop))
            spent = ""
            if used:
                spent = f" ({used:.2f} us" + (f", {in_kernel:.2f} in the kernel" if in_kernel else "") + ")"
            cells.append(_num(rps[(server, loop)]) + mark + spent)
        lines.append(f"| {server} | " + " | ".join(cells) + " |")
    ceiling_loops = [loop for loop in loops if (CEILING, loop) in rps]
    if ceiling_loops:
        lines += [
            "",
            f"Against the ceiling (`{CEILING}`) on each loop: the server's round trips/s / the "
            "ceiling's and, in brackets, the ceiling's CPU per round trip / the server's "
            "(gevent, on its own hub, against each loop's ceiling).",
            "",
            "| server | " + " | ".join(f"/ ceiling on {loop}" for loop in ceiling_loops) + " |",
            "|---|" + "---:|" * len(ceiling_loops),
        ]
        for server in servers:
            if server == CEILING:
                continue
            cells = []
            for ceiling_loop in ceiling_loops:
                loop = "gevent" if server == "gevent" else ceiling_loop
                ceiling = _ceiling_of(rps, server, loop, ceiling_loop)
                cells.append(
                    f"{_ratio(rps.get((server, loop)), ceiling)} "
                    f"({_ratio(cpu.get((CEILING, ceiling_loop)), cpu.get((server, loop)))})"
                )
            lines.append(f"| {server} | " + " | ".join(cells) + " |")
        lines += _ceiling_notes(rps, cpu, busy, ceiling_loops)
    gb_loops = [loop for loop in loops if any((s, loop) in rps for s in ours)]
    lines += [
        "",
        "Ratios on the same loop (gevent runs its own): greenbridge's round trips/s / the peer's "
        "and, in brackets, the peer's CPU per round trip / greenbridge's -- above 1.00x, "
        "greenbridge is ahead.",
        "",
        "| ratio | " + " | ".join(gb_loops) + " |",
        "|---|" + "---:|" * len(gb_loops),
    ]
    for server in ours:
        for peer in peers:
            cells = []
            for loop in gb_loops:
                peer_config = (peer, loop) if (peer, loop) in rps else (peer, peer)  # gevent: own loop
                cells.append(
                    f"{_ratio(rps.get((server, loop)), rps.get(peer_config))} "
                    f"({_ratio(cpu.get(peer_config), cpu.get((server, loop)))})"
                )
            lines.append(f"| {server} / {peer} | " + " | ".join(cells) + " |")
    lines.append("")
    for title, curve in echo_curves(outcome).items():
        lines += _render_curve(outcome, title, curve)
    return lines


def _ceiling_notes(
    rps: dict[EchoKey, float], cpu: dict[EchoKey, float], busy: dict[EchoKey, float], loops: list[str]
) -> list[str]:
    """What the figures say about the ceiling itself: where the load, not the server, bounded it,
    and where the plain Protocol measured cheaper than the BufferedProtocol."""
    notes = []
    bound = [loop for loop in loops if busy.get((CEILING, loop), 0.0) >= LOAD_BUSY]
    if bound:
        notes.append(
            f"On {' and '.join(bound)} the ceiling's throughput (†) is bound by the load process, "
            "not by the server (one load process on the other core, which is all a two-core "
            "machine allows): there the ratio of CPU per round trip, in brackets, is the one to "
            "trust."
        )
    for loop in loops:
        plain, buffered = cpu.get(("plain-protocol", loop)), cpu.get((CEILING, loop))
        if plain and buffered and plain < buffered:
            notes.append(
                f"On {loop} the plain Protocol used less server CPU per round trip than the "
                f"BufferedProtocol ({plain:.2f} us against {buffered:.2f} us): that loop reads into "
                "a buffer of its own and makes the exact-size `bytes` in C, whereas a "
                "BufferedProtocol costs two Python calls per read (`get_buffer`, "
                "`buffer_updated`). There the higher bar is the plain Protocol; greenbridge's ratio "
                "to it is in the next table."
            )
    return ["", *(f"- {note}" for note in notes)] if notes else []


def echo_curves(outcome: Outcome) -> dict[str, list[EchoPoint]]:
    """The scale curves in the figures: title -> its points in order. One curve varies the
    connections at the main table's message size, the other the message size at its connection
    count; a curve needs two points at least."""
    points = [p for p in _echo_samples(outcome) if p is not None]
    base = next(
        (
            (int(e["connections"]), int(e["size"]))
            for figures in outcome.figures
            for e in figures
            if e.get("base") and "connections" in e and "size" in e
        ),
        None,
    )
    if base is None:
        return {}
    by_connections = sorted(p for p in points if p[1] == base[1])
    by_size = sorted((p for p in points if p[0] == base[0]), key=lambda p: p[1])
    curves = {}
    if len(by_connections) > 1:
        curves[f"connections ({_size(base[1])} messages)"] = by_connections
    if len(by_size) > 1:
        curves[f"message size ({base[0]:,} connections)"] = by_size
    return curves


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def _point_label(point: EchoPoint, title: str) -> str:
    return f"{point[0]:,}" if title.startswith("connections") else _size(point[1])


def _render_curve(outcome: Outcome, title: str, curve: list[EchoPoint]) -> list[str]:
    """One table per loop: a row per server, a column per point; round trips/s, ratio to the
    ceiling on that loop, server CPU us per round trip."""
    medians = {point: (echo_medians(outcome, "rps", point), echo_medians(outcome, "cpu_us", point),
                       echo_medians(outcome, "load_busy", point)) for point in curve}  # fmt: skip
    configs = list(dict.fromkeys(c for point in curve for c in medians[point][0]))
    loops = [loop for loop in dict.fromkeys(loop for _, loop in configs) if loop != "gevent"]
    servers = list(dict.fromkeys(server for server, _ in configs))
    lines = [
        f"### Scale curve: {title}",
        "",
        "Cells: round trips per second, [its ratio to the ceiling on that loop], (server CPU us "
        "per round trip); † as above. gevent, on its own hub, appears in each loop's table.",
        "",
    ]
    for loop in loops:
        lines += [
            f"**{loop}**",
            "",
            "| server | " + " | ".join(_point_label(p, title) for p in curve) + " |",
            "|---|" + "---:|" * len(curve),
        ]
        for server in servers:
            config = (server, "gevent" if server == "gevent" else loop)
            cells = []
            for point in curve:
                rps, cpu, busy = medians[point]
                if config not in rps:
                    cells.append("-")
                    continue
                mark = "†" if busy.get(config, 0.0) >= LOAD_BUSY else ""
                ratio = _ratio(rps[config], _ceiling_of(rps, config[0], config[1], loop))
                used = f" ({cpu[config]:.2f} us)" if config in cpu else ""
                cells.append(f"{_num(rps[config])}{mark} [{ratio}]{used}")
            lines.append(f"| {server} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


RENDERERS: dict[str, Callable[[Outcome], list[str]]] = {
    "crossing": render_crossing,
    "fibers": render_fibers,
    "echo": render_echo,
}

TITLES = {
    "crossing": "Crossing between asyncio and direct style",
    "fibers": "Fibers",
    "echo": "Echo server",
}


def _versions() -> str:
    found = []
    for package in PEER_PACKAGES:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


def render(
    outcomes: list[Outcome],
    chart: str | None,
    quick: bool,
    *,
    curve_charts: dict[str, str] | None = None,
    machine: str = "",
    date: str | None = None,
) -> str:
    """The whole of RESULTS.md: ``chart`` links the overview chart, ``curve_charts`` (curve
    title -> link) the echo benchmark's scale curves, ``machine`` says how busy the machine was,
    ``date`` is when the figures were measured (default: today)."""
    try:
        ours = importlib.metadata.version("greenbridge")
    except importlib.metadata.PackageNotFoundError:
        ours = "(not installed)"
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/report.py{' --quick' if quick else ''}` on "
        f"{date or datetime.date.today().isoformat()}: Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s); greenbridge {ours}; "
        f"{_versions()}.",
        "",
        "All contenders ran in the same sitting, on the same machine. Figures are medians; a "
        "machine busy with other work makes them noisy -- compare ratios within one table, not "
        "across reports.",
        "",
    ]
    if machine:
        lines += [machine, ""]
    if quick:
        lines += ["**A `--quick` smoke run: too short for the figures to mean anything.**", ""]
    if chart:
        lines += [f"![greenbridge beside its peers]({chart})", ""]
    for outcome in outcomes:
        lines += [f"## {TITLES.get(outcome.name, outcome.name)} (`{outcome.script}`)", ""]
        if outcome.problem is not None:
            lines += [f"_{outcome.problem}_", ""]
            continue
        try:
            lines += RENDERERS[outcome.name](outcome)
        except (KeyError, TypeError, ValueError, AttributeError, StopIteration, ZeroDivisionError) as exc:
            # The benchmark's format changed under us: show what it printed rather than nothing.
            lines += [f"_figures in an unexpected format ({exc!r}); the benchmark's own output:_", ""]
            lines += ["```", outcome.output.rstrip(), "```", ""]
        if outcome.name == "echo" and outcome.problem is None:
            for title, link in (curve_charts or {}).items():
                lines += [f"![echo scale curve: {title}]({link})", ""]
    return "\n".join(lines).rstrip() + "\n"


# -- the chart --------------------------------------------------------------------------------------


def draw_chart(outcomes: list[Outcome], path: Path) -> bool:
    """One panel per benchmark; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    by_name = {outcome.name: outcome for outcome in outcomes}
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    panels = (("crossing", _chart_crossing), ("fibers", _chart_fibers), ("echo", _chart_echo))
    for ax, (name, draw) in zip(axes, panels, strict=True):
        ax.set_title(TITLES[name])
        outcome = by_name.get(name)
        try:
            if outcome is None or outcome.problem is not None:
                raise ValueError(outcome.problem if outcome is not None else "not run")
            draw(ax, outcome)
        except (KeyError, TypeError, ValueError, AttributeError, StopIteration) as exc:
            ax.text(0.5, 0.5, str(exc) or "no figures", ha="center", va="center", wrap=True)
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _bars(ax: Any, groups: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")


def _chart_crossing(ax: Any, outcome: Outcome) -> None:
    loops = outcome.figures[0]["loops"]
    loop_name = "uvloop" if "uvloop" in loops else next(iter(loops))
    table = loops[loop_name]
    ops = list(table)
    peers = list(table[ops[0]])
    series = {peer: [table[op][peer] for op in ops] for peer in peers}
    _bars(ax, ops, series, f"ns per operation ({loop_name}; lower is better)")
    ax.set_yscale("log")


def _chart_fibers(ax: Any, outcome: Outcome) -> None:
    results = outcome.figures[0]
    loop_name = "asyncio" if "asyncio" in results["figures"] else next(iter(results["figures"]))
    by_n = results["figures"][loop_name]
    sizes = list(by_n)
    impls = list(by_n[sizes[0]])
    series = {}
    for impl in impls:
        series[impl] = [
            float(t) / int(n) * 1e6 if isinstance(t := by_n[n][impl]["time"], (int, float)) else 0.0
            for n in sizes
        ]
    _bars(ax, [f"N={int(n):,}" for n in sizes], series, f"us per fiber ({loop_name}; lower is better)")


def _chart_echo(ax: Any, outcome: Outcome) -> None:
    medians = echo_medians(outcome)
    servers = list(dict.fromkeys(server for server, _ in medians))
    loops = list(dict.fromkeys(loop for _, loop in medians))
    series = {loop: [medians.get((server, loop), 0.0) for server in servers] for loop in loops}
    _bars(ax, servers, series, "round trips per second (higher is better)")
    for label in ax.get_xticklabels():
        label.set_rotation(20)


def _tick(value: float, _position: object) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


CURVE_CHARTS = {"connections": "echo_connections.png", "message size": "echo_sizes.png"}


def draw_curve_charts(outcome: Outcome, directory: Path) -> dict[str, Path]:
    """One PNG per scale curve of the echo benchmark (curve title -> file): for each loop, round
    trips per second, the ratio to the ceiling and the server's CPU per round trip against the
    curve's variable. Nothing (an empty dict) without matplotlib or without curves."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return {}
    if outcome.problem is not None:
        return {}
    drawn = {}
    for title, curve in echo_curves(outcome).items():
        name = next(file for prefix, file in CURVE_CHARTS.items() if title.startswith(prefix))
        xs = [p[0] if title.startswith("connections") else p[1] for p in curve]
        rps = {p: echo_medians(outcome, "rps", p) for p in curve}
        cpu = {p: echo_medians(outcome, "cpu_us", p) for p in curve}
        configs = list(dict.fromkeys(c for p in curve for c in rps[p]))
        loops = [lp for lp in dict.fromkeys(lp for _, lp in configs) if lp != "gevent"]
        servers = list(dict.fromkeys(server for server, _ in configs))
        fig, axes = plt.subplots(3, len(loops), figsize=(7 * len(loops), 11), squeeze=False)
        for column, loop in enumerate(loops):
            for server in servers:
                config = (server, "gevent" if server == "gevent" else loop)
                style = {"linestyle": "--" if server in ("gevent", CEILING) else "-", "marker": "o"}
                ceilings = [_ceiling_of(rps[p], *config, loop) for p in curve]
                rows = (
                    [rps[p].get(config) for p in curve],
                    [
                        rps[p][config] / c if config in rps[p] and c else None
                        for p, c in zip(curve, ceilings, strict=True)
                    ],
                    [cpu[p].get(config) for p in curve],
                )
                for row, values in enumerate(rows):
                    points = [(x, v) for x, v in zip(xs, values, strict=True) if v]
                    if points:
                        axes[row][column].plot(*zip(*points, strict=True), label=server, **style)
            labels = ("round trips per second", f"/ {CEILING} (the ceiling)", "server CPU us per round trip")
            for row, label in enumerate(labels):
                ax = axes[row][column]
                ax.set_xscale("log")
                ax.set_xticks(xs)
                ax.set_xticklabels([_point_label(p, title) for p in curve])
                ax.minorticks_off()
                ax.set_ylabel(label)
                ax.grid(True, alpha=0.3)
                if row != 1:
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_tick))
                    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_tick))
            axes[0][column].set_title(f"echo on the {loop} loop: {title}")
            axes[0][column].legend(fontsize="small")
            axes[2][column].set_xlabel(title)
        fig.tight_layout()
        path = directory / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        drawn[title] = path
    return drawn


# -- the machine ------------------------------------------------------------------------------------


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of every CPU since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            # user nice system idle iowait irq softirq steal (guest time is already in user)
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class MachineWatch:
    """How busy the machine was with work other than ours while the benchmarks ran: every CPU's
    busy time (/proc/stat) minus the CPU time of our child processes (and theirs)."""

    def __init__(self) -> None:
        self.start_ticks = _cpu_ticks()
        self.start_children = self._children()
        self.load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def note(self) -> str:
        """A sentence for RESULTS.md: the other work's share of the machine, measured."""
        end = _cpu_ticks()
        if self.start_ticks is None or end is None or end[1] <= self.start_ticks[1]:
            return ""
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (end[0] - self.start_ticks[0]) / ticks
        total = (end[1] - self.start_ticks[1]) / ticks
        others = max(0.0, busy - (self._children() - self.start_children))
        share = others / total
        before = ""
        if self.load_before is not None:
            before = f"; load average {self.load_before:.2f} just before it began"
        verdict = (
            "The machine was shared and busy with other work"
            if share >= 0.05
            else "The machine was otherwise close to idle"
        )
        return (
            f"{verdict} while this ran: work other than the benchmarks used {share:.0%} of its "
            f"{os.cpu_count()} CPU(s) on average ({others:,.0f} of {total:,.0f} CPU-seconds{before})."
        )


# -- main -------------------------------------------------------------------------------------------


def plan(quick: bool, echo_rounds: int) -> list[tuple[str, str, list[str]]]:
    """(name, script, arguments) for each benchmark; each takes its own ``--rounds``."""
    if quick:
        servers = "gb-run_server,buffered-protocol"
        echo = ["--servers", servers, "--loops", "asyncio", "--rounds", "1",
                "--warmup", "0.2", "--duration", "0.5"]  # fmt: skip
        curves = ["--curves", "--curve-servers", servers, "--connection-curve", "1,10", "--size-curve", "64",
                  "--curve-warmup", "0.1", "--curve-duration", "0.3"]  # fmt: skip
        return [
            ("crossing", "bench_crossing.py", ["--loops", "asyncio", "--rounds", "1", "--n", "500"]),
            ("fibers", "bench_fibers.py", ["--sizes", "1000", "--rounds", "1", "--loops", "asyncio"]),
            ("echo", "bench_echo.py", [*echo, *curves]),
        ]
    return [
        ("crossing", "bench_crossing.py", ["--loops", "asyncio,uvloop", "--rounds", "7"]),
        ("fibers", "bench_fibers.py", ["--rounds", "3"]),
        ("echo", "bench_echo.py", ["--rounds", str(echo_rounds), "--duration", "2", "--curves"]),
    ]


def save_outcomes(outcomes: list[Outcome], machine: str, path: Path, *, quick: bool = False) -> None:
    """Write every benchmark's raw figures (and the machine note) to ``path`` as JSON, so that
    the report can be rendered again from them (``--from-figures``) without measuring again."""
    data = {
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "quick": quick,
        "outcomes": [dataclasses.asdict(outcome) for outcome in outcomes],
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


def load_outcomes(path: Path) -> tuple[list[Outcome], str, str, bool]:
    """The outcomes, machine note, date and quick flag ``save_outcomes`` wrote; ``ValueError`` (saying which
    file) when the file is not such figures."""
    try:
        data = json.loads(path.read_text())
        outcomes = [Outcome(**entry) for entry in data["outcomes"]]
        return outcomes, str(data.get("machine", "")), str(data["date"]), bool(data.get("quick"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} holds no figures written by report.py --figures ({exc!r})") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, one round")
    parser.add_argument("--only", help="comma-separated subset of: crossing, fibers, echo")
    parser.add_argument("--echo-rounds", type=int, default=3, help="echo rounds (interleaved; median)")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--chart", default=str(HERE / "results.png"), help="the overview chart; the "
                        "scale curves' charts go beside it")  # fmt: skip
    parser.add_argument("--figures", default=str(HERE / "figures.json"), help="where to keep the raw "
                        "figures (JSON)")  # fmt: skip
    parser.add_argument("--from-figures", metavar="FILE", help="measure nothing: render the report "
                        "from figures kept by an earlier run")  # fmt: skip
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else set(RENDERERS)
    if args.from_figures:
        try:
            outcomes, machine, date, args.quick = load_outcomes(Path(args.from_figures))
        except ValueError as exc:
            parser.error(str(exc))
    else:
        watch = MachineWatch()
        outcomes = [
            run_benchmark(name, script, bench_args)
            for name, script, bench_args in plan(args.quick, args.echo_rounds)
            if name in wanted
        ]
        machine, date = watch.note(), datetime.date.today().isoformat()
        save_outcomes(outcomes, machine, Path(args.figures), quick=args.quick)
    output, chart = Path(args.output), Path(args.chart)
    drawn = draw_chart(outcomes, chart)
    chart_link = os.path.relpath(chart, output.parent) if drawn else None
    curve_charts: dict[str, Path] = {}
    for outcome in outcomes:
        if outcome.name == "echo":
            curve_charts = draw_curve_charts(outcome, chart.parent)
    links = {title: os.path.relpath(path, output.parent) for title, path in curve_charts.items()}
    text = render(outcomes, chart_link, args.quick, curve_charts=links, machine=machine, date=date)
    output.write_text(text)
    written = [str(chart)] if drawn else []
    written += [str(path) for path in curve_charts.values()]
    print(f"wrote {output}" + (f" and {', '.join(written)}" if written else " (no chart: no matplotlib)"))
    for outcome in outcomes:
        if outcome.problem:
            print(f"{outcome.name}: {outcome.problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
