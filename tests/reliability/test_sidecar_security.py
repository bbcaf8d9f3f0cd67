"""The sidecar's own attack surface: where it listens and what it writes down.

A real ``trigger-firewall serve`` process carries traffic laden with canary
secrets (a client bearer token, prompt text, the upstream API key from the
environment, a password in the upstream URL, a secret inside a malformed
header). Afterwards no canary may appear in ``/metrics``, ``/config``, the
operational log (stderr) or the audit log, and the audit log must still carry
its events (prompt hashes instead of prompts).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest

from firewall.config.schema import ServerConfig
from loadtests.scenarios import running_stack

pytestmark = pytest.mark.asyncio

ZWSP = "\u200b"
CANARIES = {
    "client_token": "sk-canary-client-7f3a91",
    "prompt": "canary-prompt-5be20c",
    "upstream_key": "sk-canary-upstream-c81d44",
    "url_password": "canarypw9e17",
    "header_secret": "sk-canary-header-2d6b03",
}


def listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


async def test_admin_port_binds_loopback_by_default():
    assert ServerConfig().admin_host == "127.0.0.1"
    async with running_stack() as stack:  # the config sets no admin_host: the default applies
        admin_port = int(stack.admin_url.rsplit(":", 1)[1])
        assert listeners(admin_port) == {"0100007F"}  # 127.0.0.1, and nothing on 0.0.0.0 or ::
        listening = next(
            orjson.loads(line)
            for line in stack.stderr_path.read_text().splitlines()
            if b'"listening"' in line.encode()
        )
        assert listening["admin"] == f"127.0.0.1:{admin_port}"


async def raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_no_canary_secret_reaches_metrics_config_logs_or_audit():
    env = {"TF_CANARY_UPSTREAM_KEY": CANARIES["upstream_key"]}

    def with_key(config: dict) -> dict:
        config["upstream"]["api_key_env"] = "TF_CANARY_UPSTREAM_KEY"
        return config

    async with running_stack(
        config_overrides=with_key, env=env, upstream_userinfo=f"svc:{CANARIES['url_password']}"
    ) as stack:
        url = stack.proxy_url + "/v1/chat/completions"
        auth = {"Authorization": f"Bearer {CANARIES['client_token']}", "Content-Type": "application/json"}
        prompt = f"Remember my passphrase {CANARIES['prompt']} for later."
        bodies = [
            ({"model": "m", "messages": [{"role": "user", "content": prompt}]}, 200),
            ({"model": "m", "messages": [{"role": "user", "content": prompt + ZWSP * 3}]}, 400),
            ({"model": "m", "stream": True, "messages": [{"role": "user", "content": prompt}]}, 200),
            ({"model": "m", "messages": prompt}, 400),  # wrong shape: rejected with an error message
        ]
        async with aiohttp.ClientSession() as session:
            for body, status in bodies:
                async with session.post(url, data=orjson.dumps(body), headers=auth) as resp:
                    assert resp.status == status
                    await resp.read()
            async with session.post(
                url, data=f'{{"bad json {CANARIES["prompt"]}'.encode(), headers=auth
            ) as resp:
                assert resp.status == 400
            port = int(stack.proxy_url.rsplit(":", 1)[1])
            smuggled = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {CANARIES['header_secret']}\x01\r\n".encode()
                + b"Content-Length: 2\r\n\r\n{}"
            )
            assert (await raw_request(port, smuggled)).split(b"\r\n")[0].endswith(b"400 Bad Request")
            async with session.get(stack.admin_url + "/metrics") as resp:
                metrics = await resp.text()
            async with session.get(stack.admin_url + "/config") as resp:
                config = await resp.text()
        assert "trigger_firewall_requests_total" in metrics
        assert '"api_key_env":"TF_CANARY_UPSTREAM_KEY"' in config
        await asyncio.sleep(0.5)  # the audit writer flushes every 0.2 s
        stderr = stack.stderr_path.read_text()
        audit = stack.audit_path.read_text()
    assert "malformed HTTP request rejected" in stderr  # the header secret's request was logged, redacted
    events = [orjson.loads(line) for line in audit.splitlines()]
    assert len(events) >= 3
    assert all(len(e["input.sha256"]) == 64 for e in events if "input.sha256" in e)
    assert "text" not in events[0]  # audit.capture_text is off by default
    for where, text in {"metrics": metrics, "config": config, "stderr": stderr, "audit": audit}.items():
        for name, canary in CANARIES.items():
            assert canary not in text, f"{name} canary leaked into {where}"
