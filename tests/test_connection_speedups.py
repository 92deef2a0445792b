"""A connection's hot paths in C: ``Connection.read`` / ``read_into`` / ``write`` and the
protocol's state (``_speedups.ConnProtocol``), against the Python methods they replace.

Every other connection test (test_net, test_busy, test_serve, test_tls, ...) runs on whichever
implementation the build selects, and the pure-Python tox environment runs them on the Python
one. Here: the cases the C methods hand to the Python ones, what only the C version has to
guard, and a differential property that runs random programs of reads, writes, timeouts and
shutdowns on a connection of each implementation and compares what each operation returned or
raised.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
from _reliability import hypothesis_settings
from hypothesis import given
from hypothesis import strategies as st

import greenbridge as gb
from greenbridge import _protocol
from greenbridge._errors import BusyResourceError, ClosedResourceError
from greenbridge._protocol import Connection, PyConnProtocol, _ConnProtocol

Run = Callable[..., Any]

C_SKIP_REASON = (
    "GREENBRIDGE_NO_SPEEDUPS is set: the C connection paths are not in use"
    if os.environ.get("GREENBRIDGE_NO_SPEEDUPS")
    else "the C accelerator is not built (python setup.py build_ext --inplace)"
)
needs_c = pytest.mark.skipif(not _protocol.SPEEDUPS, reason=C_SKIP_REASON)

_PY_READ, _PY_READ_INTO, _PY_WRITE = _protocol._PY_METHODS


class PyConnection(Connection):
    """A Connection with the Python read, read_into and write (the reference)."""

    read = _PY_READ  # type: ignore[assignment]
    read_into = _PY_READ_INTO  # type: ignore[assignment]
    write = _PY_WRITE  # type: ignore[assignment]


PyConnection.__name__ = "Connection"  # the messages that name the class then read the same


async def _pair(protocol: type[Any], connection: type[Connection]) -> tuple[Connection, Connection]:
    """Two connected connections over a socket pair, both of the given classes."""
    loop = asyncio.get_running_loop()
    ends = []
    for sock in socket.socketpair():
        proto = protocol()
        transport, _ = await loop.connect_accepted_socket(lambda p=proto: p, sock)
        ends.append(connection(transport, proto))
    return ends[0], ends[1]


def pair(implementation: str) -> tuple[Connection, Connection]:
    if implementation == "python":
        return gb.await_from_green(_pair(PyConnProtocol, PyConnection))
    return gb.await_from_green(_pair(_ConnProtocol, Connection))


@pytest.fixture(params=["python", "c"])
def impl(request: pytest.FixtureRequest) -> str:
    if request.param == "c" and not _protocol.SPEEDUPS:
        pytest.skip(C_SKIP_REASON)
    return str(request.param)


# -- the C methods are the Python ones to their callers ---------------------------------------------


@needs_c
def test_the_c_methods_keep_the_python_docstrings_and_names() -> None:
    methods = (Connection.read, Connection.read_into, Connection.write)
    for method, reference in zip(methods, _protocol._PY_METHODS, strict=True):
        assert method is not reference
        assert method.__name__ == reference.__name__
        assert method.__qualname__ == f"Connection.{reference.__name__}"
        assert inspect.getdoc(method) == inspect.getdoc(reference)
    assert list(inspect.signature(Connection.read).parameters) == ["self", "n"]
    assert inspect.signature(Connection.read).parameters["n"].default == _protocol.DEFAULT_CHUNK
    assert list(inspect.signature(Connection.write).parameters) == ["self", "data"]


@needs_c
def test_the_c_methods_refuse_what_is_not_a_connection() -> None:
    with pytest.raises(TypeError, match="Connection"):
        Connection.read(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Connection"):
        Connection.write(object(), b"x")  # type: ignore[arg-type]


@needs_c
def test_the_protocol_fields_cannot_be_deleted(run_green: Run) -> None:
    def green() -> None:
        a, b = pair("c")
        with a, b:
            for name in ("_reader", "_rx", "_transport", "_wakeups", "_error"):
                with pytest.raises(AttributeError, match="cannot delete"):
                    delattr(a._protocol, name)
            a._protocol._error = None  # assigning still works
            b.write(b"still works")
            assert a.read() == b"still works"

    run_green(green)


class _Subclass(Connection):
    """A user's subclass: the C methods look its attributes up, where one may be a property."""

    reads = 0

    @property  # type: ignore[override]
    def _read_timeout(self) -> float | None:
        self.reads += 1
        return None

    @_read_timeout.setter
    def _read_timeout(self, seconds: float | None) -> None:
        pass


