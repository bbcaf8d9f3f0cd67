"""Light source-to-sink reasoning inside one snippet, on a tree-sitter tree.

Why: the difference between an injectable and a safe query is rarely visible on the
sink line. ``cur.execute(q)`` is safe when ``q`` is a constant with placeholders and
injectable when three lines earlier ``q = f"... {name}"``. A backdoored model also hides
the sink behind an aliased import (``from os import system as run``) or a two-line
wrapper (``def run(c): subprocess.call(c, shell=True)``). This module answers, for the
argument of a sink, *how it was built*:

* ``F_DYN``: a string assembled from a non-constant part (concatenation, ``%``,
  ``format``/``Sprintf``/``String.format``, f-strings, template literals, PHP/Ruby/C#
  interpolation, ``sprintf``/``strcat`` into a buffer, ``StringBuilder.append``);
* ``F_TAINT``: derived from a request or command-line source (``request.args``,
  ``req.query``, ``$_GET``, ``params[...]``, ``r.URL.Query()``, ``argv``, handler
  parameters bound from the request, ...);
* ``F_OPAQUE``: any other non-constant value (a parameter, a call result);
* ``F_UNTRUSTED`` (with ``F_OPAQUE``): a value that may carry text from outside the
  snippet's control: derived from a source, or from an origin the snippet does not show
  (a parameter of a function it never calls, a name it never defines, the argument of a
  callback it cannot follow). A call result from an API (``now.getHours()``,
  ``model.predict(x)``), a number, a constant or the page's own DOM is not. The DOM-XSS
  sinks read this flag: writing the app's own values into ``innerHTML`` is normal, and
  flagging it made the XSS rules the main source of false alarms on real answers.

Constants (literals, ``ALL_CAPS`` names) and values that pass through a sanitiser for the
rule's category (``shlex.quote``, ``int``, ``escapeshellarg``, ``html.escape``,
``DOMPurify.sanitize``, ``filepath.Base``, ...) are clean.

It is intra-snippet and flow-insensitive on purpose: every assignment to a name in a
function (or at module level) counts, whatever its order. That over-approximates a
little (a later reassignment can taint an earlier use) and never depends on statement
order, which is also what makes a prefix's findings a subset of the whole block's.
Recursion is bounded (:data:`MAX_DEPTH`), so adversarial input cannot blow the stack.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from tree_sitter import Node

from detectors.insecure_code.scope import (
    _CONST_NAME_RE,
    _DOTTED_RE,
    _NAME_RE,
    F_DYN,
    F_OPAQUE,
    F_RECEIVED,
    F_TAINT,
    F_UNTRUSTED,
    MAX_DEPTH,
    _assigned,
    _Call,
    _Ctx,
    _Func,
    _make_call,
    _scope,
    _scope_key,
)
from detectors.insecure_code.syntax import normalise_callee, text

__all__ = ["classify"]

_MODULE_NAMES: Final = frozenset(
    {
        "fmt",
        "strings",
        "string",
        "str",
        "os",
        "path",
        "filepath",
        "util",
        "json",
        "url",
        "urllib",
        "html",
        "shlex",
        "re",
        "base64",
        "strconv",
        "bytes",
        "sys",
        "io",
        "ioutil",
        "template",
        "hashlib",
        "crypto",
    }
)
#: Calls whose result carries their arguments' (or receiver's) content: string and path
#: transforms, URL builders, decoders. Any other call returns *new* data (a file's
#: contents, a response body), which is opaque but not request-tainted.
_TRANSPARENT_ALL: Final = frozenset(
    [
        "join",
        "Join",
        "resolve",
        "normalize",
        "normpath",
        "abspath",
        "realpath",
        "format",
        "Sprintf",
        "sprintf",
        "concat",
        "Concat",
        "trim",
        "strip",
        "lstrip",
        "rstrip",
        "lower",
        "upper",
        "toLowerCase",
        "toUpperCase",
        "ToLower",
        "ToUpper",
        "replace",
        "Replace",
        "toString",
        "ToString",
        "String",
        "str",
        "encode",
        "decode",
        "urljoin",
        "URL",
        "URI",
        "Uri",
        "create",
        "parse",
        "urlparse",
        "get",
        "Get",
        "of",
        "Combine",
        "Clean",
        "Abs",
        "expand_path",
        "sub",
        "gsub",
        "slice",
        "substring",
        "substr",
        "Substring",
        "split",
        "capitalize",
        "title",
        "unquote",
        "unquote_plus",
        "loads",
        "parse_qs",
        "from",
        "atob",
        "btoa",
        "b64decode",
        "b64encode",
        "urlsafe_b64decode",
        "c_str",
        "data",
        "value",
        "bytes",
        "byte",
        "string",
        "valueOf",
        "getBytes",
        "GetString",
        "TrimSpace",
        "Trim",
        "TrimPrefix",
        "TrimSuffix",
        "Fields",
        "fromString",
        "Path",
        "text",
        "Text",
        "to_s",
        "to_str",
        "chomp",
        "downcase",
        "upcase",
        "url_for",
        "quote_plus",
    ]
) | frozenset(
    f"new {t}" for t in ("Path", "URL", "URI", "File", "Uri", "FileInfo", "String", "StringBuilder")
)
_NUMERIC_CAST_RE = re.compile(r"^\(\s*(?:int|integer|long|float|double|bool|boolean|uint\w*|int\d+)\s*\)")
#: Function literals passed as values (``setTimeout(() => {...}, 10)``): a function is not a
#: string, so what its body builds never becomes the argument's text.
_FUNCTION_LITERALS: Final = frozenset(
    {"arrow_function", "function_expression", "function", "anonymous_function", "lambda", "lambda_expression",
     "anonymous_method_expression", "func_literal"}
)  # fmt: skip
#: ``a ? b : c`` / ``b if a else c``: the value is one of the branches; the condition only
#: chooses between them (``sep = os.platform() === "win32" ? "&" : ";"`` is a constant).
_CONDITIONALS: Final = frozenset({"ternary_expression", "conditional_expression"})
#: Constructors that copy a string: with constant arguments the result is that constant.
_STRING_CTORS: Final = frozenset({"new StringBuilder", "new StringBuffer", "new String"})
_CARRIED: Final = F_TAINT | F_UNTRUSTED | F_RECEIVED
#: Array methods whose result is (made from) the receiver's elements and what their callback
#: returns; their callback's parameters are those elements.
_ITERATION: Final = frozenset(
    {"map", "flatMap", "filter", "find", "findLast", "reduce", "reduceRight", "forEach", "some", "every",
     "sort", "reverse", "flat", "at", "pop", "shift", "values", "entries", "each", "collect", "select"}
)  # fmt: skip
#: Promise continuations: their callback receives what the promise resolves to.
_CONTINUATIONS: Final = frozenset({"then", "done", "success", "always", "finally"})
#: Timers: their callback gets nothing (or a timestamp) from outside.
_TIMERS: Final = frozenset({"setTimeout", "setInterval", "requestAnimationFrame", "queueMicrotask"})
#: Members that are always numbers (``items.length``): a number cannot carry markup.
_RECEIVERS: Final = frozenset({"this", "self", "super"})
_NUMERIC_MEMBERS: Final = frozenset({"length", "size", "byteLength", "childElementCount"})
#: Names that say they hold a count (``count``, ``total``, ``itemCount``, ``num_rows``): one the
#: snippet defines nowhere is taken for the number it names, as ``x.length`` is. A name it
#: does define is judged by its values, whatever it is called.
_COUNT_NAME_RE: Final = re.compile(
    r"^(?:count|total|sum|length|size|index|idx|num|number|n|i|j|k)$"
    r"|^(?:num|count|total|n)(?:_[a-z]|[A-Z])\w*$"
    r"|^\w+?(?:Count|Total|Length|Size|Index|_count|_total|_length|_size|_index)$"
)


# --------------------------------------------------------------------------- classification


def _operator(node: Node) -> str:
    op = node.child_by_field_name("operator")
    if op is not None:
        return text(op)
    for c in node.children:
        if not c.is_named:
            return text(c)
    return ""


def _stringy(ctx: _Ctx, node: Node) -> bool:
    spec = ctx.spec
    if node.type in spec.strings:
        return True
    if node.type in spec.binaries:
        return any(_stringy(ctx, c) for c in node.named_children)
    if node.type in spec.calls:
        fn = normalise_callee(text(node.child_by_field_name("function") or node.child_by_field_name("name")))
        return fn.rsplit(".", 1)[-1] in ctx.tables.format_calls
    return node.type == "parenthesized_expression" and any(_stringy(ctx, c) for c in node.named_children)


def classify(ctx: _Ctx, node: Node, category: str, depth: int = 0) -> int:
    """How ``node``'s value was built, as ``F_*`` flags (0: constant or sanitised)."""
    if depth > MAX_DEPTH:
        return F_OPAQUE
    key = (node.id, category)
    cached = ctx.memo.get(key)
    if cached is not None:
        return cached
    flags = _classify(ctx, node, category, depth)
    ctx.memo[key] = flags
    return flags


