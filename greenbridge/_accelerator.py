"""The optional C accelerator, ``_speedups.c``: how the modules it speeds up get it.

``_core`` (await_from_green), ``_control`` (``_park``, ``_resume``), ``_receive_buffer``
(``ReceiveBuffer``) and ``_waiter`` (``Waiter``, and ``WakeBatch`` for ``_wake_batch``) each keep
their Python implementation and take the C one from ``speedups()`` when it is there.
GREENBRIDGE_NO_SPEEDUPS=1 keeps the pure-Python path (the test suite runs both); where the
extension could not be built, the same.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ("speedups",)


def speedups() -> Any | None:
    """The ``_speedups`` extension module, or None: not built, or GREENBRIDGE_NO_SPEEDUPS set."""
    if os.environ.get("GREENBRIDGE_NO_SPEEDUPS"):
        return None
    try:
        from . import _speedups  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        return None
    return _speedups
