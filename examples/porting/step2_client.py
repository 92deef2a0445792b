"""Porting guide, step 2: the client is direct-style now (``net.connect``, ``BufReader``); the
server is still asyncio's.

See docs/porting.md. Run: ``python3 examples/porting/step2_client.py``
"""

from __future__ import annotations

import asyncio

import greenbridge as gb
from greenbridge import net


async def handle_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy everything the client sends back to it."""
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def run_server(port: int) -> asyncio.Server:
    """Run an echo server on 127.0.0.1:``port`` (0: any free port)."""
    return await asyncio.start_server(handle_client, "127.0.0.1", port)


def run_client(port: int) -> None:
    """Test the echo server on 127.0.0.1:``port``, in direct style."""
    with net.connect("127.0.0.1", port) as conn:
        conn.write(b"Hello\n")
        conn.shutdown("send")
        msg = gb.BufReader(conn, max_size=100).take_all()
        print(f"Client got: {msg!r}")


def main() -> None:
    server = gb.await_from_green(run_server(0))
    run_client(server.sockets[0].getsockname()[1])
    server.close()
    gb.await_from_green(server.wait_closed())


if __name__ == "__main__":
    gb.run(main)
