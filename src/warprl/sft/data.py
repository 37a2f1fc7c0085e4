"""Texts → token blocks for causal-LM training, and the fixed order in which a run visits them.

Two layouts, both pure functions of (texts, tokenizer, seed):

* packing: every text + EOS is concatenated into one stream and cut into ``max_length`` blocks (no padding,
  the remainder is dropped); a block may span two reviews, separated by EOS;
* bucketing: each text (+ EOS) is truncated to ``max_length``; texts of similar length share a micro-batch
  (sorted inside seeded pools of 50 batches), padded on the right, the padding masked out of the loss.

``micro_batches`` lists every micro-batch of the run up front (per-epoch seeded permutations), so step ``s``
is always the same data: a resumed run replays exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from warprl.seeding import derive_seed

POOL = 50  # batches per sorting pool of the length buckets


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long, 0 on right padding

    @property
    def tokens(self) -> int:
        """Target tokens the loss averages over (every real token but the first of each row)."""
        return int((self.attention_mask[:, 1:]).sum())


def tokenize(texts: list[str], tokenizer, chunk: int = 1000, max_tokens: int = 0, eos: bool = True) -> list[list[int]]:
    """Token ids of each text (+ EOS); with ``max_tokens`` stop once that many tokens are gathered."""
    out: list[list[int]] = []
    total = 0
    eos_id = tokenizer.eos_token_id
    for i in range(0, len(texts), chunk):
        ids = tokenizer(texts[i:i + chunk], add_special_tokens=False)["input_ids"]
        for row in ids:
            row = list(row) + ([eos_id] if eos and eos_id is not None else [])
            out.append(row)
            total += len(row)
        if max_tokens and total >= max_tokens:
            break
    return out


def pack(rows: list[list[int]], max_length: int) -> torch.Tensor:
    """Concatenate ``rows`` and cut the stream into ``[N, max_length]`` blocks; the tail is dropped."""
    stream = [t for row in rows for t in row]
    n = len(stream) // max_length
    if n == 0:
        return torch.empty(0, max_length, dtype=torch.long)
    return torch.tensor(stream[: n * max_length], dtype=torch.long).view(n, max_length)


def pad_right(rows: list[list[int]], pad_id: int) -> Batch:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return Batch(ids, mask)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(derive_seed(seed, "sft-epoch", epoch))
    return torch.randperm(n, generator=g).tolist()


def packed_batches(blocks: torch.Tensor, batch_size: int, seed: int, epoch: int) -> list[Batch]:
    """One epoch of packed blocks in a seeded order, ``batch_size`` blocks per micro-batch (tail dropped)."""
    order = _epoch_order(len(blocks), seed, epoch)
    out = []
    for i in range(0, len(order) - batch_size + 1, batch_size):
        ids = blocks[order[i:i + batch_size]]
        out.append(Batch(ids, torch.ones_like(ids)))
    return out


def bucketed_batches(rows: list[list[int]], max_length: int, batch_size: int, pad_id: int, seed: int,
                     epoch: int) -> list[Batch]:
    """One epoch of length-bucketed micro-batches: truncate, sort inside seeded pools, shuffle the batches."""
    rows = [r[:max_length] for r in rows if len(r) >= 2]
    order = _epoch_order(len(rows), seed, epoch)
    batches: list[list[list[int]]] = []
    pool = batch_size * POOL
    for i in range(0, len(order), pool):
        chunk = sorted(order[i:i + pool], key=lambda j: len(rows[j]))
        batches += [[rows[j] for j in chunk[k:k + batch_size]] for k in range(0, len(chunk), batch_size)
                    if len(chunk[k:k + batch_size]) == batch_size]
    random.Random(derive_seed(seed, "sft-buckets", epoch)).shuffle(batches)
    return [pad_right(b, pad_id) for b in batches]


def micro_batches(rows: list[list[int]], *, packing: bool, max_length: int, batch_size: int, pad_id: int,
                  seed: int, max_tokens: int = 0, epochs: float = 1.0) -> list[Batch]:
    """Every micro-batch of a run: ``max_tokens`` target tokens if set, else ``epochs`` passes (fractions allowed)."""
    blocks = pack(rows, max_length) if packing else None
    out: list[Batch] = []
    epoch, tokens = 0, 0
    per_epoch: int | None = None
    while True:
        batches = (packed_batches(blocks, batch_size, seed, epoch) if packing
                   else bucketed_batches(rows, max_length, batch_size, pad_id, seed, epoch))
        if not batches:
            return out
        per_epoch = per_epoch or len(batches)
        for b in batches:
            if max_tokens and tokens >= max_tokens:
                return out
            if not max_tokens and len(out) >= round(epochs * per_epoch):
                return out
            out.append(b)
            tokens += b.tokens
        epoch += 1
