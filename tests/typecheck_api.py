"""Checked by mypy (the tox ``type`` environment), never run: the crossing points are typed.

Each ``# type: ignore[...]`` below marks a call mypy must reject; ``warn_unused_ignores`` is on
for this module, so if mypy ever stopped catching one of those mistakes, the check would fail.
"""

from __future__ import annotations

import asyncio
from typing import assert_type

import greenbridge as gb


def add(a: int, b: str) -> float:
    return a + len(b)


async def fetch(url: str, *, retries: int = 0) -> bytes:
    await asyncio.sleep(0)
    return url.encode() * (retries + 1)


async def crossing_points() -> None:
    assert_type(await gb.spawn_green(add, 1, "x"), float)
    await gb.spawn_green(add, "1", "x")  # type: ignore[arg-type]
    await gb.spawn_green(add, 1)  # type: ignore[call-arg]
    await gb.spawn_green(add, 1, b=2)  # type: ignore[arg-type]


def green_side() -> None:
    assert_type(gb.await_from_green(fetch("u")), bytes)
    assert_type(gb.run(add, 1, "x"), float)
    gb.await_from_green(fetch)  # type: ignore[arg-type]


@gb.as_async
def compute(a: int, b: str) -> float:
    return add(a, b)


@gb.as_green
async def download(url: str, *, retries: int = 0) -> bytes:
    return await fetch(url, retries=retries)


async def decorated() -> None:
    assert_type(await compute(1, "x"), float)
    await compute("1", "x")  # type: ignore[arg-type]
    assert_type(gb.run_in_thread(add, 1, "x"), float)
    gb.run_in_thread(add, 1, 2)  # type: ignore[arg-type]


def decorated_green() -> None:
    assert_type(download("u", retries=2), bytes)
    download("u", retries="2")  # type: ignore[arg-type]
    assert_type(gb.with_timeout(1.0, add, 1, "x"), float)


def keyword_arguments_for_fn() -> None:
    # One rule: every API taking ``fn, *args`` passes keyword arguments on to ``fn``, typed.
    assert_type(gb.with_timeout(1.0, add, 1, b="x"), float)
    gb.with_timeout(1.0, add, 1, c="x")  # type: ignore[call-arg]
    assert_type(gb.protect(add, a=1, b="x"), float)
    assert_type(gb.run_in_thread(add, 1, b="x"), float)
    gb.run_in_thread(add, 1, b=2)  # type: ignore[arg-type]
