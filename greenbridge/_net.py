"""Networking for green code: connect, listen, accept, servers, UDP -- on asyncio's own machinery.

Connections are ``Connection`` flows (``_protocol``): asyncio transports with a
``BufferedProtocol``, so they run at the loop's speed on asyncio and on uvloop alike. Listening
sockets are plain non-blocking sockets that green code accepts from one connection at a time
(``Listener.accept``): the kernel's backlog, not an unbounded queue in Python, holds connections
nobody has accepted yet, and an accept error (out of file descriptors) reaches the caller --
``run_server`` backs off and goes on.

``run_server`` runs each connection's handler in its own fiber hosted by its own asyncio Task,
and keeps those Tasks in a set it always waits for before returning: nothing outlives it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl as _ssl
import stat
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ._core import await_from_green, spawn_green
from ._errors import ClosedResourceError
from ._protocol import Connection, _ConnProtocol
from ._waiter import Waiter

__all__ = (
    "DatagramSocket",
    "Listener",
    "accept_fork",
    "connect",
    "connect_unix",
    "datagram_socket",
    "getaddrinfo",
    "listen",
    "listen_unix",
    "run_server",
)

Handler = Callable[[Connection, Any], object]
ErrorHandler = Callable[[Exception], object]

DEFAULT_BACKLOG = 128
DEFAULT_MAX_CONNECTIONS = 1024
# Back-off after an accept error that a retry cannot fix at once (no file descriptors, no
# memory): doubled on each consecutive failure, up to the maximum.
_ACCEPT_BACKOFF_MIN = 0.01
_ACCEPT_BACKOFF_MAX = 1.0
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Accept errors about one connection that died in the backlog: just accept the next one.
_TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})

SSLArg = _ssl.SSLContext | bool | None


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def _client_context(ssl: SSLArg) -> _ssl.SSLContext | None:
    if ssl is None or ssl is False:
        return None
    if ssl is True:
        return _ssl.create_default_context()
    return ssl


def _default_on_error(exc: Exception) -> None:
    _loop().call_exception_handler(
        {"message": "greenbridge: a connection handler raised", "exception": exc}
    )


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
) -> Connection:
    """Open a TCP connection (TLS with ``ssl=``) and return it as a ``Connection`` flow.

    ``host`` is resolved and its addresses are tried one after the other, in the resolver's
    order, until one connects (like Eio's ``with_tcp_connect``; no happy eyeballs). ``timeout``
    bounds each attempt, TLS handshake included. ``ssl=True`` uses
    ``ssl.create_default_context()``; an ``SSLContext`` is used as given; the certificate is
    checked against ``server_hostname`` (default: ``host``).

    Suspends (a cancellation point). Raises the ``ConnectionError`` family (e.g.
    ``ConnectionRefusedError``) or ``TimeoutError`` from the last attempt, with the earlier
    ones in its notes; ``socket.gaierror`` when ``host`` does not resolve;
    ``ssl.SSLError`` when the TLS handshake fails.
    """
    return await_from_green(_open_tcp(host, port, _client_context(ssl), server_hostname, timeout))


async def _open_unix(path: str, ssl: _ssl.SSLContext | None, server_hostname: str | None) -> Connection:
    loop = asyncio.get_running_loop()
    protocol = _ConnProtocol(keep_open_on_eof=ssl is None)
    transport, _ = await loop.create_unix_connection(
        lambda: protocol,
        path,
        ssl=ssl,
        server_hostname=server_hostname if ssl is not None else None,
    )
    return Connection(transport, protocol)


def connect_unix(
    path: str | os.PathLike[str], *, ssl: SSLArg = None, server_hostname: str | None = None
) -> Connection:
    """Connect to a Unix domain socket and return the ``Connection``.

    Suspends (a cancellation point). Raises ``FileNotFoundError`` / ``ConnectionRefusedError``
    when nobody listens there.
    """
    return await_from_green(_open_unix(os.fspath(path), _client_context(ssl), server_hostname))


# -- listening -----------------------------------------------------------------------------------


# Each of these keeps the protocol it made: with TLS, uvloop returns its own SSL protocol, not
# the application's, from create_connection and friends.


async def _wrap_accepted(sock: socket.socket, ssl: _ssl.SSLContext | None) -> Connection:
    loop = asyncio.get_running_loop()
    protocol = _ConnProtocol(keep_open_on_eof=ssl is None)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, ssl=ssl)
    return Connection(transport, protocol)


class Listener:
    """A listening socket green code accepts connections from (``net.listen``, ``listen_unix``).

    Use it as a context manager, or ``close()`` it. ``address`` is the bound address (with the
    port the system picked when ``port=0``).
    """

    def __init__(self, sock: socket.socket, ssl: _ssl.SSLContext | None, unix_path: str | None = None):
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self._ssl = ssl
        self._loop = _loop()
        self._address = sock.getsockname()
        # Invariant: _waiter is the Waiter of the fiber parked in accept, and the socket's fd is
        # registered with the loop as a reader exactly while it is not None.
        self._waiter: Waiter | None = None
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

    def __enter__(self) -> Listener:
        if self._sock is None:
            raise ClosedResourceError("the listener is closed")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept_socket(self) -> tuple[socket.socket, Any]:
        """Accept one raw connection (no TLS handshake yet). A cancellation point."""
        while True:
            sock = self._sock
            if sock is None:
                raise ClosedResourceError("accept() on a closed listener")
            try:
                return sock.accept()
            except (BlockingIOError, InterruptedError):
                pass
            if self._waiter is not None:
                raise RuntimeError("another fiber is already accepting on this listener")
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
        done here. Raises ``ClosedResourceError`` when the listener is closed (also in a fiber
        blocked here), ``OSError`` for accept errors such as ``EMFILE`` (too many open files),
        ``ssl.SSLError`` for a failed handshake.
        """
        sock, addr = self._accept_socket()
        try:
            return await_from_green(_wrap_accepted(sock, self._ssl)), addr
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
) -> Listener:
    """Listen for TCP connections on ``host``:``port`` (``port=0``: the system picks one, see
    ``Listener.address``); ``ssl=`` a server ``SSLContext`` for TLS.

    Binds the first address ``host`` resolves to (``None``: all IPv4 interfaces), with
    ``SO_REUSEADDR``, and ``SO_REUSEPORT`` when ``reuse_port``. Suspends while resolving (a
    cancellation point). Raises ``OSError`` (e.g. ``EADDRINUSE``) when it cannot bind.
    """
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
        return Listener(sock, ssl)
    except BaseException:
        sock.close()
        raise


