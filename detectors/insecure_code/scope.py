"""What a snippet defines: functions, parameters, assignments, calls and import aliases.

The first half of the syntax tier (see :mod:`detectors.insecure_code.flow` for why): one pass of
the tree-sitter query engine collects the nodes, and this module turns them into a
:class:`_Ctx` that :mod:`detectors.insecure_code.flow` (how a value was built) and
:mod:`detectors.insecure_code.sinks` (which rule fires where) read. Per-language tables
(sources, sanitisers, request handlers) are compiled here from ``_flow.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tree_sitter import Node

from detectors.insecure_code.syntax import LangSpec, normalise_callee, text

__all__ = ["F_DYN", "F_OPAQUE", "F_RECEIVED", "F_TAINT", "F_UNTRUSTED", "FlowTables", "compile_tables"]

F_OPAQUE: Final = 1
F_DYN: Final = 2
F_TAINT: Final = 4
#: May carry text the snippet does not prove safe: a source, or an origin the snippet does
#: not show (a parameter of a function it never calls, a name it never defines). Always set
#: together with ``F_OPAQUE``, so only the ``untrusted`` sink mode reads it.
F_UNTRUSTED: Final = 8
#: Read from one category's own source (a page's fetched response for DOM XSS): carried
#: through method calls like ``F_TAINT`` (``resp.json()``), but only the ``untrusted`` mode
#: reads it, so a server-side rule of the same category keeps its request-only sources.
F_RECEIVED: Final = 16
_ANY: Final = F_OPAQUE | F_DYN | F_TAINT
MAX_DEPTH: Final = 12
_MAX_SPAN_ROWS: Final = 12
_UNTAINTED_PARAMS: Final = frozenset(
    {"self", "cls", "this", "request", "req", "res", "response", "w", "r", "c", "ctx", "next", "$this",
     "context", "env", "app", "db", "conn", "session", "logger", "args", "kwargs"}
)  # fmt: skip
_CONST_NAME_RE = re.compile(r"^\$?[A-Z][A-Z0-9_]{1,}$")
_NAME_RE = re.compile(r"^\$?[A-Za-z_][\w]*$")
_DOTTED_RE = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*$")


@dataclass(frozen=True, slots=True)
class FlowTables:
    """Compiled per-language flow configuration (from the ``flow:`` section of the packs)."""

    sources: re.Pattern[str] | None
    sanitizers: Mapping[str, re.Pattern[str]]  # category -> regex on the resolved callee
    handlers: re.Pattern[str] | None  # function header -> its value parameters come from the request
    tainted_params: re.Pattern[str] | None  # a parameter's own text marks it request-bound
    format_calls: frozenset[str]
    writers: Mapping[str, str]  # callee last component -> "receiver" | "arg0"
    handler_calls: re.Pattern[str] | None = None  # a lambda passed to such a call handles a request
    constants: re.Pattern[str] | None = None  # expressions that are configuration, not data
    numeric_params: re.Pattern[str] | None = None  # a parameter declared as a number
    numeric_ops: frozenset[str] = frozenset()  # binary operators whose result is always a number
    local_inputs: re.Pattern[str] | None = None  # a reader on the console, not on a client
    # category -> extra sources for that category only (browser data for xss)
    category_sources: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    builtins: frozenset[str] = frozenset()  # global names the runtime defines: not an unseen origin
    # category -> regex on "<where the object came from>.<member>": a member a framework
    # guarantees clean for that category (Django's ``request.FILES[...].name`` is a base name)
    clean_members: Mapping[str, re.Pattern[str]] = field(default_factory=dict)


def _alt(items: Iterable[str]) -> re.Pattern[str] | None:
    items = list(items)
    return re.compile("|".join(f"(?:{i})" for i in items)) if items else None


def compile_tables(raw: Mapping[str, Any]) -> FlowTables:
    """Validate and compile one language's ``flow`` tables (regex strings and name lists)."""
    sanitizers_raw = raw.get("sanitizers") or {}
    common = list(sanitizers_raw.get("any", []))
    sanitizers: dict[str, re.Pattern[str]] = {}
    for category in {*sanitizers_raw, "any"}:
        pattern = _alt([*common, *(sanitizers_raw.get(category, []) if category != "any" else [])])
        if pattern is not None:
            sanitizers[category] = pattern
    sources_raw = raw.get("sources") or []
    if isinstance(sources_raw, Mapping):  # {any: [...], xss: [...]}, like sanitizers
        common_sources = list(sources_raw.get("any", []))
        by_category = {k: _alt(v) for k, v in sources_raw.items() if k != "any"}
    else:
        common_sources, by_category = list(sources_raw), {}
    return FlowTables(
        sources=_alt(common_sources),
        sanitizers=sanitizers,
        handlers=_alt(raw.get("handlers", [])),
        tainted_params=_alt(raw.get("tainted_params", [])),
        format_calls=frozenset(raw.get("format_calls", [])),
        writers=dict(raw.get("writers", {})),
        handler_calls=_alt(raw.get("handler_calls", [])),
        constants=_alt(raw.get("constants", [])),
        numeric_params=_alt(raw.get("numeric_params", [])),
        numeric_ops=frozenset(raw.get("numeric_ops", [])),
        local_inputs=_alt(raw.get("local_inputs", [])),
        category_sources={k: v for k, v in by_category.items() if v is not None},
        builtins=frozenset(raw.get("builtins", [])),
        clean_members={
            k: pattern
            for k, v in (raw.get("clean_members") or {}).items()
            if (pattern := _alt(v)) is not None
        },
    )


