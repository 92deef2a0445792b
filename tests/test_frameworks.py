"""Sync-style code in FastAPI and Starlette: ``@gb.as_async`` on endpoints and on generator
dependencies, SQLAlchemy's sync ORM over async drivers with lazy loading, served by uvicorn
in-process on 127.0.0.1 and called through httpx (plain and typed façades)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _asgi import serving
from _services import Postgres
from fastapi import Depends, FastAPI
from sqlalchemy import Engine, ForeignKey, create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import greenbridge as gb

Run = Callable[..., Any]


# -- as_async on generator functions ---------------------------------------------------------------


def _where() -> str:
    on_loop = threading.current_thread() is threading.main_thread()
    return f"{'green' if gb.in_green() else 'not green'}, {'loop thread' if on_loop else 'other thread'}"


def test_a_generator_becomes_an_async_generator_run_in_fibers(run_async: Run) -> None:
    record: list[str] = []

    @gb.as_async
    def numbers(n: int) -> Iterator[int]:
        try:
            for i in range(n):
                record.append(f"step {i}: {_where()}")
                received = yield i
                if received is not None:
                    record.append(f"got {received}")
        finally:
            record.append(f"finally: {_where()}")

    async def main() -> list[int]:
        assert numbers.__name__ == "numbers"
        items = [i async for i in numbers(2)]
        agen = numbers(5)
        assert await agen.__anext__() == 0
        assert await agen.asend("x") == 1
        await agen.aclose()  # early: the generator's finally runs in a fiber
        return items

    assert run_async(main) == [0, 1]
    assert record == [
        "step 0: green, loop thread",
        "step 1: green, loop thread",
        "finally: green, loop thread",
        "step 0: green, loop thread",
        "got x",
        "step 1: green, loop thread",
        "finally: green, loop thread",
    ]


def test_athrow_reaches_the_generator_and_its_handler(run_async: Run) -> None:
    @gb.as_async
    def guarded() -> Iterator[str]:
        try:
            yield "session"
        except KeyError as exc:
            yield f"handled {exc.args[0]} ({_where()})"

    async def main() -> tuple[str, str]:
        agen = guarded()
        first = await agen.__anext__()
        second = await agen.athrow(KeyError("k"))
        await agen.aclose()
        return first, second

    assert run_async(main) == ("session", "handled k (green, loop thread)")


def test_an_exception_the_generator_does_not_handle_propagates(run_async: Run) -> None:
    @gb.as_async
    def one() -> Iterator[int]:
        yield 1

    async def main() -> None:
        agen = one()
        await agen.__anext__()
        with pytest.raises(ValueError, match="from the endpoint"):
            await agen.athrow(ValueError("from the endpoint"))
        with pytest.raises(StopAsyncIteration):
            await agen.__anext__()

    run_async(main)


# -- SQLAlchemy's sync ORM over async drivers, in FastAPI --------------------------------------------


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list[Book]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


class SyncClient(gb.GreenFacade[httpx.AsyncClient]):
    get = gb.green_method(httpx.AsyncClient.get)


def _library_app(engine: Engine, record: list[str]) -> FastAPI:
    app = FastAPI()

    @gb.as_async
    def get_db() -> Generator[Session, None, None]:
        with Session(engine) as session:
            yield session
        record.append(f"session closed: {_where()}")

    @app.get("/authors/{name}/books")
    @gb.as_async
    def books(name: str, db: Session = Depends(get_db)) -> list[str]:  # noqa: B008
        record.append(f"endpoint: {_where()}")
        author = db.scalars(select(Author).where(Author.name == name)).one()
        return sorted(book.title for book in author.books)  # a lazy load, in the fiber

    return app


def _library_round_trip(engine: Engine) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)  # a plain sync engine with an async driver, in a fiber
    with Session(engine) as session:
        session.add(Author(name="ann", books=[Book(title="one"), Book(title="two")]))
        session.commit()
    record: list[str] = []
    app = _library_app(engine, record)
    with serving(app) as url, gb.green_facade(httpx.AsyncClient(base_url=url)) as client:
        response = SyncClient(client).get("/authors/ann/books")
        assert (response.status_code, response.json()) == (200, ["one", "two"])
    assert record == ["endpoint: green, loop thread", "session closed: green, loop thread"]
    engine.dispose()


@pytest.mark.green
def test_fastapi_sync_orm_over_aiosqlite(tmp_path: Path) -> None:
    _library_round_trip(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'library.db'}"))


@pytest.mark.green
def test_fastapi_sync_orm_over_asyncpg(postgres_server: Postgres) -> None:
    server = postgres_server
    url = f"postgresql+asyncpg://{server.user}@{server.host}:{server.port}/{server.dbname}"
    _library_round_trip(create_engine(url))


def test_objects_loaded_by_an_async_session_lazy_load_in_spawn_green(tmp_path: Path, run_async: Run) -> None:
    async def main() -> list[str]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
        try:
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with AsyncSession(engine) as session:
                session.add(Author(name="ann", books=[Book(title="b"), Book(title="a")]))
                await session.commit()
                author = (await session.scalars(select(Author))).one()
                # author.books here (asyncio code) would raise MissingGreenlet; in a fiber it loads.
                return await gb.spawn_green(lambda: sorted(book.title for book in author.books))
        finally:
            await engine.dispose()

    assert run_async(main) == ["a", "b"]


@pytest.mark.green
def test_starlette_endpoint_with_as_async() -> None:
    @gb.as_async
    def hello(request: Request) -> JSONResponse:
        gb.sleep(0)  # green code: suspends the fiber, not the loop
        return JSONResponse({"where": _where(), "task": asyncio.current_task() is not None})

    app = Starlette(routes=[Route("/", hello)])
    with serving(app) as url, gb.green_facade(httpx.AsyncClient(base_url=url)) as client:
        assert client.get("/").json() == {"where": "green, loop thread", "task": True}