def listen_unix(
    path: str | os.PathLike[str], *, backlog: int = DEFAULT_BACKLOG, ssl: _ssl.SSLContext | None = None
) -> Listener:
    """Listen on a Unix domain socket at ``path``; the socket file is removed on ``close()``.
    A stale socket file left at ``path`` is replaced. Does not suspend. Raises ``OSError``."""
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
        return Listener(sock, ssl, unix_path=path)
    except BaseException:
        sock.close()
        raise


# -- serving -------------------------------------------------------------------------------------


def _serve_connection(
    sock: socket.socket, addr: Any, ssl: _ssl.SSLContext | None, handler: Handler, on_error: ErrorHandler
) -> None:
    """One accepted connection: TLS handshake, the handler, then close; errors to on_error."""
    try:
        conn = await_from_green(_wrap_accepted(sock, ssl))
    except Exception as exc:  # a failed handshake concerns this connection only
        sock.close()
        on_error(exc)
        return
    except BaseException:
        sock.close()
        raise
    with conn:
        try:
            handler(conn, addr)
        except Exception as exc:
            on_error(exc)


class _Switchlike(Protocol):
    def fork(self, fn: Callable[..., object], /, *args: Any) -> object: ...


def accept_fork(
    sw: _Switchlike,
    listener: Listener,
    handler: Handler,
    *,
    on_error: ErrorHandler | None = None,
) -> None:
    """Accept one connection and run ``handler(conn, addr)`` in a new fiber forked on ``sw``.

    The connection is closed when the handler returns. An exception from the handler (or from
    the TLS handshake) goes to ``on_error`` (default: the loop's exception handler, which logs
    it); to fail the switch instead, pass ``on_error=sw.fail``. Suspends in ``accept`` (a
    cancellation point); raises what ``Listener.accept`` raises.
    """
    sock, addr = listener._accept_socket()
    try:
        sw.fork(_serve_connection, sock, addr, listener.ssl, handler, on_error or _default_on_error)
    except BaseException:
        sock.close()
        raise


