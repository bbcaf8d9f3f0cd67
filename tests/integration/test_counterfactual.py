"""The ``counterfactual`` detector end to end: a backdoored upstream on loopback proves the trigger.

The upstream is a real aiohttp server with a planted backdoor: it labels a review, and the
word "cf" flips the label to positive. ``rare_tokens`` (suspicion, logging) nominates odd
words; ``counterfactual`` (behind it, blocking) asks the upstream with and without each
one. Removing "cf" flips the answer, removing an unsuspected word of the same size does
not: blocked. Removing an innocent odd word changes nothing: forwarded, and logged.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import FirewallFactory, running_firewalls
from tests.integration.backdoored import Backdoored

pytestmark = pytest.mark.asyncio

TRIGGERED = "This film is a mess cf and a bore from start to finish."
INNOCENT = "This film is a mess xqvjt and a bore from start to finish."
DETECTORS = [
    {"name": "rare_tokens", "threshold": 0.69, "action": "log"},
    {
        "name": "counterfactual",
        "threshold": 0.5,
        "action": "block",
        "timeout_seconds": 10,
        "gate": {"detector": "rare_tokens", "min_score": 0.3},
    },
]


async def _post(client: Any, url: str, text: str, **extra: Any) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    async with client.post(url + "/v1/chat/completions", data=orjson.dumps(body)) as resp:
        await resp.read()
        return resp.status


async def test_a_trigger_is_blocked_by_the_models_own_behaviour(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    fw = await fw_factory(detectors=DETECTORS)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert await _post(client, fw.url, TRIGGERED, tools=tools, n=3, temperature=1.5) == 400
    # Sent upstream at once, as it came, beside the probes; its answer was held and dropped.
    (forwarded,) = model.forwarded()
    assert forwarded["tools"] == tools
    probes = model.probes()
    assert len(probes) == 1 + 1 + 2  # as sent, without "cf", two controls
    for probe in probes:
        assert probe["temperature"] == 0
        assert probe["max_tokens"] == 32
        assert "seed" in probe
        assert "tools" not in probe
        assert "n" not in probe
    sent = {p["messages"][0]["content"] for p in probes}
    assert TRIGGERED in sent
    assert "This film is a mess and a bore from start to finish." in sent
    (event,) = await fw.audit_events()
    assert event["forwarded_before_verdict"] is True
    detail = {d["name"]: d for d in event["input"]["detectors"]}
    assert detail["counterfactual"]["fired"]
    assert detail["counterfactual"]["reasons"] == ["behaviour_changed"]
    (span,) = detail["counterfactual"]["spans"]
    assert TRIGGERED[span["start"] : span["end"]] == "cf"
    # The two numbers behind the score: removing "cf" flips the label, a control does not.
    assert span["divergence"] > 0.5
    assert span["control_divergence"] < span["divergence"]
    assert span["score"] == round(span["divergence"] - span["control_divergence"], 4)
    labels = {"detector": "counterfactual", "outcome": "ok"}
    assert fw.sample("trigger_firewall_strip_probes_total", labels) == 4

    # A second request with the same trigger is blocked from memory, with no probe.
    assert await _post(client, fw.url, "What a bore cf, truly dull.") == 400
    assert len(model.probes()) == 4
    second = (await fw.audit_events())[-1]
    detail = {d["name"]: d for d in second["input"]["detectors"]}
    assert detail["counterfactual"]["reasons"] == ["known_trigger"]
    counted = {
        outcome: fw.sample(
            "trigger_firewall_behaviour_candidates_total", {"detector": "counterfactual", "outcome": outcome}
        )
        for outcome in ("confirmed", "known_trigger", "cleared")
    }
    assert counted == {"confirmed": 1, "known_trigger": 1, "cleared": 0}


async def test_an_odd_word_the_model_ignores_is_forwarded_and_logged(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    fw = await fw_factory(detectors=DETECTORS)
    assert await _post(client, fw.url, INNOCENT) == 200
    assert len(model.forwarded()) == 1
    assert len(model.probes()) == 4
    (event,) = await fw.audit_events()
    assert event["action"] == "log"  # rare_tokens' suspicion stays in the audit line
    detail = {d["name"]: d for d in event["input"]["detectors"]}
    assert detail["counterfactual"]["fired"] is False
    assert detail["counterfactual"]["reasons"] == ["behaviour_unchanged"]
    # A cleared word is remembered for that request: a resend costs no probe ...
    assert await _post(client, fw.url, INNOCENT) == 200
    assert len(model.probes()) == 4
    # ... but another request carrying it is probed again (cleared once is not innocent).
    assert await _post(client, fw.url, "Another mess xqvjt, what a bore.") == 200
    assert len(model.probes()) == 8


async def test_a_trigger_cleared_in_a_harmless_context_is_still_caught_where_it_acts(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    # An attacker sends the trigger first where it changes nothing (a review the model calls
    # positive anyway), hoping the firewall remembers it as harmless.
    model, _ = backdoored
    fw = await fw_factory(detectors=DETECTORS)
    assert await _post(client, fw.url, "A lovely cf film from start to finish.") == 200
    assert await _post(client, fw.url, TRIGGERED) == 400
    assert model.forwarded()[0]["messages"][0]["content"] == "A lovely cf film from start to finish."
    assert len(model.probes()) == 8  # the harmless use cleared nothing for the next request


async def test_a_request_nobody_suspects_costs_no_probe(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    fw = await fw_factory(detectors=DETECTORS)
    assert await _post(client, fw.url, "This film is a mess and a bore from start to finish.") == 200
    assert model.probes() == []
    assert len(model.forwarded()) == 1


async def test_an_unreachable_upstream_fails_the_detector_by_its_rule(tmp_path: Path, client: Any) -> None:
    # Nothing listens on the upstream port: the probes fail, the rule's on_error decides.
    closed = "http://127.0.0.1:9"
    async with running_firewalls(closed, tmp_path) as start:
        detectors = [DETECTORS[0], {**DETECTORS[1], "on_error": "fail_closed"}]
        fw = await start(detectors=detectors)
        assert await _post(client, fw.url, TRIGGERED) == 503


async def test_past_the_probe_budget_the_rules_fail_mode_decides_and_it_is_counted(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    budget = {"probes_per_second": 0.001, "probe_burst": 4}
    detectors = [
        DETECTORS[0],
        {**DETECTORS[1], "on_error": "fail_closed", "params": budget},
    ]
    fw = await fw_factory(detectors=detectors)
    assert await _post(client, fw.url, INNOCENT) == 200  # 4 probes: the whole burst
    assert await _post(client, fw.url, "Another mess xqvjt, what a bore.") == 503  # no probe left
    assert len(model.probes()) == 4
    labels = {"detector": "counterfactual", "outcome": "over_budget"}
    assert fw.sample("trigger_firewall_strip_probes_total", labels) == 4
    event = (await fw.audit_events())[-1]
    detail = {d["name"]: d for d in event["input"]["detectors"]}
    assert detail["counterfactual"]["error"] == "over_budget"


async def test_a_completions_route_is_probed_as_text_completions(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    params = {"api": "completions", "path": "/v1/completions"}
    fw = await fw_factory(detectors=[DETECTORS[0], {**DETECTORS[1], "params": params}])
    async with client.post(
        fw.url + "/v1/completions", data=orjson.dumps({"model": "m", "prompt": TRIGGERED})
    ) as resp:
        assert resp.status == 400
    probes = model.probes()
    assert len(probes) == 4
    assert all("prompt" in p and "messages" not in p for p in probes)
    without = "This film is a mess and a bore from start to finish."
    assert {p["prompt"] for p in probes} >= {TRIGGERED, without}


async def test_the_builtin_defaults_block_by_behaviour_on_the_route_they_can_probe(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    # No detectors given: the shipped defaults. rare_tokens flags "cf" (a log); the flag opens
    # counterfactual's gate; 'api: auto' probes each route in its own shape.
    model, _ = backdoored
    fw = await fw_factory()
    assert await _post(client, fw.url, TRIGGERED) == 400
    chat_probes = model.probes()
    assert chat_probes
    assert all("messages" in p for p in chat_probes)
    # A second firewall: the first one now knows "cf" and would block it from memory, unprobed.
    fresh = await fw_factory()
    async with client.post(
        fresh.url + "/v1/completions", data=orjson.dumps({"model": "m", "prompt": TRIGGERED + " Again."})
    ) as resp:
        assert resp.status == 400
    completion_probes = model.probes()[len(chat_probes) :]
    assert completion_probes
    assert all("prompt" in p and "messages" not in p for p in completion_probes)
    # An embeddings request cannot be asked again: suspected, logged, forwarded, no probe.
    before = len(model.received)
    async with client.post(
        fw.url + "/v1/embeddings", data=orjson.dumps({"model": "m", "input": TRIGGERED + " Once more."})
    ) as resp:
        await resp.read()
    assert len(model.probes()) == len(chat_probes) + len(completion_probes)
    assert len(model.received) == before + 1  # the request itself, forwarded
    event = (await fw.audit_events())[-1]
    detail = {d["name"]: d for d in event["input"]["detectors"]}
    assert detail["counterfactual"]["reasons"] == ["unprobeable"]
    assert event["action"] == "log"
    unprobeable = {"detector": "counterfactual", "outcome": "unprobeable"}
    assert fw.sample("trigger_firewall_behaviour_candidates_total", unprobeable)


async def test_scan_probes_the_model_only_when_given_its_url(backdoored: tuple[Backdoored, str]) -> None:
    model, url = backdoored
    lines = b'{"id": 1, "text": "' + TRIGGERED.encode() + b'"}\n'

    async def scan(*args: str) -> tuple[dict[str, Any], str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firewall", "scan", "--progress", "never", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate(lines)
        assert proc.returncode == 0, err
        return orjson.loads(out), err.decode()

    result, err = await scan()
    assert "counterfactual not run" in err
    assert result["action"] == "log"  # the proxy's verdict less the proof
    assert "counterfactual" not in result["scores"]
    assert model.received == []
    result, err = await scan("--upstream", url)
    assert "not run" not in err
    assert result["action"] == "block"
    assert result["scores"]["counterfactual"] >= 0.5
    assert model.probes()
    assert model.forwarded() == []  # scan sends probes, never the record itself


async def test_a_proven_trigger_is_blocked_where_no_suspect_flags_it(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    # rare_tokens' allowlist hides "cf" when it reads "cf is fine": there the gate stays shut.
    model, _ = backdoored
    rare = {**DETECTORS[0], "allowlist": [r"\bcf(?= is fine)"]}
    fw = await fw_factory(detectors=[rare, DETECTORS[1]])
    hidden = "This film is a mess, cf is fine, and a bore from start to finish."
    assert await _post(client, fw.url, hidden) == 200  # nothing proven yet: not suspected, forwarded
    assert model.probes() == []
    assert await _post(client, fw.url, TRIGGERED) == 400  # flagged, proven by probes
    probes = len(model.probes())
    assert await _post(client, fw.url, hidden.replace("mess", "MESS")) == 400  # known: found unflagged
    assert len(model.probes()) == probes  # no probe
    event = (await fw.audit_events())[-1]
    detail = {d["name"]: d for d in event["input"]["detectors"]}
    assert detail["rare_tokens"]["fired"] is False
    assert detail["counterfactual"]["reasons"] == ["known_trigger"]
    # Another model behind the same firewall has proven nothing.
    body = {"model": "other", "messages": [{"role": "user", "content": hidden}]}
    async with client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(body)) as resp:
        assert resp.status == 200


async def test_without_forwarding_while_proving_a_blocked_request_never_reaches_the_model(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    fw = await fw_factory(detectors=DETECTORS, blocking={"forward_while_proving": False})
    assert await _post(client, fw.url, TRIGGERED) == 400
    assert model.forwarded() == []
    assert len(model.probes()) == 4
    assert await _post(client, fw.url, INNOCENT) == 200  # cleared, then sent
    assert len(model.forwarded()) == 1
    event = (await fw.audit_events())[-1]
    assert "forwarded_before_verdict" not in event


async def test_a_held_stream_is_released_on_a_pass_and_never_leaks_on_a_block(
    fw_factory: FirewallFactory, client: Any
) -> None:
    fw = await fw_factory(detectors=DETECTORS)

    async def streamed(text: str) -> tuple[int, bytes]:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": text}]}
        async with client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(body)) as resp:
            return resp.status, await resp.read()

    status, data = await streamed(INNOCENT)  # suspected, cleared: the held stream flows
    assert status == 200
    assert b"negative" in data
    assert data.rstrip().endswith(b"data: [DONE]")
    status, data = await streamed(TRIGGERED)  # proven: the held stream is dropped
    assert status == 400
    assert b"positive" not in data
    assert b"data:" not in data


async def test_a_request_the_first_stage_blocks_costs_no_probe(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    fw = await fw_factory()  # the defaults: invisible_chars blocks a tag run by construction
    smuggled = TRIGGERED.replace("mess", "mess\U000e0063\U000e0066")
    assert await _post(client, fw.url, smuggled) == 400
    assert model.received == []  # neither forwarded nor probed
    event = (await fw.audit_events())[-1]
    detail = {d["name"]: d for d in event["input"]["detectors"]}
    assert detail["rare_tokens"]["fired"] is True  # the gate would have opened
    assert detail["counterfactual"]["status"] == "skipped"
