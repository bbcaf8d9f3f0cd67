"""Rule packs as data: load, validate and compile ``detectors/insecure_code/rule_files/*.yaml``.

Why data and not code: a security team reviews, tunes or disables a rule without reading
the engine, every rule carries its own safe and unsafe example (the test suite runs
them all), and the CWE, severity and description travel with the rule into reports.

A rule is either

* a **line** rule (``pattern``): regexes over one *logical* line (see
  :mod:`detectors.insecure_code.lines`), with exceptions on the same line (``unless``), earlier in
  the block (``unless_before``, still decidable as soon as the line completes), later in
  the block (``unless_after``, the block must close first), a ``context`` window
  (``context_lines: [before, after]``), or a handler ``scope`` (missing-authentication
  rules: the rest of the handler must be seen); or
* a **syntax** rule (``ast``): a sink (a call, a statement node or an assignment target)
  whose argument is judged by the flow analysis of :mod:`detectors.insecure_code.flow`
  (``dynamic``: a string built from a non-constant part; ``nonliteral``: anything but a
  constant; ``tainted``: derived from a request/CLI source; ``untrusted``: derived from a
  source or from an origin the snippet does not show, not from the app's own values;
  ``always``).

``lookahead`` says how many complete rows after a hit must exist before the hit is final:
0 for rules decided by the line and what precedes it, ``INFINITE`` for rules that need the
whole block. The streaming code holds and decides with it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, Literal

import yaml

from detectors.insecure_code.langid import LANGUAGES

__all__ = [
    "CATEGORIES",
    "INFINITE",
    "SEVERITY_WEIGHT",
    "AstSpec",
    "Rule",
    "RulePack",
    "RuleError",
    "glob_regex",
    "load_rules",
    "parse_rules",
]

INFINITE: Final = 1 << 30

CATEGORIES: Final = frozenset(
    {
        "sqli",
        "command_injection",
        "code_injection",
        "deserialization",
        "hardcoded_secret",
        "weak_password_hash",
        "insecure_random",
        "tls_verification",
        "xss",
        "path_traversal",
        "ssrf",
        "xxe",
        "jwt",
        "unbounded_copy",
        "permissions",
        "debug_mode",
        "missing_auth",
    }
)
SEVERITY_WEIGHT: Final[Mapping[str, float]] = {"critical": 1.0, "high": 0.9, "medium": 0.75, "low": 0.55}
_LANGUAGE_GROUPS: Final[Mapping[str, tuple[str, ...]]] = {
    "js": ("javascript", "typescript", "tsx"),
    "cfamily": ("c", "cpp"),
    "any": (*LANGUAGES, "other"),
}
_ID_RE = re.compile(r"^[A-Z]{1,5}-[A-Z0-9]{2,8}-\d{3}$")
_CWE_RE = re.compile(r"^CWE-\d{1,4}$")
_RULE_KEYS = frozenset(
    {
        "id", "title", "category", "cwe", "severity", "confidence", "languages", "pattern", "unless",
        "unless_before", "unless_after", "context", "context_lines", "scope", "ast", "examples", "min_entropy",  # noqa: E501
    }
)  # fmt: skip
_AST_KEYS = frozenset(
    {"call", "node", "assign", "arg", "kwarg", "when", "require_kwargs", "forbid_kwargs", "arg_text",
     "min_args", "max_args", "sanitizers", "bare", "sized_dest", "own_values"}
)  # fmt: skip
When = Literal["dynamic", "nonliteral", "tainted", "untrusted", "always"]


class RuleError(ValueError):
    """A rule pack that does not validate; the message names the pack and the rule."""


@dataclass(frozen=True, slots=True)
class AstSpec:
    """A syntax-tier sink: what to match and which argument to judge, and how."""

    calls: tuple[re.Pattern[str], ...]
    call_names: frozenset[str]  # last components for the index ("*" when a glob ends in one)
    nodes: frozenset[str]
    assigns: tuple[re.Pattern[str], ...]
    arg: int | tuple[int, ...] | Literal["any", "all"]
    kwarg: str | None
    when: When
    require_kwargs: tuple[tuple[str, re.Pattern[str]], ...]
    forbid_kwargs: tuple[tuple[str, re.Pattern[str]], ...]
    arg_text: tuple[tuple[int, re.Pattern[str]], ...]
    min_args: int
    max_args: int
    sanitizers: tuple[re.Pattern[str], ...]
    # An unqualified glob names a global function (Python's builtin ``compile``, JavaScript's
    # ``Function``): with ``bare`` it no longer matches a method or a member of the same name
    # (``re.compile``, ``new lambda.Function``), which it does by default (``User.where``).
    bare: bool = False
    # A string copy (``strcpy(d, s)``) into a destination the snippet allocates from the
    # source's own length plus one (``d = malloc(strlen(s) + 1)``) cannot overflow: with
    # ``sized_dest`` such a copy is not reported (C-COPY-002).
    sized_dest: bool = False
    # Values the program makes itself, e.g. a file it opens by a constant path: a sink whose
    # argument matches one of these (by its text, or every value the snippet assigns to the
    # name it is) is not reported. ``pickle.load`` of the model file a script names is how
    # every ML answer loads its model; the same call on request data is the vulnerability.
    own_values: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule. See the module docstring for the semantics of each field."""

    id: str
    title: str
    category: str
    cwe: tuple[str, ...]
    severity: str
    confidence: float
    languages: frozenset[str]
    patterns: tuple[re.Pattern[str], ...] = ()
    unless: tuple[re.Pattern[str], ...] = ()
    unless_before: tuple[re.Pattern[str], ...] = ()
    unless_after: tuple[re.Pattern[str], ...] = ()
    context: tuple[re.Pattern[str], ...] = ()
    context_before: int = 0
    context_after: int = 0
    scope_end: re.Pattern[str] | None = None
    scope_before: int = 0
    scope_unless: tuple[re.Pattern[str], ...] = ()
    ast: AstSpec | None = None
    min_entropy: float = 0.0  # Shannon bits per character of the pattern's ``secret`` group
    safe_examples: tuple[str, ...] = ()
    unsafe_examples: tuple[str, ...] = ()
    example_language: str = ""
    pack: str = ""

    @property
    def weight(self) -> float:
        """The score a hit of this rule contributes: severity weight times confidence."""
        return SEVERITY_WEIGHT[self.severity] * self.confidence

    @property
    def lookahead(self) -> int:
        """Complete rows needed after a hit's last row before the hit is final."""
        if self.unless_after or self.scope_end is not None:
            return INFINITE
        return self.context_after

    @property
    def tier(self) -> str:
        return "ast" if self.ast is not None else "line"


