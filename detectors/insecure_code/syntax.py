"""Per-language tree-sitter tables, parsers and import aliases.

Why tables: the flow analysis in :mod:`detectors.insecure_code.flow` is one algorithm for eleven
languages. What differs is only *which node types* are calls, strings with
interpolation, concatenations, assignments, functions and imports, and in which fields a
grammar keeps the callee and the arguments. Those differences live here, as data.

Parsers are compiled once per process (``tree-sitter-language-pack`` 0.13 bundles the
grammars; nothing is fetched) and kept one per thread, since a tree-sitter ``Parser`` is
not safe to share between threads. Parsing runs in process; there is no subprocess.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Final

from tree_sitter import Language, Node, Parser, Query, QueryCursor
from tree_sitter_language_pack import get_language

__all__ = [
    "SPECS",
    "LangSpec",
    "captures",
    "imports_of",
    "normalise_callee",
    "parse",
    "text",
]


@dataclass(frozen=True, slots=True)
class CallShape:
    """Where a call node keeps its callee and arguments (field names; None when absent)."""

    function: str | None = "function"
    obj: str | None = None
    name: str | None = None
    args: str | None = "arguments"
    new: bool = False


@dataclass(frozen=True, slots=True)
class LangSpec:
    """The node-type vocabulary of one grammar, as the flow analysis needs it."""

    grammar: str
    calls: dict[str, CallShape]
    strings: frozenset[str]  # string literals, possibly with interpolation
    string_parts: frozenset[str]  # literal children of a string node
    identifiers: frozenset[str]
    members: frozenset[str]  # a.b, a[b], a->b: judged by their base object
    constants: frozenset[str]  # numbers, booleans, null
    binaries: frozenset[str]
    concat_ops: frozenset[str]
    assigns: dict[str, tuple[str, str]]  # node type -> (target field, value field)
    augassigns: frozenset[str]
    functions: dict[str, tuple[str | None, str | None]]  # node type -> (name field, params field)
    arg_wrappers: frozenset[str] = frozenset()  # PHP/C# wrap each argument in a node
    pairs: frozenset[str] = frozenset()  # keyword arguments / option-object entries
    objects: frozenset[str] = frozenset()  # option objects whose pairs count as keyword args
    extra_sinks: frozenset[str] = frozenset()  # statement nodes usable as sinks
    prefix: str = ""  # prepended before parsing when the block lacks it (PHP's "<?php")
    decorated: frozenset[str] = frozenset()  # wrappers that carry a function's decorators
    self_names: frozenset[str] = frozenset({"self", "cls", "this"})
    extra_query: tuple[str, ...] = field(default=())


_C_LIKE_CONST = frozenset({"number_literal", "true", "false", "null", "char_literal", "nullptr"})

SPECS: Final[dict[str, LangSpec]] = {
    "python": LangSpec(
        grammar="python",
        calls={"call": CallShape()},
        strings=frozenset({"string", "concatenated_string"}),
        string_parts=frozenset({"string_start", "string_content", "string_end", "escape_sequence"}),
        identifiers=frozenset({"identifier"}),
        members=frozenset({"attribute", "subscript"}),
        constants=frozenset({"integer", "float", "true", "false", "none"}),
        binaries=frozenset({"binary_operator"}),
        concat_ops=frozenset({"+", "%"}),
        # ``with open(p) as f`` binds ``f`` to the call (the value is the child besides the alias).
        assigns={
            "assignment": ("left", "right"),
            "augmented_assignment": ("left", "right"),
            "as_pattern": ("alias", ""),
        },
        augassigns=frozenset({"augmented_assignment"}),
        functions={"function_definition": ("name", "parameters")},
        pairs=frozenset({"keyword_argument"}),
        extra_sinks=frozenset({"return_statement"}),
        decorated=frozenset({"decorated_definition"}),
    ),
    "javascript": LangSpec(
        grammar="javascript",
        calls={"call_expression": CallShape(), "new_expression": CallShape(function="constructor", new=True)},
        strings=frozenset({"string", "template_string"}),
        string_parts=frozenset({"string_fragment", "escape_sequence"}),
        identifiers=frozenset({"identifier", "shorthand_property_identifier"}),
        members=frozenset({"member_expression", "subscript_expression"}),
        constants=frozenset({"number", "true", "false", "null", "undefined", "regex"}),
        binaries=frozenset({"binary_expression"}),
        concat_ops=frozenset({"+"}),
        assigns={
            "variable_declarator": ("name", "value"),
            "assignment_expression": ("left", "right"),
            "augmented_assignment_expression": ("left", "right"),
        },
        augassigns=frozenset({"augmented_assignment_expression"}),
        functions={
            "function_declaration": ("name", "parameters"),
            "function_expression": ("name", "parameters"),
            "arrow_function": (None, "parameters"),
            "method_definition": ("name", "parameters"),
            "generator_function_declaration": ("name", "parameters"),
        },
        pairs=frozenset({"pair"}),
        objects=frozenset({"object"}),
        extra_sinks=frozenset({"jsx_attribute"}),  # dangerouslySetInnerHTML={...}
    ),
    "java": LangSpec(
        grammar="java",
        calls={
            "method_invocation": CallShape(function=None, obj="object", name="name"),
            "object_creation_expression": CallShape(function="type", new=True),
        },
        strings=frozenset({"string_literal", "text_block"}),
        string_parts=frozenset({"string_fragment", "escape_sequence", "multiline_string_fragment"}),
        identifiers=frozenset({"identifier"}),
        members=frozenset({"field_access", "array_access"}),
        constants=frozenset(
            {
                "decimal_integer_literal",
                "true",
                "false",
                "null_literal",
                "character_literal",
                "decimal_floating_point_literal",
                "hex_integer_literal",
            }
        ),
        binaries=frozenset({"binary_expression"}),
        concat_ops=frozenset({"+"}),
        assigns={"variable_declarator": ("name", "value"), "assignment_expression": ("left", "right")},
        augassigns=frozenset(),
        functions={
            "method_declaration": ("name", "parameters"),
            "constructor_declaration": ("name", "parameters"),
        },
    ),
    "c": LangSpec(
        grammar="c",
        calls={"call_expression": CallShape()},
        strings=frozenset({"string_literal", "concatenated_string", "raw_string_literal"}),
        string_parts=frozenset({"string_content", "escape_sequence", "string_literal"}),
        identifiers=frozenset({"identifier"}),
        members=frozenset({"field_expression", "subscript_expression"}),
        constants=_C_LIKE_CONST,
        binaries=frozenset({"binary_expression"}),
        concat_ops=frozenset({"+"}),
        assigns={"init_declarator": ("declarator", "value"), "assignment_expression": ("left", "right")},
        augassigns=frozenset(),
        functions={"function_definition": ("declarator", "declarator")},
    ),
    "csharp": LangSpec(
        grammar="csharp",
        calls={
            "invocation_expression": CallShape(),
            "object_creation_expression": CallShape(function="type", new=True),
        },
        strings=frozenset(
            {
                "string_literal",
                "verbatim_string_literal",
                "interpolated_string_expression",
                "raw_string_literal",
            }
        ),
        string_parts=frozenset(
            {
                "string_literal_content",
                "escape_sequence",
                "interpolation_start",
                "interpolation_quote",
                "string_content",
                "raw_string_start",
                "raw_string_end",
                "raw_string_content",
                "interpolation_brace",
                "verbatim_string_literal",
            }
        ),
        identifiers=frozenset({"identifier"}),
        members=frozenset({"member_access_expression", "element_access_expression"}),
        constants=frozenset(
            {"integer_literal", "real_literal", "boolean_literal", "null_literal", "character_literal"}
        ),
        binaries=frozenset({"binary_expression"}),
        concat_ops=frozenset({"+"}),
        assigns={"variable_declarator": ("name", ""), "assignment_expression": ("left", "right")},
        augassigns=frozenset(),
        functions={
            "method_declaration": ("name", "parameters"),
            "local_function_statement": ("name", "parameters"),
            "lambda_expression": (None, "parameters"),
        },
        arg_wrappers=frozenset({"argument"}),
    ),
    "go": LangSpec(
        grammar="go",
        calls={"call_expression": CallShape()},
        strings=frozenset({"interpreted_string_literal", "raw_string_literal"}),
        string_parts=frozenset(
            {"interpreted_string_literal_content", "raw_string_literal_content", "escape_sequence"}
        ),
        identifiers=frozenset({"identifier"}),
        members=frozenset({"selector_expression", "index_expression"}),
        constants=frozenset({"int_literal", "float_literal", "true", "false", "nil", "rune_literal"}),
        binaries=frozenset({"binary_expression"}),
        concat_ops=frozenset({"+"}),
        assigns={
            "short_var_declaration": ("left", "right"),
            "assignment_statement": ("left", "right"),
            "var_spec": ("name", "value"),
        },
        augassigns=frozenset(),
        functions={
            "function_declaration": ("name", "parameters"),
            "method_declaration": ("name", "parameters"),
            "func_literal": (None, "parameters"),
        },
        objects=frozenset({"literal_value"}),
        pairs=frozenset({"keyed_element"}),
    ),
    "php": LangSpec(
        grammar="php",
        calls={
            "function_call_expression": CallShape(),
            "member_call_expression": CallShape(function=None, obj="object", name="name"),
            "nullsafe_member_call_expression": CallShape(function=None, obj="object", name="name"),
            "scoped_call_expression": CallShape(function=None, obj="scope", name="name"),
            "object_creation_expression": CallShape(function=None, args=None, new=True),
        },
        strings=frozenset({"string", "encapsed_string", "heredoc", "nowdoc", "shell_command_expression"}),
        string_parts=frozenset(
            {
                "string_content",
                "escape_sequence",
                "heredoc_start",
                "heredoc_end",
                "heredoc_body",
                "nowdoc_body",
                "string_value",
            }
        ),
        identifiers=frozenset({"variable_name"}),
        members=frozenset(
            {"subscript_expression", "member_access_expression", "scoped_property_access_expression"}
        ),
        constants=frozenset({"integer", "float", "boolean", "null"}),
        binaries=frozenset({"binary_expression"}),
        concat_ops=frozenset({"."}),
        assigns={
            "assignment_expression": ("left", "right"),
            "augmented_assignment_expression": ("left", "right"),
        },
        augassigns=frozenset({"augmented_assignment_expression"}),
        functions={
            "function_definition": ("name", "parameters"),
            "method_declaration": ("name", "parameters"),
            "anonymous_function": (None, "parameters"),
            "arrow_function": (None, "parameters"),
        },
        arg_wrappers=frozenset({"argument"}),
        pairs=frozenset({"array_element_initializer"}),
        extra_sinks=frozenset(
            {
                "echo_statement",
                "print_intrinsic",
                "include_expression",
                "include_once_expression",
                "require_expression",
                "require_once_expression",
                "shell_command_expression",
            }
        ),
        prefix="<?php\n",
        self_names=frozenset({"$this"}),
    ),
    "ruby": LangSpec(
        grammar="ruby",
        calls={"call": CallShape(function=None, obj="receiver", name="method")},
        strings=frozenset({"string", "subshell", "heredoc_body", "bare_string", "string_array"}),
        string_parts=frozenset({"string_content", "escape_sequence", "heredoc_content", "heredoc_end"}),
        identifiers=frozenset({"identifier", "instance_variable"}),
        members=frozenset({"element_reference", "scope_resolution"}),
        constants=frozenset({"integer", "float", "true", "false", "nil", "simple_symbol", "hash_key_symbol"}),
        binaries=frozenset({"binary"}),
        concat_ops=frozenset({"+", "<<", "%"}),
        assigns={"assignment": ("left", "right"), "operator_assignment": ("left", "right")},
        augassigns=frozenset({"operator_assignment"}),
        functions={"method": ("name", "parameters"), "singleton_method": ("name", "parameters")},
        pairs=frozenset({"pair"}),
        objects=frozenset({"hash"}),
        extra_sinks=frozenset({"subshell"}),
    ),
}


def _variant(base: str, grammar: str, **changes: Any) -> LangSpec:
    """A grammar that shares a base grammar's vocabulary (TypeScript, TSX, C++)."""
    return dataclasses.replace(SPECS[base], grammar=grammar, **changes)


