"""Sinks: which syntax-tier rule fires where, including through small wrapper functions.

The second half of the syntax tier: every call, statement sink (PHP ``echo``,
``include``, backticks) and assignment target (``innerHTML``, ``CommandText``) is matched
against the rules' sink specifications; the selected argument is judged by
:func:`detectors.insecure_code.flow.classify`. A sink whose argument is a bare parameter of the
enclosing function makes that function a sink too (``def run(c): os.system(c)``), so
the call sites of small wrappers are judged in turn (three levels).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from tree_sitter import Node

from detectors.insecure_code.flow import classify
from detectors.insecure_code.rules import AstSpec, Rule
from detectors.insecure_code.scope import (
    _ANY,
    _MAX_SPAN_ROWS,
    F_DYN,
    F_TAINT,
    F_UNTRUSTED,
    MAX_DEPTH,
    FlowTables,
    _assigned,
    _build_env,
    _build_funcs,
    _Call,
    _Ctx,
    _Func,
    _make_call,
    _scope,
    _scope_key,
    _writers,
)
from detectors.insecure_code.syntax import SPECS, captures, imports_of, normalise_callee, text

__all__ = ["SinkHit", "analyse_tree"]


@dataclass(frozen=True, slots=True)
class SinkHit:
    """A syntax-tier finding: the rule and the rows (of the block) it covers."""

    rule: str
    first: int
    last: int


# --------------------------------------------------------------------------- sinks


def _when(mode: str, flags: int) -> bool:
    if mode == "always":
        return True
    if mode == "nonliteral":
        return bool(flags & _ANY)
    if mode == "dynamic":
        return bool(flags & (F_DYN | F_TAINT))
    if mode == "untrusted":
        return bool(flags & (F_TAINT | F_UNTRUSTED))
    return bool(flags & F_TAINT)


def _kw_ok(spec: AstSpec, call: _Call) -> bool:
    for name, pattern in spec.require_kwargs:
        value = call.kwargs.get(name)
        if value is None or not pattern.search(text(value)):
            return False
    for name, pattern in spec.forbid_kwargs:
        value = call.kwargs.get(name)
        if value is not None and pattern.search(text(value)):
            return False
    n = len(call.args)
    if not spec.min_args <= n <= spec.max_args:
        return False
    for index, pattern in spec.arg_text:
        if index >= n or not pattern.search(text(call.args[index])):
            return False
    return True


def _selected(spec: AstSpec, call: _Call) -> list[Node]:
    if spec.kwarg is not None and spec.kwarg in call.kwargs:
        return [call.kwargs[spec.kwarg]]
    if spec.arg == "any" or spec.arg == "all":
        return list(call.args)
    if isinstance(spec.arg, tuple):
        return [call.args[i] for i in spec.arg if -len(call.args) <= i < len(call.args)]
    index = spec.arg
    if -len(call.args) <= index < len(call.args):
        return [call.args[index]]
    return []


def _judge(ctx: _Ctx, rule: Rule, spec: AstSpec, nodes: list[Node]) -> bool:
    if spec.own_values and nodes and all(_own_value(ctx, n, spec.own_values, 0) for n in nodes):
        return False
    if spec.when == "always":
        return True
    for n in nodes:
        if spec.sanitizers and _inner_sanitised(n, spec.sanitizers):
            continue
        if _when(spec.when, classify(ctx, n, rule.category)):
            return True
    return False


def _own_value(ctx: _Ctx, node: Node, patterns: tuple[re.Pattern[str], ...], depth: int) -> bool:
    """``node`` matches one of ``patterns``, or is a name every value of which does."""
    if any(p.search(text(node)) for p in patterns):
        return True
    if node.type not in ctx.spec.identifiers or depth > MAX_DEPTH:
        return False
    name = text(node)
    values = _assigned(ctx, node, name)
    if not values:
        return False
    return all(_own_value(ctx, v, patterns, depth + 1) for v, _ in values)


def _inner_sanitised(node: Node, patterns: tuple[re.Pattern[str], ...]) -> bool:
    s = text(node)
    return any(p.search(s) for p in patterns)


#: An allocation whose size is its only argument / subscript: ``malloc(n)``, ``new char[n]``,
#: ``(char *)malloc(n)``, ``alloca(n)``.
_ALLOC_RE: Final = re.compile(
    r"^(?:\([^()]*\)\s*)?(?:(?:std::)?(?:malloc|alloca|_alloca)\s*\((?P<m>.*)\)|new\s+[\w:]+(?:\s+\w+)?\s*\[(?P<n>.*)\])$",
    re.S,
)
_PLUS_ONE_RE: Final = re.compile(r"\+\s*1\b")
_LENGTH_FIELDS: Final = r"(?:len|length|size|_len|m_len|m_length|length_|size_)"


def _sized_copy(ctx: _Ctx, call: _Call) -> bool:
    """``strcpy(d, s)`` where every value the snippet gives ``d`` is an allocation of the
    source's own length plus one: ``strlen(s) + 1`` (or ``wcslen``, times ``sizeof``), also
    through a length variable (``n = strlen(s); d = malloc(n + 1)``), or an object's recorded
    length for its string (``new char[o.len + 1]`` for ``o.str``).

    Only plain copies: an append (``strcat``) adds to what the buffer already holds. Without
    the ``+ 1`` the terminator overflows, so that stays a finding.
    """
    if "cpy" not in call.last.lower() or len(call.args) < 2:
        return False
    dest, src = call.args[0], call.args[1]
    values = ctx.env.get((_scope_key(ctx, dest), normalise_callee(text(dest))))
    if not values or all(call.node.start_byte <= v.start_byte < call.node.end_byte for v, _ in values):
        return False
    s = re.escape(text(src).strip())
    terms = [rf"\b(?:strlen|wcslen|_tcslen|lstrlen[AW]?|std::strlen)\s*\(\s*{s}\s*\)"]
    owner = re.match(r"^(\w+)\s*(?:\.|->)\s*\w+$", text(src).strip())
    if owner is not None:
        terms.append(rf"\b{re.escape(owner.group(1))}\s*(?:\.|->)\s*{_LENGTH_FIELDS}\b")
    length = re.compile("|".join(terms))
    for value, aug in values:
        if call.node.start_byte <= value.start_byte < call.node.end_byte:
            continue  # the copy itself, recorded as a write to ``d``
        m = _ALLOC_RE.match(text(value).strip())
        size = (m.group("m") or m.group("n")) if m is not None else None
        if aug or size is None or not _PLUS_ONE_RE.search(size):
            return False
        if not length.search(size) and not _length_var(ctx, value, size, length):
            return False
    return True


def _length_var(ctx: _Ctx, at: Node, size: str, length: re.Pattern[str]) -> bool:
    """A name in ``size`` whose every assignment (in ``at``'s scope) is the source's length."""
    key = _scope_key(ctx, at)
    for name in re.findall(r"\b[A-Za-z_]\w*\b", size):
        values = ctx.env.get((key, name)) or ctx.env.get((-1, name))
        if values and all(not aug and length.search(text(v)) for v, aug in values):
            return True
    return False


def _rows(ctx: _Ctx, node: Node) -> tuple[int, int]:
    first = node.start_point[0] - ctx.shift
    last = min(node.end_point[0] - ctx.shift, first + _MAX_SPAN_ROWS)
    return max(0, first), max(0, last)


def _usable(ctx: _Ctx, node: Node) -> bool:
    """On an open block, judge only complete, error-free statements (later rows may change them)."""
    if ctx.closed or node.start_byte >= ctx.own_end:
        return True  # a closed block, or an earlier (closed) block of the answer
    return node.end_point[0] - ctx.shift < ctx.complete_rows and not node.has_error


def _param_of(ctx: _Ctx, node: Node) -> tuple[_Func, int] | None:
    if node.type not in ctx.spec.identifiers:
        return None
    scope = _scope(ctx, node)
    name = text(node)
    if scope is None or name not in scope.params or (scope.start, name) in ctx.env:
        return None
    return scope, scope.params.index(name)


def analyse_tree(
    lang: str,
    root: Node,
    shift: int,
    rules: Sequence[Rule],
    tables: FlowTables,
    *,
    complete_rows: int,
    closed: bool,
    context: Sequence[Node] = (),
) -> list[SinkHit]:
    """Run the syntax-tier ``rules`` on a parsed block; return their hits (rows of the block).

    ``context`` are the trees of the answer's earlier blocks in the same language, whose
    byte offsets follow the block's (:func:`detectors.insecure_code.engine._context_roots`).
    Their imports, functions, assignments and calls join the block's: a helper defined or
    called there, a module imported there, a variable assigned there. A name the block
    assigns itself keeps the block's own values (an answer often shows one program in
    several versions). Sinks are judged in the block only; the context's own sinks were
    judged with its own block.
    """
    spec = SPECS[lang]
    ctx = _Ctx(lang, spec, tables, shift, complete_rows, closed)
    found = captures(lang, root)
    own_end = ctx.own_end = root.end_byte
    merged = {role: list(found.get(role, [])) for role in ("assign", "import", "func", "call")}
    for extra in context:
        more = captures(lang, extra)
        for role, nodes in merged.items():
            nodes.extend(more.get(role, []))
    assigns = merged["assign"]
    ctx.aliases = imports_of(lang, merged["import"], assigns)
    _build_funcs(ctx, merged["func"])
    _build_env(ctx, assigns)
    ctx.calls = [_make_call(ctx, n) for n in merged["call"]]
    _writers(ctx)
    if context:
        _own_values_first(ctx, own_end)
    assigns = [a for a in assigns if a.start_byte < own_end]
    by_name: dict[str, list[tuple[Rule, AstSpec]]] = {}
    by_node: dict[str, list[tuple[Rule, AstSpec]]] = {}
    assign_rules: list[tuple[Rule, AstSpec]] = []
    for r in rules:
        if r.ast is None:
            continue
        for name in r.ast.call_names:
            by_name.setdefault(name, []).append((r, r.ast))
        for nt in r.ast.nodes:
            by_node.setdefault(nt, []).append((r, r.ast))
        if r.ast.assigns:
            assign_rules.append((r, r.ast))
    hits: list[SinkHit] = []
    seen: set[tuple[str, int]] = set()
    summaries: list[tuple[str, int, Rule, AstSpec]] = []

    def emit(rule: Rule, node: Node) -> None:
        first, last = _rows(ctx, node)
        if (rule.id, first) not in seen:
            seen.add((rule.id, first))
            hits.append(SinkHit(rule.id, first, last))

    wildcard = by_name.get("*", [])
    for call in ctx.calls:
        candidates = by_name.get(call.last, []) + by_name.get(call.short, []) + wildcard
        if not candidates or not _usable(ctx, call.node):
            continue
        own = call.node.start_byte < own_end
        names = (call.resolved, call.raw, call.short)
        for rule, ast in dict.fromkeys(candidates):
            # A bare glob must match the whole callee (imports resolved), not its last name.
            tried = names[:1] if ast.bare else names
            if not any(p.match(c) for p in ast.calls for c in tried) or not _kw_ok(ast, call):
                continue
            selected = _selected(ast, call)
            if ast.sized_dest and _sized_copy(ctx, call):
                continue
            if _judge(ctx, rule, ast, selected):
                if own:
                    emit(rule, call.node)
                continue
            for n in selected:
                param = _param_of(ctx, n)
                if param is not None and param[0].name:
                    summaries.append((param[0].name, param[1], rule, ast))
    for node in found.get("sink", []):
        if not _usable(ctx, node):
            continue
        for rule, ast in by_node.get(node.type, []):
            if ast.arg_text and not all(p.search(text(node)) for _, p in ast.arg_text):
                continue
            judged = [node] if node.type in spec.strings else list(node.named_children)
            if _judge(ctx, rule, ast, judged):
                emit(rule, node)
    for a in assigns if assign_rules else ():
        tfield, vfield = spec.assigns[a.type]
        left = a.child_by_field_name(tfield)
        right = a.child_by_field_name(vfield) if vfield else None
        if left is None or right is None or not _usable(ctx, a):
            continue
        target = normalise_callee(text(left))
        for rule, ast in assign_rules:
            if any(p.match(target) for p in ast.assigns) and _judge(ctx, rule, ast, [right]):
                emit(rule, a)
    _wrappers(ctx, summaries, emit, own_end)
    return hits


def _own_values_first(ctx: _Ctx, own_end: int) -> None:
    """Where the block assigns a name itself, the context's assignments to it are dropped."""
    for key, values in ctx.env.items():
        own = [v for v in values if v[0].start_byte < own_end]
        if own and len(own) < len(values):
            ctx.env[key] = own


