"""net.run_server defends its slots: idle timeouts, a bounded graceful stop, shedding of idle
connections when full, small idle connections, and a slowloris that cannot starve real clients.

Servers bind 127.0.0.1 only; every test runs on both loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import resource
import socket
import time
import tracemalloc
from typing import Any

import pytest
from _net_helpers import echo, gather_green, serving, wait_until

import greenbridge as gb
from greenbridge import net

HOST = "127.0.0.1"


def raw_client(address: Any) -> socket.socket:
    """A plain non-blocking client socket (a few hundred bytes of Python memory)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        gb.await_from_green(asyncio.get_running_loop().sock_connect(sock, address))
    except BaseException:
        sock.close()
        raise
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


# -- timeouts --------------------------------------------------------------------------------------


@pytest.mark.green
def test_an_idle_connection_is_closed_after_idle_timeout_and_that_is_not_an_error() -> None:
    errors: list[Exception] = []
    loop = asyncio.get_running_loop()
    with net.listen(HOST, 0) as listener, serving(listener, echo, idle_timeout=0.2, on_error=errors.append):
        with net.connect(*listener.address) as conn:
            conn.write(b"ping")
            assert conn.read() == b"ping"
            started = loop.time()
            assert conn.read() == b""  # the server gave up on us
            assert 0.15 <= loop.time() - started < 5
    assert errors == []


@pytest.mark.green
def test_a_handler_sets_its_own_read_timeout_and_a_timed_out_read_loses_nothing() -> None:
    record: list[Any] = []

    def handler(conn: net.Connection, addr: Any) -> None:
        assert conn.read_timeout is None  # the server's idle_timeout
        conn.read_timeout = 0.05
        try:
            conn.read()
        except TimeoutError as exc:
            record.append(type(exc).__mro__[1].__name__)
        conn.write(b"timed out; go on")
        conn.read_timeout = None
        record.append(conn.read())

    with net.listen(HOST, 0) as listener, serving(listener, handler, idle_timeout=None):
        with net.connect(*listener.address) as conn:
            assert conn.read() == b"timed out; go on"
            conn.write(b"after the timeout")
            assert conn.read() == b""
    assert record == ["TimeoutError", b"after the timeout"]
    with pytest.raises(ValueError, match="read_timeout"):
        conn.read_timeout = 0
    for name in ("idle_timeout", "stop_timeout"):
        with pytest.raises(ValueError, match=name):
            net.run_server(listener, echo, **{name: -1.0})


@pytest.mark.green
def test_read_timeout_counts_from_the_start_of_each_wait() -> None:
    loop = asyncio.get_running_loop()
    with net.listen(HOST, 0) as listener:
        accepted: list[net.Connection] = []
        client = gather_green(
            lambda: accepted.append(listener.accept()[0]), lambda: net.connect(*listener.address)
        )[1]
        server = accepted[0]
        with server, client:
            server.read_timeout = 0.3

            def trickle() -> None:
                for _ in range(10):  # one byte every 0.1 s: 1 s in all, each wait far below 0.3 s
                    gb.sleep(0.1)
                    client.write(b"x")

            trickler = asyncio.ensure_future(gb.spawn_green(trickle))
            received = b""
            while len(received) < 10:
                received += server.read()
            gb.await_from_green(trickler)
            started = loop.time()
            with pytest.raises(TimeoutError, match="read_timeout"):
                server.read()
            assert 0.25 <= loop.time() - started < 3
            # A shorter timeout applies at once, although a timer for a longer one is armed.
            server.read_timeout = 5.0
            client.write(b"y")
            assert server.read() == b"y"
            server.read_timeout = 0.05
            started = loop.time()
            with pytest.raises(TimeoutError):
                server.read()
            assert loop.time() - started < 1
            client.write(b"z")
            assert server.read() == b"z"  # a timed-out read lost nothing, the next one works


@pytest.mark.green
def test_stop_gives_the_handlers_stop_timeout_then_cancels_them() -> None:
    record: list[str] = []
    loop = asyncio.get_running_loop()
    in_handlers = asyncio.Semaphore(0)

    def handler(conn: net.Connection, addr: Any) -> None:
        name = conn.read().decode()
        in_handlers.release()
        try:
            if name == "quick":
                gb.sleep(0.05)
                conn.write(b"done")
            else:
                gb.await_from_green(loop.create_future())  # never finishes by itself
        except asyncio.CancelledError:
            record.append(f"{name} cancelled")
            raise
        record.append(f"{name} finished")

    stop = loop.create_future()
    with net.listen(HOST, 0) as listener:
        server = asyncio.ensure_future(
            gb.spawn_green(net.run_server, listener, handler, stop=stop, stop_timeout=0.3)
        )
        with net.connect(*listener.address) as quick, net.connect(*listener.address) as stuck:
            quick.write(b"quick")
            stuck.write(b"stuck")
            for _ in range(2):
                gb.await_from_green(in_handlers.acquire())
            stop.set_result(None)
            started = loop.time()
            assert quick.read() == b"done"  # a handler that finishes in time finishes
            assert gb.await_from_green(server) is None  # no error: the deadline is the server's
            assert 0.25 <= loop.time() - started < 5
            assert stuck.read() == b""
    assert record == ["quick finished", "stuck cancelled"]


# -- shedding --------------------------------------------------------------------------------------


