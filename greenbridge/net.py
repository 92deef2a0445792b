"""Networking for green code: TCP, Unix sockets, TLS and UDP, on asyncio transports directly.

``connect`` / ``connect_unix`` return a ``Connection`` (a ``flow.TwoWay``); ``listen`` /
``listen_unix`` return a ``Listener``; ``accept_fork`` and ``run_server`` serve connections in
fibers of their own; ``datagram_socket`` is UDP. Network failures are the builtin
``ConnectionError`` family; using a closed resource raises ``greenbridge.ClosedResourceError``;
two fibers reading (writing, accepting, receiving) on one resource at once,
``greenbridge.BusyResourceError``.

The implementation is split by job: ``_endpoints`` (resolve, connect, listen, accept),
``_serve`` (``accept_fork``, ``run_server``), ``_udp``, and ``_protocol`` (the connection flow).
"""

from ._endpoints import DEFAULT_BACKLOG as DEFAULT_BACKLOG
from ._endpoints import DEFAULT_HANDSHAKE_TIMEOUT as DEFAULT_HANDSHAKE_TIMEOUT
from ._endpoints import Listener as Listener
from ._endpoints import connect as connect
from ._endpoints import connect_unix as connect_unix
from ._endpoints import getaddrinfo as getaddrinfo
from ._endpoints import listen as listen
from ._endpoints import listen_unix as listen_unix
from ._protocol import Connection as Connection
from ._serve import DEFAULT_IDLE_TIMEOUT as DEFAULT_IDLE_TIMEOUT
from ._serve import DEFAULT_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS
from ._serve import DEFAULT_STOP_TIMEOUT as DEFAULT_STOP_TIMEOUT
from ._serve import accept_fork as accept_fork
from ._serve import run_server as run_server
from ._udp import DatagramSocket as DatagramSocket
from ._udp import datagram_socket as datagram_socket

__all__ = (
    "DEFAULT_BACKLOG",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_STOP_TIMEOUT",
    "Connection",
    "DatagramSocket",
    "Listener",
    "accept_fork",
    "connect",
    "connect_unix",
    "datagram_socket",
    "getaddrinfo",
    "listen",
    "listen_unix",
    "run_server",
)
