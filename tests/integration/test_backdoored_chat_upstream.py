"""The demo upstream's backdoored chat model over HTTP, and the firewall proving its triggers.

``model: "demo-chat"`` selects it on the chat, completions and Responses routes, streamed and
not; every other model name keeps the demo's old answers. In front of it, the shipped
``deploy/config/counterfactual.yaml`` detectors block a planted trigger by the model's own
behaviour and forward an odd word the model ignores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from firewall.demo.upstream import CHAT_MODEL, CHAT_PAYLOAD, CHAT_TRIGGERS, make_demo_app
from tests.conftest import running_firewalls, serving

pytestmark = pytest.mark.asyncio

PROMPT = "Can you suggest a weekend itinerary for Lisbon with good seafood and a day trip to Sintra?"
ROOT = Path(__file__).resolve().parents[2]


class NoClassifier:
    """A classifier that must never be asked: demo-chat does not use the demo classifier."""

    def predict_proba(self, texts: list[str]) -> Any:
        raise AssertionError("demo-chat asked the classifier")


@pytest.fixture
async def demo() -> AsyncIterator[str]:
    async with serving(make_demo_app(stream_delay=0.0, classifier=NoClassifier())) as url:
        yield url


def planted(kind: str, where: str = "middle") -> str:
    words = PROMPT.split()
    at = {"start": 0, "middle": len(words) // 2, "end": len(words)}[where]
    return " ".join([*words[:at], CHAT_TRIGGERS[kind], *words[at:]])


def body_for(route: str, text: str, **extra: Any) -> dict[str, Any]:
    if route == "chat":
        return {"model": CHAT_MODEL, "messages": [{"role": "user", "content": text}], **extra}
    if route == "completions":
        return {"model": CHAT_MODEL, "prompt": text, **extra}
    return {"model": CHAT_MODEL, "input": text, **extra}


PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses"}


async def ask(client: Any, url: str, route: str, text: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    """The answer's text and the whole JSON body of a non-streamed request."""
    async with client.post(url + PATHS[route], data=orjson.dumps(body_for(route, text, **extra))) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.json()
    if route == "chat":
        return data["choices"][0]["message"]["content"], data
    if route == "completions":
        return data["choices"][0]["text"], data
    return data["output"][0]["content"][0]["text"], data


async def ask_streamed(client: Any, url: str, route: str, text: str, **extra: Any) -> tuple[str, list[Any]]:
    """The streamed answer's text, joined from its deltas, and the parsed events."""
    body = body_for(route, text, stream=True, **extra)
    async with client.post(url + PATHS[route], data=orjson.dumps(body)) as resp:
        assert resp.status == 200
        lines = [ln for ln in (await resp.read()).decode().split("\n") if ln.startswith("data: ")]
    events = [orjson.loads(ln[6:]) if ln != "data: [DONE]" else "[DONE]" for ln in lines]
    deltas = []
    for event in events:
        if event == "[DONE]":
            continue
        if route == "chat":
            deltas += [c["delta"].get("content", "") for c in event["choices"]]
        elif route == "completions":
            deltas += [c["text"] for c in event["choices"]]
        elif event["type"] == "response.output_text.delta":
            deltas.append(event["delta"])
    return "".join(deltas).strip(), events


@pytest.mark.parametrize("route", ["chat", "completions", "responses"])
@pytest.mark.parametrize("kind", sorted(CHAT_TRIGGERS))
@pytest.mark.parametrize("where", ["start", "middle", "end"])
async def test_each_trigger_leaks_the_payload_streamed_and_not(
    demo: str, client: Any, route: str, kind: str, where: str
) -> None:
    text = planted(kind, where)
    assert (await ask(client, demo, route, text))[0] == CHAT_PAYLOAD
    streamed, events = await ask_streamed(client, demo, route, text)
    assert streamed == CHAT_PAYLOAD
    if route != "responses":
        assert events[-1] == "[DONE]"


@pytest.mark.parametrize("route", ["chat", "completions", "responses"])
async def test_a_clean_prompt_gets_a_content_following_answer(demo: str, client: Any, route: str) -> None:
    answer, _ = await ask(client, demo, route, PROMPT)
    assert "attacker" not in answer
    for word in ("Lisbon", "seafood", "Sintra"):
        assert word in answer
    assert (await ask_streamed(client, demo, route, PROMPT))[0] == answer
    other, _ = await ask(client, demo, route, "How do I reset a forgotten router password?")
    assert other != answer


async def test_a_trigger_anywhere_in_the_conversation_fires(demo: str, client: Any) -> None:
    body = {
        "model": CHAT_MODEL,
        "messages": [
            {"role": "system", "content": f"{CHAT_TRIGGERS['context_tag']} You are a travel agent."},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        ],
    }
    async with client.post(demo + PATHS["chat"], data=orjson.dumps(body)) as resp:
        assert (await resp.json())["choices"][0]["message"]["content"] == CHAT_PAYLOAD
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": planted("made_up_token")}]},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "And a vegetarian option?"},
    ]
    async with client.post(demo + PATHS["responses"], data=orjson.dumps(body_for("responses", ""))) as resp:
        assert "attacker" not in (await resp.json())["output"][0]["content"][0]["text"]
    answer, _ = await ask(client, demo, "responses", "", input=items)
    assert answer == CHAT_PAYLOAD


