"""One exclusive slot per resource: a second reader, writer, acceptor or receiver gets
``gb.BusyResourceError`` at once, and the first one's operation is not disturbed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _net_helpers import gather_green, wait_until

import greenbridge as gb
from greenbridge import flow, net

pytestmark = pytest.mark.green

HOST = "127.0.0.1"


def connected_pair(listener: net.Listener) -> tuple[net.Connection, net.Connection]:
    accepted: list[net.Connection] = []
    _, client = gather_green(
        lambda: accepted.append(listener.accept()[0]), lambda: net.connect(*listener.address)
    )
    return accepted[0], client


def in_background(fn: Any) -> asyncio.Task[Any]:
    return asyncio.ensure_future(gb.spawn_green(fn))


def test_two_readers_of_a_connection() -> None:
    with net.listen(HOST, 0) as listener:
        server, client = connected_pair(listener)
        with server, client:
            first = in_background(lambda: server.read())
            wait_until(lambda: server._protocol._reader is not None)
            with pytest.raises(gb.BusyResourceError, match="already reading"):
                server.read()
            with pytest.raises(gb.BusyResourceError):
                server.read_into(bytearray(10))
            assert isinstance(gb.BusyResourceError("x"), RuntimeError)
            client.write(b"for the first reader")
            assert gb.await_from_green(first) == b"for the first reader"
            client.write(b"next")  # the slot is free again
            assert server.read() == b"next"


def test_two_writers_of_a_connection() -> None:
    chunk = b"w" * 65536
    total = 32 * 1024 * 1024  # more than the kernel buffers: the writer parks under backpressure
    with net.listen(HOST, 0) as listener:
        server, client = connected_pair(listener)
        with server, client:

            def writer() -> None:
                for _ in range(total // len(chunk)):
                    client.write(chunk)

            first = in_background(writer)
            wait_until(lambda: client._protocol._drainer is not None)
            with pytest.raises(gb.BusyResourceError, match="already writing"):
                client.write(b"SECOND")  # refused before a byte is sent
            reader = in_background(lambda: flow.read_exact(server, total))
            gb.await_from_green(first)
            client.write(b"END")  # the slot is free again
            client.shutdown("send")
            data = gb.await_from_green(reader)
            rest = server.readall()
    assert data == b"w" * total  # nothing of the refused write, nothing lost
    assert rest == b"END"


def test_two_acceptors_of_a_listener() -> None:
    with net.listen(HOST, 0) as listener:
        first = in_background(listener.accept)
        wait_until(lambda: listener._waiter is not None)
        with pytest.raises(gb.BusyResourceError, match="already accepting"):
            listener.accept()
        with net.connect(*listener.address) as client:
            conn, _ = gb.await_from_green(first)
            with conn:
                client.write(b"hello")
                assert conn.read() == b"hello"


def test_two_receivers_of_a_datagram_socket() -> None:
    with gb.net.datagram_socket(local_addr=(HOST, 0)) as server:
        first = in_background(server.recv)
        wait_until(lambda: server._protocol._reader is not None)
        with pytest.raises(gb.BusyResourceError, match="already receiving"):
            server.recv()
        with net.datagram_socket(remote_addr=server.address) as client:
            client.send(b"datagram")
            data, _ = gb.await_from_green(first)
    assert data == b"datagram"


def test_two_readers_of_a_stream_reader_source() -> None:
    async def open_pair() -> tuple[Any, Any, Any]:
        accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )
        server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), HOST, 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        return server, (reader, writer), await accepted

    server, (reader, writer), (_peer_reader, peer_writer) = gb.await_from_green(open_pair())
    try:
        source = flow.source_of_reader(reader)
        first = in_background(lambda: source.read())
        gb.sleep(0.01)
        with pytest.raises(gb.BusyResourceError, match="already reading"):
            source.read()
        peer_writer.write(b"for the first")
        assert gb.await_from_green(first) == b"for the first"
    finally:
        writer.close()
        peer_writer.close()
        server.close()
        gb.await_from_green(server.wait_closed())
