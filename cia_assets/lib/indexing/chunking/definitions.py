"""What a definition is, and how a tree-sitter node is named and classified against a language spec.

The per-language specs themselves are in `specs`; the chunker that walks a tree is in `tree`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from tree_sitter import Node

# Roles of definition nodes. "function" becomes kind "method" inside a class-like container.
ROLE_FUNCTION = "function"
ROLE_METHOD = "method"
ROLE_CLASS = "class"
ROLE_NAMESPACE = "namespace"  # module-like: transparent when it holds classes, else like a class
ROLE_BLOCK = "block"
CONTAINER_ROLES = frozenset({ROLE_CLASS, ROLE_NAMESPACE, ROLE_BLOCK})

ROLE_TRANSPARENT = "transparent"  # descended into, first line kept as context (C++ namespace)
ROLE_FLATTEN = "flatten"  # descended into silently (preprocessor conditionals, parse errors)


@dataclass(slots=True)
class Definition:
    role: str
    name: str | None
    core: Node  # the node with the header and the body (inside decorators/export wrappers)
    extra: Node | None = None  # Dart: the function_body sibling that follows a signature


_Classifier = Callable[[Node, bytes], "Definition | str | None"]

_IDENT_TYPES: frozenset[str] = frozenset(
    {
        "bareword",
        "constant",
        "field_identifier",
        "identifier",
        "name",
        "property_identifier",
        "simple_identifier",
        "type_identifier",
        "word",
    }
)

# Definitions without a name of their own.
_DEFAULT_NAMES: dict[str, str] = {
    "init_declaration": "init",
    "deinit_declaration": "deinit",
    "constructor_definition": "constructor",
    "companion_object": "Companion",
    "static_initializer": "static",
}


def node_text(node: Node, src: bytes) -> str:
    """The source text of `node` (bad UTF-8 bytes replaced)."""
    return src[node.start_byte : node.end_byte].decode("utf-8", errors="replace")


_TEMPLATE_ARGS = re.compile(r"<[^<>()]*>(?=::)")


def clean_name(name: str | None) -> str | None:
    """A symbol part from a raw definition name: whitespace collapsed, `::` -> `.`, at most 160 chars."""
    if name is None:
        return None
    name = _TEMPLATE_ARGS.sub("", " ".join(name.split())).replace("::", ".").strip(". \"'`")
    return name[:160] or None


def declarator_name(node: Node, src: bytes) -> str | None:
    """Name inside a C/C++ declarator chain: `*foo(int)` -> foo, `Foo::bar() const` -> Foo::bar."""
    for _ in range(10):
        if node.type in (
            "identifier",
            "field_identifier",
            "qualified_identifier",
            "destructor_name",
            "operator_name",
            "type_identifier",
            "template_function",
            "operator_cast",
            "primitive_type",
        ):
            return node_text(node, src)
        nxt = node.child_by_field_name("declarator")
        if nxt is None:
            nxt = next(
                (c for c in node.named_children if c.type.endswith("declarator") or c.type in _IDENT_TYPES),
                None,
            )
        if nxt is None:
            return node_text(node, src)
        node = nxt
    return None


def generic_name(node: Node, src: bytes) -> str | None:
    """Name of a definition node: its `name` field, its declarator, or its first identifier child."""
    named = node.child_by_field_name("name")
    if named is not None:
        return node_text(named, src)
    declarator = node.child_by_field_name("declarator")
    if declarator is not None:
        return declarator_name(declarator, src)
    for child in node.named_children:
        if child.type in _IDENT_TYPES or child.type.endswith("_name"):
            return node_text(child, src)
    return _DEFAULT_NAMES.get(node.type)


def base_type_name(node: Node, src: bytes) -> str:
    """`Foo<T>` / `*Foo` / `pkg.Foo[T]` -> the bare type name."""
    text = node_text(node, src)
    text = re.split(r"[<\[({]", text, maxsplit=1)[0]
    return text.strip().lstrip("*&").strip()


@dataclass(frozen=True, slots=True)
class LanguageSpec:
    roles: dict[str, str]
    wrappers: frozenset[str] = frozenset()
    custom: _Classifier | None = None
    attach: Callable[[Node, bytes], bool] | None = None
    pair_body: bool = False  # Dart: a signature node is followed by its function_body sibling


def classify_with(spec: LanguageSpec, node: Node, src: bytes) -> Definition | str | None:
    """The definition `node` is under `spec`, ROLE_TRANSPARENT/ROLE_FLATTEN, or None."""
    if spec.custom is not None:
        found = spec.custom(node, src)
        if found is not None:
            return found
    t = node.type
    if t in spec.wrappers:
        inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
        candidates = [inner] if inner is not None else list(reversed(node.named_children))
        for child in candidates:
            found = classify_with(spec, child, src)
            if isinstance(found, Definition):
                return found
        return None
    role = spec.roles.get(t)
    if role is None:
        return None
    if role in (ROLE_TRANSPARENT, ROLE_FLATTEN):
        return role
    return Definition(role, generic_name(node, src), node)