@pytest.mark.green
def test_when_full_the_longest_idle_connection_makes_room() -> None:
    errors: list[Exception] = []
    with net.listen(HOST, 0) as listener, serving(
        listener, echo, max_connections=2, idle_timeout=None, on_error=errors.append
    ):
        older, newer = raw_client(listener.address), raw_client(listener.address)
        try:
            gb.sleep(0.6)  # both idle past the shedding threshold; older for longer
            newer.send(b"x")  # ...and newer is active again
            wait_until(lambda: newer.recv(1) == b"x" if _readable(newer) else False)
            gb.sleep(0.6)
            with net.connect(*listener.address) as third:
                third.write(b"served")
                assert third.read() == b"served"
            wait_until(lambda: closed_by_peer(older))
            assert not closed_by_peer(newer)
        finally:
            older.close()
            newer.close()
    assert errors == []  # a shed connection is not a handler error


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False


@pytest.mark.green
def test_a_working_handler_is_never_shed() -> None:
    release = asyncio.get_running_loop().create_future()

    def handler(conn: net.Connection, addr: Any) -> None:
        gb.await_from_green(asyncio.shield(release))  # working, not waiting for input
        conn.write(b"done")

    with net.listen(HOST, 0) as listener, serving(listener, handler, max_connections=1):
        with net.connect(*listener.address) as busy, net.connect(*listener.address) as waiting:
            with pytest.raises(TimeoutError), gb.timeout(0.8):
                waiting.read()  # no slot, and nobody to shed
            release.set_result(None)
            assert busy.read() == b"done"
            assert waiting.read() == b"done"


# -- memory ----------------------------------------------------------------------------------------


def test_an_idle_connection_costs_at_most_16_kib(gb_backend: str) -> None:
    # gb.run without debug mode: asyncio's debug mode keeps a creation traceback per Handle and
    # Task, which is the test harness's memory, not the server's.
    n = 200

    def main() -> float:
        with net.listen(HOST, 0, backlog=n) as listener, serving(listener, echo, max_connections=n):
            warm = raw_client(listener.address)  # the server's first fiber, batch and pools
            request = b"GET / HTTP/1.1\r\n\r\n"
            warm.send(request)
            wait_until(lambda: _readable(warm))
            gc.collect()
            tracemalloc.start()
            clients: list[socket.socket] = []
            try:
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(n):
                    clients.append(raw_client(listener.address))
                for sock in clients:  # a request and its answer, then the connection idles
                    sock.send(request)
                wait_until(lambda: all(_readable(sock) for sock in clients))
                gb.sleep(0.05)
                gc.collect()
                per_connection = (tracemalloc.get_traced_memory()[0] - before) / n
            finally:
                tracemalloc.stop()
                for sock in (warm, *clients):
                    sock.recv(len(request))  # closing with unread bytes would reset the server
                    sock.close()
        return per_connection

    per_connection = gb.run(main, backend=gb_backend)
    print(f"\nidle connection: {per_connection / 1024:.1f} KiB of Python memory (server side)")
    assert per_connection <= 16 * 1024


# -- slowloris -------------------------------------------------------------------------------------

LORIS_CONNECTIONS = 1200
LORIS_PERIOD = 2.0  # one byte every 2 s per connection


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_a_slowloris_of_1200_connections_does_not_starve_a_real_client(gb_backend: str) -> None:
    """1,200 connections that each send one byte every 2 s (and reconnect when shed) against
    every default of run_server (1,024 slots): five real clients, one after the other, are each
    served within 1 s. Run by gb.run without debug mode: asyncio's debug mode (a traceback kept
    per callback, a timing per step) would measure the harness, not the server."""
    _raise_fd_limit(3 * LORIS_CONNECTIONS + 256)
    latencies: list[float] = []
    shed = 0

    def main() -> None:
        nonlocal shed
        loop = asyncio.get_running_loop()
        rng = random.Random(12)
        attacking = True

        def handler(conn: net.Connection, addr: Any) -> None:
            with contextlib.suppress(EOFError, ConnectionError):
                gb.BufReader(conn, max_size=8192).line()  # a request line: the loris never ends it
                conn.write(b"200 OK\n")

        async def loris() -> None:
            nonlocal shed
            await asyncio.sleep(rng.random() * LORIS_PERIOD)
            while attacking:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, address)
                    while attacking and not closed_by_peer(sock):
                        sock.send(b"x")
                        await asyncio.sleep(LORIS_PERIOD)
                    shed += 1  # found out at the next byte; come back at once
                except OSError:
                    await asyncio.sleep(LORIS_PERIOD)
                finally:
                    sock.close()

        with net.listen(HOST, 0) as listener, serving(listener, handler):  # every default
            address = listener.address
            attack = [loop.create_task(loris()) for _ in range(LORIS_CONNECTIONS)]
            try:
                gb.sleep(2 * LORIS_PERIOD)  # every slot taken, the backlog full
                for _ in range(5):
                    started = time.monotonic()
                    with net.connect(*address, timeout=10) as conn:
                        conn.write(b"GET /\n")
                        assert gb.BufReader(conn).line() == b"200 OK"
                    latencies.append(time.monotonic() - started)
                    gb.sleep(0.2)
            finally:
                attacking = False
                for task in attack:
                    task.cancel()
                gb.await_from_green(asyncio.wait(attack))

    gb.run(main, backend=gb_backend)
    print(
        f"\nslowloris of {LORIS_CONNECTIONS}: a real client served in "
        f"{1000 * min(latencies):.0f}-{1000 * max(latencies):.0f} ms; {shed} loris connections shed"
    )
    assert max(latencies) < 1.0
    assert shed > LORIS_CONNECTIONS - net.DEFAULT_MAX_CONNECTIONS  # the attack did fill the server
