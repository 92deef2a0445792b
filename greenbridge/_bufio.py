"""Buffered reading and writing over flows: Eio's ``Buf_read`` and ``Buf_write`` for green code.

``BufReader`` parses input (lines, fixed-size fields, runs of matching bytes) while never holding
more than ``max_size`` bytes: a request that would need more raises ``BufferLimitExceeded``
instead of letting an untrusted peer grow memory without bound. ``BufWriter`` batches small
writes into one ``write`` on the underlying sink.

Invariant of ``BufReader``: the unconsumed input is ``_buf[_pos:]`` followed by ``_probe`` (at
most one byte), and ``len(_buf) <= max_size`` at all times (consumed bytes are dropped before
reading more).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ._errors import BufferLimitExceeded
from ._flow import DEFAULT_CHUNK, Sink, Source

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ("BufReader", "BufWriter")

DEFAULT_MAX_SIZE = 1024 * 1024


class BufReader(Source):
    """Buffered, bounded parsing of a ``Source``: ``BufReader(src, max_size=1 MiB)``.

    Every method that may need more input reads it from ``src``, so it suspends like
    ``src.read_into`` (a cancellation point; a cancelled call consumes nothing). Methods raise
    ``BufferLimitExceeded`` when satisfying them would mean buffering more than ``max_size``
    bytes, and ``EOFError`` when the input ends before they could complete. A ``BufReader`` is
    itself a ``Source`` (buffered bytes first, then the rest of ``src``), so after parsing a
    header one can ``flow.copy`` the body on. ``close()`` drops the buffer; ``src`` stays open
    (it belongs to whoever opened it).
    """

    def __init__(self, src: Source, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size < 1:
            raise ValueError(f"BufReader max_size must be at least 1, got {max_size}")
        super().__init__()
        self._src = src
        self._max_size = max_size
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        # At most one byte read past max_size to tell "more input" from "end of input"; it
        # comes before anything read from src later.
        self._probe = b""

    @property
    def max_size(self) -> int:
        """The most bytes this reader will ever buffer."""
        return self._max_size

    def buffered(self) -> int:
        """How many bytes are buffered (read from ``src``, not consumed yet). Never suspends."""
        return len(self._buf) - self._pos

    # -- filling -----------------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Read more input into the buffer; False at end of input.

        Raises ``BufferLimitExceeded`` when the buffer already holds ``max_size`` bytes and the
        input goes on. Finding that out takes reading one byte past ``max_size``: that byte is
        kept aside (``_probe``), not dropped, so a refused request consumes nothing.
        """
        self._check_open()
        if self._eof:
            return False
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        room = self._max_size - len(self._buf)
        if room <= 0:
            if not self._probe:
                probe = self._src.read(1)
                if not probe:
                    self._eof = True
                    return False
                self._probe = probe
            raise BufferLimitExceeded(
                f"more than max_size={self._max_size} bytes would have to be buffered; "
                f"raise BufReader(max_size=...) if the input is trusted"
            )
        if self._probe:
            self._buf += self._probe
            self._probe = b""
            return True
        data = self._src.read(min(room, DEFAULT_CHUNK))
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _ensure(self, n: int) -> None:
        """Buffer at least ``n`` bytes or raise ``EOFError`` / ``BufferLimitExceeded``."""
        if n > self._max_size:
            raise BufferLimitExceeded(f"{n} bytes requested, more than max_size={self._max_size}")
        while len(self._buf) - self._pos < n:
            if not self._fill():
                raise EOFError(f"input ended after {self.buffered()} of the {n} bytes needed")

    def _consume(self, n: int) -> bytes:
        pos = self._pos
        data = bytes(self._buf[pos : pos + n])
        self._pos = pos + n
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        return data

    # -- parsing -----------------------------------------------------------------------------------

    def line(self) -> bytes:
        """The next line, without its ``b"\\n"`` or ``b"\\r\\n"``; the last line may lack one.

        Raises ``EOFError`` at end of input, ``BufferLimitExceeded`` for a line (newline
        included) longer than ``max_size``.
        """
        scanned = 0
        while True:
            i = self._buf.find(b"\n", self._pos + scanned)
            if i >= 0:
                end = i - 1 if i > self._pos and self._buf[i - 1] == 13 else i
                line = bytes(self._buf[self._pos : end])
                self._consume(i + 1 - self._pos)
                return line
            scanned = len(self._buf) - self._pos
            if not self._fill():
                if scanned:
                    return self._consume(scanned)
                raise EOFError("end of input while reading a line")

    def lines(self) -> Iterator[bytes]:
        """Iterate over the remaining lines (as ``line()``) up to the end of input."""
        while not self.at_end_of_input():
            yield self.line()

    def take(self, n: int) -> bytes:
        """Exactly the next ``n`` bytes. Raises ``EOFError`` if the input ends first,
        ``BufferLimitExceeded`` when ``n > max_size``."""
        if n < 0:
            raise ValueError(f"take() needs n >= 0, got {n}")
        self._ensure(n)
        return self._consume(n)

    def take_all(self) -> bytes:
        """Everything up to the end of input. Raises ``BufferLimitExceeded`` if that is more
        than ``max_size`` bytes."""
        while self._fill():
            pass
        return self._consume(len(self._buf) - self._pos)

    def take_while(self, pred: Callable[[bytes], bool]) -> bytes:
        """The longest run of next bytes for which ``pred`` is true (possibly empty).

        ``pred`` gets each byte as a one-byte ``bytes`` (so ``bytes.isdigit`` works). Stops at
        end of input; raises ``BufferLimitExceeded`` for a run longer than ``max_size``.
        """
        i = self._pos
        while True:
            buf = self._buf
            end = len(buf)
            while i < end:
                if not pred(bytes(buf[i : i + 1])):
                    return self._consume(i - self._pos)
                i += 1
            offset = i - self._pos
            if not self._fill():
                return self._consume(offset)
            i = self._pos + offset

    def skip(self, n: int) -> None:
        """Discard the next ``n`` bytes (any number: they are not buffered all at once).
        Raises ``EOFError`` if the input ends first."""
        if n < 0:
            raise ValueError(f"skip() needs n >= 0, got {n}")
        while n:
            if self._pos == len(self._buf) and not self._fill():
                raise EOFError(f"input ended with {n} bytes still to skip")
            k = min(n, len(self._buf) - self._pos)
            self._consume(k)
            n -= k

    def peek_char(self) -> bytes | None:
        """The next byte (as one-byte ``bytes``) without consuming it; None at end of input."""
        if self._pos == len(self._buf) and not self._fill():
            return None
        return bytes(self._buf[self._pos : self._pos + 1])

    def at_end_of_input(self) -> bool:
        """True when nothing is buffered and the input has ended (may suspend to find out)."""
        return self._pos == len(self._buf) and not self._fill()

    # -- as a Source --------------------------------------------------------------------------------

    def read_into(self, buf: WriteableBuffer) -> int:
        """Buffered bytes first; when none are buffered, read from ``src`` directly."""
        self._check_open()
        out = memoryview(buf).cast("B")
        available = len(self._buf) - self._pos
        if available:
            n = min(available, len(out))
            out[:n] = self._buf[self._pos : self._pos + n]
            self._consume(n)
            return n
        if self._probe and out:
            out[0] = self._probe[0]
            self._probe = b""
            return 1
        if self._eof:
            return 0
        n = self._src.read_into(out)
        if n == 0:
            self._eof = True
        return n

    def close(self) -> None:
        """Close this reader, dropping buffered bytes; ``src`` stays open. Does not suspend."""
        self._buf.clear()
        self._pos = 0
        self._probe = b""
        super().close()