SPECS["typescript"] = _variant("javascript", "typescript", extra_sinks=frozenset())  # no JSX in .ts
SPECS["tsx"] = _variant("javascript", "tsx")
SPECS["cpp"] = _variant(
    "c",
    "cpp",
    members=frozenset({"field_expression", "subscript_expression", "qualified_identifier"}),
    constants=_C_LIKE_CONST | {"raw_string_literal"},
    functions={
        "function_definition": ("declarator", "declarator"),
        "lambda_expression": (None, "declarator"),
    },
)


@functools.cache
def _language(grammar: str) -> Language:
    return get_language(grammar)  # type: ignore[arg-type]


_local = threading.local()


def _parser(grammar: str) -> Parser:
    parsers: dict[str, Parser] | None = getattr(_local, "parsers", None)
    if parsers is None:
        parsers = {}
        _local.parsers = parsers
    parser = parsers.get(grammar)
    if parser is None:
        parser = Parser(_language(grammar))
        parsers[grammar] = parser
    return parser


def parse(lang: str, code: str) -> tuple[Node, int]:
    """Parse ``code``; return the root node and how many rows the parser-only prefix added."""
    spec = SPECS[lang]
    shift = 0
    if spec.prefix and not code.lstrip().startswith(spec.prefix.strip()):
        code = spec.prefix + code
        shift = spec.prefix.count("\n")
    tree = _parser(spec.grammar).parse(code.encode("utf-8", "surrogatepass"))
    return tree.root_node, shift