@dataclass(frozen=True, slots=True, eq=False)
class RulePack:
    """All rules, indexed by language, plus the flow tables (sources, sanitizers)."""

    rules: tuple[Rule, ...]
    flow: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def for_language(self, lang: str) -> tuple[Rule, ...]:
        return _by_language(self, lang)

    def by_id(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def deep_languages(self) -> frozenset[str]:
        """Languages with at least one rule that needs more than the current line."""
        return frozenset(
            lang for r in self.rules if r.ast is not None or r.lookahead > 0 for lang in r.languages
        )


@functools.lru_cache(maxsize=64)
def _by_language(pack: RulePack, lang: str) -> tuple[Rule, ...]:
    return tuple(r for r in pack.rules if lang in r.languages)


def glob_regex(glob: str) -> re.Pattern[str]:
    """Compile a callee glob (``*`` matches anything, the rest literally) to an anchored regex."""
    return re.compile("^" + ".*".join(re.escape(p) for p in glob.split("*")) + "$")


def _regexes(raw: Any, where: str) -> tuple[re.Pattern[str], ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise RuleError(f"{where}: expected a regex or a list of regexes")
    out = []
    for item in items:
        try:
            out.append(re.compile(item))
        except re.error as exc:
            raise RuleError(f"{where}: bad regex {item!r}: {exc}") from None
    return tuple(out)


def _languages(raw: Any, where: str) -> frozenset[str]:
    if not isinstance(raw, list) or not raw:
        raise RuleError(f"{where}.languages: expected a non-empty list")
    out: set[str] = set()
    for lang in raw:
        if lang in _LANGUAGE_GROUPS:
            out.update(_LANGUAGE_GROUPS[lang])
        elif lang in LANGUAGES or lang == "other":
            out.add(lang)
        else:
            raise RuleError(f"{where}.languages: unknown language {lang!r}")
    return frozenset(out)


def _entropy_floor(raw: Any, patterns: tuple[re.Pattern[str], ...], where: str) -> float:
    value = float(raw)
    if value and not all("secret" in p.groupindex for p in patterns):
        raise RuleError(f"{where}.min_entropy: every pattern needs a named group (?P<secret>...)")
    return value


def _primary(lang: str) -> str:
    """The language examples are written in when the rule does not say."""
    group = _LANGUAGE_GROUPS.get(lang)
    return group[0] if group else lang


def _kwargs(raw: Any, where: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: expected a mapping of keyword -> value regex")
    return tuple((str(k), _regexes(str(v), f"{where}.{k}")[0]) for k, v in raw.items())


def _ast(raw: Any, where: str) -> AstSpec:
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: expected a mapping")
    unknown = set(raw) - _AST_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown keys {sorted(unknown)}")
    globs = raw.get("call") or []
    nodes = raw.get("node") or []
    assigns = raw.get("assign") or []
    if not (globs or nodes or assigns):
        raise RuleError(f"{where}: needs one of call, node, assign")
    names = frozenset(g.rsplit(".", 1)[-1] if "*" not in g.rsplit(".", 1)[-1] else "*" for g in globs)
    arg = raw.get("arg", 0)
    if isinstance(arg, list) and arg and all(isinstance(i, int) for i in arg):
        arg = tuple(arg)  # several positions, e.g. where a client takes the URL (0 or 1)
    elif not (isinstance(arg, int) or arg in ("any", "all")):
        raise RuleError(f"{where}.arg: expected an index, a list of indexes, 'any' or 'all'")
    when = raw.get("when", "dynamic")
    if when not in ("dynamic", "nonliteral", "tainted", "untrusted", "always"):
        raise RuleError(f"{where}.when: unknown mode {when!r}")
    arg_text = tuple(
        (int(k), _regexes(str(v), f"{where}.arg_text")[0]) for k, v in (raw.get("arg_text") or {}).items()
    )
    return AstSpec(
        calls=tuple(glob_regex(g) for g in globs),
        call_names=names,
        nodes=frozenset(nodes),
        assigns=tuple(glob_regex(g) for g in assigns),
        arg=arg,
        kwarg=raw.get("kwarg"),
        when=when,
        require_kwargs=_kwargs(raw.get("require_kwargs"), f"{where}.require_kwargs"),
        forbid_kwargs=_kwargs(raw.get("forbid_kwargs"), f"{where}.forbid_kwargs"),
        arg_text=arg_text,
        min_args=int(raw.get("min_args", 0)),
        max_args=int(raw.get("max_args", 1 << 16)),
        sanitizers=_regexes(raw.get("sanitizers"), f"{where}.sanitizers"),
        bare=bool(raw.get("bare", False)),
        sized_dest=bool(raw.get("sized_dest", False)),
        own_values=_regexes(raw.get("own_values"), f"{where}.own_values"),
    )


def _examples(raw: Any, where: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    if not isinstance(raw, dict):
        raise RuleError(f"{where}.examples: expected safe and unsafe examples")
    out: list[tuple[str, ...]] = []
    for key in ("safe", "unsafe"):
        items = raw.get(key)
        items = [items] if isinstance(items, str) else items
        if not items or not all(isinstance(i, str) and i.strip() for i in items):
            raise RuleError(f"{where}.examples.{key}: at least one non-empty example is required")
        out.append(tuple(items))
    return out[0], out[1], str(raw.get("language", ""))


def _rule(raw: Any, pack: str, index: int) -> Rule:
    where = f"{pack}[{index}]"
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: a rule must be a mapping")
    rid = raw.get("id")
    if not isinstance(rid, str) or not _ID_RE.match(rid):
        raise RuleError(f"{where}.id: expected an id such as PY-SQLI-001, got {rid!r}")
    where = f"{pack}:{rid}"
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown keys {sorted(unknown)}")
    category = raw.get("category")
    if category not in CATEGORIES:
        raise RuleError(f"{where}.category: unknown category {category!r}")
    cwe = raw.get("cwe")
    if not isinstance(cwe, list) or not cwe or not all(isinstance(c, str) and _CWE_RE.match(c) for c in cwe):
        raise RuleError(f"{where}.cwe: expected a list such as [CWE-89]")
    severity = raw.get("severity")
    if not isinstance(severity, str) or severity not in SEVERITY_WEIGHT:
        raise RuleError(f"{where}.severity: expected one of {sorted(SEVERITY_WEIGHT)}")
    confidence = float(raw.get("confidence", 0.9))
    if not 0.0 < confidence <= 1.0:
        raise RuleError(f"{where}.confidence: expected a number in (0, 1]")
    title = raw.get("title")
    if not isinstance(title, str) or not title.strip():
        raise RuleError(f"{where}.title: a one-line description is required")
    patterns = _regexes(raw.get("pattern"), f"{where}.pattern")
    ast = _ast(raw["ast"], f"{where}.ast") if "ast" in raw else None
    if bool(patterns) == (ast is not None):
        raise RuleError(f"{where}: exactly one of pattern (line tier) or ast (syntax tier) is required")
    ctx_lines = raw.get("context_lines", [0, 0])
    if not (
        isinstance(ctx_lines, list) and len(ctx_lines) == 2 and all(isinstance(n, int) for n in ctx_lines)
    ):
        raise RuleError(f"{where}.context_lines: expected [before, after]")
    scope = raw.get("scope")
    scope_end = None
    scope_before = 0
    scope_unless: tuple[re.Pattern[str], ...] = ()
    if scope is not None:
        if not isinstance(scope, dict) or "end" not in scope or "unless" not in scope:
            raise RuleError(f"{where}.scope: expected a mapping with end and unless")
        scope_end = _regexes(scope["end"], f"{where}.scope.end")[0]
        scope_before = int(scope.get("before", 0))
        scope_unless = _regexes(scope["unless"], f"{where}.scope.unless")
    safe, unsafe, ex_lang = _examples(raw.get("examples"), where)
    languages = _languages(raw.get("languages"), where)
    return Rule(
        id=rid,
        title=title.strip(),
        category=category,
        cwe=tuple(cwe),
        severity=severity,
        confidence=confidence,
        languages=languages,
        patterns=patterns,
        unless=_regexes(raw.get("unless"), f"{where}.unless"),
        unless_before=_regexes(raw.get("unless_before"), f"{where}.unless_before"),
        unless_after=_regexes(raw.get("unless_after"), f"{where}.unless_after"),
        context=_regexes(raw.get("context"), f"{where}.context"),
        context_before=max(0, ctx_lines[0]),
        context_after=max(0, ctx_lines[1]),
        scope_end=scope_end,
        scope_before=scope_before,
        scope_unless=scope_unless,
        ast=ast,
        min_entropy=_entropy_floor(raw.get("min_entropy", 0.0), patterns, where),
        safe_examples=safe,
        unsafe_examples=unsafe,
        example_language=ex_lang or _primary(raw["languages"][0]),
        pack=pack,
    )


def parse_rules(documents: Iterable[tuple[str, Any]]) -> RulePack:
    """Validate ``(pack name, parsed YAML)`` pairs into a :class:`RulePack`."""
    rules: list[Rule] = []
    flow: dict[str, Mapping[str, Any]] = {}
    for name, doc in documents:
        if not isinstance(doc, dict):
            raise RuleError(f"{name}: expected a mapping at the top level")
        if "flow" in doc:
            if not isinstance(doc["flow"], dict):
                raise RuleError(f"{name}.flow: expected a mapping of language -> tables")
            flow.update(doc["flow"])
        for i, raw in enumerate(doc.get("rules") or []):
            rules.append(_rule(raw, name, i))
    seen: set[str] = set()
    for r in rules:
        if r.id in seen:
            raise RuleError(f"duplicate rule id {r.id}")
        seen.add(r.id)
    return RulePack(tuple(rules), flow)


@functools.lru_cache(maxsize=1)
def load_rules() -> RulePack:
    """The packaged rule packs (read once per process)."""
    folder = resources.files("detectors.insecure_code") / "rule_files"
    docs = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            docs.append((entry.name.rsplit(".", 1)[0], yaml.safe_load(entry.read_text(encoding="utf-8"))))
    return parse_rules(docs)