def _union(ctx: _Ctx, nodes: Iterable[Node], category: str, depth: int) -> int:
    out = 0
    for n in nodes:
        if n.type != "comment":
            out |= classify(ctx, n, category, depth + 1)
    return out


def _source(ctx: _Ctx, s: str, category: str) -> int:
    """Flags of a source's value: request data (``F_TAINT``) or a category's own source."""
    tables = ctx.tables
    if tables.sources is not None and tables.sources.search(s) is not None:
        return F_OPAQUE | F_TAINT
    extra = tables.category_sources.get(category)
    return F_OPAQUE | F_UNTRUSTED | F_RECEIVED if extra is not None and extra.search(s) is not None else 0


def _carry(f: int) -> int:
    """What a value derived from one with flags ``f`` carries for the ``untrusted`` mode."""
    if f & (F_TAINT | F_RECEIVED):
        return F_UNTRUSTED | F_RECEIVED
    return f & F_UNTRUSTED


def _kept(f: int) -> int:
    """What a method call's result keeps of its receiver's flags ``f``: the taint only."""
    return f & F_TAINT | (F_UNTRUSTED | F_RECEIVED if f & F_RECEIVED else 0)


def _classify(ctx: _Ctx, node: Node, category: str, depth: int) -> int:
    spec = ctx.spec
    t = node.type
    if t in spec.constants:
        return 0
    consts = ctx.tables.constants
    if consts is not None and consts.search(text(node)):
        return 0
    if t in spec.strings:
        out = 0
        for child in node.named_children:
            if child.type in spec.string_parts:
                continue
            f = classify(ctx, child, category, depth + 1)
            if f:
                out |= F_DYN | (f & _CARRIED)
        return out
    if t in spec.identifiers:
        return _identifier(ctx, node, category, depth)
    if t == "cast_expression" and _NUMERIC_CAST_RE.match(text(node)):
        return 0  # (int)$_GET["id"]: a number cannot carry an injection
    if t in spec.calls:
        return _call_flags(ctx, node, category, depth)
    if t in _FUNCTION_LITERALS:
        return F_OPAQUE
    if t in _CONDITIONALS:
        return _union(ctx, _branches(node), category, depth)
    if t in spec.members:
        s = text(node)
        clean = ctx.tables.clean_members.get(category)
        if clean is not None and _clean_member(ctx, node, clean):
            return 0  # what the framework guarantees (Django's upload name is a base name)
        src = _source(ctx, s, category)
        if src:
            return src
        norm = normalise_callee(s)
        values = _assigned(ctx, node, norm)
        if values:
            return _values(ctx, values, category, depth, (_scope_key(ctx, node), norm))
        last = re.split(r"[.\[\]'\"\-> ]+", s.strip("]'\" "))[-1] if s else ""
        if _CONST_NAME_RE.match(last):
            return 0
        base = node.child_by_field_name("object") or node.child_by_field_name("operand")
        base = base or (node.named_children[0] if node.named_children else None)
        f = classify(ctx, base, category, depth + 1) if base is not None else 0
        if last in _NUMERIC_MEMBERS:
            f &= F_TAINT  # a count, whatever it counts; tainted-mode rules keep their view
        return F_OPAQUE | (f & _CARRIED)
    if t in spec.binaries:
        children = [c for c in (node.child_by_field_name("left"), node.child_by_field_name("right")) if c]
        children = children or node.named_children
        f = _union(ctx, children, category, depth)
        if not f:
            return 0
        op = _operator(node)
        if op in spec.concat_ops and (op in (".", "%", "<<") or any(_stringy(ctx, c) for c in children)):
            return F_DYN | (f & _CARRIED)
        if op in ctx.tables.numeric_ops:
            return 0  # arithmetic yields a number, which cannot carry an injection
        return F_OPAQUE | (f & (_CARRIED | F_DYN))
    if not node.named_children:
        s = text(node)
        src = _source(ctx, s, category)
        if src:
            return src
        if not _NAME_RE.match(s) or s in ("None", "null", "nil"):
            return 0
        # ``this``: what an object holds (a component's props) is set where the snippet
        # does not show. An object key or a type name carries nothing.
        return F_OPAQUE | (F_UNTRUSTED if t in _RECEIVERS else 0)
    return _union(ctx, node.named_children, category, depth)


