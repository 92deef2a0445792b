"""benchmarks/report.py renders tables and the chart from the benchmarks' figures, and survives a
missing or changed benchmark. (The benchmarks themselves are not run here: they are slow.)"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report() -> Iterator[ModuleType]:
    name = "benchmark_report"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclass looks its module up while being defined
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


CROSSING = {
    "n": 1000,
    "rounds": 3,
    "loops": {"asyncio": {"await_ready": {"native": 50.0, "greenbridge": 80.0, "sqlalchemy": 800.0}}},
    "skipped": {"greenback": "not installed (No module named 'greenback')"},
}
FIBERS = {
    "rounds": 5,
    "sizes": [1000],
    "loops": ["asyncio"],
    "figures": {
        "asyncio": {
            "1000": {
                "greenbridge": {"time": 0.02, "spawn": 0.012, "wake": 0.008, "idle": 8000.0, "peak": 9000.0},
                "asyncio": {"time": 0.01, "spawn": 0.006, "wake": 0.004, "idle": 1000.0, "peak": 1000.0},
                "gevent": {m: "skipped: no gevent" for m in ("time", "spawn", "wake", "idle", "peak")},
            }
        }
    },
}


def _echo(
    server: str, loop: str, rps: float, cpu_us: float | None = None, **point: object
) -> dict[str, object]:
    entry: dict[str, object] = {"server": server, "loop": loop, "rps": rps}
    if cpu_us is not None:
        entry["cpu_us"] = cpu_us
    return {**entry, **point}


BASE = {"connections": 50, "size": 1024, "base": True}
ECHO_RUNS = [
    [
        _echo("gb-run_server", "asyncio", 30000.0, 20.0),
        _echo("streams", "asyncio", 10000.0, 60.0),
        _echo("gevent", "gevent", 20000.0),
    ],
    [
        _echo("gb-run_server", "asyncio", 20000.0, 30.0),
        _echo("streams", "asyncio", 12000.0, 40.0),
        _echo("gevent", "gevent", 10000.0),
    ],
]
# One run of the benchmark with the ceiling and both scale curves (the base point is on both).
ECHO_CURVES = [
    [
        _echo("gb-run_server", "uvloop", 45000.0, 9.0, **BASE, load_busy=0.5),
        _echo("buffered-protocol", "uvloop", 50000.0, 6.0, **BASE, load_busy=0.95),
        _echo("gevent", "gevent", 40000.0, 10.0, **BASE),
        _echo("plain-protocol", "uvloop", 60000.0, 5.0, **BASE),
        _echo("gb-run_server", "uvloop", 5000.0, 40.0, connections=1, size=1024, base=False),
        _echo("buffered-protocol", "uvloop", 10000.0, 20.0, connections=1, size=1024, base=False),
        _echo("gevent", "gevent", 4000.0, 50.0, connections=1, size=1024, base=False),
        _echo("gb-run_server", "uvloop", 8000.0, 60.0, connections=50, size=65536, base=False),
        _echo("buffered-protocol", "uvloop", 16000.0, 30.0, connections=50, size=65536, base=False),
    ]
]


def outcomes(report: ModuleType) -> list[object]:
    return [
        report.Outcome("crossing", "bench_crossing.py", [CROSSING]),
        report.Outcome("fibers", "bench_fibers.py", [FIBERS]),
        report.Outcome("echo", "bench_echo.py", ECHO_RUNS, args=["--rounds", "3"]),
    ]


def test_tables_of_medians_and_ratios_against_every_peer(report: ModuleType) -> None:
    text = report.render(outcomes(report), "results.png", quick=False)
    assert "![greenbridge beside its peers](results.png)" in text
    # crossing: every peer, with greenbridge's ratio to it
    assert "| await_ready | 50 (1.60x) | 80 | 800 (0.10x) |" in text
    assert "- greenback: skipped, not installed (No module named 'greenback')" in text
    # fibers: per-fiber time (spawn + wake), idle and peak memory, ratios; a skipped peer says so
    assert (
        "| 1,000 | greenbridge | 20.00 us (12.00 + 8.00) | 8,000 B | 9,000 B "
        "| 2.00x, 8.00x, 9.00x | n/a, n/a, n/a |"
    ) in text
    assert "| 1,000 | asyncio | 10.00 us (6.00 + 4.00) | 1,000 B | 1,000 B |  |  |" in text
    assert "| 1,000 | gevent | skipped: no gevent |" in text
    # echo: medians (of the runs), CPU per round trip, ratios on the same loop (gevent: its own)
    assert "Median of 3 round(s), then of 2 runs, interleaved;" in text
    assert "| gb-run_server | 25,000 (25.00 us) | - |" in text
    assert "| gevent | - | 15,000 |" in text
    assert "| gb-run_server / streams | 2.27x (2.00x) |" in text
    assert "| gb-run_server / gevent | 1.67x (n/a) |" in text


def test_every_server_against_the_ceiling_and_the_scale_curves(report: ModuleType) -> None:
    echo = report.Outcome("echo", "bench_echo.py", ECHO_CURVES, args=["--rounds", "3"])
    text = report.render([echo], None, quick=False, curve_charts={"connections (1 KiB messages)": "c.png"})
    # the ceiling is named for what it is; a saturated load process is marked
    assert "- `buffered-protocol`: **the ceiling**: a raw `asyncio.BufferedProtocol`" in text
    assert "| buffered-protocol | 50,000† (6.00 us) |" in text
    # every other server against the ceiling on its loop; gevent (its own hub) against each loop's
    assert "| gb-run_server | 0.90x (0.67x) |" in text
    assert "| gevent | 0.80x (0.60x) |" in text
    assert "| gb-run_server / gevent | 1.12x (1.11x) |" in text
    assert "| plain-protocol | 1.20x (1.20x) |" in text
    assert "| gb-run_server / buffered-protocol |" not in text  # the ceiling has its own table
    # what the figures say about the ceiling itself
    assert "- On uvloop the ceiling's throughput (†) is bound by the load process" in text
    assert "- On uvloop the plain Protocol used less server CPU per round trip than the " in text
    assert "BufferedProtocol (5.00 us against 6.00 us)" in text
    # both curves, the base point on each, the ratio to the ceiling in every cell
    assert report.echo_curves(echo) == {
        "connections (1 KiB messages)": [(1, 1024), (50, 1024)],
        "message size (50 connections)": [(50, 1024), (50, 65536)],
    }
    assert "### Scale curve: connections (1 KiB messages)" in text
    assert "| server | 1 | 50 |" in text
    assert "| gb-run_server | 5,000 [0.50x] (40.00 us) | 45,000 [0.90x] (9.00 us) |" in text
    assert "| gevent | 4,000 [0.40x] (50.00 us) | 40,000 [0.80x] (10.00 us) |" in text
    assert "| server | 1 KiB | 64 KiB |" in text
    assert "| gb-run_server | 45,000 [0.90x] (9.00 us) | 8,000 [0.50x] (60.00 us) |" in text
    assert "| gevent | 40,000 [0.80x] (10.00 us) | - |" in text
    assert "![echo scale curve: connections (1 KiB messages)](c.png)" in text


def test_a_missing_or_changed_benchmark_is_noted_not_fatal(report: ModuleType) -> None:
    missing = report.run_benchmark("fibers", "bench_that_does_not_exist.py", [])
    assert missing.problem == "not run: benchmarks/bench_that_does_not_exist.py is missing"
    changed = report.Outcome("echo", "bench_echo.py", [{"unexpected": True}], output="its own table")
    text = report.render([missing, changed], None, quick=True)
    assert "_not run: benchmarks/bench_that_does_not_exist.py is missing_" in text
    assert "figures in an unexpected format" in text and "its own table" in text
    assert "A `--quick` smoke run" in text


def test_the_chart_is_a_png_even_with_benchmarks_missing(report: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # in the bench extra, not the test extra
    chart = tmp_path / "results.png"
    assert report.draw_chart(outcomes(report), chart)
    assert chart.read_bytes().startswith(b"\x89PNG")
    missing = report.Outcome("echo", "bench_echo.py", problem="not run: benchmarks/bench_echo.py is missing")
    assert report.draw_chart([missing], chart)
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert report.draw_curve_charts(missing, tmp_path) == {}


def test_a_chart_per_scale_curve(report: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    echo = report.Outcome("echo", "bench_echo.py", ECHO_CURVES, args=["--rounds", "3"])
    drawn = report.draw_curve_charts(echo, tmp_path)
    assert drawn == {
        "connections (1 KiB messages)": tmp_path / "echo_connections.png",
        "message size (50 connections)": tmp_path / "echo_sizes.png",
    }
    for path in drawn.values():
        assert path.read_bytes().startswith(b"\x89PNG")
    # no curves in the figures (the main table only): no curve chart
    plain = report.Outcome("echo", "bench_echo.py", ECHO_RUNS, args=["--rounds", "3"])
    assert report.draw_curve_charts(plain, tmp_path / "nothing") == {}


def test_the_machine_note_says_how_busy_the_machine_was(report: ModuleType) -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("reads /proc/stat (Linux)")
    watch = report.MachineWatch()
    sum(i * i for i in range(200_000))  # let some CPU time pass
    note = watch.note()
    assert note == "" or note.startswith(("The machine was shared and busy", "The machine was otherwise"))


def test_the_figures_are_kept_and_render_again(report: ModuleType, tmp_path: Path) -> None:
    kept = tmp_path / "figures.json"
    report.save_outcomes(outcomes(report), "The machine was otherwise close to idle.", kept, quick=True)
    loaded, machine, date, quick = report.load_outcomes(kept)
    assert machine == "The machine was otherwise close to idle." and quick
    assert report.render(loaded, None, quick=False, machine=machine, date=date) == report.render(
        outcomes(report), None, quick=False, machine=machine, date=date
    )
    not_figures = tmp_path / "other.json"
    not_figures.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"other\.json holds no figures written by report\.py"):
        report.load_outcomes(not_figures)


def test_the_floor_of_a_suspension_is_native_sleep0_plus_a_switch_pair(report: ModuleType) -> None:
    row = {"native": 3000.0, "greenbridge": 4500.0, "sqlalchemy": 5000.0}
    results = {
        "loops": {"asyncio": {"await_sleep0": row}},
        "floors": {"asyncio": {"switch_pair": 600.0}},
    }
    (note, blank) = report.floor_notes(results, "asyncio")
    assert "3,000 ns + one greenlet switch pair 600 ns = 3,600 ns" in note
    assert "greenbridge 1.25x of it" in note
    assert "sqlalchemy 0.72x" in note
    assert blank == ""
    # Figures from before the floor was measured render without it.
    assert report.floor_notes({"loops": {"asyncio": {"await_sleep0": row}}}, "asyncio") == []
