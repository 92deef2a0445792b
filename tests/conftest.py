"""Session fixtures shared by the test modules: the real servers some tests need."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from _services import Postgres, Redis, start_postgres, start_redis


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """A private PostgreSQL on 127.0.0.1 for the session (skips when it cannot be had)."""
    with start_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    """A private redis on 127.0.0.1 for the session (skips when it cannot be had)."""
    with start_redis() as server:
        yield server


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze everything collection imported (the test libraries are large: SQLAlchemy, FastAPI,
    psycopg...) into the collector's permanent generation. The leak checks that count live fibers
    and greenlets with ``gc.get_objects()`` after every example, and their ``gc.collect()``,
    then scan only what the tests themselves create, instead of the whole heap each time."""
    gc.collect()
    gc.freeze()