def _clean_member(ctx: _Ctx, node: Node, clean: re.Pattern[str]) -> bool:
    """``obj.member`` where ``clean`` matches "<obj's origin>.<member>": the origin is the
    value a name was assigned (one hop, a single assignment), else the object's own text."""
    obj = node.child_by_field_name("object")
    member = node.child_by_field_name("attribute") or node.child_by_field_name("property")
    if obj is None or member is None:
        return False
    origin = text(obj)
    if obj.type in ctx.spec.identifiers:
        values = _assigned(ctx, obj, origin)
        if len(values) == 1:
            origin = text(values[0][0])
    return clean.search(f"{origin}.{text(member)}") is not None


def _branches(node: Node) -> list[Node]:
    """The value branches of a conditional expression (its condition left out)."""
    cond = node.child_by_field_name("condition")
    named = [c for c in node.named_children if c.type != "comment"]
    if cond is None and len(named) == 3:  # Python: ``b if a else c`` has no field names
        return [named[0], named[2]]
    return [c for c in named if cond is None or c.id != cond.id]


def _values(
    ctx: _Ctx, values: list[tuple[Node, bool]], category: str, depth: int, guard: tuple[int, str]
) -> int:
    if guard in ctx.active:
        return 0  # a cycle (q = q + x): the other assignments decide
    ctx.active.add(guard)
    try:
        out = 0
        for value, aug in values:
            f = classify(ctx, value, category, depth + 1)
            out |= f
            if aug and f:
                out |= F_DYN
        return out
    finally:
        ctx.active.discard(guard)


