"""A tiny random BERT and a separable toy review set, shared by the reward tests and the reliability suite."""

from __future__ import annotations

import random

import pandas as pd
import torch

POSITIVE = "good great wonderful love fun".split()
NEGATIVE = "bad awful terrible hate boring".split()
FILLER = "the a movie film plot actor story was is it this and".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_bert(path):
    """A 2-layer random BERT (hidden 32) with a WordPiece tokenizer over the toy words, saved as an HF folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = path / "vocab.txt"
    path.mkdir(parents=True, exist_ok=True)
    vocab.write_text("\n".join(SPECIALS + POSITIVE + NEGATIVE + FILLER) + "\n")
    tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)  # transformers 5 names it `vocab`
    assert tok("good bad")["input_ids"][1:3] == [len(SPECIALS), len(SPECIALS) + len(POSITIVE)]
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def toy_reviews(n_per_class: int = 60, seed: int = 0) -> pd.DataFrame:
    """Separable reviews: three filler words plus two words of their class's sentiment."""
    rng = random.Random(seed)
    rows = []
    for label, words in ((1, POSITIVE), (0, NEGATIVE)):
        for _ in range(n_per_class):
            text = rng.sample(FILLER, 3) + rng.sample(words, 2)
            rng.shuffle(text)
            rows.append({"text": " ".join(text), "label": label})
    return pd.DataFrame(rows)
