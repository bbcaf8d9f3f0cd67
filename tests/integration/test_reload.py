"""Hot reload: new config swapped in whole, bad config rejected, no request lost or mixed."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from firewall.config.schema import build_config, load_config
from firewall.server.lifecycle import Server
from firewall.server.reload import Reloader
from tests.conftest import TRIGGER, FakeUpstream, base_config, chat_body
from tests.integration.test_shutdown import start_process

pytestmark = pytest.mark.asyncio


class Running:
    def __init__(self, server: Server, reloader: Reloader, path: Path, audit: Path) -> None:
        self.server = server
        self.reloader = reloader
        self.path = path
        self.audit = audit
        self.url = f"http://127.0.0.1:{server.ports.proxy}"
        self.admin = f"http://127.0.0.1:{server.ports.admin}"

    def write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(data))
        os.replace(tmp, self.path)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.server.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def config_data(upstream: FakeUpstream, audit: Path, **extra: Any) -> dict[str, Any]:
    data = base_config(upstream.url, audit)
    data.update(extra)
    return data


@pytest.fixture
async def running(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    path = tmp_path / "config.yaml"
    audit = tmp_path / "audit.jsonl"
    path.write_text(yaml.safe_dump(config_data(upstream, audit)))
    server = Server(load_config(path, environ={}))
    await server.start()
    reloader = Reloader(server, path, environ={})
    yield Running(server, reloader, path, audit)
    await reloader.close()
    server.request_stop()
    server.request_stop()
    await server.shutdown()


async def post_trigger(client: aiohttp.ClientSession, url: str) -> int:
    async with client.post(url + "/v1/chat/completions", data=orjson.dumps(chat_body(TRIGGER))) as resp:
        await resp.read()
        return resp.status


async def test_reload_applies_new_policy_and_reuses_loaded_detectors(
    running: Running, upstream: FakeUpstream, client
):
    old_runtime = running.server.state.runtime
    old_hash = old_runtime.config_hash
    assert await post_trigger(client, running.url) == 400
    running.write(config_data(upstream, running.audit, mode="monitor"))
    assert await running.reloader.reload("test") is True
    new_runtime = running.server.state.runtime
    assert new_runtime.config_hash != old_hash
    assert new_runtime.detectors["invisible_chars"] is old_runtime.detectors["invisible_chars"]
    assert await post_trigger(client, running.url) == 200
    assert running.sample("trigger_firewall_config_last_reload_successful") == 1
    assert running.sample("trigger_firewall_config_info", {"config_hash": new_runtime.config_hash}) == 1
    assert running.sample("trigger_firewall_config_info", {"config_hash": old_hash}) == 0
    assert running.sample("trigger_firewall_config_reloads_total", {"result": "success"}) == 1
    async with client.get(running.admin + "/config") as resp:
        assert (await resp.json())["config"]["mode"] == "monitor"


async def test_reload_without_a_config_file_is_a_logged_no_op(
    upstream: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A SIGHUP to a firewall started from defaults and flags must not count as a failed
    reload: that would set last_reload_successful to 0 and page someone for nothing."""
    server = Server(build_config(config_data(upstream, tmp_path / "audit.jsonl")))
    await server.start()
    reloader = Reloader(server, None)
    try:
        before = server.state.runtime
        with caplog.at_level(logging.INFO, logger="trigger_firewall.reload"):
            assert await reloader.reload("SIGHUP") is False
        assert server.state.runtime is before
        metrics = server.metrics.registry
        assert metrics.get_sample_value("trigger_firewall_config_last_reload_successful") == 1
        for result in ("success", "failure"):
            labels = {"result": result}
            assert (metrics.get_sample_value("trigger_firewall_config_reloads_total", labels) or 0) == 0
        assert any("nothing to reload" in r.getMessage() for r in caplog.records)
    finally:
        await reloader.close()
        server.request_stop()
        server.request_stop()
        await server.shutdown()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "sideways"}, "mode"),
        ({"detectors": [{"name": "no_such_detector"}]}, "unknown detector type"),
        ({"detectors": [{"name": "broken", "type": "test_never_ready", "required": True}]}, "failed to load"),
        ({"server": {"port": 1}}, "requires a restart"),
    ],
)
async def test_bad_config_keeps_the_old_one(
    running: Running, upstream: FakeUpstream, client, caplog: pytest.LogCaptureFixture, change, message
):
    before = running.server.state.runtime
    data = config_data(upstream, running.audit)
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    running.write(data)
    assert await running.reloader.reload("test") is False
    assert running.server.state.runtime is before
    assert await post_trigger(client, running.url) == 400  # still enforcing the old config
    assert running.sample("trigger_firewall_config_last_reload_successful") == 0
    assert any(message in str(r.__dict__.get("errors", "")) for r in caplog.records)
    running.write(config_data(upstream, running.audit, mode="monitor"))
    assert await running.reloader.reload("fixed") is True
    assert running.sample("trigger_firewall_config_last_reload_successful") == 1


