"""Soak: thousands of connections to a green server, with faults, on 127.0.0.1.

One ``gb.run`` hosts a ``net.run_server`` and the clients. Half of the clients are plain asyncio
streams (an implementation independent of the one under test), half are green ``net.connect``
clients. Every connection picks, from a seeded random generator, a server mode and a behaviour:

* server modes (the first byte sent): ``E`` raw echo; ``S`` slow echo (small reads, a pause
  between them: the client's writes meet backpressure); ``L`` line echo through a
  ``BufReader(max_size=1024)`` that answers ``!too long`` to an over-long line and hangs up;
* client behaviours: complete (write everything while a concurrent reader drains, half-close,
  read to the end, compare byte for byte); fast writer (a large payload in large writes);
  slow reader (small reads with pauses while the server pushes); reset mid-write (RST after
  part of the payload); hang up without reading; connect and close at once.

Checked: every completed connection got its bytes back exactly; every error the handlers saw is
in the ``ConnectionError`` family (or the ``BufReader`` limit, handled); the server survives all
of it; RSS and the number of live objects stay flat from the first half of the run to the
second. Then the server is cancelled while a hundred connections are open and idle, and a fresh
one while hundreds are in flight: every client sees its connection end promptly. Afterwards no
descriptor, fiber, greenlet or Task is left, and asyncio logged nothing.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import random
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from _reliability import live_greenlets, open_fds, warm_up, watch

import greenbridge as gb
from greenbridge import flow, net
from greenbridge._core import _live_fibers

CONNECTIONS = 10000  # in the main phase
CONCURRENCY = 96  # clients at once (each holds two descriptors)
STALLED = 100  # idle connections open when the server is cancelled
UNDER_LOAD = 600  # clients started against a server that is cancelled mid-flight...
CANCEL_AFTER = 200  # ...once it has accepted this many of them
LINE_LIMIT = 1024
SEED = 20261125
# Second half of the run over the first: RSS in bytes per concurrent client (the allocator's
# high-water mark follows the buffers of the connections open at once), and live objects.
MAX_RSS_GROWTH_PER_CLIENT = 256 * 1024
MAX_OBJECT_GROWTH = 1000  # objects tracked by the collector, likewise

MODES = ("E", "S", "L")
BEHAVIOURS = (
    ("complete", 40),
    ("fast writer", 8),
    ("slow reader", 8),
    ("reset mid-write", 14),
    ("hang up without reading", 12),
    ("close at once", 8),
    ("over-long line", 10),
)


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Server:
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[BaseException] = field(default_factory=list)
    active: int = 0
    served: int = 0
    limits: int = 0
    cancel_at: int = 0
    reached: asyncio.Event | None = None

    def on_error(self, exc: Exception) -> None:
        self.errors[type(exc).__name__] += 1
        if not isinstance(exc, ConnectionError):
            self.unexpected.append(exc)

    def handler(self, conn: net.Connection, addr: Any) -> None:
        self.active += 1
        self.served += 1
        if self.reached is not None and self.served >= self.cancel_at:
            self.reached.set()
        try:
            mode = conn.read(1)
            if mode == b"E":
                while data := conn.read():
                    conn.write(data)
            elif mode == b"S":
                while data := conn.read(512):
                    gb.sleep(0.0005)
                    conn.write(data)
            elif mode == b"L":
                reader = gb.BufReader(conn, max_size=LINE_LIMIT)
                try:
                    for line in reader.lines():
                        conn.write(line + b"\n")
                except gb.BufferLimitExceeded:
                    self.limits += 1
                    conn.write(b"!too long\n")
        finally:
            self.active -= 1


# -- the clients ---------------------------------------------------------------------------------


@dataclass
class Plan:
    mode: str
    behaviour: str
    payload: bytes
    green: bool
    expected: bytes  # what a completed connection must receive


def make_plan(rng: random.Random) -> Plan:
    names, weights = zip(*BEHAVIOURS, strict=True)
    behaviour = rng.choices(names, weights)[0]
    mode = "L" if behaviour == "over-long line" else rng.choice(MODES)
    if mode == "L":
        # No b"\r": a line ending in it would lose it (b"\r\n" ends a line too).
        lines = [_junk(rng, rng.randint(0, 200)) for _ in range(rng.randint(0, 30))]
        expected = b"".join(line + b"\n" for line in lines)
        if behaviour == "over-long line":
            lines.append(b"z" * (LINE_LIMIT + rng.randint(0, 4000)))
            lines.append(b"never echoed")
            expected += b"!too long\n"
        payload = b"".join(line + b"\n" for line in lines)
    else:
        size = {
            "fast writer": rng.randint(256_000, 1_000_000),
            "slow reader": rng.randint(64_000, 200_000),
        }.get(behaviour, rng.choice([0, 1, rng.randint(2, 4096), rng.randint(4096, 65536)]))
        payload = rng.randbytes(size)
        if mode == "S":
            payload = payload[:20_000]  # the slow echo pauses per 512 bytes
        expected = payload
    return Plan(mode, behaviour, payload, green=rng.random() < 0.5, expected=expected)


def _junk(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n).replace(b"\n", b".").replace(b"\r", b".")


@dataclass
class Tally:
    cut_ok: bool = False  # the server may be cancelled: a prefix of the echo is acceptable
    cut: int = 0
    completed: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    bytes_echoed: int = 0
    client_errors: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)


async def async_client(port: int, plan: Plan, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(plan.mode.encode())
        if plan.behaviour == "close at once":
            tally.faults["close at once"] += 1
            return
        if plan.behaviour == "reset mid-write":
            writer.write(plan.payload[: len(plan.payload) // 2])
            await writer.drain()
            _reset(writer.get_extra_info("socket"))
            writer.transport.abort()
            tally.faults["reset"] += 1
            return

        async def send() -> None:
            step = 65536 if plan.behaviour == "fast writer" else 8192
            for i in range(0, len(plan.payload), step):
                _check_open(writer)
                writer.write(plan.payload[i : i + step])
                await writer.drain()
            _check_open(writer)
            try:
                writer.write_eof()
            except OSError as exc:  # ENOTCONN: reset meanwhile (asyncio passes it on raw)
                raise ConnectionResetError(exc.errno, exc.strerror) from exc

        if plan.behaviour == "hang up without reading":
            await send()
            tally.faults["hang up"] += 1
            return
        sender = asyncio.ensure_future(send())
        received = bytearray()
        try:
            while True:
                chunk = await reader.read(256 if plan.behaviour == "slow reader" else 65536)
                if not chunk:
                    break
                received += chunk
                if plan.behaviour == "slow reader":
                    await asyncio.sleep(0)
        finally:
            await sender
        _compare(plan, bytes(received), tally)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
        except OSError as exc:
            # uvloop reports a reset that came while closing as the raw ENOTCONN of shutdown().
            if exc.errno != errno.ENOTCONN:
                raise


def green_client(port: int, plan: Plan, tally: Tally) -> None:
    with net.connect("127.0.0.1", port) as conn:
        conn.write(plan.mode.encode())
        if plan.behaviour == "close at once":
            tally.faults["close at once"] += 1
            return
        if plan.behaviour == "reset mid-write":
            conn.write(plan.payload[: len(plan.payload) // 2])
            conn.abort()
            tally.faults["reset"] += 1
            return

        def send() -> None:
            step = 65536 if plan.behaviour == "fast writer" else 8192
            for i in range(0, len(plan.payload), step):
                conn.write(plan.payload[i : i + step])
            conn.shutdown("send")

        if plan.behaviour == "hang up without reading":
            send()
            tally.faults["hang up"] += 1
            return
        with gb.Switch() as sw:
            sw.fork(send)
            received = bytearray()
            size = 256 if plan.behaviour == "slow reader" else 65536
            while chunk := conn.read(size):
                received += chunk
                if plan.behaviour == "slow reader":
                    gb.sleep(0)
        _compare(plan, bytes(received), tally)


def _check_open(writer: asyncio.StreamWriter) -> None:
    """The server may have hung up: asyncio's transport would drop our bytes silently, uvloop's
    raise ``RuntimeError``; report it as what it is."""
    if writer.transport.is_closing():
        raise ConnectionResetError("the server closed the connection")


def _reset(sock: Any) -> None:
    import socket
    import struct

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _compare(plan: Plan, received: bytes, tally: Tally) -> None:
    expected = plan.expected
    if tally.cut_ok and received != expected and expected.startswith(received):
        tally.cut += 1
        return
    if received != expected:
        tally.mismatches.append(
            f"{plan.mode}/{plan.behaviour}/{'green' if plan.green else 'asyncio'}: "
            f"sent {len(plan.payload)}, expected {len(expected)}, got {len(received)}"
        )
        return
    tally.completed += 1
    tally.bytes_echoed += len(received)
    if plan.behaviour == "over-long line":
        tally.faults["over-long line"] += 1


async def run_client(port: int, plan: Plan, tally: Tally, slots: asyncio.Semaphore) -> None:
    async with slots:
        try:
            if plan.green:
                await gb.spawn_green(green_client, port, plan, tally)
            else:
                await async_client(port, plan, tally)
        except* ConnectionError as group:  # a green client's sending and reading fibers may both fail
            # While the server runs, only a connection it hangs up on may fail (after an
            # over-long line, while we may still be sending); once it is cancelled, any.
            tally.client_errors[f"{plan.behaviour}: {type(group.exceptions[0]).__name__}"] += 1


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


# -- the test ------------------------------------------------------------------------------------


@dataclass
class Figures:
    """What docs/reliability.md quotes."""

    connections: int = 0
    completed: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    bytes_echoed: int = 0
    server_errors: Counter[str] = field(default_factory=Counter)
    rss_growth: int = 0
    object_growth: int = 0
    stalled_ended: Counter[str] = field(default_factory=Counter)
    under_load: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def soak(figures: Figures) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(SEED)
    server = Server()
    tally = Tally()
    slots = asyncio.Semaphore(CONCURRENCY)
    with net.listen("127.0.0.1", 0, backlog=1024) as listener:
        port = listener.address[1]
        serving = loop.create_task(
            gb.spawn_green(
                net.run_server, listener, server.handler, max_connections=512, on_error=server.on_error
            )
        )
        rss_marks: list[int] = []
        object_marks: list[int] = []
        for _half in range(2):
            clients = [
                loop.create_task(run_client(port, make_plan(rng), tally, slots))
                for _ in range(CONNECTIONS // 2)
            ]
            gb.await_from_green(asyncio.gather(*clients))
            gc.collect()
            rss_marks.append(rss())
            object_marks.append(len(gc.get_objects()))
            assert not serving.done(), "the server stopped"
        figures.rss_growth = rss_marks[1] - rss_marks[0]
        figures.object_growth = object_marks[1] - object_marks[0]

        # Cancel the server mid-flight: STALLED connections open, each handler has echoed a
        # first message and waits for more.
        assert server.active == 0
        stalled = [gb.spawn_green(net.connect, "127.0.0.1", port) for _ in range(STALLED)]
        conns = gb.await_from_green(asyncio.gather(*stalled))
        for conn in conns:
            conn.write(b"E" + b"in flight")
        for conn in conns:
            assert flow.read_exact(conn, len(b"in flight")) == b"in flight"
        assert server.active == STALLED
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            gb.await_from_green(serving)
        assert server.active == 0
        for conn in conns:
            with conn, gb.timeout(5):
                try:
                    end = conn.read()
                    figures.stalled_ended["eof" if end == b"" else "data"] += 1
                except ConnectionError as exc:
                    figures.stalled_ended[type(exc).__name__] += 1

        # Cancel a fresh server under load, once it has accepted CANCEL_AFTER of UNDER_LOAD
        # clients, then close the listener (connections still in its backlog are reset, later
        # ones refused). Every client ends -- completed, cut short (it got a prefix of its
        # echo), or with a ConnectionError -- and none hangs.
        load = Server(cancel_at=CANCEL_AFTER, reached=asyncio.Event())
        cut = Tally(cut_ok=True)
        serving = loop.create_task(
            gb.spawn_green(net.run_server, listener, load.handler, max_connections=64, on_error=load.on_error)
        )
        clients = [loop.create_task(run_client(port, make_plan(rng), cut, slots)) for _ in range(UNDER_LOAD)]
        assert load.reached is not None
        gb.await_from_green(load.reached.wait())
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            gb.await_from_green(serving)
        assert load.active == 0
        listener.close()
        with gb.timeout(20):
            gb.await_from_green(asyncio.gather(*clients))
        assert cut.mismatches == [] and load.unexpected == [], (cut.mismatches[:5], load.unexpected[:5])
        figures.under_load.update(
            completed=cut.completed, cut=cut.cut, connection_errors=sum(cut.client_errors.values())
        )
        figures.under_load.update({f"fault: {k}": v for k, v in cut.faults.items()})
        assert cut.cut + sum(cut.client_errors.values()) > 0, "the cancellation cut nothing short"

    figures.connections = CONNECTIONS + STALLED + UNDER_LOAD
    figures.completed = tally.completed
    figures.faults = tally.faults
    figures.bytes_echoed = tally.bytes_echoed
    figures.server_errors = server.errors
    assert tally.mismatches == [], tally.mismatches[:10]
    assert server.unexpected == [], server.unexpected[:10]
    assert server.served == CONNECTIONS + STALLED
    assert server.limits == tally.faults["over-long line"]
    unexpected_client_errors = [k for k in tally.client_errors if not k.startswith("over-long line")]
    assert unexpected_client_errors == [], tally.client_errors
    # Every connection is accounted for: completed (an over-long line answered included), or
    # broken on purpose by its client.
    broken = tally.faults["reset"] + tally.faults["hang up"] + tally.faults["close at once"]
    assert tally.completed + broken + sum(tally.client_errors.values()) == CONNECTIONS
    assert set(figures.stalled_ended) <= {"eof", "ConnectionResetError"}, figures.stalled_ended


def test_soak_thousands_of_connections_with_faults(gb_backend: str) -> None:
    warm_up(gb_backend)
    fds_before = open_fds()
    figures = Figures()
    started = time.monotonic()
    with watch(gb_backend) as report:
        gb.run(soak, figures, backend=gb_backend)
    figures.seconds = time.monotonic() - started
    print(f"\nsoak on {gb_backend}: {figures}")
    assert report.problems() == []
    assert open_fds() == fds_before
    assert _live_fibers() == [] and live_greenlets() == []
    assert figures.completed >= CONNECTIONS // 2
    assert figures.rss_growth < MAX_RSS_GROWTH_PER_CLIENT * CONCURRENCY, figures.rss_growth
    assert figures.object_growth < MAX_OBJECT_GROWTH, figures.object_growth


# -- pinned findings -----------------------------------------------------------------------------


def test_writes_to_a_connection_the_peer_reset_raise_instead_of_vanishing(gb_backend: str) -> None:
    """Found by the soak (line-echo handlers answering clients that had hung up). Once the
    transport's send has failed, asyncio schedules ``connection_lost`` for the next iteration;
    until then ``Connection.write`` keeps handing bytes to a closing transport, which drops
    them -- 20 x 64 KiB "written" without an error, and on the asyncio loop a
    "socket.send() raised exception." warning per write past the fifth. ``write`` is documented
    to raise ``BrokenPipeError`` / ``ConnectionResetError`` when the connection is gone."""
    import socket
    import struct

    outcome: list[str] = []

    def handler(conn: net.Connection, addr: Any) -> None:
        assert conn.read(2) == b"go"  # the reset is already queued behind these two bytes
        for i in range(20):
            try:
                conn.write(b"x" * 65536)
            except ConnectionError as exc:
                outcome.append(f"write {i} raised {type(exc).__name__}")
                return
        outcome.append("all 20 writes returned")

    def main() -> None:
        with net.listen("127.0.0.1", 0) as listener:
            stop = asyncio.get_running_loop().create_future()
            server = asyncio.ensure_future(gb.spawn_green(net.run_server, listener, handler, stop=stop))
            with socket.create_connection(listener.address[:2]) as peer:
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                peer.sendall(b"go")
            with gb.timeout(10):
                while not outcome:
                    gb.sleep(0.005)
            stop.set_result(None)
            gb.await_from_green(server)

    with watch(gb_backend) as report:
        gb.run(main, backend=gb_backend)
    assert outcome != ["all 20 writes returned"], "every write to the reset connection 'succeeded'"
    assert outcome[0].startswith(("write 0 ", "write 1 ")), outcome
    assert report.problems() == []