def test_a_subclass_of_connection_has_its_attributes_looked_up(run_green: Run, impl: str) -> None:
    def green() -> None:
        a, b = pair(impl)
        with a, b:
            sub = _Subclass(a._transport, a._protocol)
            seen: list[bytes] = []
            # The read starts first (fork order), waits, and looks the timeout up for its wait.
            gb.fiber.both(lambda: seen.append(sub.read()), lambda: b.write(b"one"))
            assert seen == [b"one"] and sub.reads == 1
            assert sub.write(b"back") == 4
            assert b.read() == b"back"

    run_green(green)


# -- the cases the C methods hand to the Python ones ----------------------------------------------


def test_read_counts_and_buffers_that_take_the_python_path(run_green: Run, impl: str) -> None:
    def green() -> list[Any]:
        a, b = pair(impl)
        seen: list[Any] = []
        with a, b:
            b.write(b"abcdefgh")
            seen.append(a.read(n=2))
            seen.append(a.read(True))  # an int subclass
            seen.append(a.read(0))
            seen.append(a.read_into(bytearray()))
            with pytest.raises(TypeError):
                a.read(2.5)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                a.read_into(object())  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                a.read(1, n=1)  # type: ignore[misc]
            buf = bytearray(3)
            seen.append((a.read_into(memoryview(buf)), bytes(buf)))
            seen.append(a.read(2**70))  # past any Py_ssize_t: what is buffered
            b.write(bytearray(b"xy"))
            b.write(memoryview(b"--z")[2:])
            b.shutdown("send")
            seen.append(a.read(-1))
            seen.append(a.read())
        with pytest.raises(ClosedResourceError):
            a.read(0)
        with pytest.raises(ClosedResourceError):
            a.read()
        with pytest.raises(ClosedResourceError):
            a.read_into(bytearray(0))
        with pytest.raises(ClosedResourceError):
            a.write(b"x")
        return seen

    assert run_green(green) == [b"ab", b"c", b"", 0, (3, b"def"), b"gh", b"xyz", b""]


def test_write_after_shutdown_send_and_from_a_second_writer(run_green: Run, impl: str) -> None:
    def green() -> None:
        a, b = pair(impl)
        with a, b:
            a._writing.acquire()  # as a writer parked for the drain holds it
            with pytest.raises(BusyResourceError):
                a.write(b"x")
            a._writing.release()
            a.shutdown("send")
            with pytest.raises(ClosedResourceError, match="shutdown"):
                a.write(b"x")
            assert b.read() == b""

    run_green(green)


# -- an interrupt in each call the hot paths make leaves the connection as it was ---------------------


class _Interrupting:
    """Stands in for a loop or a transport: ``name`` raises KeyboardInterrupt at its first call,
    everything else is the real object's."""

    def __init__(self, real: Any, name: str) -> None:
        self._real = real
        self._name = name
        self.raised = False

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._real, attr)
        if attr != self._name or self.raised:
            return value

        def interrupt(*args: Any, **kwargs: Any) -> Any:
            self.raised = True
            raise KeyboardInterrupt

        return interrupt


@pytest.mark.parametrize(
    ("where", "name"),
    [("loop", "time"), ("loop", "call_at"), ("transport", "write"), ("transport", "is_closing")],
)
def test_an_interrupt_in_a_call_of_the_hot_paths_loses_nothing(
    run_green: Run, impl: str, where: str, name: str
) -> None:
    def green() -> None:
        a, b = pair(impl)
        with a, b:
            a.read_timeout = 30  # so that a wait arms the read timer (call_at)
            proxy = _Interrupting(a._protocol._loop if where == "loop" else a._transport, name)
            if where == "loop":
                a._protocol._loop = proxy
            else:
                a._transport = proxy
            with pytest.raises(KeyboardInterrupt):
                if where == "loop":
                    a.read()  # nothing buffered: it waits, and the wait's first calls raise
                else:
                    a.write(b"lost?")
            assert proxy.raised
            assert a._protocol._reader is None and not a._reading.busy and not a._writing.busy
            b.write(b"after")
            assert a.read() == b"after"
            assert a.write(b"back") == 4
            assert b.read() == b"back"

    run_green(green)


