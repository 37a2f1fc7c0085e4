"""Bradley–Terry: the loss and metrics by hand, the one training loop in both modes, cached embeddings."""

import math

import pandas as pd
import pytest
import torch

from warprl import reward as R
from warprl.data import preference_pairs, read_labelled, split_labelled
from warprl.errors import UserError
from warprl.reward.bradley_terry import Recipe


def test_bt_loss_hand_values():
    loss = R.bt_loss(torch.tensor([2.0]), torch.tensor([1.0]))
    assert math.isclose(float(loss), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    centred = R.bt_loss(torch.tensor([2.0]), torch.tensor([1.0]), center_coef=0.5)
    assert math.isclose(float(centred), math.log(1 + math.exp(-1)) + 0.5 * 9.0, rel_tol=1e-6)
    # Only differences matter to the plain loss.
    assert torch.allclose(R.bt_loss(torch.tensor([5.0, 0.0]), torch.tensor([4.0, -1.0])), loss)


def test_accuracies_count_ties_as_wrong_or_half():
    assert R.pairwise_accuracy(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 2.0, 1.0])) == pytest.approx(1 / 3)
    assert R.all_pairs_accuracy(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(3.5 / 4)


def test_pair_metrics_hand_values():
    m = R.pair_metrics(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0]))
    assert m["accuracy"] == 0.5 and m["auc"] == 0.75 and m["n_pairs"] == 2
    assert m["margin_mean"] == 1.0 and m["chosen_mean"] == 2.0 and m["rejected_mean"] == 1.0
    assert m["chosen_std"] == pytest.approx(math.sqrt(2)) and m["rejected_std"] == pytest.approx(math.sqrt(2))


def _split(toy_data):
    train, val = split_labelled(read_labelled(str(toy_data)), str(toy_data), 0.25, 0)
    texts = list(dict.fromkeys(train["text"].tolist()))
    val_pairs = preference_pairs(val, seed=0)
    val_texts = list(dict.fromkeys([p.chosen for p in val_pairs] + [p.rejected for p in val_pairs]))
    vi = {t: i for i, t in enumerate(val_texts)}
    return train, texts, {t: i for i, t in enumerate(texts)}, val_texts, [(vi[p.chosen], vi[p.rejected])
                                                                           for p in val_pairs]


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "full"])
def test_the_bt_loop_separates_the_toy_set(tiny_bert, toy_data, frozen):
    train, texts, index, val_texts, val_rows = _split(toy_data)
    torch.manual_seed(0)
    rm = R.from_backbone(str(tiny_bert), pooling="mean" if frozen else "native", max_length=32)
    if frozen:
        for p in rm.backbone_parameters():
            p.requires_grad_(False)
        feats, _ = R.cached_embeddings(rm, texts, bf16=False, progress=False, use_cache=False)
        val_feats, _ = R.cached_embeddings(rm, val_texts, bf16=False, progress=False, use_cache=False)
        result = R.train_head(rm, feats, train, index, val_feats, val_rows,
                              Recipe(lr=1e-1, epochs=60, batch_size=8, warmup_ratio=0.1))
        assert {"epoch", "train_loss", "val_accuracy"} == set(result["history"][-1])
    else:
        result = R.train_full(rm, rm.tokenize(texts), train, index,
                              Recipe(lr=3e-3, epochs=6, batch_size=8, warmup_ratio=0.1, max_grad_norm=1.0))
        assert {"epoch", "train_loss", "train_accuracy"} == set(result["history"][-1])
    pairs_per_epoch = result["train_pairs_per_epoch"]
    assert pairs_per_epoch == 45 and result["steps"] == math.ceil((60 if frozen else 6) * math.ceil(45 / 8))
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert not rm.model.training  # the loop leaves the model in eval mode
    scores = rm.score(val_texts)
    vr = torch.tensor(val_rows)
    assert R.pairwise_accuracy(scores[vr[:, 0]], scores[vr[:, 1]]) == 1.0


def test_a_frozen_backbone_stays_unchanged(tiny_bert, toy_data):
    train, texts, index, val_texts, val_rows = _split(toy_data)
    rm = R.from_backbone(str(tiny_bert), pooling="mean", max_length=32)
    before = [p.detach().clone() for p in rm.backbone_parameters()]
    for p in rm.backbone_parameters():
        p.requires_grad_(False)
    feats, _ = R.cached_embeddings(rm, texts, bf16=False, progress=False, use_cache=False)
    val_feats, _ = R.cached_embeddings(rm, val_texts, bf16=False, progress=False, use_cache=False)
    R.train_head(rm, feats, train, index, val_feats, val_rows, Recipe(lr=1e-1, epochs=2, batch_size=8))
    assert all(torch.equal(a, b) for a, b in zip(before, rm.backbone_parameters(), strict=True))
    assert rm.head.weight.abs().sum() > 0


def test_frozen_embeddings_are_cached(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("WARPRL_CACHE", str(tmp_path / "cache"))
    rm = R.from_backbone(str(tiny_bert), pooling="mean", max_length=32)
    texts = ["good fun", "bad plot", "the end"]
    first, rate = R.cached_embeddings(rm, texts, bf16=False, progress=False, use_cache=True)
    again, rate2 = R.cached_embeddings(rm, texts, bf16=False, progress=False, use_cache=True)
    assert rate > 0 and rate2 == 0.0 and torch.equal(first, again)
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-5)  # L2-normalised mean pooling


def test_evaluate_pairs_on_a_callable():
    pairs = preference_pairs(pd.DataFrame({"text": ["aaaa", "bbbbbb", "c", "dd"], "label": [1, 1, 0, 0]}), seed=0)
    result = R.evaluate_pairs(R.load_reward(lambda p, c: [float(len(x)) for x in c]), pairs)
    assert result["accuracy"] == 1.0 and result["n_pairs"] == 2
    with pytest.raises(UserError, match="no preference pairs"):
        R.evaluate_pairs(R.load_reward(lambda p, c: [0.0] * len(c)), [])