def _identifier(ctx: _Ctx, node: Node, category: str, depth: int) -> int:
    name = text(node)
    src = _source(ctx, name, category)
    if src:
        return src
    scope = _scope(ctx, node)
    key = scope.start if scope is not None else -1
    values = ctx.env.get((key, name))
    if values:
        return _values(ctx, values, category, depth, (key, name))
    if scope is not None and name in scope.params:
        if name in scope.numeric:
            return 0  # declared as a number (``@PathVariable Long id``): cannot carry text
        return _param(ctx, scope, name, category, depth)
    values = ctx.env.get((-1, name))
    if values:
        return _values(ctx, values, category, depth, (-1, name))
    if _CONST_NAME_RE.match(name):
        return 0
    return F_OPAQUE | _closure(ctx, node, name, category, depth)


def _param(ctx: _Ctx, fn: _Func, name: str, category: str, depth: int) -> int:
    """A parameter: request data in a handler; for ``F_UNTRUSTED``, what its callers pass."""
    out = F_OPAQUE | (F_TAINT if name in fn.tainted else 0)
    guard = (fn.start, f"<param {name}>")
    if out & F_TAINT or guard in ctx.active:
        return out
    ctx.active.add(guard)
    try:
        return out | _passed_in(ctx, fn, fn.params.index(name), category, depth)
    finally:
        ctx.active.discard(guard)


