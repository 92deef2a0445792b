"""Cooperative ``socket`` and ``ssl`` calls for green fibers; the originals everywhere else.

Each replacement first asks ``green_loop()``: outside a green fiber it calls the original at
once, with the same arguments, so threads, plain code and loop callbacks see no difference. In a
fiber, a socket whose timeout is 0 (non-blocking) also gets the original -- it never blocks. Any
other socket gets attempts that cannot block (``_attempt``): the socket's timeout is set to 0 for
the length of one attempt and put back right after it (attempts never suspend, so no other fiber
sees the change), and "not yet" (``BlockingIOError``, ``SSLWantReadError``,
``SSLWantWriteError``) parks the fiber on the loop until the descriptor is ready. The socket's own
timeout becomes a deadline on the loop's clock, covering the whole call as CPython's does
(``sendall`` included), and running out raises ``TimeoutError("timed out")`` as the original
does. Host names are resolved through the loop's resolver (``loop.getaddrinfo``), numeric
addresses without it.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from .._core import await_from_green
from ._patch import Attribute, Patch
from ._wait import READ, WRITE, green_loop, wait_fds

__all__ = ("patches",)

T = TypeVar("T")

_orig_getaddrinfo = socket.getaddrinfo
_orig_create_connection = socket.create_connection
_set_timeout = _socket.socket.settimeout
_get_timeout = _socket.socket.gettimeout
_fileno = _socket.socket.fileno

_connect_ex = _socket.socket.connect_ex
_connect = _socket.socket.connect
_accept = _socket.socket._accept  # type: ignore[attr-defined]
_recv = _socket.socket.recv
_recv_into = _socket.socket.recv_into
_recvfrom = _socket.socket.recvfrom
_recvfrom_into = _socket.socket.recvfrom_into
_send = _socket.socket.send
_sendto: Callable[..., int] = _socket.socket.sendto
_sendfile = socket.socket.sendfile

_ssl_read = ssl.SSLSocket.read
_ssl_write = ssl.SSLSocket.write
_ssl_send = ssl.SSLSocket.send
_ssl_do_handshake = ssl.SSLSocket.do_handshake
_ssl_unwrap = ssl.SSLSocket.unwrap

_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY}


def _deadline(loop: asyncio.AbstractEventLoop, timeout: float | None) -> float | None:
    return None if timeout is None else loop.time() + timeout


def _attempt(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    direction: int,
    deadline: float | None,
    op: Callable[..., T],
    *args: Any,
) -> T:
    """Run ``op(sock, *args)`` without blocking the thread, parking the fiber until the socket is
    ready each time it would have blocked. A suspension (cancellation) point; ``TimeoutError``
    at ``deadline``; whatever ``op`` raises otherwise."""
    timeout = _get_timeout(sock)
    while True:
        _set_timeout(sock, 0.0)
        try:
            return op(sock, *args)
        except BlockingIOError:
            want = direction
        except ssl.SSLWantReadError:
            want = READ
        except ssl.SSLWantWriteError:
            want = WRITE
        finally:
            if _fileno(sock) != -1:  # the attempt may have closed it (unwrap, an error)
                _set_timeout(sock, timeout)
        if not wait_fds(loop, ((_fileno(sock), want),), deadline):
            raise TimeoutError("timed out")


def _cooperative(
    original: Callable[..., T],
    direction: int,
    owner: str = "socket",
    inert: Callable[[Any], bool] = lambda sock: False,
) -> Callable[..., T]:
    """The patched method of ``owner``: ``original`` outside a fiber, on a non-blocking socket
    or where ``inert(sock)`` holds; attempts that park the fiber otherwise."""

    def method(self: socket.socket, *args: Any) -> T:
        loop = green_loop()
        timeout = _get_timeout(self)
        if loop is None or timeout == 0.0 or inert(self):
            return original(self, *args)
        return _attempt(loop, self, direction, _deadline(loop, timeout), original, *args)

    method.__name__ = original.__name__
    method.__qualname__ = f"{owner}.{original.__name__}"
    method.__doc__ = original.__doc__
    return method


def _is_numeric_host(host: str) -> bool:
    try:
        _orig_getaddrinfo(host, None, 0, 0, 0, socket.AI_NUMERICHOST)
    except socket.gaierror:
        return False
    return True


def _resolve(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> Any:
    """``address`` with its host name resolved through the loop's resolver (a suspension point),
    unchanged when it is numeric or not an internet address."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return address
    host = address[0]
    if not isinstance(host, str) or _is_numeric_host(host):
        return address
    infos = await_from_green(
        loop.getaddrinfo(host, address[1], family=sock.family, type=sock.type, proto=sock.proto)
    )
    if not infos:
        raise socket.gaierror(socket.EAI_NONAME, f"no address found for {host!r}")
    return infos[0][4]


def _green_connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> None:
    timeout = _get_timeout(sock)
    deadline = _deadline(loop, timeout)
    address = _resolve(loop, sock, address)
    _set_timeout(sock, 0.0)
    try:
        err = _connect_ex(sock, address)
    finally:
        _set_timeout(sock, timeout)
    if err in _IN_PROGRESS:
        if not wait_fds(loop, ((_fileno(sock), WRITE),), deadline):
            raise TimeoutError("timed out")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err not in (0, errno.EISCONN):
        raise OSError(err, os.strerror(err))  # OSError picks the subclass: ConnectionRefusedError...


