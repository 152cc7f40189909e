"""Per-language knowledge: which tree-sitter node types are definitions in each grammar.

`SPECS` maps a grammar name to its `LanguageSpec`: node type -> role tables, plus the custom
classifiers for grammars where a definition is not one node type (JS arrow functions bound to a
name, Go methods, Elixir `def` calls, R `f <- function`, ...).
"""

from __future__ import annotations

from tree_sitter import Node

from cia_assets.lib.indexing.chunking.definitions import (
    ROLE_BLOCK,
    ROLE_CLASS,
    ROLE_FLATTEN,
    ROLE_FUNCTION,
    ROLE_METHOD,
    ROLE_NAMESPACE,
    ROLE_TRANSPARENT,
    Definition,
    LanguageSpec,
    base_type_name,
    classify_with,
    declarator_name,
    generic_name,
    node_text,
)

# Grammars that are supersets of one we have definitions for (chunked with its spec).
_SPEC_ALIASES: dict[str, str] = {"cuda": "cpp", "arduino": "cpp"}


def _js_value_def(value: Node | None, name: str | None) -> Definition | None:
    if value is None:
        return None
    if value.type in ("arrow_function", "function_expression", "function", "generator_function"):
        return Definition(ROLE_FUNCTION, name, value)
    if value.type in ("class", "class_expression"):
        return Definition(ROLE_CLASS, name, value)
    return None


def _js_custom(node: Node, src: bytes) -> Definition | str | None:
    t = node.type
    if t in ("lexical_declaration", "variable_declaration"):
        declarators = [c for c in node.named_children if c.type == "variable_declarator"]
        if len(declarators) != 1:
            return None
        name = declarators[0].child_by_field_name("name")
        return _js_value_def(
            declarators[0].child_by_field_name("value"),
            node_text(name, src) if name is not None else None,
        )
    if t == "expression_statement":
        inner = node.named_children[0] if node.named_child_count else None
        if inner is None:
            return None
        if inner.type in ("internal_module", "module"):
            return Definition(ROLE_NAMESPACE, generic_name(inner, src), inner)
        if inner.type == "assignment_expression":
            left = inner.child_by_field_name("left")
            return _js_value_def(
                inner.child_by_field_name("right"),
                node_text(left, src) if left is not None else None,
            )
        return None
    if t == "export_statement":
        declaration = node.child_by_field_name("declaration")
        if declaration is not None:
            return classify_with(SPECS["typescript"], declaration, src)
        value = node.child_by_field_name("value")
        if value is not None:
            name = value.child_by_field_name("name")
            return _js_value_def(value, node_text(name, src) if name is not None else "default")
        return None
    if t in ("public_field_definition", "field_definition"):
        value = node.child_by_field_name("value")
        name = node.child_by_field_name("name") or node.child_by_field_name("property")
        return _js_value_def(value, node_text(name, src) if name is not None else None)
    if t in ("internal_module", "module"):
        return Definition(ROLE_NAMESPACE, generic_name(node, src), node)
    if t == "ambient_declaration":
        for child in node.named_children:
            found = classify_with(SPECS["typescript"], child, src)
            if isinstance(found, Definition):
                return found
    return None


def _go_custom(node: Node, src: bytes) -> Definition | str | None:
    if node.type == "method_declaration":
        name = generic_name(node, src)
        receiver = node.child_by_field_name("receiver")
        type_node = None
        if receiver is not None:
            for param in receiver.named_children:
                type_node = param.child_by_field_name("type")
                if type_node is not None:
                    break
        if type_node is not None and name:
            name = f"{base_type_name(type_node, src)}.{name}"
        return Definition(ROLE_METHOD, name, node)
    if node.type == "type_declaration":
        specs = [c for c in node.named_children if c.type in ("type_spec", "type_alias")]
        name = generic_name(specs[0], src) if len(specs) == 1 else None
        return Definition(ROLE_CLASS, name, node)
    return None