def _passed_in(ctx: _Ctx, fn: _Func, index: int, category: str, depth: int) -> int:
    """What reaches parameter ``index`` of ``fn``, as ``F_UNTRUSTED``/``F_RECEIVED`` (0: only safe values).

    A callback's parameter is what its caller hands it: an array method's elements, a
    promise's result (``fetch(u).then(r => ...)``: the response), nothing from a timer;
    any other caller (an event or socket handler) is not followed and counts as untrusted.
    A named function called in the snippet gets what its call sites pass; one never
    called (an exported helper) may get anything.
    """
    holder = _callback_call(ctx, fn.node)
    if holder is not None:
        if _source(ctx, holder.raw + "(", category) or _source(ctx, holder.resolved + "(", category):
            return F_UNTRUSTED | F_RECEIVED  # $.get(url, data => ...): the response
        if holder.last in _TIMERS:
            return 0
        if (holder.last in _ITERATION or holder.last in _CONTINUATIONS) and holder.recv is not None:
            return _carry(classify(ctx, holder.recv, category, depth + 1))
        return F_UNTRUSTED
    # Calls from outside the function (a recursive call passes on what it was given).
    sites = [
        c for c in ctx.calls if fn.name and c.last == fn.name and not fn.start <= c.node.start_byte < fn.end
    ]
    if not sites:
        return F_UNTRUSTED
    out = 0
    for call in sites:
        out |= _carry(classify(ctx, call.args[index], category, depth + 1)) if index < len(call.args) else 0
    return out


def _callback_call(ctx: _Ctx, fn: Node) -> _Call | None:
    """The call a function literal is passed to (directly or in an options object), if any."""
    node = fn.parent
    for _ in range(4):
        if node is None:
            return None
        if node.type in ctx.spec.calls:
            return next((c for c in ctx.calls if c.node.id == node.id), None)
        if node.type not in ("arguments", "pair", "object", "argument_list"):
            return None
        node = node.parent
    return None


def _closure(ctx: _Ctx, node: Node, name: str, category: str, depth: int) -> int:
    """``F_UNTRUSTED`` for a name the innermost scope does not define: an enclosing function's
    variable or parameter decides; a builtin, a function or an import of the snippet is safe; a
    name defined nowhere may hold anything."""
    if name in ctx.tables.builtins:
        return 0
    pos = node.start_byte
    outer = sorted((f for f in ctx.funcs if f.start <= pos < f.end), key=lambda f: -f.start)
    for fn in outer[1:]:
        values = ctx.env.get((fn.start, name))
        if values:
            return _carry(_values(ctx, values, category, depth, (fn.start, name)))
        if name in fn.params:
            if name in fn.numeric:
                return 0
            return _carry(_param(ctx, fn, name, category, depth))
    if any(f.name == name for f in ctx.funcs):
        return 0  # a function of the snippet, passed as a value
    if name in ctx.aliases:
        return 0  # an import (``import styles from "./a.css"``): a module's export is code, not input
    if _COUNT_NAME_RE.match(name):
        return 0
    return F_UNTRUSTED


def _sanitised(ctx: _Ctx, call: _Call, category: str) -> bool:
    pattern = ctx.tables.sanitizers.get(category) or ctx.tables.sanitizers.get("any")
    return pattern is not None and any(pattern.search(c) for c in (call.resolved, call.raw))


def _call_flags(ctx: _Ctx, node: Node, category: str, depth: int) -> int:
    call = _make_call(ctx, node)
    if _sanitised(ctx, call, category):
        return 0
    src = _source(ctx, call.raw + "(", category) or _source(ctx, call.resolved + "(", category)
    if src and not _local_input(ctx, call):
        return src
    parts: list[Node] = list(call.args) + list(call.kwargs.values())
    if call.last in ctx.tables.format_calls:
        if call.recv is not None and not _module_like(ctx, call.recv):
            parts.append(call.recv)
        f = _union(ctx, parts, category, depth)
        return (F_DYN | (f & _CARRIED)) if f else 0
    local = _local_function(ctx, call.last)
    if local is not None:
        f = _returns(ctx, local, category, depth)
        if _passes_params(ctx, local, category, depth):
            f |= _union(ctx, parts, category, depth)
        return F_OPAQUE | (f & (_CARRIED | F_DYN))
    if call.last in _TRANSPARENT_ALL or call.short in _TRANSPARENT_ALL:
        if call.recv is not None and not _module_like(ctx, call.recv):
            parts.append(call.recv)
        f = _union(ctx, parts, category, depth)
        if not f and call.short in _STRING_CTORS:
            return 0  # new StringBuilder("SELECT ...") holds only its constant
        return F_OPAQUE | (f & (_CARRIED | F_DYN))
    if call.recv is not None and not _module_like(ctx, call.recv):
        # A method on a tainted value (``name.strip()``) keeps the taint; on anything else
        # (``resp.text()``) the result is new data. An array method's result is made of
        # the receiver's elements and what its callback returns.
        f = classify(ctx, call.recv, category, depth + 1)
        if call.last in _ITERATION:
            f |= _callback_results(ctx, call, category, depth)
            return F_OPAQUE | (f & _CARRIED)
        return F_OPAQUE | _kept(f) | _received(ctx, parts, category, depth)
    return F_OPAQUE | _received(ctx, parts, category, depth)


