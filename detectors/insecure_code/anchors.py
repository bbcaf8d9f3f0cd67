"""Required substrings ("anchors") of a regex, so most rules skip most blocks for free.

Why: Python's ``re`` has no multi-pattern automaton, and a language's line rules add up
to dozens of patterns; trying each on every line costs milliseconds per block. But
nearly every rule pattern contains a literal that any match must contain
(``hashlib.``, ``verify``, ``chmod``). A plain ``in`` test for those literals on the
whole block (C speed) rules out most rules before any regex runs.

The extraction walks the pattern's parse tree (``re._parser``, CPython's own regex
parser, so there is no second grammar to get wrong) and returns a set of literals of
which every match contains at least one, or ``None`` when it cannot promise that (the
rule then always runs). Case-insensitive patterns yield lower-cased anchors that are
tested against the lower-cased block.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

__all__ = ["MIN_ANCHOR", "anchors"]

MIN_ANCHOR = 3
_parser: Any = importlib.import_module("re._parser")
_LITERAL = _parser.LITERAL
_SUBPATTERN = _parser.SUBPATTERN
_BRANCH = _parser.BRANCH
_REPEATS = (_parser.MAX_REPEAT, _parser.MIN_REPEAT, getattr(_parser, "POSSESSIVE_REPEAT", None))
_IGNORECASE = re.IGNORECASE


def _seq(items: Any, fold: bool) -> frozenset[str] | None:
    """Anchors of a sequence: its longest literal run, or its best required sub-part."""
    best_run = ""
    run: list[str] = []
    options: list[frozenset[str]] = []
    for op, av in items:
        if op is _LITERAL:
            ch = chr(av)
            run.append(ch.lower() if fold else ch)
            continue
        if len(run) > len(best_run):
            best_run = "".join(run)
        run = []
        sub: frozenset[str] | None = None
        if op is _SUBPATTERN:
            sub = _seq(av[-1], fold or bool(av[1] & _IGNORECASE))
        elif op is _BRANCH:
            sub = _branch(av[1], fold)
        elif op in _REPEATS and op is not None and av[0] >= 1:
            sub = _seq(av[2], fold)
        if sub:
            options.append(sub)
    if len(run) > len(best_run):
        best_run = "".join(run)
    if len(best_run) >= MIN_ANCHOR:
        return frozenset({best_run})
    # A required group: prefer the one whose shortest alternative is longest.
    usable = [o for o in options if min(len(a) for a in o) >= MIN_ANCHOR]
    if usable:
        return max(usable, key=lambda o: (min(len(a) for a in o), -len(o)))
    return None


def _branch(branches: Any, fold: bool) -> frozenset[str] | None:
    out: set[str] = set()
    for b in branches:
        sub = _seq(b, fold)
        if sub is None:
            return None
        out |= sub
    return frozenset(out)


def anchors(pattern: re.Pattern[str]) -> tuple[frozenset[str], bool] | None:
    """``(literals, case_insensitive)`` such that every match contains one literal; None if unknown."""
    try:
        parsed = _parser.parse(pattern.pattern, pattern.flags)
    except Exception:
        return None
    fold = bool(parsed.state.flags & _IGNORECASE)
    found = _seq(parsed.data, fold)
    if found is None:
        return None
    return found, fold
