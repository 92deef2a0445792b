"""UDP for green code: ``datagram_socket`` and ``DatagramSocket``, on asyncio's datagram transports.

The protocol queues datagrams (at most ``DATAGRAM_QUEUE_SIZE``; beyond that they are dropped,
which is UDP's own semantics) and wakes the one fiber parked in ``recv`` the way TCP connections
do: through the loop's wake batch (``_wake_batch``), so the switch into the fiber happens from a
shallow loop callback rather than from inside the transport's callback. As for connections, the
waiter carries no data -- "look again" -- so a cancelled ``recv`` loses no datagram.

Invariants: ``_reader`` is the Waiter of the one fiber parked in ``recv``, else None, cleared by
whoever wakes it; every change to the queue and the error happens before the waiter is batched.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from ._core import await_from_green
from ._errors import ClosedResourceError
from ._exclusive import ExclusiveSlot
from ._waiter import Waiter
from ._wake_batch import wake_batch

__all__ = ("DATAGRAM_QUEUE_SIZE", "DatagramSocket", "datagram_socket")

# Datagrams received and not read yet are dropped beyond this many (UDP's own semantics).
DATAGRAM_QUEUE_SIZE = 1024


class _DatagramProtocol(asyncio.DatagramProtocol):
    __slots__ = ("_error", "_lost", "_queue", "_reader", "_wakeups")

    def __init__(self) -> None:
        self._queue: deque[tuple[bytes, Any]] = deque()
        self._reader: Waiter | None = None
        self._error: Exception | None = None
        self._lost = False
        self._wakeups = wake_batch()

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
            self._wakeups.add(reader)

    def wait(self) -> None:
        """Park the calling fiber until a datagram, an error or the end arrives."""
        waiter = self._reader = Waiter()
        try:
            waiter.wait()
        finally:
            if self._reader is waiter:
                self._reader = None

    def release_reader(self, error: BaseException) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.fail(error)


class DatagramSocket:
    """A UDP socket for green code (``net.datagram_socket``): ``send``, ``recv``, ``close``.
    One fiber receives at a time: a second one gets ``BusyResourceError``."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _DatagramProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False
        self._receiving = ExclusiveSlot(
            "another fiber is already receiving on this datagram socket; receive in one fiber "
            "and hand the datagrams on through a gb.Stream"
        )

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
        cancellation point: a cancelled ``recv`` loses no datagram). Raises an error the network
        reported (e.g. ``ConnectionRefusedError`` for a connected socket),
        ``ClosedResourceError`` after ``close()``, ``BusyResourceError`` when another fiber is
        receiving."""
        p = self._protocol
        receiving = self._receiving
        if receiving.busy:
            receiving.acquire()  # raises BusyResourceError, before taking a datagram
        while True:
            if self._closed:
                raise ClosedResourceError("recv on a closed datagram socket")
            if p._queue:
                return p._queue.popleft()
            if p._error is not None:
                error, p._error = p._error, None
                raise error
            if p._lost:
                raise ConnectionError("the datagram socket was closed")
            with receiving:
                p.wait()

    def close(self) -> None:
        """Close the socket. Idempotent; does not suspend; a fiber in ``recv`` gets
        ``ClosedResourceError``."""
        if self._closed:
            return
        self._closed = True
        self._transport.close()
        error = ClosedResourceError("the datagram socket was closed while recv() waited")
        self._protocol.release_reader(error)


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
    loop = asyncio.get_running_loop()
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
