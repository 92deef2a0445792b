"""Run every benchmark, side by side in one sitting, and write ``RESULTS.md`` and a chart.

The benchmarks (each also runs on its own; see its docstring):

  crossing   bench_crossing.py  crossing between asyncio and direct style: greenbridge, native
                                await, SQLAlchemy, awaitlet, greenletio, greenback
  fibers     bench_fibers.py    the cost of a fiber: greenbridge's Switch, asyncio Tasks, gevent
  echo       bench_echo.py      echo servers: greenbridge's net and flow adapters, asyncio
                                streams and Protocol, gevent

Each runs in a subprocess of its own and hands its figures over as JSON. A benchmark whose
module is missing, or that fails, is noted in the results instead of stopping the report.

    python benchmarks/report.py                 # everything: several minutes, machine otherwise idle
    python benchmarks/report.py --quick         # a smoke run: seconds, figures not meaningful
    python benchmarks/report.py --only crossing,fibers

Writes ``benchmarks/RESULTS.md`` (tables of medians, and greenbridge's ratio to every peer) and
``benchmarks/results.png`` (the chart it links to). A report, not a test: it never fails on a
figure.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
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
    """Median ns per operation, per loop; every peer's column with greenbridge's ratio to it."""
    results = outcome.figures[0]
    lines = [
        f"{results['n']:,} operations per round, median of {results['rounds']} rounds, each on a fresh "
        "loop. Cells: median ns per operation (greenbridge's time / the peer's: below 1.00x, "
        "greenbridge is faster).",
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
    for name, why in results.get("skipped", {}).items():
        lines.append(f"- {name}: skipped, {why}")
    return lines


def render_fibers(outcome: Outcome) -> list[str]:
    """Per N: time per fiber and memory per idle fiber (medians), greenbridge's ratio to each peer."""
    lines: list[str] = []
    for results in outcome.figures:
        impls = list(next(iter(results["figures"].values())).keys())
        peers = [impl for impl in impls if impl != "greenbridge"]
        lines += [
            f"Loop {results['loop']}; each fiber sleeps once ({float(results['delay']) * 1e3:g} ms); "
            f"median of {results['rounds']} rounds, one subprocess per round. Time: wall time per "
            "fiber; memory: RSS growth per idle fiber. Ratios: greenbridge's figure / the peer's.",
            "",
            "| N | " + " | ".join(f"{impl} time" for impl in impls) + " | "
            + " | ".join(f"{impl} memory" for impl in impls) + " | "
            + " | ".join(f"vs {peer} (time, memory)" for peer in peers) + " |",
            "|---:|" + "---:|" * (2 * len(impls) + len(peers)),
        ]
        for n, row in results["figures"].items():
            count = int(n)
            times, mems = [], []
            for impl in impls:
                t, m = row[impl]["time"], row[impl]["memory"]
                times.append(f"{t / count * 1e6:.2f} us" if isinstance(t, (int, float)) else str(t))
                mems.append(f"{_num(m)} B" if isinstance(m, (int, float)) else str(m))
            ours = row.get("greenbridge", {})
            ratios = [
                f"{_ratio(ours.get('time'), row[peer]['time'])}, "
                f"{_ratio(ours.get('memory'), row[peer]['memory'])}"
                for peer in peers
            ]
            lines.append(f"| {count:,} | " + " | ".join(times + mems + ratios) + " |")
        lines.append("")
    return lines


def echo_medians(outcome: Outcome, key: str = "rps") -> dict[tuple[str, str], float]:
    """(server, loop) -> the median of figure ``key`` ("rps": round trips per second, "cpu_us":
    server CPU per round trip) over every run of the benchmark; absent or zero figures left out."""
    samples: dict[tuple[str, str], list[float]] = {}
    for figures in outcome.figures:
        for entry in figures:
            value = entry.get(key)
            if isinstance(value, (int, float)) and value > 0:
                samples.setdefault((entry["server"], entry["loop"]), []).append(float(value))
    return {config: statistics.median(values) for config, values in samples.items()}


def _rounds(outcome: Outcome) -> str:
    """How many rounds the figures are the median of, from the arguments the benchmark got."""
    args = outcome.args
    rounds = f"{args[args.index('--rounds') + 1]} round(s)" if "--rounds" in args[:-1] else "the rounds"
    runs = len(outcome.figures)
    return rounds if runs == 1 else f"{rounds}, then of {runs} runs"