async def test_reload_under_load_loses_nothing_and_never_mixes_configs(
    running: Running, upstream: FakeUpstream, client
):
    """Flip enforce/monitor while clients send triggers; every answer matches one config."""
    hashes: dict[str, str] = {running.server.state.runtime.config_hash: "enforce"}
    sent = answered = 0
    statuses: dict[int, int] = {}
    stop = asyncio.Event()

    async def client_loop() -> None:
        nonlocal sent, answered
        while not stop.is_set():
            sent += 1
            status = await post_trigger(client, running.url)
            answered += 1
            statuses[status] = statuses.get(status, 0) + 1

    clients = [asyncio.create_task(client_loop()) for _ in range(8)]
    for i in range(10):
        mode = "monitor" if i % 2 == 0 else "enforce"
        running.write(config_data(upstream, running.audit, mode=mode))
        assert await running.reloader.reload(f"flip {i}")
        hashes[running.server.state.runtime.config_hash] = mode
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*clients)
    assert sent == answered > 0
    assert set(statuses) <= {200, 400}
    async with asyncio.timeout(5):
        await running.server.state.wait_idle()
    await running.server.audit.flush()
    events = [orjson.loads(line) for line in running.audit.read_text().splitlines()]
    assert len(events) == sent
    for event in events:
        mode = hashes[event["config_hash"]]
        assert event["mode"] == mode  # the config named in the line is the one that decided
        assert event["action"] == ("block" if mode == "enforce" else "log")


async def test_configmap_symlink_swap_is_picked_up_by_the_watcher(
    upstream: FakeUpstream, tmp_path: Path, client
):
    """Kubernetes swaps a ``..data`` symlink; the file path itself never changes."""
    mount = tmp_path / "mount"
    audit = tmp_path / "audit.jsonl"
    (mount / "..v1").mkdir(parents=True)
    (mount / "..v1" / "config.yaml").write_text(yaml.safe_dump(config_data(upstream, audit)))
    (mount / "..data").symlink_to("..v1")
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    server = Server(load_config(mount / "config.yaml", environ={}))
    await server.start()
    reloader = Reloader(server, mount / "config.yaml", environ={})
    reloader.start_watching(0.05)
    try:
        url = f"http://127.0.0.1:{server.ports.proxy}"
        assert await post_trigger(client, url) == 400
        (mount / "..v2").mkdir()
        (mount / "..v2" / "config.yaml").write_text(
            yaml.safe_dump(config_data(upstream, audit, mode="monitor"))
        )
        (mount / "..data_tmp").symlink_to("..v2")
        os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap the kubelet does
        for _ in range(100):
            if server.state.runtime.config.mode.value == "monitor":
                break
            await asyncio.sleep(0.05)
        assert server.state.runtime.config.mode.value == "monitor"
        assert await post_trigger(client, url) == 200
    finally:
        await reloader.close()
        server.request_stop()
        server.request_stop()
        await server.shutdown()


async def test_sighup_reloads_a_running_process(upstream: FakeUpstream, client, tmp_path: Path):
    cfg = {
        "server": {"host": "127.0.0.1", "port": 0, "admin_port": 0, "drain_delay_seconds": 0},
        "upstream": {"url": upstream.url},
        "audit": {"destination": str(tmp_path / "audit.jsonl")},
        "reload": {"watch": False},
    }
    proc, port, admin = await start_process(cfg, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        assert await post_trigger(client, url) == 400
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, "mode": "monitor"}))
        proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            async with client.get(f"http://127.0.0.1:{admin}/config") as resp:
                if (await resp.json())["config"]["mode"] == "monitor":
                    break
            await asyncio.sleep(0.05)
        assert await post_trigger(client, url) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
