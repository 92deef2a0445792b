"""gb.dump_fibers: every live fiber, its switch, and its green stack."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import greenbridge as gb
from greenbridge import fiber

Run = Callable[..., Any]


def parked_in_a_helper(event: gb.Event) -> None:
    event.wait()


def worker(event: gb.Event) -> None:
    parked_in_a_helper(event)


def test_dump_shows_each_fiber_its_switch_and_its_green_stack(run_green: Run) -> None:
    def main() -> tuple[str, str]:
        out = io.StringIO()
        event = gb.Event()
        with gb.Switch() as sw:
            sw.fork(worker, event)
            fiber.yield_()
            gb.dump_fibers(out)
            event.set()
        host = asyncio.current_task()
        assert host is not None
        return out.getvalue(), host.get_name()  # "Task-1"; "None" under 3.13.0's eager factory

    text, host_name = run_green(main)
    assert text.startswith("2 live green fiber(s)\n")
    blocks = text.split("\nfiber ")[1:]
    running = next(b for b in blocks if "running" in b.splitlines()[0])
    suspended = next(b for b in blocks if "suspended" in b.splitlines()[0])
    # The main fiber runs the body of the switch; its stack ends in main().
    assert "runs the body of <Switch open, 1 fiber(s)" in running
    assert "in main" in running
    assert running.startswith((f"1: {host_name}, running", f"2: {host_name}, running"))
    # The worker was forked on the switch; its stack shows where it is parked, outermost first.
    assert "forked on <Switch open" in suspended
    frames = [line.split(" in ")[-1] for line in suspended.splitlines() if line.startswith("    File")]
    assert frames == ["worker", "parked_in_a_helper"]
    assert "event.wait()" in suspended  # the source line, as in a traceback
    assert "_sync.py" not in suspended  # greenbridge's own frames are left out


def test_dump_names_the_hosting_task_and_works_outside_green(run_async: Run) -> None:
    async def main() -> str:
        event = gb.Event()
        task = asyncio.create_task(gb.spawn_green(worker, event), name="the-host")
        await asyncio.sleep(0)
        out = io.StringIO()
        gb.dump_fibers(file=out)  # from a coroutine: nothing running in green
        event.set()
        await task
        return out.getvalue()

    text = run_async(main)
    assert "1 live green fiber(s)" in text
    assert "fiber 1: the-host, suspended" in text


def test_dump_with_no_fibers(capsys: Any) -> None:
    gb.dump_fibers()
    assert capsys.readouterr().err == "0 live green fiber(s)\n"