def _wrappers(
    ctx: _Ctx,
    summaries: list[tuple[str, int, Rule, AstSpec]],
    emit: Callable[[Rule, Node], None],
    own_end: int,
) -> None:
    """Calls to small wrapper functions whose parameter reaches a sink (up to three levels).

    Passing a variable to a wrapper is normal, so a ``nonliteral`` sink becomes ``dynamic``
    at the wrapper's call sites: ``run(cmd)`` is fine, ``run("ls " + d)`` is not.
    """
    for _ in range(3):
        if not summaries:
            return
        pending, summaries = summaries, []
        by_func: dict[str, list[tuple[int, Rule, AstSpec]]] = {}
        for name, index, rule, ast in pending:
            by_func.setdefault(name, []).append((index, rule, ast))
        for call in ctx.calls:
            entries = by_func.get(call.last)
            if not entries or not _usable(ctx, call.node):
                continue
            for index, rule, ast in entries:
                if index >= len(call.args):
                    continue
                arg = call.args[index]
                mode = "dynamic" if ast.when in ("nonliteral", "always") else ast.when
                if _when(mode, classify(ctx, arg, rule.category)):
                    if call.node.start_byte < own_end:
                        emit(rule, call.node)
                    continue
                param = _param_of(ctx, arg)
                if param is not None and param[0].name and param[0].name != call.last:
                    summaries.append((param[0].name, param[1], rule, ast))
