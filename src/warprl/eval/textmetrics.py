"""Simple diversity / degeneration metrics for evaluating generated texts (pure Python).

Tokenisation: text is lowercased and split with the regex ``\\w+|[^\\w\\s]``, i.e. runs of word
characters form one token and every other non-whitespace character (punctuation) is its own
token. ``"Good movie!!"`` -> ``["good", "movie", "!", "!"]``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

__all__ = [
    "distinct_n",
    "has_repeated_loop",
    "mean_length_words",
    "ngrams",
    "repetition_rate",
    "tokenize",
    "unique_fraction",
]

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_WORD_RE = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase word/punctuation tokens of ``text`` (see module docstring)."""
    return _TOKEN_RE.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous (overlapping) n-grams of ``tokens``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams, pooled ACROSS all texts (0.0 if there are none).

    N-grams never span two texts.
    """
    all_ngrams: list[tuple[str, ...]] = []
    for text in texts:
        all_ngrams.extend(ngrams(tokenize(text), n))
    if not all_ngrams:
        return 0.0
    return len(set(all_ngrams)) / len(all_ngrams)


def has_repeated_loop(text: str, n: int = 4, min_repeats: int = 2) -> bool:
    """True if some token n-gram occurs at least ``min_repeats`` times in ``text``.

    Occurrences are counted over all positions, overlapping ones included, so
    ``"good movie good movie good movie"`` (4-gram ``good movie good movie`` at positions 0
    and 2) is a loop. Texts with fewer than ``n`` tokens are never loops.
    """
    if min_repeats < 2:
        raise ValueError(f"min_repeats must be >= 2, got {min_repeats}")
    counts = Counter(ngrams(tokenize(text), n))
    return any(c >= min_repeats for c in counts.values())


def repetition_rate(texts: Sequence[str], n: int = 4) -> float:
    """Share of texts for which :func:`has_repeated_loop` is True (0.0 for an empty list)."""
    if not texts:
        return 0.0
    return sum(has_repeated_loop(t, n=n) for t in texts) / len(texts)


def unique_fraction(texts: Sequence[str]) -> float:
    """Number of distinct texts (after stripping surrounding whitespace) / total (0.0 if empty)."""
    if not texts:
        return 0.0
    return len({t.strip() for t in texts}) / len(texts)


def mean_length_words(texts: Sequence[str]) -> float:
    """Mean number of words per text (``\\w+`` tokens; punctuation not counted); 0.0 if empty."""
    if not texts:
        return 0.0
    return sum(len(_WORD_RE.findall(t)) for t in texts) / len(texts)
