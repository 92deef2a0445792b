"""Green façades (greenbridge._facade): calls, with, for, wrapping, errors -- on real aiosqlite."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import sqlite3
import types
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

import greenbridge as gb

Run = Callable[..., Any]

db = gb.green_facade(aiosqlite)


# -- aiosqlite, end to end -----------------------------------------------------------------------------


@pytest.mark.green
def test_aiosqlite_round_trip(tmp_path: Path) -> None:
    with db.connect(str(tmp_path / "t.db")) as conn:
        conn.execute("CREATE TABLE t (n INTEGER, name TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "one"), (2, "two"), (3, "three")])
        conn.commit()
        cursor = conn.execute("SELECT n, name FROM t ORDER BY n")
        assert cursor.fetchone() == (1, "one")
        assert cursor.fetchall() == [(2, "two"), (3, "three")]
        assert conn.total_changes == 3  # a plain property comes out unchanged
    # The data was committed to the file: a second connection sees it.
    with db.connect(str(tmp_path / "t.db")) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)


@pytest.mark.green
def test_with_opens_once_and_closes_on_exit() -> None:
    # db.connect() awaits the Connection (which opens it); `with` must not open it again, and
    # must close it on the way out -- as `async with aiosqlite.connect(...)` does.
    with db.connect(":memory:") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(ValueError, match="no active connection"):
        conn.execute("SELECT 1")


@pytest.mark.green
def test_unopened_connection_is_opened_by_with() -> None:
    conn = gb.green_facade(aiosqlite.connect(":memory:"))
    with conn as entered:
        assert entered is conn
        assert conn.execute("SELECT 2").fetchone() == (2,)
    with pytest.raises(ValueError, match="no active connection"):
        conn.execute("SELECT 1")


@pytest.mark.green
def test_cursor_iteration_and_cursor_context_manager() -> None:
    with db.connect(":memory:") as conn:
        conn.execute("CREATE TABLE t (n)")
        conn.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(5)])
        assert [row for row in conn.execute("SELECT n FROM t ORDER BY n")] == [(n,) for n in range(5)]
        with conn.execute("SELECT n FROM t WHERE n > 2 ORDER BY n") as cursor:
            assert cursor.fetchall() == [(3,), (4,)]
        with pytest.raises(sqlite3.ProgrammingError, match="closed cursor"):  # closed by `with`
            cursor.fetchall()


@pytest.mark.green
def test_async_generator_method_is_iterated() -> None:
    with db.connect(":memory:") as conn:
        conn.execute("CREATE TABLE t (n)")
        dump = list(conn.iterdump())
    assert dump == ["BEGIN TRANSACTION;", "CREATE TABLE t (n);", "COMMIT;"]


@pytest.mark.green
def test_attribute_writes_reach_the_wrapped_object() -> None:
    with db.connect(":memory:") as conn:
        conn.row_factory = sqlite3.Row
        assert conn.__wrapped__.row_factory is sqlite3.Row
        row = conn.execute("SELECT 7 AS seven").fetchone()
        assert isinstance(row, sqlite3.Row)
        assert row["seven"] == 7


@pytest.mark.green
def test_errors_keep_their_type_and_name_the_wrapped_call() -> None:
    with db.connect(":memory:") as conn:
        with pytest.raises(sqlite3.OperationalError, match="no such table") as info:
            conn.execute("SELECT * FROM missing")
        assert info.value.__notes__ == ["greenbridge façade: raised by Connection.execute()"]
        # Exception classes come out unchanged, so `except` clauses written against the façade
        # work; a class of async objects comes out as a façade that isinstance() understands.
        assert db.OperationalError is sqlite3.OperationalError
        assert db.Connection.__wrapped__ is aiosqlite.Connection
        assert isinstance(conn, db.Connection) and isinstance(conn.__wrapped__, db.Connection)
        assert issubclass(aiosqlite.Connection, db.Connection)


@pytest.mark.green
def test_error_from_a_module_function_names_the_module() -> None:
    module = types.ModuleType("drivermod")

    async def connect(dsn: str) -> None:
        await asyncio.sleep(0)
        raise ConnectionRefusedError(dsn)

    module.connect = connect  # type: ignore[attr-defined]
    with pytest.raises(ConnectionRefusedError) as info:
        gb.green_facade(module).connect("db://nowhere")
    assert info.value.__notes__ == ["greenbridge façade: raised by drivermod.connect()"]


def test_outside_green_raises_naming_the_call_and_starts_nothing(run_async: Run) -> None:
    async def main() -> list[str]:
        conn = gb.green_facade(await aiosqlite.connect(":memory:"))
        messages = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for attempt in (lambda: conn.execute("SELECT 1"), lambda: conn.__enter__()):
                    with pytest.raises(gb.NoGreenContext) as info:
                        attempt()
                    messages.append(str(info.value))
                gc.collect()
            assert [str(w.message) for w in caught] == []  # no "coroutine was never awaited"
        finally:
            await conn.__wrapped__.close()
        return messages

    execute, enter = run_async(main)
    assert execute.startswith("Connection.execute() (through a green façade) was called outside a green")
    assert "await gb.spawn_green(fn, ...)" in execute
    assert enter.startswith("Connection.__aenter__() (through a green façade)")


def test_facade_serves_sync_code_inside_an_asyncio_app(run_async: Run) -> None:
    def report() -> list[tuple[str, int]]:  # plain sync code
        with db.connect(":memory:") as conn:
            conn.execute("CREATE TABLE sales (who TEXT, amount INTEGER)")
            conn.executemany("INSERT INTO sales VALUES (?, ?)", [("ann", 3), ("bob", 4), ("ann", 5)])
            return list(conn.execute("SELECT who, sum(amount) FROM sales GROUP BY who ORDER BY who"))

    async def app() -> list[list[tuple[str, int]]]:
        return list(await asyncio.gather(gb.spawn_green(report), gb.spawn_green(report)))

    assert run_async(app) == [[("ann", 8), ("bob", 4)]] * 2


@pytest.mark.green
def test_sqlalchemy_async_engine_through_a_facade() -> None:
    # SQLAlchemy's asyncio API, used synchronously: its own greenlet bridge runs nested inside
    # the fiber (AsyncConnection.execute -> greenlet_spawn -> the aiosqlite driver).
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = gb.green_facade(create_async_engine("sqlite+aiosqlite:///:memory:"))
    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1), (2), (3)"))
            conn.commit()
            assert conn.execute(text("SELECT sum(x) FROM t")).scalar() == 6
            streamed = conn.stream(text("SELECT x FROM t ORDER BY x"))  # an AsyncResult
            assert [row.x for row in streamed] == [1, 2, 3]
    finally:
        engine.dispose()


# -- the rules, on a small async class ------------------------------------------------------------------


class Resource:
    """A small async object: a coroutine method, an async generator, an async CM, a sync part."""

    def __init__(self, record: list[str]) -> None:
        self.record = record
        self.size = 3
        self.child: Resource | None = None

    async def get(self, x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def fail(self) -> None:
        await asyncio.sleep(0)
        raise KeyError("boom")

    def plain(self, x: int) -> int:
        return x + 1

    def make_child(self) -> Resource:
        return Resource(self.record)

    async def wait_forever(self) -> None:
        await asyncio.Event().wait()

    async def items(self) -> AsyncIterator[int]:
        try:
            for i in range(self.size):
                await asyncio.sleep(0)
                yield i
        finally:
            self.record.append("items closed")

    async def __aenter__(self) -> str:
        self.record.append("enter")
        return "entered value"

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.record.append(f"exit {exc_type.__name__ if exc_type else None}")
        return exc_type is not None and issubclass(exc_type, LookupError)


class AsyncCounter:
    """An async iterator (``__aiter__`` returning self, ``__anext__``)."""

    def __init__(self, stop: int) -> None:
        self.n = 0
        self.stop = stop

    def __aiter__(self) -> AsyncCounter:
        return self

    async def __anext__(self) -> int:
        await asyncio.sleep(0)
        if self.n == self.stop:
            raise StopAsyncIteration
        self.n += 1
        return self.n


@pytest.mark.green
def test_coroutine_methods_become_plain_calls_and_sync_methods_stay() -> None:
    res = gb.green_facade(Resource([]))
    assert res.get(21) == 42
    assert res.plain(1) == 2
    assert res.size == 3
    assert res.get.__qualname__ == "Resource.get"
    assert repr(res).startswith("<green façade of <")


@pytest.mark.green
def test_async_objects_that_come_out_are_wrapped() -> None:
    res = gb.green_facade(Resource([]))
    child = res.make_child()  # a sync method returning an async object
    assert type(child) is gb.GreenFacade
    assert child.get(1) == 2
    res.child = Resource([])  # an attribute holding one
    assert type(res.child) is gb.GreenFacade
    assert res.child.get(2) == 4
    assert gb.green_facade(res) is res  # wrapping a façade again is a no-op
    # Every read makes a new façade; they stand for the same object.
    assert res.child is not res.child
    assert res.child == res.child == res.__wrapped__.child
    assert len({res.child, res.child}) == 1
    assert res.child != child
    assert {"get", "items", "__wrapped__"} <= set(dir(res))


@pytest.mark.green
def test_with_awaits_aenter_and_aexit_and_honours_suppression() -> None:
    record: list[str] = []
    res = gb.green_facade(Resource(record))
    with res as value:
        assert value == "entered value"
    with res:
        raise KeyError("suppressed by __aexit__")  # a LookupError: __aexit__ returns True
    with pytest.raises(ValueError), res:
        raise ValueError("not suppressed")
    assert record == ["enter", "exit None", "enter", "exit KeyError", "enter", "exit ValueError"]


@pytest.mark.green
def test_iteration_of_async_iterators_and_early_exit_closes_the_generator() -> None:
    record: list[str] = []
    res = gb.green_facade(Resource(record))
    assert list(res.items()) == [0, 1, 2]
    assert record == ["items closed"]
    for item in res.items():
        if item == 1:
            break
    gc.collect()
    assert record == ["items closed", "items closed"]
    assert list(gb.green_facade(AsyncCounter(3))) == [1, 2, 3]
    assert list(gb.green_facade(AsyncCounter(0))) == []


@pytest.mark.green
def test_errors_from_awaited_calls_carry_one_note() -> None:
    res = gb.green_facade(Resource([]))
    with pytest.raises(KeyError) as info:
        res.fail()
    assert info.value.__notes__ == ["greenbridge façade: raised by Resource.fail()"]


@pytest.mark.green
def test_cancellation_passes_through_without_notes() -> None:
    res = gb.green_facade(Resource([]))
    with pytest.raises(TimeoutError) as info:
        with gb.timeout(0.01):
            res.wait_forever()
    assert getattr(info.value, "__notes__", []) == []
    assert getattr(info.value.__context__, "__notes__", []) == []  # the CancelledError


@pytest.mark.green
def test_misuse_says_what_is_wrong() -> None:
    res = gb.green_facade(Resource([]))
    missing = r"'Resource' object \(behind a green façade\) has no attribute 'nope'"
    with pytest.raises(AttributeError, match=missing):
        res.nope  # noqa: B018
    counter = gb.green_facade(AsyncCounter(1))
    with pytest.raises(TypeError, match="not a context manager"), counter:
        pass
    with pytest.raises(TypeError, match="not iterable"):
        iter(gb.green_facade(Resource([])))
    with pytest.raises(TypeError, match=r"'AsyncCounter' object \(behind a green façade\) is not callable"):
        counter()


@pytest.mark.green
def test_sync_context_managers_and_iterables_pass_through() -> None:
    class Both:
        def __init__(self) -> None:
            self.items = [Resource([]), 5]

        async def noop(self) -> None:
            pass

        def __enter__(self) -> int:
            return 1

        def __exit__(self, *exc: object) -> None:
            return None

        def __iter__(self) -> Any:
            return iter(self.items)

    facade = gb.green_facade(Both())
    with facade as value:
        assert value == 1
    first, second = facade
    assert type(first) is gb.GreenFacade and second == 5


# -- shapes of async APIs (issue 11), each without a library ---------------------------------------


class Sessions:
    """Methods returning async context managers, awaitables that are also ones, and a factory."""

    def __init__(self, record: list[str]) -> None:
        self.record = record

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[str]:
        self.record.append("open")
        try:
            yield "entered"
        finally:
            self.record.append("close")

    def acquire(self) -> Acquire:
        return Acquire(self)

    async def release(self, item: object) -> None:
        self.record.append(f"release {type(item).__name__}")

    @classmethod
    def create(cls) -> Sessions:
        return cls([])


class Item:
    async def ping(self) -> str:
        return "pong"


class Acquire:
    """Like asyncpg's ``pool.acquire()``: ``await`` it, or ``async with`` it (releasing)."""

    def __init__(self, owner: Sessions) -> None:
        self.owner = owner
        self.item: Item | None = None

    def __await__(self) -> Generator[Any, None, Item]:
        self.owner.record.append("acquire")
        yield from asyncio.sleep(0).__await__()
        return Item()

    async def __aenter__(self) -> Item:
        self.item = await self
        return self.item

    async def __aexit__(self, *exc_info: object) -> None:
        await self.owner.release(self.item)


