"""Bradley–Terry training and pairwise evaluation of reward models.

The loss on a (chosen, rejected) pair is −log σ(r(chosen) − r(rejected)). One training loop serves both
modes; only how a batch of pairs is scored differs:

* head only (frozen backbone): the pooled features of every review are computed once (and cached on disk),
  each step runs the 1-output head on them — microseconds a step;
* full fine-tuning: each step tokenises nothing new, pads the pairs' token ids and runs the whole model
  (chosen and rejected in one forward), with gradient clipping and bf16 autocast.

Optimiser (AdamW), schedule (linear warmup, then linear decay to 0), history and metrics are the same code.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from warprl.data import Pair, preference_pairs
from warprl.errors import UserError
from warprl.io import atomic_write
from warprl.models import cache_dir, disable_dropout
from warprl.optim import linear_warmup_decay, make_optimizer, set_lr
from warprl.reward.model import SCORE_BATCH, RewardModel, collate
from warprl.reward.scorers import ModelReward, Scorer

# ------------------------------------------------------------------------------------------------- math


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, center_coef: float = 0.0) -> torch.Tensor:
    """Bradley–Terry loss −log σ(r_c − r_r), averaged over pairs.

    ``center_coef`` adds TRL's ``center_rewards_coefficient`` term c·mean((r_c + r_r)²): it pins the mean
    reward near 0, which the BT loss alone leaves free (it only sees differences).
    """
    loss = -F.logsigmoid(chosen - rejected).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs where the chosen text scores strictly higher (ties count as wrong)."""
    return float((chosen > rejected).float().mean()) if chosen.numel() else float("nan")


def all_pairs_accuracy(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(r(pos) > r(neg)) over every (positive, negative) combination, ties ½ — the ROC AUC.

    A steadier estimate than accuracy on N fixed pairs: it uses all |pos|·|neg| pairings at the cost of a sort.
    """
    if not pos.numel() or not neg.numel():
        return float("nan")
    neg_sorted = torch.sort(neg.double()).values
    p = pos.double()
    below = torch.searchsorted(neg_sorted, p, right=False).double()
    at_or_below = torch.searchsorted(neg_sorted, p, right=True).double()
    return float(((below + at_or_below) / 2).mean() / neg.numel())


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Accuracy, margin and reward moments of scored pairs (what `reward eval` and `reward train` report)."""
    c, r = chosen.double(), rejected.double()
    return {
        "accuracy": pairwise_accuracy(c, r),
        "auc": all_pairs_accuracy(c, r),
        "margin_mean": float((c - r).mean()),
        "chosen_mean": float(c.mean()),
        "chosen_std": float(c.std()) if c.numel() > 1 else 0.0,
        "rejected_mean": float(r.mean()),
        "rejected_std": float(r.std()) if r.numel() > 1 else 0.0,
        "n_pairs": int(c.numel()),
    }


def evaluate_pairs(fn: Scorer, pairs: list[Pair], progress: bool = False) -> dict:
    """Pairwise accuracy, AUC, margin and reward moments of ``fn`` on (chosen, rejected) pairs."""
    if not pairs:
        raise UserError("no preference pairs to evaluate")
    if isinstance(fn, ModelReward):
        fn.progress = progress
    texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    t0 = time.perf_counter()
    scores = fn.score_texts(texts)
    rate = len(texts) / max(time.perf_counter() - t0, 1e-9)
    n = len(pairs)
    return {**pair_metrics(scores[:n], scores[n:]), "texts_per_s": round(rate, 2)}


# ---------------------------------------------------------------------------------- cached embeddings


def _fingerprint(rm: RewardModel) -> str:
    """A content hash of the backbone weights: the embedding cache key changes whenever they do."""
    h = hashlib.sha256()
    for p in rm.backbone_parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_embeddings(rm: RewardModel, texts: list[str], bf16: bool, progress: bool, use_cache: bool,
                      batch_size: int = SCORE_BATCH) -> tuple[torch.Tensor, float]:
    """Pooled features of ``texts`` (computed once; kept on disk as safetensors keyed by weights + texts).

    Returns ``(features, texts_per_second)``; the rate is 0 when they came from the cache.
    """
    path = None
    if use_cache:
        h = hashlib.sha256()
        h.update(f"{_fingerprint(rm)}|{rm.pooling}|{rm.max_length}|{bf16}|{batch_size}|".encode())
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass") + b"\0")
        path = cache_dir() / "embeddings" / f"{h.hexdigest()[:24]}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path))["features"], 0.0
            except Exception:  # a damaged cache entry is recomputed
                pass
    t0 = time.perf_counter()
    feats = rm.embed(texts, batch_size=batch_size, bf16=bf16, progress=progress)
    rate = len(texts) / max(time.perf_counter() - t0, 1e-9)
    if path is not None:
        try:
            atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, tmp))
        except OSError:
            pass  # a read-only cache only costs time
    return feats, rate


# ------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Recipe:
    """How the BT loop optimises: the same for head-only and full training."""

    lr: float
    epochs: float = 1.0
    batch_size: int = 16
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    center_rewards: float = 0.0
    max_grad_norm: float = 0.0  # 0 = no clipping
    seed: int = 0
    progress: bool = False


PairScorer = Callable[[list[tuple[int, int]]], tuple[torch.Tensor, torch.Tensor]]