# -- the same results from both, for random programs ----------------------------------------------

_operations = st.one_of(
    st.tuples(st.just("peer_write"), st.integers(1, 3000)),
    st.tuples(st.just("read"), st.integers(-1, 5000)),
    st.tuples(st.just("read_into"), st.integers(0, 5000)),
    st.tuples(st.just("write"), st.integers(0, 3000)),
    st.tuples(st.just("write_view"), st.integers(0, 3000)),
    st.tuples(st.just("timed_read"), st.just(0)),
    st.tuples(st.just("peer_shutdown"), st.just(0)),
    st.tuples(st.just("shutdown"), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("close"), st.just(0)),
)


def _outcome(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))


def _program(impl: str, ops: list[tuple[str, int]]) -> list[Any]:
    """Run ``ops`` on one end of a pair; what each returned or raised, and what was read and
    written in all. A read only runs when it cannot wait forever (bytes are on their way, or
    the input ended); how many bytes one read returns depends on the socket's timing, so a
    read's outcome is whether it returned bytes, and the bytes are compared all together."""
    a, b = pair(impl)
    record: list[Any] = []
    received = bytearray()
    outstanding = 0  # bytes the peer sent that ``a`` has not read
    ended = False  # a read cannot wait: the peer shut down, or ``a`` shut down or closed
    closed = False  # ``a`` is closed: the peer's operations would race with the close
    counter = 0

    def payload(k: int) -> bytes:
        nonlocal counter
        counter += 1
        return bytes((counter + i) % 251 for i in range(k))

    try:
        for op, arg in ops:
            if op == "peer_write":
                if b._send_closed or closed:
                    continue
                data = payload(arg)
                b.write(data)
                outstanding += len(data)
                record.append(op)
            elif op in ("read", "read_into"):
                if not ended and (arg < 0 or (arg != 0 and outstanding == 0)):
                    continue
                if op == "read":
                    result = _outcome(a.read, arg)
                    if result[0] == "ok":
                        received += result[1]
                        outstanding -= len(result[1])
                        result = ("ok", bool(result[1]))
                else:
                    buf = bytearray(arg)
                    result = _outcome(a.read_into, buf)
                    if result[0] == "ok":
                        received += buf[: result[1]]
                        outstanding -= result[1]
                        result = ("ok", result[1] > 0)
                record.append((op, result))
            elif op == "timed_read":
                if outstanding or ended:
                    continue
                a.read_timeout = 0.01
                record.append((op, _outcome(a.read)))
                a.read_timeout = None
            elif op in ("write", "write_view"):
                data = payload(arg)
                message = data if op == "write" else memoryview(bytearray(data))
                result = _outcome(a.write, message)
                if result[0] == "ok" and data:
                    record.append((op, result, _read_exactly(b, len(data))))
                else:
                    record.append((op, result))
            elif op == "peer_shutdown":
                if closed:
                    continue
                b.shutdown("send")
                ended = True
                record.append(op)
            elif op == "shutdown":
                how = ("send", "receive", "all")[arg]
                record.append((op, how, _outcome(a.shutdown, how)))
                if how != "send":
                    ended = True
                    outstanding = 0
            else:
                a.close()
                ended = closed = True
                outstanding = 0
                record.append(op)
    finally:
        a.close()
        b.close()
    return [record, bytes(received)]


def _read_exactly(conn: Connection, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@hypothesis_settings(ci_examples=60)
@given(ops=st.lists(_operations, max_size=14))
def test_the_c_paths_do_what_the_python_paths_do(run_green: Run, ops: list[tuple[str, int]]) -> None:
    if not _protocol.SPEEDUPS:
        pytest.skip(C_SKIP_REASON)
    expected = run_green(_program, "python", ops)
    assert run_green(_program, "c", ops) == expected
