"""Optimisers and learning-rate schedules: the one place RL, reward training and SFT take them from.

A schedule maps a step (0-based: the step about to be taken) to the learning rate of that step. Each takes
the peak ``lr`` (default 1.0, which makes it the multiplier of a ``LambdaLR``) and is applied with
:func:`set_lr` before ``opt.step()``::

    opt = make_optimizer(model.parameters(), lr=1e-5, kind="adamw", weight_decay=0.0)
    for step in range(total):
        set_lr(opt, warmup_cosine(step, total, warmup, lr=1e-5))
        ...
        opt.step()
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

KINDS = ("adam", "adamw")


def make_optimizer(params: Iterable, lr: float, *, kind: str = "adamw", weight_decay: float = 0.0,
                   fused: bool = True) -> torch.optim.Optimizer:
    """Adam or AdamW over ``params`` (tensors or param-group dicts, as torch takes them).

    ``weight_decay`` is AdamW's decoupled decay; plain Adam takes none (it is ignored there). ``fused``: the
    fused kernel is ~5x faster than foreach on a CPU (0.06 vs 0.32 s a step for SmolLM2-135M) and
    deterministic; ``False`` is torch's default implementation.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown optimiser {kind!r} ({' or '.join(KINDS)})")
    kw = {"fused": True} if fused else {}
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, **kw)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kw)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group of ``opt`` the learning rate ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr


def warmup_constant(step: int, warmup: int, lr: float = 1.0) -> float:
    """Linear warmup ``lr·1/warmup … lr`` over the first ``warmup`` steps, then ``lr`` (RL's schedule)."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    return lr


def linear_warmup_decay(step: int, total: int, warmup: int, lr: float = 1.0) -> float:
    """Linear 0→``lr`` over ``warmup`` steps, then linear ``lr``→0 at ``total`` (reward training's schedule)."""
    if step < warmup:
        return lr * ((step + 1) / warmup)
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def warmup_cosine(step: int, total: int, warmup: int, lr: float = 1.0, min_ratio: float = 0.0) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then a half cosine from ``lr`` down to ``min_ratio·lr``
    at step ``total`` (and after it)."""
    if step < warmup:
        return lr * ((step + 1) / warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
