"""Echo servers side by side: greenbridge's flows and ``net.run_server`` against their peers.

Each server runs in a process of its own; one load process (uvloop, raw Protocols: the cheapest
client there is) keeps ``--connections`` connections doing request/response ping-pong of
``--size`` bytes, and counts round trips per second after a warm-up. On a machine with at least
two cores the server and the load are pinned to different cores. Every configuration is measured
``--rounds`` times, interleaved, and the median reported; beside throughput, the server's CPU
time per round trip (Linux, from /proc), which a busy shared machine disturbs much less.

Servers (each on the asyncio loop and on uvloop, except gevent which has its own):

  streams        asyncio.start_server, reader.read / writer.write / await drain()
  protocol       a raw asyncio.Protocol echoing in data_received (the ceiling)
  gevent         gevent.server.StreamServer, sock.recv / sock.sendall
  gb-run_server  greenbridge: net.listen + net.run_server, conn.read / conn.write
  gb-adapters    greenbridge over asyncio streams: flow.source_of_reader / sink_of_writer

    python benchmarks/bench_echo.py                      # everything, about two minutes
    python benchmarks/bench_echo.py --duration 5 --output results.md
    python benchmarks/bench_echo.py --servers gb-run_server,streams --loops uvloop

Loopback only; every process stops by itself (the servers after --max-seconds even if this
script dies). A benchmark, not a test: it never fails on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

HOST = "127.0.0.1"
SERVERS = ("streams", "protocol", "gevent", "gb-run_server", "gb-adapters")
LOOPS = ("asyncio", "uvloop")


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


def serve_protocol(loop_name: str) -> None:
    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, HOST, 0, backlog=1024)
        _announce(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=lambda: _new_loop(loop_name)) as runner:
        runner.run(main())


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
    "protocol": serve_protocol,
    "gevent": serve_gevent,
    "gb-run_server": serve_gb_run_server,
    "gb-adapters": serve_gb_adapters,
}


# -- load ----------------------------------------------------------------------------------------


def run_load(port: int, connections: int, size: int, warmup: float, duration: float) -> dict[str, Any]:
    """Ping-pong on ``connections`` connections; round trips per second after the warm-up."""
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

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        transports = []
        for _ in range(connections):
            transport, _ = await loop.create_connection(Client, HOST, port)
            transports.append(transport)
        await asyncio.sleep(warmup)
        start_count, start = count[0], time.perf_counter()
        await asyncio.sleep(duration)
        end_count, end = count[0], time.perf_counter()
        for transport in transports:
            transport.close()
        await asyncio.sleep(0.05)
        return {"round_trips": end_count - start_count, "seconds": end - start, "total": count[0]}

    result = uvloop.run(main())
    result["rps"] = result["round_trips"] / result["seconds"]
    return result


# -- orchestration -------------------------------------------------------------------------------


def _pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpu})


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(server: str, loop_name: str, args: argparse.Namespace) -> dict[str, Any]:
    me = os.path.abspath(__file__)
    proc = subprocess.Popen(
        [sys.executable, me, "--serve", server, "--loop", loop_name, "--max-seconds", str(args.max_seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if args.pin:
            _pin(proc.pid, 0)
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        load = [
            sys.executable, me, "--load", str(port),
            "--connections", str(args.connections), "--size", str(args.size),
            "--warmup", str(args.warmup), "--duration", str(args.duration),
        ]  # fmt: skip
        budget = args.warmup + args.duration + 30
        cpu_before = _cpu_seconds(proc.pid)
        load_proc = subprocess.Popen(load, stdout=subprocess.PIPE, text=True)
        if args.pin:
            _pin(load_proc.pid, 1)
        out, _ = load_proc.communicate(timeout=budget)
        cpu_after = _cpu_seconds(proc.pid)
        if load_proc.returncode:
            raise RuntimeError(f"load process failed ({load_proc.returncode})")
        figures = dict(json.loads(out))
        if cpu_before is not None and cpu_after is not None and figures["total"]:
            # Server CPU per round trip: steadier than throughput on a shared machine.
            figures["cpu_us"] = (cpu_after - cpu_before) / figures["total"] * 1e6
        return figures
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


Results = dict[tuple[str, str], dict[str, float]]


def report(results: Results, args: argparse.Namespace) -> str:
    lines = [
        f"Echo, {args.connections} connections, {args.size} B ping-pong, {args.duration:g} s per "
        f"server after {args.warmup:g} s warm-up, median of {args.rounds} interleaved round(s)",
        "",
        "| server | loop | round trips/s | best | server CPU us/round trip |",
        "|---|---|---:|---:|---:|",
    ]
    for (server, loop_name), r in results.items():
        cpu = f"{r['cpu_us']:.2f}" if r.get("cpu_us") else "n/a"
        lines.append(f"| {server} | {loop_name} | {r['rps']:,.0f} | {r['best']:,.0f} | {cpu} |")
    lines += [
        "",
        "Ratios of round trips/s (in brackets: of server CPU per round trip, peer / ours):",
        "",
        "| ratio | asyncio | uvloop |",
        "|---|---:|---:|",
    ]

    def cell(ours: tuple[str, str], peer: tuple[str, str]) -> str:
        a, b = results.get(ours), results.get(peer)
        if not a or not b:
            return "n/a"
        return f"{_ratio(a['rps'], b['rps'])} ({_ratio(b.get('cpu_us'), a.get('cpu_us'))})"

    for gb_server in ("gb-run_server", "gb-adapters"):
        for peer, label in (("streams", "asyncio streams"), ("protocol", "raw Protocol")):
            cells = [cell((gb_server, loop), (peer, loop)) for loop in LOOPS]
            lines.append(f"| {gb_server} / {label} | {cells[0]} | {cells[1]} |")
        cells = [cell((gb_server, loop), ("gevent", "gevent")) for loop in LOOPS]
        lines.append(f"| {gb_server} / gevent | {cells[0]} | {cells[1]} |")
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
    parser.add_argument("--max-seconds", type=float, default=120.0, help="servers exit after this")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin to cores")
    parser.add_argument("--output", help="also write the table (markdown) to this file")
    parser.add_argument("--json", help="also write the raw figures to this file")
    # internal: the child processes
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
        signal.alarm(max(1, int(args.max_seconds)))
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        SERVE[args.serve](args.loop)
        return
    if args.load is not None:
        print(json.dumps(run_load(args.load, args.connections, args.size, args.warmup, args.duration)))
        return

    configs = [
        (server, loop_name)
        for server in args.servers.split(",")
        for loop_name in (["gevent"] if server == "gevent" else args.loops.split(","))
    ]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {config: [] for config in configs}
    for round_no in range(args.rounds):
        for server, loop_name in configs:
            try:
                figures = measure(server, "asyncio" if loop_name == "gevent" else loop_name, args)
            except (ImportError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                print(f"{server} on {loop_name}: skipped ({exc})", file=sys.stderr)
                continue
            runs[(server, loop_name)].append(figures)
            cpu = f"{figures['cpu_us']:.2f} us CPU/rt" if "cpu_us" in figures else ""
            print(
                f"round {round_no + 1}: {server:>14} {loop_name:>8}: {figures['rps']:>10,.0f} rt/s {cpu}",
                file=sys.stderr,
            )
    results: Results = {}
    for config, figures_list in runs.items():
        if not figures_list:
            continue
        cpus = [f["cpu_us"] for f in figures_list if "cpu_us" in f]
        results[config] = {
            "rps": statistics.median(f["rps"] for f in figures_list),
            "best": max(f["rps"] for f in figures_list),
            "cpu_us": statistics.median(cpus) if cpus else 0.0,
        }
    table = report(results, args)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"server": s, "loop": lp, **r} for (s, lp), r in results.items()], f, indent=2)


if __name__ == "__main__":
    main()
