"""What a question or issue report asks the index for: code tokens, named symbols, named files.

Real questions range from "where is the refund deadline checked?" to a GitHub issue of
several hundred words with a traceback and a code sample. The embedding model reads the
first 256 tokens; the lexical vector takes the whole text with repeated words weighing more;
the identifiers it names (`separability_matrix`, `RST.__init__`) are kept to find their
definitions; and files it names outright (traceback frames, paths, dotted modules) are
recognised so the search can look inside them (see `search.py`).

Measured and removed (`cia_assets_tests/bench/bench_retrieval.py`): cutting long reports
into several dense pieces, and stripping issue-template noise; neither raised file Acc@5.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from cia_assets.lib.indexing import lexical
from cia_assets.lib.vectorstore.base import SparseVector

_TRACEBACK_FRAME = re.compile(r'File "([^"]+)", line \d+')
# File name extensions that make a word a file name (`fields.py`, `setup.cfg`), not code.
FILE_SUFFIXES = frozenset(
    {"py", "pyi", "pyx", "js", "jsx", "ts", "tsx", "go", "java", "kt", "rs", "rb", "php", "c", "h"}
    | {"cc", "cpp", "hpp", "cs", "scala", "swift", "sh", "sql", "yaml", "yml", "toml", "json"}
    | {"cfg", "ini", "txt", "md", "rst", "html", "css"}
)
_PATH = re.compile(
    rf"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.(?:{'|'.join(sorted(FILE_SUFFIXES, key=len, reverse=True))}))\b"
)
# `astropy.modeling.separable`, `from sklearn.linear_model import Ridge`: a dotted name of
# lowercase segments not followed by a call (a module path rather than `obj.method()`).
_DOTTED_MODULE = re.compile(r"(?<![\w.])([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)(?![\w(])")
# `lora_cpu`, `duck_array_ops`: a bare snake_case word not called and not part of a path or
# dotted name, which may be a module's name (matched only when a module has it, see RepoPaths).
_MODULE_NAME = re.compile(r"(?<![\w./\\-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w./(\\-])")
# `Dataset.update`, `RST.__init__`: any qualified name, for finding definitions.
_DOTTED_NAME = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)")
# `RST.__init__`, `ResolvedGrouper.__post_init__`: a special method qualified by a class (a
# CapWords name) is one definition; bare (`__init__`) it is in every other class, and on a value
# (`self.__class__`, `func.__name__`) it names none.
_CLASS_SPECIAL_METHOD = re.compile(r"(?<![\w.])(_*[A-Z]\w*\.__\w+__)(?![\w.])")


# A question's words that can only be code: snake_case and _private names, camelCase and
# CapWords with an inner capital after a lowercase letter (`NDArrayMixin`), dotted names; spans
# in backticks or quotes are taken whole.
_CODE_SHAPED = re.compile(
    r"(?<![\w.])(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|_+[A-Za-z0-9]\w*|[A-Za-z]\w*_\w*[A-Za-z0-9]"
    r"|[A-Za-z]*[a-z][A-Z]\w*)"
)
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_QUOTED = re.compile(r"`([^`\n]+)`|'([A-Za-z_][\w.]*)'|\"([A-Za-z_][\w.]*)\"")


_CODE_LITERALS = frozenset({"None", "True", "False", "self", "cls", "null", "true", "false", "nil"})


def named_code(question: str) -> list[str]:
    """The code names a text uses (`_getitem_with_mask`, `DataTree.from_dict`, `'fill_value'`),
    as written, first mention first."""
    names = [
        name
        for match in _QUOTED.finditer(question)
        for name in _DOTTED.findall(next(group for group in match.groups() if group))
        # Backticks mark code; quotes also mark plain words ("payments"): those must look like code.
        if match.group(1) is not None or _CODE_SHAPED.fullmatch(name)
    ]
    names += [match.group(0) for match in _CODE_SHAPED.finditer(_QUOTED.sub(" ", question))]
    # `[n]` names nothing; `e.g.` and `U.S.` are dotted but not code; a dunder (`__init__`) or a
    # literal (`None`) is in any code, unless a class qualifies the dunder (`RST.__init__`).
    return [
        name
        for name in dict.fromkeys(names)
        if max(len(part) for part in name.split(".")) > 2
        and (not _special_method(name) or _CLASS_SPECIAL_METHOD.fullmatch(name))
        and name not in _CODE_LITERALS
    ]


def _special_method(name: str) -> bool:
    """`__init__`, `self.__class__`: the name (or its last part) is a dunder."""
    return name.rsplit(".", 1)[-1].startswith("__")


@dataclass(frozen=True)
class QueryPlan:
    """One question, encoded for every retrieval list that `search.py` fuses."""

    text: str
    sparse: SparseVector
    exact: SparseVector
    identifiers: tuple[str, ...]  # compound and dotted identifiers, lowercased
    path_mentions: tuple[str, ...]  # path fragments named in the text, in order of mention
    code_names: tuple[str, ...] = ()  # code names as spelled (`named_code`), for symbol lookups
    definitions: frozenset[str] = frozenset()  # `definition_names`, for finding definitions

    @classmethod
    def of(cls, text: str, *, repeated_terms_count: bool = True) -> QueryPlan:
        identifiers = named_identifiers(text)
        return cls(
            text=text,
            sparse=lexical.encode_query(text, repeated_terms_count=repeated_terms_count),
            exact=lexical.encode_identifiers(text),
            identifiers=identifiers,
            path_mentions=path_mentions(text),
            code_names=tuple(named_code(text)),
            definitions=_definition_names(text, identifiers),
        )


def named_identifiers(text: str) -> tuple[str, ...]:
    """Compound and dotted identifiers the text names (`fill_value`, `Dataset.update`),
    lowercased, first mention first."""
    return tuple(dict.fromkeys([*lexical.identifiers(text), *dotted_names(text)]))


def definition_names(text: str) -> frozenset[str]:
    """The names the text uses whose definitions are worth finding, lowercased: its compound
    and dotted identifiers but special methods (`__init__`, `__call__` are defined in every
    other class), and the special methods a class qualifies (`ResolvedGrouper.__post_init__`)."""
    return _definition_names(text, named_identifiers(text))


def _definition_names(text: str, identifiers: Iterable[str]) -> frozenset[str]:
    # The identifiers are lowercased, so whether a class qualifies a dunder is read from the text.
    qualified = {match.group(1).lower() for match in _CLASS_SPECIAL_METHOD.finditer(text)}
    return frozenset(name for name in identifiers if not _special_method(name)) | qualified


def defines(symbol: str | None, names: AbstractSet[str]) -> bool:
    """A chunk whose symbol is `symbol` defines a named name: its own name (the last part of
    `Class.method`) is named, or its qualified name ends with a dotted name of the text
    (`Dataset.update`). Naming a class does not make every method of it a definition of
    that name."""
    qualified = (symbol or "").lower()
    if not qualified:
        return False
    if qualified.rsplit(".", 1)[-1] in names:
        return True
    return any("." in name and (qualified == name or qualified.endswith("." + name)) for name in names)


# A definition's keyword and name across the chunked languages (Python, JS/TS, Go, Rust, Java,
# C#...): finds a method defined inside a class that was chunked whole.
_DEFINITION = re.compile(
    r"\b(?:def|class|function|func|fn|interface|struct|enum|trait|type)\s+(?:\([^)]*\)\s*)?([A-Za-z_]\w*)"
)


def defines_in(text: str, names: AbstractSet[str]) -> bool:
    """The code defines a named name somewhere in it: the last part of a dotted one, when the
    code also names its qualifier (`Dataset.update`: a `def update` beside `Dataset`)."""
    return first_definition(text, names) is not None


def first_definition(text: str, names: AbstractSet[str]) -> tuple[int, str] | None:
    """Where the code first defines a named name (as `defines_in` judges) and that name as the
    code spells it (`update` for `dataset.update`): (offset in `text`, name), else None."""
    lowered = text.lower()
    wanted = {
        name.rsplit(".", 1)[-1]
        for name in names
        if "." not in name or all(part in lowered for part in name.split(".")[:-1])
    }
    for match in _DEFINITION.finditer(text):
        if match.group(1).lower() in wanted:
            return match.start(), match.group(1)
    return None


def dotted_names(text: str) -> list[str]:
    """`Dataset.update`, `models.Field.default`: qualified names, lowercased."""
    return [match.group(1).lower() for match in _DOTTED_NAME.finditer(text)]


def path_mentions(text: str) -> tuple[str, ...]:
    """Path fragments the text names: traceback frames, file paths, dotted module names, and
    snake_case words that may be modules' names.

    `File "/usr/lib/python3/site-packages/django/forms/fields.py", line 151` yields the full
    path (matched against the repo's files by suffix later), `astropy.modeling.separable`
    yields `astropy/modeling/separable`, "how does lora_cpu load..." yields `lora_cpu`.
    Order: first mention first, duplicates removed.
    """
    found: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []
    for pattern in (_TRACEBACK_FRAME, _PATH):
        for match in pattern.finditer(text):
            found.append((match.start(1), match.group(1).replace("\\", "/")))
            taken.append(match.span(1))
    # Module names, dotted first: the `fields.py` of a path or the `duck_array_ops` of
    # `xarray.core.duck_array_ops` is part of a mention, not one of its own.
    for pattern in (_DOTTED_MODULE, _MODULE_NAME):
        for match in pattern.finditer(text):
            start, end = match.span(1)
            if any(start < t_end and t_start < end for t_start, t_end in taken):
                continue
            found.append((start, match.group(1).replace(".", "/")))
            taken.append((start, end))
    found.sort(key=lambda item: item[0])
    seen: dict[str, None] = {}
    for _, fragment in found:
        cleaned = fragment.strip("./")
        if cleaned and cleaned not in seen:
            seen[cleaned] = None
    return tuple(seen)


def _with_module_readings(mentions: Sequence[str]) -> list[str]:
    """`ascii.rst` in `format="ascii.rst"` looks like a file but names the module
    `ascii/rst`: every dotted mention is also tried as a module path, after the file."""
    out: list[str] = []
    for mention in mentions:
        out.append(mention)
        last = mention.rsplit("/", 1)[-1]
        if "." in last and "/" not in mention:
            out.append(mention.replace(".", "/"))
    return out


class RepoPaths:
    """A repo's file paths, indexed by every path suffix and module suffix once, so each
    question's mentions are matched with dictionary lookups (see `search.py`'s cache)."""

    def __init__(self, files: Iterable[str]) -> None:
        self.by_suffix: dict[str, list[str]] = {}
        for path in files:
            segments = path.split("/")
            for start in range(len(segments)):
                self.by_suffix.setdefault("/".join(segments[start:]), []).append(path)
            stem, dot, _ = path.rpartition(".")
            if dot:
                module = stem[: -len("/__init__")] if stem.endswith("/__init__") else stem
                module_segments = module.split("/")
                for start in range(len(module_segments)):
                    self.by_suffix.setdefault("/".join(module_segments[start:]) + "/", []).append(path)

    def named_by(self, mentions: Sequence[str]) -> list[str]:
        """Files that the mentioned fragments name, best match of each mention first.

        A fragment matches a file when the file's path ends with it at a `/` boundary
        (`forms/fields.py` -> `django/forms/fields.py`), or, for a module fragment without
        an extension, with `<fragment>.<ext>` or `<fragment>/__init__.py`. An absolute path
        from a traceback matches through its longest suffix that is a repo path. Fragments
        of one segment without an extension (`numpy`, `self`) are too vague to match, except
        snake_case ones (`lora_cpu`, `duck_array_ops`): a module of that name is the file a
        question about it means.
        """
        matched: dict[str, None] = {}
        for mention in _with_module_readings(mentions):
            segments = mention.split("/")
            has_extension = "." in segments[-1]
            if not has_extension and len(segments) < 2 and "_" not in mention:
                continue
            for start in range(len(segments)):
                suffix = "/".join(segments[start:])
                if not has_extension:
                    suffix += "/"
                elif start == len(segments) - 1 and len(segments) > 1:
                    break  # a bare file name from a longer path matched nothing more specific
                candidates = self.by_suffix.get(suffix)
                if candidates:
                    # A bare name like `utils.py` can match dozens of files: only a few
                    # candidates are specific enough to trust.
                    if len(candidates) <= 3:
                        for candidate in sorted(candidates, key=len):
                            matched.setdefault(candidate, None)
                    break
        return list(matched)