_IMPORT_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "python": ("import_statement", "import_from_statement"),
    "javascript": ("import_statement",),
    "go": ("import_spec",),
}


@functools.cache
def _query(lang: str) -> Query:
    spec = SPECS[lang]
    parts = [f"({t}) @call" for t in spec.calls]
    parts += [f"({t}) @assign" for t in spec.assigns]
    parts += [f"({t}) @func" for t in spec.functions]
    parts += [f"({t}) @sink" for t in spec.extra_sinks]
    base = "javascript" if lang in ("typescript", "tsx") else lang
    parts += [f"({t}) @import" for t in _IMPORT_TYPES.get(base, ())]
    return Query(_language(spec.grammar), "\n".join(parts))


def captures(lang: str, root: Node) -> dict[str, list[Node]]:
    """The nodes the flow analysis visits, by role, in one pass of the C query engine."""
    found = QueryCursor(_query(lang)).captures(root)
    for nodes in found.values():
        nodes.sort(key=lambda n: n.start_byte)
    return found


def text(node: Node | None) -> str:
    if node is None or node.text is None:
        return ""
    return node.text.decode("utf-8", "replace")


_ARGS_RE = re.compile(r"\([^()]*\)")
_GENERIC_RE = re.compile(r"<[^<>]*>")


def normalise_callee(raw: str) -> str:
    """``Runtime.getRuntime().exec`` -> ``Runtime.getRuntime.exec``; ``$pdo->query`` -> ``$pdo.query``."""
    s = "".join(raw.split())
    for sep in ("?.", "->", "::", "&."):
        s = s.replace(sep, ".")
    for _ in range(4):
        new = _ARGS_RE.sub("", s)
        if new == s:
            break
        s = new
    s = _GENERIC_RE.sub("", s)
    return s.strip(".")


