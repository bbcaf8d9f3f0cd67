"""Name the language of a code block: from its fence tag when there is one, else from content.

Why content matters: models often open a fence without a tag, or with a generic one
(``code``, ``text``), and a rule pack can only run when the language is known. The
guess is a weighted vote of cheap, distinctive regexes per language (``#include``
for C, ``:=`` and ``func`` for Go, ``<?php`` and ``$var =`` for PHP, ...), computed on at
most the first few kilobytes of the block. A block nothing votes for is ``"other"``:
only the language-independent rules (secrets, TLS flags) run on it.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["LANGUAGES", "SUPPORTED", "canonical_tag", "guess_language", "identify"]

#: Canonical language names used by the rule packs (tree-sitter grammar names where one exists).
LANGUAGES: Final = (
    "python",
    "javascript",
    "typescript",
    "tsx",
    "java",
    "c",
    "cpp",
    "csharp",
    "go",
    "php",
    "ruby",
    "bash",
    "sql",
)
SUPPORTED: Final = frozenset(LANGUAGES)

_TAGS: Final[dict[str, str]] = {
    **dict.fromkeys(("py", "python", "python3", "py3", "pycon", "ipython", "gyp", "flask", "django"), "python"),  # noqa: E501
    **dict.fromkeys(("js", "javascript", "node", "nodejs", "mjs", "cjs", "jsx", "es6", "vue"), "javascript"),
    **dict.fromkeys(("ts", "typescript", "mts", "cts"), "typescript"),
    "tsx": "tsx",
    **dict.fromkeys(("java", "jsp", "kotlin-java"), "java"),
    **dict.fromkeys(("c", "h"), "c"),
    **dict.fromkeys(("cpp", "c++", "cc", "cxx", "hpp", "hh", "hxx", "arduino", "cuda"), "cpp"),
    **dict.fromkeys(("cs", "csharp", "c#", "dotnet", "aspnet", "razor", "cshtml"), "csharp"),
    **dict.fromkeys(("go", "golang"), "go"),
    **dict.fromkeys(("php", "php7", "php8", "phtml", "laravel"), "php"),
    **dict.fromkeys(("rb", "ruby", "rails", "erb", "sinatra"), "ruby"),
    **dict.fromkeys(
        ("sh", "bash", "shell", "zsh", "ksh", "console", "shell-session", "shellsession", "terminal",
         "dockerfile", "docker", "makefile", "ps", "cmd"),
        "bash",
    ),
    **dict.fromkeys(
        ("sql", "mysql", "postgresql", "postgres", "psql", "plpgsql", "pgsql", "tsql", "t-sql", "mssql",
         "sqlite", "plsql", "mariadb"),
        "sql",
    ),
}  # fmt: skip
_GENERIC_TAGS: Final = frozenset(
    {"", "code", "text", "txt", "plaintext", "plain", "none", "source", "snippet"}
)

# (language, weight, pattern) votes; MULTILINE so ^ anchors each line.
_VOTES: Final[tuple[tuple[str, float, re.Pattern[str]], ...]] = tuple(
    (lang, w, re.compile(p, re.M))
    for lang, w, p in (
        ("python", 3, r"^\s*(?:def \w+\(.*\)\s*(?:->\s*[\w\[\], .]+)?:\s*$|from [\w.]+ import |import \w+(?: as \w+)?$)"),  # noqa: E501
        ("python", 2, r"^\s*(?:elif |except\b|with .+ as \w+:|@\w+(?:\.\w+)*(?:\(|$)|if __name__ ==)"),
        ("python", 1, r"\bself\.\w|\bprint\(|\bNone\b|\bTrue\b|f\"[^\"]*\{|:\s*$"),
        ("javascript", 3, r"\brequire\(['\"]|\bmodule\.exports\b|=>\s*[{(]|\bconsole\.log\(|\bdocument\.\w"),
        ("javascript", 2, r"^\s*(?:const|let|var) \w+ = |^\s*(?:export )?(?:async )?function\b|\bawait \w"),
        ("typescript", 3, r"^\s*(?:export )?(?:interface|type) \w+\s*(?:=|\{|<)|:\s*(?:string|number|boolean|void|any)\b"),  # noqa: E501
        ("tsx", 2, r"<[A-Z]\w*(?:\s+[\w-]+=|\s*/?>)(?!\s*\()|return\s*\(\s*<|className="),
        ("java", 3, r"^\s*(?:public |private |protected )?(?:static )?(?:final )?class \w+|\bSystem\.out\.|^\s*import java\."),  # noqa: E501
        ("java", 2, r"^\s*@(?:Override|GetMapping|PostMapping|RequestMapping|RestController|Autowired)\b|\bString\[\] args\b|\bnew \w+<"),  # noqa: E501
        ("java", 3, r"\)\s*throws\s+[A-Z]\w*|\bprivate static final\b|\bString\[\]|\bSystem\.(?:out|err|getenv|currentTimeMillis)\b"),  # noqa: E501
        ("java", 1, r"\bString\s+\w+\s*[=;,)]|\.getBytes\(|\.equals\(|\bnew [A-Z]\w*<>\(|^\s*(?:public|private|protected)\s+[\w<>\[\]]+\s+\w+\s*\("),  # noqa: E501
        ("c", 3, r"^\s*#include\s*<(?:stdio|stdlib|string|unistd|sys/\w+|fcntl)\.h>|\bint main\s*\("),
        ("c", 2, r"\b(?:printf|malloc|free|strcpy|strcat|sprintf|snprintf|fgets|scanf)\s*\(|\bchar\s*\*?\s*\w+\s*\["),  # noqa: E501
        ("c", 2, r"\b(?:sqlite3_\w+|curl_easy_\w+|SSL_CTX_\w+|pid_t|size_t|uint8_t|NULL)\b|\w->\w"),
        ("cpp", 3, r"\bstd::|^\s*#include\s*<(?:iostream|string|vector|memory|map)>|\bcout\s*<<|^\s*using namespace std"),  # noqa: E501
        ("csharp", 3, r"^\s*using System(?:\.\w+)*;|\bConsole\.Write|^\s*namespace [\w.]+|\bpublic (?:async )?Task\b"),  # noqa: E501
        ("csharp", 2, r"\[(?:HttpGet|HttpPost|Route|ApiController|Authorize|FromQuery|FromBody)\b|\bvar \w+ = new \w+|\bstring \w+ ="),  # noqa: E501
        ("csharp", 2, r"\b(?:JsonConvert|Encoding\.UTF8|Convert\.To\w+|Guid\.|string\.(?:Join|Format|IsNullOrEmpty)|async Task|\.ToString\(\))\b|^\s*\w+ = [\w.]+,\s*$"),  # noqa: E501
        ("csharp", 2, r"\bpublic (?:string|void|int|bool|async|static|override|IActionResult)\b|\bnew\(\)|\?\?=|@Model\.|@Html\."),  # noqa: E501
        ("go", 3, r"^\s*package \w+\s*$|^\s*func (?:\(\w+ \*?\w+\) )?\w+\(|\bfmt\.\w+\(|\w+ := "),
        ("go", 2, r"\berr != nil\b|^\s*import \(|\bhttp\.(?:HandleFunc|ResponseWriter)"),
        ("php", 4, r"<\?php"),
        ("php", 2, r"^\s*\$\w+\s*=|\$_(?:GET|POST|REQUEST|COOKIE|SERVER)\b|->\w+\(|\becho \$|<\?="),
        ("ruby", 3, r"^\s*(?:def \w+[?!]?(?:\(.*\))?\s*$|end\s*$|require ['\"]|class \w+ < \w+|module \w+\s*$)"),  # noqa: E501
        ("ruby", 2, r"\bputs \w|\bdo \|\w+|\bparams\[:|\.each do\b|#\{"),
        ("ruby", 2, r"\b[A-Z]\w*::[A-Z]\w*|\bnil\b|\bunless\b|\battr_(?:reader|accessor)\b|\.new\("),
        ("bash", 3, r"^#!/(?:usr/)?bin/(?:env )?(?:ba|z|k)?sh|^\s*(?:fi|done|esac)\s*$|^\s*if \[\[? "),
        ("bash", 2, r"^\s*(?:\$ )?(?:sudo|apt(?:-get)?|chmod|chown|curl|wget|export|echo|mkdir|cd|systemctl|docker|git|kubectl) "),  # noqa: E501
        ("bash", 1, r"\$\{?\w+\}?|\|\s*(?:grep|awk|sed|xargs)\b"),
        ("sql", 3, r"(?i)^\s*(?:SELECT\b.+\bFROM\b|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (?:OR REPLACE )?(?:TABLE|PROCEDURE|FUNCTION|USER|INDEX|VIEW)|GRANT |ALTER TABLE|DECLARE @)"),  # noqa: E501
        ("sql", 2, r"(?i)\b(?:BEGIN|END;|EXEC(?:UTE)?|\$\$|LANGUAGE plpgsql|VARCHAR\(|NVARCHAR)\b"),
    )
)  # fmt: skip

_SAMPLE_CHARS = 4000
#: Content evidence that overrides a fence tag voted for by nothing in the block.
_OVERRIDE_SCORE = 10.0
#: Languages whose code is (nearly) the other's: a tag of one is never overridden by the other.
_FAMILIES = (frozenset({"javascript", "typescript", "tsx"}), frozenset({"c", "cpp"}))


def _related(a: str, b: str) -> bool:
    return any(a in family and b in family for family in _FAMILIES)


def canonical_tag(tag: str) -> str | None:
    """The canonical language for a fence tag; ``None`` for generic or unknown tags."""
    return _TAGS.get(tag.lower().strip())


# A YAML document line: a ``key:`` (with or without a value) or a ``- item``.
_YAML_LINE: Final = re.compile(r"""\s*(?:-(?:\s.*)?|[\w.$"'/-]+\s*:(?:\s.*)?)""")
_YAML_KEY: Final = re.compile(r"""\s*[\w.$"'/-]+\s*:(?:\s.*)?""")


def _is_yaml(code: str) -> bool:
    """Every code line is a ``key:`` or a ``- item`` (comments and blanks aside).

    An untagged CI pipeline, compose file or manifest is data: its ``stages:`` and
    ``script:`` lines read like Python block openers, and then the Python rules judged a
    ``- eval $(ssh-agent -s)`` list item. Python code has statements besides its block
    openers (``else:``, ``try:``), so it never has only these.
    """
    lines = [
        line
        for line in code[:_SAMPLE_CHARS].splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return (
        len(lines) >= 3
        and all(_YAML_LINE.fullmatch(line) for line in lines)
        and sum(1 for line in lines if _YAML_KEY.fullmatch(line)) >= 2
    )


def guess_language(code: str) -> str:
    """Best guess from content; ``"other"`` when no language scores, or the block is YAML."""
    best, score = _best(_scores(code))
    if score < 2 or _is_yaml(code):
        return "other"
    return best


def _scores(code: str) -> dict[str, float]:
    sample = code[:_SAMPLE_CHARS]
    scores: dict[str, float] = {}
    for lang, weight, pattern in _VOTES:
        hits = len(pattern.findall(sample))
        if hits:
            scores[lang] = scores.get(lang, 0.0) + weight * min(hits, 4)
    if not scores:
        return scores
    # TypeScript and TSX build on JavaScript; C++ on C: promote only with their own evidence.
    js = scores.get("javascript", 0.0)
    if scores.get("typescript", 0.0) and js:
        scores["typescript"] += js
    if scores.get("tsx", 0.0) and (js or scores.get("typescript")):
        scores["tsx"] += js + scores.get("typescript", 0.0)
    else:
        scores.pop("tsx", None)
    if scores.get("cpp", 0.0):
        scores["cpp"] += scores.get("c", 0.0)
    return scores


def _best(scores: dict[str, float]) -> tuple[str, float]:
    if not scores:
        return "other", 0.0
    return max(scores.items(), key=lambda kv: (kv[1], -LANGUAGES.index(kv[0])))


def identify(tag: str, code: str) -> str:
    """The block's language: a known fence tag wins, otherwise the content decides.

    A tag that names a language we have no rules for (``yaml``, ``json``, ``html``) is
    kept as ``"other"`` rather than guessed, since its content is data, not code.
    """
    known = canonical_tag(tag)
    if known is not None:
        # A tag is usually right, but not always (pages converted to Markdown label every block
        # with one language): where the content votes strongly for another language and not at
        # all for the tagged one, the content wins. A JavaScript template literal read as PHP
        # was a backtick shell command.
        scores = _scores(code)
        best, score = _best(scores)
        if best != known and score >= _OVERRIDE_SCORE and not scores.get(known) and not _related(best, known):
            return best
        return known
    if tag.lower() not in _GENERIC_TAGS:
        return "other"
    return guess_language(code)
