"""Sampling one token per row from a decode step's logits: temperature, top-k, top-p, the draw, its log-prob.

The rollout engine (:mod:`warprl.rl.engine`) calls :func:`sample_next` once per decode step. It mirrors HF's
logits warpers; the default draw takes one uniform per row against the CDF, which samples the distribution of
HF's ``torch.multinomial`` at a small part of its cost, but other tokens under the same seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_next(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                ban: int | None = None, draw: str = "inverse_cdf") -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row from raw fp32 logits [R, V]; return (tokens, log π(token) at ``temperature``).

    The log-prob is of the untruncated tempered distribution (the one ``sequence_logprobs`` scores); the
    token is drawn after top-k and top-p truncation, and never ``ban`` (EOS before ``min_new_tokens``).
    The operations mirror HF's logits warpers; the token is drawn from one uniform per row against the CDF,
    the same distribution as HF's ``torch.multinomial`` (``draw="multinomial"``: its very tokens).
    """
    scaled = logits if temperature == 1.0 else logits / temperature  # x / 1 is x: skip a pass over [R, V]
    # torch.logsumexp's own operations, written out so that the draw can reuse exp(scaled − max).
    top = scaled.amax(dim=-1, keepdim=True)
    top = top.masked_fill(top.abs() == float("inf"), 0.0)
    weights = (scaled - top).exp_()
    lse = weights.sum(-1).log_().add_(top.squeeze(-1))
    scores = scaled
    if ban is not None:  # HF's MinNewTokensLengthLogitsProcessor acts before the temperature: same result
        scores = scores.clone()
        scores[:, ban] = -float("inf")
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cum <= (1 - top_p)
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    if scores is not scaled:  # truncated: the dropped entries weigh nothing
        weights = weights.masked_fill(scores == -float("inf"), 0.0)
    tokens = DRAWS[draw](scores, weights)
    logp = scaled.gather(-1, tokens[:, None]).squeeze(1) - lse
    return tokens, logp


def _multinomial_draw(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One token per row by ``torch.multinomial`` on softmax(scores): HF generate's draw, token for token."""
    return torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)


CDF_BLOCK = 1024  # vocabulary entries per block of the two-level CDF (SmolLM2's 49,152 = 48 blocks)


def _inverse_cdf_draw(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One token per row from one uniform per row: the first index whose CDF of ``weights`` [R, V] (≥ 0,
    unnormalised) exceeds it.

    The same distribution as ``torch.multinomial`` (which races an exponential per entry: V random numbers
    per row, 17 ms a step at 16 × 49k on a 2-core CPU) but other tokens under the same seed. The CDF
    has two levels, because a running sum over V entries is a chain of V dependent additions (4 ms at
    64 × 49k): block sums and their running sum pick a block of ``CDF_BLOCK`` entries, then the running sum
    of that block alone picks the entry.
    """
    rows, vocab = weights.shape
    block = min(CDF_BLOCK, vocab)
    n_blocks = -(-vocab // block)
    padded = weights if n_blocks * block == vocab else F.pad(weights, (0, n_blocks * block - vocab))
    blocks = padded.view(rows, n_blocks, block)
    block_cdf = blocks.sum(-1).cumsum(-1)  # [R, blocks]
    total = block_cdf[:, -1:]
    u = torch.minimum(torch.rand_like(total) * total, total.nextafter(torch.zeros_like(total)))  # u < CDF's end
    b = torch.searchsorted(block_cdf, u, right=True).clamp_(max=n_blocks - 1)  # [R, 1]
    below = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(u))
    inner = blocks.gather(1, b[:, :, None].expand(rows, 1, block)).squeeze(1).cumsum(-1)  # [R, block]
    j = torch.searchsorted(inner, u - below, right=True).clamp_(max=block - 1)
    tokens = (b * block + j).squeeze(1)
    # Rounding (block sums against the block's running sum, or a parallel cumsum on CUDA) may land on a
    # zero-weight entry or the padding: never draw one, draw such rows again by torch.multinomial.
    stray = tokens >= vocab
    stray |= weights.gather(1, tokens.clamp(max=vocab - 1)[:, None]).squeeze(1) == 0
    if stray.any():
        tokens[stray] = torch.multinomial(weights[stray], num_samples=1).squeeze(1)
    return tokens


DRAWS = {"inverse_cdf": _inverse_cdf_draw, "multinomial": _multinomial_draw}  # sample_next(draw=...) → draw
