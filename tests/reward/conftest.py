"""Fixtures of the reward tests: a tiny random BERT folder and a separable toy review file."""

import pytest

from tests.reward._toy import make_tiny_bert, toy_reviews


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "reviews.parquet"
    toy_reviews().to_parquet(path)
    return path