def _rust_custom(node: Node, src: bytes) -> Definition | str | None:
    if node.type == "impl_item":
        type_node = node.child_by_field_name("type")
        name = base_type_name(type_node, src) if type_node is not None else None
        return Definition(ROLE_CLASS, name, node)
    if node.type == "mod_item":
        if node.child_by_field_name("body") is None:
            return None
        return Definition(ROLE_NAMESPACE, generic_name(node, src), node)
    return None


def _c_custom(node: Node, src: bytes) -> Definition | str | None:
    t = node.type
    if t in ("struct_specifier", "union_specifier", "enum_specifier", "class_specifier"):
        if node.child_by_field_name("body") is None:
            return None
        return Definition(ROLE_CLASS, generic_name(node, src), node)
    if t == "type_definition":
        inner = node.child_by_field_name("type")
        if inner is None or inner.child_by_field_name("body") is None:
            return None
        declarator = node.child_by_field_name("declarator")
        name = declarator_name(declarator, src) if declarator is not None else None
        return Definition(ROLE_CLASS, name or generic_name(inner, src), node)
    if t == "declaration":
        # `class Foo { ... } foo;` / `struct S { ... };` parsed as a declaration
        inner = node.child_by_field_name("type")
        if (
            inner is not None
            and inner.type in ("struct_specifier", "union_specifier", "class_specifier")
            and inner.child_by_field_name("body") is not None
        ):
            return Definition(ROLE_CLASS, generic_name(inner, src), node)
        return None
    if t == "template_declaration":
        for child in reversed(node.named_children):
            found = classify_with(SPECS["cpp"], child, src)
            if isinstance(found, Definition):
                return found
        return None
    return None


def _kotlin_custom(node: Node, src: bytes) -> Definition | str | None:
    if node.type == "function_declaration":
        name = None
        receiver = None
        for child in node.named_children:
            if child.type == "receiver_type":
                receiver = base_type_name(child, src)
            elif child.type == "simple_identifier":
                name = node_text(child, src)
                break
        if receiver and name:
            name = f"{receiver}.{name}"
        return Definition(ROLE_FUNCTION, name, node)
    return None


_ELIXIR_FUNCS = frozenset({"def", "defp", "defmacro", "defmacrop", "defguard", "defguardp", "defn"})
_ELIXIR_FUNC_HEADS = frozenset({"defdelegate", "defoverridable"})
_ELIXIR_MODULES = frozenset({"defmodule", "defprotocol", "defimpl"})
_ELIXIR_ATTACHED = frozenset({"doc", "spec", "impl", "deprecated", "decorate", "tag", "typedoc"})


def _elixir_custom(node: Node, src: bytes) -> Definition | str | None:
    if node.type != "call":
        return None
    target = node.child_by_field_name("target")
    if target is None or target.type != "identifier":
        return None
    keyword = node_text(target, src)
    if keyword not in _ELIXIR_FUNCS and keyword not in _ELIXIR_MODULES:
        return None
    arguments = next((c for c in node.named_children if c.type == "arguments"), None)
    first = arguments.named_children[0] if arguments is not None and arguments.named_children else None
    name = None
    while first is not None and name is None:
        if first.type == "binary_operator":  # `def f(x) when is_integer(x)`
            first = first.child_by_field_name("left")
        elif first.type == "call":
            inner = first.child_by_field_name("target")
            name = node_text(inner, src) if inner is not None else None
            break
        else:
            name = node_text(first, src)
    if keyword in _ELIXIR_MODULES:
        return Definition(ROLE_NAMESPACE, name, node)
    return Definition(ROLE_FUNCTION, name, node)


def _elixir_attach(node: Node, src: bytes) -> bool:
    if node.type != "unary_operator":
        return False
    operand = node.child_by_field_name("operand")
    if operand is None or operand.type != "call":
        return False
    target = operand.child_by_field_name("target")
    return target is not None and node_text(target, src) in _ELIXIR_ATTACHED


