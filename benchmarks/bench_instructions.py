"""Instructions per operation on greenbridge's crossing path, counted by valgrind's callgrind.

Wall-clock timings on a shared or small machine swing with the other processes (per-core
frequency, the other core's load); an instruction count does not: callgrind counts the
user-space instructions a run executes, the same for the same binary and inputs whatever else
the machine does. Each figure is the difference between a run of N2 operations and one of N1,
divided by N2 - N1, so start-up, imports and the loop's creation cancel out.

Six operations, on each loop (the default):

  ready   -- green code awaits a coroutine that returns at once (no suspension)
  sleep0  -- green code awaits ``asyncio.sleep(0)`` (one suspension, one loop iteration)
  spawn   -- asyncio code awaits ``gb.spawn_green`` of a trivial function
  wake    -- a loop callback wakes a parked fiber (the path a protocol callback takes to a reader)
  fork    -- a fiber forked on a ``Switch`` that waits on one shared ``Event``: fork N of them,
             yield until all are parked, set the Event, leave the switch (``bench_fibers``'s
             workload; the figure is per fiber)
  echo    -- one round trip of 1 KiB between an asyncio streams client and a ``net.run_server``
             handler (``conn.read`` / ``conn.write``) on the same loop; the client's share is the
             same code in every tree, so a change is the server's

and, with ``--ops all``, the same work done by others, to bound what greenbridge can reach:

  fork-tasks    -- ``fork``'s workload in asyncio Tasks (``TaskGroup``, ``asyncio.Event``)

and the echo client against other servers:

  echo-noidle   -- ``run_server`` with ``idle_timeout=None`` (no read timer armed)
  echo-greenlet -- the floor of a direct-style server: the ceiling's protocol, whose
                   ``buffer_updated`` has a loop callback switch into a plain greenlet that
                   writes the bytes back and switches out again (one callback and two switches
                   a round trip; no Task, no wait queue, no buffer of its own)
  echo-greenlet-direct -- the same, switched into straight from ``buffer_updated`` (greenlet
                   then copies out the transport's deeper C stack on every switch); the floor is
                   the lower of the two on each loop
  echo-ceiling  -- the ceiling: a raw ``asyncio.BufferedProtocol`` writing back from
                   ``buffer_updated`` (``bench_echo``'s)
  echo-ceiling-timer -- the same with a timer pending per connection (an hour away), as any
                   server with a read timeout has: what pending timers cost the loop itself
  echo-streams  -- an ``asyncio.start_server`` handler (``reader.read`` / ``writer.write`` /
                   ``await writer.drain()``): the peer the issue's streams target is set against

and the native ``await`` of the first two, their floors (``bench_crossing``'s native column):

  ready-native  -- a coroutine awaits a coroutine that returns at once
  sleep0-native -- a coroutine awaits ``asyncio.sleep(0)``
  switch-pair   -- a switch into a greenlet and back out (greenlet's own cost, no loop): the
                   issue's floor of a suspension is ``sleep0-native`` plus one of these
  sleep0-greenlet -- the least a Python greenlet bridge can do: a plain greenlet switches the
                   awaitable out to a coroutine that awaits it and switches the result back in
                   (no error handling, no Task or context bookkeeping)
  sleep0-sqlalchemy -- SQLAlchemy's ``await_`` of ``asyncio.sleep(0)``, the issue's peer

The server's share of a round trip is the op's figure minus the client's, which is the same in
all of them; the differences between them are the servers' own.

With ``--server-only`` the echo ops (only they) count the server alone: the client, ``bench_echo``'s
load of 50 connections doing ping-pong (counted in round trips), runs in a process of its own that
callgrind does not follow, and the op ``echo-gevent`` (gevent's ``StreamServer``, its own hub) is
available. Callgrind slows the server some fifty times, so every connection's next message is
waiting at each wake-up, as in ``bench_echo`` when the server is what bounds the throughput. Only
user-space instructions are counted: the system calls' time in the kernel is not, so these
figures bound the servers' own code, not their throughput (gevent's ``recv`` first tries the
socket and meets ``EAGAIN``, for one).

    python benchmarks/bench_instructions.py [--loops asyncio,uvloop] [--ops ready,sleep0 | all]
    python benchmarks/bench_instructions.py --against DIR   # DIR: another checkout, e.g. a tag
    python benchmarks/bench_instructions.py --server-only --ops all
    python benchmarks/bench_instructions.py --misses --ops sleep0,sleep0-native,switch-pair,sleep0-greenlet

``--misses`` runs the same children under cachegrind, which simulates the machine's caches and a
branch predictor, and prints per operation the first-level instruction and data cache misses, the
last-level misses and the mispredicted branches beside the instructions. Time is instructions
times cycles per instruction, and these are what raise the second: a switch pair alone in a
loop misses the instruction cache some five times; inside a loop iteration, whose code it evicts
and which evicts its own, several hundred times more (``sleep0`` against ``sleep0-native`` plus
``switch-pair``), which is why native ``sleep(0)`` plus a switch pair is a floor by instructions
but not by time.

``--against`` measures the same operations with the greenbridge found in DIR (a source tree
with its C accelerator built: ``python setup.py build_ext --inplace``) and prints the change.
Needs valgrind (Debian: ``apt-get install valgrind``). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
OPS = ("ready", "sleep0", "spawn", "wake", "fork", "echo")
BOUNDS = (
    "fork-tasks",
    "echo-noidle", "echo-greenlet", "echo-greenlet-direct", "echo-ceiling", "echo-ceiling-timer",
    "echo-streams", "echo-gevent", "ready-native", "sleep0-native", "sleep0-greenlet", "sleep0-sqlalchemy",
    "switch-pair",
)  # fmt: skip


async def _client(port: int, n: int) -> None:
    """The echo client: ``n`` round trips of 1 KiB on one asyncio streams connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    message = b"x" * 1024
    for _ in range(n):
        writer.write(message)
        await reader.readexactly(len(message))
    writer.close()
    await writer.wait_closed()


