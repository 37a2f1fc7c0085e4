"""Pure tensor building blocks for REINFORCE / RLOO / WARP-style policy-gradient training.

Conventions
-----------
* Per-token tensors have shape ``[B, T]`` and cover the COMPLETION tokens only (the prompt is
  excluded). They come with a ``mask`` of the same shape (float or bool): 1 for real completion
  tokens, 0 for padding and for everything after the first EOS (see :func:`completion_mask`).
* Per-sequence tensors have shape ``[B]``.
* For RLOO the batch is grouped by prompt: ``B = P * k`` and the ``k`` samples of prompt ``p``
  occupy rows ``p*k, ..., p*k + k - 1`` (i.e. ``rewards.view(P, k)`` gives one row per prompt).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

KLEstimator = Literal["k1", "k3"]

__all__ = [
    "KLEstimator",
    "completion_mask",
    "entropy_from_logits",
    "kl_per_token",
    "kl_regularised_reward",
    "masked_mean",
    "masked_sum",
    "policy_gradient_loss",
    "reinforce_advantages",
    "rloo_advantages",
    "sequence_kl",
    "update_baseline",
    "whiten",
]


def _apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where rather than multiplication so that inf/nan in padded positions cannot leak
    # through as 0 * inf = nan.
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over positions where ``mask`` is non-zero (over all elements if ``dim`` is None)."""
    masked = _apply_mask(x, mask)
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is non-zero; 0 where the mask is empty."""
    total = masked_sum(x, mask, dim=dim)
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim=dim)
    # clamp avoids 0/0 for fully-masked rows; their sum is 0 so the mean is reported as 0.
    return total / count.clamp(min=1.0)


def kl_per_token(
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    estimator: KLEstimator = "k1",
) -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) from log-probs of the sampled tokens, ``[B, T]``.

    * ``k1``: ``logp - logp_ref`` (unbiased, can be negative per token).
    * ``k3``: ``(r - 1) - log r`` with ``log r = logp_ref - logp`` (Schulman's unbiased,
      low-variance estimator; always >= 0).

    Positions where ``mask`` is 0 are set to 0.
    """
    if estimator == "k1":
        kl = logp - logp_ref
    elif estimator == "k3":
        log_r = logp_ref - logp
        # expm1 keeps precision when the two policies are close (log_r ~ 0).
        kl = torch.expm1(log_r) - log_r
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")
    return _apply_mask(kl, mask)


def sequence_kl(
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    estimator: KLEstimator = "k1",
) -> torch.Tensor:
    """Sequence-level KL estimate ``[B]``: per-token KL summed over the completion tokens."""
    return kl_per_token(logp, logp_ref, mask, estimator=estimator).sum(dim=-1)


def kl_regularised_reward(reward: torch.Tensor, seq_kl: torch.Tensor, beta: float) -> torch.Tensor:
    """KL-regularised reward ``r - beta * KL`` per sequence, ``[B]``."""
    return reward - beta * seq_kl


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE Leave-One-Out advantages ``[B]``.

    ``A_i = R_i - mean_{j != i} R_j`` within each group of ``k`` samples of the same prompt
    (equivalently ``k / (k - 1) * (R_i - mean_group)``), so advantages sum to 0 per group.
    ``rewards`` must be laid out grouped by prompt (rows ``p*k .. p*k+k-1`` for prompt ``p``).
    """
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got k={k}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if rewards.numel() % k != 0:
        raise ValueError(f"batch size {rewards.numel()} is not a multiple of k={k}")
    grouped = rewards.view(-1, k)
    loo_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)
    return (grouped - loo_mean).reshape(-1)


def reinforce_advantages(rewards: torch.Tensor, baseline: float | None) -> torch.Tensor:
    """Vanilla REINFORCE advantages ``R - baseline`` (just ``R`` when ``baseline`` is None)."""
    return rewards if baseline is None else rewards - baseline


def update_baseline(baseline: float | None, rewards: torch.Tensor, decay: float = 0.9) -> float:
    """Exponential moving average of the mean batch reward.

    The first call (``baseline is None``) initialises the baseline to the batch mean; afterwards
    ``decay * baseline + (1 - decay) * mean(rewards)``.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    batch_mean = float(rewards.detach().float().mean())
    if baseline is None:
        return batch_mean
    return decay * float(baseline) + (1.0 - decay) * batch_mean


def whiten(x: torch.Tensor, eps: float = 1e-8, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` to unit (population) std; also to zero mean when ``shift_mean``.

    With ``shift_mean=False`` the original mean is kept (only the spread is rescaled), which is
    how advantage whitening is usually done when the sign of the mean matters.
    """
    mean = x.mean()
    # Population variance: defined for a single element and matches "std 1" exactly.
    var = x.var(unbiased=False) if x.numel() > 0 else x.new_zeros(())
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def policy_gradient_loss(
    logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    token_mean: bool = False,
) -> torch.Tensor:
    """REINFORCE surrogate loss whose gradient is the policy gradient.

    ``advantages`` ``[B]`` are detached (they are treated as constants).

    * default: ``-mean_b(A_b * sum_t logp[b, t] * mask[b, t])`` (sequence-level log-likelihood).
    * ``token_mean=True``: ``-sum_{b,t}(A_b * logp * mask) / sum(mask)``.
    """
    adv = advantages.detach().to(logp.dtype).unsqueeze(-1)
    weighted = _apply_mask(adv * logp, mask)
    if token_mean:
        return -weighted.sum() / mask.to(logp.dtype).sum().clamp(min=1.0)
    return -weighted.sum(dim=-1).mean()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: ``[B, T, V] -> [B, T]``."""
    logp = F.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    # Masked-out vocab entries (logit -inf) give 0 * -inf = nan; their contribution is 0.
    plogp = torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device))
    return -plogp.sum(dim=-1)


def completion_mask(
    completion_ids: torch.Tensor, eos_token_id: int, pad_token_id: int | None = None
) -> torch.Tensor:
    """Float mask ``[B, T]`` of real completion tokens.

    1 up to and INCLUDING the first EOS, 0 after it (whatever the later tokens are, so this also
    works when ``eos_token_id == pad_token_id``). Rows without EOS are all ones, except that when
    a distinct ``pad_token_id`` is given, a trailing run of pad tokens is masked out too.
    """
    is_eos = completion_ids == eos_token_id
    # Number of EOS tokens strictly before each position; 0 means we have not finished yet.
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    mask = eos_before == 0
    if pad_token_id is not None and pad_token_id != eos_token_id:
        not_pad = completion_ids != pad_token_id
        # A position is in the trailing pad run iff no non-pad token occurs at or after it.
        non_pad_at_or_after = torch.flip(torch.cumsum(torch.flip(not_pad.long(), [-1]), dim=-1), [-1])
        mask = mask & (non_pad_at_or_after > 0)
    return mask.float()