@dataclass(slots=True)
class _Func:
    node: Node
    name: str
    params: list[str]
    tainted: set[str]
    start: int
    end: int
    numeric: set[str] = field(default_factory=set)  # parameters declared as numbers


@dataclass(slots=True)
class _Call:
    node: Node
    raw: str
    resolved: str
    short: str
    last: str
    recv: Node | None
    args: list[Node]
    kwargs: dict[str, Node]


@dataclass(slots=True)
class _Ctx:
    lang: str
    spec: LangSpec
    tables: FlowTables
    shift: int
    complete_rows: int
    closed: bool
    aliases: dict[str, str] = field(default_factory=dict)
    funcs: list[_Func] = field(default_factory=list)
    env: dict[tuple[int, str], list[tuple[Node, bool]]] = field(default_factory=dict)
    memo: dict[tuple[int, str], int] = field(default_factory=dict)
    active: set[tuple[int, str]] = field(default_factory=set)
    calls: list[_Call] = field(default_factory=list)
    own_end: int = 1 << 62  # nodes from here on belong to the answer's earlier blocks (context)


# --------------------------------------------------------------------------- structure


def _first_ident(node: Node, spec: LangSpec, budget: int = 24) -> str:
    """The first identifier at or below ``node`` (breadth-first, bounded)."""
    queue = [node]
    while queue and budget > 0:
        budget -= 1
        n = queue.pop(0)
        if n.type in spec.identifiers or n.type in ("identifier", "variable_name", "field_identifier"):
            return text(n)
        queue.extend(n.named_children)
    return ""


def _param_nodes(fn: Node, spec: LangSpec) -> list[Node]:
    params_field = spec.functions[fn.type][1]
    if params_field is None:
        return []
    params = fn.child_by_field_name(params_field)
    if params is None and fn.type == "arrow_function":
        single = fn.child_by_field_name("parameter")
        return [single] if single is not None else []
    # C/C++: the function declarator holds the parameter list.
    while params is not None and params.type in (
        "function_declarator",
        "pointer_declarator",
        "abstract_function_declarator",
    ):
        params = params.child_by_field_name("parameters") or params.child_by_field_name("declarator")
    if params is None or params.type in ("identifier",):
        return []
    return [p for p in params.named_children if p.type not in ("comment", "(", ")")]


def _func_name(fn: Node, spec: LangSpec) -> str:
    name_field, _ = spec.functions[fn.type]
    if name_field is None:
        parent = fn.parent
        if parent is not None and parent.type in ("variable_declarator", "assignment_expression", "pair"):
            target = parent.child_by_field_name("name") or parent.child_by_field_name("left")
            target = target or parent.child_by_field_name("key")
            return text(target).rsplit(".", 1)[-1]
        return ""
    node = fn.child_by_field_name(name_field)
    while node is not None and node.type in ("function_declarator", "pointer_declarator"):
        node = node.child_by_field_name("declarator")
    return text(node)


def _header(fn: Node) -> str:
    """Decorators/annotations and signature of a function (what says it is a request handler)."""
    start = fn
    parent = fn.parent
    if parent is not None and parent.type == "decorated_definition":
        start = parent
    body = fn.child_by_field_name("body")
    end = body.start_byte if body is not None else fn.end_byte
    raw = start.text or b""
    return raw[: max(0, min(len(raw), end - start.start_byte, 600))].decode("utf-8", "replace")


