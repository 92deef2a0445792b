"""The receive buffer: allocated on demand, grown under a burst, given back after it.

Every test runs on both implementations (``impl``): the Python class and its C version in
``_speedups``; a differential property holds them to the same results, step by step.
"""

from __future__ import annotations

import array
import os
import random
from collections.abc import Callable
from pickle import PickleBuffer
from typing import Any

import pytest
from _reliability import hypothesis_settings
from hypothesis import given
from hypothesis import strategies as st

from greenbridge import _receive_buffer
from greenbridge._receive_buffer import MIN_CAPACITY, PyReceiveBuffer, ReceiveBuffer

LIMIT = 64 * 1024

Impl = Callable[[int], ReceiveBuffer]

C_SKIP_REASON = (
    "GREENBRIDGE_NO_SPEEDUPS is set: the C ReceiveBuffer is not in use"
    if os.environ.get("GREENBRIDGE_NO_SPEEDUPS")
    else "the C accelerator is not built (python setup.py build_ext --inplace)"
)
CReceiveBuffer: Any = ReceiveBuffer if _receive_buffer.SPEEDUPS else None


@pytest.fixture(params=["python", "c"])
def impl(request: pytest.FixtureRequest) -> Impl:
    """The ReceiveBuffer class under test."""
    if request.param == "python":
        return PyReceiveBuffer
    if CReceiveBuffer is None:
        pytest.skip(C_SKIP_REASON)
    return CReceiveBuffer  # type: ignore[no-any-return]


def receive(buf: ReceiveBuffer, data: bytes) -> int:
    """What a transport does: ask for room, write into it, report; return how much fitted."""
    room = buf.room()
    n = min(len(room), len(data))
    room[:n] = data[:n]
    buf.filled(n)
    return n


def test_the_module_exports_the_c_version_unless_disabled() -> None:
    if os.environ.get("GREENBRIDGE_NO_SPEEDUPS"):
        assert ReceiveBuffer is PyReceiveBuffer and not _receive_buffer.SPEEDUPS
        return
    try:
        from greenbridge import _speedups  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        assert ReceiveBuffer is PyReceiveBuffer and not _receive_buffer.SPEEDUPS
    else:  # an extension built before it had one: the Python version
        c_version = getattr(_speedups, "ReceiveBuffer", PyReceiveBuffer)
        assert ReceiveBuffer is c_version and _receive_buffer.SPEEDUPS is (c_version is not PyReceiveBuffer)


def test_nothing_is_allocated_before_the_first_receive(impl: Impl) -> None:
    buf = impl(LIMIT)
    assert buf.allocated == 0 and len(buf) == 0 and buf.buffered == 0
    assert buf.take(10) == b""


def test_the_first_receive_takes_everything_then_small_messages_settle_on_a_small_buffer(
    impl: Impl,
) -> None:
    buf = impl(LIMIT)
    assert len(buf.room()) == LIMIT  # all the peer sent first leaves the kernel in one receive
    buf.filled(0)
    sizes = []
    for i in range(100):
        message = b"request %d" % i
        assert receive(buf, message) == len(message)
        assert buf.buffered == len(message)
        assert buf.take(100) == message
        sizes.append(buf.allocated)
    assert sizes[-50:] == [MIN_CAPACITY] * 50  # settled: no more allocations
    assert max(sizes) <= LIMIT // 2


def test_a_burst_grows_the_buffer_to_the_limit_and_it_is_released_after(impl: Impl) -> None:
    buf = impl(LIMIT)
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


def test_unread_input_compacts_then_grows_and_order_is_kept(impl: Impl) -> None:
    buf = impl(LIMIT)
    data = bytes(i % 251 for i in range(40_000))
    pos = 0
    taken = bytearray()
    while pos < len(data):
        pos += receive(buf, data[pos : pos + 3000])
        taken += buf.take(1000)  # read slower than it arrives
        assert len(buf) == buf.buffered == pos - len(taken)
    taken += buf.take(len(data))
    assert taken == data
    assert len(buf) == 0