@pytest.mark.green
def test_a_method_returning_an_async_context_manager_is_entered_by_with() -> None:
    record: list[str] = []
    with gb.green_facade(Sessions(record)).session() as value:
        assert value == "entered"
        assert record == ["open"]
    assert record == ["open", "close"]


@pytest.mark.green
def test_an_awaitable_async_context_manager_works_both_ways() -> None:
    record: list[str] = []
    sessions = gb.green_facade(Sessions(record))
    with sessions.acquire() as item:  # async with: entered, released on exit
        assert item.ping() == "pong"
    assert record == ["acquire", "release Item"]
    item = sessions.acquire()  # await: the item itself, released by hand
    assert type(item) is gb.GreenFacade and item.ping() == "pong"
    sessions.release(item)  # the façade is unwrapped on the way back in
    assert record == ["acquire", "release Item"] * 2
    # Anywhere but right after `with`, the call is awaited, as `await` would be.
    pending = [sessions.acquire()]
    assert type(pending[0].__wrapped__) is Item


@pytest.mark.green
def test_facades_passed_back_in_are_unwrapped() -> None:
    seen: list[object] = []

    class Library:
        async def take(self, *items: object, key: object = None) -> None:
            seen.extend([*items, key])

    lib = gb.green_facade(Library())
    item = gb.green_facade(Item())
    lib.take(item, key=item)
    lib.attr = item
    assert seen == [item.__wrapped__, item.__wrapped__]
    assert all(type(x) is Item for x in seen) and type(lib.__wrapped__.attr) is Item  # type: ignore[attr-defined]


