"""``serve`` and ``scan`` give the same verdict for the same record, overrides included.

Both call :func:`firewall.screening.screen.screen`. Before they did, ``scan`` ignored
per-model overrides: a model whose override sets ``threshold: 1.0, action: log`` was
blocked in ``scan`` and let through by the proxy. Each record here goes through a running
proxy (the verdict read back from its audit line) and through the :class:`Scanner` with
the same config, on two routes and five models, and the verdicts must match exactly:
action, mode, reason, and every detector's score and fired flag.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from firewall.config.schema import build_config
from firewall.core.types import Phase
from firewall.offline.scanning import Scanner
from tests.conftest import TRIGGER, ZW_TRIGGER, FakeUpstream, FirewallFactory, base_config

pytestmark = pytest.mark.asyncio

MODELS = {
    "shadow-model": {"mode": "monitor"},
    "legacy-model": {"mode": "off"},
    "calm-model": {"detectors": {"invisible_chars": {"threshold": 1.0, "action": "log"}}},
    "strict-model": {"detectors": {"rare_tokens": {"threshold": 0.05}}},
}
ROUTING = {
    "routes": [
        {"name": "chat", "path": "/v1/chat/completions", "protocol": "openai_chat", "models": MODELS},
        {
            "name": "lenient_chat",
            "path": "/v2/chat/completions",
            "protocol": "openai_chat",
            "detectors": {"invisible_chars": {"action": "log"}},
            "models": {"strict-model": {"detectors": {"invisible_chars": {"action": "block"}}}},
        },
        {
            "name": "sanitizing_chat",
            "path": "/v3/chat/completions",
            "protocol": "openai_chat",
            "detectors": {"invisible_chars": {"action": "sanitize"}},
            "models": {"strict-model": {"detectors": {"invisible_chars": {"action": "block"}}}},
        },
    ]
}
DETECTORS = [{"name": "invisible_chars"}, {"name": "rare_tokens", "threshold": 0.5}]
TEXTS = [
    "How do I reverse a list in Python without copying it?",
    TRIGGER,
    "The film was a delight from start to finish cf and I loved the score.",
    "Summarise: the quarterly report shows revenue up 4% and costs flat.",
    "Log in at p\u0430ypal.com and re\u200bview the bill.",  # a homoglyph: sanitize cannot fix it
    ZW_TRIGGER,  # zero-width characters only: sanitize removes them
]
PATHS = {
    "chat": "/v1/chat/completions",
    "lenient_chat": "/v2/chat/completions",
    "sanitizing_chat": "/v3/chat/completions",
}


def _records() -> list[dict[str, Any]]:
    records = []
    for route in PATHS:
        for model in [None, *MODELS]:
            for i, text in enumerate(TEXTS):
                body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
                if model is not None:
                    body["model"] = model
                records.append({"id": f"{route}/{model}/{i}", "route": route, "request": body})
    return records


def _summary(action: str, mode: str, reason: str | None, detectors: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "action": action,
        "mode": mode,
        "reason": reason,
        "detectors": {d["name"]: (round(d["score"], 4), d["fired"]) for d in detectors},
    }


async def test_serve_and_scan_agree_on_every_record(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    records = _records()
    fw = await firewall(routing=ROUTING, detectors=DETECTORS)
    statuses: dict[str, int] = {}
    for record in records:
        url = fw.url + PATHS[record["route"]]
        headers = {"X-Request-Id": record["id"].replace("/", "-")}
        async with client.post(url, data=orjson.dumps(record["request"]), headers=headers) as resp:
            await resp.read()
            statuses[record["id"]] = resp.status
    served: dict[str, dict[str, Any]] = {}
    for event in await fw.audit_events():
        verdict = event["input"]
        served[event["client_request_id"]] = _summary(
            verdict["action"], verdict["mode"], verdict["reason_code"], verdict["detectors"]
        )

    base = base_config(upstream.url, fw.audit_path)
    data = build_config({**base, "routing": ROUTING, "detectors": DETECTORS})
    scanned: dict[str, dict[str, Any]] = {}
    for route in PATHS:
        async with Scanner(data, route=route) as scanner:
            for record in records:
                if record["route"] != route:
                    continue
                line = await scanner.scan_record(record, Phase.INPUT)
                findings = [
                    {"name": f["detector"], "score": f["score"], "fired": f["fired"]}
                    for f in line["findings"]
                ]
                scanned[record["id"]] = _summary(line["action"], line["mode"], line["reason"], findings)

    checked = 0
    for record in records:
        rid = record["id"]
        scan = scanned[rid]
        if scan["mode"] == "off":
            # Not screened by the proxy (no audit line), forwarded; scan reports allow.
            assert rid.replace("/", "-") not in served
            assert statuses[rid] == 200
            assert scan["action"] == "allow"
            assert scan["detectors"] == {}
            continue
        assert served[rid.replace("/", "-")] == scan, rid
        blocks = scan["action"] == "block" and scan["mode"] == "enforce"  # monitor mode only logs
        assert (statuses[rid] == 400) == blocks, rid
        checked += 1
    assert checked == len(records) - len(TEXTS) * 1  # legacy-model on the chat route is off
    # The overrides really changed verdicts, or this test would prove nothing.
    actions = {rid: s["action"] for rid, s in scanned.items()}
    assert actions["chat/None/1"] == "block"
    assert actions["chat/calm-model/1"] == "allow"  # the reproduction
    assert actions["chat/shadow-model/1"] == "block"
    assert scanned["chat/shadow-model/1"]["mode"] == "monitor"
    assert actions["lenient_chat/None/1"] == "log"
    assert actions["lenient_chat/strict-model/1"] == "block"
    assert actions["sanitizing_chat/None/1"] == "block"  # tag characters: not removable
    assert actions["sanitizing_chat/None/5"] == "sanitize"
    assert actions["sanitizing_chat/None/4"] == "block"
    assert actions["sanitizing_chat/strict-model/5"] == "block"
    assert actions["sanitizing_chat/shadow-model/5"] == "sanitize"  # logged, not applied
    assert statuses["sanitizing_chat/None/5"] == 200
