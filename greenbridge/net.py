"""Networking for green code: TCP, Unix sockets, TLS and UDP, on asyncio transports directly.

``connect`` / ``connect_unix`` return a ``Connection`` (a ``flow.TwoWay``); ``listen`` /
``listen_unix`` return a ``Listener``; ``accept_fork`` and ``run_server`` serve connections in
fibers of their own; ``datagram_socket`` is UDP. Network failures are the builtin
``ConnectionError`` family; using a closed resource raises ``greenbridge.ClosedResourceError``.
"""

from ._net import DEFAULT_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS
from ._net import DatagramSocket as DatagramSocket
from ._net import Listener as Listener
from ._net import accept_fork as accept_fork
from ._net import connect as connect
from ._net import connect_unix as connect_unix
from ._net import datagram_socket as datagram_socket
from ._net import getaddrinfo as getaddrinfo
from ._net import listen as listen
from ._net import listen_unix as listen_unix
from ._net import run_server as run_server
from ._protocol import Connection as Connection

__all__ = (
    "DEFAULT_MAX_CONNECTIONS",
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
