"""greenbridge.net: connections, listeners, servers and UDP, and their behaviour at the edges.

Every test runs on the backend chosen by GREENBRIDGE_BACKEND (asyncio or uvloop); servers bind
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import hashlib
import io
import json
import os
import random
import socket
import tracemalloc
from typing import Any

import pytest
from _net_helpers import echo, gather_green, serving, wait_until

import greenbridge as gb
from greenbridge import flow, net
from greenbridge._protocol import RECEIVE_BUFFER_SIZE, _ConnProtocol

pytestmark = pytest.mark.green

HOST = "127.0.0.1"


# -- basics ---------------------------------------------------------------------------------------


def test_echo_through_run_server() -> None:
    with net.listen(HOST, 0) as listener, serving(listener, echo):
        assert listener.address[0] == HOST and listener.address[1] > 0
        with net.connect(*listener.address) as conn:
            assert conn.write(b"ping") == 4
            assert flow.read_exact(conn, 4) == b"ping"
            assert conn.peername == listener.address


def test_accept_returns_connection_and_address() -> None:
    with net.listen(HOST, 0) as listener:

        def server() -> bytes:
            conn, addr = listener.accept()
            with conn:
                assert addr == conn.peername
                return conn.read()

        def client() -> None:
            with net.connect(*listener.address) as conn:
                conn.write(b"hello")

        received, _ = gather_green(server, client)
    assert received == b"hello"


def test_io_layers_over_a_socket() -> None:
    """io.BufferedReader, io.TextIOWrapper, csv and json.load over a connection, from green code."""
    rows = [["name", "qty"], ["apple", "3"], ["pear", "5"]]

    def handler(conn: net.Connection, addr: Any) -> None:
        text = io.TextIOWrapper(io.BufferedReader(conn), encoding="utf-8", newline="")
        table = list(csv.reader(text))
        out = io.TextIOWrapper(io.BufferedWriter(conn), encoding="utf-8", write_through=True)
        json.dump({"rows": table}, out)
        out.flush()
        conn.shutdown("send")
        # Detach both io layers: a BufferedReader/Writer closes its raw flow when collected.
        text.detach().detach()
        out.detach().detach()

    with net.listen(HOST, 0) as listener, serving(listener, handler):
        with net.connect(*listener.address) as conn:
            writer = io.TextIOWrapper(io.BufferedWriter(conn), encoding="utf-8", newline="")
            csv.writer(writer).writerows(rows)
            writer.flush()
            writer.detach().detach()
            conn.shutdown("send")
            reply = json.load(io.TextIOWrapper(io.BufferedReader(conn), encoding="utf-8"))
    assert reply == {"rows": rows}


def test_connect_refused_is_a_connection_error() -> None:
    with net.listen(HOST, 0) as listener:
        port = listener.address[1]
    with pytest.raises(ConnectionRefusedError):
        net.connect(HOST, port)


def test_connect_timeout_raises_timeout_error() -> None:
    with net.listen(HOST, 0) as listener, pytest.raises(TimeoutError):
        net.connect(*listener.address, timeout=0)


def test_connect_tries_addresses_in_turn() -> None:
    """'localhost' may resolve to ::1 first; only the IPv4 address listens: it still connects."""
    with net.listen(HOST, 0) as listener, serving(listener, echo):
        with net.connect("localhost", listener.address[1]) as conn:
            conn.write(b"x")
            assert conn.read() == b"x"


def test_getaddrinfo() -> None:
    infos = net.getaddrinfo(HOST, 80)
    assert infos[0][4] == (HOST, 80)
    with pytest.raises(socket.gaierror):
        net.getaddrinfo("no-such-host.invalid", 80)


def test_listen_address_in_use() -> None:
    with net.listen(HOST, 0) as listener, pytest.raises(OSError) as info:
        net.listen(HOST, listener.address[1])
    assert info.value.errno == errno.EADDRINUSE


def test_listen_reuse_port() -> None:
    with net.listen(HOST, 0, reuse_port=True) as first:
        with net.listen(HOST, first.address[1], reuse_port=True) as second:
            assert second.address == first.address


def test_unix_sockets(tmp_path: Any) -> None:
    path = str(tmp_path / "echo.sock")
    with net.listen_unix(path) as listener, serving(listener, echo):
        assert listener.address == path
        with net.connect_unix(path) as conn:
            conn.write(b"over unix")
            assert flow.read_exact(conn, 9) == b"over unix"
    assert not os.path.exists(path)


def test_udp_datagrams() -> None:
    with net.datagram_socket(local_addr=(HOST, 0)) as server:
        with net.datagram_socket(remote_addr=server.address) as client:
            client.send(b"one")
            data, addr = server.recv()
            assert data == b"one"
            server.send(data.upper(), addr)
            assert client.recv() == (b"ONE", server.address)
        client_closed_recv = net.datagram_socket(local_addr=(HOST, 0))
        client_closed_recv.close()
        with pytest.raises(gb.ClosedResourceError):
            client_closed_recv.recv()


# -- closing and half-closing ---------------------------------------------------------------------


def test_use_after_close_raises_closed_resource_error() -> None:
    with net.listen(HOST, 0) as listener, serving(listener, echo):
        conn = net.connect(*listener.address)
        conn.close()
        conn.close()  # idempotent
        with pytest.raises(gb.ClosedResourceError):
            conn.write(b"late")
        with pytest.raises(gb.ClosedResourceError):
            conn.read()
        with pytest.raises(gb.ClosedResourceError):
            conn.shutdown("send")
        with pytest.raises(gb.ClosedResourceError):
            conn.__enter__()
    with pytest.raises(gb.ClosedResourceError):
        listener.accept()


def test_close_wakes_a_blocked_reader() -> None:
    with net.listen(HOST, 0) as listener, serving(listener, echo):
        conn = net.connect(*listener.address)

        def reader() -> str:
            try:
                conn.read()
            except gb.ClosedResourceError:
                return "closed"
            return "returned"

        def closer() -> None:
            wait_until(lambda: conn._protocol._reader is not None)
            conn.close()

        assert gather_green(reader, closer)[0] == "closed"


def test_close_wakes_a_blocked_accept() -> None:
    listener = net.listen(HOST, 0)

    def acceptor() -> str:
        try:
            listener.accept()
        except gb.ClosedResourceError:
            return "closed"
        return "accepted"

    def closer() -> None:
        wait_until(lambda: listener._waiter is not None)
        listener.close()

    assert gather_green(acceptor, closer)[0] == "closed"


def test_half_close_client_send() -> None:
    """The client shuts its sending side: the server reads end of input and can still reply."""

    def handler(conn: net.Connection, addr: Any) -> None:
        request = conn.readall()
        conn.write(b"got " + request)

    with net.listen(HOST, 0) as listener, serving(listener, handler):
        with net.connect(*listener.address) as conn:
            conn.write(b"request")
            conn.shutdown("send")
            with pytest.raises(gb.ClosedResourceError):
                conn.write(b"more")
            assert conn.readall() == b"got request"


def test_half_close_server_send() -> None:
    """The server shuts its sending side first: the client reads end of input and can still write."""

    def handler(conn: net.Connection, addr: Any) -> None:
        conn.write(b"banner")
        conn.shutdown("send")
        assert conn.readall() == b"after eof"
        conn.shutdown("all")

    with net.listen(HOST, 0) as listener, serving(listener, handler, on_error=_raise):
        with net.connect(*listener.address) as conn:
            assert conn.readall() == b"banner"
            assert conn.read() == b""  # end of input stays end of input
            conn.write(b"after eof")
            conn.shutdown("send")


def test_shutdown_receive_reads_end_of_input() -> None:
    with net.listen(HOST, 0) as listener, serving(listener, echo):
        with net.connect(*listener.address) as conn:
            conn.write(b"abc")
            wait_until(lambda: len(conn._protocol._rx) > 0)
            conn.shutdown("receive")
            assert conn.read() == b""
            conn.write(b"still sending")  # the other direction is untouched
    with pytest.raises(ValueError):
        conn.shutdown("both")  # type: ignore[arg-type]


def test_input_after_shutdown_receive_is_dropped_with_the_room_still_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop holds a Py_buffer of the room while it calls buffer_updated, where input after
    shutdown("receive") is dropped and a burst's memory given back: that must not fail (it did,
    with BufferError, when the receive buffer released its memoryview by hand)."""
    dropped = asyncio.Event()
    errors: list[BaseException] = []
    original = _ConnProtocol.buffer_updated

    def buffer_updated(self: _ConnProtocol, nbytes: int) -> None:
        try:
            original(self, nbytes)
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            if self._drop_input:
                dropped.set()

    monkeypatch.setattr(_ConnProtocol, "buffer_updated", buffer_updated)

    def handler(conn: net.Connection, addr: Any) -> None:
        assert flow.read_exact(conn, 2) == b"go"
        conn.write(b"x" * 10_000)  # more than MIN_CAPACITY, less than the room: a burst's end
        conn.read()

    with net.listen(HOST, 0) as listener, serving(listener, handler):
        with net.connect(*listener.address) as conn:
            conn.shutdown("receive")
            conn.write(b"go")
            gb.await_from_green(dropped.wait())
            assert errors == []
            assert conn.read() == b""


