"""gb.patch_blocking(): real blocking libraries in green fibers, against real servers on 127.0.0.1.

Every server runs on the test's own loop (aiohttp, aiosmtpd, a TLS peer in a fiber) or is a
private PostgreSQL / redis started for the session: a call that blocked the thread would deadlock
the test (and its timeout would say so), so each test that finishes proves the call cooperated.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import http.client
import logging
import select
import selectors
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _net_helpers import wait_until
from _services import MariaDB, start_mariadb

import greenbridge as gb
from greenbridge import fiber
from greenbridge._blocking._wait import _waiters

requests = pytest.importorskip("requests")
web = pytest.importorskip("aiohttp.web")

HOST = "127.0.0.1"
_unpatched_sleep = time.sleep  # bound before any patch: stays the blocking original

pytestmark = pytest.mark.green


@pytest.fixture(autouse=True)
def patched() -> Iterator[None]:
    gb.patch_blocking()
    try:
        yield
    finally:
        gb.unpatch_blocking()
    assert _waiters.table == {}, "a wait left a loop reader or writer registered"


@contextlib.contextmanager
def aiohttp_server(*routes: Any, ssl_context: ssl.SSLContext | None = None) -> Iterator[int]:
    """An aiohttp server on this loop, from green code; yields its port."""
    app = web.Application()
    app.add_routes(list(routes))
    runner = web.AppRunner(app)
    gb.await_from_green(runner.setup())
    try:
        site = web.TCPSite(runner, HOST, 0, ssl_context=ssl_context)
        gb.await_from_green(site.start())
        yield runner.addresses[0][1]
    finally:
        gb.await_from_green(runner.cleanup())


async def hello(request: Any) -> Any:
    return web.Response(text="hello " + request.query.get("name", "world"))


async def slow(request: Any) -> Any:
    await asyncio.sleep(0.3)
    return web.Response(text="slow")


@contextlib.contextmanager
def silent_peer() -> Iterator[int]:
    """A listening socket that never accepts: connections complete (the kernel's backlog), and no
    byte is ever answered."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def ticking() -> tuple[list[float], Callable[[], None]]:
    """An asyncio Task recording loop.time() every 10 ms; returns (ticks, stop)."""
    ticks: list[float] = []
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        while True:
            ticks.append(loop.time())
            await asyncio.sleep(0.01)

    task = loop.create_task(tick())

    def stop() -> None:
        task.cancel()
        gb.await_from_green(asyncio.wait([task]))

    return ticks, stop


# -- the patch itself ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gb_backend", ["asyncio"])
def test_patch_is_idempotent_and_unpatch_restores_every_original(gb_backend: str) -> None:
    gb.patch_blocking()  # a second time: nothing changes
    assert time.sleep is not _unpatched_sleep
    assert socket.socket.recv is not _socket.socket.recv
    gb.unpatch_blocking()
    gb.unpatch_blocking()
    assert time.sleep is _unpatched_sleep
    assert socket.socket.recv is _socket.socket.recv
    assert "recv" not in vars(socket.socket)
    assert select.select.__module__ == "select"
    assert selectors.DefaultSelector.select.__module__ == "selectors"
    gb.patch_blocking()
    assert time.sleep is not _unpatched_sleep


def test_time_sleep_in_a_fiber_lets_the_loop_run() -> None:
    ticks, stop = ticking()
    gb.sleep(0)
    start = time.monotonic()
    time.sleep(0.2)
    elapsed = time.monotonic() - start
    stop()
    assert 0.19 <= elapsed < 1.0
    assert len(ticks) >= 5  # the ticker ran while the fiber slept


def test_after_unpatch_time_sleep_blocks_the_loop_again() -> None:
    gb.unpatch_blocking()
    ticks, stop = ticking()
    gb.sleep(0.03)
    before = len(ticks)
    time.sleep(0.2)
    during = len(ticks) - before
    stop()
    assert during == 0  # nothing ran while the fiber slept: the loop was blocked


def test_time_sleep_bad_input_raises_as_the_original() -> None:
    with pytest.raises(ValueError, match="sleep length must be non-negative"):
        time.sleep(-1)
    with pytest.raises(TypeError, match="cannot be interpreted as an integer"):
        time.sleep("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        time.sleep(float("nan"))


def test_outside_fibers_the_originals_run_even_while_fibers_use_the_patch() -> None:
    # A thread using requests and time.sleep at the same time as fibers: blocking, as unpatched.
    results: dict[str, Any] = {}
    with aiohttp_server(web.get("/", hello), web.get("/slow", slow)) as port:

        def in_thread() -> None:
            start = time.monotonic()
            time.sleep(0.1)
            results["slept"] = time.monotonic() - start
            results["in_green"] = gb.in_green()
            results["text"] = requests.get(f"http://{HOST}:{port}/?name=thread", timeout=10).text

        thread = threading.Thread(target=in_thread)
        thread.start()
        texts = fiber.map(
            lambda i: requests.get(f"http://{HOST}:{port}/slow", timeout=10).text, range(5)
        )
        wait_until(lambda: not thread.is_alive())
        thread.join()
    assert texts == ["slow"] * 5
    assert results["slept"] >= 0.1 and results["in_green"] is False
    assert results["text"] == "hello thread"


def test_loop_callbacks_get_the_originals() -> None:
    loop = asyncio.get_running_loop()
    seen = gb.Promise()

    def callback() -> None:  # not a fiber: a non-blocking probe is answered by the original
        a, b = socket.socketpair()
        with a, b:
            assert select.select([a], [], [], 0) == ([], [], [])
        seen.resolve(gb.in_green())

    loop.call_soon(callback)
    assert seen.await_() is False


# -- HTTP ---------------------------------------------------------------------------------------------


def test_requests_to_an_aiohttp_server_on_the_same_loop() -> None:
    with aiohttp_server(web.get("/", hello)) as port:
        response = requests.get(f"http://{HOST}:{port}/?name=fiber", timeout=5)
        assert (response.status_code, response.text) == (200, "hello fiber")
        with requests.Session() as session:  # host name resolved through the loop's resolver
            assert session.get(f"http://localhost:{port}/").text == "hello world"
            assert session.get(f"http://localhost:{port}/?name=again").text == "hello again"


def test_twenty_fibers_doing_requests_run_concurrently() -> None:
    with aiohttp_server(web.get("/slow", slow)) as port:
        start = time.monotonic()
        with gb.Switch() as sw:
            done: list[str] = []
            for _ in range(20):
                sw.fork(lambda: done.append(requests.get(f"http://{HOST}:{port}/slow", timeout=10).text))
        elapsed = time.monotonic() - start
    assert done == ["slow"] * 20
    assert 0.3 <= elapsed < 2.0  # serial would be 6 s


def test_urllib_and_http_client() -> None:
    with aiohttp_server(web.get("/", hello)) as port:
        with urllib.request.urlopen(f"http://{HOST}:{port}/?name=urllib", timeout=5) as answer:
            assert answer.read() == b"hello urllib"
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request("GET", "/?name=http.client")
            assert conn.getresponse().read() == b"hello http.client"
        finally:
            conn.close()


def test_http_client_over_tls(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    with aiohttp_server(web.get("/", hello), ssl_context=server_context) as port:
        conn = http.client.HTTPSConnection("localhost", port, context=client_context, timeout=5)
        try:
            conn.request("GET", "/?name=tls")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"hello tls")
            assert isinstance(conn.sock, ssl.SSLSocket) and conn.sock.version() is not None
        finally:
            conn.close()


def test_tls_both_ends_in_fibers_handshake_read_write_unwrap(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    # Both peers are blocking-style code on one loop: any call that blocked would deadlock.
    record: list[Any] = []
    payload = bytes(range(256)) * 4096  # 1 MiB: many records, want-read and want-write both
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)

        def server() -> None:
            raw, _ = listener.accept()
            with server_context.wrap_socket(raw, server_side=True) as tls:
                received = bytearray()
                while len(received) < len(payload):
                    received += tls.recv(65536)
                tls.sendall(b"got %d" % len(received))
                record.append(("server", bytes(received) == payload))
                tls.unwrap().close()

        def client() -> None:
            raw = socket.create_connection((HOST, listener.getsockname()[1]), timeout=10)
            with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(payload)
                record.append(("client", tls.recv(100)))
                tls.unwrap().close()

        fiber.both(server, client)
    assert sorted(record) == [("client", b"got 1048576"), ("server", True)]


# -- sockets: timeouts, cancellation, sharing ---------------------------------------------------------------


def test_socket_timeouts_keep_their_meaning() -> None:
    ticks, stop = ticking()
    with silent_peer() as port:
        sock = socket.create_connection((HOST, port), timeout=0.2)
        with sock:
            assert sock.gettimeout() == 0.2
            start = time.monotonic()
            with pytest.raises(TimeoutError, match="timed out"):
                sock.recv(10)
            assert 0.19 <= time.monotonic() - start < 1.0
            assert sock.gettimeout() == 0.2  # put back after each attempt
        with socket.socket() as plain:
            plain.connect((HOST, port))
            plain.settimeout(0.1)
            with pytest.raises(TimeoutError):
                plain.makefile("rb").read(1)
    stop()
    assert len(ticks) >= 10  # the loop ran through both waits


def test_non_blocking_sockets_behave_as_before() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(10)
        b.sendall(b"x")
        wait_until(lambda: select.select([a], [], [], 0)[0] != [])
        assert a.recv(10) == b"x"


def test_connection_errors_are_the_originals() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        free = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, free), timeout=2)
    with socket.socket() as sock:
        assert sock.connect_ex((HOST, free)) != 0
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("no-such-host.invalid", 80)
    sock = socket.socket()
    sock.close()
    with pytest.raises(OSError):
        sock.recv(1)


