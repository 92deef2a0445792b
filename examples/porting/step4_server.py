"""Porting guide, step 4: the server is direct-style too (``net.listen``, ``net.run_server``),
and ``fiber.first`` bounds its lifetime: no asyncio code is left.

See docs/porting.md. Run: ``python3 examples/porting/step4_server.py``
"""

from __future__ import annotations

from typing import Any

import greenbridge as gb
from greenbridge import fiber, flow, net


def handle_client(conn: net.Connection, addr: Any) -> None:
    """Copy everything the client sends back to it."""
    flow.copy(conn, conn)


def run_client(port: int) -> None:
    """Test the echo server on 127.0.0.1:``port``, in direct style."""
    with net.connect("127.0.0.1", port) as conn:
        conn.write(b"Hello\n")
        conn.shutdown("send")
        msg = gb.BufReader(conn, max_size=100).take_all()
        print(f"Client got: {msg!r}")


def main() -> None:
    with net.listen("127.0.0.1", 0) as listener:
        port = listener.address[1]
        fiber.first(
            lambda: net.run_server(listener, handle_client),
            lambda: run_client(port),
        )


if __name__ == "__main__":
    gb.run(main)
