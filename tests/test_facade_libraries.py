"""Green façades on the libraries people use, against real servers on 127.0.0.1: asyncpg on
PostgreSQL, redis.asyncio on redis, httpx on uvicorn, aiosqlite (issue 11's façade shapes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import httpx
import pytest
import redis.asyncio
from _asgi import serving
from _services import Postgres, Redis
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

import greenbridge as gb

pg = gb.green_facade(asyncpg)


@pytest.mark.green
def test_asyncpg_transaction_is_entered_by_with(postgres_server: Postgres) -> None:
    conn = pg.connect(postgres_server.dsn)
    try:
        conn.execute("CREATE TEMP TABLE tx (n int)")
        with conn.transaction():
            assert conn.is_in_transaction()
            conn.execute("INSERT INTO tx VALUES (1)")
        with pytest.raises(ZeroDivisionError), conn.transaction():
            conn.execute("INSERT INTO tx VALUES (2)")
            1 / 0  # noqa: B018
        assert conn.fetch("SELECT n FROM tx") == [(1,)]  # the second insert was rolled back
        assert not conn.is_in_transaction()
    finally:
        conn.close()


@pytest.mark.green
def test_asyncpg_pool_acquire_both_ways_and_release(postgres_server: Postgres) -> None:
    pool = pg.create_pool(postgres_server.dsn, min_size=1, max_size=2)
    try:
        with pool.acquire() as conn:  # async with: released on exit
            assert type(conn) is gb.GreenFacade
            assert conn.fetchval("SELECT 40 + $1::int", 2) == 42  # a PoolConnectionProxy method
        conn = pool.acquire()  # await: released by hand, the façade unwrapped on the way in
        try:
            assert conn.fetchval("SELECT 1") == 1
        finally:
            pool.release(conn)
        assert pool.get_idle_size() == pool.get_size()
    finally:
        pool.close()  # returns: nothing is left acquired


@pytest.mark.green
def test_redis_client_from_a_module_facade(redis_server: Redis) -> None:
    aredis = gb.green_facade(redis.asyncio)
    with aredis.Redis(host=redis_server.host, port=redis_server.port) as client:
        assert type(client) is gb.GreenFacade
        client.delete("facade:k", "facade:n")  # the server lives for the session: start clean
        client.set("facade:k", "v")
        assert client.get("facade:k") == b"v"
        with client.pipeline(transaction=True) as pipe:
            pipe.incr("facade:n")
            pipe.incr("facade:n")
            assert pipe.execute() == [1, 2]
    client = aredis.Redis.from_url(redis_server.url)  # a class method's result, wrapped
    try:
        assert client.get("facade:n") == b"2"
    finally:
        client.aclose()


async def _numbers(request: Any) -> StreamingResponse:
    async def chunks() -> Any:
        for n in range(3):
            yield f"{n}\n".encode()

    return StreamingResponse(chunks())


async def _hello(request: Any) -> PlainTextResponse:
    return PlainTextResponse("hello")


APP = Starlette(routes=[Route("/numbers", _numbers), Route("/hello", _hello)])


@pytest.mark.green
def test_httpx_stream_is_entered_by_with() -> None:
    with serving(APP) as url, gb.green_facade(httpx.AsyncClient(base_url=url)) as client:
        with client.stream("GET", "/numbers") as response:
            assert type(response) is gb.GreenFacade and response.status_code == 200
            assert list(response.aiter_lines()) == ["0", "1", "2"]
        assert response.is_closed
        assert client.get("/hello").text == "hello"


@pytest.mark.green
def test_aiosqlite_backup_takes_a_facade(tmp_path: Path) -> None:
    db = gb.green_facade(aiosqlite)
    with db.connect(":memory:") as src, db.connect(str(tmp_path / "copy.db")) as dst:
        src.execute("CREATE TABLE t (n)")
        src.execute("INSERT INTO t VALUES (7)")
        src.commit()
        src.backup(dst)  # aiosqlite reaches into dst's sqlite3 connection: it must be unwrapped
        assert dst.execute("SELECT n FROM t").fetchall() == [(7,)]


@pytest.mark.green
def test_websockets_connect_through_a_module_facade() -> None:
    """``websockets.connect(...)`` is awaitable and an async context manager: through a module
    façade it gives a façade both ways, whose coroutine methods are plain calls."""
    websockets = pytest.importorskip("websockets")
    from websockets.asyncio.server import serve

    async def echo(connection: Any) -> None:
        async for message in connection:
            await connection.send(f"echo {message}")

    ws = gb.green_facade(websockets)
    with gb.enter(serve(echo, "127.0.0.1", 0)) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        with ws.connect(f"ws://127.0.0.1:{port}") as connection:  # entered, not awaited
            assert type(connection) is gb.GreenFacade
            connection.send("one")
            assert connection.recv() == "echo one"
        connection = ws.connect(f"ws://127.0.0.1:{port}")  # awaited: an open connection
        try:
            assert type(connection) is gb.GreenFacade
            connection.send("two")
            assert connection.recv() == "echo two"
        finally:
            connection.close()
