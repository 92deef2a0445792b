"""pytest plugin (registered through the ``pytest11`` entry point as ``greenbridge``).

* ``--greenbridge-backend=asyncio|uvloop`` (or the ``GREENBRIDGE_BACKEND`` environment variable)
  picks the event loop every greenbridge fixture and green test runs on.
* ``@pytest.mark.green`` runs a plain ``def`` test in a green fiber on a fresh loop (in asyncio
  debug mode) through ``gb.run``; the test fails if it leaves fibers running.
* Fixtures: ``gb_backend`` (the backend name), ``run_green(fn, *args, **kwargs)`` (``gb.run`` on
  that backend in debug mode), ``run_async(coro_fn, *args)`` (a coroutine function on a fresh
  loop of that backend, in debug mode).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from ._core import _live_fibers, _loop_factory, run

T = TypeVar("T")

BACKENDS = ("asyncio", "uvloop")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("greenbridge")
    group.addoption(
        "--greenbridge-backend",
        choices=BACKENDS,
        default=os.environ.get("GREENBRIDGE_BACKEND", "asyncio"),
        help="event loop for greenbridge fixtures and @pytest.mark.green tests (default: asyncio)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "green: run this plain def test in a green fiber on a fresh event loop (greenbridge)"
    )


def _backend(config: pytest.Config) -> str:
    return str(config.getoption("--greenbridge-backend"))


@pytest.fixture
def gb_backend(request: pytest.FixtureRequest) -> str:
    """The event loop backend the suite runs on: "asyncio" or "uvloop"."""
    return _backend(request.config)


def _check_no_fibers_left(what: str) -> None:
    left = _live_fibers()
    if left:
        raise AssertionError(f"{what} left {len(left)} green fiber(s) running: {left!r}")


@pytest.fixture
def run_green(gb_backend: str) -> Iterator[Callable[..., Any]]:
    """``run_green(fn, *args, **kwargs)``: ``gb.run`` on the selected backend, debug mode on."""

    def runner(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return run(fn, *args, backend=gb_backend, debug=True, **kwargs)

    yield runner
    _check_no_fibers_left("the test")


@pytest.fixture
def run_async(gb_backend: str) -> Iterator[Callable[..., Any]]:
    """``run_async(coro_fn, *args)``: run a coroutine function on a fresh loop of the selected
    backend in debug mode, and return its result."""

    def runner(coro_fn: Callable[..., Awaitable[T]], /, *args: Any) -> T:
        async def main() -> T:
            return await coro_fn(*args)

        with asyncio.Runner(debug=True, loop_factory=_loop_factory(gb_backend)) as r:
            return r.run(main())

    yield runner
    _check_no_fibers_left("the test")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if pyfuncitem.get_closest_marker("green") is None:
        return None
    test = pyfuncitem.obj
    if asyncio.iscoroutinefunction(test):
        raise TypeError("@pytest.mark.green is for plain def tests; this one is async def")
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    run(test, backend=_backend(pyfuncitem.config), debug=True, **kwargs)
    _check_no_fibers_left(pyfuncitem.name)
    return True