def _raise(exc: Exception) -> None:
    raise exc


# -- resets ---------------------------------------------------------------------------------------


def test_peer_reset_mid_read() -> None:
    accepted: list[net.Connection] = []

    def handler(conn: net.Connection, addr: Any) -> None:
        accepted.append(conn)
        conn.write(b"partial")
        gb.await_from_green(asyncio.get_running_loop().create_future())  # until cancelled

    with net.listen(HOST, 0) as listener:
        stop = asyncio.get_running_loop().create_future()
        server = asyncio.ensure_future(gb.spawn_green(net.run_server, listener, handler, stop=stop))
        with net.connect(*listener.address) as conn:
            assert conn.read() == b"partial"

            def reader() -> BaseException | None:
                try:
                    conn.read()
                except ConnectionError as exc:
                    return exc
                return None

            def resetter() -> None:
                wait_until(lambda: bool(accepted) and conn._protocol._reader is not None)
                accepted[0].abort()

            error, _ = gather_green(reader, resetter)
            assert isinstance(error, ConnectionResetError)
            with pytest.raises(ConnectionResetError):
                conn.read()  # stays broken
            with pytest.raises(ConnectionError):
                conn.write(b"into the void")
        server.cancel()
        gb.await_from_green(asyncio.wait([server]))
        assert server.cancelled()


