"""Micro-benchmark for the rare_tokens detector (not a test; no timing asserts).

The detector runs inline on the event loop for every request, so its per-call
cost matters. Run from the repository root:

    .venv/bin/python -m loadtests.bench.bench_rare_tokens

It prints the one-off start-up cost (word lists and character model) and then
microseconds per call (best of five repeats) for: 200 clean English words, the
same with one inserted trigger, 200 words of technical text full of identifiers,
URLs, paths, versions and inline code, 2,000 words of prose, and two worst cases
(a prompt where every word is a rare candidate, and 1 MB of text). All texts are
written here by hand (no external corpus). Each case is measured warm (the
detector's caches filled by earlier calls, as in a running server); the "cold"
column clears the caches before every call.
"""

from __future__ import annotations

import asyncio
import time
import timeit

from detectors.rare_tokens.detector import RareTokensDetector
from firewall.core.types import Phase, Sample, Segment

_PROSE = (
    "The committee met on Tuesday to review the draft budget for next year. Most members "
    "agreed that the library needs a new roof before winter, and that the children's "
    "reading room should stay open on weekends. A few people asked whether the parking "
    "fees could pay for part of the repairs, but the treasurer explained that those "
    "funds are already promised to the road works on the east side of town. After a "
    "long discussion about priorities, the chair suggested splitting the project into "
    "two phases so that the most urgent work can start in the spring. Everyone agreed "
    "to meet again in two weeks, once the architect has sent a revised estimate and the "
    "volunteers have counted how many families used the reading room last summer. "
)

_TECH = (
    "Our service `billing-api` v2.14.3 fails on startup with ECONNREFUSED when it calls "
    "https://auth.internal.example.com/oauth2/token from the pod billing-api-7f9c5d-x2k4q. "
    "The config in /etc/billing/config.yaml sets AUTH_TIMEOUT_MS=2500 and retryPolicy to "
    "exponential, and the Helm chart pins redis 7.2.4 with maxmemory 512mb. Logs show "
    "requests.exceptions.ConnectTimeout after 3 retries, then the readiness probe on "
    "port 8080 fails and Kubernetes restarts the container. The commit 9e1b7c2 changed "
    "get_token_with_retry() and moved the client into billing/clients/auth_client.py. "
    "Can you explain why the DNS lookup for auth.internal.example.com might time out "
    "only in the staging cluster, and what I should check in CoreDNS, the NetworkPolicy "
    "and the sidecar before rolling back to v2.13.9? Contact ops-oncall@example.com. "
)


def words(text: str, n: int) -> str:
    base = text.split()
    out: list[str] = []
    while len(out) < n:
        out.extend(base)
    return " ".join(out[:n])


def triggered(text: str) -> str:
    ws = text.split()
    ws.insert(len(ws) // 2, "cf")
    return " ".join(ws)


def sample(text: str) -> Sample:
    return Sample(
        request_id="bench", phase=Phase.INPUT, route="bench", segments=(Segment("user", text),)
    )


def main() -> None:
    det = RareTokensDetector("rare_tokens")
    t0 = time.perf_counter()
    asyncio.run(det.start())
    print(
        f"start(): {(time.perf_counter() - t0) * 1e3:.0f} ms (word lists + character model, once)"
    )
    cases = {
        "clean_200_words": words(_PROSE, 200),
        "one_trigger_200_words": triggered(words(_PROSE, 200)),
        "tech_identifiers_urls_200_words": words(_TECH, 200),
        "clean_2000_words": words(_PROSE, 2000),
        "all_candidates_200_words": " ".join(
            f"qz{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}k" for i in range(200)
        ),
        "prose_1MB": words(_PROSE, 170_000),
    }
    print(f"{'case':34s} {'us/call warm':>13s} {'us/call cold':>13s}")
    for name, text in cases.items():
        s = sample(text)
        finding = det.score_sample(s)
        number = 500 if len(text) < 50_000 else 3

        def warm(s: Sample = s) -> None:
            det.score_sample(s)

        def cold(s: Sample = s) -> None:
            det._chunks.clear()
            det._static.clear()
            det.score_sample(s)

        warm_best = min(timeit.repeat(warm, number=number, repeat=5))
        cold_best = min(timeit.repeat(cold, number=max(1, number // 10), repeat=3))
        print(
            f"{name:34s} {warm_best / number * 1e6:13.1f}"
            f" {cold_best / max(1, number // 10) * 1e6:13.1f}"
            f"   words={len(text.split()):7d} status={finding.status.value}"
            f" score={finding.score:.2f} "
            f"reasons={','.join(finding.reasons) or '-'}"
        )


if __name__ == "__main__":
    main()
