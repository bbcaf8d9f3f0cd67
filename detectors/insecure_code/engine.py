"""Analyse one code block with both tiers; the unit that the detector caches.

A block is analysed as a pure function of ``(language, code, closed, complete_rows)``:

* the **line tier** runs the language's line rules on each complete logical line; a rule
  whose required literals (:mod:`detectors.insecure_code.anchors`) do not occur in the block is
  skipped with one substring test, so most rules cost nothing on most blocks;
* the **syntax tier** parses the block with tree-sitter and runs the flow analysis
  (:mod:`detectors.insecure_code.flow`) for the language's ``ast`` rules;
* both tiers then apply the rule's block-context exceptions (``unless_before``,
  ``unless_after``, ``context``, ``scope``).

On an *open* block (a stream still writing it) only hits that later rows cannot undo are
kept: a hit is final once ``rule.lookahead`` complete rows follow it (0 for rules decided
by the line and what precedes it; never, before the block closes, for rules that need
the whole block). This is what lets a single-line rule fire as soon as its line is
complete without a safe look-alike ever being blocked half-way.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tree_sitter import Node

from detectors.insecure_code.anchors import anchors
from detectors.insecure_code.lines import LogicalLine, logical_lines
from detectors.insecure_code.rules import INFINITE, Rule, RulePack
from detectors.insecure_code.scope import FlowTables, compile_tables
from detectors.insecure_code.sinks import analyse_tree
from detectors.insecure_code.syntax import SPECS, parse

__all__ = ["Hit", "analyse_block", "line_rules", "shannon_entropy", "syntax_rules"]

#: Blocks larger than this are analysed by the line tier only (bounds the parse + flow cost).
MAX_SYNTAX_CHARS = 60_000
_SCRIPT_RE = re.compile(r"(<script\b[^>]*>)(.*?)(?=</script\s*>|\Z)", re.IGNORECASE | re.DOTALL)
_NOT_NEWLINE_RE = re.compile(r"[^\n]")


def _script_only(lang: str, code: str) -> str:
    """An HTML page identified as JavaScript, reduced to its ``<script>`` bodies for parsing.

    Answers often give a whole page with an inline script. Parsed as JavaScript, the markup
    around the script is one large syntax error that swallows the script's declarations, so
    the flow analysis saw none of its assignments. Everything outside the script bodies is
    blanked (newlines kept, so rows and spans do not move).
    """
    if lang not in ("javascript", "typescript", "tsx") or not code.lstrip().startswith("<"):
        return code
    if "<script" not in code.lower():
        return code
    out: list[str] = []
    pos = 0
    for m in _SCRIPT_RE.finditer(code):
        out.append(_NOT_NEWLINE_RE.sub(" ", code[pos : m.start(2)]))
        out.append(m.group(2))
        pos = m.end(2)
    out.append(_NOT_NEWLINE_RE.sub(" ", code[pos:]))
    return "".join(out)


def _context_roots(lang: str, context: Sequence[str], offset: int, budget: int) -> list[Node]:
    """The earlier blocks of the answer, each parsed on its own (a fragment's syntax errors
    stay in its own tree), padded with newlines so that their byte offsets follow the
    block's: positions then tell the block's nodes from the context's. At most ``budget``
    characters, nearest blocks first."""
    roots: list[Node] = []
    for code in context:
        budget -= len(code)
        if budget < 0:
            break
        root, _ = parse(lang, "\n" * offset + _script_only(lang, code))
        roots.append(root)
        offset = root.end_byte + 1
    return roots


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule that fired on rows ``first..last`` (inclusive) of a block."""

    rule: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class _LangRules:
    line: tuple[Rule, ...]
    syntax: tuple[Rule, ...]
    # Per line rule: literals one of which must occur in the block (exact, case-folded);
    # None when the rule cannot be pre-filtered and always runs.
    anchors: tuple[tuple[frozenset[str], frozenset[str]] | None, ...]
    tables: FlowTables | None


def _rule_anchors(rule: Rule) -> tuple[frozenset[str], frozenset[str]] | None:
    exact: set[str] = set()
    folded: set[str] = set()
    for p in rule.patterns:
        found = anchors(p)
        if found is None:
            return None
        (folded if found[1] else exact).update(found[0])
    return frozenset(exact), frozenset(folded)