# -- backpressure and bulk -----------------------------------------------------------------------


def test_slow_reader_blocks_the_writer_and_memory_stays_bounded() -> None:
    chunk = b"x" * 65536
    total = 10 * 1024 * 1024
    progress = {"written": 0}
    with net.listen(HOST, 0) as listener:

        def writer() -> None:
            conn, _ = listener.accept()
            with conn:
                while progress["written"] < total:
                    conn.write(chunk)
                    progress["written"] += len(chunk)
                conn.shutdown("send")

        def slow_reader() -> tuple[int, int, int]:
            with net.connect(*listener.address) as conn:
                # Read nothing until the writer is parked under backpressure.
                wait_until(lambda: progress["written"] > 0 and _writer_parked(listener_conns))
                stalled_at = progress["written"]
                tracemalloc.start()
                try:
                    received = 0
                    while data := conn.read():
                        received += len(data)
                        assert len(conn._protocol._rx) <= RECEIVE_BUFFER_SIZE
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                return stalled_at, received, peak

        listener_conns: list[net.Connection] = []
        original_accept = listener.accept

        def accept_and_record() -> tuple[net.Connection, Any]:
            conn, addr = original_accept()
            listener_conns.append(conn)
            return conn, addr

        listener.accept = accept_and_record  # type: ignore[method-assign]
        _, (stalled_at, received, peak) = gather_green(writer, slow_reader)
    # The writer stopped well short of the total while nobody read: kernel buffers plus the
    # transport's high-water mark, not 10 MB.
    assert stalled_at < 8 * 1024 * 1024
    assert received == total
    assert peak < 4 * 1024 * 1024, f"peak traced memory while streaming 10 MB: {peak} bytes"


