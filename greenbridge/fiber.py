"""Fiber combinators for green code (Eio's ``Fiber`` module): run functions concurrently.

Each combinator runs its functions in fibers on a private ``gb.Switch``, so the switch's rules
hold: it returns only once every fiber it started has finished; the first failure cancels the
others and is raised (an ``ExceptionGroup`` when several fail); cancelling the caller cancels
them all. Fibers start in argument order, the next time the caller suspends (see "Scheduling
order of fork" in ``gb.Switch``), so runs are deterministic.

``first`` and ``any`` race their functions: the first to return a value wins and the others are
cancelled (the winner calls ``sw.cancel_fibers()``: the combinators use only ``Switch``'s public
API, so a race of your own is written the same way). A value already obtained is never lost to a
later cancellation: if the caller is cancelled while the losers are being cancelled, the winner's
value is returned all the same and the caller's cancellation is delivered at its next suspension
point (it is re-armed with ``task.uncancel(); task.cancel()``). Caveat before Python 3.13:
``uncancel()`` does not withdraw a re-armed cancellation, so if it came from an
``asyncio.timeout``/``gb.timeout`` block that is left without suspending again, it still surfaces
at the next suspension after the block.
"""

from ._cancel import await_cancel as await_cancel
from ._cancel import check as check
from ._cancel import yield_ as yield_
from ._fiber import all as all
from ._fiber import any as any
from ._fiber import both as both
from ._fiber import first as first
from ._fiber import map as map
from ._fiber import pair as pair

__all__ = ("all", "any", "await_cancel", "both", "check", "first", "map", "pair", "yield_")