def _build_funcs(ctx: _Ctx, nodes: Sequence[Node]) -> None:
    spec, tables = ctx.spec, ctx.tables
    for fn in nodes:
        params: list[str] = []
        tainted: set[str] = set()
        numeric: set[str] = set()
        header = _header(fn)
        handler = tables.handlers is not None and tables.handlers.search(header) is not None
        handler = handler or _passed_to_handler_call(ctx, fn)
        for p in _param_nodes(fn, spec):
            name = ""
            for fld in ("name", "pattern", "declarator"):
                sub = p.child_by_field_name(fld)
                if sub is not None:
                    name = _first_ident(sub, spec)
                    break
            if not name:
                name = _first_ident(p, spec)
            if not name:
                continue
            params.append(name)
            if tables.numeric_params is not None and tables.numeric_params.search(text(p)):
                numeric.add(name)
            if name in _UNTAINTED_PARAMS:
                continue
            if handler or (tables.tainted_params is not None and tables.tainted_params.search(text(p))):
                tainted.add(name)
        if params and params[0] in ctx.spec.self_names:
            params = params[1:]
        ctx.funcs.append(
            _Func(fn, _func_name(fn, spec), params, tainted, fn.start_byte, fn.end_byte, numeric)
        )


def _passed_to_handler_call(ctx: _Ctx, fn: Node) -> bool:
    """A lambda given to a route-registering call (``app.MapGet("/x", (string id) => ...)``)."""
    pattern = ctx.tables.handler_calls
    node = fn.parent
    for _ in range(4):
        if pattern is None or node is None:
            return False
        if node.type in ctx.spec.calls:
            fn_node = node.child_by_field_name("function")
            return fn_node is not None and pattern.search(normalise_callee(text(fn_node))) is not None
        node = node.parent
    return False


def _scope(ctx: _Ctx, node: Node) -> _Func | None:
    best: _Func | None = None
    pos = node.start_byte
    for f in ctx.funcs:
        if f.start <= pos < f.end and (best is None or f.start >= best.start):
            best = f
    return best


def _scope_key(ctx: _Ctx, node: Node) -> int:
    f = _scope(ctx, node)
    return f.start if f is not None else -1


def _assigned(ctx: _Ctx, node: Node, name: str) -> list[tuple[Node, bool]]:
    """The values assigned to ``name`` in ``node``'s scope, else at module level (else none)."""
    return ctx.env.get((_scope_key(ctx, node), name)) or ctx.env.get((-1, name)) or []


def _targets(left: Node, right: Node | None, spec: LangSpec) -> list[tuple[str, Node | None]]:
    """(name, value) pairs of an assignment, pairing tuple/list targets element-wise."""
    if left.type in ("pattern_list", "tuple_pattern", "expression_list", "left_assignment_list"):
        lefts = left.named_children
        rights = right.named_children if right is not None and right.type in (
            "expression_list", "tuple", "pattern_list") else None  # fmt: skip
        if rights is not None and len(rights) == len(lefts):
            return [(_target_name(lv, spec), rv) for lv, rv in zip(lefts, rights, strict=True)]
        return [(_target_name(lv, spec), right) for lv in lefts]
    if right is not None and right.type == "expression_list" and len(right.named_children) == 1:
        right = right.named_children[0]
    return [(_target_name(left, spec), right)]


def _target_name(node: Node, spec: LangSpec) -> str:
    if node.type in spec.identifiers:
        return text(node)
    if node.type in ("pointer_declarator", "array_declarator", "reference_declarator"):
        return _first_ident(node, spec)
    return normalise_callee(text(node))


def _build_env(ctx: _Ctx, assigns: Sequence[Node]) -> None:
    spec = ctx.spec
    for a in assigns:
        tfield, vfield = spec.assigns[a.type]
        left = a.child_by_field_name(tfield)
        if left is None:
            continue
        if vfield:
            right = a.child_by_field_name(vfield)
        else:  # C# variable_declarator: the value is the child after the name
            named = [c for c in a.named_children if c.id != left.id and c.type != "bracketed_argument_list"]
            right = named[-1] if named else None
        if right is None:
            continue
        aug = a.type in spec.augassigns
        if not aug and a.type == "assignment_expression":
            op = a.child_by_field_name("operator")
            aug = op is not None and text(op) in ("+=", ".=")
            if not aug:
                between = [c for c in a.children if not c.is_named]
                aug = any(text(c) in ("+=", ".=") for c in between)
        key = _scope_key(ctx, a)
        for name, value in _targets(left, right, spec):
            if name and value is not None:
                ctx.env.setdefault((key, name), []).append((value, aug))


