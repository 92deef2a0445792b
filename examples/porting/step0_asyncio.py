"""Porting guide, the starting point: an asyncio echo server and client, unchanged asyncio.

See docs/porting.md. Run: ``python3 examples/porting/step0_asyncio.py``
"""

from __future__ import annotations

import asyncio


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


async def main() -> None:
    server = await run_server(0)
    port = server.sockets[0].getsockname()[1]
    await run_client(port)
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