class BufWriter(Sink):
    """Batches small writes to ``dst`` into writes of about ``buffer_size`` bytes.

    ``write`` copies into the buffer and only writes to ``dst`` (which may suspend) when the
    buffer fills; ``flush()`` writes what is buffered. As a context manager it flushes on a
    normal exit; when the block raises, the unflushed bytes are dropped (they are likely
    half a message). ``close()`` flushes; ``dst`` stays open (it belongs to whoever opened it).
    """

    def __init__(self, dst: Sink, buffer_size: int = DEFAULT_CHUNK) -> None:
        if buffer_size < 1:
            raise ValueError(f"BufWriter buffer_size must be at least 1, got {buffer_size}")
        super().__init__()
        self._dst = dst
        self._size = buffer_size
        self._buf = bytearray()

    def buffered(self) -> int:
        """How many bytes wait for the next flush. Never suspends."""
        return len(self._buf)

    def write(self, data: ReadableBuffer, /) -> int:
        """Buffer ``data`` (writing to ``dst`` when the buffer fills: may suspend there).
        Returns its length. Raises ``ClosedResourceError`` after ``close()``, or what
        ``dst.write`` raises."""
        self._check_open()
        n = len(memoryview(data))
        if len(self._buf) + n < self._size:
            self._buf += data
            return n
        if self._buf:
            self._buf += data
            self.flush()
        else:  # a big write with nothing buffered goes straight through
            self._dst.write(data)
        return n

    def flush(self) -> None:
        """Write the buffered bytes to ``dst`` (suspends under backpressure). Raises what
        ``dst.write`` raises; the bytes are then dropped from the buffer all the same."""
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._dst.write(data)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._buf.clear()
        self.close()

    def close(self) -> None:
        """Flush, then refuse further writes; ``dst`` stays open. Suspends while flushing."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            super().close()
