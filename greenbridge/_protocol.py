"""Network connections as flows, on asyncio transports and ``BufferedProtocol`` directly.

Theory of operation
===================

A ``Connection`` (the ``TwoWay`` flow green code sees) owns one ``_ConnProtocol`` (what the
transport calls back). They share state through the protocol object; the connection only ever
reads it and the transport's callbacks only ever change it, except where noted.

Reading. The transport writes incoming bytes straight into the protocol's receive buffer
(``get_buffer`` / ``buffer_updated``: no intermediate ``bytes`` object per read). Bytes live in
``_buf[_start:_end]``. ``read_into`` copies out of that region without suspending when it is not
empty; only when it is empty does the reading fiber park on a ``Waiter`` (``_reader``), which
``buffer_updated``, ``eof_received`` and ``connection_lost`` wake. The waiter carries no data --
it only says "look again" -- so a reader cancelled while parked loses nothing: the bytes stay in
the buffer for the next reader.

Memory is bounded by ``RECEIVE_BUFFER_SIZE``: when the buffer is full the transport is paused
(``pause_reading``) and resumed once a reader has taken at least half of it.

Waking readers. ``buffer_updated`` (and ``eof_received``, ``connection_lost``,
``resume_writing``) does not resume the parked fiber itself: it hands the Waiter to the loop's
``_WakeBatch``, which wakes every Waiter handed to it during one loop iteration from a single
``call_soon`` callback of its own, in order. That callback runs in the loop greenlet at a shallow
C stack, so ``Waiter.wake`` still switches straight into each fiber (no Task step), but the switch
is cheap: greenlet saves and restores the part of the waker's C stack that lies below the
fiber's stack base, and inside a transport callback (uvloop: ``uv_run`` -> ``uv__read`` -> the
protocol) that part is several kilobytes, copied out and back on every resumption.

Writing. ``write`` hands the bytes to ``transport.write`` (which sends at once when it can) and,
if the transport has called ``pause_writing`` (its buffer is past the high-water mark), parks the
fiber on a Waiter until ``resume_writing`` -- exactly StreamWriter's write-then-drain, without
the Task wake-ups. Several fibers may wait for the drain at once.

Rejected design
---------------
Resuming the fiber from inside ``buffer_updated`` (the prototype's choice, DESIGN.md section 2).
Measured with ``benchmarks/bench_echo.py`` (50 connections, 1 KiB ping-pong, server CPU per
round trip, three interleaved runs each): 8.1-8.6 us on uvloop and 8.8-9.0 us on the asyncio
loop, against 7.1-7.2 us and 8.0-8.2 us with the batch -- 10-20% more round trips per second
for the batch. A micro-benchmark pins the cause: the same wake-up costs 1.8 us from a shallow
caller, 2.3 us five C-level calls deeper and 3.4 us twenty deeper.

Invariants
----------
* ``_start <= _end <= len(_buf)``; ``_start == _end`` means nothing is buffered, and both are
  then reset to 0 so that the next ``get_buffer`` offers the whole buffer.
* ``_reader`` is the Waiter of the one fiber parked in ``read_into``, else None; it is cleared
  by whoever wakes it (so a waiter is woken at most once) and by the reader when its wait ends.
* Every state change happens *before* a waiter is woken or batched: a Waiter may resume its
  fiber synchronously (DESIGN.md section 2); a batched one is resumed when the loop next runs
  its ready callbacks, and then finds the state as the callbacks left it.
* ``_lost`` becomes True once, in ``connection_lost``; ``_error`` is then the exception the
  transport reported (None for a clean close). Buffered bytes are still delivered after that,
  the error is raised once they are gone.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import weakref
from typing import TYPE_CHECKING, Any, cast

from ._errors import ClosedResourceError
from ._flow import ShutdownHow, TwoWay
from ._waiter import Waiter

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ("Connection",)

# The receive buffer of one connection (the memory bound on unread input).
RECEIVE_BUFFER_SIZE = 64 * 1024
# get_buffer() compacts the buffer when less than this is free at its end.
_MIN_FREE = 16 * 1024

_SHUTDOWN_HOWS = ("send", "receive", "all")


class _WakeBatch:
    """Waiters woken by the transport callbacks of one loop, resumed together, in order, from one
    loop callback of their own: see "Waking readers" in the module memo."""

    __slots__ = ("_scheduled", "_waiters")

    def __init__(self) -> None:
        # Invariant: _scheduled is True exactly while a flush is scheduled with the loop, and
        # then _waiters is not empty. (No reference to the loop: it keys the batch weakly.)
        self._waiters: list[Waiter] = []
        self._scheduled = False

    def add(self, waiter: Waiter) -> None:
        """Wake ``waiter`` at the loop's next run of its ready callbacks. Called on the loop."""
        self._waiters.append(waiter)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.wake()