def test_gb_timeout_ends_a_request_to_a_peer_that_never_answers() -> None:
    with silent_peer() as port:
        start = time.monotonic()
        with pytest.raises(TimeoutError), gb.timeout(0.3):
            requests.get(f"http://{HOST}:{port}/", timeout=None)  # would wait forever
        assert time.monotonic() - start < 1.5


def test_a_failing_sibling_ends_a_stuck_recv() -> None:
    a, b = socket.socketpair()
    with a, b:

        def stuck() -> None:
            a.recv(10)

        def fail() -> None:
            gb.sleep(0.05)
            raise LookupError("sibling failed")

        with pytest.raises(LookupError, match="sibling failed"), gb.Switch() as sw:
            sw.fork(stuck)
            sw.fork(fail)


def test_cancelling_the_asyncio_task_ends_a_stuck_request() -> None:
    with silent_peer() as port:
        entered = gb.Event()

        def stuck() -> None:
            with socket.create_connection((HOST, port)) as sock:
                entered.set()
                sock.makefile("rb").readline()  # no timeout: would wait forever

        task = asyncio.ensure_future(gb.spawn_green(stuck))
        entered.wait()
        gb.sleep(0.01)
        task.cancel()
        gb.await_from_green(asyncio.wait([task]))
        assert task.cancelled()