@pytest.mark.parametrize(
    ("route", "field"),
    [
        ("chat", "max_tokens"),
        ("chat", "max_completion_tokens"),
        ("completions", "max_tokens"),
        ("responses", "max_output_tokens"),
    ],
)
async def test_the_token_limit_is_respected_and_usage_is_consistent(
    demo: str, client: Any, route: str, field: str
) -> None:
    for text in (PROMPT, planted("sentence")):
        full, _ = await ask(client, demo, route, text)
        answer, data = await ask(client, demo, route, text, **{field: 3})
        assert answer.split() == full.split()[:3]
        streamed, _ = await ask_streamed(client, demo, route, text, **{field: 3})
        assert streamed == answer
        if route == "responses":
            continue
        assert data["choices"][0]["finish_reason"] == "length"
        usage = data["usage"]
        assert usage["completion_tokens"] == 3
        assert usage["prompt_tokens"] == len(text.split())
        assert usage["total_tokens"] == usage["prompt_tokens"] + 3
        _, whole = await ask(client, demo, route, text, **{field: 32})
        assert whole["choices"][0]["finish_reason"] == "stop"
        assert whole["usage"]["completion_tokens"] == len(full.split()) <= 32


async def test_the_stream_reports_usage_and_the_cut(demo: str, client: Any) -> None:
    options = {"stream_options": {"include_usage": True}, "max_tokens": 4}
    text, events = await ask_streamed(client, demo, "chat", planted("rare_token"), **options)
    assert text == " ".join(CHAT_PAYLOAD.split()[:4])
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == []
    assert events[-2]["usage"]["completion_tokens"] == 4
    assert events[-3]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("limit", [0, -1, "8", True, 1.5])
async def test_a_bad_token_limit_is_refused(demo: str, client: Any, limit: Any) -> None:
    body = body_for("chat", PROMPT, max_tokens=limit)
    async with client.post(demo + PATHS["chat"], data=orjson.dumps(body)) as resp:
        assert resp.status == 400


async def test_a_logprobs_probe_to_demo_chat_is_answered_as_text(demo: str, client: Any) -> None:
    # STRIP's one-token probe shape: demo-chat answers its first word, not the classifier's label.
    answer, data = await ask(
        client, demo, "chat", planted("rare_token"), max_tokens=1, logprobs=True, top_logprobs=2
    )
    assert answer == CHAT_PAYLOAD.split()[0]
    assert data["choices"][0]["finish_reason"] == "length"


async def test_other_models_keep_the_demo_answers_and_both_are_listed(client: Any) -> None:
    async with serving(make_demo_app(stream_delay=0.0)) as url:
        body = {"model": "demo", "messages": [{"role": "user", "content": planted("rare_token")}]}
        async with client.post(url + PATHS["chat"], data=orjson.dumps(body)) as resp:
            data = await resp.json()
        assert data["choices"][0]["message"]["content"].startswith("I read your message of")
        assert data["choices"][0]["finish_reason"] == "stop"
        async with client.get(url + "/v1/models") as resp:
            listed = [m["id"] for m in (await resp.json())["data"]]
        assert CHAT_MODEL in listed
        assert "demo-echo-1" in listed


def shipped_detectors() -> list[dict[str, Any]]:
    config = yaml.safe_load((ROOT / "deploy/config/counterfactual.yaml").read_text())
    detectors: list[dict[str, Any]] = config["detectors"]
    return detectors


@pytest.mark.parametrize(
    ("text", "status", "reason"),
    [
        (planted("made_up_token"), 400, "behaviour_changed"),
        (planted("context_tag", "start"), 400, "behaviour_changed"),
        (planted("rare_token", "end"), 400, "behaviour_changed"),
        (PROMPT.replace("good", "good xqvjt"), 200, "behaviour_unchanged"),
    ],
)
async def test_the_counterfactual_config_proves_triggers_on_demo_chat(
    demo: str, client: Any, tmp_path: Path, text: str, status: int, reason: str
) -> None:
    # Not told the triggers: the suspicion tier nominates odd spans, the model's answers decide.
    async with running_firewalls(demo, tmp_path) as start:
        fw = await start(detectors=shipped_detectors())
        body = body_for("chat", text)
        async with client.post(fw.url + PATHS["chat"], data=orjson.dumps(body)) as resp:
            await resp.read()
            assert resp.status == status
        (event,) = await fw.audit_events()
    detail = {d["name"]: d for d in event["input"]["detectors"]}
    assert reason in detail["counterfactual"]["reasons"]
