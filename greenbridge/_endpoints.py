"""Stream endpoints for green code: resolve names, connect, listen and accept (TCP, Unix, TLS).

Connections are ``Connection`` flows (``_protocol``): asyncio transports with a
``BufferedProtocol``, so they run at the loop's speed on asyncio and on uvloop alike. Listening
sockets are plain non-blocking sockets that green code accepts from one connection at a time
(``Listener.accept``): the kernel's backlog, not an unbounded queue in Python, holds connections
nobody has accepted yet, and an accept error (out of file descriptors) reaches the caller (the
servers of ``_serve`` back off and go on).

TLS handshakes are bounded (``handshake_timeout``, default ``DEFAULT_HANDSHAKE_TIMEOUT``):
asyncio's own default is 60 s, long enough for a silent client to hold a server's slot.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl as _ssl
import stat
from typing import Any

from ._core import await_from_green
from ._errors import ClosedResourceError
from ._exclusive import ExclusiveSlot
from ._protocol import Connection, _ConnProtocol
from ._waiter import Waiter

__all__ = (
    "DEFAULT_BACKLOG",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "Listener",
    "connect",
    "connect_unix",
    "getaddrinfo",
    "listen",
    "listen_unix",
)

# How many connections the kernel holds until they are accepted (capped by the system's
# net.core.somaxconn). Once it is full the kernel drops new connections' SYNs, and a client only
# retries after a second: a slowloris that reconnects whenever it is shed kept a backlog of 128
# full and cost a real client that second. 2048 is also uvicorn's and gunicorn's default.
DEFAULT_BACKLOG = 2048
# The longest a TLS handshake may take, client or server side, unless told otherwise.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

SSLArg = _ssl.SSLContext | bool | None


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _client_context(ssl: SSLArg) -> _ssl.SSLContext | None:
    if ssl is None or ssl is False:
        return None
    if ssl is True:
        return _ssl.create_default_context()
    return ssl


def _check_handshake_timeout(seconds: float) -> float:
    if not seconds > 0:
        raise ValueError(f"handshake_timeout must be a number of seconds > 0, got {seconds!r}")
    return seconds


# -- names ----------------------------------------------------------------------------------------


def getaddrinfo(
    host: str | None,
    port: int | str | None,
    *,
    family: int = 0,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
    flags: int = 0,
) -> list[tuple[Any, ...]]:
    """Resolve ``host``/``port`` like ``socket.getaddrinfo`` without blocking the loop.

    Suspends (a cancellation point) while the loop's resolver runs. Raises ``socket.gaierror``
    (an ``OSError``) when the name does not resolve.
    """
    return await_from_green(
        _loop().getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)
    )


# -- connecting ----------------------------------------------------------------------------------


async def _open_tcp(
    host: str,
    port: int,
    ssl: _ssl.SSLContext | None,
    server_hostname: str | None,
    timeout: float | None,
    handshake_timeout: float,
) -> Connection:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, address)
                protocol = _ConnProtocol(keep_open_on_eof=ssl is None)
                transport, _ = await loop.create_connection(
                    lambda: protocol,  # noqa: B023 - called before the loop moves on
                    sock=sock,
                    ssl=ssl,
                    server_hostname=(server_hostname or host) if ssl is not None else None,
                    ssl_handshake_timeout=handshake_timeout if ssl is not None else None,
                )
        except OSError as exc:  # TimeoutError included: try the next address
            sock.close()
            exc.add_note(f"while connecting to {address!r}")
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return Connection(transport, protocol)
    if not errors:
        raise OSError(f"getaddrinfo({host!r}, {port!r}) returned no addresses")
    last = errors[-1]
    for earlier in errors[:-1]:
        last.add_note(f"an earlier attempt failed with {earlier!r}")
    raise last


def connect(
    host: str,
    port: int,
    *,
    ssl: SSLArg = None,
    server_hostname: str | None = None,
    timeout: float | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Connection:
    """Open a TCP connection (TLS with ``ssl=``) and return it as a ``Connection`` flow.

    ``host`` is resolved and its addresses are tried one after the other, in the resolver's
    order, until one connects (like Eio's ``with_tcp_connect``; no happy eyeballs). ``timeout``
    bounds each attempt, TLS handshake included; ``handshake_timeout`` (seconds, default 10)
    bounds the TLS handshake alone. ``ssl=True`` uses
    ``ssl.create_default_context()``; an ``SSLContext`` is used as given; the certificate is
    checked against ``server_hostname`` (default: ``host``).

    Suspends (a cancellation point). Raises the ``ConnectionError`` family (e.g.
    ``ConnectionRefusedError``) or ``TimeoutError`` from the last attempt, with the earlier
    ones in its notes (a handshake past ``handshake_timeout`` is such a ``TimeoutError``);
    ``socket.gaierror`` when ``host`` does not resolve; ``ssl.SSLError`` when the TLS
    handshake fails; ``ValueError`` for a ``handshake_timeout`` that is not > 0.
    """
    _check_handshake_timeout(handshake_timeout)
    return await_from_green(
        _open_tcp(host, port, _client_context(ssl), server_hostname, timeout, handshake_timeout)
    )


async def _open_unix(
    path: str, ssl: _ssl.SSLContext | None, server_hostname: str | None, handshake_timeout: float
) -> Connection:
    loop = asyncio.get_running_loop()
    protocol = _ConnProtocol(keep_open_on_eof=ssl is None)
    transport, _ = await loop.create_unix_connection(
        lambda: protocol,
        path,
        ssl=ssl,
        server_hostname=server_hostname if ssl is not None else None,
        ssl_handshake_timeout=handshake_timeout if ssl is not None else None,
    )
    return Connection(transport, protocol)


def connect_unix(
    path: str | os.PathLike[str],
    *,
    ssl: SSLArg = None,
    server_hostname: str | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Connection:
    """Connect to a Unix domain socket and return the ``Connection`` (TLS with ``ssl=``, the
    handshake bounded by ``handshake_timeout`` seconds).

    Suspends (a cancellation point). Raises ``FileNotFoundError`` / ``ConnectionRefusedError``
    when nobody listens there, ``TimeoutError`` for a TLS handshake that takes too long.
    """
    _check_handshake_timeout(handshake_timeout)
    return await_from_green(
        _open_unix(os.fspath(path), _client_context(ssl), server_hostname, handshake_timeout)
    )


# -- listening -----------------------------------------------------------------------------------


# Each of these keeps the protocol it made: with TLS, uvloop returns its own SSL protocol, not
# the application's, from create_connection and friends.


async def _wrap_accepted(
    sock: socket.socket, ssl: _ssl.SSLContext | None, handshake_timeout: float
) -> Connection:
    loop = asyncio.get_running_loop()
    protocol = _ConnProtocol(keep_open_on_eof=ssl is None)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol,
        sock,
        ssl=ssl,
        ssl_handshake_timeout=handshake_timeout if ssl is not None else None,
    )
    return Connection(transport, protocol)


class Listener:
    """A listening socket green code accepts connections from (``net.listen``, ``listen_unix``).

    Use it as a context manager, or ``close()`` it. ``address`` is the bound address (with the
    port the system picked when ``port=0``). One fiber accepts at a time: a second one gets
    ``BusyResourceError``.
    """

    def __init__(
        self,
        sock: socket.socket,
        ssl: _ssl.SSLContext | None,
        unix_path: str | None = None,
        *,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ):
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self._ssl = ssl
        self._handshake_timeout = _check_handshake_timeout(handshake_timeout)
        self._loop = _loop()
        self._address = sock.getsockname()
        # Invariant: _waiter is the Waiter of the fiber parked in accept, and the socket's fd is
        # registered with the loop as a reader exactly while it is not None.
        self._waiter: Waiter | None = None
        self._accepting = ExclusiveSlot(
            "another fiber is already accepting on this listener; accept from one fiber and fork "
            "a handler per connection (net.run_server, net.accept_fork)"
        )
        # For listen_unix: the socket file to remove on close, if it is still ours (same inode).
        self._unix_path = unix_path
        self._unix_inode = os.stat(unix_path).st_ino if unix_path is not None else None

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "open"
        return f"<greenbridge Listener {self._address!r} {state}>"

    @property
    def address(self) -> Any:
        """The bound address: ``(host, port)`` for IPv4, a 4-tuple for IPv6, a path for Unix."""
        return self._address

    @property
    def ssl(self) -> _ssl.SSLContext | None:
        """The server-side TLS context accepted connections use, or None."""
        return self._ssl

    @property
    def handshake_timeout(self) -> float:
        """The longest an accepted connection's TLS handshake may take, in seconds."""
        return self._handshake_timeout

    def __enter__(self) -> Listener:
        if self._sock is None:
            raise ClosedResourceError("the listener is closed")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept_socket(self) -> tuple[socket.socket, Any]:
        """Accept one raw connection (no TLS handshake yet). A cancellation point."""
        accepting = self._accepting
        if accepting.busy:
            accepting.acquire()  # raises BusyResourceError, before taking a connection
        while True:
            sock = self._sock
            if sock is None:
                raise ClosedResourceError("accept() on a closed listener")
            try:
                return sock.accept()
            except (BlockingIOError, InterruptedError):
                pass
            with accepting:
                waiter = self._waiter = Waiter()
                self._loop.add_reader(sock.fileno(), waiter.wake)
                try:
                    waiter.wait()
                finally:
                    if self._waiter is waiter:
                        self._waiter = None
                        self._loop.remove_reader(sock.fileno())

    def accept(self) -> tuple[Connection, Any]:
        """Wait for the next connection; return it with the peer's address.

        Suspends (a cancellation point; a connection is never lost to a cancelled accept: it
        stays in the kernel's backlog, or, once accepted, is closed). With TLS the handshake is
        done here, bounded by ``handshake_timeout``. Raises ``ClosedResourceError`` when the
        listener is closed (also in a fiber blocked here), ``OSError`` for accept errors such as
        ``EMFILE`` (too many open files), ``ssl.SSLError`` for a failed handshake and
        ``TimeoutError`` for one that took too long, ``BusyResourceError`` when another fiber is
        accepting.
        """
        sock, addr = self._accept_socket()
        try:
            return await_from_green(_wrap_accepted(sock, self._ssl, self._handshake_timeout)), addr
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        """Stop listening. Idempotent; does not suspend. A fiber blocked in ``accept`` gets
        ``ClosedResourceError``. Connections accepted earlier stay open."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.remove_reader(sock.fileno())
            waiter.fail(ClosedResourceError("the listener was closed while accept() waited"))
        sock.close()
        if self._unix_path is not None:
            try:
                if os.stat(self._unix_path).st_ino == self._unix_inode:
                    os.unlink(self._unix_path)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._sock is None


def listen(
    host: str | None,
    port: int,
    *,
    backlog: int = DEFAULT_BACKLOG,
    reuse_port: bool = False,
    ssl: _ssl.SSLContext | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Listener:
    """Listen for TCP connections on ``host``:``port`` (``port=0``: the system picks one, see
    ``Listener.address``); ``ssl=`` a server ``SSLContext`` for TLS, each accepted connection's
    handshake bounded by ``handshake_timeout`` seconds (default 10: a client that says nothing
    cannot hold a server's slot for asyncio's default minute).

    ``backlog``: how many connections the kernel holds until they are accepted (default 2048,
    capped by the system's ``net.core.somaxconn``; once full, new connections' SYNs are dropped
    and their clients retry a second later). Binds the first address ``host`` resolves to
    (``None``: all IPv4 interfaces), with ``SO_REUSEADDR``, and ``SO_REUSEPORT`` when
    ``reuse_port``. Suspends while resolving (a cancellation point). Raises ``OSError`` (e.g.
    ``EADDRINUSE``) when it cannot bind, ``ValueError`` for a ``handshake_timeout`` that is not
    > 0.
    """
    _check_handshake_timeout(handshake_timeout)
    infos = getaddrinfo(
        host if host is not None else "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        return Listener(sock, ssl, handshake_timeout=handshake_timeout)
    except BaseException:
        sock.close()
        raise


def listen_unix(
    path: str | os.PathLike[str],
    *,
    backlog: int = DEFAULT_BACKLOG,
    ssl: _ssl.SSLContext | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> Listener:
    """Listen on a Unix domain socket at ``path``; the socket file is removed on ``close()``.
    A stale socket file left at ``path`` is replaced; TLS as for ``listen``. Does not suspend.
    Raises ``OSError``, ``ValueError`` for a ``handshake_timeout`` that is not > 0."""
    _check_handshake_timeout(handshake_timeout)
    path = os.fspath(path)
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
        return Listener(sock, ssl, unix_path=path, handshake_timeout=handshake_timeout)
    except BaseException:
        sock.close()
        raise
