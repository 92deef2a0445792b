"""Helpers shared by the core, switch and fiber tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import greenbridge as gb


async def cancel_once_started(green: Callable[[asyncio.Event], object]) -> asyncio.Task[object]:
    """Run ``green(started)`` in a Task of its own; once it sets ``started``, cancel that Task,
    check that it ends cancelled, and return it."""
    started = asyncio.Event()
    task = asyncio.create_task(gb.spawn_green(green, started))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return task