def _epoch_pairs(train: pd.DataFrame, seed: int, epoch: int, index: dict[str, int]) -> list[tuple[int, int]]:
    """This epoch's (chosen, rejected) rows: a fresh seeded positive×negative pairing per epoch."""
    return [(index[p.chosen], index[p.rejected]) for p in preference_pairs(train, seed=seed, epoch=epoch)]


def fit(module: nn.Module, param_groups: list[dict], score: PairScorer, train: pd.DataFrame,
        index: dict[str, int], recipe: Recipe, *, val_accuracy: Callable[[], float] | None = None,
        desc: str = "reward train") -> dict:
    """The BT loop: AdamW over ``param_groups`` of ``module``, warmup + linear decay, optional clipping.

    ``score(rows)`` gives (chosen, rejected) rewards of a batch of (chosen, rejected) row indices into
    ``index``. Each epoch ends with a history row: the mean training loss, and ``val_accuracy()`` when given
    (cheap for a head on cached features), else the training accuracy of that epoch.
    """
    module.train()
    opt = make_optimizer(param_groups, recipe.lr, fused=False)  # torch's default kernel: results as ever
    n_pairs = len(_epoch_pairs(train, recipe.seed, 0, index))
    per_epoch = math.ceil(n_pairs / recipe.batch_size)
    total = max(1, math.ceil(recipe.epochs * per_epoch))
    warmup = int(recipe.warmup_ratio * total)
    history: list[dict] = []
    losses: list[float] = []
    correct = seen = 0
    pairs: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    with tqdm(total=total, desc=desc, disable=not recipe.progress, unit="step") as bar:
        for step in range(total):
            epoch, k = divmod(step, per_epoch)
            if k == 0:
                pairs = _epoch_pairs(train, recipe.seed, epoch, index)
            chunk = pairs[k * recipe.batch_size : (k + 1) * recipe.batch_size]
            chosen, rejected = score(chunk)
            loss = bt_loss(chosen, rejected, recipe.center_rewards)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(module.parameters(), recipe.max_grad_norm)
            set_lr(opt, linear_warmup_decay(step, total, warmup, lr=recipe.lr))
            opt.step()
            losses.append(float(loss.detach()))
            correct += int((chosen > rejected).sum())
            seen += len(chunk)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", acc=f"{correct / seen:.3f}")
            bar.update(1)
            if k == per_epoch - 1 or step == total - 1:
                row = {"epoch": epoch + 1, "train_loss": sum(losses) / len(losses)}
                if val_accuracy is not None:
                    with torch.no_grad():
                        row["val_accuracy"] = val_accuracy()
                else:
                    row["train_accuracy"] = correct / seen
                history.append(row)
                losses, correct, seen = [], 0, 0
    elapsed = time.perf_counter() - t0
    module.eval()
    return {"steps": total, "train_pairs_per_epoch": n_pairs, "history": history,
            "train_pairs_per_s": round(min(total * recipe.batch_size, n_pairs * recipe.epochs) / elapsed, 3)}


def train_head(rm: RewardModel, feats: torch.Tensor, train: pd.DataFrame, index: dict[str, int],
               val_feats: torch.Tensor, val_rows: list[tuple[int, int]], recipe: Recipe,
               zero_init: bool = True) -> dict:
    """Frozen backbone: BT on cached features ``feats`` (rows of ``index``), only the head learns.

    ``zero_init``: the BT problem on fixed features is convex, so a new head starts at 0 (no init noise);
    pass ``False`` to continue from the head ``rm`` holds (LP-FT from a trained probe).
    """
    head = rm.head
    if zero_init:
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
    head.float()
    vr = torch.tensor(val_rows)

    def score(chunk: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor(chunk)
        return head(feats[rows[:, 0]]).squeeze(-1), head(feats[rows[:, 1]]).squeeze(-1)

    def val_accuracy() -> float:
        v = head(val_feats).squeeze(-1)
        return pairwise_accuracy(v[vr[:, 0]], v[vr[:, 1]])

    groups = [{"params": list(head.parameters()), "weight_decay": recipe.weight_decay}]
    return fit(head, groups, score, train, index, recipe, val_accuracy=val_accuracy, desc="reward train (head)")


def train_full(rm: RewardModel, enc: dict[str, list[list[int]]], train: pd.DataFrame, index: dict[str, int],
               recipe: Recipe, bf16: bool = False, dropout: bool = False) -> dict:
    """Full fine-tuning: BT through the whole encoder on the tokenised reviews ``enc`` (rows of ``index``).

    No weight decay on biases and LayerNorm gains (the BERT recipe); bf16 autocast with fp32 weights.
    ``dropout=False`` switches dropout off: BT on pairs overfits little, and dropout costs 2x on a CPU (no
    fused attention).
    """
    model = rm.model
    if not dropout:
        disable_dropout(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    pad = rm.tokenizer.pad_token_id if rm.tokenizer.pad_token_id is not None else 0

    def score(chunk: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [c for c, _ in chunk] + [r for _, r in chunk]  # one forward for chosen and rejected
        r = rm(collate(enc, rows, pad, rm.device), bf16=bf16)
        return r[: len(chunk)], r[len(chunk) :]

    return fit(model, groups, score, train, index, recipe)
