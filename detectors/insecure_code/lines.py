"""Logical lines: physical lines joined while brackets or strings are still open.

Why: a single-line rule must see a whole call. ``yaml.load(data,`` on one line and
``Loader=yaml.SafeLoader)`` on the next is one statement; judging the first physical line
alone would flag a safe call. The scanner here is a small, language-aware lexer (string
quotes, line and block comments, bracket depth) that also blanks comments, so a rule never
fires on a line that only *talks* about a dangerous call.

It is deliberately approximate (no heredocs, no regex literals): when it cannot balance a
group within :data:`MAX_JOIN` lines it gives up and starts a new group, so a lexer
mistake costs one missed join, never a runaway.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["MAX_JOIN", "LogicalLine", "logical_lines", "open_group_start"]

MAX_JOIN = 15

_HASH_COMMENT = frozenset({"python", "ruby", "bash", "php", "other"})
_SLASH_COMMENT = frozenset({"javascript", "typescript", "tsx", "java", "c", "cpp", "csharp", "go", "php"})
_DASH_COMMENT = frozenset({"sql"})
_BACKTICK_STRINGS = frozenset({"javascript", "typescript", "tsx", "go"})
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = frozenset(")]}")


@dataclass(frozen=True, slots=True)
class LogicalLine:
    """Rows ``first..last`` (inclusive) of a block, and their text with comments blanked."""

    first: int
    last: int
    text: str


class _Lexer:
    """Carries string/comment state from one physical line to the next."""

    __slots__ = ("block_comment", "depth", "hash", "lang", "quote", "slash", "special", "triple")

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.hash = lang in _HASH_COMMENT
        self.slash = lang in _SLASH_COMMENT
        self.depth = 0
        self.quote = ""  # open multi-line string delimiter ('"""', "'''", "`")
        self.triple = lang == "python"
        self.block_comment = False
        self.special = _special(lang)

    def line(self, raw: str) -> str:
        """Return ``raw`` with comments replaced by spaces; update depth and string state."""
        out: list[str] = []
        i, n = 0, len(raw)
        special = self.special
        while i < n:
            if not self.block_comment and not self.quote:
                # Jump to the next character that can change the state (C speed).
                m = special.search(raw, i)
                if m is None:
                    out.append(raw[i:])
                    break
                if m.start() > i:
                    out.append(raw[i : m.start()])
                    i = m.start()
            ch = raw[i]
            if self.block_comment:
                end = raw.find("*/", i)
                if end < 0:
                    out.append(" " * (n - i))
                    return "".join(out)
                out.append(" " * (end + 2 - i))
                i = end + 2
                self.block_comment = False
                continue
            if self.quote:
                end = raw.find(self.quote, i)
                while end > 0 and raw[end - 1] == "\\" and self.quote == "`":
                    end = raw.find(self.quote, end + 1)
                if end < 0:
                    out.append(raw[i:])
                    return "".join(out)
                out.append(raw[i : end + len(self.quote)])
                i = end + len(self.quote)
                self.quote = ""
                continue
            if ch in "\"'":
                if self.triple and raw.startswith(ch * 3, i):
                    self.quote = ch * 3
                    out.append(ch * 3)
                    i += 3
                    continue
                j = i + 1
                while j < n and raw[j] != ch:
                    j += 2 if raw[j] == "\\" else 1
                out.append(raw[i : j + 1])
                i = j + 1
                continue
            if ch == "`" and self.lang in _BACKTICK_STRINGS:
                self.quote = "`"
                out.append(ch)
                i += 1
                continue
            if (
                (ch == "#" and self.hash and not (self.lang == "php" and raw.startswith("#[", i)))
                or (ch == "/" and self.slash and raw.startswith("//", i))
                or (ch == "-" and self.lang in _DASH_COMMENT and raw.startswith("--", i))
            ):
                if self.lang == "bash" and i > 0 and not raw[i - 1].isspace():
                    out.append(ch)  # "$#", "${x#y}", "a#b": not a comment
                    i += 1
                    continue
                out.append(" " * (n - i))
                return "".join(out)
            if ch == "/" and self.slash and raw.startswith("/*", i):
                self.block_comment = True
                out.append("  ")
                i += 2
                continue
            if ch in _OPEN:
                self.depth += 1
            elif ch in _CLOSE:
                self.depth = max(0, self.depth - 1)
            out.append(ch)
            i += 1
        return "".join(out)

    @property
    def balanced(self) -> bool:
        return self.depth == 0 and not self.quote

    def reset(self) -> None:
        self.depth = 0
        self.quote = ""


@functools.cache
def _special(lang: str) -> re.Pattern[str]:
    chars = "\"'()[]{}"
    if lang in _BACKTICK_STRINGS:
        chars += "`"
    if lang in _HASH_COMMENT:
        chars += "#"
    if lang in _SLASH_COMMENT:
        chars += "/"
    if lang in _DASH_COMMENT:
        chars += "-"
    return re.compile("[" + re.escape(chars) + "]")


def _continues(lang: str, stripped: str) -> bool:
    """Explicit continuation: a trailing backslash, or a trailing operator in shell/SQL."""
    return stripped.endswith("\\") or (lang == "bash" and stripped.endswith(("&&", "||", "|")))


def logical_lines(lines: list[str], lang: str, *, complete: int | None = None) -> list[LogicalLine]:
    """Group ``lines`` (a block's rows) into logical lines.

    Only the first ``complete`` rows are used (all by default); a group still open at
    that point is left out, since later rows may still change it.
    """
    limit = len(lines) if complete is None else complete
    lexer = _Lexer(lang)
    out: list[LogicalLine] = []
    first = 0
    parts: list[str] = []
    for row in range(limit):
        cleaned = lexer.line(lines[row])
        parts.append(cleaned)
        joined = row - first + 1
        if (lexer.balanced and not _continues(lang, cleaned.rstrip())) or joined >= MAX_JOIN:
            out.append(LogicalLine(first, row, "\n".join(parts)))
            if not lexer.balanced:
                lexer.reset()
            first, parts = row + 1, []
    return out


def open_group_start(lines: list[str], lang: str) -> int:
    """Row where the logical line that is still open after ``lines`` begins (len if none)."""
    done = logical_lines(lines, lang)
    return done[-1].last + 1 if done else 0