def _writer_parked(conns: list[net.Connection]) -> bool:
    if not conns:
        return False
    conn = conns[0]
    parked = conn._protocol._drainer is not None
    return parked and conn._transport.get_write_buffer_size() <= 2 * 65536 + 65536


def test_ten_megabytes_through_copy_byte_exact() -> None:
    payload = random.Random(4).randbytes(10 * 1024 * 1024)

    def handler(conn: net.Connection, addr: Any) -> None:
        flow.copy(conn, conn)
        conn.shutdown("send")

    with net.listen(HOST, 0) as listener, serving(listener, handler, on_error=_raise):
        with net.connect(*listener.address) as conn:

            def send() -> int:
                copied = flow.copy(flow.string_source(payload), conn)
                conn.shutdown("send")
                return copied

            def receive() -> bytes:
                out = bytearray()
                flow.copy(conn, flow.buffer_sink(out))
                return hashlib.sha256(out).digest()

            copied, digest = gather_green(send, receive)
    assert copied == len(payload)
    assert digest == hashlib.sha256(payload).digest()


# -- cancellation ----------------------------------------------------------------------------------


def test_cancelled_read_loses_nothing() -> None:
    with net.listen(HOST, 0) as listener, serving(listener, echo):
        with net.connect(*listener.address) as conn:
            reader = asyncio.ensure_future(gb.spawn_green(conn.read))
            wait_until(lambda: conn._protocol._reader is not None)
            reader.cancel()
            gb.await_from_green(asyncio.wait([reader]))
            assert reader.cancelled()
            assert conn._protocol._reader is None
            conn.write(b"after the cancelled read")
            assert flow.read_exact(conn, 24) == b"after the cancelled read"


def test_cancelled_write_leaves_the_connection_consistent() -> None:
    """A writer cancelled under backpressure: every byte handed over still arrives, in order,
    and the connection goes on working."""
    chunk = b"y" * 65536
    with net.listen(HOST, 0) as listener:
        server_side: list[net.Connection] = []

        def accept() -> None:
            server_side.append(listener.accept()[0])

        def connect() -> net.Connection:
            return net.connect(*listener.address)

        _, conn = gather_green(accept, connect)
        peer = server_side[0]
        with conn, peer:
            writes = {"started": 0}

            def writer() -> None:
                while True:
                    writes["started"] += 1
                    conn.write(chunk)

            task = asyncio.ensure_future(gb.spawn_green(writer))
            wait_until(lambda: conn._protocol._drainer is not None)
            task.cancel()
            gb.await_from_green(asyncio.wait([task]))
            assert task.cancelled()
            assert conn._protocol._drainer is None

            def finish() -> None:
                conn.write(b"END")  # waits for the drain the reader below makes
                conn.shutdown("send")

            _, received = gather_green(finish, peer.readall)
    assert received == chunk * writes["started"] + b"END"


# -- servers ---------------------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def test_thousand_concurrent_connections() -> None:
    n = 1000
    with net.listen(HOST, 0, backlog=n) as listener, serving(listener, echo, max_connections=n):
        with net.connect(*listener.address) as warm_up:  # the loop's own lazily made fds
            warm_up.write(b".")
            warm_up.read()
        gb.sleep(0)
        fds_before = _open_fds()
        started = 0

        def client(i: int) -> bytes:
            nonlocal started
            with net.connect(*listener.address) as conn:
                started += 1
                # Every connection is open before any finishes: all 1000 at once.
                wait_until(lambda: started == n, timeout=30)
                message = b"%d" % i
                conn.write(message)
                return flow.read_exact(conn, len(message))

        results = gather_green(*(lambda i=i: client(i) for i in range(n)))
        # Every socket is closed once the handlers and transports have finished closing.
        wait_until(lambda: _open_fds() <= fds_before)
    assert results == [b"%d" % i for i in range(n)]


