"""Blocking libraries made cooperative (``gb.patch_blocking()``) side by side with their peers.

HTTP: ``--requests`` GETs (default 100), ``--concurrency`` at a time (default 20), to an aiohttp
server in a process of its own whose handler waits ``--delay`` seconds (default 5 ms) and answers
a short text:

  requests-fibers    requests.get in green fibers (fiber.map, max_fibers=concurrency), patched
  requests-threads   requests.get in a ThreadPoolExecutor(concurrency), no event loop at all
  aiohttp            aiohttp's ClientSession, concurrency limited by a Semaphore

PostgreSQL: ``--connections`` connections (default 10) each run ``--queries`` queries (default
20) of ``SELECT x FROM generate_series(1, 10) x`` at the same time:

  psycopg2-fibers    psycopg2 in green fibers (its wait callback), patched
  psycopg3-fibers    psycopg 3 sync connections in green fibers, patched
  asyncpg            asyncpg, the asyncio-native driver

Each configuration runs ``--rounds`` times (default 5), interleaved, on each loop (asyncio,
uvloop); the table gives the median wall time and its ratio to the asyncio-native peer (aiohttp,
asyncpg) on the same loop: below 1.00 is faster. The PostgreSQL server is a private one on
127.0.0.1 (``--dsn`` to use another), started as the tests start theirs.

    python benchmarks/bench_blocking.py                  # about a minute
    python benchmarks/bench_blocking.py --rounds 3 --output blocking.md

Loopback only. A benchmark, not a test: it never fails on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import greenbridge as gb
from greenbridge import fiber

HOST = "127.0.0.1"
LOOPS = ("asyncio", "uvloop")
HTTP_PEERS = ("requests-fibers", "requests-threads", "aiohttp")
PG_PEERS = ("psycopg2-fibers", "psycopg3-fibers", "asyncpg")
QUERY = "SELECT x FROM generate_series(1, 10) x"

# -- the HTTP server, in a process of its own ------------------------------------------------------


def serve_http(delay: float, max_seconds: float) -> None:
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.sleep(max_seconds)  # stops by itself even if the benchmark dies
        await runner.cleanup()

    asyncio.run(main())


@contextlib.contextmanager
def http_server(delay: float) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-http", str(delay)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait()


# -- HTTP peers ------------------------------------------------------------------------------------


def requests_fibers(url: str, n: int, concurrency: int, loop_name: str) -> float:
    import requests

    def main() -> float:
        start = time.perf_counter()
        fiber.map(lambda _: requests.get(url, timeout=30).text, range(n), max_fibers=concurrency)
        return time.perf_counter() - start

    return gb.run(main, backend=loop_name)


def requests_threads(url: str, n: int, concurrency: int, loop_name: str) -> float:
    import requests

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: requests.get(url, timeout=30).text, range(n)))
    return time.perf_counter() - start


def aiohttp_client(url: str, n: int, concurrency: int, loop_name: str) -> float:
    from aiohttp import ClientSession, TCPConnector

    async def main() -> float:
        limit = asyncio.Semaphore(concurrency)
        # A new connection per request, as requests.get makes one.
        async with ClientSession(connector=TCPConnector(force_close=True)) as http:

            async def one() -> str:
                async with limit, http.get(url) as response:
                    return await response.text()

            start = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(n)))
            return time.perf_counter() - start

    return _run_async(main, loop_name)


# -- PostgreSQL peers ------------------------------------------------------------------------------


def psycopg2_fibers(dsn: str, connections: int, queries: int, loop_name: str) -> float:
    import psycopg2

    def main() -> float:
        conns = [psycopg2.connect(dsn) for _ in range(connections)]
        try:

            def work(conn: Any) -> None:
                with conn.cursor() as cur:
                    for _ in range(queries):
                        cur.execute(QUERY)
                        cur.fetchall()

            start = time.perf_counter()
            fiber.map(work, conns)
            return time.perf_counter() - start
        finally:
            for conn in conns:
                conn.close()

    return gb.run(main, backend=loop_name)


def psycopg3_fibers(dsn: str, connections: int, queries: int, loop_name: str) -> float:
    import psycopg

    def main() -> float:
        conns = [psycopg.connect(dsn, autocommit=True) for _ in range(connections)]
        try:

            def work(conn: Any) -> None:
                for _ in range(queries):
                    conn.execute(QUERY).fetchall()

            start = time.perf_counter()
            fiber.map(work, conns)
            return time.perf_counter() - start
        finally:
            for conn in conns:
                conn.close()

    return gb.run(main, backend=loop_name)


def asyncpg_client(dsn: str, connections: int, queries: int, loop_name: str) -> float:
    import asyncpg

    async def main() -> float:
        conns = [await asyncpg.connect(dsn) for _ in range(connections)]
        try:

            async def work(conn: Any) -> None:
                for _ in range(queries):
                    await conn.fetch(QUERY)

            start = time.perf_counter()
            await asyncio.gather(*(work(conn) for conn in conns))
            return time.perf_counter() - start
        finally:
            for conn in conns:
                await conn.close()

    return _run_async(main, loop_name)


def _run_async(main: Callable[[], Any], loop_name: str) -> float:
    factory = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return float(runner.run(main()))


@contextlib.contextmanager
def postgres(dsn: str | None) -> Iterator[str]:
    if dsn is not None:
        yield dsn
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from _services import start_postgres

    with start_postgres() as server:
        yield server.dsn


# -- the run ---------------------------------------------------------------------------------------

Results = dict[tuple[str, str], list[float]]


def measure(args: argparse.Namespace) -> tuple[Results, Results]:
    http: Results = {}
    pg: Results = {}
    http_peers = {"requests-fibers": requests_fibers, "requests-threads": requests_threads,
                  "aiohttp": aiohttp_client}  # fmt: skip
    pg_peers = {"psycopg2-fibers": psycopg2_fibers, "psycopg3-fibers": psycopg3_fibers,
                "asyncpg": asyncpg_client}  # fmt: skip
    with http_server(args.delay) as port:
        url = f"http://{HOST}:{port}/"
        for _ in range(args.rounds):
            for loop_name in args.loops:
                for name, fn in http_peers.items():
                    http.setdefault((name, loop_name), []).append(
                        fn(url, args.requests, args.concurrency, loop_name)
                    )
    with postgres(args.dsn) as dsn:
        for _ in range(args.rounds):
            for loop_name in args.loops:
                for name, pg_fn in pg_peers.items():
                    pg.setdefault((name, loop_name), []).append(
                        pg_fn(dsn, args.connections, args.queries, loop_name)
                    )
    return http, pg


def table(results: Results, peers: tuple[str, ...], native: str, loops: list[str]) -> str:
    lines = ["| | " + " | ".join(loops) + " |", "|---|" + "---|" * len(loops)]
    for peer in peers:
        cells = []
        for loop_name in loops:
            ours = statistics.median(results[(peer, loop_name)])
            base = statistics.median(results[(native, loop_name)])
            cells.append(f"{ours * 1000:.1f} ms ({ours / base:.2f}x)")
        lines.append(f"| {peer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.005)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--output", default=None)
    parser.add_argument("--serve-http", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_http is not None:
        serve_http(args.serve_http, max_seconds=600)
        return
    args.loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    gb.patch_blocking()  # once, at start-up; the thread pool and aiohttp are untouched by it
    http, pg = measure(args)
    text = (
        f"## {args.requests} HTTP GETs, {args.concurrency} at a time, handler waiting "
        f"{args.delay * 1000:g} ms (median of {args.rounds}; ratio to aiohttp's client)\n\n"
        + table(http, HTTP_PEERS, "aiohttp", args.loops)
        + f"\n\n## PostgreSQL: {args.connections} connections x {args.queries} queries at once "
        f"(median of {args.rounds}; ratio to asyncpg)\n\n"
        + table(pg, PG_PEERS, "asyncpg", args.loops)
        + "\n"
    )
    print(text)
    if args.output:
        with open(args.output, "w") as out:
            out.write(text)


if __name__ == "__main__":
    main()
