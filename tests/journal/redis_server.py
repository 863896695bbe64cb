"""A real ``redis-server`` on a free loopback port, for the journal's tests.

Debian's ``redis-server`` is used; if it is missing the tests fail with a clear message
(nothing is skipped silently, and no test installs system packages: ``.ci/run`` does). Each
server runs in its own temporary directory, without RDB snapshots, with or without an
append-only file, and is stopped (SIGTERM, then SIGKILL) when done.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def redis_server_binary() -> str:
    """The path of ``redis-server``; the tests fail with a clear message without it (they do
    not install system packages: ``.ci/run`` does)."""
    path = shutil.which("redis-server")
    if not path:
        pytest.fail(
            "redis-server is not installed; the journal tests need it. Run .ci/run (which "
            "installs it), or install it yourself: sudo apt-get install redis-server",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``start``, ``stop`` and ``restart`` on the same port."""

    def __init__(self, directory: Path, *, appendonly: bool = False, port: int | None = None):
        self.binary = redis_server_binary()
        self.directory = directory
        self.appendonly = appendonly
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None, "already running"
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log")
                text = log.read_text()[-2000:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{text}")
            time.sleep(0.01)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()  # SIGTERM: redis shuts down cleanly (and syncs its AOF)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


@contextlib.contextmanager
def running_redis(directory: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(directory, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RedisClusterServers:
    """A Redis Cluster of ``masters`` primaries (no replicas) on loopback, from Debian's
    ``redis-server``: each node with ``cluster-enabled yes`` and its own client and bus ports,
    joined and given all 16384 slots by ``redis-cli --cluster create``. ``stop`` stops every
    node (SIGTERM, then SIGKILL)."""

    def __init__(
        self, directory: Path, masters: int = 3, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.binary = redis_server_binary()
        cli = shutil.which("redis-cli")
        if not cli:
            pytest.fail("redis-cli is not installed (it comes with redis-server; run .ci/run)",
                        pytrace=False)
        self.cli = cli
        self.directory = directory
        self.masters = masters
        self.extra_args = extra_args
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """A startup node's URL (any node would do: the client discovers the others)."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 30.0) -> None:
        for i in range(self.masters):
            port, bus = free_port(), free_port()
            node_dir = self.directory / f"node{i}"
            node_dir.mkdir(exist_ok=True)
            args = [
                self.binary,
                "--port", str(port),
                "--cluster-port", str(bus),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(node_dir),
                "--daemonize", "no",
                "--logfile", str(node_dir / "redis.log"),
                *self.extra_args,
            ]
            self.ports.append(port)
            self.processes.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        deadline = time.monotonic() + timeout
        try:
            for port in self.ports:
                while not ping(port):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node on port {port} did not start")
                    time.sleep(0.01)
            subprocess.run(
                [self.cli, "--cluster", "create",
                 *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                timeout=timeout,
            )
            # Every node must see the whole cluster as ok before clients are pointed at it.
            for port in self.ports:
                while b"cluster_state:ok" not in subprocess.run(
                    [self.cli, "-p", str(port), "cluster", "info"],
                    capture_output=True, timeout=5, check=False,
                ).stdout:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node on port {port} is not ok")
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        processes, self.processes = self.processes, []
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def running_redis_cluster(
    directory: Path, masters: int = 3, extra_args: tuple[str, ...] = ()
) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(directory, masters, extra_args)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