@functools.lru_cache(maxsize=128)
def _lang_rules(pack: RulePack, lang: str, disabled: frozenset[str]) -> _LangRules:
    rules = [r for r in pack.for_language(lang) if r.id not in disabled]
    line = tuple(r for r in rules if r.ast is None)
    syntax = tuple(r for r in rules if r.ast is not None)
    flow_raw = pack.flow.get(lang) or pack.flow.get("javascript" if lang in ("typescript", "tsx") else "")
    if flow_raw is None and lang == "cpp":
        flow_raw = pack.flow.get("c")
    tables = compile_tables(flow_raw) if syntax and lang in SPECS and flow_raw is not None else None
    return _LangRules(line, syntax, tuple(_rule_anchors(r) for r in line), tables)


def _candidates(lr: _LangRules, code: str) -> list[Rule]:
    """The line rules whose anchors occur in ``code`` (one C-speed substring test each)."""
    lower: str | None = None
    out: list[Rule] = []
    for rule, anchor in zip(lr.line, lr.anchors, strict=True):
        if anchor is None:
            out.append(rule)
            continue
        exact, folded = anchor
        if any(a in code for a in exact):
            out.append(rule)
            continue
        if folded:
            if lower is None:
                lower = code.lower()
            if any(a in lower for a in folded):
                out.append(rule)
    return out


def line_rules(pack: RulePack, lang: str, disabled: frozenset[str] = frozenset()) -> tuple[Rule, ...]:
    return _lang_rules(pack, lang, disabled).line


def syntax_rules(pack: RulePack, lang: str, disabled: frozenset[str] = frozenset()) -> tuple[Rule, ...]:
    return _lang_rules(pack, lang, disabled).syntax


class _Rows:
    """Comment-blanked rows of a block, joined lazily for the block-context checks."""

    __slots__ = ("rows",)

    def __init__(self, logical: Sequence[LogicalLine]) -> None:
        rows: list[str] = []
        for ll in logical:
            rows.extend(ll.text.split("\n"))
        self.rows = rows

    def span(self, first: int, last: int) -> str:
        first = max(0, first)
        return "\n".join(self.rows[first : last + 1])


def _context_ok(rule: Rule, rows: _Rows, first: int, last: int) -> bool:
    """Block-context conditions for a hit on rows ``first..last``; True when the hit stands."""
    if rule.context:
        window = rows.span(first - rule.context_before, last + rule.context_after)
        if not any(p.search(window) for p in rule.context):
            return False
    if rule.unless_before and any(p.search(rows.span(0, last)) for p in rule.unless_before):
        return False
    if rule.unless_after and any(p.search(rows.span(first, len(rows.rows))) for p in rule.unless_after):
        return False
    if rule.scope_end is not None:
        end = len(rows.rows)
        for r in range(last + 1, len(rows.rows)):
            if rule.scope_end.search(rows.rows[r]):
                end = r
                break
        scope = rows.span(first - rule.scope_before, end - 1)
        if any(p.search(scope) for p in rule.scope_unless):
            return False
    return True


def shannon_entropy(value: str) -> float:
    """Bits per character: random keys score 4-6, words and placeholders 2-3.5."""
    if not value:
        return 0.0
    counts: dict[str, int] = {}
    for ch in value:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


#: A value written to be replaced: "your_client_secret", "<token>", "changeme", "xxxxxxxx",
#: "random-secret", "example-key", "secret_key_here". Tutorials and .env examples are full of
#: them, and none is a credential.
_PLACEHOLDER = re.compile(
    r"(?i)^(?:your|my|enter|insert|put|add|replace|paste|some|random|dummy|fake|sample|example|test|demo)"
    r"(?:[_\-.]|$|(?=[a-z]))"
    r"|example|placeholder|changeme|change[_\-.]?me|dummy|redacted|xxx|todo|fixme|_here$|-here$|\.\.\."
)
_WORDS_ONLY = re.compile(r"(?i)^[a-z]+(?:[_\-.][a-z]+)*$")
_SECRET_WORDS = re.compile(r"(?i)secret|key|token|password|passwd|pass|credential|auth")


def looks_like_placeholder(value: str) -> bool:
    """A literal written to be replaced, not a credential: a placeholder word or form, one
    character repeated, lower-case words that name a secret ("client_secret",
    "hashed_password"), or a run of consecutive digits ("123456", the sample password of
    every login tutorial)."""
    if not value:
        return True
    if _PLACEHOLDER.search(value) or len(set(value)) <= 2:
        return True
    if value.isdigit() and (value in "01234567890" or value in "9876543210"):
        return True
    return bool(_WORDS_ONLY.match(value) and _SECRET_WORDS.search(value))


