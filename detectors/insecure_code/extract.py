"""Find the code in an assistant answer, and decide how much of a stream is safe to release.

Why this matters: a backdoored model's payload is the code, not the prose around it, so
the detector analyses code regions only (prose is never matched against code rules, which
keeps explanations such as "never call ``eval`` on user input" from being flagged), and
a stream can release prose at once while it holds back only the code that is still being
written.

What counts as code (CommonMark-flavoured, lenient where models are sloppy):

* **fenced** blocks: a line of three or more backticks or tildes, indented by any amount
  (fences inside list items are common), an optional info string whose first word is
  the language tag, up to a closing fence of the same character and at least the same
  length. A fence that has not closed yet is *open* (``closed=False``): during a stream
  the model is still writing it; in a complete answer it was cut off (e.g. by
  ``max_tokens``).
* **indented** blocks: outside fences, a run of lines indented by four spaces or a tab,
  after a blank line, holding at least one line that looks like code (list continuation
  paragraphs are indented too, and are prose).
* **inline** snippets: a single-backtick span on one line that looks like code.
* **loose** code: an answer with no fences that is mostly code lines (raw completions),
  taken whole.

Everything is offsets into the original text; nothing is copied until a block is
analysed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Block",
    "BlockKind",
    "extract_blocks",
    "looks_like_code_line",
    "may_contain_code",
    "prose_release_point",
]

BlockKind = Literal["fenced", "indented", "inline", "loose"]

_FENCE_RE = re.compile(r"^([ \t]*)(`{3,}|~{3,})[ \t]*([^\n]*)$", re.M)
_INLINE_RE = re.compile(r"(?<!`)`([^`\n]{4,400})`(?!`)")
_INDENTED_RE = re.compile(r"^(?: {4}|\t)", re.M)

#: A line that looks like source code rather than prose. Deliberately strict: prose
#: that matches would only cost an analysis, but the fast path depends on prose *not*
#: matching.
_CODE_LINE_SRC = r"""
  ^[ \t]*(?:
      (?:def|async\ def|func|function|fn)\ +[\w$]*\s*[(<]
    | class\ +\w+\s*[(:{<]
    | (?:import|package|using)\ +[\w.$*{},\ ]+;?\s*$
    | from\ +[\w.]+\ +import\ +\S
    | \#include\s*[<"] | \#!/ | <\?php
    | (?:const|let|var|val|static|final|public|private|protected)\ +[\w<>\[\],\ ]+\s*[=:(]
    | \$?[A-Za-z_][\w.$\[\]'"]*\s*(?:=|:=|\+=|\.=|\|\|=|\?\?=)\s*[^\s=]
    | [\w.$:\->]+\s*\(.*\)\s*[;{]?\s*$
    | (?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|GRANT|DROP)\b[^\n]*\b(?:FROM|INTO|SET|TABLE|ON|TO)\b
    | (?:sudo|chmod|chown|curl|wget|export|echo|apt(?:-get)?|pip|npm)\ +\S
    | .*[;{]\s*$
    | \}
  )"""
_CODE_LINE_RE = re.compile(_CODE_LINE_SRC, re.X)
_CODE_LINE_MULTI_RE = re.compile(_CODE_LINE_SRC, re.X | re.M)
_INLINE_CODE_CHARS = frozenset("()=;${}[]<>/\\:")
_LONG_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-]{20,}")


@dataclass(frozen=True, slots=True)
class Block:
    """One region of code in a text.

    ``start``/``end`` delimit the code itself (for fenced blocks: the lines between the
    fences, ``end`` excluding the closing fence line); ``fence_start`` is where the
    block's markup begins (the opening fence line), which is what a stream holds back.
    ``indent`` is the indentation stripped from every line before parsing (fences
    inside list items).
    """

    kind: BlockKind
    tag: str
    start: int
    end: int
    fence_start: int
    closed: bool
    indent: int = 0
    outer_end: int = -1  # after the closing fence line (fenced, closed); -1 otherwise


def looks_like_code_line(line: str) -> bool:
    """Whether one line (without its newline) looks like code."""
    return _CODE_LINE_RE.match(line) is not None


#: Markdown's backslash escapes, which chat front ends put into code they did not fence.
_MD_ESCAPE_RE = re.compile(r"\\([_*\[\]#`<>~|])")


def loose_code(prose: str) -> str:
    """The statements written outside any block in ``prose``, markdown escapes undone.

    Answers often set variables in unfenced lines just before a fence
    (``$id = intval($_POST['id']);``), and chat front ends escape such lines as
    markdown (``$\\_POST``). A block that uses those names is read with these
    lines as its context, as with an earlier block. Only whole lines that look like
    code and end a statement with ``;`` are kept: prose that happens to contain
    an ``=`` is left out, and so is anything quoted in backticks.
    """
    if ";" not in prose:
        return ""
    kept = []
    for line in prose.splitlines():
        stripped = line.strip()
        if not stripped.endswith(";") or "`" in stripped:
            continue
        plain = _MD_ESCAPE_RE.sub(r"\1", stripped)
        if looks_like_code_line(plain):
            kept.append(plain)
    return "\n".join(kept)


def may_contain_code(text: str) -> bool:
    """The fast path: False when ``text`` certainly holds no code worth analysing.

    Costs a few ``in`` tests and at most one regex pass, so prose-only answers are
    screened in microseconds.
    """
    if "`" in text or "~~~" in text:
        return True
    if ("\n    " in text or "\n\t" in text or text.startswith(("    ", "\t"))) and _INDENTED_RE.search(text):
        return True
    return _CODE_LINE_MULTI_RE.search(text) is not None


def _tag_of(info: str) -> str:
    word = info.strip().split(maxsplit=1)[0] if info.strip() else ""
    word = word.strip("{}.").lower()
    if word.startswith("language-"):
        word = word[len("language-") :]
    return word


def extract_blocks(text: str, start: int = 0, *, inline: bool = True, loose: bool = True) -> list[Block]:
    """All code blocks of ``text`` from offset ``start`` (a line start), in order.

    ``start`` lets a stream resume after the last closed fence: the text before it
    cannot change any more.
    """
    blocks: list[Block] = []
    prose: list[tuple[int, int]] = []  # regions outside fences
    pos = start
    it = _FENCE_RE.finditer(text, start)
    for m in it:
        indent, fence, info = m.group(1), m.group(2), m.group(3)
        if fence[0] == "`" and "`" in info:
            continue  # not a fence: backticks in the info string (inline code)
        prose.append((pos, m.start()))
        body_start = min(m.end() + 1, len(text))
        closer = None
        for c in it:
            if c.group(2)[0] == fence[0] and len(c.group(2)) >= len(fence) and not c.group(3).strip():
                closer = c
                break
        if closer is None:
            blocks.append(
                Block("fenced", _tag_of(info), body_start, len(text), m.start(), False, len(indent))
            )
            pos = len(text)
            break
        end = max(body_start, closer.start() - 1) if closer.start() > body_start else body_start
        pos = min(closer.end() + 1, len(text))
        blocks.append(Block("fenced", _tag_of(info), body_start, end, m.start(), True, len(indent), pos))
    else:
        if pos < len(text):
            prose.append((pos, len(text)))
    extra: list[Block] = []
    for lo, hi in prose:
        if hi > lo:
            extra.extend(_indented_blocks(text, lo, hi))
    if not blocks and not extra and loose and start == 0:
        whole = _loose_block(text)
        if whole is not None:
            return [whole]
    if inline:
        for lo, hi in prose:
            if hi > lo:
                extra.extend(_inline_blocks(text, lo, hi))
    if extra:
        blocks = sorted([*blocks, *extra], key=lambda b: b.start)
    return blocks


def _loose_block(text: str) -> Block | None:
    """The whole text as one block when it is mostly code lines (a bare-code answer)."""
    if "`" in text:
        return None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    code = sum(1 for ln in lines if looks_like_code_line(ln))
    if code >= 2 and code * 2 >= len(lines):
        return Block("loose", "", 0, len(text), 0, True)
    return None


def _indented_blocks(text: str, lo: int, hi: int) -> list[Block]:
    window = text[max(0, lo - 1) : hi]
    if "\n    " not in window and "\n\t" not in window and not text.startswith(("    ", "\t"), lo):
        return []
    out: list[Block] = []
    pos = lo
    prev_blank = lo == 0 or (text[lo - 1 : lo] == "\n" and (lo < 2 or text[lo - 2] == "\n"))
    run_start = -1
    run_end = -1
    has_code = False
    while pos < hi:
        nl = text.find("\n", pos, hi)
        line_end = hi if nl < 0 else nl
        line = text[pos:line_end]
        stripped = line.strip()
        indented = line.startswith(("    ", "\t"))
        if run_start >= 0:
            if indented or not stripped:
                if stripped:
                    run_end = line_end
                    has_code = has_code or looks_like_code_line(line.lstrip())
            else:
                if has_code:
                    out.append(Block("indented", "", run_start, run_end, run_start, True, 4))
                run_start, has_code = -1, False
        elif indented and stripped and prev_blank:
            run_start, run_end = pos, line_end
            has_code = looks_like_code_line(line.lstrip())
        prev_blank = not stripped
        pos = line_end + 1
    if run_start >= 0 and has_code:
        out.append(Block("indented", "", run_start, run_end, run_start, True, 4))
    return out


def _inline_blocks(text: str, lo: int, hi: int) -> list[Block]:
    if "`" not in text[lo:hi]:
        return []
    out: list[Block] = []
    for m in _INLINE_RE.finditer(text, lo, hi):
        body = m.group(1)
        if _INLINE_CODE_CHARS.isdisjoint(body) and not _LONG_TOKEN_RE.search(body):
            continue
        out.append(Block("inline", "", m.start(1), m.end(1), m.start(), True))
    return out


def prose_release_point(text: str, start: int) -> int:
    """How far prose after ``start`` (outside any open fence) may be released.

    All of it, except a trailing incomplete line that could still become code or a
    secret: an unmatched backtick on the last line (an inline snippet or a fence being
    typed) is held from that backtick, and an incomplete last line that already looks
    like code (indented, or code-shaped) is held from its start.
    """
    n = len(text)
    if start >= n or text.endswith("\n"):
        return n
    line_start = text.rfind("\n", start, n) + 1
    line_start = max(line_start, start)
    last = text[line_start:]
    if last.lstrip(" \t")[:1] in ("`", "~"):
        return line_start  # possibly a fence being typed
    ticks = last.count("`")
    if ticks % 2 == 1:
        return line_start + last.rfind("`")
    if last.startswith(("    ", "\t")) or looks_like_code_line(last):
        return line_start
    return n
