"""Checked by mypy (the tox ``type`` environment), never run: declared façades are typed.

Each ``# type: ignore[...]`` below marks a call mypy must reject; ``warn_unused_ignores`` is on
for this module, so if mypy ever stopped catching one of those mistakes, the check would fail.
"""

from __future__ import annotations

from typing import Any, assert_type

import asyncpg
import httpx
from redis.asyncio import Redis

import greenbridge as gb


class SyncRedis(gb.GreenFacade[Redis]):
    # redis-py overloads its methods on the type of self (sync or async client), which a
    # reference such as Redis.get cannot carry: declare the signatures you rely on instead.
    @gb.green_method
    async def get(r: Redis, name: str) -> bytes | str | None:
        return await r.get(name)

    @gb.green_method
    async def set(r: Redis, name: str, value: str | bytes | int, *, ex: int | None = None) -> Any:
        return await r.set(name, value, ex=ex)


class SyncClient(gb.GreenFacade[httpx.AsyncClient]):
    get = gb.green_method(httpx.AsyncClient.get)
    post = gb.green_method(httpx.AsyncClient.post)


class SyncConnection(gb.GreenFacade[asyncpg.Connection]):
    # asyncpg has no type hints: declare the signature you rely on, as an async def.
    @gb.green_method
    async def fetchval(conn: asyncpg.Connection, query: str, *args: object) -> Any:
        return await conn.fetchval(query, *args)


def redis_code(client: Redis) -> None:
    r = SyncRedis(client)
    assert_type(r.get("k"), bytes | str | None)
    r.set("k", "v", ex=10)
    r.gte("k")  # type: ignore[attr-defined]
    r.get()  # type: ignore[call-arg]


def httpx_code(client: httpx.AsyncClient) -> None:
    http = SyncClient(client)
    assert_type(http.get("/"), httpx.Response)
    http.get("/", params={"q": "x"}, timeout=5.0)
    http.get("/", retries=3)  # type: ignore[call-arg]
    http.get(42)  # type: ignore[arg-type]


def asyncpg_code(conn: asyncpg.Connection) -> None:
    db = SyncConnection(conn)
    db.fetchval("SELECT $1::int", 1)
    db.fetchval(1)  # type: ignore[arg-type]


def untyped_facade(obj: object) -> None:
    facade = gb.green_facade(obj)
    assert_type(facade, gb.GreenFacade[object])  # type: ignore[assert-type]
    facade.anything()  # a façade from green_facade(): every attribute, as Any