def test_run_server_limits_concurrent_handlers() -> None:
    running = 0
    peak = 0
    release = asyncio.get_running_loop().create_future()

    def handler(conn: net.Connection, addr: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        gb.await_from_green(asyncio.shield(release))
        conn.write(b"done")
        running -= 1

    with net.listen(HOST, 0) as listener, serving(listener, handler, max_connections=2):

        def client() -> bytes:
            with net.connect(*listener.address) as conn:
                return conn.read()

        def releaser() -> None:
            wait_until(lambda: running == 2)
            release.set_result(None)

        results = gather_green(client, client, client, client, releaser)
    assert results[:4] == [b"done"] * 4
    assert peak == 2


def test_run_server_reports_handler_errors_and_goes_on() -> None:
    errors: list[Exception] = []

    def handler(conn: net.Connection, addr: Any) -> None:
        if conn.read() == b"boom":
            raise ValueError("bad request")
        conn.write(b"ok")

    with net.listen(HOST, 0) as listener, serving(listener, handler, on_error=errors.append):
        with net.connect(*listener.address) as conn:
            conn.write(b"boom")
            assert conn.read() == b""  # the server closed that connection
        with net.connect(*listener.address) as conn:
            conn.write(b"fine")
            assert conn.read() == b"ok"
    assert [str(e) for e in errors] == ["bad request"]


def test_run_server_fails_when_on_error_raises() -> None:
    def handler(conn: net.Connection, addr: Any) -> None:
        raise ValueError("fatal")

    with net.listen(HOST, 0) as listener:
        server = asyncio.ensure_future(gb.spawn_green(net.run_server, listener, handler, on_error=_raise))
        with net.connect(*listener.address) as conn:
            assert conn.read() == b""
        gb.await_from_green(asyncio.wait([server]))
    assert isinstance(server.exception(), ValueError)


class _FlakySocket:
    """A listening socket whose first accepts fail with EMFILE (out of file descriptors)."""

    def __init__(self, sock: socket.socket, failures: int) -> None:
        self._sock = sock
        self.failures = failures

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return self._sock.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_run_server_survives_accept_errors() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: reported.append(context))
    try:
        with net.listen(HOST, 0) as listener:
            flaky = _FlakySocket(listener._sock, failures=3)  # type: ignore[arg-type]
            listener._sock = flaky  # type: ignore[assignment]
            with serving(listener, echo):
                with net.connect(*listener.address) as conn:
                    conn.write(b"still serving")
                    assert flow.read_exact(conn, 13) == b"still serving"
            listener._sock = flaky._sock
    finally:
        loop.set_exception_handler(None)
    assert flaky.failures == 0
    assert [ctx["exception"].errno for ctx in reported] == [errno.EMFILE] * 3


def test_run_server_stops_gracefully() -> None:
    record: list[str] = []
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    in_handler = loop.create_future()

    def handler(conn: net.Connection, addr: Any) -> None:
        record.append("handler started")
        in_handler.set_result(None)
        assert conn.read() == b"last words"
        conn.write(b"bye")
        record.append("handler finished")

    with net.listen(HOST, 0) as listener:
        server = asyncio.ensure_future(gb.spawn_green(net.run_server, listener, handler, stop=stop))
        with net.connect(*listener.address) as conn:
            gb.await_from_green(in_handler)
            stop.set_result(None)
            record.append("stop resolved")
            gb.sleep(0)
            assert not server.done()  # still waiting for the running handler
            conn.write(b"last words")
            assert conn.read() == b"bye"
        gb.await_from_green(server)
        record.append("server returned")
        # Stopped accepting: a new connection is not served (it waits in the backlog).
        with net.connect(*listener.address) as late:
            with pytest.raises(TimeoutError), gb.timeout(0.05):
                late.read()
    assert record == ["handler started", "stop resolved", "handler finished", "server returned"]


