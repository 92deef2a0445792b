"""greenbridge.flow: sources, sinks, helpers, io compatibility and the asyncio stream adapters."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from _net_helpers import gather_green, wait_until

import greenbridge as gb
from greenbridge import flow


def test_string_source_reads_in_pieces() -> None:
    src = flow.string_source(b"hello world")
    buf = bytearray(4)
    assert src.read_into(buf) == 4 and buf == b"hell"
    assert src.read(100) == b"o world"
    assert src.read() == b""
    assert src.read_into(buf) == 0


def test_string_source_encodes_str() -> None:
    assert flow.string_source("héllo").readall() == "héllo".encode()


def test_read_negative_reads_everything() -> None:
    assert flow.string_source(b"x" * 200_000).read(-1) == b"x" * 200_000


def test_buffer_sink_appends() -> None:
    out = bytearray(b">")
    sink = flow.buffer_sink(out)
    assert sink.write(b"ab") == 2
    assert sink.write(memoryview(b"cd")) == 2
    assert out == b">abcd"


def test_copy_counts_and_copies() -> None:
    data = bytes(range(256)) * 1000
    out = bytearray()
    assert flow.copy(flow.string_source(data), flow.buffer_sink(out)) == len(data)
    assert out == data


def test_read_exact() -> None:
    src = flow.string_source(b"abcdef")
    assert flow.read_exact(src, 4) == b"abcd"
    assert flow.read_exact(src, 0) == b""
    with pytest.raises(EOFError) as info:
        flow.read_exact(src, 5)
    assert info.value.args[1] == b"ef"
    with pytest.raises(ValueError):
        flow.read_exact(src, -1)


def test_closed_flows_raise_closed_resource_error() -> None:
    src = flow.string_source(b"abc")
    sink = flow.buffer_sink(bytearray())
    with src, sink:
        pass
    assert src.closed and sink.closed
    with pytest.raises(gb.ClosedResourceError):
        src.read()
    with pytest.raises(gb.ClosedResourceError):
        sink.write(b"x")
    with pytest.raises(gb.ClosedResourceError):
        src.__enter__()


def test_flows_are_raw_io() -> None:
    src = flow.string_source(b'{"a": 1}\nline two\n')
    assert isinstance(src, io.RawIOBase) and src.readable() and not src.writable()
    assert not src.seekable()
    buffered = io.BufferedReader(src)
    assert json.loads(buffered.readline()) == {"a": 1}
    assert io.TextIOWrapper(buffered, encoding="utf-8").read() == "line two\n"
    sink = flow.buffer_sink(out := bytearray())
    assert sink.writable() and not sink.readable()
    with io.TextIOWrapper(io.BufferedWriter(sink), encoding="utf-8") as text:
        json.dump([1, 2], text)
    assert out == b"[1, 2]"


# -- adapters over asyncio streams -----------------------------------------------------------------


@pytest.mark.green
def test_stream_adapters_echo() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gb.spawn_green(_echo, flow.source_of_reader(reader), flow.sink_of_writer(writer))

    server = gb.await_from_green(asyncio.start_server(serve, "127.0.0.1", 0))
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = gb.await_from_green(asyncio.open_connection("127.0.0.1", port))
        src, dst = flow.source_of_reader(reader), flow.sink_of_writer(writer)
        dst.write(b"through the adapters")
        assert flow.read_exact(src, 20) == b"through the adapters"
        dst.close()
        gb.await_from_green(writer.wait_closed())
    finally:
        server.close()
        gb.await_from_green(server.wait_closed())


def _echo(src: flow.Source, dst: flow.Sink) -> None:
    with dst:
        flow.copy(src, dst)


@pytest.mark.green
def test_sink_of_writer_honours_backpressure() -> None:
    """A sink over a StreamWriter whose peer does not read blocks in drain(), bounded."""
    accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append((reader, writer))

    server = gb.await_from_green(asyncio.start_server(serve, "127.0.0.1", 0))
    try:
        port = server.sockets[0].getsockname()[1]
        _reader, writer = gb.await_from_green(asyncio.open_connection("127.0.0.1", port))
        sink = flow.sink_of_writer(writer)
        written = {"n": 0}
        chunk = b"z" * 65536
        total = 8 * 1024 * 1024

        def produce() -> None:
            while written["n"] < total:
                sink.write(chunk)
                written["n"] += len(chunk)
            sink.close()

        def consume() -> int:
            # Let the producer fill every buffer and block before reading anything.
            wait_until(lambda: bool(accepted) and _blocked_in_drain(writer))
            stalled_at = written["n"]
            assert stalled_at < total
            data = flow.source_of_reader(accepted[0][0]).readall()
            assert len(data) == total
            return stalled_at

        gather_green(produce, consume)
        accepted[0][1].close()
        gb.await_from_green(writer.wait_closed())
    finally:
        server.close()
        gb.await_from_green(server.wait_closed())


def _blocked_in_drain(writer: asyncio.StreamWriter) -> bool:
    protocol: Any = writer.transport.get_protocol()
    return bool(protocol._paused)


@pytest.mark.green
def test_sink_of_writer_raises_once_the_connection_is_gone() -> None:
    import socket
    import struct

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset for the client

    server = gb.await_from_green(asyncio.start_server(serve, "127.0.0.1", 0))
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = gb.await_from_green(asyncio.open_connection("127.0.0.1", port))
        with pytest.raises(ConnectionResetError):
            flow.source_of_reader(reader).read()  # the reader's own error comes through
        sink = flow.sink_of_writer(writer)
        with pytest.raises(ConnectionError):
            sink.write(b"into the void")
        sink.close()
    finally:
        server.close()
        gb.await_from_green(server.wait_closed())


def test_nothing_outlives_the_loop(gb_backend: str) -> None:
    """The per-loop wake batches of network flows go with their loops."""
    import gc

    from _net_helpers import echo, serving

    from greenbridge import net
    from greenbridge._wake_batch import _batches

    def one_exchange() -> None:
        with net.listen("127.0.0.1", 0) as listener, serving(listener, echo):
            with net.connect(*listener.address) as conn:
                conn.write(b"x")
                assert conn.read() == b"x"

    for _ in range(3):
        gb.run(one_exchange, backend=gb_backend)
    gc.collect()
    assert len(_batches) == 0
