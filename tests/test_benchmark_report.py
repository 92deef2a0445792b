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
    "loop": "asyncio",
    "delay": 0.0001,
    "rounds": 5,
    "figures": {
        "1000": {
            "greenbridge": {"time": 0.02, "memory": 8000.0},
            "asyncio": {"time": 0.01, "memory": 1000.0},
            "gevent": {"time": "skipped: no gevent", "memory": "skipped: no gevent"},
        }
    },
}
ECHO_RUNS = [
    [
        {"server": "gb-run_server", "loop": "asyncio", "rps": 30000.0, "cpu_us": 20.0},
        {"server": "streams", "loop": "asyncio", "rps": 10000.0, "cpu_us": 60.0},
        {"server": "gevent", "loop": "gevent", "rps": 20000.0},
    ],
    [
        {"server": "gb-run_server", "loop": "asyncio", "rps": 20000.0, "cpu_us": 30.0},
        {"server": "streams", "loop": "asyncio", "rps": 12000.0, "cpu_us": 40.0},
        {"server": "gevent", "loop": "gevent", "rps": 10000.0},
    ],
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
    # fibers: per-fiber time, memory, ratios; a skipped peer says so
    assert "| 1,000 | 20.00 us | 10.00 us | skipped: no gevent | 8,000 B | 1,000 B |" in text
    assert "| 2.00x, 8.00x | n/a, n/a |" in text
    # echo: medians (of the runs), CPU per round trip, ratios on the same loop (gevent: its own)
    assert "Median of 3 round(s), then of 2 runs." in text
    assert "| gb-run_server | 25,000 (25.00 us) | - |" in text
    assert "| gevent | - | 15,000 |" in text
    assert "| gb-run_server / streams | 2.27x (2.00x) |" in text
    assert "| gb-run_server / gevent | 1.67x (n/a) |" in text


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
