"""The receive buffer of one connection: the bytes received and not read yet (h11's model).

One owner for the indices: the transport writes into the room ``room()`` offers and reports how
much it wrote (``filled``); readers copy out (``read_into``) or take (``take``). Nobody else
touches ``_buf``, ``_start`` or ``_end``.

Memory is allocated on demand and given back after a burst, so that an idle connection costs
little (a server under a slowloris: thousands of connections that each hold one byte):

* Nothing is allocated until the transport first asks for room.
* The room offered starts at the bound on unread input (``limit``, the protocol's
  ``pause_reading`` threshold): whatever the peer sent first is taken out of the kernel in one
  receive. (Starting small was measured to hurt: a server that hangs up on a bad request with
  the rest of it still in the kernel's buffer makes the kernel reset the connection, and the
  client loses the answer -- ``tests/test_soak.py``'s over-long lines.) The room halves each
  time a receive used less than a quarter of it, down to ``MIN_CAPACITY``, and doubles again
  each time the transport fills all of it (more is coming).
* When a reader empties a buffer larger than ``MIN_CAPACITY`` and the last receive did not fill
  its room (the burst is over), the memory is given back; the next receive allocates afresh. A
  buffer of at most ``MIN_CAPACITY`` is kept: small messages (a request, an echo) then cost no
  allocation at all once the size has settled.

Invariants
----------
* ``0 <= _start <= _end <= len(_buf)``; ``_start == _end`` means empty, and both are then 0, so
  the next ``room()`` offers the buffer from its start.
* ``buffered == _end - _start``: how many bytes are buffered, an attribute rather than a call
  for the connection's read path, which asks on every read (``len()`` gives the same).
* ``MIN_CAPACITY <= _capacity <= max(limit, MIN_CAPACITY)``: the size the next allocation gets.
* The buffer only grows past ``limit`` when the transport asks for room although the unread
  bytes already reach ``limit`` (a transport that did not honour ``pause_reading`` at once).
* ``filled(n)`` accepts ``0 <= n <= _offered``, the length of the room last offered and not
  reported yet: reporting it withdraws the offer, and so does emptying the buffer (the room
  offered before no longer starts at ``_end``). So ``_end`` never passes the buffer's end.
* The memory is never resized, only replaced and dropped, never released by hand: a transport
  may still hold a view of the room (uvloop keeps a ``Py_buffer`` of it while it calls
  ``buffer_updated``, in which a connection shut for receiving clears the buffer), and a
  memoryview with an export cannot be released.

Two implementations
-------------------
``PyReceiveBuffer`` below, and the same class in C in ``_speedups.c`` (no bytecode on the
transport's and the readers' every call). ``ReceiveBuffer`` is the C one when the accelerator is
built and ``GREENBRIDGE_NO_SPEEDUPS`` is unset, as for ``await_from_green``; else this one.
``tests/test_receive_buffer.py`` runs every test on both, and a differential test holds them to
the same results. The C one holds its bytes in a bytearray and hands out memoryviews of it, so a
view still held keeps the memory it points to alive.
"""

from __future__ import annotations

from operator import index
from typing import TYPE_CHECKING

from ._accelerator import speedups

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ("MIN_CAPACITY", "SPEEDUPS", "PyReceiveBuffer", "ReceiveBuffer")

# The smallest room offered to the transport, and the most memory an idle connection keeps.
MIN_CAPACITY = 4 * 1024

_EMPTY = bytearray()


