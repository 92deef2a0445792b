"""greenbridge in one second: a direct-style echo server and its clients, on one event loop.

Everything below is plain ``def`` code -- no async, no await -- except one asyncio coroutine,
which talks to the same server from the same loop. Run it with:

    python3 examples/demo.py            # uvloop when installed, else asyncio's loop
"""

from __future__ import annotations

import asyncio
import time

import greenbridge as gb
from greenbridge import fiber, flow, net

CLIENTS = 1000


def echo(conn: net.Connection, addr: object) -> None:
    """The server's handler, one green fiber per connection: send every byte back."""
    flow.copy(conn, conn)


def green_client(port: int, message: str) -> str:
    """A direct-style client: connect, send, half-close, read the whole reply."""
    with net.connect("127.0.0.1", port) as conn:
        conn.write(message.encode())
        conn.shutdown("send")
        return gb.BufReader(conn, max_size=1024).take_all().decode()


async def asyncio_client(port: int, message: str) -> str:
    """An ordinary asyncio client, unchanged, on the same loop."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(message.encode())
    writer.write_eof()
    reply = await reader.read()
    writer.close()
    await writer.wait_closed()
    return reply.decode()


def main(backend: str) -> None:
    started = time.perf_counter()
    stop = gb.Promise[None]()
    with net.listen("127.0.0.1", 0) as listener, gb.Switch() as sw:
        port = listener.address[1]
        sw.fork(lambda: net.run_server(listener, echo, stop=stop))
        print(f"direct-style echo server on 127.0.0.1:{port} ({backend} event loop)")

        print(f"  green client   <- {green_client(port, 'hello from plain def code')!r}")
        reply = gb.await_from_green(asyncio_client(port, "hello from an asyncio coroutine"))
        print(f"  asyncio client <- {reply!r}")

        t0 = time.perf_counter()
        replies = fiber.map(lambda i: green_client(port, f"client {i}"), range(CLIENTS), max_fibers=100)
        assert replies == [f"client {i}" for i in range(CLIENTS)]
        print(f"  {CLIENTS} green clients, 100 at a time: all echoed in {time.perf_counter() - t0:.2f} s")

        with net.connect("127.0.0.1", port) as silent:  # nothing sent: the echo never comes
            try:
                gb.with_timeout(0.1, silent.read, 100)
            except TimeoutError:
                print("  a read that gets no reply, under gb.with_timeout(0.1, ...): TimeoutError")

        stop.resolve(None)  # run_server finishes its connections and returns; the switch closes
    print(f"server stopped, every fiber finished; {time.perf_counter() - started:.2f} s in all")


if __name__ == "__main__":
    try:
        import uvloop  # noqa: F401

        backend = "uvloop"
    except ImportError:
        backend = "asyncio"
    gb.run(main, backend, backend=backend)
