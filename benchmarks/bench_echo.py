"""Echo servers side by side: greenbridge's flows and ``net.run_server`` against their peers and
against the ceiling -- the cheapest echo server the event loop can run.

Each server runs in a process of its own; one load process (uvloop, raw Protocols: the cheapest
client there is) keeps ``--connections`` connections doing request/response ping-pong of
``--size`` bytes and, after a warm-up, counts the round trips of a measured window. On a machine
with at least two cores the server and the load are pinned to different cores. Beside throughput,
the server's CPU time per round trip over the same window (Linux: /proc, every thread), which a
busy shared machine disturbs much less, with the part of it spent in the kernel and the times
the server went to sleep for want of work (voluntary context switches), each per round trip; and
the load's own CPU share of the window (near 100%, the load may be what bounds the throughput).
Every configuration is measured ``--rounds`` times, interleaved, and the median reported.

Servers (each on the asyncio loop and on uvloop, except gevent which has its own hub):

  gb-run_server      greenbridge: net.listen + net.run_server, conn.read / conn.write
  gb-adapters        greenbridge over asyncio streams: flow.source_of_reader / sink_of_writer
  streams            asyncio.start_server, reader.read / writer.write / await drain()
  plain-protocol     a plain asyncio.Protocol echoing in data_received: a new bytes per read (on
                     asyncio's loop sock.recv(256 KiB), allocated at full size then shrunk)
  buffered-protocol  the ceiling: a raw asyncio.BufferedProtocol; the transport reads into one
                     preallocated buffer per connection, the server writes a view of it back --
                     no allocation or copy of the data per read (greenbridge's connections are
                     built on this protocol, so it bounds them)
  gevent             gevent.server.StreamServer, sock.recv / sock.sendall

and two bounds, each the ceiling with one thing added that a direct-style server cannot do
without (what it costs is what greenbridge cannot win back):

  greenlet-floor     the ceiling's protocol, but the bytes are written back from a plain greenlet
                     a loop callback switches into (one callback and two switches a round trip:
                     no Task, no wait queue, no buffer of its own) -- the floor of any server
                     whose handler is direct-style code in a greenlet
  buffered-timer     the ceiling with a timer pending per connection (an hour away), as a server
                     with a read timeout has: what pending timers cost the loop itself

With ``--curves``, the scale curves as well (each point with ``--curve-servers``, shorter
windows): 1, 10, 100 and 1,000 connections at 1 KiB, and 64 B, 1 KiB and 64 KiB messages at
``--connections``.

    python benchmarks/bench_echo.py                      # the main table, about two minutes
    python benchmarks/bench_echo.py --curves --json figures.json   # and the curves, ~7 minutes
    python benchmarks/bench_echo.py --servers gb-run_server,buffered-protocol --loops uvloop

Loopback only; every process stops by itself (the servers after --max-seconds even if this
script dies). A benchmark, not a test: it never fails on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
SERVERS = (
    "gb-run_server", "gb-adapters", "streams", "plain-protocol", "buffered-protocol", "gevent",
    "greenlet-floor", "buffered-timer",
)  # fmt: skip
LOOPS = ("asyncio", "uvloop")
CEILING = "buffered-protocol"
CURVE_SERVERS = ("gb-run_server", "streams", "plain-protocol", "buffered-protocol", "gevent")
CURVE_SIZE = 1024  # the message size of the connection curve


# -- servers -------------------------------------------------------------------------------------


def _new_loop(loop_name: str) -> asyncio.AbstractEventLoop:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _announce(port: int) -> None:
    print(port, flush=True)


def serve_streams(loop_name: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, HOST, 0, backlog=1024)
        _announce(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=lambda: _new_loop(loop_name)) as runner:
        runner.run(main())


# The receive buffer of the BufferedProtocol servers: greenbridge's connection has the same.
BUFFER_SIZE = 64 * 1024


def serve_plain_protocol(loop_name: str) -> None:
    """``data_received``: the transport hands over a new ``bytes`` per read (on asyncio's loop
    ``sock.recv(256 KiB)``, allocated at full size and then shrunk) -- not the ceiling."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

        def pause_writing(self) -> None:
            self.transport.pause_reading()

        def resume_writing(self) -> None:
            self.transport.resume_reading()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, HOST, 0, backlog=1024)
        _announce(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=lambda: _new_loop(loop_name)) as runner:
        runner.run(main())