_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _WakeBatch] = weakref.WeakKeyDictionary()


def _wake_batch() -> _WakeBatch:
    loop = asyncio.get_running_loop()
    batch = _batches.get(loop)
    if batch is None:
        batch = _batches[loop] = _WakeBatch()
    return batch


class _ConnProtocol(asyncio.BufferedProtocol):
    """The transport's side of a ``Connection``; see the module memo."""

    __slots__ = (
        "_buf",
        "_drainers",
        "_drop_input",
        "_end",
        "_eof",
        "_error",
        "_keep_open_on_eof",
        "_lost",
        "_read_paused",
        "_reader",
        "_start",
        "_transport",
        "_view",
        "_wakeups",
        "_write_paused",
    )

    def __init__(self, *, keep_open_on_eof: bool = True) -> None:
        self._transport: asyncio.Transport | None = None
        self._wakeups = _wake_batch()
        self._buf = bytearray(RECEIVE_BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._reader: Waiter | None = None
        self._read_paused = False
        self._eof = False  # the peer shut down its sending side
        self._drop_input = False  # shutdown("receive") on our side
        self._write_paused = False
        self._drainers: list[Waiter] = []
        self._lost = False
        self._error: BaseException | None = None
        # False for TLS: asyncio's SSL transport cannot stay half-open after the peer's EOF.
        self._keep_open_on_eof = keep_open_on_eof

    # -- transport callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def get_buffer(self, sizehint: int) -> memoryview:
        end = self._end
        if end == 0:  # the usual case: everything was read, offer the whole buffer as it is
            return self._view
        if len(self._buf) - end < _MIN_FREE:
            self._make_room()
            end = self._end
        return self._view[end:]

    def _make_room(self) -> None:
        start, end = self._start, self._end
        if start > 0:  # compact: move the unread bytes to the front
            self._buf[: end - start] = self._view[start:end]
            self._start, self._end = 0, end - start
        if len(self._buf) - self._end == 0:
            # Full and still asked for room: the transport did not honour pause_reading at once
            # (some do once). Grow rather than fail; reading is paused, so this stays bounded.
            grown = bytearray(2 * len(self._buf))
            grown[: self._end] = self._view[: self._end]
            self._view.release()
            self._buf, self._view = grown, memoryview(grown)

    def buffer_updated(self, nbytes: int) -> None:
        if self._drop_input:
            self._start = self._end = 0
            return
        end = self._end = self._end + nbytes
        if end - self._start >= RECEIVE_BUFFER_SIZE and not self._read_paused:
            self._read_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        reader = self._reader
        if reader is not None:
            self._reader = None
            self._wakeups.add(reader)

    def eof_received(self) -> bool:
        self._eof = True
        reader = self._reader
        if reader is not None:
            self._reader = None
            self._wakeups.add(reader)
        return self._keep_open_on_eof

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drainers, self._drainers = self._drainers, []
        for waiter in drainers:
            self._wakeups.add(waiter)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._error = exc
        self._write_paused = False
        reader, self._reader = self._reader, None
        drainers, self._drainers = self._drainers, []
        if reader is not None:
            self._wakeups.add(reader)
        for waiter in drainers:
            self._wakeups.add(waiter)


class Connection(TwoWay):
    """A network connection (TCP, Unix socket, TLS) as a ``TwoWay`` flow for green code.

    Made by ``net.connect``, ``net.connect_unix`` and ``Listener.accept``. One fiber may read
    while others write. Close it (``close()`` or ``with``) when done.

    As an ``io.RawIOBase`` it can be wrapped: ``io.TextIOWrapper(io.BufferedReader(conn))``.
    Those wrappers own what they wrap -- closing (or collecting) them closes the connection;
    ``wrapper.detach()`` (twice for a text wrapper) hands it back.
    """

    def __init__(self, transport: asyncio.Transport, protocol: _ConnProtocol) -> None:
        super().__init__()
        self._transport = transport
        self._protocol = protocol
        self._send_closed = False
        self._closed = False  # mirrors io's ``closed``, cheaper to test on the hot paths

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<greenbridge Connection {self.get_extra_info('peername')!r} {state}>"

    # -- reading ---------------------------------------------------------------------------------

    def read_into(self, buf: WriteableBuffer) -> int:
        """Fill ``buf`` with the bytes available (at least one) and return how many; 0 at end
        of input (the peer shut down its sending side, or we did ``shutdown("receive")``).

        Returns without suspending when bytes are already buffered; otherwise suspends until
        some arrive (a cancellation point: a cancelled read loses nothing). Raises
        ``ClosedResourceError`` after ``close()`` (also in a fiber blocked here when another
        closes the connection), ``ConnectionResetError`` (or another ``ConnectionError``) when
        the connection broke, ``RuntimeError`` if another fiber is already reading.
        """
        p = self._protocol
        while True:
            if self._closed:
                raise ClosedResourceError("read from a connection after close()")
            start = p._start
            available = p._end - start
            if available:
                out = buf if type(buf) is memoryview else memoryview(buf)
                n = len(out)
                if n >= available:
                    n = available
                    p._start = p._end = 0
                else:
                    p._start = start + n
                out[:n] = p._view[start : start + n]
                if p._read_paused:
                    self._maybe_resume_reading()
                return n
            if len(buf) == 0 or not self._wait_for_input():  # type: ignore[arg-type]
                return 0

    def read(self, n: int = 65536) -> bytes:
        """Read up to ``n`` bytes (at least one): ``b""`` at end of input; ``n < 0`` reads to
        the end of input. Suspends and raises like ``read_into``."""
        if n < 0:
            return self.readall()
        p = self._protocol
        while True:
            if self._closed:
                raise ClosedResourceError("read from a connection after close()")
            start = p._start
            available = p._end - start
            if available:
                if n >= available:
                    n = available
                    p._start = p._end = 0
                else:
                    p._start = start + n
                data = bytes(p._view[start : start + n])
                if p._read_paused:
                    self._maybe_resume_reading()
                return data
            if n == 0:
                return b""
            if p._drop_input or p._eof or p._lost or p._reader is not None:
                if not self._wait_for_input():
                    return b""
                continue
            # _wait_for_input inlined: this is the path of every read that waits.
            waiter = p._reader = Waiter()
            try:
                waiter.wait()
            finally:
                if p._reader is waiter:
                    p._reader = None

    def _wait_for_input(self) -> bool:
        """Nothing is buffered: False at end of input, else park until the protocol says there
        may be more (True: look again). Raises the connection's error and ``RuntimeError`` when
        another fiber is already reading."""
        p = self._protocol
        if p._drop_input or p._eof:
            return False
        if p._lost:
            if p._error is not None:
                raise _connection_error(p._error)
            return False
        if p._reader is not None:
            raise RuntimeError("another fiber is already reading from this connection")
        waiter = p._reader = Waiter()
        try:
            waiter.wait()
        finally:
            if p._reader is waiter:
                p._reader = None
        return True

    def _maybe_resume_reading(self) -> None:
        p = self._protocol
        if p._end - p._start <= RECEIVE_BUFFER_SIZE // 2:
            p._read_paused = False
            if not p._lost:
                self._transport.resume_reading()

    # -- writing ---------------------------------------------------------------------------------

    def write(self, data: ReadableBuffer, /) -> int:
        """Send all of ``data``; return its length.

        Does not suspend while the transport keeps up; when its send buffer is past the
        high-water mark, suspends until it drains below the low mark (a cancellation point: the
        bytes already handed over are still sent). Raises ``ClosedResourceError`` after
        ``close()`` or ``shutdown("send")``, ``BrokenPipeError`` / ``ConnectionResetError`` when
        the connection is gone.
        """
        if self._send_closed:
            self._check_open()
            raise ClosedResourceError("write to a connection after shutdown('send')")
        p = self._protocol
        transport = self._transport
        if p._lost or transport.is_closing():
            raise self._broken()
        if type(data) is not bytes:
            data = bytes(data)  # the transport may keep a reference to what it is given
        transport.write(data)
        if transport.is_closing():
            # The send failed (the peer reset or closed): the transport dropped the bytes and
            # will report connection_lost at the next loop iteration. Say so now.
            raise self._broken()
        while p._write_paused:
            waiter = Waiter()
            p._drainers.append(waiter)
            try:
                waiter.wait()
            except BaseException:
                if waiter in p._drainers:
                    p._drainers.remove(waiter)
                raise
            if self._closed:
                raise ClosedResourceError("the connection was closed while a write waited")
            if p._lost and p._error is not None:
                raise _connection_error(p._error)
        return len(data)

    def _broken(self) -> BaseException:
        """The error for a write to a connection that is gone (not closed by us)."""
        error = self._protocol._error
        if error is not None:
            return _connection_error(error)
        return BrokenPipeError(errno.EPIPE, "the connection is gone: the peer closed or reset it")

    def writelines(self, lines: Any, /) -> None:
        for line in lines:
            self.write(line)

    # -- closing ---------------------------------------------------------------------------------

    def shutdown(self, how: ShutdownHow) -> None:
        """Close one direction or both; see ``TwoWay.shutdown``. ``"send"`` sends end of input
        to the peer once the bytes written so far are sent (not supported over TLS:
        ``NotImplementedError``). Does not suspend."""
        if how not in _SHUTDOWN_HOWS:
            raise ValueError(f"shutdown() takes 'send', 'receive' or 'all', got {how!r}")
        self._check_open()
        p = self._protocol
        sending = how != "receive" and not self._send_closed
        if sending and not p._lost and not self._transport.can_write_eof():
            raise NotImplementedError("shutdown('send') is not supported on this transport (TLS)")
        if how != "send":
            p._drop_input = True
            p._start = p._end = 0
            if p._read_paused:
                p._read_paused = False
                if not p._lost:
                    self._transport.resume_reading()
            reader, p._reader = p._reader, None
            if reader is not None:
                reader.wake()
        if sending:
            self._send_closed = True
            if not p._lost and not self._transport.is_closing():
                try:
                    self._transport.write_eof()
                except ConnectionError:
                    raise
                except OSError as exc:  # ENOTCONN: the peer reset the connection meanwhile
                    raise ConnectionResetError(exc.errno, exc.strerror) from exc

    def close(self) -> None:
        """Close the connection: bytes already written are still sent, then the socket is
        closed. Idempotent; does not suspend. Fibers blocked in ``read_into`` or ``write`` on it
        get ``ClosedResourceError``."""
        if self._closed:
            return
        self._closed = True
        super().close()
        p = self._protocol
        self._send_closed = True
        if not self._transport.is_closing():
            self._transport.close()
        reader, p._reader = p._reader, None
        if reader is not None:
            reader.fail(ClosedResourceError("the connection was closed while a read waited"))
        drainers, p._drainers = p._drainers, []
        for waiter in drainers:
            waiter.wake()

    def abort(self) -> None:
        """Close at once, dropping unsent bytes; over TCP the peer sees a reset
        (``ConnectionResetError``). Idempotent; does not suspend."""
        if not self._protocol._lost and not self._closed:
            sock = self._transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                # Linger on, timeout 0: close() sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._transport.abort()
        self.close()

    # -- information ------------------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's extra information: ``"peername"``, ``"sockname"``, ``"socket"``,
        ``"ssl_object"``, ``"peercert"`` ... (see ``asyncio.BaseTransport.get_extra_info``)."""
        return self._transport.get_extra_info(name, default)

    @property
    def peername(self) -> Any:
        """The address of the other end."""
        return self._transport.get_extra_info("peername")

    @property
    def sockname(self) -> Any:
        """The address of this end."""
        return self._transport.get_extra_info("sockname")


def _connection_error(exc: BaseException) -> BaseException:
    """The exception to raise for a transport error: ``ConnectionError`` family as is, other
    ``OSError``s as they are, anything else wrapped in ``ConnectionError`` (cause kept)."""
    if isinstance(exc, OSError):
        return exc
    error = ConnectionError(f"connection broken: {exc!r}")
    error.__cause__ = exc
    return error