def test_a_full_buffer_asked_for_more_grows_past_the_limit_rather_than_fail(impl: Impl) -> None:
    buf = impl(MIN_CAPACITY)
    assert receive(buf, b"a" * MIN_CAPACITY) == MIN_CAPACITY
    room = buf.room()  # the transport did not honour pause_reading at once
    assert len(room) > 0
    assert buf.allocated == 2 * MIN_CAPACITY
    room[:1] = b"b"
    buf.filled(1)
    assert buf.take(MIN_CAPACITY + 1) == b"a" * MIN_CAPACITY + b"b"


def test_clear_drops_bytes_and_memory(impl: Impl) -> None:
    buf = impl(LIMIT)
    receive(buf, b"x" * 100)
    buf.clear()
    assert len(buf) == 0 and buf.allocated == 0


def test_read_into_takes_any_writable_bytes_buffer(impl: Impl) -> None:
    buf = impl(LIMIT)
    receive(buf, b"0123456789")
    out = bytearray(3)
    assert buf.read_into(out) == 3 and out == b"012"
    view = memoryview(bytearray(4))
    assert buf.read_into(view[1:3]) == 2 and view.tobytes() == b"\x0034\x00"
    strided = bytearray(6)
    assert buf.read_into(memoryview(strided)[::2]) == 3 and strided == b"5\x006\x007\x00"
    assert buf.read_into(array.array("B", bytes(8))) == 2  # the rest: "89"
    assert len(buf) == 0


@pytest.mark.parametrize(
    ("out", "error"),
    [
        (b"readonly", TypeError),
        (memoryview(b"readonly"), TypeError),
        (42, TypeError),  # not a buffer
        (array.array("i", [0, 0]), ValueError),  # not bytes: memoryview assignment refuses it
    ],
)
def test_read_into_refuses_what_memoryview_assignment_refuses(
    impl: Impl, out: object, error: type[Exception]
) -> None:
    buf = impl(LIMIT)
    receive(buf, b"data")
    with pytest.raises(error):
        buf.read_into(out)  # type: ignore[arg-type]
    assert buf.take(10) == b"data"  # nothing was consumed


def test_filled_refuses_what_was_not_offered(impl: Impl) -> None:
    buf = impl(LIMIT)
    with pytest.raises(ValueError, match=r"filled\(1\): .* 0 to 0 bytes"):
        buf.filled(1)  # no room offered yet
    room = buf.room()
    with pytest.raises(ValueError, match=r"filled\(-1\)"):
        buf.filled(-1)
    with pytest.raises(ValueError, match=rf"filled\({LIMIT + 1}\): .* 0 to {LIMIT} bytes"):
        buf.filled(LIMIT + 1)
    with pytest.raises(ValueError, match=r"filled\(100000000000000000000000\)"):
        buf.filled(10**23)
    with pytest.raises(TypeError):
        buf.filled(1.0)  # type: ignore[arg-type]
    assert len(buf) == 0 and buf.allocated == LIMIT  # nothing changed
    room[:3] = b"abc"
    buf.filled(3)
    with pytest.raises(ValueError, match=r"filled\(1\): .* 0 to 0 bytes"):
        buf.filled(1)  # the room was reported: a second report cannot add to it
    assert buf.take(10) == b"abc"


def test_a_room_offered_before_the_buffer_emptied_is_withdrawn(impl: Impl) -> None:
    buf = impl(LIMIT)
    receive(buf, b"abc")
    buf.room()
    assert buf.take(10) == b"abc"  # emptied: the room offered starts past the new end
    with pytest.raises(ValueError):
        buf.filled(1)
    assert receive(buf, b"def") == 3 and buf.take(10) == b"def"


def test_take_refuses_a_negative_count(impl: Impl) -> None:
    buf = impl(LIMIT)
    receive(buf, b"abc")
    with pytest.raises(ValueError, match=r"take\(-1\): .* negative"):
        buf.take(-1)
    with pytest.raises(TypeError):
        buf.take(1.0)  # type: ignore[arg-type]
    assert buf.take(10**30) == b"abc"