# How many connections the remote client drives at once: bench_echo's base point.
CONNECTIONS = 50


async def _load_client(port: int, n: int, connections: int) -> None:
    """``n`` round trips of 1 KiB in all, ping-pong on ``connections`` connections at once
    (``bench_echo``'s load, counted in round trips rather than seconds)."""
    loop = asyncio.get_running_loop()
    message = b"x" * 1024
    left = [n - connections]
    done: asyncio.Future[None] = loop.create_future()
    running = [connections]

    class Client(asyncio.Protocol):
        received = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            self.received += len(data)
            if self.received < len(message):
                return
            self.received -= len(message)
            if left[0] > 0:
                left[0] -= 1
                self.transport.write(message)
                return
            running[0] -= 1
            if not running[0]:
                done.set_result(None)

    transports = []
    for _ in range(connections):
        transport, _ = await loop.create_connection(Client, "127.0.0.1", port)
        transports.append(transport)
    for transport in transports:
        transport.write(message)
    await done
    for transport in transports:
        transport.close()


def _start_client(port: int, n: int) -> tuple[subprocess.Popen[bytes], int]:
    """``_load_client`` in a process of its own, on uvloop, which callgrind does not follow
    (valgrind traces no child by default): its instructions are not counted. Returns the
    process and the read end of a pipe that is its standard output, readable (at end of file)
    once it has exited."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([sys.executable, __file__, "--client", str(port), str(n)], stdout=write_end)
    os.close(write_end)
    return proc, read_end


def _end_client(proc: subprocess.Popen[bytes], read_end: int) -> None:
    os.close(read_end)
    if proc.wait():
        raise RuntimeError(f"the echo client failed (exit status {proc.returncode})")


async def _remote_client(port: int, n: int) -> None:
    """``_load_client`` run in another process (``--server-only``); returns once it has exited."""
    loop = asyncio.get_running_loop()
    proc, read_end = _start_client(port, n)
    done: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        loop.remove_reader(read_end)
        done.set_result(None)

    loop.add_reader(read_end, exited)
    await done
    _end_client(proc, read_end)


def _gevent_echo(n: int) -> None:
    """gevent's ``StreamServer`` (``bench_echo``'s handler) serving the remote client."""
    import gevent.socket
    from gevent.server import StreamServer

    def handle(sock: Any, addr: Any) -> None:
        while data := sock.recv(65536):
            sock.sendall(data)
        sock.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    proc, read_end = _start_client(server.address[1], n)
    gevent.socket.wait_read(read_end)
    _end_client(proc, read_end)
    server.stop()


def _operations(server_only: bool) -> dict[str, Callable[[int], Coroutine[Any, Any, object]]]:
    """The operations, each an ``async def`` that does it ``n`` times (imported late: the child
    process imports the greenbridge of the tree it measures). ready, sleep0 and spawn are
    ``bench_crossing``'s own, with greenbridge as the bridge (their clock reads are outside the
    loop, so they cancel out with the rest of the start-up). With ``server_only`` the echo
    client runs in a process of its own, so only the server's instructions are counted."""
    from bench_crossing import FLOOR_BRIDGE, _timed_bridge, _timed_native, _timed_switch_pair
    from bench_echo import BufferedEcho, DirectGreenletEcho, GreenletEcho, TimerEcho

    import greenbridge as gb
    from greenbridge._waiter import Waiter

    bridge = {"spawn": gb.spawn_green, "await_": gb.await_from_green}

    def crossing(op: str) -> Callable[[int], Coroutine[Any, Any, float]]:
        return lambda n: _timed_bridge(bridge, op, n)

    async def wake(n: int) -> None:
        loop = asyncio.get_running_loop()
        parked: list[Waiter[None]] = []

        def wake_one() -> None:
            parked.pop().wake(None)

        def body() -> None:
            for _ in range(n):
                waiter: Waiter[None] = Waiter()
                parked.append(waiter)
                loop.call_soon(wake_one)
                waiter.wait()

        await gb.spawn_green(body)

    async def fork(n: int) -> None:
        from greenbridge import fiber

        def body() -> None:
            event = gb.Event()
            parked = 0

            def waiter() -> None:
                nonlocal parked
                parked += 1
                event.wait()

            with gb.Switch() as sw:
                for _ in range(n):
                    sw.fork(waiter)
                while parked < n:
                    fiber.yield_()
                event.set()

        await gb.spawn_green(body)

    async def fork_tasks(n: int) -> None:
        event = asyncio.Event()
        parked = 0

        async def waiter() -> None:
            nonlocal parked
            parked += 1
            await event.wait()

        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(waiter())
            while parked < n:
                await asyncio.sleep(0)
            event.set()

    client = _remote_client if server_only else _client

    def echo_with(**options: Any) -> Callable[[int], Coroutine[Any, Any, None]]:
        async def echo(n: int) -> None:
            from greenbridge import net

            loop = asyncio.get_running_loop()
            port: asyncio.Future[int] = loop.create_future()
            stop: asyncio.Future[None] = loop.create_future()

            def handle(conn: net.Connection, addr: Any) -> None:
                while data := conn.read():
                    conn.write(data)

            def serve() -> None:
                with net.listen("127.0.0.1", 0) as listener:
                    port.set_result(listener.address[1])
                    net.run_server(listener, handle, stop=stop, **options)

            server = asyncio.ensure_future(gb.spawn_green(serve))
            await client(await port, n)
            stop.set_result(None)
            await server

        return echo

    async def echo_protocol(protocol: Callable[[], asyncio.BaseProtocol], n: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, "127.0.0.1", 0)
        await client(server.sockets[0].getsockname()[1], n)
        server.close()
        await server.wait_closed()

    async def echo_streams(n: int) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        await client(server.sockets[0].getsockname()[1], n)
        server.close()
        await server.wait_closed()

    def sqlalchemy(op: str) -> Callable[[int], Coroutine[Any, Any, float]]:
        from sqlalchemy.util import await_, greenlet_spawn

        return lambda n: _timed_bridge({"spawn": greenlet_spawn, "await_": await_}, op, n)

    return {
        "ready": crossing("await_ready"),
        "sleep0": crossing("await_sleep0"),
        "spawn": crossing("spawn"),
        "wake": wake,
        "fork": fork,
        "fork-tasks": fork_tasks,
        "echo": echo_with(),
        "echo-noidle": echo_with(idle_timeout=None),
        "echo-greenlet": lambda n: echo_protocol(GreenletEcho, n),
        "echo-greenlet-direct": lambda n: echo_protocol(DirectGreenletEcho, n),
        "echo-ceiling": lambda n: echo_protocol(BufferedEcho, n),
        "echo-ceiling-timer": lambda n: echo_protocol(TimerEcho, n),
        "echo-streams": echo_streams,
        "ready-native": lambda n: _timed_native("await_ready", n),
        "sleep0-native": lambda n: _timed_native("await_sleep0", n),
        "sleep0-greenlet": lambda n: _timed_bridge(FLOOR_BRIDGE, "await_sleep0", n),
        "switch-pair": _timed_switch_pair,
        "sleep0-sqlalchemy": sqlalchemy("await_sleep0"),
    }