def test_run_server_stop_accepts_an_event_wait() -> None:
    event = asyncio.Event()
    with net.listen(HOST, 0) as listener:
        server = asyncio.ensure_future(gb.spawn_green(net.run_server, listener, echo, stop=event.wait()))
        gb.sleep(0)
        event.set()
        assert gb.await_from_green(server) is None


def test_run_server_returns_when_the_listener_closes() -> None:
    listener = net.listen(HOST, 0)
    server = asyncio.ensure_future(gb.spawn_green(net.run_server, listener, echo))
    wait_until(lambda: listener._waiter is not None)
    listener.close()
    assert gb.await_from_green(server) is None


def test_run_server_cancelled_cancels_handlers() -> None:
    cancelled: list[str] = []
    reading = asyncio.get_running_loop().create_future()

    def handler(conn: net.Connection, addr: Any) -> None:
        try:
            reading.set_result(None)
            conn.read()
        except asyncio.CancelledError:
            cancelled.append("handler")
            raise

    with net.listen(HOST, 0) as listener:
        server = asyncio.ensure_future(gb.spawn_green(net.run_server, listener, handler))
        with net.connect(*listener.address) as conn:
            gb.await_from_green(reading)
            server.cancel()
            gb.await_from_green(asyncio.wait([server]))
            assert conn.read() == b""  # the server side was closed
    assert server.cancelled()
    assert cancelled == ["handler"]


def test_accept_fork_with_a_switch() -> None:
    Switch = pytest.importorskip("greenbridge._switch").Switch
    with net.listen(HOST, 0) as listener:
        with Switch() as sw:
            sw.fork(lambda: net.accept_fork(sw, listener, echo))
            with net.connect(*listener.address) as conn:
                conn.write(b"forked")
                assert flow.read_exact(conn, 6) == b"forked"


def test_run_server_stops_on_a_promise() -> None:
    Promise = pytest.importorskip("greenbridge._sync").Promise
    stop = Promise()
    with net.listen(HOST, 0) as listener:
        server = asyncio.ensure_future(gb.spawn_green(net.run_server, listener, echo, stop=stop))
        with net.connect(*listener.address) as conn:
            conn.write(b"p")
            assert conn.read() == b"p"
        stop.resolve(None)
        assert gb.await_from_green(server) is None


def test_bufreader_over_a_connection_guards_against_endless_lines() -> None:
    """An untrusted peer that never ends its line: BufferLimitExceeded, memory bounded."""

    def handler(conn: net.Connection, addr: Any) -> None:
        try:
            while True:
                conn.write(b"x" * 65536)
        except (ConnectionError, gb.ClosedResourceError):
            pass

    with net.listen(HOST, 0) as listener, serving(listener, handler):
        with net.connect(*listener.address) as conn:
            reader = gb.BufReader(conn, max_size=100_000)
            with pytest.raises(gb.BufferLimitExceeded):
                reader.line()
            assert reader.buffered() <= 100_000
            conn.abort()


def test_bufreader_parses_a_request_then_copies_the_body() -> None:
    def handler(conn: net.Connection, addr: Any) -> None:
        reader = gb.BufReader(conn, max_size=4096)
        headers = {}
        request_line = reader.line()
        while line := reader.line():
            name, _, value = line.partition(b": ")
            headers[name] = value
        body = reader.take(int(headers[b"Content-Length"]))
        with gb.BufWriter(conn) as writer:
            writer.write(request_line + b"\r\n")
            writer.write(body[::-1])

    with net.listen(HOST, 0) as listener, serving(listener, handler, on_error=_raise):
        with net.connect(*listener.address) as conn:
            conn.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            conn.shutdown("send")
            assert conn.readall() == b"POST /echo HTTP/1.1\r\nolleh"


def test_udp_error_reaches_recv() -> None:
    with net.datagram_socket(local_addr=(HOST, 0)) as gone:
        address = gone.address
    with net.datagram_socket(remote_addr=address) as client:
        client.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            client.recv()