def connect(self: socket.socket, address: Any) -> None:
    loop = green_loop()
    if loop is None or _get_timeout(self) == 0.0:
        return _connect(self, address)
    _green_connect(loop, self, address)


def connect_ex(self: socket.socket, address: Any) -> int:
    loop = green_loop()
    if loop is None or _get_timeout(self) == 0.0:
        return _connect_ex(self, address)
    try:
        _green_connect(loop, self, address)
    except TimeoutError:
        return errno.EWOULDBLOCK  # what CPython's connect_ex returns on a timeout
    except socket.gaierror:
        raise
    except OSError as exc:
        if exc.errno is None:
            raise
        return exc.errno
    return 0


def sendall(self: socket.socket, data: Any, flags: int = 0) -> None:
    loop = green_loop()
    timeout = _get_timeout(self)
    if loop is None or timeout == 0.0:
        return _socket.socket.sendall(self, data, flags)
    deadline = _deadline(loop, timeout)  # one deadline for all of it, as in CPython
    with memoryview(data) as view, view.cast("B") as octets:
        sent = 0
        while sent < len(octets):
            sent += _attempt(loop, self, WRITE, deadline, _send, octets[sent:], flags)
    return None


def sendfile(self: socket.socket, file: Any, offset: int = 0, count: int | None = None) -> int:
    if green_loop() is None:
        return _sendfile(self, file, offset, count)
    # os.sendfile would block on a blocking socket: send what we read instead, cooperatively.
    return self._sendfile_use_send(file, offset, count)  # type: ignore[attr-defined, no-any-return]


def getaddrinfo(
    host: bytes | str | None,
    port: bytes | str | int | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> list[tuple[Any, ...]]:
    loop = green_loop()
    if loop is None or flags & socket.AI_NUMERICHOST or host is None:
        return _orig_getaddrinfo(host, port, family, type, proto, flags)
    if isinstance(host, str) and _is_numeric_host(host):
        return _orig_getaddrinfo(host, port, family, type, proto, flags)
    return await_from_green(
        loop.getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)
    )


def create_connection(
    address: tuple[str | None, int],
    timeout: float | None = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
    source_address: Any = None,
    *,
    all_errors: bool = False,
) -> socket.socket:
    if green_loop() is None:
        return _orig_create_connection(address, timeout, source_address, all_errors=all_errors)
    # CPython's loop, except that a socket is also closed when the fiber is cancelled mid-connect
    # (CPython closes it only on OSError, and the cancelled socket would leak).
    host, port = address
    errors: list[OSError] = []
    for family, kind, proto, _, sockaddr in getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = None
        try:
            sock = socket.socket(family, kind, proto)
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            if not all_errors:
                errors.clear()
            errors.append(exc)
            if sock is not None:
                sock.close()
        except BaseException:
            if sock is not None:
                sock.close()
            raise
    if not errors:
        raise OSError("getaddrinfo returns an empty list")
    try:
        if not all_errors:
            raise errors[0]
        raise ExceptionGroup("create_connection failed", errors)
    finally:
        errors = []


def _ssl_cooperative(original: Callable[..., T], direction: int) -> Callable[..., T]:
    """``_cooperative`` for an ``SSLSocket`` method; one not yet wrapped (no ``_sslobj``: a
    plain socket so far) calls the original, which does what the socket's own methods do."""
    return _cooperative(original, direction, "SSLSocket", lambda sock: sock._sslobj is None)


def patches() -> list[Patch]:
    """The patches that make every socket and ssl call cooperative."""
    return [
        Attribute(socket, "getaddrinfo", getaddrinfo),
        Attribute(socket, "create_connection", create_connection),
        Attribute(socket.socket, "connect", connect),
        Attribute(socket.socket, "connect_ex", connect_ex),
        Attribute(socket.socket, "_accept", _cooperative(_accept, READ)),
        Attribute(socket.socket, "recv", _cooperative(_recv, READ)),
        Attribute(socket.socket, "recv_into", _cooperative(_recv_into, READ)),
        Attribute(socket.socket, "recvfrom", _cooperative(_recvfrom, READ)),
        Attribute(socket.socket, "recvfrom_into", _cooperative(_recvfrom_into, READ)),
        Attribute(socket.socket, "send", _cooperative(_send, WRITE)),
        Attribute(socket.socket, "sendto", _cooperative(_sendto, WRITE)),
        Attribute(socket.socket, "sendall", sendall),
        Attribute(socket.socket, "sendfile", sendfile),
        Attribute(ssl.SSLSocket, "read", _ssl_cooperative(_ssl_read, READ)),
        Attribute(ssl.SSLSocket, "write", _ssl_cooperative(_ssl_write, WRITE)),
        Attribute(ssl.SSLSocket, "send", _ssl_cooperative(_ssl_send, WRITE)),
        Attribute(ssl.SSLSocket, "do_handshake", _ssl_cooperative(_ssl_do_handshake, READ)),
        Attribute(ssl.SSLSocket, "unwrap", _ssl_cooperative(_ssl_unwrap, READ)),
    ]
