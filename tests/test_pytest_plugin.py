"""The pytest plugin, tested from the outside: inner pytest sessions run with ``pytester``."""

from __future__ import annotations

import sys

import pytest

pytest_plugins = ["pytester"]

# An inner test module reporting, per test, whether it ran in a green fiber and on which loop.
PROBE = """
import asyncio
import pytest
import greenbridge as gb

def loop_kind():
    loop = asyncio.get_running_loop()
    if type(loop).__module__.startswith("uvloop"):
        return "uvloop"
    eager = getattr(asyncio, "eager_task_factory", None)
    return "asyncio+eager" if eager is not None and loop.get_task_factory() is eager else "asyncio"

@pytest.mark.green
def test_probe(tmp_path, gb_backend):
    assert gb.in_green()
    assert asyncio.get_running_loop().get_debug()
    assert tmp_path.is_dir()  # fixtures work as usual
    assert loop_kind() == gb_backend
    print(f"PROBE green {gb_backend}")

def test_fixture(run_green, gb_backend):
    assert not gb.in_green()
    assert run_green(loop_kind) == gb_backend
"""


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner sessions must not inherit the outer session's backend."""
    monkeypatch.delenv("GREENBRIDGE_BACKEND", raising=False)


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner session with this plugin alone (fast, and independent of other plugins)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        return pytester.runpytest_inprocess("-p", "greenbridge.pytest_plugin", *args)


def test_the_entry_point_registers_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PROBE)
    result = pytester.runpytest_inprocess("-s", "-v")  # plugins autoloaded, as users run it
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["greenbridge backends: asyncio", "plugins:*greenbridge-*"])


def test_green_marker_runs_the_test_in_a_fiber_on_the_default_loop(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PROBE)
    result = run_inner(pytester, "-s", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["greenbridge backends: asyncio", "*PROBE green asyncio*"])


EAGER = sys.version_info >= (3, 12)
ALL_BACKENDS = 3 if EAGER else 2  # what --greenbridge-backend=all runs on: eager tasks need 3.12


@pytest.mark.parametrize(
    "option, backends",
    [
        ("asyncio,uvloop", ["asyncio", "uvloop"]),
        (" uvloop , asyncio ", ["uvloop", "asyncio"]),
        ("all", ["asyncio", "asyncio+eager", "uvloop"] if EAGER else ["asyncio", "uvloop"]),
        pytest.param(
            "asyncio+eager,uvloop",
            ["asyncio+eager", "uvloop"],
            marks=pytest.mark.skipif(not EAGER, reason="eager tasks need Python 3.12"),
        ),
    ],
)
def test_several_backends_parametrize_every_greenbridge_test(
    pytester: pytest.Pytester, option: str, backends: list[str]
) -> None:
    pytester.makepyfile(PROBE + "\ndef test_plain():\n    pass\n")
    result = run_inner(pytester, "-v", f"--greenbridge-backend={option}")
    result.assert_outcomes(passed=2 * len(backends) + 1)
    names = ("probe", "fixture")
    expected = [f"*::test_{name}[[]{backend}[]] PASSED*" for name in names for backend in backends]
    # a test that uses no greenbridge fixture runs once
    result.stdout.fnmatch_lines_random([*expected, "*::test_plain PASSED*"])


@pytest.mark.skipif(EAGER, reason="Python 3.11 only: eager tasks need 3.12")
def test_eager_backend_is_refused_before_python_3_12(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PROBE)
    result = run_inner(pytester, "--greenbridge-backend=asyncio+eager")
    result.stderr.fnmatch_lines(["*asyncio+eager, which needs Python 3.12 or later*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_backend_from_environment_ini_and_option(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(PROBE)
    pytester.makeini("[pytest]\ngreenbridge_backend = uvloop\n")
    run_inner(pytester, "-s").stdout.fnmatch_lines(["*PROBE green uvloop*"])
    monkeypatch.setenv("GREENBRIDGE_BACKEND", "asyncio")  # the environment beats the ini file
    run_inner(pytester, "-s").stdout.fnmatch_lines(["*PROBE green asyncio*"])
    result = run_inner(pytester, "-s", "--greenbridge-backend=uvloop")  # the option beats both
    result.stdout.fnmatch_lines(["*PROBE green uvloop*"])


def test_a_test_can_pin_its_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("gb_backend", ["uvloop"])
        @pytest.mark.green
        def test_pinned(gb_backend):
            import asyncio
            assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        """
    )
    result = run_inner(pytester, "-v", "--greenbridge-backend=all")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*::test_pinned[[]uvloop[]] PASSED*"])


def test_a_bad_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run_inner(pytester, "--greenbridge-backend=trio")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--greenbridge-backend: expected asyncio, asyncio+eager, uvloop, a comma-separated list of "
         "them or 'all', got 'trio'"]
    )


def test_green_marker_on_modules_and_classes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        import greenbridge as gb

        pytestmark = pytest.mark.green

        def test_module_level():
            assert gb.in_green()

        class TestGreen:
            def test_method(self):
                assert gb.in_green()
        """
    )
    run_inner(pytester, "--greenbridge-backend=all").assert_outcomes(passed=2 * ALL_BACKENDS)


def test_a_failing_green_test_reports_its_own_frames(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        import greenbridge as gb

        def compute():
            gb.sleep(0)
            return 41

        @pytest.mark.green
        def test_wrong():
            value = compute()
            assert value == 42
        """
    )
    result = run_inner(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*def test_wrong():*", ">*assert value == 42", "E*assert 41 == 42"])
    result.stdout.no_fnmatch_line("*leaked*")


def test_async_def_with_the_green_marker_fails_clearly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.green
        async def test_coroutine():
            pass
        """
    )
    result = run_inner(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*@pytest.mark.green is for plain def tests, and test_coroutine is async def: drop the marker*"]
    )


LEAKY = """
import pytest
import greenbridge as gb

KEEP = []

def wait_forever():
    gb.sleep(3600)

def leak():
    coro = gb.spawn_green(wait_forever)
    coro.send(None)  # stepped by hand, never finished, kept alive past the loop
    KEEP.append(coro)

@pytest.mark.green
def test_leaks_in_a_green_test():
    leak()

def test_leaks_through_run_green(run_green):
    run_green(leak)

@pytest.mark.green
def test_next_one_starts_clean():
    pass
"""


def test_a_fiber_leak_fails_the_test_and_says_where_the_fiber_is(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    # A subprocess: the inner session ends with fibers it killed on purpose.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_leaks_in_a_green_test _*",
            "test_leaks_in_a_green_test leaked 1 green fiber(s): still alive after the event loop closed",
            "  fiber 1, suspended at:",
            '    File "*test_leaky.py", line 7, in wait_forever',
            "A fiber outlives its event loop when something still references it*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_through_run_green*",
            "the test leaked 1 green fiber(s): still alive after the event loop closed",
        ]
    )


def test_run_async_fixture_returns_the_result(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import greenbridge as gb

        def double(x):
            gb.sleep(0)
            return 2 * x

        def test_it(run_async):
            async def main():
                assert asyncio.get_running_loop().get_debug()
                return await gb.spawn_green(double, 21)

            assert run_async(main) == 42
        """
    )
    run_inner(pytester, "--greenbridge-backend=all").assert_outcomes(passed=ALL_BACKENDS)
