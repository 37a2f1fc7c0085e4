"""Unit tests for warprl.eval.textmetrics."""

from __future__ import annotations

import pytest

from warprl.eval.textmetrics import (
    distinct_n,
    has_repeated_loop,
    mean_length_words,
    repetition_rate,
    tokenize,
    unique_fraction,
)


def test_tokenize() -> None:
    assert tokenize("Good movie!! It's fine.") == ["good", "movie", "!", "!", "it", "'", "s", "fine", "."]


def test_distinct_n() -> None:
    assert distinct_n(["a b", "a c"], 1) == pytest.approx(3 / 4)
    assert distinct_n(["a b", "a c"], 2) == pytest.approx(1.0)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    # case-insensitive
    assert distinct_n(["A a"], 1) == pytest.approx(1 / 2)


def test_has_repeated_loop() -> None:
    assert has_repeated_loop("good movie good movie good movie")
    assert has_repeated_loop("GOOD MOVIE GOOD MOVIE GOOD MOVIE")
    assert not has_repeated_loop("This film was a wonderful surprise, with great acting and a clever plot.")
    assert not has_repeated_loop("good movie good")  # fewer than n tokens
    assert has_repeated_loop("the the the", n=1)
    assert not has_repeated_loop("a b c d a b c d", min_repeats=3)


def test_repetition_rate_and_unique_fraction() -> None:
    texts = ["good movie good movie good movie", "A fine and honest little film.", " x ", "x"]
    assert repetition_rate(texts) == pytest.approx(1 / 4)
    assert unique_fraction(["x", "x", "y"]) == pytest.approx(2 / 3)
    assert unique_fraction(["x ", " x"]) == pytest.approx(1 / 2)


def test_mean_length_words() -> None:
    assert mean_length_words(["one two three", "four!"]) == pytest.approx(2.0)


def test_empty_inputs() -> None:
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["", "a"], 2) == 0.0
    assert repetition_rate([]) == 0.0
    assert unique_fraction([]) == 0.0
    assert mean_length_words([]) == 0.0
    assert not has_repeated_loop("")
