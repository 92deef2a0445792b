"""The program and the sweep of ``test_ki_sweep.py``, run in a process of its own.

A KeyboardInterrupt at every line of greenbridge's plumbing: a ``sys.settrace`` sweep.

A small serving program (a server, two clients, two echoes each) runs under ``gb.run``; a trace
function counts the line events in greenbridge's own frames, and at the N-th one delivers a
double Ctrl-C exactly as the signal would: it calls the SIGINT handler in force, with the frame
that was executing, twice (asyncio.Runner's protocol: the first cancels the program, the second
raises ``KeyboardInterrupt``). For every N the run must end as ``asyncio.run`` ends on an
interrupt: ``gb.run`` raises ``KeyboardInterrupt``, every fiber that started ran its
``finally``, and no fiber, greenlet or descriptor is left -- never a hang, never swallowed.

The suite interrupts every 5th line event (``GREENBRIDGE_KI_STRIDE``, default 5, or 1 under the
``long`` hypothesis profile: every line event; how many: below).

What is swept depends on the path: with the C accelerator, ``_park``, ``_resume``, ``Waiter``
and ``WakeBatch`` are C, which has no line events and cannot be interrupted between its steps
(about 2,300 line events per backend); with ``GREENBRIDGE_NO_SPEEDUPS=1`` (tox's purepython
environment) their Python lines are swept too (about 3,700).
"""

from __future__ import annotations

import json
import signal
import sys
from types import FrameType
from typing import Any

from _reliability import watch

import greenbridge as gb
from greenbridge import fiber, flow, net

MESSAGE = b"0123456789"


def serving_program(record: list[str]) -> None:
    with net.listen("127.0.0.1", 0) as listener:
        port = listener.address[1]

        def handler(conn: net.Connection, addr: Any) -> None:
            record.append("handler start")
            try:
                flow.copy(conn, conn)
            finally:
                record.append("handler finally")

        def client() -> None:
            record.append("client start")
            try:
                with net.connect("127.0.0.1", port) as conn:
                    for _ in range(2):
                        conn.write(MESSAGE)
                        assert flow.read_exact(conn, len(MESSAGE)) == MESSAGE
            finally:
                record.append("client finally")

        fiber.first(lambda: net.run_server(listener, handler), lambda: fiber.both(client, client))


class Injector:
    """The trace function: counts greenbridge line events, interrupts at number ``at``."""

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.count = 0
        self.fired = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if self.fired:
            return None
        if event == "call":
            module = frame.f_globals.get("__name__", "")
            return self if module.startswith("greenbridge.") else None
        if event == "line":
            if self.count == self.at:
                self.fired = True
                sys.settrace(None)
                handler = signal.getsignal(signal.SIGINT)
                assert callable(handler)
                handler(signal.SIGINT, frame)  # the first Ctrl-C: cancels the program
                handler(signal.SIGINT, frame)  # the second: KeyboardInterrupt, or deferred
            self.count += 1
        return self


def run_once(backend: str, at: int | None) -> tuple[Injector, list[str], BaseException | None]:
    record: list[str] = []
    injector = Injector(at)
    outcome: BaseException | None = None
    sys.settrace(injector)
    try:
        gb.run(serving_program, record, backend=backend)
    except BaseException as exc:  # judged by the caller
        outcome = exc
    finally:
        sys.settrace(None)
    return injector, record, outcome


def sweep(backend: str, stride: int) -> None:
    """Print, as JSON, how many line events there are, how many points were swept, and what
    failed (at most the first 10 reasons matter to the reader)."""
    counted, record, outcome = run_once(backend, None)
    assert outcome is None, outcome
    roles = ["handler start", "handler finally", "client start", "client finally"]
    assert sorted(record) == sorted(roles * 2)
    total = counted.count
    assert total > 200  # the program does cross the plumbing
    failures: list[str] = []
    swept = 0
    for at in range(0, total, stride):
        with watch(backend) as report:
            injector, record, outcome = run_once(backend, at)
        swept += 1
        problems = report.problems()
        if not injector.fired:
            continue  # this run took another path and had fewer line events: nothing injected
        if not isinstance(outcome, KeyboardInterrupt):
            problems.append(f"gb.run ended with {outcome!r}, not KeyboardInterrupt")
        for role in ("handler", "client"):
            if record.count(f"{role} start") != record.count(f"{role} finally"):
                problems.append(f"a {role}'s finally did not run: {record}")
        if problems:
            failures.append(f"interrupt at line event {at}: " + "; ".join(problems))
    print(json.dumps({"total": total, "swept": swept, "failures": failures}))


if __name__ == "__main__":
    sweep(sys.argv[1], int(sys.argv[2]))