def _r_custom(node: Node, src: bytes) -> Definition | str | None:
    if node.type != "binary_operator":
        return None
    rhs = node.child_by_field_name("rhs")
    lhs = node.child_by_field_name("lhs")
    operator = node.child_by_field_name("operator")
    op = node_text(operator, src) if operator is not None else ""
    if op in ("<-", "<<-", "=") and rhs is not None and rhs.type == "function_definition":
        return Definition(ROLE_FUNCTION, node_text(lhs, src) if lhs is not None else None, node)
    if op in ("->", "->>") and lhs is not None and lhs.type == "function_definition":
        return Definition(ROLE_FUNCTION, node_text(rhs, src) if rhs is not None else None, node)
    return None


def _callee_name(node: Node, src: bytes) -> str | None:
    """Julia: the called name inside a signature (`foo(x)::T where T` -> foo)."""
    stack = [node]
    for _ in range(12):
        if not stack:
            return None
        current = stack.pop(0)
        if current.type == "call_expression":
            callee = current.named_children[0] if current.named_children else None
            return node_text(callee, src) if callee is not None else None
        if current.type == "identifier" and current is not node:
            return node_text(current, src)
        stack.extend(current.named_children[:2])
    return None


def _julia_custom(node: Node, src: bytes) -> Definition | str | None:
    t = node.type
    if t in ("function_definition", "macro_definition"):
        signature = next((c for c in node.named_children if c.type == "signature"), None)
        name = _callee_name(signature, src) if signature is not None else None
        return Definition(ROLE_FUNCTION, name, node)
    if t == "assignment":
        # `f(x) = 2x`, `g(x::T) where {T} = x`: a call on the left makes it a function
        lhs = node.named_children[0] if node.named_children else None
        if lhs is not None and (
            lhs.type == "call_expression"
            or (
                lhs.type in ("where_expression", "typed_expression")
                and any(c.type == "call_expression" for c in lhs.named_children)
            )
        ):
            return Definition(ROLE_FUNCTION, _callee_name(lhs, src), node)
        return None
    if t in ("struct_definition", "abstract_definition", "primitive_definition"):
        head = next((c for c in node.named_children if c.type == "type_head"), None)
        name = base_type_name(head, src).split("<:")[0].strip() if head is not None else None
        return Definition(ROLE_CLASS, name, node)
    if t == "module_definition":
        return Definition(ROLE_NAMESPACE, generic_name(node, src), node)
    return None


def _dart_custom(node: Node, src: bytes) -> Definition | str | None:
    t = node.type
    if t in ("function_signature", "method_signature", "declaration"):
        inner = node
        if t != "function_signature":
            signature = next(
                (
                    c
                    for c in node.named_children
                    if c.type.endswith("_signature") and c.type != "function_type"
                ),
                None,
            )
            if signature is None:
                return None
            inner = signature
            if t == "declaration" and "constructor" not in inner.type:
                return None
        names = [node_text(c, src) for c in inner.children_by_field_name("name")]
        if not names:
            names = [node_text(c, src) for c in inner.named_children if c.type == "identifier"]
        if inner.type in ("function_signature", "getter_signature", "setter_signature"):
            names = names[-1:]
        return Definition(ROLE_FUNCTION, ".".join(names) or None, node)
    if t in ("mixin_declaration", "extension_declaration", "class_definition", "enum_declaration"):
        return Definition(ROLE_CLASS, generic_name(node, src), node)
    return None


def _haskell_custom(node: Node, src: bytes) -> Definition | str | None:
    if node.type == "instance":
        name = node.child_by_field_name("name")
        patterns = node.child_by_field_name("patterns")
        parts = [node_text(n, src) for n in (name, patterns) if n is not None]
        return Definition(ROLE_CLASS, " ".join(parts) or None, node)
    return None