def test_host_names_go_through_the_loops_resolver() -> None:
    loop = asyncio.get_running_loop()
    asked: list[Any] = []
    resolve = loop.getaddrinfo

    async def recording(*args: Any, **kwargs: Any) -> Any:
        asked.append(args[0])
        return await resolve(*args, **kwargs)

    loop.getaddrinfo = recording  # type: ignore[method-assign]
    try:
        infos = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
        assert any(info[4][0] in ("127.0.0.1", "::1") for info in infos)
        socket.getaddrinfo("127.0.0.1", 80)  # numeric: answered at once, no resolver needed
        with aiohttp_server(web.get("/", hello)) as port, socket.socket() as sock:
            sock.connect(("localhost", port))
    finally:
        del loop.getaddrinfo
    assert asked == ["localhost", "localhost"]


def test_a_socket_made_in_one_fiber_is_used_in_another() -> None:
    made: gb.Promise[tuple[socket.socket, socket.socket]] = gb.Promise()

    def maker() -> None:
        made.resolve(socket.socketpair())

    def user() -> bytes:
        a, b = made.await_()
        with a, b:
            fiber.both(lambda: b.sendall(b"ping"), lambda: None)
            return a.recv(4)

    _, got = fiber.pair(maker, user)
    assert got == b"ping"