class _Accepted:
    """A socket handed to a handler Task; closed by the Task's done callback if it never ran."""

    __slots__ = ("sock", "taken")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.taken = False


def _run_handler(
    accepted: _Accepted, addr: Any, ssl: _ssl.SSLContext | None, handler: Handler, on_error: ErrorHandler
) -> None:
    accepted.taken = True
    _serve_connection(accepted.sock, addr, ssl, handler, on_error)


def run_server(
    listener: Listener,
    handler: Handler,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    on_error: ErrorHandler | None = None,
    stop: Awaitable[object] | None = None,
) -> None:
    """Serve connections from ``listener``: each runs ``handler(conn, addr)`` in its own fiber
    (hosted by its own asyncio Task); the connection is closed when the handler returns.

    * At most ``max_connections`` handlers run at once; further connections wait in the
      kernel's backlog until one finishes.
    * An exception from a handler goes to ``on_error`` (default: the loop's exception handler,
      which logs it) and the server goes on. If ``on_error`` itself raises, the server fails:
      the other handlers are cancelled and ``run_server`` raises that error.
    * An accept error does not stop the server: out of file descriptors or memory (``EMFILE``,
      ``ENFILE``, ``ENOBUFS``, ``ENOMEM``) it is reported to the loop's exception handler and
      accepting resumes after a back-off (10 ms, doubling up to 1 s); a connection aborted in
      the backlog is skipped.
    * ``stop``: any awaitable (an ``asyncio.Future`` or ``Event().wait()``, a Task, a
      ``gb.Promise``...). When it completes, the server stops accepting, waits for the running
      handlers to finish, and returns. Closing the listener has the same effect.

    Suspends until then (a cancellation point: cancelling it cancels every handler, waits for
    them, and raises ``CancelledError``). The listener is left open; closing it is the caller's.
    """
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    report = on_error or _default_on_error
    loop = _loop()
    handlers: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []
    slot: list[Waiter] = []  # the accept loop's Waiter while it waits for a free slot

    def handler_done(task: asyncio.Task[None], accepted: _Accepted) -> None:
        handlers.discard(task)
        if not accepted.taken:
            accepted.sock.close()
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]
            accept_task.cancel()
        if slot:
            slot.pop().wake()

    def accept_loop() -> None:
        backoff = _ACCEPT_BACKOFF_MIN
        while True:
            while len(handlers) >= max_connections:
                waiter = Waiter()
                slot.append(waiter)
                try:
                    waiter.wait()
                finally:
                    if waiter in slot:
                        slot.remove(waiter)
            try:
                sock, addr = listener._accept_socket()
            except ClosedResourceError:
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                loop.call_exception_handler(
                    {
                        "message": f"greenbridge run_server: accept() failed, retrying in {backoff:g}s",
                        "exception": exc,
                    }
                )
                await_from_green(asyncio.sleep(backoff))
                backoff = min(2 * backoff, _ACCEPT_BACKOFF_MAX)
                continue
            backoff = _ACCEPT_BACKOFF_MIN
            accepted = _Accepted(sock)
            task = loop.create_task(_run_handler_coro(accepted, addr, listener.ssl, handler, report))
            handlers.add(task)
            task.add_done_callback(lambda t, a=accepted: handler_done(t, a))  # type: ignore[misc]

    accept_task = loop.create_task(spawn_green(accept_loop))
    stop_future = asyncio.ensure_future(stop) if stop is not None else None
    stop_is_ours = stop_future is not None and stop_future is not stop
    try:
        waits: set[asyncio.Future[Any]] = {accept_task}
        if stop_future is not None:
            waits.add(stop_future)
        await_from_green(asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED))
        # Stopped, failed, or the listener was closed: accept no more, let the handlers finish
        # (unless one failed the server: then cancel them).
        accept_task.cancel()
        await_from_green(asyncio.wait([accept_task]))
        if failures:
            for task in handlers:
                task.cancel()
        while handlers:
            await_from_green(asyncio.wait(set(handlers)))
    except BaseException:
        accept_task.cancel()
        for task in handlers:
            task.cancel()
        pending = {accept_task, *handlers}
        while pending:
            try:
                await_from_green(asyncio.wait(pending))
            except asyncio.CancelledError:
                pass  # cancelled again while cleaning up: the handlers still must end first
            pending = {task for task in (accept_task, *handlers) if not task.done()}
        raise
    finally:
        if stop_is_ours and stop_future is not None and not stop_future.done():
            stop_future.cancel()
    if failures:
        raise failures[0]
    if not accept_task.cancelled() and accept_task.exception() is not None:
        raise accept_task.exception()  # type: ignore[misc]