class BufferedEcho(asyncio.BufferedProtocol):
    """The ceiling's protocol: the transport reads into one preallocated buffer per connection
    and ``buffer_updated`` writes a view of it back (``bench_instructions`` uses it too)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = memoryview(bytearray(BUFFER_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self.buffer[:nbytes])
        if self.transport.get_write_buffer_size():
            # Not all sent: the transport may keep the view of the unsent bytes (uvloop does, so
            # does asyncio's since 3.12), so the next read must not overwrite them.
            self.buffer = memoryview(bytearray(BUFFER_SIZE))

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class GreenletEcho(BufferedEcho):
    """The ceiling's protocol with the bytes written back from a plain greenlet of its own: a
    loop callback switches into it, it writes and switches out again (the floor of a server
    whose handler is direct-style code; ``bench_instructions`` uses it too)."""

    direct = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from greenlet import greenlet

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


class TimerEcho(BufferedEcho):
    """The ceiling with a timer pending per connection, an hour away (a read timeout's)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.timer = asyncio.get_running_loop().call_later(3600, lambda: None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.timer.cancel()


def _serve_protocol(protocol: Any, loop_name: str) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(protocol, HOST, 0, backlog=1024)
        _announce(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=lambda: _new_loop(loop_name)) as runner:
        runner.run(main())


def serve_buffered_protocol(loop_name: str) -> None:
    """The ceiling: the transport reads into one preallocated buffer per connection and the
    server writes a view of it back -- no allocation and no copy of the data per read (the
    cheapest echo the loop can do, and what greenbridge's connections are built on)."""
    _serve_protocol(BufferedEcho, loop_name)


def serve_greenlet_floor(loop_name: str) -> None:
    """The floor of a direct-style server: the ceiling, written back from a greenlet."""
    _serve_protocol(GreenletEcho, loop_name)


def serve_buffered_timer(loop_name: str) -> None:
    """The ceiling with a timer pending per connection."""
    _serve_protocol(TimerEcho, loop_name)


def serve_gevent(loop_name: str) -> None:
    from gevent.server import StreamServer

    def handle(sock: Any, addr: Any) -> None:
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except ConnectionError:
            pass
        finally:
            sock.close()

    server = StreamServer((HOST, 0), handle, backlog=1024)
    server.start()
    _announce(server.address[1])
    server.serve_forever()


def serve_gb_run_server(loop_name: str) -> None:
    import greenbridge as gb
    from greenbridge import net

    def handle(conn: net.Connection, addr: Any) -> None:
        while data := conn.read():
            conn.write(data)

    def main() -> None:
        with net.listen(HOST, 0, backlog=1024) as listener:
            _announce(listener.address[1])
            net.run_server(listener, handle, on_error=lambda exc: None)

    gb.run(main, backend=loop_name)


def serve_gb_adapters(loop_name: str) -> None:
    import greenbridge as gb
    from greenbridge import flow

    def echo(src: flow.Source, dst: flow.Sink) -> None:
        while data := src.read():
            dst.write(data)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await gb.spawn_green(echo, flow.source_of_reader(reader), flow.sink_of_writer(writer))
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, HOST, 0, backlog=1024)
        _announce(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=lambda: _new_loop(loop_name)) as runner:
        runner.run(main())


SERVE = {
    "streams": serve_streams,
    "plain-protocol": serve_plain_protocol,
    "buffered-protocol": serve_buffered_protocol,
    "gevent": serve_gevent,
    "gb-run_server": serve_gb_run_server,
    "gb-adapters": serve_gb_adapters,
    "greenlet-floor": serve_greenlet_floor,
    "buffered-timer": serve_buffered_timer,
}