def test_two_fibers_waiting_on_one_socket_are_both_woken() -> None:
    a, b = socket.socketpair()
    got: list[bytes] = []
    with a, b:

        def reader() -> None:
            got.append(a.recv(1))

        with gb.Switch() as sw:
            sw.fork(reader)
            sw.fork(reader)
            wait_until(lambda: len(_waiters.table.get((a.fileno(), 1), ())) == 2)
            b.sendall(b"12")
    assert sorted(got) == [b"1", b"2"]


# -- select, poll, selectors ---------------------------------------------------------------------------


def test_select_poll_and_selectors_wait_on_the_loop() -> None:
    a, b = socket.socketpair()
    with a, b:

        def later() -> None:
            gb.sleep(0.05)
            b.sendall(b"!")

        ready: list[Any] = []
        fiber.both(lambda: ready.append(select.select([a], [], [], 5)), later)
        assert ready == [([a], [], [])]
        a.recv(1)

        poller = select.poll()
        poller.register(a, select.POLLIN)
        fiber.both(lambda: ready.append(poller.poll(5000)), later)
        assert ready[-1] == [(a.fileno(), select.POLLIN)]
        a.recv(1)

        with selectors.DefaultSelector() as selector:
            selector.register(a, selectors.EVENT_READ, "data")
            fiber.both(lambda: ready.append(selector.select(5)), later)
            [(key, events)] = ready[-1]
            assert (key.data, events) == ("data", selectors.EVENT_READ)
            a.recv(1)
            start = time.monotonic()
            assert selector.select(0.1) == []  # runs out: empty, like the original
            assert time.monotonic() - start >= 0.09
        start = time.monotonic()
        assert select.select([a], [], [], 0.1) == ([], [], [])
        assert poller.poll(100) == []
        assert time.monotonic() - start >= 0.18
        with pytest.raises(ValueError):
            select.select([a], [], [], -1)


# -- redis, PostgreSQL, SMTP --------------------------------------------------------------------------------


def test_redis_blpop_woken_by_rpush_from_another_fiber(redis_server: Any) -> None:
    redis = pytest.importorskip("redis")
    waiter = redis.Redis.from_url(redis_server.url)
    pusher = redis.Redis.from_url(redis_server.url)
    try:
        pusher.delete("greenbridge:queue")

        def blocked_clients() -> int:
            return int(pusher.info("clients")["blocked_clients"])

        def push() -> None:
            wait_until(lambda: blocked_clients() == 1)  # the other fiber sits in BLPOP
            pusher.rpush("greenbridge:queue", "job")

        popped, _ = fiber.pair(lambda: waiter.blpop(["greenbridge:queue"], timeout=10), push)
        assert popped == (b"greenbridge:queue", b"job")
    finally:
        waiter.close()
        pusher.close()


def test_psycopg2_five_concurrent_pg_sleeps(postgres_server: Any) -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    assert psycopg2.extensions.get_wait_callback() is not None
    conns = [psycopg2.connect(postgres_server.dsn) for _ in range(5)]
    try:

        def query(conn: Any) -> Any:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_sleep(0.3), %s", (conn.info.backend_pid,))
                return cur.fetchone()[1]

        start = time.monotonic()
        pids = fiber.map(query, conns)
        elapsed = time.monotonic() - start
        assert pids == [conn.info.backend_pid for conn in conns]
        assert elapsed < 1.2  # serial would be 1.5 s
    finally:
        for conn in conns:
            conn.close()


def test_psycopg2_query_ended_by_gb_timeout_is_cancelled_on_the_server(postgres_server: Any) -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    conn = psycopg2.connect(postgres_server.dsn)
    watcher = psycopg2.connect(postgres_server.dsn)
    watcher.autocommit = True
    try:
        pid = conn.info.backend_pid
        cur = conn.cursor()
        start = time.monotonic()
        with pytest.raises(TimeoutError), gb.timeout(0.2):
            cur.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - start < 2.0
        assert conn.closed  # psycopg2's rule when a wait callback raises

        def still_sleeping() -> bool:
            with watcher.cursor() as w:
                w.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (pid,))
                return bool(w.fetchone()[0])

        wait_until(lambda: not still_sleeping())  # the query was stopped, not left to run 10 s
    finally:
        conn.close()
        watcher.close()


