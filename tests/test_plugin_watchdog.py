"""A hung green test on uvloop fails on time: the plugin's watchdog stands in for pytest-timeout's
signal, which cannot interrupt uvloop's waiting loop. Inner sessions run with ``pytester``."""

from __future__ import annotations

import time

import pytest

pytest_plugins = ["pytester"]

HUNG = """
import asyncio
import pytest
import greenbridge as gb

@pytest.mark.green
@pytest.mark.timeout(1)
def test_waits_forever():
    gb.await_from_green(asyncio.get_running_loop().create_future())

@pytest.mark.green
@pytest.mark.timeout(1)
@pytest.mark.skipif("{backend}" != "uvloop", reason="the watchdog's second cancellation: uvloop only")
def test_swallows_the_first_cancellation():
    try:
        gb.await_from_green(asyncio.get_running_loop().create_future())
    except asyncio.CancelledError:
        pass
    gb.await_from_green(asyncio.get_running_loop().create_future())

@pytest.mark.green
def test_quick():
    gb.sleep(0)
"""


@pytest.mark.parametrize("backend", ["uvloop", "asyncio"])
@pytest.mark.timeout(45)
def test_a_hung_green_test_fails_on_time(
    pytester: pytest.Pytester, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A subprocess: a hung loop must not be able to take the outer session with it. The plugins
    # (greenbridge's, pytest-timeout) are autoloaded there, as users run them.
    monkeypatch.delenv("GREENBRIDGE_BACKEND", raising=False)
    pytester.makepyfile(HUNG.replace("{backend}", backend))
    started = time.monotonic()
    result = pytester.runpytest_subprocess(f"--greenbridge-backend={backend}", "-p", "no:cacheprovider")
    elapsed = time.monotonic() - started
    hung = 2 if backend == "uvloop" else 1
    result.assert_outcomes(passed=1, failed=hung, skipped=2 - hung)
    # Counted in the failure reports themselves: the short summary ("FAILED ...") repeats the
    # message, in full or cut to the terminal's width depending on the environment (CI=true).
    lines = result.stdout.lines
    reports = [line for line in lines if "Timeout (>1.0s) from" in line and not line.startswith("FAILED ")]
    assert len(reports) == hung, result.stdout.str()
    assert elapsed < 30  # 1 s timeouts (and a second cancellation), not a hang