def _child(loop_name: str, op: str, n: int, server_only: bool) -> None:
    """Run ``op`` ``n`` times on a new loop of ``loop_name`` (in the process callgrind counts)."""
    from bench_crossing import _loop_factory

    if op == "echo-gevent":
        _gevent_echo(n)  # gevent's own hub, whatever the loop
        return
    with asyncio.Runner(loop_factory=_loop_factory(loop_name)) as runner:
        runner.run(_operations(server_only)[op](n))


#: With ``--misses``: what cachegrind's simulation of the machine's caches and branch predictor
#: counts, by the name of its summary line.
MISSES = {"I refs": "instructions", "I1 misses": "I1 misses", "D1 misses": "D1 misses",
          "LL misses": "LL misses", "Mispredicts": "mispredicts"}  # fmt: skip


def count(tree: Path, loop_name: str, op: str, n: int, server_only: bool = False) -> int:
    """User-space instructions of one child run of ``n`` operations with ``tree``'s greenbridge
    (with ``server_only``, of an echo op's server alone)."""
    tool = ["--tool=callgrind", "--callgrind-out-file=/dev/null"]
    return _valgrind(tree, loop_name, op, n, server_only, tool)["Collected"]


def misses(tree: Path, loop_name: str, op: str, n: int, server_only: bool = False) -> dict[str, int]:
    """The same run under cachegrind, simulating the machine's caches (its sizes, read from the
    CPU) and a branch predictor: instructions, first-level instruction and data cache misses,
    last-level misses and mispredicted branches. A simulation, not the hardware's counters
    (which this kind of machine may not offer), but the same for the same run."""
    tool = ["--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes", "--cachegrind-out-file=/dev/null"]
    found = _valgrind(tree, loop_name, op, n, server_only, tool)
    return {name: found[key] for key, name in MISSES.items()}


