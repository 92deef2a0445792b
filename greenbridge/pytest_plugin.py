"""pytest plugin (registered through the ``pytest11`` entry point as ``greenbridge``).

Tests
-----
* ``@pytest.mark.green`` runs a plain ``def`` test in a green fiber on a fresh event loop, in
  asyncio's debug mode, through ``gb.run``; fixtures are set up outside the loop, as for any
  test. Works on functions, classes (``pytestmark`` on the class) and whole modules.
* A test fails when it leaves green fibers alive after its loop closed (a fiber leak): the
  failure lists each leaked fiber with the frames where it is suspended, and the leaked fibers
  are then killed so that the tests after it start clean.

The backend
-----------
``--greenbridge-backend`` picks the event loop: ``asyncio``, ``asyncio+eager`` (asyncio's loop
with ``asyncio.eager_task_factory``, Python 3.12+), ``uvloop``, or several --
``asyncio,uvloop`` or ``all`` (every backend this Python has) -- to run every greenbridge test
once per backend in the same session (the tests are parametrized, with ids such as
``test_x[uvloop]``). Default, in order:
the option, the ``GREENBRIDGE_BACKEND`` environment variable, the ``greenbridge_backend`` ini
setting, ``asyncio``. A single test can pin its backend with
``@pytest.mark.parametrize("gb_backend", ["uvloop"])``.

Fixtures
--------
* ``gb_backend`` -- the backend this test runs on: ``"asyncio"``, ``"asyncio+eager"`` or
  ``"uvloop"``.
* ``run_green(fn, *args, **kwargs)`` -- ``gb.run`` on that backend, in debug mode; returns the
  result.
* ``run_async(coro_fn, *args)`` -- runs a coroutine function on a fresh loop of that backend,
  in debug mode; returns the result.

Both fixtures check for fiber leaks when the test ends (a leak is then an error at teardown).

Timeouts on uvloop
------------------
pytest-timeout's signal cannot interrupt uvloop's waiting loop, so a hung green test on uvloop
would never end. For those tests the plugin takes pytest-timeout's timeout over: a watchdog thread
cancels the test's Task when the time is up (again every second if the test swallows it), and the
test fails with "Timeout (>Ns) from greenbridge's watchdog".
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from greenlet import GreenletExit, greenlet

from ._core import BACKENDS, _live_fibers, _loop_factory, run
from ._diagnostics import _describe_leaked

__all__ = ("BACKENDS",)

T = TypeVar("T")

_EAGER_AVAILABLE = hasattr(asyncio, "eager_task_factory")  # Python 3.12+

_OPTION = "--greenbridge-backend"
_ENV = "GREENBRIDGE_BACKEND"
_INI = "greenbridge_backend"

_LEAK_HINT = (
    "A fiber outlives its event loop when something still references it after the loop closed: "
    "a spawn_green() coroutine stepped by hand and kept, or a greenlet switched into from outside "
    "its Task. Await every spawn_green() to its end (or run fibers on a gb.Switch, which waits "
    "for them). The leaked fibers have been killed (GreenletExit) so that later tests start clean."
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("greenbridge")
    group.addoption(
        _OPTION,
        metavar="BACKENDS",
        default=None,
        help=(
            "event loop(s) for greenbridge fixtures and @pytest.mark.green tests: asyncio, "
            "asyncio+eager (3.12+), uvloop, a comma-separated list, or 'all' (what this Python has) "
            f"(default: ${_ENV}, else the {_INI} ini value, else asyncio)"
        ),
    )
    parser.addini(_INI, "default event loop(s) for greenbridge tests (see --greenbridge-backend)")


def _parse_backends(value: str, source: str) -> tuple[str, ...]:
    if value.strip() == "all":
        # Every backend this interpreter has: eager tasks need 3.12, uvloop its package.
        return tuple(
            name
            for name in BACKENDS
            if (name != "asyncio+eager" or _EAGER_AVAILABLE)
            and (name != "uvloop" or importlib.util.find_spec("uvloop") is not None)
        )
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    unknown = [name for name in names if name not in BACKENDS]
    if not names or unknown:
        raise pytest.UsageError(
            f"{source}: expected asyncio, asyncio+eager, uvloop, a comma-separated list of them "
            f"or 'all', got {value!r}"
        )
    if "asyncio+eager" in names and not _EAGER_AVAILABLE:
        raise pytest.UsageError(f"{source} asks for asyncio+eager, which needs Python 3.12 or later")
    if "uvloop" in names and importlib.util.find_spec("uvloop") is None:
        raise pytest.UsageError(f"{source} asks for uvloop, which is not installed: pip install uvloop")
    return names


def _configured_backends(config: pytest.Config) -> tuple[str, ...]:
    """The backends the session runs on, decided once per session."""
    cached: tuple[str, ...] | None = getattr(config, "_greenbridge_backends", None)
    if cached is not None:
        return cached
    option = config.getoption(_OPTION)
    if option is not None:
        backends = _parse_backends(option, _OPTION)
    elif os.environ.get(_ENV):
        backends = _parse_backends(os.environ[_ENV], f"${_ENV}")
    elif config.getini(_INI):
        backends = _parse_backends(str(config.getini(_INI)), f"ini setting {_INI}")
    else:
        backends = ("asyncio",)
    config._greenbridge_backends = backends  # type: ignore[attr-defined]
    return backends


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "green: run this plain def test in a green fiber on a fresh event loop (greenbridge)"
    )
    _configured_backends(config)  # a bad value is a usage error before collection


def pytest_report_header(config: pytest.Config) -> str:
    return "greenbridge backends: " + ", ".join(_configured_backends(config))


def _is_green(collector: pytest.Collector, obj: object) -> bool:
    own = getattr(obj, "pytestmark", ())
    return collector.get_closest_marker("green") is not None or any(m.name == "green" for m in own)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    # A green test needs the gb_backend fixture (so that it can be parametrized per backend)
    # even when it does not ask for it; add it before pytest computes the fixture closure.
    if isinstance(collector, (pytest.Module, pytest.Class)) and collector.istestfunction(obj, name):
        if _is_green(collector, obj):
            pytest.mark.usefixtures("gb_backend")(obj)


def _parametrized_by_user(metafunc: pytest.Metafunc) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [part.strip() for part in names.split(",")]
        if "gb_backend" in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends = _configured_backends(metafunc.config)
    if len(backends) > 1 and "gb_backend" in metafunc.fixturenames and not _parametrized_by_user(metafunc):
        metafunc.parametrize("gb_backend", backends, indirect=True, ids=backends)


@pytest.fixture
def gb_backend(request: pytest.FixtureRequest) -> str:
    """The event loop backend this test runs on: "asyncio", "asyncio+eager" or "uvloop"."""
    param: str | None = getattr(request, "param", None)
    return param if param is not None else _configured_backends(request.config)[0]


# -- fiber leaks -----------------------------------------------------------------------------------


def _fiber_ids() -> set[int]:
    return {id(fiber) for fiber in _live_fibers()}


def _kill(fibers: list[greenlet]) -> None:
    for fiber in fibers:
        try:
            fiber.throw(GreenletExit)
        except Exception:  # best effort: a dying fiber may raise on its way out
            pass


def _leaked(before: set[int]) -> list[greenlet]:
    return [fiber for fiber in _live_fibers() if id(fiber) not in before]


def _check_no_fiber_leak(before: set[int], what: str) -> None:
    """Fail (``pytest.fail``) when fibers not alive at ``before`` are alive now; kill them."""
    leaked = _leaked(before)
    if not leaked:
        return
    report = "\n".join(_describe_leaked(number, fiber) for number, fiber in enumerate(leaked, 1))
    _kill(leaked)
    pytest.fail(
        f"{what} leaked {len(leaked)} green fiber(s): still alive after the event loop closed\n"
        f"{report}\n{_LEAK_HINT}",
        pytrace=False,
    )


@pytest.fixture
def run_green(gb_backend: str) -> Iterator[Callable[..., Any]]:
    """``run_green(fn, *args, **kwargs)``: ``gb.run`` on the selected backend, debug mode on.

    Fails the test at teardown when a green fiber is left alive (see the module docstring)."""
    before = _fiber_ids()

    def runner(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return run(fn, *args, backend=gb_backend, debug=True, **kwargs)

    yield runner
    _check_no_fiber_leak(before, "the test")


@pytest.fixture
def run_async(gb_backend: str) -> Iterator[Callable[..., Any]]:
    """``run_async(coro_fn, *args)``: run a coroutine function on a fresh loop of the selected
    backend in debug mode, and return its result. Fails the test at teardown when a green fiber
    is left alive."""
    before = _fiber_ids()

    def runner(coro_fn: Callable[..., Awaitable[T]], /, *args: Any) -> T:
        async def main() -> T:
            return await coro_fn(*args)

        with asyncio.Runner(debug=True, loop_factory=_loop_factory(gb_backend)) as r:
            return r.run(main())

    yield runner
    _check_no_fiber_leak(before, "the test")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if pyfuncitem.get_closest_marker("green") is None:
        return None
    test = pyfuncitem.obj
    if asyncio.iscoroutinefunction(test):
        pytest.fail(
            f"@pytest.mark.green is for plain def tests, and {pyfuncitem.name} is async def: "
            f"drop the marker (and use an async test plugin), or make the test a plain def",
            pytrace=False,
        )
    backend = pyfuncitem.funcargs.get("gb_backend") or _configured_backends(pyfuncitem.config)[0]
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    before = _fiber_ids()
    watchdog = _Watchdog.for_item(pyfuncitem) if backend == "uvloop" else None
    try:
        if watchdog is None:
            run(test, backend=str(backend), debug=True, **kwargs)
        else:
            with watchdog:
                run(watchdog.watching(test), backend=str(backend), debug=True, **kwargs)
    except BaseException:
        _kill(_leaked(before))  # the test's own failure is the one worth reporting
        if watchdog is not None and watchdog.expired:
            pytest.fail(
                f"Timeout (>{watchdog.seconds}s) from greenbridge's watchdog: the test's Task was "
                f"cancelled (on uvloop, pytest-timeout's signal cannot interrupt a waiting loop)",
                pytrace=False,
            )
        raise
    _check_no_fiber_leak(before, pyfuncitem.name)
    return True


# -- timeouts on uvloop -----------------------------------------------------------------------------
#
# pytest-timeout's default method is SIGALRM, whose Python handler raises inside whatever runs
# next in the main thread. A green test waiting on uvloop is inside uvloop's C loop: the failure
# surfaces (if at all) inside a loop callback, where uvloop reports it as an unhandled callback
# error, and the run does not end. So for green tests on uvloop the plugin takes the timeout
# over: pytest-timeout is switched off for the test (``timeout(0)``, added at collection) and a
# watchdog thread cancels the test's Task when the time is up, through the loop's thread-safe
# entry; the test then fails with "Timeout". A test that swallows that cancellation is cancelled
# again every second.

_WATCHDOG_KEY = pytest.StashKey[float]()


def _pytest_timeout_seconds(item: pytest.Item) -> float:
    try:
        import pytest_timeout
    except ImportError:
        return 0.0
    if not item.config.pluginmanager.hasplugin("timeout"):
        return 0.0
    try:
        settings = pytest_timeout._get_item_settings(item)
    except Exception:  # a private helper of pytest-timeout: without it, no watchdog
        return 0.0
    return float(settings.timeout or 0.0)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("gb_backend") if callspec is not None else None
        backend = backend or _configured_backends(config)[0]
        if backend != "uvloop" or item.get_closest_marker("green") is None:
            continue
        seconds = _pytest_timeout_seconds(item)
        if seconds > 0:
            item.stash[_WATCHDOG_KEY] = seconds
            item.add_marker(pytest.mark.timeout(0), append=False)  # ours now, see above


class _Watchdog:
    """Cancels the test's Task from a thread once ``seconds`` have passed (see above)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="greenbridge watchdog", daemon=True)

    @classmethod
    def for_item(cls, item: pytest.Item) -> _Watchdog | None:
        seconds = item.stash.get(_WATCHDOG_KEY, 0.0)
        return cls(seconds) if seconds > 0 else None

    def watching(self, test: Callable[..., T]) -> Callable[..., T]:
        """``test``, recording the loop and Task it runs in before it starts."""

        def watched(**kwargs: Any) -> T:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            return test(**kwargs)

        return watched

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        while True:
            loop, task = self._loop, self._task
            if loop is not None and task is not None:
                try:
                    loop.call_soon_threadsafe(self._expire, task)
                except RuntimeError:  # the loop has closed meanwhile: the test is over
                    return
            if self._done.wait(1.0):
                return

    def _expire(self, task: asyncio.Task[Any]) -> None:
        self.expired = True
        task.cancel("greenbridge watchdog: the test timed out")
