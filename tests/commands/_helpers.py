"""Helpers of the command tests (imported by the tests; the fixtures are in conftest.py)."""

import torch

from tests.conftest import PROMPT_LINES, count_word_reward

PROMPTS = PROMPT_LINES  # written to .txt files, which are split into training and held-out lines
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tensor_reward(word: str):
    fn = count_word_reward(word)
    return lambda prompts, completions: torch.tensor(fn(prompts, completions), dtype=torch.float32)