def _valgrind(
    tree: Path, loop_name: str, op: str, n: int, server_only: bool, tool: list[str]
) -> dict[str, int]:
    """One child run under valgrind with ``tool``'s options: the counts of its summary, by name."""
    # A fixed hash seed: str hashes, and with them dict and set layouts, are otherwise random in
    # each process, and move the count of a short operation by several percent from run to run.
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    env.pop("GREENBRIDGE_NO_SPEEDUPS", None)
    proc = subprocess.run(
        [
            "valgrind", *tool,
            sys.executable, __file__, "--child", loop_name, op, str(n),
            *(["--server-only"] if server_only else []),
        ],
        capture_output=True, text=True, env=env, cwd=tree, check=True,
    )  # fmt: skip
    found = {
        " ".join(name.split()): int(value.replace(",", ""))
        for name, value in re.findall(r"==\d+== (\w[\w ]*?\w) *: +([\d,]+)", proc.stderr)
    }
    if not found:
        raise RuntimeError(f"valgrind printed no count:\n{proc.stderr[-2000:]}")
    return found


def per_op(tree: Path, loop_name: str, op: str, n1: int, n2: int, server_only: bool = False) -> float:
    first = count(tree, loop_name, op, n1, server_only)
    return (count(tree, loop_name, op, n2, server_only) - first) / (n2 - n1)


