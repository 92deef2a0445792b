"""greenbridge: direct-style (green) code and asyncio code together, on one thread, one loop.

The two crossing points are ``await_from_green`` (green code waits for an asyncio awaitable) and
``spawn_green`` (asyncio code runs a direct-style function); ``run`` starts a program.
"""

from ._async_adapters import as_async as as_async
from ._async_adapters import enter as enter
from ._async_adapters import iterate as iterate
from ._async_adapters import run_in_thread as run_in_thread
from ._blocking import patch_blocking as patch_blocking
from ._blocking import unpatch_blocking as unpatch_blocking
from ._bufio import BufReader as BufReader
from ._bufio import BufWriter as BufWriter
from ._cancel import protect as protect
from ._core import as_green as as_green
from ._core import await_from_green as await_from_green
from ._core import in_green as in_green
from ._core import run as run
from ._core import spawn_green as spawn_green
from ._diagnostics import dump_fibers as dump_fibers
from ._errors import BufferLimitExceeded as BufferLimitExceeded
from ._errors import BusyResourceError as BusyResourceError
from ._errors import ClosedResourceError as ClosedResourceError
from ._errors import GreenbridgeError as GreenbridgeError
from ._errors import NoGreenContext as NoGreenContext
from ._errors import SwitchFinishedError as SwitchFinishedError
from ._errors import WouldBlock as WouldBlock
from ._facade import GreenFacade as GreenFacade
from ._facade import green_facade as green_facade
from ._facade import green_method as green_method
from ._switch import Switch as Switch
from ._sync import Condition as Condition
from ._sync import Event as Event
from ._sync import Mutex as Mutex
from ._sync import Promise as Promise
from ._sync import Semaphore as Semaphore
from ._sync import Stream as Stream
from ._time import sleep as sleep
from ._time import timeout as timeout
from ._time import with_timeout as with_timeout

__version__ = "0.1.0"

# Public submodules, reachable as attributes (``gb.fiber.first``) without importing them by hand;
# imported on first use so that ``import greenbridge`` stays as light as it was.
_SUBMODULES = frozenset({"fiber", "flow", "net", "testing"})


def __getattr__(name: str) -> object:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = (
    "BufReader",
    "BufWriter",
    "BufferLimitExceeded",
    "BusyResourceError",
    "ClosedResourceError",
    "Condition",
    "Event",
    "GreenFacade",
    "GreenbridgeError",
    "Mutex",
    "NoGreenContext",
    "Promise",
    "Semaphore",
    "Stream",
    "Switch",
    "SwitchFinishedError",
    "WouldBlock",
    "as_async",
    "as_green",
    "await_from_green",
    "dump_fibers",
    "enter",
    "green_facade",
    "green_method",
    "in_green",
    "iterate",
    "patch_blocking",
    "protect",
    "run",
    "run_in_thread",
    "sleep",
    "spawn_green",
    "timeout",
    "unpatch_blocking",
    "with_timeout",
)
