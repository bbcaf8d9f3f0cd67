"""Invisible-character and homoglyph detector: the cheap first line of the cascade.

Why this exists
---------------
Backdoored models are often keyed on triggers a human reviewer cannot see. The
literature shows several families that survive copy/paste and look identical (or
empty) on screen, yet tokenise very differently:

* **Invisible characters** (zero-width space/joiners, word joiner, stray BOM, soft
  hyphen, Hangul fillers, other ``Cf`` format characters) inserted into or between
  words. "Bad Characters: Imperceptible NLP Attacks" (Boucher, Shumailov, Anderson
  and Papernot, IEEE S&P 2022) shows that such injections, homoglyph swaps and
  bidi reorderings change model behaviour while rendering unchanged.
* **Bidirectional controls** (overrides, embeddings, isolates, directional marks)
  that make the displayed order differ from the order the model reads: "Trojan
  Source: Invisible Vulnerabilities" (Boucher and Anderson, 2021; USENIX Security
  2023).
* **Unicode tag characters** (U+E0000-U+E007F), which mirror ASCII invisibly and
  were used for "ASCII smuggling" / invisible prompt injection (publicised by
  Riley Goodside and Johann Rehberger in 2024).
* **Variation-selector runs**: arbitrary bytes can be hidden as a run of variation
  selectors after an emoji or a letter (Paul Butler, "Smuggling arbitrary data
  through an emoji", 2025).
* **Homoglyphs**: Latin words with Cyrillic/Greek/... look-alike letters, a trigger
  family used for backdoors in "Hidden Backdoors in Human-Centric Language Models"
  (Li et al., ACM CCS 2021); the mixed-script test follows the idea of Unicode
  TS #39 (Security Mechanisms) with a compact, hand-written table. A word is a
  spoof when it has a single-script reading (its foreign letters all imitate the
  other script, whichever script has the majority in the word) or a minority
  letter imitates the majority script; the script of the surrounding text decides
  the ambiguous cases (Greek symbols, native endings on Latin loanwords).

Legitimate uses of the same code points are common (emoji ZWJ sequences, VS-16,
flag tag sequences, keycaps, a leading BOM, ZWNJ/ZWJ in Persian, Arabic and Indic
scripts, ZWSP in Thai/Khmer/Myanmar, directional marks in RTL text, Greek symbols
glued to scientific terms such as TNF-alpha written with a Greek alpha). Each is
recognised from its immediate context and scores zero or low; see
``docs/detectors/invisible_chars.md``.

Cost: the detector runs inline on the event loop for every request. Pure-ASCII
segments return after one ``str.isascii()`` call; other segments are scanned with
precompiled regular expressions, and Python-level work happens only around the
(rare) candidate characters. Evidence is positions and reason codes only; no text
is copied into the finding.

Layout
------
This module holds the params model, the detector and its scoring: runs of candidate
characters, bidi pairing, weights, the mixed-word scan and the stream hold-back. The
rest of the package:

* :mod:`detectors.invisible_chars.tables`: reason codes, categories, weights and the
  code-point tables (character classes, script ranges, format characters);
* :mod:`detectors.invisible_chars.confusables`: script groups, the look-alike skeleton
  and the mixed-script word test;
* :mod:`detectors.invisible_chars.context`: when a candidate is legitimate next to its
  neighbours (joiners in their scripts, variation-selector bases, flag tag sequences);
* :mod:`detectors.invisible_chars.scan`: the precompiled patterns and the per-segment
  scan state.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field, field_validator

from detectors.base import (
    Cost,
    DetectorParams,
    Finding,
    FindingStatus,
    InlineDetector,
    Phase,
    Sample,
    Segment,
    Span,
)
from detectors.invisible_chars.confusables import (
    _WORD_RE,
    G_CYRILLIC as G_CYRILLIC,
    G_GREEK as G_GREEK,
    G_LATIN as G_LATIN,
    _group_of,
    _mixed_word_is_confusable as _mixed_word_is_confusable,
)
from detectors.invisible_chars.context import (
    _flag_tag_spec,
    _is_mark,
    _is_wordish,
    _script_context,
    _script_format_ok,
    _vs_base_ok,
)
from detectors.invisible_chars.scan import _Event, _Seg as _Seg
from detectors.invisible_chars.tables import (
    _ALL_CATEGORIES,
    _BIDI_MARKS,
    _BIDI_OPEN_ISOLATE,
    _CLASS_OF,
    _EMOJI,
    _HOLD_CATEGORIES,
    _JOINING_SCRIPTS,
    _MANY_EVENTS,
    _MINORITY_WORD_LIMIT,
    _MONGOLIAN,
    _RGI_FLAG_TAGS,
    _RTL,
    _SEGMENT_EVENT_CAP,
    _STEGO_RUN,
    _ZERO_WIDTH,
    _ZWSP_SCRIPTS,
    BOM,
    C_BIDI,
    C_FMT,
    C_TAG,
    C_VS,
    C_ZW,
    CANCEL_TAG,
    CGJ,
    LRE,
    LRO,
    MVS,
    PDF,
    PDI,
    R_BIDI,
    R_INVISIBLE_FORMAT,
    R_MIXED,
    R_TAGS,
    R_VS,
    R_VS_RUN,
    R_ZERO_WIDTH,
    REASON_CODES,
    RLE,
    RLO,
    SOFT_HYPHEN,
    VS15,
    VS16,
    W_BIDI,
    W_BIDI_RTL,
    W_IN_WORD,
    W_MANY,
    W_MARK_RTL,
    W_MIXED,
    W_OVERRIDE,
    W_RUN,
    W_SOFT_HYPHEN,
    W_STEGO,
    W_STRAY,
    W_TAG,
    W_TAG_ODD_FLAG,
    W_VS_DOUBLE,
    W_VS_STRAY,
    WAVING_BLACK_FLAG,
    ZWJ,
    ZWNJ,
    ZWSP,
    Category,
)

__all__ = ["REASON_CODES", "InvisibleCharsDetector", "InvisibleCharsParams"]

#: Characters of one run of adjacent candidates that are judged (see ``_scan_cluster``).
_MAX_CLUSTER = 256

# --------------------------------------------------------------------------- params


class InvisibleCharsParams(DetectorParams):
    """Tuning knobs for :class:`InvisibleCharsDetector` (the ``params:`` block)."""

    categories: tuple[Category, ...] = Field(
        default=_ALL_CATEGORIES,
        description="Invisible-character categories to report. 'variation_selector' "
        "covers both stray selectors and selector runs. Mixed-script words are "
        "controlled by check_confusables.",
    )
    zero_width_min_run: int = Field(
        default=2,
        ge=1,
        le=64,
        description="A run of at least this many non-legitimate invisible characters "
        "scores as a clear trigger wherever it is. 1 treats every stray zero-width "
        "character as a trigger.",
    )
    allow_leading_bom: bool = Field(
        default=True, description="U+FEFF at the very start of a segment is a byte-order mark."
    )
    allow_emoji_sequences: bool = Field(
        default=True,
        description="Emoji ZWJ sequences, VS-15/VS-16 presentation selectors, keycaps "
        "and RGI subdivision-flag tag sequences are legitimate.",
    )
    allow_script_joiners: bool = Field(
        default=True,
        description="ZWNJ/ZWJ in Arabic, Persian and Indic scripts, ZWSP in Thai/Lao/"
        "Khmer/Myanmar/Tibetan, script-specific format characters in their script, "
        "and a soft hyphen inside a word are legitimate (the last is reported low).",
    )
    allow_rtl_bidi: bool = Field(
        default=True,
        description="Single directional marks and balanced embeddings/isolates in text "
        "that contains right-to-left letters score low. Overrides always score high.",
    )
    check_confusables: bool = Field(
        default=True, description="Flag words that mix look-alike scripts (homoglyphs)."
    )
    max_spans: int = Field(
        default=32, ge=1, le=1000, description="Evidence spans kept per finding (highest first)."
    )
    analysis_budget: int = Field(
        default=4096,
        ge=16,
        le=10_000_000,
        description="Candidate clusters and mixed-script words judged one by one per "
        "sample. Past it, the rest of the segment is reported as 'invisible_flood' "
        "(score 0.6) instead of being scanned: this bounds the event-loop time a "
        "flood of legitimate-looking invisible characters can cost.",
    )

    @field_validator("categories")
    @classmethod
    def _sorted_unique(cls, value: tuple[Category, ...]) -> tuple[Category, ...]:
        return tuple(sorted(set(value)))


# --------------------------------------------------------------------------- detector


class InvisibleCharsDetector(InlineDetector[InvisibleCharsParams]):
    """Scores invisible, bidi, tag, variation-selector and homoglyph triggers.

    Score in [0, 1]: clear triggers >= 0.9, ambiguous strays about 0.6, legitimate
    uses 0 or below 0.3. Reason codes: see :data:`REASON_CODES`.
    """

    kind: ClassVar[str] = "invisible_chars"
    version: ClassVar[str] = "2"  # 2: single-script readings, text context, native endings
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT, Phase.OUTPUT})
    cost: ClassVar[Cost] = Cost.CHEAP
    Params: ClassVar[type[DetectorParams]] = InvisibleCharsParams
    # Stateless per call: short samples never wait behind a long one in a worker thread.
    concurrent_safe: ClassVar[bool] = True

    def __init__(self, name: str, params: DetectorParams | None = None) -> None:
        super().__init__(name, params)
        self._enabled: frozenset[str] = frozenset(self.params.categories)

    def score_inline(self, batch: Sequence[Sample]) -> list[Finding]:
        return [self.score_sample(sample) for sample in batch]

    def stream_safe_prefix(self, text: str) -> int:
        """Everything but an unfinished tail may go out.

        Judgements here need only nearby characters, so a stream is held back only
        while it ends in a run of invisible characters (a zero-width or tag run
        split across chunks) or inside a word that mixes ASCII and other letters
        (a homoglyph word whose rest is still coming). Prose in any script, CJK
        included, is released at once.
        """
        end = len(text)
        while end and unicodedata.category(text[end - 1]) in _HOLD_CATEGORIES:
            end -= 1
        word_start = end
        while word_start and not text[word_start - 1].isspace() and end - word_start < 64:
            word_start -= 1
        word = text[word_start:end]
        if not word.isascii() and any(c.isascii() and c.isalpha() for c in word):
            return word_start
        return end

    def score_sample(self, sample: Sample) -> Finding:
        """Score one sample synchronously. Never raises: errors become error findings."""
        t0 = time.perf_counter()
        try:
            events: list[_Event] = []
            budget = self.params.analysis_budget
            for index, seg in enumerate(sample.segments):
                text = seg.text
                # Fast path: pure-ASCII text cannot contain any of our characters.
                if text.isascii():
                    continue
                if not isinstance(text, str):
                    raise TypeError("segment text is not a str")
                st = self._scan_segment(index, text, budget)
                events.extend(st.events)
                budget = st.budget
            return self._finding(events, sample.segments, time.perf_counter() - t0)
        except Exception as exc:  # the contract: never raise, report an error finding
            return Finding.failed(self.name, FindingStatus.ERROR, type(exc).__name__)

    # ----------------------------------------------------------------- scanning

    def _scan_segment(self, index: int, text: str, budget: int) -> _Seg:
        st = _Seg(index, text, budget)
        for m in st.pat.invisible.finditer(text):
            if not st.spend(m.start()):
                break
            self._scan_cluster(st, m.start(), m.end())
            if st.stopped:
                break
        if st.bidi:
            self._pair_bidi(st)
        if self.params.check_confusables and not st.stopped:
            self._scan_mixed_words(st)
        return st

    def _scan_cluster(self, st: _Seg, s: int, e: int) -> None:
        """Judge one maximal run ``text[s:e]`` of adjacent candidate characters.

        Only the first ``_MAX_CLUSTER`` characters of a run are judged one by one: a run
        that long is smuggled data whatever its tail holds (its first characters already
        weigh W_STEGO), and judging 300,000 of them held the event loop for 0.7 s.
        """
        text = st.text
        e = min(e, s + _MAX_CLUSTER)
        if e - s == 1:
            # Fast path for the common lone character (a ZWNJ in Persian, a VS-16
            # after an emoji, an LRM in Hebrew): return early when it is legitimate.
            cp = ord(text[s])
            c = _CLASS_OF[cp]
            if c == C_BIDI and cp not in _BIDI_MARKS:
                st.bidi.append(s)
                return
            if cp != SOFT_HYPHEN and self._char_legit(text, s, cp, c, s, e):
                return
        prev_vis = text[s - 1] if s > 0 else ""
        next_vis = text[e] if e < len(text) else ""
        in_word = _is_wordish(prev_vis) and _is_wordish(next_vis)

        # Pass 1: classify each character and decide whether it is legitimate here.
        classes: list[int] = []
        legit: list[bool] = []
        i = s
        while i < e:
            cp = ord(text[i])
            c = _CLASS_OF[cp]
            if c == C_TAG:
                # One tag sequence: up to and including a CANCEL TAG (UTS #51).
                j = i + 1
                while j < e and ord(text[j - 1]) != CANCEL_TAG:
                    if _CLASS_OF[ord(text[j])] != C_TAG:
                        break
                    j += 1
                ok = self._tag_run_legit(text, i, j)
                classes.extend([c] * (j - i))
                legit.extend([ok] * (j - i))
                i = j
                continue
            classes.append(c)
            legit.append(self._char_legit(text, i, cp, c, s, e))
            i += 1
        # Non-legitimate hidden characters in this cluster (bidi is judged apart).
        hidden = sum(1 for c, ok in zip(classes, legit, strict=True) if not ok and c != C_BIDI)

        # Pass 2: one event per maximal run of same-class, non-legitimate characters.
        n = e - s
        k = 0
        while k < n:
            c = classes[k]
            if c == C_BIDI:
                if ord(text[s + k]) in _BIDI_MARKS:
                    j = k + 1
                    while j < n and ord(text[s + j]) in _BIDI_MARKS:
                        j += 1
                    self._mark_event(st, s + k, s + j, prev_vis, next_vis, in_word)
                    k = j
                else:
                    # Embeddings, overrides and isolates are paired per segment later.
                    st.bidi.append(s + k)
                    k += 1
                continue
            soft_hyphen = c == C_FMT and ord(text[s + k]) == SOFT_HYPHEN
            if legit[k] and not soft_hyphen:
                k += 1
                continue
            j = k + 1
            while j < n and classes[j] == c and legit[j] == legit[k]:
                j += 1
            if c == C_TAG:
                self._tag_event(st, s + k, s + j)
            elif c == C_VS:
                self._vs_event(st, s + k, s + j, in_word)
            elif legit[k]:
                # A lone soft hyphen inside a word: a hyphenation hint, reported low.
                self._emit(st, W_SOFT_HYPHEN, R_INVISIBLE_FORMAT, s + k, s + j)
            else:
                reason = R_ZERO_WIDTH if c == C_ZW else R_INVISIBLE_FORMAT
                self._emit(st, self._run_weight(hidden, in_word), reason, s + k, s + j)
            k = j

    def _run_weight(self, hidden: int, in_word: bool) -> float:
        if hidden >= _STEGO_RUN:
            return W_STEGO
        if hidden >= self.params.zero_width_min_run:
            return W_RUN
        return W_IN_WORD if in_word else W_STRAY

    def _char_legit(self, text: str, i: int, cp: int, c: int, s: int, e: int) -> bool:
        """Is the candidate ``text[i]`` legitimate in its immediate context?"""
        p = self.params
        prev = text[i - 1] if i > 0 else ""
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if c == C_ZW:
            if cp == BOM and i == 0 and p.allow_leading_bom:
                return True
            alone_left = i == s or ord(prev) not in _ZERO_WIDTH
            alone_right = i + 1 >= e or ord(nxt) not in _ZERO_WIDTH
            if not (alone_left and alone_right):
                return False
            if cp == ZWJ and p.allow_emoji_sequences:
                # Emoji ZWJ sequence; the left emoji may carry VS-15/VS-16.
                before = text[i - 2] if i >= 2 and ord(prev) in (VS15, VS16) else prev
                if _EMOJI.has(before) and _EMOJI.has(nxt):
                    return True
            if p.allow_script_joiners:
                if cp in (ZWNJ, ZWJ):
                    return _script_context(prev, nxt, _JOINING_SCRIPTS)
                if cp == ZWSP:
                    return _script_context(prev, nxt, _ZWSP_SCRIPTS)
                if cp == MVS:
                    return _script_context(prev, nxt, _MONGOLIAN)
            return False
        if c == C_VS:
            if 0xFE00 <= cp <= 0xFE0F and _EMOJI.has(prev) and not p.allow_emoji_sequences:
                return False
            alone = not (i > s and _CLASS_OF.get(ord(prev)) == C_VS) and not (
                i + 1 < e and _CLASS_OF.get(ord(nxt)) == C_VS
            )
            return alone and _vs_base_ok(cp, prev)
        if c == C_FMT and p.allow_script_joiners:
            if cp == SOFT_HYPHEN:
                # Only a lone hyphenation hint between letters (still reported, low).
                return e - s == 1 and _is_wordish(prev) and _is_wordish(nxt)
            if cp == CGJ:
                return _is_mark(prev) or _is_mark(nxt)
            return _script_format_ok(cp, prev, nxt)
        return False

    def _tag_run_legit(self, text: str, i: int, j: int) -> bool:
        """An RGI subdivision flag: U+1F3F4, tag letters, CANCEL TAG (UTS #51)."""
        if not self.params.allow_emoji_sequences or i == 0 or ord(text[i - 1]) != WAVING_BLACK_FLAG:
            return False
        return _flag_tag_spec(text, i, j) in _RGI_FLAG_TAGS

    def _tag_event(self, st: _Seg, i: int, j: int) -> None:
        text = st.text
        weight = W_STEGO if j - i >= _STEGO_RUN else W_TAG
        if (
            self.params.allow_emoji_sequences
            and i > 0
            and ord(text[i - 1]) == WAVING_BLACK_FLAG
            and _flag_tag_spec(text, i, j) is not None
        ):
            weight = W_TAG_ODD_FLAG  # a well-formed subdivision flag, just not RGI
        self._emit(st, weight, R_TAGS, i, j)

    def _vs_event(self, st: _Seg, i: int, j: int, in_word: bool) -> None:
        text = st.text
        n = j - i
        if n == 1:
            self._emit(st, W_IN_WORD if in_word else W_VS_STRAY, R_VS, i, j)
            return
        if n >= _STEGO_RUN:
            weight = W_STEGO
        elif (
            n == 2
            and ord(text[i]) in (VS15, VS16)
            and ord(text[i + 1]) in (VS15, VS16)
            and _vs_base_ok(VS16, text[i - 1] if i > 0 else "")
        ):
            weight = W_VS_DOUBLE  # doubled presentation selector: a copy/paste glitch
        else:
            weight = W_RUN
        self._emit(st, weight, R_VS_RUN, i, j)

    def _mark_event(
        self,
        st: _Seg,
        i: int,
        j: int,
        prev_vis: str,
        next_vis: str,
        in_word: bool,
    ) -> None:
        """LRM / RLM / ALM: normal in RTL text, a hidden character inside an LTR word."""
        single = j - i == 1
        rtl_neighbour = _RTL.has(prev_vis) or _RTL.has(next_vis)
        if single and self.params.allow_rtl_bidi and st.has_rtl() and (not in_word or rtl_neighbour):
            weight = W_MARK_RTL
        elif in_word or (not single and not st.has_rtl()):
            weight = W_IN_WORD
        else:
            weight = W_STRAY
        self._emit(st, weight, R_BIDI, i, j)

    def _pair_bidi(self, st: _Seg) -> None:
        """Pair embeddings/overrides with PDF and isolates with PDI (UAX #9, simplified).

        Overrides always score high (the Trojan Source reordering primitive); an
        embedding or isolate scores low only when balanced and wrapping RTL text.
        """
        text = st.text
        embeds: list[int] = []
        isolates: list[int] = []
        for pos in st.bidi:
            cp = ord(text[pos])
            if cp in (LRO, RLO):
                self._emit(st, W_OVERRIDE, R_BIDI, pos, pos + 1)
                embeds.append(pos)
            elif cp in (LRE, RLE):
                embeds.append(pos)
            elif cp in _BIDI_OPEN_ISOLATE:
                isolates.append(pos)
            elif cp == PDF:
                if not embeds:
                    self._emit(st, W_BIDI, R_BIDI, pos, pos + 1)
                else:
                    opener = embeds.pop()
                    if ord(text[opener]) in (LRE, RLE):
                        self._pair_event(st, opener, pos)
            elif cp == PDI:
                if not isolates:
                    self._emit(st, W_BIDI, R_BIDI, pos, pos + 1)
                else:
                    self._pair_event(st, isolates.pop(), pos)
        for pos in embeds:
            if ord(text[pos]) in (LRE, RLE):  # unclosed overrides were already reported
                self._emit(st, W_BIDI, R_BIDI, pos, pos + 1)
        for pos in isolates:
            self._emit(st, W_BIDI, R_BIDI, pos, pos + 1)

    def _pair_event(self, st: _Seg, opener: int, closer: int) -> None:
        rtl_inside = st.pat.rtl.search(st.text, opener + 1, closer) is not None
        weight = W_BIDI_RTL if self.params.allow_rtl_bidi and rtl_inside else W_BIDI
        self._emit(st, weight, R_BIDI, opener, opener + 1)
        self._emit(st, weight, R_BIDI, closer, closer + 1)

    def _scan_mixed_words(self, st: _Seg) -> None:
        """Find words mixing look-alike scripts; cheap presence checks first."""
        text = st.text
        pat = st.pat
        first = pat.nonlatin.search(text)
        if first is None:
            return  # mixing needs a letter of a non-Latin group
        seen: set[int] = set()
        if pat.latin.search(text) is not None:
            # Latin next to non-Latin: the shape of nearly every homoglyph spoof.
            for m in pat.latin_switch.finditer(text):
                self._check_word(st, m.start(), seen)
                if st.stopped:
                    return
        # Two different non-Latin groups (e.g. a Greek omicron in a Cyrillic word):
        # visit the words holding letters of groups other than the first one seen,
        # which are few in real text; fall back to one regex pass if they are not.
        group = _group_of(first.group())
        other = pat.other_nonlatin.get(group) if group is not None else None
        pos = 0
        if other is not None:
            for _ in range(_MINORITY_WORD_LIMIT):
                hit = other.search(text, pos)
                if hit is None:
                    return
                pos = self._check_word(st, hit.start(), seen)
                if st.stopped:
                    return
        for m in pat.nonlatin_switch.finditer(text, pos):
            self._check_word(st, m.start(), seen)
            if st.stopped:
                return

    def _check_word(self, st: _Seg, at: int, seen: set[int]) -> int:
        """Analyse the word around ``text[at]`` once; return the index after it."""
        text = st.text
        start = at
        while start > 0 and text[start - 1].isalnum():
            start -= 1
        w = _WORD_RE.match(text, start)
        end = w.end() if w is not None else at + 1
        if start not in seen and st.spend(start):
            seen.add(start)
            word = text[start:end]
            if _mixed_word_is_confusable(word, lambda g, o: st.dominates(g, o, start, end)):
                self._emit(st, W_MIXED, R_MIXED, start, end, mixed=True)
        return max(end, at + 1)

    # ----------------------------------------------------------------- output

    def _emit(
        self, st: _Seg, weight: float, reason: str, start: int, end: int, *, mixed: bool = False
    ) -> None:
        if not mixed and (R_VS if reason == R_VS_RUN else reason) not in self._enabled:
            return
        events = st.events
        if len(events) >= _SEGMENT_EVENT_CAP and weight < W_STRAY:
            return  # bound memory on floods of low-weight (legitimate-looking) characters
        events.append(_Event(weight, reason, st.index, start, end))
        st.top = max(st.top, weight)
        if weight >= W_STRAY:
            st.strong += 1
        if len(events) >= _SEGMENT_EVENT_CAP and (st.top >= W_IN_WORD or st.strong >= _MANY_EVENTS):
            # Already a clear trigger with a full evidence list: scanning the rest
            # of an adversarially long segment would only burn the event loop.
            st.stopped = True

    def _finding(self, events: list[_Event], segments: Sequence[Segment], duration: float) -> Finding:
        if not events:
            return Finding(detector=self.name, score=0.0, duration_seconds=duration)
        remedy, residual = _remedy(events, segments)
        score = max(e.weight for e in events)
        if sum(1 for e in events if e.weight >= W_STRAY) >= _MANY_EVENTS:
            # Many scattered invisibles (e.g. zero-width bits between words).
            score = max(score, W_MANY)
        keep = sorted(events, key=lambda e: (-e.weight, e.segment, e.start))[: self.params.max_spans]
        spans = tuple(
            Span(segment=e.segment, start=e.start, end=e.end, reason=e.reason)
            for e in sorted(keep, key=lambda e: (e.segment, e.start, e.end, e.reason))
        )
        return Finding(
            detector=self.name,
            score=min(1.0, max(0.0, score)),
            reasons=tuple(sorted({e.reason for e in events})),
            spans=spans,
            duration_seconds=duration,
            remedy=remedy,
            residual=residual,
        )


#: Reasons whose characters carry no meaning for a model, so removing them is the fix
#: (the ``sanitize`` action): zero-width and format characters, a lone variation
#: selector, directional marks, embeddings and isolates. Tag runs, selector runs
#: (smuggled data), overrides and mixed-script words are not: they block.
_REMOVABLE_REASONS = frozenset({R_ZERO_WIDTH, R_INVISIBLE_FORMAT, R_VS, R_BIDI})
_OVERRIDES = frozenset({chr(LRO), chr(RLO)})


def _remedy(events: Sequence[_Event], segments: Sequence[Segment]) -> tuple[str, float]:
    """The characters whose removal clears these events, and the score of what is left.

    A character is offered for removal only when every occurrence of it in the
    sample is one of these events: removal happens everywhere in the request, and
    must not take a legitimate ZWNJ out of a Persian word because a stray one sat in
    an English word. The residual is the score of the events removal does not touch
    (1.0, nothing removable, when a character does not qualify).
    """
    covered: dict[str, int] = {}
    residual = 0.0
    strong = 0
    for e in events:
        chunk = segments[e.segment].text[e.start : e.end]
        if e.reason in _REMOVABLE_REASONS and not _OVERRIDES.intersection(chunk):
            for ch in chunk:
                covered[ch] = covered.get(ch, 0) + 1
            continue
        residual = max(residual, e.weight)
        strong += e.weight >= W_STRAY
    if strong >= _MANY_EVENTS:
        residual = max(residual, W_MANY)
    for ch, n in covered.items():
        if sum(seg.text.count(ch) for seg in segments) != n:
            return "", 1.0
    return "".join(sorted(covered)), residual
