"""tree-sitter outlines (signature lines of classes, functions, methods) and symbol tags.

Grammars come from the per-language wheels (offline). One query per language captures
definition nodes (``@class``, ``@function``, ``@method``…) with their ``@name``; a
definition's signature is its source lines from the start of the node up to where the
body begins (at most :data:`MAX_SIG_LINES`). References for the symbol graph are the
identifiers of the file (see :func:`identifiers`): cheap, and a definition elsewhere
named by one of them gives an edge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from tree_sitter import Language, Parser, Query, QueryCursor

MAX_SIG_LINES = 4

EXTENSIONS = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".go": "go", ".rs": "rust", ".java": "java", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
}

_JS = """
(class_declaration name: (_) @name) @class
(function_declaration name: (identifier) @name) @function
(generator_function_declaration name: (identifier) @name) @function
(method_definition name: (_) @name) @method
(variable_declarator name: (identifier) @name value: [(arrow_function) (function_expression)]) @function
"""
_TS_EXTRA = """
(abstract_class_declaration name: (_) @name) @class
(interface_declaration name: (_) @name) @interface
(type_alias_declaration name: (_) @name) @type
(enum_declaration name: (_) @name) @enum
(method_signature name: (_) @name) @method
(abstract_method_signature name: (_) @name) @method
(function_signature name: (_) @name) @function
"""
_C = """
(function_definition declarator: (function_declarator declarator: (_) @name)) @function
(function_definition declarator: (pointer_declarator declarator: (function_declarator declarator: (_) @name))) @function
(declaration declarator: (function_declarator declarator: (identifier) @name)) @function
(struct_specifier name: (_) @name body: (_)) @class
(union_specifier name: (_) @name body: (_)) @class
(enum_specifier name: (_) @name body: (_)) @enum
(type_definition declarator: (type_identifier) @name) @type
"""
_CPP_EXTRA = """
(class_specifier name: (_) @name body: (_)) @class
(namespace_definition name: (_) @name) @namespace
(field_declaration declarator: (function_declarator declarator: (_) @name)) @method
(function_definition declarator: (reference_declarator (function_declarator declarator: (_) @name))) @function
"""
QUERIES = {
    "python": """
(class_definition name: (identifier) @name) @class
(function_definition name: (identifier) @name) @function
""",
    "javascript": _JS,
    "typescript": _JS + _TS_EXTRA,
    "tsx": _JS + _TS_EXTRA,
    "go": """
(function_declaration name: (identifier) @name) @function
(method_declaration name: (field_identifier) @name) @method
(type_spec name: (type_identifier) @name) @type
(method_elem name: (field_identifier) @name) @method
""",
    "rust": """
(function_item name: (identifier) @name) @function
(function_signature_item name: (identifier) @name) @function
(struct_item name: (type_identifier) @name) @class
(enum_item name: (type_identifier) @name) @enum
(union_item name: (type_identifier) @name) @class
(trait_item name: (type_identifier) @name) @trait
(impl_item type: (_) @name) @impl
(mod_item name: (identifier) @name) @module
(macro_definition name: (identifier) @name) @macro
(type_item name: (type_identifier) @name) @type
""",
    "java": """
(class_declaration name: (identifier) @name) @class
(interface_declaration name: (identifier) @name) @interface
(enum_declaration name: (identifier) @name) @enum
(record_declaration name: (identifier) @name) @class
(annotation_type_declaration name: (identifier) @name) @interface
(method_declaration name: (identifier) @name) @method
(constructor_declaration name: (identifier) @name) @method
""",
    "c": _C,
    "cpp": _C + _CPP_EXTRA,
}
_CLASS_NODES = {"class_definition", "class_declaration", "class_specifier", "struct_specifier",
                "abstract_class_declaration", "impl_item", "trait_item"}


@dataclass(slots=True, frozen=True)
class Symbol:
    name: str
    kind: str  # class, function, method, interface, type, enum, impl, …
    line: int  # 1-based line of the definition's first line
    end_line: int  # 1-based last line of the signature


def language_of(path: str) -> str | None:
    dot = path.rfind(".")
    return EXTENSIONS.get(path[dot:].lower()) if dot >= 0 else None


def _module_language(name: str) -> Language:
    if name in ("typescript", "tsx"):
        import tree_sitter_typescript as mod

        return Language(mod.language_typescript() if name == "typescript" else mod.language_tsx())
    mod = __import__(f"tree_sitter_{name}")
    return Language(mod.language())


@cache
def _parser_and_query(name: str) -> tuple[Parser, Query]:
    lang = _module_language(name)
    return Parser(lang), Query(lang, QUERIES[name])


def _in_class(node) -> bool:  # noqa: ANN001 - tree_sitter.Node
    parent = node.parent
    for _ in range(3):
        if parent is None:
            return False
        if parent.type in _CLASS_NODES:
            return True
        parent = parent.parent
    return False


def extract_symbols(path: str, data: bytes) -> list[Symbol]:
    """Definitions in the file, in source order (empty for languages without a grammar)."""
    lang = language_of(path)
    if lang is None:
        return []
    parser, query = _parser_and_query(lang)
    tree = parser.parse(data)
    seen: set[int] = set()
    out: list[Symbol] = []
    for _, caps in QueryCursor(query).matches(tree.root_node):
        names = caps.get("name")
        if not names:
            continue
        kind, nodes = next((k, v) for k, v in caps.items() if k != "name")
        node = nodes[0]
        if node.id in seen:
            continue
        seen.add(node.id)
        if kind == "function" and _in_class(node):
            kind = "method"
        start = node.start_point.row
        end = start
        body = node.child_by_field_name("body")
        if body is not None and body.start_point.row > start:
            end = body.start_point.row
            line_start = data.rfind(b"\n", 0, body.start_byte) + 1
            if not data[line_start:body.start_byte].strip():
                end -= 1  # body starts on its own line: not part of the signature
        name = names[0].text.decode("utf-8", "replace") if names[0].text else ""
        name = re.split(r"::|\.", name)[-1]
        out.append(Symbol(name, kind, start + 1, min(end, start + MAX_SIG_LINES - 1) + 1))
    out.sort(key=lambda s: (s.line, s.end_line))
    return out


_MD_HEADING = re.compile(r"^#{1,6} .*$", re.MULTILINE)


def outline_entries(path: str, lines: list[str], symbols: list[Symbol]) -> list[tuple[int, str]]:
    """(line number, source line) pairs forming the outline of a file."""
    picked: dict[int, str] = {}
    for s in symbols:
        for n in range(s.line, min(s.end_line, len(lines)) + 1):
            picked[n] = lines[n - 1]
    if not symbols and path.lower().endswith((".md", ".rst", ".markdown")):
        for n, line in enumerate(lines, 1):
            if line.startswith("#") or (n > 1 and line[:3] in ("===", "---") and lines[n - 2]):
                picked[n] = line
    return sorted(picked.items())


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


def identifiers(text: str) -> set[str]:
    """Identifiers (3+ chars) used in the file: the reference side of the symbol graph."""
    return set(_IDENT.findall(text))