@pytest.mark.green
def test_coroutine_methods_made_by_wrappers_are_recognised() -> None:
    # asyncpg's PoolConnectionProxy: plain functions returning coroutines, marked by
    # functools.update_wrapper (``__wrapped__``) or asyncio's old marker.
    async def ping(self: object) -> str:
        return "pong"

    def forward(self: object) -> Coroutine[Any, Any, str]:
        return ping(self)

    proxy_type = type("Proxy", (), {"ping": functools.update_wrapper(forward, ping)})
    holder_type = type("Holder", (), {"get": lambda self: proxy_type(), "go": ping})
    proxy = gb.green_facade(holder_type()).get()
    assert type(proxy) is gb.GreenFacade
    assert proxy.ping() == "pong"


@pytest.mark.green
def test_facades_of_modules_and_classes_wrap_what_constructors_return() -> None:
    module = types.ModuleType("driver")
    module.Sessions = Sessions  # type: ignore[attr-defined]
    module.Error = KeyError  # type: ignore[attr-defined]
    driver = gb.green_facade(module)
    assert driver.Error is KeyError  # exception classes unchanged: `except driver.Error` works
    made = driver.Sessions([])
    assert type(made) is gb.GreenFacade and isinstance(made, driver.Sessions)
    with made.session() as value:
        assert value == "entered"
    assert type(driver.Sessions.create()) is gb.GreenFacade  # a class method's result too
    assert type(gb.green_facade(Item)()) is gb.GreenFacade
    assert repr(driver.Sessions) == f"<green façade of {Sessions!r}>"


