"""Network connections as flows, on asyncio transports and ``BufferedProtocol`` directly.

Theory of operation
===================

A ``Connection`` (the ``TwoWay`` flow green code sees) owns one ``_ConnProtocol`` (what the
transport calls back). The protocol owns the connection's state: its fields are changed only by
its own methods -- the transport callbacks, and the few methods the connection calls
(``take``, ``read_into``, ``wait_for_input``, ``wait_for_drain``, ``drop_input``,
``release_waiters``, ``expire_reader``). The connection reads the fields, never writes them.

Reading. The transport writes incoming bytes straight into the protocol's ``ReceiveBuffer``
(``get_buffer`` / ``buffer_updated``: no intermediate ``bytes`` object per read), which
allocates on demand and gives its memory back after a burst (``_receive_buffer``). ``read`` and
``read_into`` copy out without suspending when it is not empty; only when it is empty does the
reading fiber park on a ``Waiter`` (``_reader``), which ``buffer_updated``, ``eof_received`` and
``connection_lost`` wake through the loop's wake batch (``_wake_batch``). The waiter carries no
data -- it only says "look again" -- so a reader cancelled (or timed out) while parked loses
nothing: the bytes stay in the buffer for the next read.

Read timeouts. A wait for input records when it started; a connection with a ``read_timeout``
keeps at most one timer, armed at the first timed wait for that wait's deadline. When it fires
it fails the reader if the wait in progress has lasted the whole timeout, else re-arms itself
for that wait's deadline (or disarms, when no wait is in progress). So a busy connection costs
one clock read per wait, not a timer per wait. Rejected: ``call_later`` + ``cancel`` around
every wait -- measured with an in-process 1 KiB ping-pong through ``run_server``, it added about
20 us of CPU per round trip on the asyncio loop (70-80 us without it, 95-120 us with it).

Memory is bounded by ``RECEIVE_BUFFER_SIZE``: when that much is unread the transport is paused
(``pause_reading``) and resumed once a reader has taken at least half of it.

Writing. ``write`` hands the bytes to ``transport.write`` (which sends at once when it can) and,
if the transport has called ``pause_writing`` (its buffer is past the high-water mark), parks the
fiber on a Waiter (``_drainer``) until ``resume_writing`` -- exactly StreamWriter's
write-then-drain, without the Task wake-ups.

One reader and one writer at a time: a second fiber reading (or writing) while the first waits
gets ``BusyResourceError`` (``ExclusiveSlot``) before anything is read or sent, and the first
one's operation goes on undisturbed.

Invariants
----------
* ``_reader`` is the Waiter of the one fiber parked in ``wait_for_input``, else None; it is
  cleared by whoever wakes it (so a waiter is woken at most once) and by the reader when its
  wait ends. ``_drainer`` likewise for the one writer parked in ``wait_for_drain``.
* Every state change happens *before* a waiter is woken or batched (see ``_wake_batch``).
* ``_lost`` becomes True once, in ``connection_lost``; ``_error`` is then the exception the
  transport reported (None for a clean close). Buffered bytes are still delivered after that,
  the error is raised once they are gone.
* ``_read_paused`` is True exactly while this protocol has paused the transport's reading.

Two implementations
-------------------
A round trip runs ``get_buffer``, ``buffer_updated``, ``Connection.read`` (its wait for input
and its ``take``) and ``Connection.write``: seven Python frames, all of the server's interpreted
code per round trip. With the accelerator they are C: ``_ConnProtocol``'s base is
``_speedups.ConnProtocol`` -- the state as C fields under the same names, and the protocol's
five hot methods -- instead of ``_PyProtocolState``; and ``Connection.read``, ``read_into`` and
``write`` are C method descriptors (``init_connection``) with the Python methods' docstrings.
The C methods take the common case and call the Python method (kept in ``_PY_METHODS``) for the
rest: a count that is not a positive ``int``, an empty buffer to read into, a write after
``shutdown("send")``; a write that finds the send buffer full waits in ``_wait_drained``, which
both call. Everything else (the callbacks other than the two of every read, the read timer,
closing) is Python in both. ``PyConnProtocol`` is the all-Python class, the pure-Python build's
``_ConnProtocol``; ``tests/test_connection_speedups.py`` holds the two to the same results with
random programs. The Connection's attributes the C methods read are slots, read in place (for a
Connection and an ExclusiveSlot of exactly those classes; a subclass's are looked up, as one may
be a property). Measured by ``benchmarks/bench_instructions.py --ops echo`` (one 1 KiB round
trip, client included): 129,420 to 121,374 instructions on asyncio's loop, 52,912 to 42,610 on
uvloop, where the floor of a direct-style server (``echo-greenlet``) is 40,040; what is left
over the floor is the loop's callback, the Task's and the wait's bookkeeping.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import socket
import struct
from typing import TYPE_CHECKING, Any, cast

from ._accelerator import speedups
from ._errors import ClosedResourceError
from ._exclusive import ExclusiveSlot
from ._flow import DEFAULT_CHUNK, ShutdownHow, TwoWay
from ._receive_buffer import ReceiveBuffer
from ._waiter import SPEEDUPS as _WAITER_SPEEDUPS
from ._waiter import Waiter
from ._wake_batch import WakeBatch, wake_batch

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ("Connection", "ReadTimeout")

# The bound on one connection's unread input.
RECEIVE_BUFFER_SIZE = 64 * 1024

_SHUTDOWN_HOWS = ("send", "receive", "all")


class ReadTimeout(TimeoutError):
    """A read waited longer than ``Connection.read_timeout`` (or its server shed the connection
    to make room): the builtin ``TimeoutError`` for users; servers do not report it as a
    handler's error."""