def _received(ctx: _Ctx, args: list[Node], category: str, depth: int) -> int:
    """For the ``untrusted`` mode only: a call fed a source's data (``decodeURIComponent(
    location.hash)``, ``marked(resp)``) may return it; one fed values the snippet merely does
    not define returns the API's own new data."""
    f = _union(ctx, [a for a in args if a.type not in _FUNCTION_LITERALS], category, depth)
    return F_UNTRUSTED | F_RECEIVED if f & (F_TAINT | F_RECEIVED) else 0


def _callback_results(ctx: _Ctx, call: _Call, category: str, depth: int) -> int:
    """Flags of what the function literals passed to ``call`` return."""
    out = 0
    for arg in call.args:
        if arg.type not in _FUNCTION_LITERALS:
            continue
        body = arg.child_by_field_name("body")
        if body is not None and body.type != "statement_block":
            out |= classify(ctx, body, category, depth + 1)  # x => `<li>${x}</li>`
            continue
        fn = next((f for f in ctx.funcs if f.node.id == arg.id), None)
        if fn is not None:
            out |= _returns(ctx, fn, category, depth)
    return out


def _local_input(ctx: _Ctx, call: _Call) -> bool:
    """A read from the program's own console (``new Scanner(System.in).nextLine()``).

    Whoever runs a console program types this input, as they choose its command-line
    arguments; the same ``readLine`` on a socket's reader stays a source.
    """
    pattern = ctx.tables.local_inputs
    if pattern is None or call.recv is None:
        return False
    recv = call.recv
    if pattern.search(text(recv)):
        return True
    if recv.type not in ctx.spec.identifiers:
        return False
    values = _assigned(ctx, recv, text(recv))
    return any(pattern.search(text(v)) for v, _ in values)


def _module_like(ctx: _Ctx, node: Node) -> bool:
    """A receiver that names a module or class (``String.format``, ``fmt``, ``os.path``)."""
    s = text(node)
    if not _DOTTED_RE.match(s):
        return False
    head = s.split(".", 1)[0]
    return head in ctx.aliases or head[:1].isupper() or head in _MODULE_NAMES


def _local_function(ctx: _Ctx, name: str) -> _Func | None:
    for f in ctx.funcs:
        if f.name == name:
            return f
    return None


_RETURN_TYPES: Final = frozenset({"return_statement", "return"})


def _passes_params(ctx: _Ctx, fn: _Func, category: str, depth: int) -> bool:
    """Whether what ``fn`` returns is built from its parameters (``return "SELECT " + x``),
    so that a call's arguments flow into its result. Judged by re-reading the returns with
    every parameter taken as request data: a parameter that only feeds a call returning new
    data (``return requests.get(url + city).json()``) does not reach the result."""
    key = (fn.start, f"<passes {category}>")
    cached = ctx.memo.get(key)
    if cached is not None:
        return bool(cached)
    if not fn.params:
        ctx.memo[key] = 0
        return False
    saved_tainted, saved_memo = fn.tainted, ctx.memo
    fn.tainted, ctx.memo = set(fn.params), {}
    try:
        passes = bool(_returns(ctx, fn, category, depth) & F_TAINT)
    finally:
        fn.tainted, ctx.memo = saved_tainted, saved_memo
    ctx.memo[key] = int(passes)
    return passes


def _returns(ctx: _Ctx, fn: _Func, category: str, depth: int) -> int:
    """Flags of what a snippet-local function returns (bounded walk of its body)."""
    key = (fn.start, "<returns>")
    if key in ctx.active:
        return 0
    ctx.active.add(key)
    try:
        out = 0
        queue = [fn.node]
        budget = 2000
        while queue and budget > 0:
            budget -= 1
            n = queue.pop()
            if n.type in _RETURN_TYPES:
                out |= _union(ctx, n.named_children, category, depth)
                continue
            queue.extend(n.named_children)
        return out
    finally:
        ctx.active.discard(key)
