"""Fixtures shared by the test modules: the real servers some tests need, and TLS contexts."""

from __future__ import annotations

import gc
import ssl
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture(scope="session")
def ca() -> Any:
    """A certificate authority of trustme's (skips when trustme is missing)."""
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture
def server_context(ca: Any) -> ssl.SSLContext:
    """A server context with a certificate for ``localhost`` and ``127.0.0.1``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def client_context(ca: Any) -> ssl.SSLContext:
    """A client context that trusts ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze everything collection imported (the test libraries are large: SQLAlchemy, FastAPI,
    psycopg...) into the collector's permanent generation. The leak checks that count live fibers
    and greenlets with ``gc.get_objects()`` after every example, and their ``gc.collect()``,
    then scan only what the tests themselves create, instead of the whole heap each time."""
    gc.collect()
    gc.freeze()
