"""Hot reload of detectors' data files: a vocabulary or a baseline rewritten under the same path.

A reload carries a detector over when its name, type and params are unchanged, and params
name a data file only by its path. Without a look at the file itself, a rewritten
vocabulary would never be read again until a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from detectors.rare_tokens.vocabulary import VOCABULARY_FORMAT
from detectors.recurring_sentences import learn_baseline
from firewall.config.schema import load_config
from firewall.core.types import Phase, Sample, Segment
from firewall.server.lifecycle import Server
from firewall.server.reload import Reloader
from tests.conftest import FakeUpstream, base_config

pytestmark = pytest.mark.asyncio

JARGON = "please attach the xqzt report to the ticket for the team today"
TEMPLATE = "Summarise the following support ticket for the on-call engineer in two sentences."


def sample(text: str) -> Sample:
    return Sample("r", Phase.INPUT, "test", (Segment("user", text),))


def replace_file(path: Path, text: str) -> None:
    """Write as a config management tool would: a new file moved over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def vocabulary(path: Path, tokens: list[str]) -> None:
    replace_file(path, json.dumps({"format": VOCABULARY_FORMAT, "version": 1, "tokens": tokens}))


class Running:
    def __init__(self, server: Server, reloader: Reloader) -> None:
        self.server = server
        self.reloader = reloader

    def detector(self, name: str) -> Any:
        return self.server.state.runtime.detectors[name]


@pytest.fixture
async def running(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    vocab = tmp_path / "vocab.json"
    vocabulary(vocab, ["sql"])
    baseline = tmp_path / "baseline.json"
    replace_file(baseline, json.dumps(learn_baseline([])))
    data = base_config(upstream.url, tmp_path / "audit.jsonl")
    data["detectors"] = [
        {"name": "rare_tokens", "threshold": 0.69, "params": {"vocabulary": ["builtin:chat", str(vocab)]}},
        {
            "name": "recurring_sentences",
            "action": "log",
            "required": False,
            "params": {"baseline": str(baseline)},
        },
    ]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    server = Server(load_config(path, environ={}))
    await server.start()
    reloader = Reloader(server, path, environ={})
    yield Running(server, reloader)
    await reloader.close()
    server.request_stop()
    server.request_stop()
    await server.shutdown()


async def test_a_rewritten_vocabulary_is_read_on_reload(running: Running, tmp_path: Path) -> None:
    before = running.detector("rare_tokens")
    recurring = running.detector("recurring_sentences")
    shipped = before.describe()["vocabulary_tokens"]
    assert before.score_sample(sample(JARGON)).score >= 0.69
    # Nothing changed: the detector is carried over (no reload of models or files).
    assert await running.reloader.reload("SIGHUP") is True
    assert running.detector("rare_tokens") is before

    vocabulary(tmp_path / "vocab.json", ["sql", "xqzt"])
    assert await running.reloader.reload("SIGHUP") is True
    after = running.detector("rare_tokens")
    assert after is not before
    assert after.ready
    assert after.describe()["vocabulary_tokens"] == shipped + 1
    assert after.score_sample(sample(JARGON)).score == 0.0
    # The detector whose file did not change is carried over, its state with it.
    assert running.detector("recurring_sentences") is recurring


async def test_a_broken_vocabulary_keeps_the_old_detector_serving(running: Running, tmp_path: Path) -> None:
    before = running.detector("rare_tokens")
    replace_file(tmp_path / "vocab.json", "{ not json")
    # rare_tokens is required: the new instance does not load, so nothing is swapped in.
    assert await running.reloader.reload("SIGHUP") is False
    assert running.detector("rare_tokens") is before
    assert before.ready
    vocabulary(tmp_path / "vocab.json", ["sql", "xqzt"])
    assert await running.reloader.reload("fixed") is True
    assert running.detector("rare_tokens").score_sample(sample(JARGON)).score == 0.0


async def test_the_watcher_reloads_a_rewritten_vocabulary(running: Running, tmp_path: Path) -> None:
    before = running.detector("rare_tokens")
    running.reloader.start_watching(0.02)
    vocabulary(tmp_path / "vocab.json", ["sql", "xqzt"])
    for _ in range(250):
        await asyncio.sleep(0.02)
        if running.detector("rare_tokens") is not before:
            break
    assert running.detector("rare_tokens").score_sample(sample(JARGON)).score == 0.0
    # A bad file is tried once, not at every poll.
    replace_file(tmp_path / "vocab.json", "{ not json")

    def failures() -> float:
        registry = running.server.metrics.registry
        return (
            registry.get_sample_value("trigger_firewall_config_reloads_total", {"result": "failure"}) or 0.0
        )

    for _ in range(250):
        await asyncio.sleep(0.02)
        if failures():
            break
    await asyncio.sleep(0.3)  # some fifteen more polls
    assert failures() == 1


async def test_a_rewritten_baseline_is_read_on_reload(running: Running, tmp_path: Path) -> None:
    before = running.detector("recurring_sentences")
    assert before.describe()["baseline_sentences"] == 0
    learnt = learn_baseline(
        Sample(str(i), Phase.INPUT, "test", (Segment("user", f"{TEMPLATE} Ticket {i}: {body}"),))
        for i, body in enumerate(
            [
                "the login page times out for users in Europe after the last deploy of the gateway",
                "disk usage on the primary database host crossed ninety percent overnight again",
                "the nightly export job failed twice with an out of memory error in the parser",
            ]
        )
    )
    replace_file(tmp_path / "baseline.json", json.dumps(learnt))
    assert await running.reloader.reload("SIGHUP") is True
    after = running.detector("recurring_sentences")
    assert after is not before
    assert after.describe()["baseline_sentences"] == len(learnt["hashes"]) > 0
