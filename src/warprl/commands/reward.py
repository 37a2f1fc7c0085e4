"""`warprl reward train|eval|score`: train a Bradley–Terry reward model, measure one on pairs, score texts.

`train` follows the one output-folder policy (:mod:`warprl.commands.outdir`): the folder is checked first
(read only), then the data and the backbone load and the model trains, and only then is the folder replaced
(``--overwrite``) and written, so a bad input or a failed run never deletes a model.
"""

from __future__ import annotations

import json
import random
import time

import torch

from warprl.commands import outdir
from warprl.config import RewardEvalConfig, RewardScoreConfig, RewardTrainConfig, to_dict, to_yaml
from warprl.data import preference_pairs, read_labelled, split_labelled
from warprl.errors import UserError
from warprl.models import pick_device
from warprl.reward.bradley_terry import (
    Recipe,
    all_pairs_accuracy,
    cached_embeddings,
    evaluate_pairs,
    pair_metrics,
    train_full,
    train_head,
)
from warprl.reward.model import from_backbone, head_pooling, init_head
from warprl.reward.scorers import load_reward


def _pooling(cfg: RewardTrainConfig) -> str:
    return cfg.pooling if cfg.pooling != "auto" else ("mean" if cfg.freeze_backbone else "native")


def _check_flags(cfg: RewardTrainConfig, pooling: str) -> None:
    if cfg.export_head and not cfg.freeze_backbone:
        raise UserError("--export-head needs --freeze-backbone (a bare head only fits an unchanged backbone)")
    if cfg.export_head and pooling != "mean":
        raise UserError("a bare head can only be exported for mean pooling (--pooling mean)")
    if cfg.init_head:
        theirs = head_pooling(cfg.init_head)
        if theirs != pooling:
            raise UserError(f"head {cfg.init_head} reads {theirs} pooling, not {pooling} (see --pooling)")


