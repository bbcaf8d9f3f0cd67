"""The image's own start command, with the production config, passes a request through.

There is no Docker engine here, so the test reads what the image would run from the
Dockerfile itself: the final stage's ``ENTRYPOINT``, the runtime stage's ``ENV``
(``TRIGGER_FIREWALL_CONFIG`` names the file the image copies in) and the
``HEALTHCHECK`` command, and runs them on this machine. Only what a pod would
override is overridden: the listening ports (two pods' worth of fixed ports cannot
share a CI machine) and the upstream address, both through ``TRIGGER_FIREWALL_*``
environment variables exactly as a Kubernetes manifest would set them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import orjson

from tests.conftest import FakeUpstream, chat_body

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _logical_lines(text: str) -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    out: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out


def _stage(lines: list[str], name: str) -> list[str]:
    """The instructions of stage ``name`` (``FROM ... AS name``) up to the next ``FROM``."""
    start = next(i for i, line in enumerate(lines) if re.match(rf"FROM\s+\S+\s+AS\s+{name}$", line, re.I))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].upper().startswith("FROM ")), len(lines))
    return lines[start:end]


def _image_env() -> dict[str, str]:
    lines = _stage(_logical_lines(DOCKERFILE.read_text()), "runtime-base")
    env: dict[str, str] = {}
    for line in lines:
        if line.upper().startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _copied_config(path_in_image: str) -> Path:
    lines = _stage(_logical_lines(DOCKERFILE.read_text()), "runtime-base")
    for line in lines:
        parts = line.split()
        if parts[0].upper() == "COPY" and parts[-1] == path_in_image and not parts[1].startswith("--"):
            return ROOT / parts[1]
    raise AssertionError(f"the runtime stage copies nothing to {path_in_image}")


def _json_array(line: str, keyword: str) -> list[str]:
    value = json.loads(line[len(keyword) :].strip())
    assert isinstance(value, list), line
    assert all(isinstance(v, str) for v in value), line
    return value


def _entrypoint(stage: str = "cpu") -> list[str]:
    lines = _stage(_logical_lines(DOCKERFILE.read_text()), stage)
    found = [_json_array(line, "ENTRYPOINT") for line in lines if line.upper().startswith("ENTRYPOINT")]
    assert found, f"stage {stage} has no ENTRYPOINT"
    return found[-1]


def _healthcheck() -> list[str]:
    lines = _stage(_logical_lines(DOCKERFILE.read_text()), "runtime-base")
    line = next(line for line in lines if line.upper().startswith("HEALTHCHECK"))
    return _json_array(line[line.upper().index("CMD") :], "CMD")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_dockerfile_is_read_as_the_image_would_run() -> None:
    env = _image_env()
    assert env["TRIGGER_FIREWALL_CONFIG"] == "/etc/trigger-firewall/config.yaml"
    assert _copied_config(env["TRIGGER_FIREWALL_CONFIG"]) == ROOT / "deploy/config/firewall.yaml"
    assert _entrypoint("cpu") == ["trigger-firewall", "serve"]
    assert _healthcheck()[:2] == ["python", "-c"]


async def test_image_entrypoint_serves_the_production_config(
    upstream: FakeUpstream, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    image_env = _image_env()
    config = _copied_config(image_env["TRIGGER_FIREWALL_CONFIG"])
    port, admin = _free_port(), _free_port()
    env = {
        **os.environ,
        **{k: v for k, v in image_env.items() if k != "PATH"},  # our venv stands in for /opt/venv
        "TRIGGER_FIREWALL_CONFIG": str(config),
        "TRIGGER_FIREWALL_CACHE_DIR": str(tmp_path / "cache"),
        # What a pod spec would set: its ports and the model server's address.
        "TRIGGER_FIREWALL_SERVER__HOST": "127.0.0.1",
        "TRIGGER_FIREWALL_SERVER__ADMIN_HOST": "127.0.0.1",
        "TRIGGER_FIREWALL_SERVER__PORT": str(port),
        "TRIGGER_FIREWALL_SERVER__ADMIN_PORT": str(admin),
        "TRIGGER_FIREWALL_SERVER__DRAIN_DELAY_SECONDS": "0.2",
        "TRIGGER_FIREWALL_UPSTREAM__URL": upstream.url,
    }
    command = _entrypoint("cpu")
    exe = Path(sys.executable).with_name(command[0])
    assert exe.exists(), f"{command[0]} is not installed beside {sys.executable}"
    proc = await asyncio.create_subprocess_exec(
        str(exe),
        *command[1:],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while True:
                line = await proc.stderr.readline()
                assert line, "the entrypoint exited before it was ready"
                if orjson.loads(line).get("message") == "ready":
                    break
        # The image's HEALTHCHECK, pointed at this instance's admin port.
        check = [a.replace("127.0.0.1:9090", f"127.0.0.1:{admin}") for a in _healthcheck()]
        probe = await asyncio.create_subprocess_exec(sys.executable, *check[1:])
        assert await asyncio.wait_for(probe.wait(), 10) == 0

        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Content-Type": "application/json"}
        async with client.post(
            url, data=orjson.dumps(chat_body("Summarise this review.")), headers=headers
        ) as r:
            assert r.status == 200
            assert (await r.json())["object"] == "chat.completion"
        zero_width = "Summarise this re\u200b\u200b\u200bview."
        async with client.post(url, data=orjson.dumps(chat_body(zero_width)), headers=headers) as r:
            assert r.status == 200  # sanitized: forwarded without the zero-width run
        forwarded = orjson.loads(upstream.received[-1]["body"])
        assert forwarded["messages"][0]["content"] == "Summarise this review."
        smuggled = "Summarise this review.\U000e0063\U000e0066"
        async with client.post(url, data=orjson.dumps(chat_body(smuggled)), headers=headers) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "content_filter"
        assert len(upstream.received) == 2  # the blocked request never reached the model server

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert proc.stdout is not None
        audit = [orjson.loads(x) for x in (await proc.stdout.read()).splitlines() if x.startswith(b"{")]
        assert [a["action"] for a in audit if "action" in a] == ["allow", "sanitize", "block"]
        assert "Summarise" not in str(audit)  # the production config keeps prompts out of the log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
