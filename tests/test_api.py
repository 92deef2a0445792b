"""The public surface: every public name exported exactly once, documented, and importable."""

from __future__ import annotations

import importlib
import inspect

import pytest

import greenbridge as gb

PUBLIC_SUBMODULES = ("fiber", "flow", "net", "testing")

# DESIGN.md section 7: names users, examples and the porting guide rely on.
CONTRACT = (
    "run", "spawn_green", "await_from_green", "in_green", "as_async", "as_green", "enter",
    "iterate", "run_in_thread", "Switch", "protect", "sleep", "timeout", "with_timeout",
    "Promise", "Stream", "Mutex", "Semaphore", "Condition", "Event", "BufReader", "BufWriter",
    "BufferLimitExceeded", "NoGreenContext", "dump_fibers",
)  # fmt: skip


def test_all_is_a_sorted_tuple_without_duplicates() -> None:
    assert isinstance(gb.__all__, tuple)
    assert len(set(gb.__all__)) == len(gb.__all__)
    assert list(gb.__all__) == sorted(gb.__all__)


def test_every_exported_name_exists_and_nothing_public_is_left_out() -> None:
    for name in gb.__all__:
        assert hasattr(gb, name), name
    public = {
        name
        for name, value in vars(gb).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(gb.__all__)


def test_the_design_contract_is_exported() -> None:
    assert set(CONTRACT) <= set(gb.__all__)


@pytest.mark.parametrize("name", sorted(gb.__all__))
def test_every_public_name_is_documented(name: str) -> None:
    doc = inspect.getdoc(getattr(gb, name))
    assert doc and len(doc) > 40, f"{name} needs a docstring saying what it does and raises"


@pytest.mark.parametrize("module", PUBLIC_SUBMODULES)
def test_public_submodules_have_a_thin_documented_surface(module: str) -> None:
    mod = importlib.import_module(f"greenbridge.{module}")
    assert mod.__doc__
    exported = getattr(mod, "__all__", None)
    assert isinstance(exported, tuple) and len(set(exported)) == len(exported)
    for name in exported:
        obj = getattr(mod, name)
        assert inspect.getdoc(obj), f"greenbridge.{module}.{name} needs a docstring"


def test_errors_share_one_root() -> None:
    for name in gb.__all__:
        obj = getattr(gb, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, gb.GreenbridgeError), name
    assert issubclass(gb.NoGreenContext, RuntimeError)
