"""Sparse lexical vectors for hybrid retrieval: BM25 term weights over hashed tokens.

A chunk's vector holds, per token, BM25's saturated term frequency
`tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / AVG_LENGTH))`; a question's holds 1 per
distinct token. The store's sparse vector is configured with Qdrant's IDF modifier, so
the dot product Qdrant computes is BM25 with the IDF of the whole collection.

Tokens are lower-cased words (light suffix folding, stopwords dropped) and, for words
joined by `_ - . : /` (`max_wal_senders`, `E-4471`, `pg_hba.conf`), the whole compound
too, unfolded: an exact error code or option name then matches more strongly than its
parts. Token ids are CRC-32 of the token, stable across processes and versions.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass

__all__ = ["SparseVector", "encode_document", "encode_query", "tokens"]

K1 = 1.2
B = 0.75
#: Typical chunk length in tokens (chunks are at most 700 characters).
AVG_LENGTH = 110.0

_COMPOUND = re.compile(r"[a-z0-9]+(?:[_\-.:/][a-z0-9]+)*")
_PART = re.compile(r"[a-z0-9]+")
_STOPWORD_TEXT = """a about above after all also am an and any are as at be because been being but by can
    could did do does doing for from had has have having he her here how i if in into is it its
    me my myself no nor not of off on once only or other our out over own same she should so
    some such than that the their them then there these they this those through to too under
    until up very was we were what when where which while who whom why will with would you your
    yours"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True)
class SparseVector:
    """Token ids (ascending) and their weights."""

    indices: list[int]
    values: list[float]


def _fold(word: str) -> str:
    for suffix, keep in (
        ("ies", "y"),
        ("sses", "ss"),
        ("ing", ""),
        ("ed", ""),
        ("es", ""),
        ("s", ""),
    ):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)] + keep
    return word


def tokens(text: str) -> list[str]:
    """The lexical tokens of `text`, in order, repeated as often as they occur."""
    out: list[str] = []
    for compound in _COMPOUND.findall(text.lower()):
        parts = _PART.findall(compound)
        if len(parts) > 1:
            out.append(compound)
        out.extend(
            _fold(part)
            for part in parts
            if part not in _STOPWORDS and (len(part) > 1 or part.isdigit())
        )
    return out


def _token_id(token: str) -> int:
    return zlib.crc32(token.encode())


def _vector(weights: dict[int, float]) -> SparseVector:
    ordered = sorted(weights.items())
    return SparseVector([i for i, _ in ordered], [w for _, w in ordered])


def encode_document(text: str) -> SparseVector:
    """A chunk's sparse vector: BM25 saturated term frequencies (IDF comes from the store)."""
    counts = Counter(tokens(text))
    length = sum(counts.values())
    norm = K1 * (1 - B + B * length / AVG_LENGTH)
    weights: dict[int, float] = {}
    for token, tf in counts.items():
        token_id = _token_id(token)
        weights[token_id] = weights.get(token_id, 0.0) + tf * (K1 + 1) / (tf + norm)
    return _vector(weights)


def encode_query(text: str) -> SparseVector:
    """A question's sparse vector: weight 1 per distinct token."""
    return _vector({_token_id(token): 1.0 for token in set(tokens(text))})