def test_psycopg2_in_a_thread_is_unchanged(postgres_server: Any) -> None:
    psycopg2 = pytest.importorskip("psycopg2")

    def in_thread() -> Any:
        with contextlib.closing(psycopg2.connect(postgres_server.dsn)) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.1), 7")
            return cur.fetchone()[1]

    assert gb.run_in_thread(in_thread) == 7


def test_psycopg3_five_concurrent_pg_sleeps(postgres_server: Any) -> None:
    psycopg = pytest.importorskip("psycopg")
    conns = [psycopg.connect(postgres_server.dsn, autocommit=True) for _ in range(5)]
    try:

        def query(conn: Any) -> Any:
            return conn.execute("SELECT pg_sleep(0.3), %s::int", (conn.info.backend_pid,)).fetchone()[1]

        start = time.monotonic()
        pids = fiber.map(query, conns)
        elapsed = time.monotonic() - start
        assert pids == [conn.info.backend_pid for conn in conns]
        assert elapsed < 1.2
    finally:
        for conn in conns:
            conn.close()


def test_psycopg3_query_ended_by_gb_timeout_leaves_a_usable_connection(postgres_server: Any) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        start = time.monotonic()
        with pytest.raises(TimeoutError), gb.timeout(0.2):
            conn.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - start < 2.0
        assert conn.execute("SELECT 42").fetchone() == (42,)


@pytest.fixture(scope="module")
def mariadb_server() -> Iterator[MariaDB]:
    """A private MariaDB on 127.0.0.1 for this module (skips when it is not installed)."""
    with start_mariadb() as server:
        yield server


def test_pymysql_five_concurrent_sleeps_on_mariadb(mariadb_server: MariaDB) -> None:
    pymysql = pytest.importorskip("pymysql")
    conns = [
        pymysql.connect(host=mariadb_server.host, port=mariadb_server.port, user=mariadb_server.user)
        for _ in range(5)
    ]
    try:

        def query(conn: Any) -> Any:
            with conn.cursor() as cur:
                cur.execute("SELECT SLEEP(0.3), CONNECTION_ID()")
                return cur.fetchone()[1]

        start = time.monotonic()
        ids = fiber.map(query, conns)
        elapsed = time.monotonic() - start
        assert ids == [conn.thread_id() for conn in conns]
        assert elapsed < 1.2  # serial would be 1.5 s
    finally:
        for conn in conns:
            conn.close()


def test_smtplib_to_aiosmtpd_on_the_same_loop() -> None:
    smtp = pytest.importorskip("aiosmtpd.smtp")
    import smtplib

    received: list[tuple[str, list[str], bytes]] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append((envelope.mail_from, envelope.rcpt_tos, envelope.content))
            return "250 OK"

    loop = asyncio.get_running_loop()
    server = gb.await_from_green(loop.create_server(lambda: smtp.SMTP(Handler()), HOST, 0))
    try:
        port = server.sockets[0].getsockname()[1]
        with smtplib.SMTP(HOST, port, timeout=5) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nfrom a fiber\r\n")
    finally:
        server.close()
        gb.await_from_green(server.wait_closed())
    [(sender, recipients, content)] = received
    assert (sender, recipients) == ("a@example.com", ["b@example.com"])
    assert b"from a fiber" in content


# -- what cannot be made cooperative is reported ----------------------------------------------------------


def test_debug_mode_names_a_call_that_blocks_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    # run under gb.run(debug=True) by the plugin; the first patched call starts the watchdog
    caplog.set_level(logging.WARNING, logger="greenbridge")
    time.sleep(0.05)  # a patched call starts the watchdog; give its thread time to beat
    _unpatched_sleep(0.5)  # what the patch cannot reach: a name bound before it

    def reports() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "greenbridge"]

    wait_until(lambda: any("_unpatched_sleep(0.5)" in report for report in reports()), timeout=5)
    # (a loaded machine may add reports of its own stalls: the one about our call is there)
    [report] = [report for report in reports() if "_unpatched_sleep(0.5)" in report]
    assert report.startswith("a green fiber (Task ")
    assert "blocked the event loop for at least" in report
    assert "test_blocking.py" in report
    assert "in test_debug_mode_names_a_call_that_blocks_the_loop" in report
