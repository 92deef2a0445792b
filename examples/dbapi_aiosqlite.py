"""A synchronous DB-API 2.0 (PEP 249) driver over aiosqlite, built with greenbridge.

aiosqlite is an asyncio driver; plain synchronous code (an ORM, a report generator, a library
you cannot rewrite) wants ``connect() / cursor() / execute() / fetchall() / commit()``. With a
green façade the sync driver is a thin typed layer: every method is one call through
``gb.green_facade``, which suspends the calling green fiber -- never the event loop -- while
aiosqlite works. The sync code runs inside an asyncio application through ``gb.spawn_green``,
and the very same function also runs on the standard library's ``sqlite3``.

    python3 examples/dbapi_aiosqlite.py
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import aiosqlite

import greenbridge as gb

# -- the driver: module globals and exceptions that PEP 249 asks for ------------------------------------

apilevel = "2.0"
threadsafety = 1  # connections must not be shared between threads (nor between event loops)
paramstyle = "qmark"

# aiosqlite raises sqlite3's exceptions: re-export them, as PEP 249 wants them on the module.
Warning = sqlite3.Warning  # the name PEP 249 requires
Error = sqlite3.Error
InterfaceError = sqlite3.InterfaceError
DatabaseError = sqlite3.DatabaseError
DataError = sqlite3.DataError
OperationalError = sqlite3.OperationalError
IntegrityError = sqlite3.IntegrityError
InternalError = sqlite3.InternalError
ProgrammingError = sqlite3.ProgrammingError
NotSupportedError = sqlite3.NotSupportedError

Row = tuple[Any, ...]

_aiosqlite = gb.green_facade(aiosqlite)


class Cursor:
    """A PEP 249 cursor over an ``aiosqlite.Cursor``. Every method suspends the calling green
    fiber while the database works (a cancellation point); errors are ``sqlite3``'s."""

    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._cursor: Any = None  # the façade of the aiosqlite cursor of the last execute

    @property
    def description(self) -> Any:
        return None if self._cursor is None else self._cursor.description

    @property
    def rowcount(self) -> int:
        return -1 if self._cursor is None else int(self._cursor.rowcount)

    @property
    def lastrowid(self) -> int | None:
        return None if self._cursor is None else self._cursor.lastrowid

    def execute(self, operation: str, parameters: Sequence[Any] = ()) -> Cursor:
        self.close()
        self._cursor = self.connection._conn.execute(operation, parameters)
        return self

    def executemany(self, operation: str, seq_of_parameters: Sequence[Sequence[Any]]) -> Cursor:
        self.close()
        self._cursor = self.connection._conn.executemany(operation, seq_of_parameters)
        return self

    def fetchone(self) -> Row | None:
        return self._active().fetchone()  # type: ignore[no-any-return]

    def fetchmany(self, size: int | None = None) -> list[Row]:
        return self._active().fetchmany(self.arraysize if size is None else size)  # type: ignore[no-any-return]

    def fetchall(self) -> list[Row]:
        return self._active().fetchall()  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Row]:
        return iter(self._active())

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    def setinputsizes(self, sizes: object) -> None:
        pass

    def setoutputsize(self, size: int, column: int | None = None) -> None:
        pass

    def _active(self) -> Any:
        if self._cursor is None:
            raise ProgrammingError("no statement executed on this cursor yet")
        return self._cursor


class Connection:
    """A PEP 249 connection over an ``aiosqlite.Connection``; ``with conn:`` commits on success,
    rolls back on error, as ``sqlite3`` does (it does not close). Methods suspend the calling
    green fiber (cancellation points)."""

    def __init__(self, database: str) -> None:
        self._conn: Any = _aiosqlite.connect(database)

    def cursor(self) -> Cursor:
        return Cursor(self)

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()

    def close(self) -> None:
        self._conn.close()

    def execute(self, operation: str, parameters: Sequence[Any] = ()) -> Cursor:
        """A shortcut, as in ``sqlite3``: a new cursor, executed."""
        return self.cursor().execute(operation, parameters)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


def connect(database: str) -> Connection:
    """Open an SQLite database (a path or ``":memory:"``). Green code only: suspends while
    aiosqlite opens it; raises ``gb.NoGreenContext`` from plain asyncio code."""
    return Connection(database)


# -- plain synchronous code, written against PEP 249 only ---------------------------------------------


class DBAPIConnection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


def stock_report(conn: DBAPIConnection, shop: str) -> list[str]:
    """Ordinary blocking-style code: no async, no await, no greenbridge."""
    cur = conn.cursor()
    cur.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, qty INTEGER)")
    cur.executemany("INSERT INTO stock VALUES (?, ?)", [("apples", 12), ("pears", 0), ("plums", 7)])
    conn.commit()
    cur.execute("UPDATE stock SET qty = qty - 2 WHERE qty >= 2")
    conn.commit()
    cur.execute("SELECT item, qty FROM stock ORDER BY item")
    lines = [f"{shop}: {item:<6} {qty:>3}" for item, qty in cur.fetchall()]
    cur.execute("SELECT count(*) FROM stock WHERE qty = 0")
    (empty,) = cur.fetchone()
    lines.append(f"{shop}: {empty} item(s) out of stock")
    return lines


def report_with(shop: str) -> list[str]:
    """Green code: open a connection with our driver and run the sync report on it."""
    conn = connect(":memory:")
    try:
        return stock_report(conn, shop)
    finally:
        conn.close()


async def main() -> None:
    # An asyncio application: a heartbeat Task keeps running while the sync reports work --
    # they suspend their fibers, not the loop.
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        while True:
            await asyncio.sleep(0)
            beats += 1

    ticker = asyncio.create_task(heartbeat())
    started = time.perf_counter()
    try:
        north, south = await asyncio.gather(
            gb.spawn_green(report_with, "north"), gb.spawn_green(report_with, "south")
        )
    finally:
        ticker.cancel()
    elapsed = time.perf_counter() - started
    for line in north + south:
        print(line)
    print(f"the event loop ran {'on' if beats else 'NOT'} while the sync code waited for the database")
    print(f"({beats} heartbeats in {elapsed * 1000:.0f} ms)")

    # The same sync function on the standard library's sqlite3 gives the same report.
    with sqlite3.connect(":memory:") as plain:
        assert stock_report(plain, "north") == north
    plain.close()
    print("the same report on the standard library's sqlite3: identical")


if __name__ == "__main__":
    asyncio.run(main())