def _strip_quotes(s: str) -> str:
    return s.strip().strip("'\"`")


_GO_DEFAULT_IMPORTS: Final = {
    "http": "net/http",
    "exec": "os/exec",
    "ioutil": "io/ioutil",
    "filepath": "path/filepath",
    "template": "html/template",
    "url": "net/url",
    "tls": "crypto/tls",
    "sql": "database/sql",
}


def imports_of(lang: str, nodes: list[Node], assigns: list[Node]) -> dict[str, str]:
    """Local name -> what it stands for (``sp`` -> ``subprocess``, ``run`` -> ``os.system``).

    Python ``import``/``from``, JavaScript ``import`` and ``require`` (with destructuring),
    and Go import aliases (Go names resolve to the full import path, so ``math/rand`` and
    ``crypto/rand`` stay apart).
    """
    out: dict[str, str] = {}
    base = "javascript" if lang in ("typescript", "tsx") else lang
    if base == "python":
        for n in nodes:
            module = text(n.child_by_field_name("module_name"))
            for child in n.children_by_field_name("name"):
                if child.type == "aliased_import":
                    name = text(child.child_by_field_name("name"))
                    alias = text(child.child_by_field_name("alias"))
                else:
                    name = alias = text(child)
                    if not module:
                        alias = name.split(".")[0]
                        name = alias
                out[alias] = f"{module}.{name}" if module else name
    elif base == "javascript":
        for n in nodes:
            source = _strip_quotes(text(n.child_by_field_name("source"))).removeprefix("node:")
            for clause in n.named_children:
                if clause.type != "import_clause":
                    continue
                for c in clause.named_children:
                    if c.type == "identifier":
                        out[text(c)] = source
                    elif c.type == "namespace_import":
                        out[text(c.named_children[-1])] = source
                    elif c.type == "named_imports":
                        for spec in c.named_children:
                            name = text(spec.child_by_field_name("name"))
                            alias = text(spec.child_by_field_name("alias")) or name
                            out[alias] = f"{source}.{name}"
        for a in assigns:
            if a.type != "variable_declarator":
                continue
            value = a.child_by_field_name("value")
            if (
                value is None
                or value.type != "call_expression"
                or text(value.child_by_field_name("function")) != "require"
            ):
                continue
            args = value.child_by_field_name("arguments")
            if args is None or not args.named_children:
                continue
            source = _strip_quotes(text(args.named_children[0])).removeprefix("node:")
            target = a.child_by_field_name("name")
            if target is None:
                continue
            if target.type == "identifier":
                out[text(target)] = source
            elif target.type == "object_pattern":
                for p in target.named_children:
                    if p.type == "shorthand_property_identifier_pattern":
                        out[text(p)] = f"{source}.{text(p)}"
                    elif p.type == "pair_pattern":
                        out[text(p.child_by_field_name("value"))] = (
                            f"{source}.{text(p.child_by_field_name('key'))}"
                        )
        # const run = promisify(exec): the wrapper is the wrapped function.
        for a in assigns:
            if a.type != "variable_declarator":
                continue
            value = a.child_by_field_name("value")
            target = a.child_by_field_name("name")
            if value is None or target is None or target.type != "identifier":
                continue
            if value.type != "call_expression":
                continue
            if text(value.child_by_field_name("function")) not in ("promisify", "util.promisify"):
                continue
            args = value.child_by_field_name("arguments")
            inner = text(args.named_children[0]) if args is not None and args.named_children else ""
            if inner:
                head, dot, rest = inner.partition(".")
                out[text(target)] = out.get(inner) or (f"{out[head]}{dot}{rest}" if head in out else inner)
    elif base == "go":
        out.update(_GO_DEFAULT_IMPORTS)  # snippets often leave the import block out
        for n in nodes:
            path = _strip_quotes(text(n.child_by_field_name("path")))
            alias = text(n.child_by_field_name("name")) or path.rsplit("/", 1)[-1]
            if alias not in ("_", "."):
                out[alias] = path
    return out
