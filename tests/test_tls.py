"""TLS through ``ssl=`` on net.connect and net.listen, with a certificate authority made by the
test (trustme), on both backends."""

from __future__ import annotations

import io
import ssl
from typing import Any

import pytest
from _net_helpers import echo, gather_green, serving

import greenbridge as gb
from greenbridge import flow, net

trustme = pytest.importorskip("trustme")

pytestmark = pytest.mark.green

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture
def server_context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", HOST).configure_cert(context)
    return context


@pytest.fixture
def client_context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


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
