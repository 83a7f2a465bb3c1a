"""A throw-away ``redis-server`` (the Debian package) on a free port, for tests and ``streamscore up``.

Started as ``redis-server --port N --save "" --appendonly no`` (no persistence: the stream
rewrites every key it touches), in its own process group, and stopped with it.

>>> server = RedisServer()  # doctest: +SKIP
>>> server.start().url       # doctest: +SKIP
'redis://127.0.0.1:40123/0'
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

from streaming.io.pubsub_local import _free_port


class RedisServerError(RuntimeError):
    """redis-server is missing or did not come up."""


class RedisServer:
    """One redis-server process on ``host`` and a free (or given) port."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, binary: str = "redis-server"):
        self.host = host
        self.port = port
        self.binary = binary
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart on the same port after :meth:`stop`) and wait until it accepts connections."""
        path = shutil.which(self.binary)
        if path is None:
            raise RedisServerError(f"{self.binary} not found: run `make install` (deploy/local/install-redis.sh)")
        if self.port is None:
            self.port = _free_port(self.host)
        self._proc = subprocess.Popen(
            [path, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RedisServerError(f"redis-server exited with {self._proc.returncode}: {err[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on {self.host}:{self.port} within {timeout} s")

    def stop(self) -> None:
        """Kill the server (state is lost: it has no persistence); the port is kept for a restart."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
