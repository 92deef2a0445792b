"""TLS through ``ssl=`` on net.connect and net.listen, with a certificate authority made by the
test (trustme), on both backends."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import ssl
from typing import Any

import pytest
from _net_helpers import echo, gather_green, serving

import greenbridge as gb
from greenbridge import flow, net

pytest.importorskip("trustme")

pytestmark = pytest.mark.green

HOST = "127.0.0.1"


def test_tls_echo(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    with net.listen(HOST, 0, ssl=server_context) as listener, serving(listener, echo):
        with net.connect(HOST, listener.address[1], ssl=client_context, server_hostname="localhost") as conn:
            assert conn.get_extra_info("ssl_object") is not None
            conn.write(b"secret")
            assert flow.read_exact(conn, 6) == b"secret"
            # io layers work over TLS too
            conn.write(b"line one\nline two\n")
            text = io.TextIOWrapper(io.BufferedReader(conn), encoding="utf-8")
            assert text.readline() == "line one\n"
            text.detach().detach()


def test_tls_bulk_transfer_is_byte_exact(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB

    def handler(conn: net.Connection, addr: Any) -> None:
        conn.write(payload)
        conn.close()

    with net.listen(HOST, 0, ssl=server_context) as listener, serving(listener, handler):
        with net.connect(HOST, listener.address[1], ssl=client_context, server_hostname="localhost") as conn:
            out = bytearray()
            flow.copy(conn, flow.buffer_sink(out))
    assert out == payload


def test_tls_accept(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    with net.listen(HOST, 0, ssl=server_context) as listener:

        def server() -> bytes:
            conn, _ = listener.accept()
            with conn:
                data = conn.read()
                conn.write(data[::-1])
                return data

        def client() -> bytes:
            with net.connect(HOST, listener.address[1], ssl=client_context, server_hostname="localhost") as c:
                c.write(b"abc")
                return c.read()

        assert gather_green(server, client) == [b"abc", b"cba"]


def test_untrusted_certificate_fails_the_handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    errors: list[Exception] = []
    untrusting = ssl.create_default_context()  # does not know the test's CA
    with net.listen(HOST, 0, ssl=server_context) as listener, serving(listener, echo, on_error=errors.append):
        with pytest.raises(ssl.SSLCertVerificationError):
            net.connect(HOST, listener.address[1], ssl=untrusting, server_hostname="localhost")
        # The server survives the failed handshake and serves the next client.
        with net.connect(HOST, listener.address[1], ssl=client_context, server_hostname="localhost") as conn:
            conn.write(b"next")
            assert flow.read_exact(conn, 4) == b"next"
    assert all(isinstance(e, (ssl.SSLError, ConnectionError)) for e in errors)


def test_shutdown_send_is_not_supported_over_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with net.listen(HOST, 0, ssl=server_context) as listener, serving(listener, echo):
        with net.connect(HOST, listener.address[1], ssl=client_context, server_hostname="localhost") as conn:
            with pytest.raises(NotImplementedError):
                conn.shutdown("send")
            conn.write(b"still open")  # the failed shutdown changed nothing
            assert flow.read_exact(conn, 10) == b"still open"
            conn.close()
            with pytest.raises(gb.ClosedResourceError):
                conn.write(b"after close")


def test_wrong_hostname_is_rejected(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    errors: list[Exception] = []
    with net.listen(HOST, 0, ssl=server_context) as listener, serving(listener, echo, on_error=errors.append):
        with pytest.raises(ssl.SSLCertVerificationError):
            net.connect(HOST, listener.address[1], ssl=client_context, server_hostname="example.org")


def test_a_silent_client_loses_its_slot_after_the_handshake_timeout(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    errors: list[Exception] = []
    loop = asyncio.get_running_loop()
    with net.listen(HOST, 0, ssl=server_context, handshake_timeout=0.2) as listener:
        assert listener.handshake_timeout == 0.2
        with serving(listener, echo, on_error=errors.append, max_connections=1):
            silent = socket.create_connection(listener.address)  # TCP, then not a word of TLS
            silent.setblocking(False)
            try:
                started = loop.time()
                # The server gives up on the handshake and closes: end of input for the client.
                assert gb.await_from_green(loop.sock_recv(silent, 100)) == b""
                assert 0.15 <= loop.time() - started < 5
            finally:
                silent.close()
            # The only slot is free again: a real client is served.
            port = listener.address[1]
            with net.connect(HOST, port, ssl=client_context, server_hostname="localhost") as conn:
                conn.write(b"served")
                assert flow.read_exact(conn, 6) == b"served"
    assert len(errors) == 1 and isinstance(errors[0], (TimeoutError, ConnectionError)), errors


def test_the_client_handshake_is_bounded_too(client_context: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    with net.listen(HOST, 0) as listener:  # plain TCP: it never answers the ClientHello

        def silent_server() -> None:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(ConnectionError):  # the client gives up: EOF or reset
                while conn.read():
                    pass

        def client() -> float:
            started = loop.time()
            with pytest.raises((TimeoutError, ConnectionError)):
                net.connect(
                    HOST,
                    listener.address[1],
                    ssl=client_context,
                    server_hostname="localhost",
                    handshake_timeout=0.2,
                )
            return loop.time() - started

        server = asyncio.ensure_future(gb.spawn_green(silent_server))
        elapsed = client()
        gb.await_from_green(server)
    assert 0.15 <= elapsed < 5


def test_handshake_timeouts_must_be_positive(server_context: ssl.SSLContext) -> None:
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="handshake_timeout"):
            net.listen(HOST, 0, ssl=server_context, handshake_timeout=bad)
        with pytest.raises(ValueError, match="handshake_timeout"):
            net.connect(HOST, 1, ssl=True, handshake_timeout=bad)
