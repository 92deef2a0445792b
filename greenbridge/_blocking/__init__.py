"""Blocking libraries in green fibers, without threads: ``patch_blocking`` / ``unpatch_blocking``.

Theory of operation
===================

The one rule: **cooperative inside green fibers, untouched everywhere else.** Every replacement
starts by asking ``green_loop()`` (``_wait.py``): when the caller is not a green fiber with a
running loop in its thread -- another thread, plain code, a loop callback, the loop's own selector
-- it calls the original function at once with the same arguments. gevent and eventlet patch the
whole process (threads become greenlets); greenletio patches the modules imported inside a block.
Neither leaves the rest of the process alone; this does.

In a fiber, a patched call never blocks the thread: it makes attempts that cannot block and, when
the operating system says "not yet", parks the fiber on an asyncio Future completed by a loop
reader or writer (``wait_fds``), so that the loop, and every other fiber and Task on it, runs
meanwhile. Every such wait is a suspension point, hence a cancellation point.

Jobs, one module each:

* ``_wait.py`` -- the wait on descriptors every patch uses, and the in-fiber test.
* ``_sockets.py`` -- ``socket.socket`` methods, ``getaddrinfo``, ``create_connection``,
  ``ssl.SSLSocket``.
* ``_select.py`` -- ``select.select``, ``select.poll``, the ``selectors`` classes, ``time.sleep``.
* ``_drivers.py`` -- psycopg2's wait callback, psycopg 3's ``waiting`` functions.
* ``_watchdog.py`` -- in debug mode, the report naming a call that blocked the loop anyway.
* ``_patch.py`` -- applying and reverting one patch.

Patches replace attributes: module functions (``socket.getaddrinfo``, ``time.sleep``) and methods
of the Python classes (``socket.socket``, ``ssl.SSLSocket``, the selector classes), so sockets
created before the patch are covered too. A name bound before ``patch_blocking()`` (``from time
import sleep``) keeps the original: call it at start-up, before importing the libraries.

Invariants
----------
* ``_installed`` is empty or holds every patch, applied, in the order applied; ``_lock`` guards it.
* A replacement called outside a fiber behaves as the original, byte for byte: same arguments,
  same result, same exceptions (it *is* the original call).

Rejected designs
----------------
* Replacing ``socket.socket`` with a subclass (gevent): sockets made before the patch, and by C
  code, would escape; ``isinstance`` checks would see a new class.
* Keeping the descriptor non-blocking for good and emulating the timeout (gevent): every thread
  using the socket would then see the emulation. Here the timeout is 0 only during one attempt,
  which never suspends.
"""

from __future__ import annotations

import asyncio
import threading

from ._drivers import patches as _driver_patches
from ._patch import Patch
from ._select import patches as _select_patches
from ._sockets import patches as _socket_patches
from ._watchdog import watch

__all__ = ("patch_blocking", "unpatch_blocking")

_lock = threading.Lock()
_installed: list[Patch] = []


def patch_blocking() -> None:
    """Make blocking calls cooperative in green fibers, and only there; idempotent.

    Once installed, these calls made *from a green fiber* wait on the running loop instead of
    blocking the thread: ``socket.socket`` (``connect``, ``connect_ex``, ``accept``, ``recv``,
    ``recv_into``, ``recvfrom``, ``recvfrom_into``, ``send``, ``sendall``, ``sendto``,
    ``sendfile`` and the ``makefile`` files built on them), ``socket.getaddrinfo`` and
    ``socket.create_connection`` (host names through the loop's resolver), ``ssl.SSLSocket``
    (handshake, ``read``, ``write``, ``send``, ``unwrap``), ``select.select``, ``select.poll``,
    the ``selectors`` classes, ``time.sleep``; and, when importable, psycopg2 (its wait callback)
    and psycopg 3's sync connections. Made anywhere else -- another thread, plain code, a loop
    callback -- they are the original calls. Socket timeouts keep their meaning
    (``TimeoutError`` on time); each wait is a cancellation point, so ``gb.timeout``, a failing
    ``Switch`` or a cancelled Task end a stuck call.

    Call it once at start-up, before importing the libraries (a name bound earlier with ``from
    time import sleep`` keeps the original) and before the loop runs: the first call imports
    psycopg2 and psycopg when they are installed, to hook them (a one-time cost, about 0.2 s).
    Never suspends; raises nothing. Called inside a
    running loop in debug mode, it also starts the watchdog that names a call blocking that loop
    for more than 100 ms.
    """
    with _lock:
        if not _installed:
            for patch in (*_socket_patches(), *_select_patches(), *_driver_patches()):
                patch.apply()
                _installed.append(patch)
    loop = asyncio._get_running_loop()
    if loop is not None:
        watch(loop)


def unpatch_blocking() -> None:
    """Undo ``patch_blocking()``: every patched call is the original again, in fibers too (so a
    ``time.sleep`` in a fiber blocks the loop again). Idempotent; never suspends; raises
    nothing. A fiber already parked in a patched call finishes that call cooperatively."""
    with _lock:
        while _installed:
            _installed.pop().revert()
