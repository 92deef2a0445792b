"""Serving connections: ``accept_fork`` and ``run_server``, on a ``Switch`` and a ``Semaphore``.

Theory of operation
===================
``run_server`` opens a ``gb.Switch`` and, in its body, runs the accept loop: accept a socket,
take a permit of a ``gb.Semaphore(max_connections)``, fork ``_serve_connection`` on the switch.
The switch is the supervisor -- the handlers are its fibers, so none outlives ``run_server``, a
failure (``on_error`` raising) cancels the others and is raised, and cancelling ``run_server``
cancels every handler and waits for them (the switch's rules 1, 2 and 5). The semaphore is the
connection limit: a handler gives its permit back when it ends, and the accept loop waits for
one while the server is full; connections beyond the limit wait in the kernel's backlog.

Defending the slots
-------------------
A connection holds a slot while its handler runs, so a client that connects and then says
nothing (or a byte every few seconds: a slowloris) can exhaust them. Three bounds:

* ``idle_timeout``: each connection's ``read_timeout`` (a handler may change its own), so a read
  that waits longer raises ``TimeoutError`` and the handler, unless it catches it, ends.
* TLS handshakes are bounded by the listener's ``handshake_timeout``.
* Shedding: when every slot is taken and a new connection is waiting, the connection whose
  handler has waited longest for input -- at least ``_SHED_MIN_IDLE`` -- gives up its slot: its
  read raises ``TimeoutError`` (a ``ReadTimeout``). Handlers that are working (computing,
  writing, waiting on anything but their connection's input) are never shed. Measured in
  ``docs/reliability.md``: under 1,200 trickling connections a well-behaved client is served
  in milliseconds instead of waiting for a slot that never frees.

A handler ending with its connection's own ``ReadTimeout`` (idle, or shed) is normal server
business: it is not reported to ``on_error``.

Stopping: when ``stop`` completes (or the listener is closed) the accept loop ends; the running
handlers get ``stop_timeout`` seconds to finish, after which a daemon fiber fails the switch
with a private marker error -- cancelling every handler -- that ``run_server`` then swallows.

The accept-error policy (``_accept_with_backoff``) is in one place: out of file descriptors or
memory, report and back off; a connection that died in the backlog, skip it.

Rejected design
---------------
Handler Tasks kept in a set of the server's own, with done-callbacks for the limit and the
failures (greenbridge 0.1): a second supervisor beside ``Switch``, with its own cancellation
clean-up. Measured in-process on a shared 2-core machine (a green client doing connect, a 1-byte
echo and close 3,000 times against ``run_server``; CPU per connection, client included, three
interleaved runs): asyncio loop 0.99-1.22 ms on the switch against 1.03-1.17 ms for 0.1's own
Tasks, uvloop 0.73-0.79 ms against 0.62-0.70 ms -- no difference on asyncio, up to 15 % more per
connection on uvloop, for the switch's bookkeeping, the semaphore and the idle timer. The round
trips of an established connection do not go through the server at all (the same 1 KiB
ping-pong costs the same within noise). One supervisor, with one set of cancellation rules, won.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from . import fiber
from ._core import await_from_green
from ._endpoints import Listener, _wrap_accepted
from ._errors import ClosedResourceError
from ._protocol import Connection, ReadTimeout
from ._switch import Switch
from ._sync import Semaphore
from ._time import sleep, with_timeout

__all__ = (
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_STOP_TIMEOUT",
    "accept_fork",
    "run_server",
)

Handler = Callable[[Connection, Any], object]
ErrorHandler = Callable[[Exception], object]

DEFAULT_MAX_CONNECTIONS = 1024
# A connection's read waits at most this long for input, unless its handler says otherwise.
DEFAULT_IDLE_TIMEOUT = 60.0
# After stop: how long the running handlers have to finish before they are cancelled.
DEFAULT_STOP_TIMEOUT = 30.0
# Only a connection whose reader has waited at least this long is shed to make room.
_SHED_MIN_IDLE = 0.5

# Back-off after an accept error that a retry cannot fix at once (no file descriptors, no
# memory): doubled on each consecutive failure, up to the maximum.
_ACCEPT_BACKOFF_MIN = 0.01
_ACCEPT_BACKOFF_MAX = 1.0
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Accept errors about one connection that died in the backlog: just accept the next one.
_TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})


def _default_on_error(exc: Exception) -> None:
    asyncio.get_running_loop().call_exception_handler(
        {"message": "greenbridge: a connection handler raised", "exception": exc}
    )


def _check_seconds(name: str, seconds: float | None) -> None:
    if seconds is not None and not seconds > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, or None; got {seconds!r}")


class _Served:
    """What the handlers of one server share: the limit and the connections being served."""

    __slots__ = ("connections", "idle_timeout", "permits", "unserved")

    def __init__(self, max_connections: int, idle_timeout: float | None) -> None:
        self.permits = Semaphore(max_connections)
        self.idle_timeout = idle_timeout
        # Invariant: connections holds every Connection whose handler is running (insertion
        # order: oldest first); unserved every accepted socket whose fiber has not started.
        self.connections: dict[Connection, None] = {}
        self.unserved: set[socket.socket] = set()

    def close_unserved(self) -> None:
        """Release hook: sockets whose fibers never ran (a loop shutting down) are closed."""
        while self.unserved:
            self.unserved.pop().close()

    def shed_one(self, max_connections: int) -> bool:
        """Make the longest-idle connection give up its slot; False when none qualifies."""
        now = asyncio.get_running_loop().time()
        victim: Connection | None = None
        oldest = now - _SHED_MIN_IDLE
        for conn in self.connections:
            since = conn._idle_since()
            if since is not None and since <= oldest:
                victim, oldest = conn, since
        if victim is None:
            return False
        return victim._shed(
            f"shed by net.run_server after {now - oldest:.1f} s without input: all "
            f"max_connections={max_connections} slots were taken and a new connection was waiting"
        )


def _serve_connection(
    sock: socket.socket,
    addr: Any,
    listener: Listener,
    handler: Handler,
    on_error: ErrorHandler,
    served: _Served | None,
) -> None:
    """One accepted connection: TLS handshake, the handler, then close; errors to on_error."""
    try:
        if served is not None:
            served.unserved.discard(sock)
        try:
            conn = await_from_green(_wrap_accepted(sock, listener.ssl, listener.handshake_timeout))
        except Exception as exc:  # a failed handshake concerns this connection only
            sock.close()
            on_error(exc)
            return
        except BaseException:
            sock.close()
            raise
        with conn:
            if served is not None:
                conn.read_timeout = served.idle_timeout
                served.connections[conn] = None
            try:
                handler(conn, addr)
            except ReadTimeout:
                pass  # idle too long, or shed: the server's own business, not the handler's error
            except Exception as exc:
                on_error(exc)
            finally:
                if served is not None:
                    del served.connections[conn]
    finally:
        if served is not None:
            served.permits.release()


class _Switchlike(Protocol):
    def fork(self, fn: Callable[..., object], /, *args: Any) -> object: ...


def accept_fork(
    sw: _Switchlike,
    listener: Listener,
    handler: Handler,
    *,
    on_error: ErrorHandler | None = None,
) -> None:
    """Accept one connection and run ``handler(conn, addr)`` in a new fiber forked on ``sw``.

    The connection is closed when the handler returns. An exception from the handler (or from
    the TLS handshake) goes to ``on_error`` (default: the loop's exception handler, which logs
    it); to fail the switch instead, pass ``on_error=sw.fail``. Suspends in ``accept`` (a
    cancellation point); raises what ``Listener.accept`` raises.
    """
    sock, addr = listener._accept_socket()
    try:
        sw.fork(_serve_connection, sock, addr, listener, handler, on_error or _default_on_error, None)
    except BaseException:
        sock.close()
        raise


def _accept_with_backoff(listener: Listener) -> tuple[socket.socket, Any] | None:
    """The next raw connection, or None once the listener is closed. The accept-error policy:
    resource errors are reported and retried after a back-off, transient ones skipped, others
    raised."""
    backoff = _ACCEPT_BACKOFF_MIN
    while True:
        try:
            return listener._accept_socket()
        except ClosedResourceError:
            return None
        except OSError as exc:
            if exc.errno in _TRANSIENT_ERRNOS:
                continue
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            asyncio.get_running_loop().call_exception_handler(
                {
                    "message": f"greenbridge run_server: accept() failed, retrying in {backoff:g}s",
                    "exception": exc,
                }
            )
            sleep(backoff)
            backoff = min(2 * backoff, _ACCEPT_BACKOFF_MAX)


def _take_slot(served: _Served, max_connections: int) -> None:
    """Take a connection permit, shedding an idle connection when the server is full."""
    permits = served.permits
    while permits.value == 0:
        if served.shed_one(max_connections):
            break  # its handler ends at its next step and gives its permit back
        try:
            with_timeout(_SHED_MIN_IDLE / 2, permits.acquire)
            return
        except TimeoutError:
            continue  # still full: look for an idle connection again
    permits.acquire()


class _GracePeriodOver(Exception):
    """Fails the server's switch once ``stop_timeout`` has passed: cancels the handlers."""


