"""Per-token negative log-likelihood of texts under a causal LM: the SFT loss and `warprl sft eval`.

Token t of a row is predicted from tokens < t; the mean is over real (non-pad) target tokens, so a row of
L real tokens contributes L − 1 predictions (no BOS is invented; the tokenizer's own special tokens are
kept as it adds them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from warprl.sft.data import Batch, pad_right


def nll_sum(model, batch: Batch) -> tuple[torch.Tensor, int]:
    """Summed NLL of the batch's target tokens (differentiable) and their count."""
    ids, mask = batch.input_ids, batch.attention_mask
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = ids[:, 1:]
    tmask = mask[:, 1:].to(logits.dtype)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (nll * tmask.reshape(-1)).sum(), int(tmask.sum())


def encode_for_eval(texts: list[str], tokenizer, max_length: int) -> list[list[int]]:
    """Each text's token ids (the tokenizer's special tokens included), truncated to ``max_length``."""
    ids = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    return [list(r) for r in ids if len(r) >= 2]


@torch.no_grad()
def corpus_nll(model, rows: list[list[int]], pad_id: int, batch_size: int = 16, progress=None) -> dict:
    """Per-token NLL and perplexity over ``rows`` (batched by length; the result does not depend on batching
    beyond float rounding)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    total, count = 0.0, 0
    for i in range(0, len(order), batch_size):
        b = pad_right([rows[j] for j in order[i:i + batch_size]], pad_id)
        s, n = nll_sum(model, Batch(b.input_ids.to(device), b.attention_mask.to(device)))
        total += float(s)
        count += n
        if progress is not None:
            progress(len(order[i:i + batch_size]))
    model.train(was_training)
    mean = total / max(count, 1)
    return {"nll_per_token": mean, "perplexity": math.exp(min(mean, 700.0)), "tokens": count, "texts": len(rows)}
