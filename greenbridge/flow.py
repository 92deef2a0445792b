"""Flows: byte streams for green code (Eio's ``Flow``), usable as ``io.RawIOBase`` objects.

``Source.read_into`` / ``read``, ``Sink.write``, ``TwoWay.shutdown`` / ``close``; helpers
``copy``, ``read_exact``, ``string_source``, ``buffer_sink``; adapters over asyncio's
``StreamReader`` / ``StreamWriter`` for code half-way through a port. Buffered parsing is
``greenbridge.BufReader`` / ``BufWriter``; network connections come from ``greenbridge.net``.
"""

from ._flow import Sink as Sink
from ._flow import Source as Source
from ._flow import TwoWay as TwoWay
from ._flow import buffer_sink as buffer_sink
from ._flow import copy as copy
from ._flow import read_exact as read_exact
from ._flow import sink_of_writer as sink_of_writer
from ._flow import source_of_reader as source_of_reader
from ._flow import string_source as string_source

__all__ = (
    "Sink",
    "Source",
    "TwoWay",
    "buffer_sink",
    "copy",
    "read_exact",
    "sink_of_writer",
    "source_of_reader",
    "string_source",
)
