"""Flows: byte sources and sinks for green code, and the helpers every flow shares.

A flow is Eio's notion of a byte stream seen from direct-style code: ``Source.read_into`` fills a
buffer (0 at end of input), ``Sink.write`` takes all of its bytes (blocking the fiber under
backpressure), and ``TwoWay`` adds ``shutdown`` and ``close``. Every flow is also an
``io.RawIOBase``, so the standard library's buffered and text layers (``io.BufferedReader``,
``io.TextIOWrapper``, ``csv``, ``json.load``) work over a socket from green code.

Concrete flows: the in-memory ``string_source`` / ``buffer_sink`` here, network connections in
``_protocol`` (built on asyncio transports directly), and the adapters over asyncio's
``StreamReader`` / ``StreamWriter`` below, for code half-way through a port.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import io
import types
from typing import TYPE_CHECKING, Literal

from ._core import await_from_green
from ._errors import ClosedResourceError
from ._exclusive import ExclusiveSlot

if TYPE_CHECKING:
    from typing import Self

    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = (
    "Sink",
    "Source",
    "TwoWay",
    "buffer_sink",
    "copy",
    "read_exact",
    "sink_of_writer",
    "source_of_reader",
    "string_source",
)

ShutdownHow = Literal["send", "receive", "all"]

# The chunk size of ``read()`` without an argument and of ``copy``.
DEFAULT_CHUNK = 65536


class _Flow(io.RawIOBase):
    """What every flow shares: the ``io`` plumbing, close-once, and the context manager."""

    def __enter__(self) -> Self:
        if self.closed:
            raise ClosedResourceError(f"{self!r} is closed")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # io.IOBase closes a forgotten object when it is collected; a network flow must not be
        # closed from the garbage collector (maybe after its loop is gone). The transport under
        # it emits its own ResourceWarning instead.
        pass

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedResourceError(f"{type(self).__name__} used after close()")

    def seekable(self) -> bool:
        return False


class Source(_Flow):
    """A flow bytes can be read from. Subclasses implement ``read_into``."""

    @abc.abstractmethod
    def read_into(self, buf: WriteableBuffer) -> int:
        """Fill ``buf`` with at least one byte and return how many; 0 means end of input.

        May suspend the fiber until bytes arrive (a cancellation point; no bytes are lost when
        the wait is cancelled). Raises ``ClosedResourceError`` after ``close()``; network flows
        raise the builtin ``ConnectionError`` family when the connection breaks.
        """

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """``io.RawIOBase`` spelling of ``read_into``."""
        return self.read_into(buffer)

    def read(self, n: int = DEFAULT_CHUNK) -> bytes:
        """Read up to ``n`` bytes (at least one); ``b""`` at end of input. ``n < 0`` reads
        everything up to the end of input. Suspends like ``read_into``."""
        if n < 0:
            return self.readall()
        buf = bytearray(n)
        got = self.read_into(buf)
        del buf[got:]
        return bytes(buf)

    def readall(self) -> bytes:
        """Read up to the end of input (unbounded: prefer ``BufReader.take_all`` for input you
        do not trust)."""
        chunks = bytearray()
        buf = bytearray(DEFAULT_CHUNK)
        while got := self.read_into(buf):
            chunks += memoryview(buf)[:got]
        return bytes(chunks)

    def readable(self) -> bool:
        return True


class Sink(_Flow):
    """A flow bytes can be written to. Subclasses implement ``write``."""

    @abc.abstractmethod
    def write(self, data: ReadableBuffer, /) -> int:
        """Write all of ``data`` and return its length.

        May suspend the fiber while the other side is not keeping up (backpressure; a
        cancellation point -- bytes already handed over are still sent). Raises
        ``ClosedResourceError`` after ``close()`` or ``shutdown("send")``; network flows raise
        the builtin ``ConnectionError`` family when the connection breaks.
        """

    def writable(self) -> bool:
        return True


class TwoWay(Source, Sink):
    """A flow that reads and writes (a connection): adds ``shutdown`` and ``close``."""

    @abc.abstractmethod
    def shutdown(self, how: ShutdownHow) -> None:
        """Close one direction: ``"send"`` (the peer reads end of input once what was written
        has been sent), ``"receive"`` (reads return end of input, incoming bytes are dropped)
        or ``"all"``. Does not suspend. Raises ``ClosedResourceError`` after ``close()``."""


# -- helpers -------------------------------------------------------------------------------------


def copy(src: Source, dst: Sink) -> int:
    """Copy everything from ``src`` to ``dst`` until ``src`` ends; return the byte count.

    Suspends while waiting for input and under backpressure (a cancellation point). Raises
    whatever ``src.read_into`` or ``dst.write`` raise.
    """
    total = 0
    if type(src).read is not Source.read:
        # The source has its own read() (a connection: one copy out of its receive buffer).
        while data := src.read(DEFAULT_CHUNK):
            dst.write(data)
            total += len(data)
        return total
    buf = bytearray(DEFAULT_CHUNK)
    view = memoryview(buf)
    while got := src.read_into(buf):
        # bytes(): a sink may keep a reference to what it is given (a transport's send buffer),
        # and ``buf`` is reused by the next read.
        dst.write(bytes(view[:got]))
        total += got
    return total


def read_exact(src: Source, n: int) -> bytes:
    """Read exactly ``n`` bytes from ``src``.

    Suspends until they arrive (a cancellation point). Raises ``EOFError`` when the input ends
    first (the bytes read so far are in ``.args[1]``), ``ValueError`` for ``n < 0``.
    """
    if n < 0:
        raise ValueError(f"read_exact() needs n >= 0, got {n}")
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        got = src.read_into(view[pos:])
        if got == 0:
            raise EOFError(f"input ended after {pos} of {n} bytes", bytes(view[:pos]))
        pos += got
    return bytes(buf)


class _StringSource(Source):
    __slots__ = ("_data", "_pos")

    def __init__(self, data: ReadableBuffer) -> None:
        super().__init__()
        self._data = memoryview(data).cast("B")
        self._pos = 0

    def read_into(self, buf: WriteableBuffer) -> int:
        self._check_open()
        out = memoryview(buf).cast("B")
        n = min(len(out), len(self._data) - self._pos)
        out[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._data.release()
        super().close()


def string_source(data: ReadableBuffer | str) -> Source:
    """A ``Source`` reading the given bytes (a ``str`` is encoded as UTF-8). Never suspends."""
    if isinstance(data, str):
        data = data.encode()
    return _StringSource(data)


class _BufferSink(Sink):
    __slots__ = ("_buffer",)

    def __init__(self, buffer: bytearray) -> None:
        super().__init__()
        self._buffer = buffer

    def write(self, data: ReadableBuffer, /) -> int:
        self._check_open()
        before = len(self._buffer)
        self._buffer += data
        return len(self._buffer) - before


def buffer_sink(buffer: bytearray) -> Sink:
    """A ``Sink`` appending everything written to ``buffer``. Never suspends."""
    return _BufferSink(buffer)


# -- adapters over asyncio streams ----------------------------------------------------------------


class _ReaderSource(Source):
    __slots__ = ("_reader", "_reading")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__()
        self._reader = reader
        # asyncio's own check would raise a bare RuntimeError naming a coroutine.
        self._reading = ExclusiveSlot(
            "another fiber is already reading from this source; give each fiber its own, or "
            "hand the bytes on through a gb.Stream"
        )

    def read_into(self, buf: WriteableBuffer) -> int:
        out = memoryview(buf).cast("B")
        if not out:
            self._check_open()
            return 0
        data = self.read(len(out))
        n = len(data)
        out[:n] = data
        return n

    def read(self, n: int = DEFAULT_CHUNK) -> bytes:
        """``reader.read(n)`` awaited (no scratch buffer); ``b""`` at end of input. Raises
        ``BusyResourceError`` when another fiber is reading."""
        self._check_open()
        if n < 0:
            return self.readall()
        # Completes without suspending (and without a greenlet switch) when bytes are buffered.
        with self._reading:
            return await_from_green(self._reader.read(n))


def source_of_reader(reader: asyncio.StreamReader) -> Source:
    """A ``Source`` over an ``asyncio.StreamReader``, for code in transition.

    ``read_into`` awaits ``reader.read`` (a cancellation point); the reader's own errors
    (``ConnectionResetError`` ...) come through unchanged; a second fiber reading while the
    first waits gets ``BusyResourceError``. Closing the source does not touch the
    reader; close the writer of the same connection for that.
    """
    return _ReaderSource(reader)


class _WriterSink(Sink):
    __slots__ = ("_writer",)

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self._writer = writer

    def write(self, data: ReadableBuffer, /) -> int:
        self._check_open()
        if type(data) is not bytes:
            data = bytes(data)  # the transport may keep what it is given
        writer = self._writer
        transport = writer.transport
        if transport.is_closing():
            # Gone (uvloop would raise RuntimeError from write): drain() raises the
            # connection's error once connection_lost has run.
            await_from_green(writer.drain())
            raise BrokenPipeError(errno.EPIPE, "write to a stream whose connection is closing")
        writer.write(data)
        # drain() returns at once unless the transport paused us or the connection broke;
        # skip creating and stepping its coroutine in that common case (``_paused`` is the
        # flow-control flag of asyncio's stream protocol; unknown protocols always drain).
        if transport.is_closing() or getattr(transport.get_protocol(), "_paused", True):
            await_from_green(writer.drain())
        return len(data)

    def close(self) -> None:
        """Close the writer (hence the connection). Does not suspend."""
        if not self.closed:
            self._writer.close()
        super().close()


def sink_of_writer(writer: asyncio.StreamWriter) -> Sink:
    """A ``Sink`` over an ``asyncio.StreamWriter``, for code in transition.

    ``write`` writes and then awaits ``writer.drain()`` when the transport asks for it, so
    backpressure blocks the fiber (a cancellation point). A write to a connection that is gone
    raises the ``ConnectionError`` family. ``close()`` closes the writer without waiting.
    """
    return _WriterSink(writer)