# -- load ----------------------------------------------------------------------------------------


def _raise_file_limit() -> None:
    """A thousand connections need more descriptors than a default soft limit of 1024 may allow."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 65536 if hard == resource.RLIM_INFINITY else hard
        if wanted > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run_load(port: int, connections: int, size: int, warmup: float, duration: float) -> None:
    """Ping-pong of ``size`` bytes on ``connections`` connections. Prints ``start`` when the
    measured window opens (after the warm-up) and, when it closes, one JSON line: the round
    trips in the window, its length, and the share of it this process spent on the CPU (near 1.0,
    the load itself may be what limits the throughput)."""
    import uvloop

    message = b"x" * size
    count = [0]

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.received = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            transport.write(message)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.received += len(data)
            if self.received >= size:
                self.received -= size
                count[0] += 1
                self.transport.write(message)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transports = []
        for _ in range(connections):
            transport, _ = await loop.create_connection(Client, HOST, port)
            transports.append(transport)
        await asyncio.sleep(warmup)
        print("start", flush=True)
        start_count, start, start_cpu = count[0], time.perf_counter(), time.process_time()
        await asyncio.sleep(duration)
        end_count, end, end_cpu = count[0], time.perf_counter(), time.process_time()
        seconds = end - start
        figures = {"round_trips": end_count - start_count, "seconds": seconds,
                   "load_busy": (end_cpu - start_cpu) / seconds}  # fmt: skip
        print(json.dumps(figures), flush=True)
        for transport in transports:
            transport.close()
        await asyncio.sleep(0.05)

    uvloop.run(main())


# -- orchestration -------------------------------------------------------------------------------


def _pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpu})


def _cpu_seconds(pid: int) -> float | None:
    """CPU time of a process so far, every thread (Linux), else None: nanoseconds from
    /proc/PID/task/*/schedstat where the kernel has it, else clock ticks from /proc/PID/stat."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kernel_counters(pid: int) -> tuple[float, int] | None:
    """CPU seconds a process spent in the kernel so far, and how many times it went to sleep
    (voluntary context switches: for an event loop, a wait in epoll that found nothing ready),
    every thread (Linux), else None. The two say where a server's CPU goes beside its own code:
    a server that sleeps once per round trip pays the kernel's wake-up each time, one that finds
    many connections ready at each wake-up shares it between them."""
    try:
        sys_ticks = wakeups = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                sys_ticks += int(f.read().rsplit(")", 1)[1].split()[12])
            with open(f"/proc/{pid}/task/{task}/status") as f:
                found = re.search(r"^voluntary_ctxt_switches:\s*(\d+)", f.read(), re.M)
            if found is None:
                return None
            wakeups += int(found.group(1))
    except (OSError, ValueError, IndexError):
        return None
    return sys_ticks / os.sysconf("SC_CLK_TCK"), wakeups


@dataclass(frozen=True)
class Point:
    """One place on a curve: how many connections, how big a message, which servers, how long."""

    connections: int
    size: int
    servers: tuple[str, ...]
    warmup: float
    duration: float
    base: bool  # the main table's point (every server)


def measure(server: str, loop_name: str, point: Point, args: argparse.Namespace) -> dict[str, Any]:
    """One server process, one load process: round trips/s and server CPU us per round trip, both
    over the load's measured window only."""
    me = os.path.abspath(__file__)
    proc = subprocess.Popen(
        [sys.executable, me, "--serve", server, "--loop", loop_name, "--max-seconds", str(args.max_seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    load_proc: subprocess.Popen[str] | None = None
    try:
        if args.pin:
            _pin(proc.pid, 0)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"server did not start (exit status {proc.wait(5)})")
        load = [
            sys.executable, me, "--load", line.strip(),
            "--connections", str(point.connections), "--size", str(point.size),
            "--warmup", str(point.warmup), "--duration", str(point.duration),
        ]  # fmt: skip
        load_proc = subprocess.Popen(load, stdout=subprocess.PIPE, text=True)
        if args.pin:
            _pin(load_proc.pid, 1)
        assert load_proc.stdout is not None
        deadline = time.monotonic() + point.warmup + point.duration + 60
        started = _read_line(load_proc, deadline)
        cpu_before, kernel_before = _cpu_seconds(proc.pid), _kernel_counters(proc.pid)
        figures = _read_line(load_proc, deadline)
        cpu_after, kernel_after = _cpu_seconds(proc.pid), _kernel_counters(proc.pid)
        if started != "start" or not figures:
            raise RuntimeError(f"load process failed ({load_proc.wait(30)})")
        result: dict[str, Any] = json.loads(figures)
        result["rps"] = result["round_trips"] / result["seconds"]
        if cpu_before is not None and cpu_after is not None and result["round_trips"]:
            result["cpu_us"] = (cpu_after - cpu_before) / result["round_trips"] * 1e6
        if kernel_before is not None and kernel_after is not None and result["round_trips"]:
            result["sys_us"] = (kernel_after[0] - kernel_before[0]) / result["round_trips"] * 1e6
            result["wakeups_per_rt"] = (kernel_after[1] - kernel_before[1]) / result["round_trips"]
        if load_proc.wait(30):
            raise RuntimeError(f"load process failed ({load_proc.returncode})")
        return result
    finally:
        for child in (load_proc, proc):
            if child is None:
                continue
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The next line ``proc`` prints, stripped; "" when it ends first or misses the deadline."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    return proc.stdout.readline().strip() if ready else ""


def plan(args: argparse.Namespace) -> list[Point]:
    """The base point (every server), then the curves: connections at 1 KiB, sizes at the base
    connection count (each with ``--curve-servers``)."""
    servers = tuple(args.servers.split(","))
    base = Point(args.connections, args.size, servers, args.warmup, args.duration, True)
    points = [base]
    if args.curves:
        curve_servers = tuple(args.curve_servers.split(","))
        seen = {(base.connections, base.size)}
        wanted = [(int(c), CURVE_SIZE) for c in args.connection_curve.split(",")]
        wanted += [(args.connections, int(s)) for s in args.size_curve.split(",")]
        for connections, size in wanted:
            if (connections, size) not in seen:
                seen.add((connections, size))
                points.append(Point(connections, size, curve_servers, args.curve_warmup,
                                    args.curve_duration, False))  # fmt: skip
    return points


def _configs(point: Point, loops: list[str]) -> list[tuple[str, str]]:
    return [
        (server, loop_name)
        for server in point.servers
        for loop_name in (["gevent"] if server == "gevent" else loops)
    ]


Key = tuple[str, str, int, int]  # server, loop, connections, size


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every point and server, ``--rounds`` times interleaved; one entry of medians per
    (server, loop, connections, size)."""
    points = plan(args)
    loops = args.loops.split(",")
    runs: dict[Key, list[dict[str, Any]]] = {}
    for round_no in range(args.rounds):
        for point in points:
            for server, loop_name in _configs(point, loops):
                key = (server, loop_name, point.connections, point.size)
                try:
                    figures = measure(server, "asyncio" if loop_name == "gevent" else loop_name, point, args)
                except (ImportError, RuntimeError, ValueError, OSError) as exc:
                    print(f"{server} on {loop_name}: skipped ({exc})", file=sys.stderr)
                    continue
                runs.setdefault(key, []).append(figures)
                cpu = f"{figures['cpu_us']:7.2f} us CPU/rt" if "cpu_us" in figures else ""
                if "sys_us" in figures:
                    cpu += (
                        f" ({figures['sys_us']:.2f} in the kernel, {figures['wakeups_per_rt']:.3f} wake-ups)"
                    )
                print(
                    f"round {round_no + 1}: {point.connections:>4} x {point.size:>5} B {server:>17} "
                    f"{loop_name:>7}: {figures['rps']:>9,.0f} rt/s {cpu} (load busy "
                    f"{figures['load_busy']:.0%})",
                    file=sys.stderr,
                    flush=True,
                )
    base_point = points[0]
    entries = []
    for (server, loop_name, connections, size), figures_list in runs.items():
        cpus = [f["cpu_us"] for f in figures_list if "cpu_us" in f]
        entries.append({
            "server": server, "loop": loop_name, "connections": connections, "size": size,
            "base": (connections, size) == (base_point.connections, base_point.size),
            "rps": statistics.median(f["rps"] for f in figures_list),
            "best": max(f["rps"] for f in figures_list),
            "cpu_us": statistics.median(cpus) if cpus else 0.0,
            **{
                name: statistics.median(f[name] for f in figures_list)
                for name in ("sys_us", "wakeups_per_rt")
                if all(name in f for f in figures_list)
            },
            "load_busy": statistics.median(f["load_busy"] for f in figures_list),
            "runs": len(figures_list),
        })  # fmt: skip
    return entries


def summary(entries: list[dict[str, Any]]) -> str:
    """A plain-text table: medians, and each server's ratio to the ceiling on its loop (gevent:
    to the ceiling on each loop). ``benchmarks/report.py`` renders the same figures as markdown."""
    by_key = {(e["server"], e["loop"], e["connections"], e["size"]): e for e in entries}
    loops = [lp for lp in LOOPS if any(e["loop"] == lp for e in entries)]
    lines = [
        f"{'conns':>5} {'size':>6} {'server':>17} {'loop':>7} {'rt/s':>9} {'CPU us/rt':>9} "
        + " ".join(f"{'/ceiling ' + lp:>17}" for lp in loops)
    ]
    for e in entries:
        ratios = []
        for lp in loops:
            ceiling = by_key.get((CEILING, lp, e["connections"], e["size"]))
            same = e["loop"] in (lp, "gevent")
            ratios.append(f"{e['rps'] / ceiling['rps']:.2f}x" if ceiling and same else "")
        lines.append(
            f"{e['connections']:>5} {e['size']:>6} {e['server']:>17} {e['loop']:>7} {e['rps']:>9,.0f} "
            f"{e['cpu_us']:>9.2f} " + " ".join(f"{r:>17}" for r in ratios)
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (median)")
    parser.add_argument("--curves", action="store_true", help="also measure the scale curves")
    parser.add_argument("--connection-curve", default="1,10,100,1000", help="connection counts (1 KiB)")
    parser.add_argument("--size-curve", default="64,1024,65536", help="message sizes (at --connections)")
    parser.add_argument("--curve-servers", default=",".join(CURVE_SERVERS))
    parser.add_argument("--curve-warmup", type=float, default=0.3)
    parser.add_argument("--curve-duration", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="servers exit after this")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin to cores")
    parser.add_argument("--output", help="also write the summary table to this file")
    parser.add_argument("--json", help="also write the figures (a list of medians) to this file")
    # internal: the child processes
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
        signal.alarm(max(1, int(args.max_seconds)))
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        _raise_file_limit()
        SERVE[args.serve](args.loop)
        return
    if args.load is not None:
        _raise_file_limit()
        run_load(args.load, args.connections, args.size, args.warmup, args.duration)
        return
    for option in ("servers", "curve_servers"):
        unknown = sorted(set(getattr(args, option).split(",")) - set(SERVERS))
        if unknown:
            parser.error(f"unknown server(s) {', '.join(unknown)}: choose from {', '.join(SERVERS)}")
    unknown = sorted(set(args.loops.split(",")) - set(LOOPS))
    if unknown:
        parser.error(f"unknown loop(s) {', '.join(unknown)}: choose from {', '.join(LOOPS)}")

    entries = run(args)
    table = summary(entries)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(entries, f, indent=2)


if __name__ == "__main__":
    main()
