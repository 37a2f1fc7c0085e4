"""Seeds: every random choice of a run flows from (run seed, run index, step), so runs reproduce bit for bit."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (run seed, run index, step…): independent streams, reproducible."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def prompt_batch(prompts: list[str], batch_size: int, seed: int, position: int) -> list[str]:
    """``batch_size`` prompts starting at ``position`` of an endless stream of seeded per-epoch permutations."""
    n = len(prompts)
    out = []
    for i in range(position, position + batch_size):
        epoch, j = divmod(i, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch)))
        out.append(prompts[int(order[j])])
    return out