# -- declared (typed) façades --------------------------------------------------------------------


class SyncResource(gb.GreenFacade[Resource]):
    get = gb.green_method(Resource.get)
    fail = gb.green_method(Resource.fail)

    @gb.green_method
    async def get_twice(res: Resource, x: int) -> list[int]:
        return [await res.get(x), await res.get(x)]


@pytest.mark.green
def test_declared_facade_methods_await_and_keep_the_rest() -> None:
    res = SyncResource(gb.green_facade(Resource([])))  # a façade passed in is unwrapped
    assert type(res.__wrapped__) is Resource
    assert res.get(21) == 42
    assert res.get_twice(1) == [2, 2]
    assert res.plain(1) == 2  # undeclared attributes still work at run time (as Any)
    with pytest.raises(KeyError) as info:
        res.fail()
    assert info.value.__notes__ == ["greenbridge façade: raised by Resource.fail()"]
    assert SyncResource.get.__name__ == "get" and res.get.__qualname__ == "Resource.get"
    assert isinstance(SyncResource.__dict__["get"], gb.green_method)


def test_declared_facade_outside_green_raises_and_starts_nothing(run_async: Run) -> None:
    async def main() -> str:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(gb.NoGreenContext) as info:
                SyncResource(Resource([])).get(1)
            gc.collect()
        assert [str(w.message) for w in caught] == []
        return str(info.value)

    assert run_async(main).startswith("Resource.get() (through a green façade) was called outside")
    with pytest.raises(TypeError, match="needs an async method"):
        gb.green_method(42)  # type: ignore[arg-type]
