"""An ASGI app served by uvicorn in-process, on the test's own loop, on 127.0.0.1 (green code)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

import greenbridge as gb


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn while the block runs; yields its base URL. Green code only:
    the server runs as a Task on the caller's loop and has stopped when the block exits."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    gb.await_from_green(server.startup(sockets=[sock]))  # listening once this returns
    main = asyncio.get_running_loop().create_task(server.main_loop())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        gb.await_from_green(main)
        gb.await_from_green(server.shutdown(sockets=[sock]))