def _hcl_custom(node: Node, src: bytes) -> Definition | str | None:
    if node.type != "block":
        return None
    parts: list[str] = []
    for child in node.named_children:
        if child.type == "identifier":
            parts.append(node_text(child, src))
        elif child.type == "string_lit":
            parts.append(node_text(child, src).strip('"'))
        elif child.type in ("block_start", "body"):
            break
    return Definition(ROLE_BLOCK, ".".join(parts) or None, node)


def _lua_custom(node: Node, src: bytes) -> Definition | str | None:
    t = node.type
    if t == "function_declaration":
        name_node = node.child_by_field_name("name")
        name = node_text(name_node, src) if name_node is not None else None
        if name_node is not None and name_node.type == "method_index_expression" and name:
            return Definition(ROLE_METHOD, name.replace(":", "."), node)
        return Definition(ROLE_FUNCTION, name, node)
    if t in ("assignment_statement", "variable_declaration"):
        statement = node
        if t == "variable_declaration":
            assignment = next((c for c in node.named_children if c.type == "assignment_statement"), None)
            if assignment is None:
                return None
            statement = assignment
        variables = next((c for c in statement.named_children if c.type == "variable_list"), None)
        values = next((c for c in statement.named_children if c.type == "expression_list"), None)
        if (
            variables is not None
            and values is not None
            and values.named_child_count == 1
            and values.named_children[0].type == "function_definition"
        ):
            return Definition(ROLE_FUNCTION, node_text(variables, src), node)
    return None


def _php_custom(node: Node, src: bytes) -> Definition | str | None:
    if node.type == "namespace_definition":
        return ROLE_TRANSPARENT if node.child_by_field_name("body") is not None else None
    return None


def _roles(
    function: str = "",
    method: str = "",
    cls: str = "",
    namespace: str = "",
    transparent: str = "",
    flatten: str = "",
) -> dict[str, str]:
    """Node type -> role, from space-separated node type names per role."""
    roles: dict[str, str] = {}
    for role, types in (
        (ROLE_FUNCTION, function),
        (ROLE_METHOD, method),
        (ROLE_CLASS, cls),
        (ROLE_NAMESPACE, namespace),
        (ROLE_TRANSPARENT, transparent),
        (ROLE_FLATTEN, flatten),
    ):
        roles.update(dict.fromkeys(types.split(), role))
    return roles


_C_PREPROC = "preproc_if preproc_ifdef preproc_else preproc_elif preproc_elifdef"
_JS_FUNCTIONS = "function_declaration generator_function_declaration method_definition function_signature"

