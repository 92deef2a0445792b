"""The debug-mode watchdog: name the call that keeps a loop from turning for more than 100 ms.

asyncio's debug mode already logs a step that took too long ("Executing <Task ...> took 0.3
seconds"), but only once it has ended, when the fiber has moved on: it cannot say *which call*
blocked. Patched calls never block, so a stall in a fiber means something the patch could not
reach (a C extension doing its own I/O, a name bound before ``patch_blocking()``). The watchdog is
a daemon thread per loop in debug mode, started by the first patched call a fiber makes on it
(and by ``patch_blocking()`` called inside the running loop). It posts a heartbeat to the loop
every ``_BEAT`` seconds; when one is not served within ``STALL`` seconds it samples the loop
thread's stack (``sys._current_frames``: the running greenlet's frames) and, once the loop turns
again, logs one warning on the ``greenbridge`` logger, from the loop's thread, naming the frames
where the loop was stuck. The thread ends when its loop closes.

Rejected: timing the fiber's steps from a patched call, which sees nothing when the code that
blocks never makes a patched call -- the very case the report is for.
"""

from __future__ import annotations

import asyncio
import linecache
import logging
import os
import sys
import threading
import time
import types
import weakref

__all__ = ("STALL", "watch")

STALL = 0.1  # seconds without a loop turn that count as blocking the loop (asyncio's own threshold)
_BEAT = 0.02  # seconds between heartbeats while the loop is healthy

logger = logging.getLogger("greenbridge")

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
_watched: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_lock = threading.Lock()


def watch(loop: asyncio.AbstractEventLoop) -> None:
    """Start the watchdog of ``loop`` (running in this thread) if it is in debug mode and has none.
    Never suspends, never raises."""
    if not loop.get_debug() or loop in _watched:
        return
    with _lock:
        if loop in _watched:
            return
        _watched.add(loop)
    thread = threading.Thread(
        target=_watch,
        args=(weakref.ref(loop), threading.get_ident()),
        name="greenbridge-watchdog",
        daemon=True,
    )
    thread.start()


def _describe(frame: types.FrameType | None) -> tuple[bool, list[str]]:
    """(whether the stack is a green fiber's, the user's frames innermost last, as text)."""
    frames: list[types.FrameType] = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    # A fiber's greenlet stack starts in greenbridge's core; the loop greenlet's at asyncio's runner.
    in_fiber = not any(f.f_code.co_filename.startswith(_ASYNCIO_DIR) for f in frames)
    lines = []
    for f in frames:
        filename = f.f_code.co_filename
        if filename.startswith(_PACKAGE_DIR) or filename.startswith(_ASYNCIO_DIR):
            continue
        source = linecache.getline(filename, f.f_lineno).strip()
        lines.append(f'  File "{filename}", line {f.f_lineno}, in {f.f_code.co_name}\n    {source}')
    return in_fiber, lines[-5:]


def _report(blocked: float, task: str, in_fiber: bool, where: list[str]) -> None:
    who = f"green fiber (Task {task})" if in_fiber else f"loop callback (Task {task})"
    logger.warning(
        "a %s blocked the event loop for at least %.2f s (the limit is %.1f s); it was stuck in:\n%s\n"
        "Make that call cooperative (gb.patch_blocking() covers socket, ssl, select, selectors and "
        "time.sleep when they are looked up after it), or move it to a thread with gb.run_in_thread().",
        who,
        blocked,
        STALL,
        "\n".join(where) or "  (no Python frame: a C function)",
    )


def _watch(loop_ref: weakref.ref[asyncio.AbstractEventLoop], thread_id: int) -> None:
    served = threading.Event()
    while True:
        loop = loop_ref()
        if loop is None or loop.is_closed():
            return
        served.clear()
        last_turn = time.monotonic()
        try:
            loop.call_soon_threadsafe(served.set)
        except RuntimeError:  # closed meanwhile
            return
        del loop
        if served.wait(STALL):
            time.sleep(_BEAT)
            continue
        loop = loop_ref()
        if loop is None or not loop.is_running():
            # Stopped, not stuck: wait for it to run again (or close) before the next heartbeat.
            while loop is not None and not loop.is_closed() and not served.wait(_BEAT * 5):
                pass
            continue
        task = asyncio.current_task(loop)
        task_name = task.get_name() if task is not None else "none"
        in_fiber, where = _describe(sys._current_frames().get(thread_id))
        del loop
        while not served.wait(_BEAT * 5):
            loop = loop_ref()
            if loop is None or loop.is_closed():
                return
            del loop
        blocked = time.monotonic() - last_turn
        loop = loop_ref()
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(_report, blocked, task_name, in_fiber, where)
        except RuntimeError:
            return
        del loop
