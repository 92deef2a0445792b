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
  echo-ceiling-timer -- the same with one timer pending on the loop (an hour away), as any
                   server with a timeout has: what a pending timer costs the loop itself
  echo-streams  -- an ``asyncio.start_server`` handler (``reader.read`` / ``writer.write`` /
                   ``await writer.drain()``): the peer the issue's streams target is set against

and the native ``await`` of the first two, their floors (``bench_crossing``'s native column):

  ready-native  -- a coroutine awaits a coroutine that returns at once
  sleep0-native -- a coroutine awaits ``asyncio.sleep(0)``

The server's share of a round trip is the op's figure minus the client's, which is the same in
all of them; the differences between them are the servers' own.

    python benchmarks/bench_instructions.py [--loops asyncio,uvloop] [--ops ready,sleep0 | all]
    python benchmarks/bench_instructions.py --against DIR   # DIR: another checkout, e.g. a tag

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
    "echo-streams", "ready-native", "sleep0-native",
)  # fmt: skip


def _operations() -> dict[str, Callable[[int], Coroutine[Any, Any, object]]]:
    """The operations, each an ``async def`` that does it ``n`` times (imported late: the child
    process imports the greenbridge of the tree it measures). ready, sleep0 and spawn are
    ``bench_crossing``'s own, with greenbridge as the bridge (their clock reads are outside the
    loop, so they cancel out with the rest of the start-up)."""
    from bench_crossing import _timed_bridge, _timed_native
    from bench_echo import BufferedEcho
    from greenlet import greenlet

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

    async def client(port: int, n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        message = b"x" * 1024
        for _ in range(n):
            writer.write(message)
            await reader.readexactly(len(message))
        writer.close()
        await writer.wait_closed()

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

    async def echo_protocol(
        protocol: Callable[[], asyncio.BaseProtocol], n: int, timer: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, "127.0.0.1", 0)
        pending = loop.call_later(3600, lambda: None) if timer else None
        await client(server.sockets[0].getsockname()[1], n)
        if pending is not None:
            pending.cancel()
        server.close()
        await server.wait_closed()

    class GreenletEcho(BufferedEcho):
        """The ceiling's protocol with the bytes written back from a greenlet of its own."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.nbytes = 0
            self.handler = greenlet(self.handle)
            self.handler.switch()  # runs to its first switch out

        def handle(self) -> None:
            parent = self.handler.parent
            assert parent is not None
            while True:
                parent.switch()
                BufferedEcho.buffer_updated(self, self.nbytes)

        direct = False

        def buffer_updated(self, nbytes: int) -> None:
            # From a loop callback, as greenbridge's wake batch does; or straight from the
            # transport's callback, where greenlet copies out the deeper C stack on every switch.
            self.nbytes = nbytes
            if self.direct:
                self.handler.switch()
            else:
                asyncio.get_running_loop().call_soon(self.handler.switch)

    class DirectGreenletEcho(GreenletEcho):
        direct = True

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
        "echo-ceiling-timer": lambda n: echo_protocol(BufferedEcho, n, timer=True),
        "echo-streams": echo_streams,
        "ready-native": lambda n: _timed_native("await_ready", n),
        "sleep0-native": lambda n: _timed_native("await_sleep0", n),
    }


def _child(loop_name: str, op: str, n: int) -> None:
    """Run ``op`` ``n`` times on a new loop of ``loop_name`` (in the process callgrind counts)."""
    from bench_crossing import _loop_factory

    with asyncio.Runner(loop_factory=_loop_factory(loop_name)) as runner:
        runner.run(_operations()[op](n))


def count(tree: Path, loop_name: str, op: str, n: int) -> int:
    """User-space instructions of one child run of ``n`` operations with ``tree``'s greenbridge."""
    # A fixed hash seed: str hashes, and with them dict and set layouts, are otherwise random in
    # each process, and move the count of a short operation by several percent from run to run.
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    env.pop("GREENBRIDGE_NO_SPEEDUPS", None)
    proc = subprocess.run(
        [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, __file__, "--child", loop_name, op, str(n),
        ],
        capture_output=True, text=True, env=env, cwd=tree, check=True,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no count:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def per_op(tree: Path, loop_name: str, op: str, n1: int, n2: int) -> float:
    return (count(tree, loop_name, op, n2) - count(tree, loop_name, op, n1)) / (n2 - n1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--ops", default=",".join(OPS), help="a comma-separated list, or all")
    parser.add_argument("--n1", type=int, default=4000)
    parser.add_argument("--n2", type=int, default=16000)
    parser.add_argument("--against", type=Path, help="another source tree to compare with")
    parser.add_argument("--child", nargs=3, metavar=("LOOP", "OP", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench_instructions needs valgrind (Debian: apt-get install valgrind)")
    ops = OPS + BOUNDS if args.ops == "all" else tuple(args.ops.split(","))
    unknown = set(ops) - set(OPS + BOUNDS)
    if unknown or args.n2 <= args.n1:
        sys.exit(f"--ops takes {', '.join(OPS + BOUNDS)} or all; --n2 must exceed --n1")
    trees = [HERE] if args.against is None else [args.against.resolve(), HERE]
    print(f"instructions per operation (callgrind, N = {args.n1} and {args.n2})")
    header = "loop     op                 " + "".join(f"{tree.name[:14]:>16}" for tree in trees)
    print(header + ("    change" if len(trees) == 2 else ""), flush=True)
    for loop_name in args.loops.split(","):
        for op in ops:
            figures = [per_op(tree, loop_name, op, args.n1, args.n2) for tree in trees]
            line = f"{loop_name:8} {op:18} " + "".join(f"{figure:16,.0f}" for figure in figures)
            if len(figures) == 2:
                line += f"  {(figures[1] / figures[0] - 1) * 100:+7.1f} %"
            print(line, flush=True)


if __name__ == "__main__":
    main()