def _matches(rule: Rule, t: str) -> bool:
    """Whether a line rule's pattern matches ``t``; a match that captures the value in a
    ``secret`` group counts only when that value is not a placeholder (and, with
    ``min_entropy``, looks random enough)."""
    for p in rule.patterns:
        if "secret" not in p.groupindex:
            if p.search(t):
                return True
            continue
        m = p.search(t)
        while m is not None:
            secret = m.group("secret") or ""
            random_enough = not rule.min_entropy or shannon_entropy(secret) >= rule.min_entropy
            if random_enough and not looks_like_placeholder(secret):
                return True
            m = p.search(t, max(m.end(), m.start() + 1))
    return False


def _match_rows(rule: Rule, ll: LogicalLine) -> tuple[int, int]:
    """Rows of the first match of a line rule in a logical line: where its ``context``
    window is centred. A logical line can join a whole brace-delimited body (up to
    ``MAX_JOIN`` rows), and "near a password" means near the call, not anywhere in that
    body (``$filename = uniqid()`` and, eight rows on, an S3 object's ``'Key' =>``)."""
    t = ll.text
    for p in rule.patterns:
        m = p.search(t)
        if m is not None:
            return ll.first + t.count("\n", 0, m.start()), ll.first + t.count("\n", 0, m.end())
    return ll.first, ll.last


def _final(rule: Rule, last: int, complete_rows: int, closed: bool) -> bool:
    if closed:
        return True
    look = rule.lookahead
    return look < INFINITE and last + look < complete_rows


def analyse_block(
    pack: RulePack,
    lang: str,
    code: str,
    *,
    closed: bool = True,
    disabled: frozenset[str] = frozenset(),
    syntax: bool = True,
    lines: bool = True,
    context: Sequence[str] = (),
) -> tuple[Hit, ...]:
    """Hits of every enabled rule for ``lang`` on ``code`` (rows relative to the block).

    For an open block, ``code`` may end in an incomplete row; only complete rows are
    analysed and only final hits are returned (see the module docstring). ``syntax`` and
    ``lines`` switch the two tiers (the stream re-runs the syntax tier less often).

    ``context`` holds the code of the answer's earlier blocks in the same language, nearest
    first: parts of the same program. The syntax tier reads their declarations, imports,
    functions and calls for what ``code`` does not define itself (see
    :func:`detectors.insecure_code.sinks.analyse_tree`); only hits in ``code`` are returned.
    """
    lr = _lang_rules(pack, lang, disabled)
    rows_text = code.split("\n")
    complete_rows = len(rows_text) if closed else len(rows_text) - 1
    if complete_rows <= 0 or not (lr.line or lr.syntax):
        return ()
    logical = logical_lines(rows_text, lang, complete=complete_rows)
    if not logical:
        return ()
    rows = _Rows(logical)
    hits: list[Hit] = []
    candidates = _candidates(lr, code) if lr.line and lines else []
    for ll in logical if candidates else ():
        t = ll.text
        for rule in candidates:
            if not _matches(rule, t) or any(p.search(t) for p in rule.unless):
                continue
            if not _final(rule, ll.last, complete_rows, closed):
                continue
            first, last = _match_rows(rule, ll) if rule.context else (ll.first, ll.last)
            if _context_ok(rule, rows, first, last):
                hits.append(Hit(rule.id, ll.first, ll.last))
    if syntax and lr.syntax and lr.tables is not None and len(code) <= MAX_SYNTAX_CHARS:
        parsed = code if closed else "\n".join(rows_text[:complete_rows])
        root, shift = parse(lang, _script_only(lang, parsed))
        by_id = {r.id: r for r in lr.syntax}
        for sh in analyse_tree(
            lang,
            root,
            shift,
            lr.syntax,
            lr.tables,
            complete_rows=complete_rows,
            closed=closed,
            context=_context_roots(lang, context, root.end_byte, MAX_SYNTAX_CHARS - len(code)),
        ):
            rule = by_id[sh.rule]
            if rule.unless and any(p.search(rows.span(sh.first, sh.last)) for p in rule.unless):
                continue
            if _final(rule, sh.last, complete_rows, closed) and _context_ok(rule, rows, sh.first, sh.last):
                hits.append(Hit(sh.rule, sh.first, sh.last))
    return tuple(sorted(set(hits), key=lambda h: (h.first, h.rule)))
