"""Micro-benchmark for the invisible_chars detector (not a test; no timing asserts).

The detector runs inline on the event loop for every request, so its per-call
cost matters. Run from the repository root:

    .venv/bin/python -m loadtests.bench.bench_invisible_chars

It prints microseconds per call (best of five repeats) for a 200-word ASCII prompt,
a 200-word mixed-language prompt, a triggered prompt, a stress case dense with
legitimate special characters, and a few adversarially large inputs. All texts
are written here by hand (no external corpus).
"""

from __future__ import annotations

import functools
import timeit

from detectors.invisible_chars.detector import InvisibleCharsDetector
from firewall.core.types import Phase, Sample, Segment

_ENGLISH = (
    "please", "summarise", "the", "following", "quarterly", "report", "and", "list",
    "the", "three", "main", "risks", "for", "the", "board", "including", "supply",
    "chain", "delays", "currency", "exposure", "and", "hiring", "plans",
)  # fmt: skip


def ascii_200() -> str:
    return " ".join(_ENGLISH[i % len(_ENGLISH)] for i in range(200))


def mixed_200() -> str:
    """About 200 words: English, Russian with a brand name, Japanese, Greek, Persian
    with one ZWNJ, Hebrew with one LRM, one emoji ZWJ sequence and one VS-16."""
    russian = (
        "\u042f \u043b\u044e\u0431\u043b\u044e iPhone \u0438 \u0447\u0438\u0442\u0430\u044e "
        "\u043d\u043e\u0432\u043e\u0441\u0442\u0438 \u043a\u0430\u0436\u0434\u044b\u0439 "
        "\u0434\u0435\u043d\u044c"
    )
    japanese = "\u79c1\u306fPython\u304c\u597d\u304d\u3067\u3059\u3002"
    greek = "\u03b7 \u03b1-\u03ad\u03bb\u03b9\u03ba\u03b1 \u03ba\u03b1\u03b9 TNF\u03b1"
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \u0628\u0631\u0648\u0645"
    hebrew = "\u05e9\u05dc\u05d5\u05dd\u200e (Shalom)"
    emoji = "family \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f"
    words = ascii_200().split()[:170]
    for k, part in enumerate((russian, japanese, greek, persian, hebrew, emoji)):
        words.insert(25 * k + 10, part)
    return " ".join(words)


def dense_legit_200() -> str:
    """Stress: every sentence carries a legitimate invisible or mixed-script case."""
    parts = [
        "Summarise this for the team:",
        "\u042f \u043b\u044e\u0431\u043b\u044e iPhone.",
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.",
        "\u05e9\u05dc\u05d5\u05dd\u200e (Shalom)",
        "family: \U0001f468\u200d\U0001f469\u200d\U0001f467 \u2764\ufe0f",
        "the \u03b1-helix and TNF\u03b1 levels",
    ]
    words: list[str] = []
    while len(words) < 200:
        for p in parts:
            words.extend(p.split())
    return " ".join(words[:200])


def triggered_200() -> str:
    words = ascii_200().split()
    words[50] = "p\u0430ypal"  # Cyrillic a inside a Latin word
    words[100] = "cf\u200b\u200b"  # zero-width run
    words[150] = "\U000e0069\U000e0067\U000e006e"  # tag characters
    return " ".join(words)


def _sample(text: str) -> Sample:
    return Sample(
        request_id="bench",
        phase=Phase.INPUT,
        route="bench",
        segments=(Segment(role="user", text=text),),
    )


def main() -> None:
    det = InvisibleCharsDetector("invisible_chars")
    russian_word = "\u043f\u0440\u0438\u0432\u0435\u0442"
    cases = {
        "ascii_200_words": ascii_200(),
        "mixed_language_200_words": mixed_200(),
        "triggered_200_words": triggered_200(),
        "dense_legit_specials_200_words": dense_legit_200(),
        "russian_2000_words": " ".join([russian_word, "\u043c\u0438\u0440"] * 1000),
        "ascii_1MB": "x" * 1_000_000,
        "zero_width_flood_1MB": "a\u200b" * 500_000,
        "soft_hyphen_flood_1MB": "ab\u00ad" * 333_333,
    }
    print(f"{'case':32s} {'us/call':>12s}")
    for name, text in cases.items():
        sample = _sample(text)
        finding = det.score_sample(sample)
        number = 2000 if len(text) < 20_000 else 3
        call = functools.partial(det.score_sample, sample)
        best = min(timeit.repeat(call, number=number, repeat=5))
        print(
            f"{name:32s} {best / number * 1e6:12.1f}   chars={len(text):8d} "
            f"score={finding.score:.2f} reasons={','.join(finding.reasons) or '-'}"
        )


if __name__ == "__main__":
    main()