class _PyProtocolState:
    """The state of a ``_ConnProtocol`` and its hot paths, in Python: its base in the pure-Python
    build. With the accelerator the base is ``_speedups.ConnProtocol``, the same fields and
    methods in C; see "Two implementations" in the module memo."""

    __slots__ = (
        "_drainer",
        "_drop_input",
        "_eof",
        "_error",
        "_keep_open_on_eof",
        "_loop",
        "_lost",
        "_read_paused",
        "_read_timeout",
        "_reader",
        "_reader_since",
        "_rx",
        "_timer",
        "_timer_at",
        "_transport",
        "_wakeups",
        "_write_paused",
    )

    _transport: asyncio.Transport | None
    _loop: asyncio.AbstractEventLoop
    _wakeups: WakeBatch
    _rx: ReceiveBuffer
    _reader: Waiter | None
    _reader_since: float
    _read_timeout: float | None
    _timer: asyncio.TimerHandle | None
    _timer_at: float
    _read_paused: bool
    _eof: bool
    _drop_input: bool
    _write_paused: bool
    _drainer: Waiter | None
    _lost: bool
    _error: BaseException | None
    _keep_open_on_eof: bool

    if TYPE_CHECKING:

        def _maybe_resume_reading(self) -> None: ...
        def _check_read_timeout(self) -> None: ...

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rx.room()

    def buffer_updated(self, nbytes: int) -> None:
        rx = self._rx
        rx.filled(nbytes)
        if self._drop_input:
            rx.clear()
            return
        if rx.buffered >= RECEIVE_BUFFER_SIZE and not self._read_paused:
            self._read_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        reader = self._reader
        if reader is not None:
            self._reader = None
            self._wakeups.add(reader)

    def take(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes, removed from the buffer; resumes reading when it drained."""
        data = self._rx.take(n)
        if self._read_paused:
            self._maybe_resume_reading()
        return data

    def read_into(self, out: WriteableBuffer) -> int:
        """Move buffered bytes into ``out`` (as ``take``); return how many."""
        n = self._rx.read_into(out)
        if self._read_paused:
            self._maybe_resume_reading()
        return n

    def wait_for_input(self, timeout: float | None) -> None:
        """Park the calling fiber until the transport says there may be more to read.

        A cancellation point. Raises ``ReadTimeout`` once it has waited ``timeout`` seconds
        (None: no limit); nothing is lost either way. See "Read timeouts" in the module memo.
        """
        waiter = self._reader = Waiter()
        try:
            since = self._reader_since = self._loop.time()
            self._read_timeout = timeout
            if timeout is not None:
                timer = self._timer
                if timer is None or self._timer_at > since + timeout:  # none yet, or a later one
                    if timer is not None:
                        timer.cancel()
                    at = self._timer_at = since + timeout
                    self._timer = self._loop.call_at(at, self._check_read_timeout)
            waiter.wait()
        finally:
            if self._reader is waiter:
                self._reader = None


# The C state and hot paths need the C Waiter (they park on one without a Python call).
_speedups = speedups() if _WAITER_SPEEDUPS else None
if _speedups is not None and not hasattr(_speedups, "init_connection"):
    _speedups = None  # an extension built from older sources
SPEEDUPS = _speedups is not None


class _ProtocolMethods(asyncio.BufferedProtocol):
    """The methods of a ``_ConnProtocol`` that are Python in both builds."""

    if TYPE_CHECKING:  # the state, which a _ConnProtocol's other base holds
        __slots__ = _PyProtocolState.__slots__
        _transport: asyncio.Transport | None
        _loop: asyncio.AbstractEventLoop
        _wakeups: WakeBatch
        _rx: ReceiveBuffer
        _reader: Waiter | None
        _reader_since: float
        _read_timeout: float | None
        _timer: asyncio.TimerHandle | None
        _timer_at: float
        _read_paused: bool
        _eof: bool
        _drop_input: bool
        _write_paused: bool
        _drainer: Waiter | None
        _lost: bool
        _error: BaseException | None
        _keep_open_on_eof: bool
    else:
        __slots__ = ()

    def __init__(self, *, keep_open_on_eof: bool = True) -> None:
        self._transport = None
        self._loop = asyncio.get_running_loop()
        self._wakeups = wake_batch()
        self._rx = ReceiveBuffer(RECEIVE_BUFFER_SIZE)
        self._reader = None
        self._reader_since = 0.0  # loop time at which the latest wait for input started
        self._read_timeout = None  # the timeout of the latest wait for input
        # The read-timeout timer: at most one per connection, at or before the deadline of the
        # wait in progress (never per wait; see "Read timeouts" in the module memo).
        self._timer = None
        self._timer_at = 0.0  # its deadline, while there is one (asyncio's when() is a Python call)
        self._read_paused = False
        self._eof = False  # the peer shut down its sending side
        self._drop_input = False  # shutdown("receive") on our side
        self._write_paused = False
        self._drainer = None
        self._lost = False
        self._error = None
        # False for TLS: asyncio's SSL transport cannot stay half-open after the peer's EOF.
        self._keep_open_on_eof = keep_open_on_eof

    # -- transport callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

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
        drainer, self._drainer = self._drainer, None
        if drainer is not None:
            self._wakeups.add(drainer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._lost = True
        self._error = exc
        self._write_paused = False
        reader, self._reader = self._reader, None
        drainer, self._drainer = self._drainer, None
        if reader is not None:
            self._wakeups.add(reader)
        if drainer is not None:
            self._wakeups.add(drainer)

    # -- the connection's side --------------------------------------------------------------------

    def _maybe_resume_reading(self) -> None:
        if self._rx.buffered <= RECEIVE_BUFFER_SIZE // 2:
            self._read_paused = False
            if not self._lost:
                assert self._transport is not None
                self._transport.resume_reading()

    def _check_read_timeout(self) -> None:
        """The timer: fail a reader that has waited its whole timeout, else look again at the
        deadline of the wait in progress (if any)."""
        self._timer = None
        reader, timeout = self._reader, self._read_timeout
        if reader is None or timeout is None:
            return  # no wait in progress: the next one arms the timer again
        deadline = self._reader_since + timeout
        if self._loop.time() >= deadline:
            self._reader = None
            reader.fail(
                ReadTimeout(f"no input for {timeout:g} s (the connection's read_timeout); nothing was lost")
            )
        else:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._check_read_timeout)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def expire_reader(self, exc: BaseException) -> bool:
        """Fail the parked reader's wait with ``exc``; False when no reader is parked."""
        reader, self._reader = self._reader, None
        return reader is not None and reader.fail(exc)

    def wait_for_drain(self) -> None:
        """Park the calling writer until the transport's send buffer drains (or the connection
        is lost or closed). A cancellation point."""
        waiter = self._drainer = Waiter()
        try:
            waiter.wait()
        finally:
            if self._drainer is waiter:
                self._drainer = None

    def drop_input(self) -> None:
        """``shutdown("receive")``: drop what is buffered and all further input, resume
        reading (to drain the socket), and tell a parked reader to look again."""
        self._drop_input = True
        self._rx.clear()
        if self._read_paused:
            self._read_paused = False
            if not self._lost:
                assert self._transport is not None
                self._transport.resume_reading()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.wake()

    def release_waiters(self, reader_error: BaseException) -> None:
        """``close()``: fail a parked reader with ``reader_error``, wake a parked writer."""
        self._cancel_timer()
        reader, self._reader = self._reader, None
        drainer, self._drainer = self._drainer, None
        if reader is not None:
            reader.fail(reader_error)
        if drainer is not None:
            drainer.wake()


class PyConnProtocol(_PyProtocolState, _ProtocolMethods):
    """``_ConnProtocol`` all in Python: the pure-Python build's (and the tests' reference)."""

    __slots__ = ()


if TYPE_CHECKING or _speedups is None:
    _ConnProtocol = PyConnProtocol
else:

    class _ConnProtocol(_speedups.ConnProtocol, _ProtocolMethods):
        """The transport's side of a ``Connection``, and the owner of its state; see the module
        memo. Its state and hot paths are the accelerator's ``ConnProtocol``."""

        __slots__ = ()


class Connection(TwoWay):
    """A network connection (TCP, Unix socket, TLS) as a ``TwoWay`` flow for green code.

    Made by ``net.connect``, ``net.connect_unix`` and ``Listener.accept``. One fiber may read
    while another writes; a second reader (or writer) while the first waits gets
    ``BusyResourceError``. ``read_timeout`` bounds each wait for input. Close it (``close()``
    or ``with``) when done.

    As an ``io.RawIOBase`` it can be wrapped: ``io.TextIOWrapper(io.BufferedReader(conn))``.
    Those wrappers own what they wrap -- closing (or collecting) them closes the connection;
    ``wrapper.detach()`` (twice for a text wrapper) hands it back.
    """

    # Slots (the instance keeps io's __dict__ besides): the C read and write paths read them in
    # place, without an attribute lookup through this class's long MRO.
    __slots__ = (
        "_closed", "_protocol", "_read_timeout", "_reading", "_send_closed", "_transport", "_writing",
    )  # fmt: skip

    def __init__(
        self, transport: asyncio.Transport, protocol: _ConnProtocol, *, read_timeout: float | None = None
    ) -> None:
        super().__init__()
        self._transport = transport
        self._protocol = protocol
        self._send_closed = False
        self._closed = False  # mirrors io's ``closed``, cheaper to test on the hot paths
        self._read_timeout = _check_timeout(read_timeout)
        self._reading = ExclusiveSlot(
            "another fiber is already reading from this connection; give each fiber its own "
            "connection, or hand the bytes on through a gb.Stream"
        )
        self._writing = ExclusiveSlot(
            "another fiber is already writing to this connection (waiting for the peer to read); "
            "serialise the writers with a gb.Mutex"
        )

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<greenbridge Connection {self.get_extra_info('peername')!r} {state}>"

    @property
    def read_timeout(self) -> float | None:
        """The longest a read waits for input, in seconds (None: no limit). Past it the read
        raises ``TimeoutError`` and loses nothing (the next read may wait again). Settable at
        any time, e.g. by a server's handler: it applies to the waits that start afterwards.
        ``net.run_server`` sets it to its ``idle_timeout``."""
        return self._read_timeout

    @read_timeout.setter
    def read_timeout(self, seconds: float | None) -> None:
        self._read_timeout = _check_timeout(seconds)

    # -- reading ---------------------------------------------------------------------------------

    def read_into(self, buf: WriteableBuffer) -> int:
        """Fill ``buf`` with the bytes available (at least one) and return how many; 0 at end
        of input (the peer shut down its sending side, or we did ``shutdown("receive")``).

        Returns without suspending when bytes are already buffered; otherwise suspends until
        some arrive (a cancellation point: a cancelled read loses nothing). Raises
        ``ClosedResourceError`` after ``close()`` (also in a fiber blocked here when another
        closes the connection), ``ConnectionResetError`` (or another ``ConnectionError``) when
        the connection broke, ``TimeoutError`` past ``read_timeout``, ``BusyResourceError`` if
        another fiber is already reading.
        """
        if len(buf) == 0:  # type: ignore[arg-type]
            self._check_open()
            return 0
        if not self._input_ready():
            return 0
        return self._protocol.read_into(buf)

    def read(self, n: int = DEFAULT_CHUNK) -> bytes:
        """Read up to ``n`` bytes (at least one): ``b""`` at end of input; ``n < 0`` reads to
        the end of input. Suspends and raises like ``read_into``."""
        if n <= 0:
            if n < 0:
                return self.readall()
            self._check_open()
            return b""
        if not self._input_ready():
            return b""
        return self._protocol.take(n)

    def _input_ready(self) -> bool:
        """True once bytes are buffered (waiting for them if need be), False at end of input."""
        p = self._protocol
        rx = p._rx
        while True:
            if self._closed:
                raise ClosedResourceError("read from a connection after close()")
            if rx.buffered:
                return True
            if p._drop_input or p._eof:
                return False
            if p._lost:
                if p._error is not None:
                    raise _connection_error(p._error)
                return False
            reading = self._reading  # taken inline: this is every read's path
            if reading.busy:
                reading.acquire()  # raises BusyResourceError
            reading.busy = True
            try:
                p.wait_for_input(self._read_timeout)
            finally:
                reading.busy = False

    # -- writing ---------------------------------------------------------------------------------

    def write(self, data: ReadableBuffer, /) -> int:
        """Send all of ``data``; return its length.

        Does not suspend while the transport keeps up; when its send buffer is past the
        high-water mark, suspends until it drains below the low mark (a cancellation point: the
        bytes already handed over are still sent). Raises ``ClosedResourceError`` after
        ``close()`` or ``shutdown("send")``, ``BrokenPipeError`` / ``ConnectionResetError`` when
        the connection is gone, ``BusyResourceError`` (sending nothing) while another fiber's
        write waits here.
        """
        if self._send_closed:
            self._check_open()
            raise ClosedResourceError("write to a connection after shutdown('send')")
        writing = self._writing
        if writing.busy:
            writing.acquire()  # raises BusyResourceError: nothing of ``data`` is sent
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
        if p._write_paused:
            self._wait_drained()
        return len(data)

    def _wait_drained(self) -> None:
        """The rest of a ``write`` that found the transport's send buffer past its high-water
        mark: wait (a cancellation point) until it drains; raise if the connection is closed or
        lost meanwhile."""
        p = self._protocol
        writing = self._writing
        while p._write_paused:
            writing.acquire()
            try:
                p.wait_for_drain()
            finally:
                writing.release()
            if self._closed:
                raise ClosedResourceError("the connection was closed while a write waited")
            if p._lost and p._error is not None:
                raise _connection_error(p._error)

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
            p.drop_input()
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
        self._send_closed = True
        if not self._transport.is_closing():
            self._transport.close()
        self._protocol.release_waiters(ClosedResourceError("the connection was closed while a read waited"))

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

    def _idle_since(self) -> float | None:
        """The loop time at which the parked reader started waiting for input; None when no
        fiber waits to read (servers shed the longest-idle connection when full)."""
        p = self._protocol
        return p._reader_since if p._reader is not None and not p._rx.buffered else None

    def _shed(self, reason: str) -> bool:
        """Make the parked reader's wait raise ``ReadTimeout(reason)``; False if none waits."""
        return self._protocol.expire_reader(ReadTimeout(reason))

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


def _check_timeout(seconds: float | None) -> float | None:
    if seconds is not None and not seconds > 0:
        raise ValueError(f"read_timeout must be a number of seconds > 0, or None; got {seconds!r}")
    return seconds


def _connection_error(exc: BaseException) -> BaseException:
    """The exception to raise for a transport error: ``ConnectionError`` family as is, other
    ``OSError``s as they are, anything else wrapped in ``ConnectionError`` (cause kept)."""
    if isinstance(exc, OSError):
        return exc
    error = ConnectionError(f"connection broken: {exc!r}")
    error.__cause__ = exc
    return error



# Connection's Python read, read_into and write (the tests' reference when the C ones replace them).
_PY_METHODS = (Connection.read, Connection.read_into, Connection.write)

if _speedups is not None:
    # Connection's read, read_into and write in C (see "Two implementations" in the module memo):
    # method descriptors of the class, with the Python methods' docstrings; the Python methods
    # stay as what the C ones hand the rare cases to.
    def _c_doc(name: str, signature: str) -> str:
        return f"{name}{signature}\n--\n\n{inspect.getdoc(getattr(Connection, name))}"

    Connection.read, Connection.read_into, Connection.write = _speedups.init_connection(  # type: ignore[method-assign]
        Connection,
        ExclusiveSlot,
        ClosedResourceError,
        _connection_error,
        RECEIVE_BUFFER_SIZE,
        DEFAULT_CHUNK,
        _PY_METHODS,
        (
            _c_doc("read", f"($self, n={DEFAULT_CHUNK})"),
            _c_doc("read_into", "($self, buf, /)"),
            _c_doc("write", "($self, data, /)"),
        ),
    )
