"""Real servers for the tests that need them: PostgreSQL and redis, on 127.0.0.1 only.

Each is a private instance started for the test session in a temporary directory, on a free
port, and stopped at the end: no system service is touched. The servers come from Debian's
``postgresql`` and ``redis-server`` packages; when they are missing and we run as root, they are
installed (``apt-get``) once; when they cannot be had, the tests that need them are skipped with
the reason. Fixtures (registered by ``tests/conftest.py``):

* ``postgres_server`` -- a :class:`Postgres` with ``host``, ``port``, ``user``, ``dbname`` and
  ``dsn`` (``postgresql://user@127.0.0.1:port/dbname``), trust authentication.
* ``redis_server`` -- a :class:`Redis` with ``host``, ``port`` and ``url``.

``start_mariadb()`` (Debian's ``mariadb-server``; used by ``tests/test_blocking.py``'s own
fixture, never installed by the tests) gives a :class:`MariaDB` with ``host``, ``port`` and
``user``: grant tables skipped, so any user connects without a password.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

_APT_PACKAGES = {"postgres": "postgresql", "redis": "redis-server"}
_install_tried: dict[str, str | None] = {}


@dataclasses.dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    dbname: str

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


@dataclasses.dataclass(frozen=True)
class Redis:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


@dataclasses.dataclass(frozen=True)
class MariaDB:
    host: str
    port: int
    user: str = "root"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def _stop(proc: subprocess.Popen[bytes], root: str) -> None:
    """Stop a server started by this module and remove its directory."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(root, ignore_errors=True)


def _ensure_installed(kind: str, find: object) -> str | None:
    """Return why ``kind`` cannot be had, or None once its binaries are present."""
    assert callable(find)
    if find():
        return None
    if kind in _install_tried:
        return _install_tried[kind]
    reason: str | None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        reason = f"{_APT_PACKAGES[kind]} is not installed (apt-get install -y {_APT_PACKAGES[kind]})"
    else:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", _APT_PACKAGES[kind]],
            env=env,
            capture_output=True,
            check=False,
        )
        reason = None if done.returncode == 0 and find() else (
            f"apt-get install {_APT_PACKAGES[kind]} failed: {done.stderr.decode(errors='replace')[-300:]}"
        )
    _install_tried[kind] = reason
    return reason


def _postgres_bindir() -> str | None:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return dirs[-1] if dirs and os.path.exists(os.path.join(dirs[-1], "initdb")) else None


def _as_postgres_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run it as Debian's 'postgres' system user then.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@contextlib.contextmanager
def start_postgres() -> Iterator[Postgres]:
    reason = _ensure_installed("postgres", _postgres_bindir)
    if reason is not None:
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    bindir = _postgres_bindir()
    assert bindir is not None
    root = tempfile.mkdtemp(prefix="gb-pg-")
    data = os.path.join(root, "data")
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        _as_postgres_user(
            [f"{bindir}/initdb", "-D", data, "-U", user, "-A", "trust", "--no-sync", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    proc = subprocess.Popen(
        _as_postgres_user([
            f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", root,
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200",
        ]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc, "postgres")
        # Accepting TCP is not accepting queries: wait until the server answers a login.
        deadline = time.monotonic() + 30
        while subprocess.run(
            [f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        ).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not become ready")
            time.sleep(0.1)
        yield Postgres("127.0.0.1", port, user, "postgres")
    finally:
        _stop(proc, root)


@contextlib.contextmanager
def start_redis() -> Iterator[Redis]:
    reason = _ensure_installed("redis", lambda: shutil.which("redis-server"))
    if reason is not None:
        pytest.skip(f"redis unavailable: {reason}")
    port = _free_port()
    root = tempfile.mkdtemp(prefix="gb-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", root],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc, "redis-server")
        yield Redis("127.0.0.1", port)
    finally:
        _stop(proc, root)


@contextlib.contextmanager
def start_mariadb() -> Iterator[MariaDB]:
    server = shutil.which("mariadbd", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
    install = shutil.which("mariadb-install-db")
    if server is None or install is None:
        pytest.skip("MariaDB unavailable: apt-get install -y mariadb-server")
    root = tempfile.mkdtemp(prefix="gb-mariadb-")
    data = os.path.join(root, "data")
    # As root, MariaDB runs as Debian's 'mysql' system user (it refuses root without --user).
    as_user = ["--user=mysql"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(root, "mysql", "mysql")
    subprocess.run(
        [install, "--no-defaults", f"--datadir={data}", *as_user, "--auth-root-authentication-method=normal",
         "--skip-test-db"],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--no-defaults", f"--datadir={data}", *as_user, f"--port={port}", "--bind-address=127.0.0.1",
         f"--socket={root}/mysqld.sock", f"--pid-file={root}/mysqld.pid", "--skip-grant-tables",
         f"--log-error={root}/error.log", "--innodb-buffer-pool-size=16M"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc, "mariadbd")
        yield MariaDB("127.0.0.1", port)
    finally:
        _stop(proc, root)