# --------------------------------------------------------------------------- calls


def _split_args(call: Node, shape_args: str | None, spec: LangSpec) -> tuple[list[Node], dict[str, Node]]:
    if shape_args is None:  # PHP "new X(...)": the arguments node is an unnamed-field child
        args_node = next((c for c in call.named_children if c.type == "arguments"), None)
    else:
        args_node = call.child_by_field_name(shape_args)
    positional: list[Node] = []
    kwargs: dict[str, Node] = {}
    if args_node is None:
        return positional, kwargs
    if args_node.type in spec.strings:  # tagged template / Ruby call without parentheses
        return [args_node], kwargs
    for child in args_node.named_children:
        if child.type == "comment":
            continue
        node = child
        if child.type in spec.arg_wrappers:
            name = child.child_by_field_name("name")
            inner = [c for c in child.named_children if name is None or c.id != name.id]
            if not inner:
                continue
            node = inner[-1]
            if name is not None:
                kwargs[text(name).rstrip(":").strip()] = node
                continue
        if node.type in spec.pairs:
            key = node.child_by_field_name("name") or node.child_by_field_name("key")
            value = node.child_by_field_name("value")
            if key is None and len(node.named_children) >= 2:
                key, value = node.named_children[0], node.named_children[-1]
            if key is not None and value is not None:
                kwargs[text(key).strip(":'\"").lstrip(":")] = value
                continue
        positional.append(node)
        if node.type in spec.objects:
            for pair in node.named_children:
                if pair.type in spec.pairs:
                    key = pair.child_by_field_name("key") or (
                        pair.named_children[0] if pair.named_children else None
                    )
                    value = pair.child_by_field_name("value") or (
                        pair.named_children[-1] if pair.named_children else None)  # fmt: skip
                    if key is not None and value is not None:
                        kwargs.setdefault(text(key).strip("'\":"), value)
    return positional, kwargs


def _resolve(ctx: _Ctx, raw: str) -> str:
    head, dot, rest = raw.partition(".")
    target = ctx.aliases.get(head)
    if target is None:
        return raw
    return f"{target}{dot}{rest}" if dot else target


def _make_call(ctx: _Ctx, node: Node) -> _Call:
    spec = ctx.spec
    shape = spec.calls[node.type]
    recv: Node | None = None
    if shape.function is not None:
        fn = node.child_by_field_name(shape.function)
        raw = normalise_callee(text(fn))
        if fn is not None and fn.type in spec.members and fn.named_children:
            recv = (
                fn.child_by_field_name("object") or fn.child_by_field_name("operand") or fn.named_children[0]
            )
    elif shape.new:  # PHP object creation
        name = next((c for c in node.named_children if c.type in ("name", "qualified_name")), None)
        raw = normalise_callee(text(name))
    else:
        recv = node.child_by_field_name(shape.obj) if shape.obj else None
        name_node = node.child_by_field_name(shape.name) if shape.name else None
        raw = normalise_callee(f"{text(recv)}.{text(name_node)}" if recv is not None else text(name_node))
    args, kwargs = _split_args(node, shape.args, spec)
    resolved = _resolve(ctx, raw)
    last = resolved.rsplit(".", 1)[-1]
    if shape.new:
        raw, resolved, last = f"new {raw}", f"new {resolved}", f"new {last}"
    short = f"new {last.removeprefix('new ')}" if shape.new else last
    return _Call(node, raw, resolved, short, last, recv, args, kwargs)


def _writers(ctx: _Ctx) -> None:
    """Calls that build a string in place: ``sb.append(x)``, ``strcat(buf, x)``, ``sprintf(buf, ...)``."""
    for call in ctx.calls:
        mode = ctx.tables.writers.get(call.last)
        if mode is None:
            continue
        key = _scope_key(ctx, call.node)
        if mode == "receiver" and call.recv is not None and call.args:
            target = _target_name(call.recv, ctx.spec)
            for value in call.args:
                ctx.env.setdefault((key, target), []).append((value, True))
        elif mode == "arg0" and len(call.args) >= 2:
            target = _target_name(call.args[0], ctx.spec)
            for value in call.args[1:]:
                ctx.env.setdefault((key, target), []).append((value, True))