def render_echo(outcome: Outcome) -> list[str]:
    """Round trips per second and server CPU per round trip (medians), and greenbridge's ratio to
    every peer."""
    rps = echo_medians(outcome, "rps")
    cpu = echo_medians(outcome, "cpu_us")
    loops = list(dict.fromkeys(loop for _, loop in rps))
    servers = list(dict.fromkeys(server for server, _ in rps))
    ours = [s for s in servers if s.startswith("gb-")]
    peers = [s for s in servers if not s.startswith("gb-")]
    lines = [
        f"Median of {_rounds(outcome)}. Cells: round trips per second (higher is better) "
        "and, in brackets, the server's CPU time per round trip in us (lower is better; a busy "
        "machine disturbs it less than throughput).",
        "",
        "| server | " + " | ".join(loops) + " |",
        "|---|" + "---:|" * len(loops),
    ]
    for server in servers:
        cells = []
        for loop in loops:
            if (server, loop) not in rps:
                cells.append("-")
                continue
            used = cpu.get((server, loop))
            cells.append(_num(rps[(server, loop)]) + (f" ({used:.2f} us)" if used else ""))
        lines.append(f"| {server} | " + " | ".join(cells) + " |")
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


def render(outcomes: list[Outcome], chart: str | None, quick: bool) -> str:
    """The whole of RESULTS.md."""
    try:
        ours = importlib.metadata.version("greenbridge")
    except importlib.metadata.PackageNotFoundError:
        ours = "(not installed)"
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/report.py{' --quick' if quick else ''}` on "
        f"{datetime.date.today().isoformat()}: Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s); greenbridge {ours}; "
        f"{_versions()}.",
        "",
        "All contenders ran in the same sitting, on the same machine. Figures are medians; a "
        "machine busy with other work makes them noisy -- compare ratios within one table, not "
        "across reports.",
        "",
    ]
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
    sizes = list(results["figures"])
    impls = list(results["figures"][sizes[0]])
    series = {}
    for impl in impls:
        series[impl] = [
            float(results["figures"][n][impl]["time"]) / int(n) * 1e6
            if isinstance(results["figures"][n][impl]["time"], (int, float))
            else 0.0
            for n in sizes
        ]
    _bars(ax, [f"N={int(n):,}" for n in sizes], series, f"us per fiber ({results['loop']}; lower is better)")


def _chart_echo(ax: Any, outcome: Outcome) -> None:
    medians = echo_medians(outcome)
    servers = list(dict.fromkeys(server for server, _ in medians))
    loops = list(dict.fromkeys(loop for _, loop in medians))
    series = {loop: [medians.get((server, loop), 0.0) for server in servers] for loop in loops}
    _bars(ax, servers, series, "round trips per second (higher is better)")
    for label in ax.get_xticklabels():
        label.set_rotation(20)


# -- main -------------------------------------------------------------------------------------------


def plan(quick: bool, echo_rounds: int) -> list[tuple[str, str, list[str]]]:
    """(name, script, arguments) for each benchmark; each takes its own ``--rounds``."""
    if quick:
        echo = ["--servers", "gb-run_server,streams", "--loops", "asyncio", "--rounds", "1"]
        return [
            ("crossing", "bench_crossing.py", ["--loops", "asyncio", "--rounds", "1", "--n", "500"]),
            ("fibers", "bench_fibers.py", ["--sizes", "1000", "--rounds", "1"]),
            ("echo", "bench_echo.py", [*echo, "--warmup", "0.2", "--duration", "0.5"]),
        ]
    return [
        ("crossing", "bench_crossing.py", ["--loops", "asyncio,uvloop", "--rounds", "7"]),
        ("fibers", "bench_fibers.py", ["--rounds", "5"]),
        ("echo", "bench_echo.py", ["--rounds", str(echo_rounds)]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, one round")
    parser.add_argument("--only", help="comma-separated subset of: crossing, fibers, echo")
    parser.add_argument("--echo-rounds", type=int, default=3, help="echo rounds (interleaved; median)")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--chart", default=str(HERE / "results.png"))
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else set(RENDERERS)
    outcomes = [
        run_benchmark(name, script, bench_args)
        for name, script, bench_args in plan(args.quick, args.echo_rounds)
        if name in wanted
    ]
    output, chart = Path(args.output), Path(args.chart)
    drawn = draw_chart(outcomes, chart)
    chart_link = os.path.relpath(chart, output.parent) if drawn else None
    output.write_text(render(outcomes, chart_link, args.quick))
    print(f"wrote {output}" + (f" and {chart}" if drawn else " (no chart: matplotlib is not installed)"))
    for outcome in outcomes:
        if outcome.problem:
            print(f"{outcome.name}: {outcome.problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
