"""Every example runs, on the selected backend, and prints what it promises."""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

Run = Callable[..., Any]


def load(relative: str) -> ModuleType:
    """Import an example file as a fresh module (examples are scripts, not a package)."""
    path = EXAMPLES / relative
    name = "example_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the demo -----------------------------------------------------------------------------------------


def check_demo_output(out: str, backend: str) -> None:
    lines = out.splitlines()
    assert lines[0].startswith("direct-style echo server on 127.0.0.1:")
    assert lines[0].endswith(f"({backend} event loop)")
    assert lines[1] == "  green client   <- 'hello from plain def code'"
    assert lines[2] == "  asyncio client <- 'hello from an asyncio coroutine'"
    assert lines[3].startswith("  1000 green clients, 100 at a time: all echoed in ")
    assert lines[4] == "  a read that gets no reply, under gb.with_timeout(0.1, ...): TimeoutError"
    assert lines[5].startswith("server stopped, every fiber finished; ")
    assert len(lines) == 6


def test_demo(run_green: Run, gb_backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    demo = load("demo.py")
    run_green(demo.main, gb_backend)
    check_demo_output(capsys.readouterr().out, gb_backend)


def test_demo_as_the_readme_runs_it() -> None:
    env = {**os.environ, "PYTHONDEVMODE": "1"}
    done = subprocess.run(
        [sys.executable, "-W", "error", "examples/demo.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    check_demo_output(done.stdout, "uvloop")  # the README's command installs uvloop


# -- the DB-API driver over aiosqlite ---------------------------------------------------------------------


def test_dbapi_example(run_async: Run, capsys: pytest.CaptureFixture[str]) -> None:
    example = load("dbapi_aiosqlite.py")
    run_async(example.main)
    lines = capsys.readouterr().out.splitlines()
    report = [
        "apples  10",
        "pears    0",
        "plums    5",
        "1 item(s) out of stock",
    ]
    assert lines[:8] == [f"north: {line}" for line in report] + [f"south: {line}" for line in report]
    assert lines[8] == "the event loop ran on while the sync code waited for the database"
    assert lines[10] == "the same report on the standard library's sqlite3: identical"


def test_dbapi_driver_follows_pep_249(run_green: Run) -> None:
    dbapi = load("dbapi_aiosqlite.py")
    assert (dbapi.apilevel, dbapi.paramstyle) == ("2.0", "qmark")
    assert issubclass(dbapi.IntegrityError, dbapi.DatabaseError)

    def green() -> None:
        conn = dbapi.connect(":memory:")
        try:
            cur = conn.cursor()
            with pytest.raises(dbapi.ProgrammingError, match="no statement executed"):
                cur.fetchone()
            cur.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
            cur.execute("INSERT INTO t (name) VALUES (?)", ("a",))
            assert cur.lastrowid == 1
            cur.executemany("INSERT INTO t (name) VALUES (?)", [("b",), ("c",), ("d",)])
            assert cur.rowcount == 3
            with conn:  # commits
                pass
            cur.execute("SELECT id, name FROM t ORDER BY id")
            assert [column[0] for column in cur.description] == ["id", "name"]
            assert cur.fetchone() == (1, "a")
            assert cur.fetchmany(2) == [(2, "b"), (3, "c")]
            assert list(cur) == [(4, "d")]
            with pytest.raises(dbapi.IntegrityError), conn:  # rolls back
                cur.execute("INSERT INTO t (id, name) VALUES (?, ?)", (5, "e"))
                cur.execute("INSERT INTO t (id, name) VALUES (?, ?)", (5, "again"))
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (4,)
            cur.close()
        finally:
            conn.close()

    run_green(green)


def test_dbapi_report_is_the_same_on_sqlite3(run_green: Run) -> None:
    dbapi = load("dbapi_aiosqlite.py")
    ours = run_green(dbapi.report_with, "x")
    with sqlite3.connect(":memory:") as plain:
        theirs = dbapi.stock_report(plain, "x")
    plain.close()
    assert ours == theirs


# -- aiohttp ----------------------------------------------------------------------------------------------


def test_aiohttp_example(run_async: Run, capsys: pytest.CaptureFixture[str]) -> None:
    example = load("aiohttp_green.py")
    run_async(example.main)
    assert capsys.readouterr().out.splitlines() == [
        "GET /quote -> 200: {'items': {'apple': 40, 'bread': 250, 'cheese': 480, 'eggs': 310}, "
        "'total_cents': 1080}",
        "GET /quote -> 502: could not quote ['apple', 'caviar']: upstream said 404 Not Found for "
        "/price/caviar",
        "both servers stopped",
    ]


# -- a requests-based SDK in an aiohttp handler ------------------------------------------------------


def test_blocking_sdk_example(run_async: Run, capsys: pytest.CaptureFixture[str]) -> None:
    import greenbridge as gb

    example = load("blocking_sdk.py")
    gb.patch_blocking()
    try:
        run_async(example.main)
    finally:
        gb.unpatch_blocking()
    assert capsys.readouterr().out.splitlines() == [
        "GET /weather -> 200: Lyon: sunny, 24 °C",
        "GET /weather -> 200: Oslo: snow, -3 °C",
        "GET /weather -> 200: Lima: cloudy, 19 °C",
        "GET /weather -> 404: no forecast for Atlantis",
        "four SDK calls, each waiting 0.2 s upstream, were served at once",
        "both servers stopped",
    ]


def test_blocking_sdk_example_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "examples/blocking_sdk.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines()[-2:] == [
        "four SDK calls, each waiting 0.2 s upstream, were served at once",
        "both servers stopped",
    ]


# -- file objects over a connection -------------------------------------------------------------------


def test_file_objects_example(run_async: Run, capsys: pytest.CaptureFixture[str]) -> None:
    run_async(load("file_objects.py").main)
    assert capsys.readouterr().out.splitlines() == [
        "uploaded 4 rows as gzipped CSV; the server answered {'lines': 4, 'total': 15.25}",
        "the asyncio ticker ran on meanwhile",
    ]


# -- the porting guide's steps ---------------------------------------------------------------------------


def test_porting_step0_asyncio(run_async: Run, capsys: pytest.CaptureFixture[str]) -> None:
    run_async(load("porting/step0_asyncio.py").main)
    assert capsys.readouterr().out == "Client got: b'Hello\\n'\n"


@pytest.mark.parametrize(
    "step", ["step1_event_loop.py", "step2_client.py", "step3_callback.py", "step4_server.py"]
)
def test_porting_steps(step: str, run_green: Run, capsys: pytest.CaptureFixture[str]) -> None:
    run_green(load(f"porting/{step}").main)
    assert capsys.readouterr().out == "Client got: b'Hello\\n'\n"


# -- the README ----------------------------------------------------------------------------------------


def test_readme_example(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", readme, re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1
    assert len([line for line in blocks[0].splitlines() if line.strip()]) <= 16
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out == "b'ping'\n"


def test_readme_keeps_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "    python3 -m pip install -e '.[uvloop]' && python3 examples/demo.py\n" in readme
    assert "    python3 -m pip install -q -e '.[test]' && python3 -m pytest\n" in readme
    for link in ("docs/porting.md", "greenbridge/_core.py", "benchmarks/RESULTS.md"):
        assert f"]({link})" in readme
        assert (ROOT / link).exists()


def test_ci_runs_the_readme_test_command_first_then_the_matrix() -> None:
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^    (python3 -m pip install -q -e .*python3 -m pytest)$", readme, re.MULTILINE)
    assert command is not None
    ci = (ROOT / ".ci" / "run").read_text()
    assert command.group(1) in ci
    assert ci.index(command.group(1)) < ci.index("-m tox")
    assert "apt-get install -y -qq postgresql redis-server" in ci  # the session fixtures' servers
    assert "PYENV_VERSION" in ci
