"""Helpers of the command tests (imported by the tests; the fixtures are in conftest.py)."""

import torch

from tests.conftest import count_word_reward

PROMPTS = ["the movie was", "I love this film", "the plot is", "this actor was", "a story and", "the end"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tensor_reward(word: str):
    fn = count_word_reward(word)
    return lambda prompts, completions: torch.tensor(fn(prompts, completions), dtype=torch.float32)