def train(cfg: RewardTrainConfig) -> dict:
    """BT-train an RM on ``cfg.data`` into ``cfg.out``; returns the metrics (also in ``metrics.json``).

    The validation reviews (``val_fraction``, seeded) are never trained on; the metrics are measured on up to
    ``val_pairs`` positive/negative pairs of them with the saved model's own scoring path.
    """
    decision = outdir.check(cfg.out, outdir.REWARD, overwrite=cfg.overwrite, what="reward model")
    pooling = _pooling(cfg)
    _check_flags(cfg, pooling)
    train_df, val = split_labelled(read_labelled(cfg.data), cfg.data, cfg.val_fraction, cfg.seed, cfg.max_pairs)
    val_pairs = preference_pairs(val, seed=cfg.seed, limit=cfg.val_pairs)
    device = pick_device(cfg.device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rm = from_backbone(cfg.backbone, device=device, pooling=pooling, max_length=cfg.max_length)
    if cfg.init_head:
        init_head(rm, cfg.init_head)
    texts = list(dict.fromkeys(train_df["text"].tolist()))  # unique, in order: a duplicate review is one row
    index = {t: i for i, t in enumerate(texts)}
    val_texts = list(dict.fromkeys([p.chosen for p in val_pairs] + [p.rejected for p in val_pairs]))
    val_index = {t: i for i, t in enumerate(val_texts)}
    val_rows = [(val_index[p.chosen], val_index[p.rejected]) for p in val_pairs]
    recipe = Recipe(lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size, warmup_ratio=cfg.warmup_ratio,
                    weight_decay=cfg.weight_decay, center_rewards=cfg.center_rewards, seed=cfg.seed,
                    progress=cfg.progress, max_grad_norm=0.0 if cfg.freeze_backbone else cfg.max_grad_norm)
    t0 = time.perf_counter()
    metrics: dict = {"mode": "frozen" if cfg.freeze_backbone else "full", "backbone": cfg.backbone,
                     "pooling": pooling, "data": cfg.data, "seed": cfg.seed, "train_reviews": len(texts),
                     "val_reviews": len(val), "bf16": cfg.bf16}
    if cfg.freeze_backbone:
        for p in rm.backbone_parameters():
            p.requires_grad_(False)
        rm.model.eval()
        feats, rate = cached_embeddings(rm, texts, cfg.bf16, cfg.progress, cfg.cache_embeddings)
        val_feats, _ = cached_embeddings(rm, val_texts, cfg.bf16, cfg.progress, cfg.cache_embeddings)
        metrics["embed_texts_per_s"] = round(rate, 2)
        metrics.update(train_head(rm, feats, train_df, index, val_feats, val_rows, recipe,
                                  zero_init=not cfg.init_head))
        with torch.no_grad():
            train_scores = rm.head(feats).squeeze(-1)
            val_scores = rm.head(val_feats).squeeze(-1)
        metrics["train_accuracy_all_pairs"] = all_pairs_accuracy(
            train_scores[torch.tensor([index[t] for t in train_df.loc[train_df.label == 1, "text"]])],
            train_scores[torch.tensor([index[t] for t in train_df.loc[train_df.label == 0, "text"]])])
    else:
        metrics.update(train_full(rm, rm.tokenize(texts), train_df, index, recipe, bf16=cfg.bf16,
                                  dropout=not cfg.disable_dropout))
        t1 = time.perf_counter()
        val_scores = rm.score(val_texts, bf16=cfg.bf16, progress=cfg.progress)
        metrics["score_texts_per_s"] = round(len(val_texts) / (time.perf_counter() - t1), 2)
    metrics["train_seconds"] = round(time.perf_counter() - t0, 2)
    vr = torch.tensor(val_rows)
    metrics["val"] = pair_metrics(val_scores[vr[:, 0]], val_scores[vr[:, 1]])
    v = val_scores.double()
    rm.stats = {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 1.0, "n": int(v.numel()),
                "source": "validation reviews"}
    provenance = {"train": {"data": cfg.data, "backbone": cfg.backbone, "seed": cfg.seed, "mode": metrics["mode"],
                            "val_accuracy": metrics["val"]["accuracy"], "val_auc": metrics["val"]["auc"]}}
    out = outdir.prepare(decision)  # a model exists: only now is an old --out replaced
    metrics["out"] = str(out)
    rm.save(out, meta=provenance, extra_files={"metrics.json": json.dumps(metrics, indent=2) + "\n",
                                               "train_config.yaml": to_yaml(cfg)})
    if cfg.export_head:
        rm.save_head(cfg.export_head, backbone=cfg.backbone, meta={**provenance, "config": to_dict(cfg)})
        metrics["export_head"] = cfg.export_head
    return metrics


def evaluate(cfg: RewardEvalConfig, progress: bool = False) -> dict:
    """Pairwise metrics of ``cfg.model`` on pairs from ``cfg.data`` (``split="val"``: only the validation
    reviews `reward train` held out with the same fraction and seed)."""
    df = read_labelled(cfg.data)
    if cfg.split == "val":
        df = split_labelled(df, cfg.data, cfg.val_fraction, cfg.seed)[1]
    pairs = preference_pairs(df, seed=cfg.seed, limit=cfg.limit)
    fn = load_reward(cfg.model, device=cfg.device, batch_size=cfg.batch_size, bf16=cfg.bf16)
    return {"model": cfg.model, "data": cfg.data, "split": cfg.split, **evaluate_pairs(fn, pairs, progress=progress)}


def score(cfg: RewardScoreConfig) -> dict:
    """The reward of each of ``cfg.text`` (the whole text is judged: the prompt is empty)."""
    fn = load_reward(cfg.model, device=cfg.device, batch_size=cfg.batch_size, bf16=cfg.bf16)
    scores = fn.score_texts(cfg.text).tolist()
    return {"model": cfg.model, "scores": [{"text": t, "reward": s} for t, s in zip(cfg.text, scores, strict=True)]}
