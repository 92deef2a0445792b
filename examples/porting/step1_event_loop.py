"""Porting guide, step 1: switch the event loop to greenbridge, keep every line of asyncio code.

``gb.run`` starts the loop (asyncio's, or uvloop's with ``backend="uvloop"``) and runs a plain
function in a green fiber; that function awaits the old asyncio ``main()`` with
``gb.await_from_green``. See docs/porting.md. Run: ``python3 examples/porting/step1_event_loop.py``
"""

from __future__ import annotations

import asyncio

import greenbridge as gb


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


async def run_client(port: int) -> None:
    """Test the echo server on 127.0.0.1:``port``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"Hello\n")
    await writer.drain()
    writer.write_eof()
    msg = await reader.read()
    print(f"Client got: {msg!r}")
    writer.close()
    await writer.wait_closed()


async def async_main() -> None:
    server = await run_server(0)
    port = server.sockets[0].getsockname()[1]
    await run_client(port)
    server.close()
    await server.wait_closed()


def main() -> None:
    gb.await_from_green(async_main())


if __name__ == "__main__":
    gb.run(main)
