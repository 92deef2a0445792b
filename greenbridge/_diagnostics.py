"""Diagnostics: what every green fiber is doing, with the frames asyncio's task dumps miss."""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
import types
from collections.abc import Iterator
from typing import Any, TextIO

from greenlet import getcurrent, greenlet

from ._control import _Fiber
from ._core import _C_DRIVER, _drive_py, _live_fibers
from ._switch import _fiber_switch, _open_switches

__all__ = ("dump_fibers",)

# The helpers below are shared by ``dump_fibers`` and the pytest plugin's leak report.

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_DRIVER_CODE = _drive_py.__code__


def _host_tasks() -> dict[greenlet, asyncio.Task[object]]:
    """The Task hosting each fiber that a Task's own await chain drives (found by following the
    chain down to the fiber's driver); fibers nested inside another fiber's await are not."""
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running loop
        return {}
    hosts: dict[greenlet, asyncio.Task[object]] = {}
    for task in tasks:
        awaiting: Any = task.get_coro()
        while awaiting is not None:
            if type(awaiting) is _C_DRIVER:  # the accelerator's driver: no frame, a ``fiber``
                if awaiting.fiber is not None:
                    hosts[awaiting.fiber] = task
                break
            frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "gi_frame", None)
            if frame is not None and frame.f_code is _DRIVER_CODE:
                fiber = frame.f_locals.get("fiber")
                if fiber is not None:
                    hosts[fiber] = task
                break
            awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)
    # The running fiber's chain is being stepped (no cr_await to follow): its Task is the
    # current one, unless a waker resumed it outside its Task's step.
    current = getcurrent()
    if type(current) is _Fiber and not current._direct:
        running = asyncio.current_task()
        if running is not None:
            hosts[current] = running
    return hosts


def _green_frames(fiber: greenlet) -> Iterator[types.FrameType]:
    """The frames of a suspended fiber, innermost first."""
    frame = fiber.gr_frame
    while frame is not None:
        yield frame
        frame = frame.f_back


def _user_frames(fiber: greenlet) -> list[types.FrameType]:
    """The fiber's frames, outermost first, without greenbridge's own (bridge, waits, switch)."""
    if fiber is getcurrent():
        frames: list[types.FrameType] = []
        frame: types.FrameType | None = sys._getframe(2)  # skip _user_frames and dump_fibers
        while frame is not None:
            frames.append(frame)
            frame = frame.f_back
    else:
        frames = list(_green_frames(fiber))
    frames.reverse()
    return [f for f in frames if not f.f_code.co_filename.startswith(_PACKAGE_DIR)]


def _describe_leaked(number: int, fiber: greenlet) -> str:
    """A leaked fiber for the pytest plugin's report: where it is suspended, in user frames."""
    lines = [f"  fiber {number}, suspended at:"]
    frames = _user_frames(fiber)
    if not frames:
        lines.append("    (no frames outside greenbridge)")
    for frame in frames:
        code = frame.f_code
        lines.append(f'    File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
    return "\n".join(lines)


def dump_fibers(file: TextIO | None = None) -> None:
    """Print every live green fiber of this thread to ``file`` (default ``sys.stderr``): the Task
    hosting it, the switch it was forked on, the switches whose body it runs, and its green
    stack, outermost frame first (greenbridge's own frames left out).

    Useful from a debugger, a signal handler or a test that hangs. Never suspends; callable from
    anywhere on the loop's thread, green or not.
    """
    out = sys.stderr if file is None else file
    fibers = _live_fibers()
    hosts = _host_tasks()
    hosted: dict[greenlet, list[str]] = {}
    for switch, host in list(_open_switches.items()):
        hosted.setdefault(host, []).append(repr(switch))
    current = getcurrent()
    print(f"{len(fibers)} live green fiber(s)", file=out)
    for number, fiber in enumerate(fibers, 1):
        task = hosts.get(fiber)
        state = "running" if fiber is current else "suspended"
        name = task.get_name() if task is not None else "(Task unknown: nested in another fiber's await)"
        print(f"fiber {number}: {name}, {state}", file=out)
        forked_on = _fiber_switch.get(fiber)
        if forked_on is not None:
            print(f"  forked on {forked_on!r}", file=out)
        for description in hosted.get(fiber, ()):
            print(f"  runs the body of {description}", file=out)
        frames = _user_frames(fiber)
        summary = traceback.StackSummary.extract((f, f.f_lineno) for f in frames)
        for line in summary.format():
            out.write("  " + line.replace("\n", "\n  ").rstrip(" "))
    out.flush()
