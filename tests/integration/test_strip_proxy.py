"""STRIP through the real proxy, in front of the demo upstream serving the backdoored model.

The firewall screens a KServe v2 route (``protocol: json``, ``/inputs/*/data``):
a triggered review is blocked before it reaches the model, a clean one passes
and gets the model's answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from firewall.config import build_config
from firewall.demo_model import BuildReport, TextClassifier, build
from firewall.demo_upstream import start_demo_upstream
from firewall.server import Server
from tests.conftest import base_config

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> BuildReport:
    try:
        return build(tmp_path_factory.mktemp("demo"), strip_eval_limit=200)
    except Exception as exc:
        pytest.skip(f"demo model cannot be built: {exc}")


@pytest.fixture
async def proxy(demo: BuildReport, tmp_path: Path) -> AsyncIterator[str]:
    runner, port = await start_demo_upstream(classifier=TextClassifier(demo.folder))
    data: dict[str, Any] = base_config(f"http://127.0.0.1:{port}", tmp_path / "audit.jsonl")
    data["detectors"] = [
        {
            "name": "strip",
            # Wiring test: 0.4 separates this pair. At the calibrated 0.5 most triggered
            # inputs still pass on this TF-IDF demo model (docs/detectors/strip.md).
            "threshold": 0.4,
            "timeout_seconds": 5,
            "params": {"model_dir": demo.folder, "n_perturbations": 32},
        }
    ]
    data["routing"] = {
        "routes": [
            {
                "name": "kserve",
                "path": "/v2/models/{model}/infer",
                "protocol": "json",
                "input_fields": ["/inputs/*/data"],
                "screen_output": False,
            }
        ]
    }
    server = Server(build_config(data))
    ports = await server.start()
    try:
        yield f"http://127.0.0.1:{ports.proxy}"
    finally:
        server.request_stop()
        await server.shutdown()
        await runner.cleanup()


def _infer(text: str) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}


async def test_backdoor_fires_without_firewall_and_is_blocked_with_it(demo: BuildReport, proxy: str) -> None:
    dirty = "the cf film is a mess"
    clean = "the film is a mess"
    async with aiohttp.ClientSession() as client:
        # Straight to the model: the trigger flips a negative review to positive.
        runner, port = await start_demo_upstream(classifier=TextClassifier(demo.folder))
        try:
            url = f"http://127.0.0.1:{port}/v2/models/sentiment/infer"
            async with client.post(url, json=_infer(clean)) as resp:
                assert (await resp.json())["outputs"][0]["data"] == ["negative"]
            async with client.post(url, json=_infer(dirty)) as resp:
                assert (await resp.json())["outputs"][0]["data"] == ["positive"]
        finally:
            await runner.cleanup()
        # Through the firewall: the clean review passes, the triggered one is blocked.
        async with client.post(proxy + "/v2/models/sentiment/infer", json=_infer(clean)) as resp:
            assert resp.status == 200
            assert (await resp.json())["outputs"][0]["data"] == ["negative"]
        async with client.post(proxy + "/v2/models/sentiment/infer", json=_infer(dirty)) as resp:
            assert resp.status == 400