def test_a_room_still_exported_survives_the_buffer_giving_its_memory_back(impl: Impl) -> None:
    # uvloop holds a Py_buffer of the room while it calls buffer_updated, in which a connection
    # shut for receiving clears the buffer: a PickleBuffer holds one the same way.
    buf = impl(LIMIT)
    room = buf.room()
    held = PickleBuffer(room)
    room[:10] = b"x" * 10
    buf.filled(10)
    buf.clear()  # the burst is over: the memory is given back
    assert buf.allocated == 0
    room[:4] = b"late"  # the view still points to live memory, no longer the buffer's
    assert bytes(held.raw()[:4]) == b"late"
    held.release()
    assert receive(buf, b"next") == 4 and buf.take(10) == b"next"


def test_an_old_room_does_not_see_a_grown_buffer(impl: Impl) -> None:
    buf = impl(LIMIT)
    for _ in range(20):
        receive(buf, b"small")
        buf.take(10)
    assert receive(buf, b"a" * MIN_CAPACITY) == MIN_CAPACITY  # full: the next room grows
    old = buf.room()
    assert buf.allocated > MIN_CAPACITY
    del old  # dropped without ever being reported
    room = buf.room()
    room[:1] = b"b"
    buf.filled(1)
    assert buf.take(2 * MIN_CAPACITY) == b"a" * MIN_CAPACITY + b"b"


def test_the_c_version_has_the_same_api() -> None:
    if CReceiveBuffer is None:
        pytest.skip(C_SKIP_REASON)
    public = {name for name in dir(PyReceiveBuffer) if not name.startswith("_")}
    assert public <= set(dir(CReceiveBuffer))
    buf = CReceiveBuffer(limit=LIMIT)
    with pytest.raises(AttributeError):
        buf.buffered = 1  # read-only: the buffer's own count
    buf.__init__(MIN_CAPACITY)  # re-initialised: as new
    assert len(buf.room()) == MIN_CAPACITY


# -- the two implementations agree ---------------------------------------------------------------

operations = st.one_of(
    st.tuples(st.just("receive"), st.integers(0, 2**17), st.integers(0, 2**32)),  # size, seed
    st.tuples(st.just("room"), st.just(0), st.just(0)),  # offered and never reported
    st.tuples(st.just("filled"), st.integers(-2, 2**17), st.just(0)),  # a bad report, mostly
    st.tuples(st.just("read_into"), st.integers(0, 2**17), st.just(0)),
    st.tuples(st.just("take"), st.integers(-1, 2**17), st.just(0)),
    st.tuples(st.just("clear"), st.just(0), st.just(0)),
)


def apply(buf: Any, op: str, size: int, seed: int) -> object:
    """One operation on ``buf``; what it returned, or the exception it raised."""
    try:
        if op == "receive":
            room = buf.room()
            n = size % (len(room) + 1)
            room[:n] = random.Random(seed).randbytes(n)
            buf.filled(n)
            return ("room", len(room), n)
        if op == "room":
            return ("room", len(buf.room()))
        if op == "filled":
            return buf.filled(size)
        if op == "read_into":
            out = bytearray(size)
            n = buf.read_into(out)
            return (n, bytes(out[:n]))
        if op == "take":
            return buf.take(size)
        return buf.clear()
    except (ValueError, TypeError) as exc:
        return (type(exc), str(exc))


@hypothesis_settings(ci_examples=300)
@given(
    limit=st.one_of(st.sampled_from([0, MIN_CAPACITY, MIN_CAPACITY + 1, LIMIT])
                    , st.integers(0, 3 * LIMIT)),
    ops=st.lists(operations, max_size=60),
)  # fmt: skip
def test_the_c_version_does_what_the_python_version_does(
    limit: int, ops: list[tuple[str, int, int]]
) -> None:
    if CReceiveBuffer is None:
        pytest.skip(C_SKIP_REASON)
    py, c = PyReceiveBuffer(limit), CReceiveBuffer(limit)
    for op, size, seed in ops:
        assert apply(c, op, size, seed) == apply(py, op, size, seed), op
        assert (len(c), c.buffered, c.allocated) == (len(py), py.buffered, py.allocated), op
    assert c.take(10**9) == py.take(10**9)