def _end_grace_period(sw: Switch, seconds: float) -> None:
    sleep(seconds)
    sw.fail(_GracePeriodOver())


def _without_grace(exc: BaseException) -> BaseException | None:
    """``exc`` without the grace-period marker (None when nothing else is left)."""
    if isinstance(exc, _GracePeriodOver):
        return None
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(_GracePeriodOver)
        if rest is None:
            return None
        leaf: BaseException = rest.exceptions[0]
        if len(rest.exceptions) == 1 and not isinstance(leaf, BaseExceptionGroup):
            return leaf
        return rest
    return exc


def _wait_for(future: asyncio.Future[Any]) -> None:
    # asyncio.wait: being cancelled here (the listener closed first) leaves the future alone.
    await_from_green(asyncio.wait({future}))


def run_server(
    listener: Listener,
    handler: Handler,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    on_error: ErrorHandler | None = None,
    stop: Awaitable[object] | None = None,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    stop_timeout: float | None = DEFAULT_STOP_TIMEOUT,
) -> None:
    """Serve connections from ``listener``: each runs ``handler(conn, addr)`` in its own fiber
    (on a ``gb.Switch`` of the server's); the connection is closed when the handler returns.

    * At most ``max_connections`` handlers run at once; further connections wait in the
      kernel's backlog until one finishes -- or, when a connection has waited at least 0.5 s
      for input while one waits in the backlog, it is shed to make room (its read raises
      ``TimeoutError``): idle and trickling clients cannot starve the others.
    * ``idle_timeout`` (seconds, default 60; None: no limit) is each connection's
      ``read_timeout``: a read that waits longer raises ``TimeoutError``. A handler may set
      ``conn.read_timeout`` itself. A handler ending with that ``TimeoutError`` is not an error.
    * An exception from a handler goes to ``on_error`` (default: the loop's exception handler,
      which logs it) and the server goes on. If ``on_error`` itself raises, the server fails:
      the other handlers are cancelled and ``run_server`` raises that error.
    * An accept error does not stop the server: out of file descriptors or memory (``EMFILE``,
      ``ENFILE``, ``ENOBUFS``, ``ENOMEM``) it is reported to the loop's exception handler and
      accepting resumes after a back-off (10 ms, doubling up to 1 s); a connection aborted in
      the backlog is skipped. Another accept error fails the server.
    * ``stop``: any awaitable (an ``asyncio.Future`` or ``Event().wait()``, a Task, a
      ``gb.Promise``...). When it completes, the server stops accepting, gives the running
      handlers ``stop_timeout`` seconds (default 30; None: as long as they take) to finish,
      cancels those still running, and returns. Closing the listener has the same effect.

    Suspends until then (a cancellation point: cancelling it cancels every handler, waits for
    them, and raises ``CancelledError``). The listener is left open; closing it is the caller's.
    Raises ``ValueError`` for a ``max_connections`` below 1 or a timeout that is not > 0.
    """
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    _check_seconds("idle_timeout", idle_timeout)
    _check_seconds("stop_timeout", stop_timeout)
    report = on_error or _default_on_error
    served = _Served(max_connections, idle_timeout)

    def accept_loop(sw: Switch) -> None:
        while (accepted := _accept_with_backoff(listener)) is not None:
            sock, addr = accepted
            try:
                _take_slot(served, max_connections)
            except BaseException:
                sock.close()
                raise
            served.unserved.add(sock)
            sw.fork(_serve_connection, sock, addr, listener, handler, report, served)

    stop_future = asyncio.ensure_future(stop) if stop is not None else None
    try:
        with Switch() as sw:
            sw.on_release(served.close_unserved)
            if stop_future is None:
                accept_loop(sw)
            else:
                fiber.first(lambda: accept_loop(sw), lambda: _wait_for(stop_future))
            if stop_timeout is not None:
                sw.fork_daemon(_end_grace_period, sw, stop_timeout)
    except BaseException as exc:
        rest = _without_grace(exc)
        if rest is exc:
            raise
        if rest is not None:
            raise rest from None
    finally:
        if stop_future is not None and stop_future is not stop and not stop_future.done():
            stop_future.cancel()  # our own wrapper (of a coroutine, a Promise): not needed now