def _run_handler_coro(
    accepted: _Accepted, addr: Any, ssl: _ssl.SSLContext | None, handler: Handler, on_error: ErrorHandler
) -> Any:
    return spawn_green(_run_handler, accepted, addr, ssl, handler, on_error)


# -- UDP -----------------------------------------------------------------------------------------

# Datagrams received and not read yet are dropped beyond this many (UDP's own semantics).
DATAGRAM_QUEUE_SIZE = 1024


class _DatagramProtocol(asyncio.DatagramProtocol):
    __slots__ = ("_error", "_lost", "_queue", "_reader")

    def __init__(self) -> None:
        self._queue: list[tuple[bytes, Any]] = []
        self._reader: Waiter | None = None
        self._error: Exception | None = None
        self._lost = False

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(self._queue) < DATAGRAM_QUEUE_SIZE:
            self._queue.append((data, addr))
        self._wake()

    def error_received(self, exc: Exception) -> None:
        self._error = exc
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wake()

    def _wake(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.wake()


class DatagramSocket:
    """A UDP socket for green code (``net.datagram_socket``): ``send``, ``recv``, ``close``."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _DatagramProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False

    def __enter__(self) -> DatagramSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def address(self) -> Any:
        """The local address."""
        return self._transport.get_extra_info("sockname")

    def send(self, data: bytes, addr: Any = None) -> None:
        """Send one datagram to ``addr`` (or to the connected remote address). Does not
        suspend: UDP has no backpressure. Raises ``ClosedResourceError`` after ``close()``."""
        if self._closed:
            raise ClosedResourceError("send on a closed datagram socket")
        self._transport.sendto(bytes(data), addr)

    def recv(self) -> tuple[bytes, Any]:
        """The next datagram and its sender's address. Suspends until one arrives (a
        cancellation point). Raises an error the network reported (e.g.
        ``ConnectionRefusedError`` for a connected socket), ``ClosedResourceError`` after
        ``close()``."""
        p = self._protocol
        while True:
            if self._closed:
                raise ClosedResourceError("recv on a closed datagram socket")
            if p._queue:
                return p._queue.pop(0)
            if p._error is not None:
                error, p._error = p._error, None
                raise error
            if p._lost:
                raise ConnectionError("the datagram socket was closed")
            if p._reader is not None:
                raise RuntimeError("another fiber is already receiving on this socket")
            waiter = p._reader = Waiter()
            try:
                waiter.wait()
            finally:
                if p._reader is waiter:
                    p._reader = None

    def close(self) -> None:
        """Close the socket. Idempotent; does not suspend; a fiber in ``recv`` gets
        ``ClosedResourceError``."""
        if self._closed:
            return
        self._closed = True
        self._transport.close()
        reader, self._protocol._reader = self._protocol._reader, None
        if reader is not None:
            reader.fail(ClosedResourceError("the datagram socket was closed while recv() waited"))


def datagram_socket(
    local_addr: tuple[str, int] | None = None,
    remote_addr: tuple[str, int] | None = None,
    *,
    family: int = 0,
    reuse_port: bool = False,
    allow_broadcast: bool = False,
) -> DatagramSocket:
    """A UDP socket bound to ``local_addr`` and/or connected to ``remote_addr`` (then ``send``
    needs no address and only that peer's datagrams are received).

    Suspends while resolving and creating it (a cancellation point). Raises ``OSError``.
    """
    loop = _loop()
    transport, protocol = await_from_green(
        loop.create_datagram_endpoint(
            _DatagramProtocol,
            local_addr=local_addr,
            remote_addr=remote_addr,
            family=family,
            reuse_port=reuse_port or None,
            allow_broadcast=allow_broadcast or None,
        )
    )
    return DatagramSocket(transport, protocol)
