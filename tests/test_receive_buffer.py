"""The receive buffer: allocated on demand, grown under a burst, given back after it."""

from __future__ import annotations

from greenbridge._receive_buffer import MIN_CAPACITY, ReceiveBuffer

LIMIT = 64 * 1024


def receive(buf: ReceiveBuffer, data: bytes) -> int:
    """What a transport does: ask for room, write into it, report; return how much fitted."""
    room = buf.room()
    n = min(len(room), len(data))
    room[:n] = data[:n]
    buf.filled(n)
    return n


def test_nothing_is_allocated_before_the_first_receive() -> None:
    buf = ReceiveBuffer(LIMIT)
    assert buf.allocated == 0 and len(buf) == 0
    assert buf.take(10) == b""


def test_the_first_receive_takes_everything_then_small_messages_settle_on_a_small_buffer() -> None:
    buf = ReceiveBuffer(LIMIT)
    assert len(buf.room()) == LIMIT  # all the peer sent first leaves the kernel in one receive
    buf.filled(0)
    sizes = []
    for i in range(100):
        message = b"request %d" % i
        assert receive(buf, message) == len(message)
        assert buf.take(100) == message
        sizes.append(buf.allocated)
    assert sizes[-50:] == [MIN_CAPACITY] * 50  # settled: no more allocations
    assert max(sizes) <= LIMIT // 2


def test_a_burst_grows_the_buffer_to_the_limit_and_it_is_released_after() -> None:
    buf = ReceiveBuffer(LIMIT)
    for _ in range(20):  # settle on the smallest size first
        receive(buf, b"small")
        buf.take(10)
    assert buf.allocated == MIN_CAPACITY
    data = bytes(range(256)) * 1024  # 256 KiB
    received = bytearray()
    pos = 0
    sizes = []
    while pos < len(data):
        pos += receive(buf, data[pos:])
        sizes.append(buf.allocated)
        out = bytearray(LIMIT)
        received += out[: buf.read_into(out)]
    assert received == data
    assert max(sizes) == LIMIT  # doubled while every receive filled its room
    assert sizes[:4] == [4096, 8192, 16384, 32768]
    # The burst's end: a receive that does not fill its room, then the reader empties it.
    receive(buf, b"tail")
    assert buf.take(10) == b"tail"
    assert buf.allocated == 0  # given back


def test_unread_input_compacts_then_grows_and_order_is_kept() -> None:
    buf = ReceiveBuffer(LIMIT)
    data = bytes(i % 251 for i in range(40_000))
    pos = 0
    taken = bytearray()
    while pos < len(data):
        pos += receive(buf, data[pos : pos + 3000])
        taken += buf.take(1000)  # read slower than it arrives
    taken += buf.take(len(data))
    assert taken == data
    assert len(buf) == 0


def test_a_full_buffer_asked_for_more_grows_past_the_limit_rather_than_fail() -> None:
    buf = ReceiveBuffer(MIN_CAPACITY)
    assert receive(buf, b"a" * MIN_CAPACITY) == MIN_CAPACITY
    room = buf.room()  # the transport did not honour pause_reading at once
    assert len(room) > 0
    assert buf.allocated == 2 * MIN_CAPACITY
    room[:1] = b"b"
    buf.filled(1)
    assert buf.take(MIN_CAPACITY + 1) == b"a" * MIN_CAPACITY + b"b"


def test_clear_drops_bytes_and_memory() -> None:
    buf = ReceiveBuffer(LIMIT)
    receive(buf, b"x" * 100)
    buf.clear()
    assert len(buf) == 0 and buf.allocated == 0