SPECS: dict[str, LanguageSpec] = {
    "python": LanguageSpec(
        _roles(function="function_definition", cls="class_definition"),
        wrappers=frozenset({"decorated_definition"}),
    ),
    "javascript": LanguageSpec(
        _roles(function=_JS_FUNCTIONS, cls="class_declaration abstract_class_declaration"),
        custom=_js_custom,
    ),
    "typescript": LanguageSpec(
        _roles(
            function=_JS_FUNCTIONS,
            cls="class_declaration abstract_class_declaration interface_declaration"
            " type_alias_declaration enum_declaration",
        ),
        custom=_js_custom,
    ),
    "java": LanguageSpec(
        _roles(
            function="method_declaration constructor_declaration compact_constructor_declaration",
            cls="class_declaration interface_declaration enum_declaration record_declaration"
            " annotation_type_declaration",
        )
    ),
    "go": LanguageSpec(_roles(function="function_declaration"), custom=_go_custom),
    "rust": LanguageSpec(
        _roles(
            function="function_item function_signature_item macro_definition",
            cls="struct_item enum_item union_item trait_item type_item",
        ),
        custom=_rust_custom,
    ),
    "c": LanguageSpec(_roles(function="function_definition", flatten=_C_PREPROC), custom=_c_custom),
    "cpp": LanguageSpec(
        _roles(
            function="function_definition",
            flatten=_C_PREPROC,
            transparent="namespace_definition linkage_specification",
        ),
        custom=_c_custom,
    ),
    "csharp": LanguageSpec(
        _roles(
            function="method_declaration constructor_declaration destructor_declaration"
            " operator_declaration conversion_operator_declaration",
            cls="class_declaration struct_declaration interface_declaration enum_declaration"
            " record_declaration record_struct_declaration",
            transparent="namespace_declaration",
        )
    ),
    "ruby": LanguageSpec(
        _roles(
            function="method singleton_method",
            cls="class",
            namespace="module",
            transparent="singleton_class",
        )
    ),
    "php": LanguageSpec(
        _roles(
            function="function_definition method_declaration",
            cls="class_declaration interface_declaration trait_declaration enum_declaration",
        ),
        custom=_php_custom,
    ),
    "kotlin": LanguageSpec(
        _roles(
            function="function_declaration secondary_constructor",
            cls="class_declaration object_declaration companion_object",
        ),
        custom=_kotlin_custom,
    ),
    "scala": LanguageSpec(
        _roles(
            function="function_definition function_declaration",
            cls="class_definition object_definition trait_definition enum_definition",
        )
    ),
    "swift": LanguageSpec(
        _roles(
            function="function_declaration init_declaration deinit_declaration"
            " protocol_function_declaration subscript_declaration",
            cls="class_declaration protocol_declaration",
        )
    ),
    "bash": LanguageSpec(_roles(function="function_definition")),
    "lua": LanguageSpec({}, custom=_lua_custom),
    "haskell": LanguageSpec(
        _roles(
            function="function signature bind",
            cls="data_type newtype class type_synomym type_family data_family",
            flatten="declarations",
        ),
        custom=_haskell_custom,
    ),
    "elixir": LanguageSpec({}, custom=_elixir_custom, attach=_elixir_attach),
    "r": LanguageSpec({}, custom=_r_custom),
    "dart": LanguageSpec({}, custom=_dart_custom, pair_body=True),
    "julia": LanguageSpec({}, custom=_julia_custom, attach=lambda node, src: node.type == "string_literal"),
    "solidity": LanguageSpec(
        _roles(
            function="function_definition modifier_definition constructor_definition"
            " fallback_receive_definition",
            cls="contract_declaration interface_declaration library_declaration"
            " struct_declaration enum_declaration",
        )
    ),
    "proto": LanguageSpec(_roles(method="rpc", cls="message enum service")),
    "hcl": LanguageSpec(_roles(flatten="body"), custom=_hcl_custom),
    "perl": LanguageSpec(_roles(function="subroutine_declaration_statement")),
}
SPECS["tsx"] = SPECS["typescript"]
for _alias, _target in _SPEC_ALIASES.items():
    SPECS[_alias] = SPECS[_target]

_HASH_COMMENT = ("#",)
_SLASH_COMMENT = ("//", "/*", "*")
LINE_COMMENTS: dict[str, tuple[str, ...]] = {
    "python": _HASH_COMMENT,
    "ruby": _HASH_COMMENT,
    "bash": _HASH_COMMENT,
    "perl": _HASH_COMMENT,
    "r": _HASH_COMMENT,
    "elixir": _HASH_COMMENT,
    "julia": _HASH_COMMENT,
    "hcl": ("#", "//"),
    "haskell": ("--",),
    "lua": ("--",),
    **{
        language: _SLASH_COMMENT
        for language in (
            "c",
            "cpp",
            "cuda",
            "arduino",
            "csharp",
            "dart",
            "go",
            "java",
            "javascript",
            "kotlin",
            "php",
            "proto",
            "rust",
            "scala",
            "solidity",
            "swift",
            "tsx",
            "typescript",
        )
    },
}

# Structural languages: no definitions, but parse errors are still descended into.
STRUCTURAL_SPEC = LanguageSpec(roles={})
