"""Session fixtures shared by the test modules: the real servers some tests need."""

from __future__ import annotations

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
