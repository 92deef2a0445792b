"""Helpers shared by the flow, net and TLS tests: a background server and concurrent fibers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import greenbridge as gb
from greenbridge import net


def gather_green(*fns: Callable[[], Any]) -> list[Any]:
    """Run each function in its own fiber (own Task), concurrently; return their results."""
    return list(gb.await_from_green(asyncio.gather(*(gb.spawn_green(fn) for fn in fns))))


@contextlib.contextmanager
def serving(
    listener: net.Listener, handler: Callable[..., Any], **kwargs: Any
) -> Iterator[asyncio.Task[None]]:
    """``net.run_server`` in a background Task; on exit it is stopped and awaited."""
    stop = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(gb.spawn_green(net.run_server, listener, handler, stop=stop, **kwargs))
    try:
        yield task
    finally:
        stop.set_result(None)
        gb.await_from_green(asyncio.wait([task]))
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


def echo(conn: net.Connection, addr: Any) -> None:
    while data := conn.read():
        conn.write(data)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition that no event announces (e.g. "the writer is parked"), fiber-friendly."""
    with gb.timeout(timeout):
        while not predicate():
            gb.sleep(0.005)