def misses_per_op(loop_name: str, op: str, n1: int, n2: int, server_only: bool = False) -> dict[str, float]:
    first = misses(HERE, loop_name, op, n1, server_only)
    second = misses(HERE, loop_name, op, n2, server_only)
    return {name: (second[name] - first[name]) / (n2 - n1) for name in first}


def _print_misses(loops: list[str], ops: tuple[str, ...], n1: int, n2: int, server_only: bool) -> None:
    print(f"per operation, cachegrind's simulation (N = {n1} and {n2})")
    print("loop     op                 " + "".join(f"{name:>14}" for name in MISSES.values()), flush=True)
    for loop_name in loops:
        for op in ops:
            if op == "echo-gevent" and loop_name != loops[0]:
                continue
            figures = misses_per_op(loop_name, op, n1, n2, server_only)
            print(f"{loop_name:8} {op:18} " + "".join(f"{v:14,.1f}" for v in figures.values()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--ops", default=",".join(OPS), help="a comma-separated list, or all")
    parser.add_argument("--n1", type=int, default=4000)
    parser.add_argument("--n2", type=int, default=16000)
    parser.add_argument("--against", type=Path, help="another source tree to compare with")
    parser.add_argument(
        "--server-only",
        action="store_true",
        help="echo ops: run the client in a process of its own and count the server alone",
    )
    parser.add_argument(
        "--misses",
        action="store_true",
        help="under cachegrind: the simulated cache misses and mispredicted branches per op too",
    )
    parser.add_argument("--child", nargs=3, metavar=("LOOP", "OP", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=2, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]), args.server_only)
        return
    if args.client:
        import uvloop

        uvloop.run(_load_client(int(args.client[0]), int(args.client[1]), CONNECTIONS))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench_instructions needs valgrind (Debian: apt-get install valgrind)")
    ops = OPS + BOUNDS if args.ops == "all" else tuple(args.ops.split(","))
    unknown = set(ops) - set(OPS + BOUNDS)
    if unknown or args.n2 <= args.n1:
        sys.exit(f"--ops takes {', '.join(OPS + BOUNDS)} or all; --n2 must exceed --n1")
    if "echo-gevent" in ops and not args.server_only:
        if args.ops != "all":
            sys.exit("echo-gevent runs on gevent's hub, not on the client's loop: it needs --server-only")
        ops = tuple(op for op in ops if op != "echo-gevent")
    if args.server_only:
        ops = tuple(op for op in ops if op.startswith("echo"))
    if args.misses:
        if args.against is not None:
            sys.exit("--misses counts this tree only: leave out --against")
        _print_misses(args.loops.split(","), ops, args.n1, args.n2, args.server_only)
        return
    trees = [HERE] if args.against is None else [args.against.resolve(), HERE]
    print(f"instructions per operation (callgrind, N = {args.n1} and {args.n2})")
    header = "loop     op                 " + "".join(f"{tree.name[:14]:>16}" for tree in trees)
    print(header + ("    change" if len(trees) == 2 else ""), flush=True)
    for loop_name in args.loops.split(","):
        for op in ops:
            if op == "echo-gevent" and loop_name != args.loops.split(",")[0]:
                continue  # gevent's hub is the same whatever the loop: counted once
            figures = [per_op(tree, loop_name, op, args.n1, args.n2, args.server_only) for tree in trees]
            line = f"{loop_name:8} {op:18} " + "".join(f"{figure:16,.0f}" for figure in figures)
            if len(figures) == 2:
                line += f"  {(figures[1] / figures[0] - 1) * 100:+7.1f} %"
            print(line, flush=True)


if __name__ == "__main__":
    main()