class PyReceiveBuffer:
    """Bytes received and not read yet; see the module memo.

    Bad input raises before anything changes: ``filled`` a ``ValueError`` for a count outside
    ``0 .. len(room())`` of the room last offered and not reported yet (the buffer emptied since
    withdraws it), ``take`` a ``ValueError`` for a negative count; a non-integer count a
    ``TypeError``.
    """

    __slots__ = (
        "_buf", "_capacity", "_end", "_last_full", "_limit", "_offered", "_start", "_view", "buffered",
    )  # fmt: skip

    def __init__(self, limit: int) -> None:
        self._limit = max(index(limit), MIN_CAPACITY)
        self._buf = _EMPTY
        self._view = memoryview(_EMPTY)
        self._start = 0
        self._end = 0
        self.buffered = 0  # read it, never set it: see the invariants (read-only in C)
        self._capacity = self._limit
        self._offered = 0  # the length of the room last offered and not reported yet
        self._last_full = False  # the last receive filled all the room it was offered

    def __len__(self) -> int:
        """How many bytes are buffered."""
        return self.buffered

    @property
    def allocated(self) -> int:
        """The bytes of memory the buffer holds right now (for tests and diagnostics)."""
        return len(self._buf)

    # -- the transport's side ----------------------------------------------------------------------

    def room(self) -> memoryview:
        """Memory for the transport to receive into (``BufferedProtocol.get_buffer``)."""
        end = self._end
        if end == 0:  # empty: offer the whole buffer, (re)allocated at the size wanted
            if len(self._buf) != self._capacity and (
                len(self._buf) < self._capacity or not self._last_full
            ):
                self._allocate(self._capacity)
            room = self._view
        else:
            if len(self._buf) - end < max(len(self._buf) // 4, 1):
                self._make_room()
                end = self._end
            room = self._view[end:]
        self._offered = len(room)
        return room

    def filled(self, nbytes: int) -> None:
        """The transport wrote ``nbytes`` into the last ``room()`` (``buffer_updated``)."""
        count = index(nbytes)
        offered = self._offered
        if not 0 <= count <= offered:
            raise ValueError(
                f"filled({nbytes!r}): the transport can have written 0 to {offered} bytes, the "
                "room room() last offered and not reported yet"
            )
        nbytes = count
        self._offered = 0
        self._end += nbytes
        self.buffered += nbytes
        full = self._last_full = nbytes >= offered
        capacity = self._capacity
        if full:
            if capacity < self._limit:
                self._capacity = min(2 * capacity, self._limit)
        elif nbytes < capacity // 4 and capacity > MIN_CAPACITY:
            self._capacity = capacity // 2

    def _allocate(self, size: int) -> None:
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)

    def _make_room(self) -> None:
        start, end = self._start, self._end
        size = len(self._buf)
        unread = end - start
        if unread > size // 2 and (size < self._limit or unread == size):
            # Grow: the data keeps coming faster than it is read. Up to the bound on unread
            # input -- or, when the buffer is full at that bound and the transport still asks
            # (it did not honour pause_reading at once), twice the size: bounded all the same,
            # since reading is being paused.
            new_size = min(max(self._capacity, 2 * size), self._limit) if size < self._limit else 2 * size
            grown = bytearray(new_size)
            grown[:unread] = self._view[start:end]
            self._buf, self._view = grown, memoryview(grown)
        elif start > 0:  # compact: move the unread bytes to the front
            self._buf[:unread] = self._view[start:end]
        self._start, self._end = 0, unread

    # -- the readers' side ---------------------------------------------------------------------------

    def read_into(self, out: WriteableBuffer) -> int:
        """Move up to ``len(out)`` buffered bytes into ``out``; return how many."""
        view = out if type(out) is memoryview else memoryview(out)
        start = self._start
        n = min(len(view), self._end - start)
        view[:n] = self._view[start : start + n]
        self._consumed(start + n)
        return n

    def take(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes, removed from the buffer."""
        if n < 0:
            raise ValueError(f"take({n!r}): the number of bytes cannot be negative")
        start = self._start
        end = min(start + n, self._end)
        data = bytes(self._view[start:end])
        self._consumed(end)
        return data

    def _consumed(self, start: int) -> None:
        if start < self._end:
            self._start = start
            self.buffered = self._end - start
            return
        self._start = self._end = self.buffered = self._offered = 0  # withdrawn: see invariants
        if len(self._buf) > MIN_CAPACITY and not self._last_full:
            # The burst is over: give the memory back (dropped, not released: see invariants).
            self._buf = _EMPTY
            self._view = memoryview(_EMPTY)

    def clear(self) -> None:
        """Drop every buffered byte (``shutdown("receive")``); the memory goes as after a read
        that empties the buffer."""
        self._consumed(self._end)


# The C version (see "Two implementations" in the module memo).
SPEEDUPS = False
if TYPE_CHECKING:
    ReceiveBuffer = PyReceiveBuffer
else:
    ReceiveBuffer = PyReceiveBuffer
    if (_speedups := speedups()) is not None:
        ReceiveBuffer = _speedups.ReceiveBuffer
        SPEEDUPS = True
