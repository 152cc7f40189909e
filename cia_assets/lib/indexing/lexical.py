"""The sparse lexical vector: code-aware tokens -> hashed indices with BM25-style weights.

Dense embeddings are good at "what does this do" and bad at exact names; this vector is
the other half of hybrid search. A query for `HTTPServerError` must find the chunk that
defines it even when the embedding model has never seen the name, and a query for
"server error" should still reach it through the identifier's parts.

Weights are split the way Qdrant's sparse IDF modifier expects: documents carry a
BM25-saturated term frequency (`encode_document`), queries carry 1.0 per token
(`encode_query`), and Qdrant multiplies in the IDF of each index at query time from the
collection's own statistics, so no corpus-wide vocabulary has to be kept here.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from functools import lru_cache

from cia_assets.lib.vectorstore.base import SparseVector

# BM25 parameters. AVG_DOC_TOKENS is a constant rather than a collection statistic so a
# chunk's vector never depends on the rest of the corpus (incremental updates stay exact):
# roughly the token count of a 40-60 line chunk including identifier parts. Nothing has
# been tuned against it yet; changing any of these requires a full re-index.
BM25_K1 = 1.2
BM25_B = 0.75
AVG_DOC_TOKENS = 200.0

MIN_TOKEN_LEN = 2
# Longer runs are minified code, base64 or hashes: unique noise that only bloats the index.
MAX_TOKEN_LEN = 64

# Identifier-ish runs: a letter or underscore followed by word characters, or a run of
# digits. Anything else (/ . - :: operators, quotes) separates tokens, which is what
# splits paths like `src/http-server/main.py` and dotted names like `os.path.join`.
_WORD = re.compile(r"[^\W\d]\w*|\d+")
# Parts of one underscore-free ASCII piece: acronyms (HTTP in HTTPServer), Capitalised
# or lower words, trailing capitals, digit runs.
_CAMEL_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

# Words that occur in nearly every chunk (language keywords) or every question (English
# function words and question words) and so carry no signal; IDF would push them down
# anyway, but dropping them keeps vectors short and queries focused.
_STOPWORDS_TEXT = """
    a an and are as at be by do does for from how if in into is it its of on or the
    that then this to was were what when where which who why with can should there
    these those they we you not no but so all any some than

    self cls def return import pass none null nil true false elif else while lambda
    yield async await try except finally raise assert let var const function func fn
    public private protected static void
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


@lru_cache(maxsize=262_144)
def _identifier_tokens(word: str) -> tuple[str, ...]:
    """The lowercased identifier followed by its parts (snake_case, camelCase, digits).

    Cached because the same identifiers recur across every chunk of a repo.
    """
    whole = word.lower()
    parts: list[str] = []
    for piece in word.split("_"):
        if not piece:
            continue
        if piece.isascii():
            parts.extend(p.lower() for p in _CAMEL_PART.findall(piece))
        else:
            # Case rules of other scripts are not worth guessing: keep the piece whole.
            parts.append(piece.lower())
    tokens = [whole] if _keep(whole) else []
    # A plain word ("user") is its own single part: emit it once, or its term frequency
    # would double compared with a compound identifier.
    if len(parts) > 1 or (parts and parts[0] != whole):
        tokens.extend(p for p in parts if _keep(p))
    return tuple(tokens)


def _keep(token: str) -> bool:
    return MIN_TOKEN_LEN <= len(token) <= MAX_TOKEN_LEN and token not in STOPWORDS


def code_tokens(text: str) -> list[str]:
    """Lowercased identifier and word tokens of `text`, each identifier with its parts.

    `HTTPServerError` -> httpservererror, http, server, error;
    `get_user_id` -> get_user_id, get, user, id; `src/app.py` -> src, app, py.
    One-character tokens, over-long tokens and `STOPWORDS` are dropped.
    """
    out: list[str] = []
    for word in _WORD.findall(text):
        out.extend(_identifier_tokens(word))
    return out


@lru_cache(maxsize=262_144)
def token_index(token: str) -> int:
    """The sparse dimension of `token`: a 31-bit CRC32, stable across processes and runs.

    Python's hash() is salted per process, so it cannot be used: documents indexed by
    one process must match queries encoded by another.
    """
    return zlib.crc32(token.encode("utf-8", "surrogatepass")) & 0x7FFFFFFF


def _to_sparse(weights: dict[str, float]) -> SparseVector:
    merged: dict[int, float] = {}
    for token, weight in weights.items():
        index = token_index(token)
        # Two tokens that hash to one index are indistinguishable to the index anyway;
        # summing keeps the vector valid (unique indices) and loses no mass.
        merged[index] = merged.get(index, 0.0) + weight
    indices = sorted(merged)
    return SparseVector(indices=indices, values=[merged[i] for i in indices])


def encode_document(text: str) -> SparseVector:
    """Sparse vector of a chunk: BM25 saturated term frequency per token.

    `tf * (k1 + 1) / (tf + k1 * (1 - b + b * doclen / AVG_DOC_TOKENS))`; the IDF factor is
    applied by Qdrant's IDF modifier at query time.
    """
    counts = Counter(code_tokens(text))
    doc_len = sum(counts.values())
    norm = BM25_K1 * (1.0 - BM25_B + BM25_B * doc_len / AVG_DOC_TOKENS)
    return _to_sparse({token: tf * (BM25_K1 + 1.0) / (tf + norm) for token, tf in counts.items()})


def encode_query(text: str, *, repeated_terms_count: bool = False) -> SparseVector:
    """Sparse vector of a query: weight 1.0 per distinct token (IDF comes from Qdrant).

    With `repeated_terms_count`, a token used n times weighs 1 + ln(n): a long report keeps
    naming what it is about (`header_rows`, `rst`), which one mention of each word hides.
    """
    if not repeated_terms_count:
        return _to_sparse(dict.fromkeys(code_tokens(text), 1.0))
    counts = Counter(code_tokens(text))
    return _to_sparse({token: 1.0 + math.log(n) for token, n in counts.items()})


def encode_identifiers(text: str) -> SparseVector:
    """Only the whole compound identifiers of `text` (`refundDeadlineDays`, `check_permission`),
    none of their parts: the query for the exact-identifier list of a hybrid search.

    Searching `refundDeadlineDays` must rank the chunk containing that identifier above a
    chunk that merely shares `refund` and `days` and reads similar to the dense model; with
    its own RRF list the exact match wins regardless of how the other lists rank it.
    Plain words have no parts to confuse, so they yield nothing here.
    """
    return _to_sparse(dict.fromkeys(identifiers(text), 1.0))


def identifiers(text: str) -> list[str]:
    """The whole compound identifiers of `text`, lowercased, in order of first use."""
    wholes = [
        tokens[0]
        for word in _WORD.findall(text)
        if len(tokens := _identifier_tokens(word)) > 1 and tokens[0] == word.lower()
    ]
    return list(dict.fromkeys(wholes))
