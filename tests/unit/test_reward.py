"""Reward models: the BT loss, training on a separable toy set (both modes), save/load, the scoring API."""

import math
import random

import pandas as pd
import pytest
import torch

from warprl import reward as R
from warprl.config import RewardTrainConfig
from warprl.errors import UserError

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


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "reviews.parquet"
    toy_reviews().to_parquet(path)
    return path


def toy_cfg(tiny_bert, toy_data, out, **kw) -> RewardTrainConfig:
    base = dict(data=str(toy_data), backbone=str(tiny_bert), out=str(out), max_length=32, batch_size=8,
                val_fraction=0.25, bf16=False, device="cpu", progress=False, cache_embeddings=False, warmup_ratio=0.1)
    base.update(kw)
    return RewardTrainConfig(**base)


# ----------------------------------------------------------------------------------------------- math


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


def test_schedule_warms_up_then_decays():
    lrs = [R.linear_warmup_decay(s, total=10, warmup=2) for s in range(10)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[-1] == pytest.approx(0.125)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


# ------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "full"])
def test_bt_training_separates_the_toy_set(tiny_bert, toy_data, tmp_path, frozen):
    kw = dict(freeze_backbone=True, lr=1e-1, epochs=60) if frozen else dict(lr=3e-3, epochs=6)
    metrics = R.train_reward_model(toy_cfg(tiny_bert, toy_data, tmp_path / "rm", **kw))
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert metrics["val"]["accuracy"] == 1.0
    assert metrics["val"]["auc"] == 1.0
    assert (tmp_path / "rm" / "metrics.json").is_file()


def test_save_load_gives_identical_scores(tiny_bert, toy_data, tmp_path):
    from transformers import AutoModelForSequenceClassification

    texts = toy_reviews(5, seed=1)["text"].tolist()
    for pooling in ("native", "mean"):
        torch.manual_seed(1)
        rm = R.from_backbone(str(tiny_bert), pooling=pooling, max_length=32)
        before = rm.score(texts)
        rm.save(tmp_path / pooling)
        fn = R.load_reward(str(tmp_path / pooling))
        assert torch.equal(fn([""] * len(texts), texts), before)
        assert torch.equal(fn(["the movie "] * 2, ["was good", "was bad"]), rm.score(["the movie was good",
                                                                                      "the movie was bad"]))
        if pooling == "native":  # plain transformers reads the folder the same way
            plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / pooling).eval()
            enc = rm.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
            with torch.no_grad():
                assert torch.allclose(plain(**enc).logits.squeeze(-1), before, atol=1e-5)
    rm.save_head(tmp_path / "head", backbone=str(tiny_bert))
    assert torch.equal(R.load_reward(str(tmp_path / "head")).score_texts(texts), before)
    # LP-FT (--init-head) starts a mean-pooling RM from that head; a native-pooling one is refused.
    torch.manual_seed(2)
    fresh = R.from_backbone(str(tiny_bert), pooling="mean", max_length=32)
    R._init_head(fresh, str(tmp_path / "head"))
    assert torch.equal(fresh.score(texts), before)
    with pytest.raises(UserError, match="mean pooling, not native"):
        R._init_head(R.from_backbone(str(tiny_bert), pooling="native"), str(tmp_path / "head"))


def test_trained_folder_scores_as_during_training(tiny_bert, toy_data, tmp_path):
    cfg = toy_cfg(tiny_bert, toy_data, tmp_path / "rm", freeze_backbone=True, lr=5e-2, epochs=5,
                  export_head=str(tmp_path / "head"))
    metrics = R.train_reward_model(cfg)
    for spec in (tmp_path / "rm", tmp_path / "head"):
        again = R.eval_reward(str(spec), str(toy_data), split="val", val_fraction=0.25, seed=0, limit=1000,
                              device="cpu")
        assert again["accuracy"] == metrics["val"]["accuracy"]
        assert again["margin_mean"] == pytest.approx(metrics["val"]["margin_mean"], abs=1e-5)


def test_frozen_embeddings_are_cached(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("WARPRL_CACHE", str(tmp_path / "cache"))
    rm = R.from_backbone(str(tiny_bert), pooling="mean", max_length=32)
    texts = ["good fun", "bad plot", "the end"]
    first, rate = R.cached_embeddings(rm, texts, bf16=False, progress=False, use_cache=True)
    again, rate2 = R.cached_embeddings(rm, texts, bf16=False, progress=False, use_cache=True)
    assert rate > 0 and rate2 == 0.0 and torch.equal(first, again)
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-5)  # L2-normalised mean pooling


# ---------------------------------------------------------------------------------------- scoring API


def test_callable_reward_is_checked_and_converted():
    fn = R.load_reward(lambda prompts, completions: [len(c) for c in completions])
    out = fn(["a", "b"], ["xy", "xyz"])
    assert out.dtype == torch.float32 and out.tolist() == [2.0, 3.0]
    assert fn([], []).shape == (0,)

    def broken(prompts, completions):
        return [float("nan")] * len(completions)

    with pytest.raises(R.RewardError, match="reward 'broken' returned a non-finite value"):
        R.load_reward(broken)(["p"], ["c"])
    with pytest.raises(R.RewardError, match="1 values for 2"):
        R.load_reward(lambda p, c: [1.0])(["a", "b"], ["c", "d"])
    with pytest.raises(R.RewardError, match="not a number"):
        R.load_reward(lambda p, c: [None])(["a"], ["b"])
    assert R.load_reward(lambda p, c: torch.ones(len(c), dtype=torch.float64))(["a"], ["b"]).dtype == torch.float32


def test_normalisation_on_a_reference_set():
    ref = ["a", "bbb", "cc", "dddddd", "e"]
    fn = R.load_reward(lambda p, c: [3.0 * len(x) + 7 for x in c], normalize=True, reference=ref)
    z = fn([""] * len(ref), ref)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-6) and float(z.std()) == pytest.approx(1.0, abs=1e-6)
    assert fn.stats["n"] == 5 and fn.stats["source"] == "reference"
    builtin = R.load_reward(lambda p, c: [float(len(x)) for x in c], normalize=True)
    assert builtin.stats["source"] == "builtin" and builtin.stats["n"] == 64
    with pytest.raises(UserError, match="no stored normalisation"):
        R.load_reward(lambda p, c: [0.0] * len(c), normalize="stored")


def test_vader_judges_the_completion_only():
    fn = R.load_reward("vader")
    pos, neg = fn(["The film was"] * 2, [" wonderful, I loved it", " terrible and boring"]).tolist()
    assert pos > 0.5 and neg < -0.5
    # A hateful prompt does not drag down a positive completion: the judge reads the completion.
    assert fn(["I hated this awful movie."], [" It was wonderful."]).tolist() == fn([""], [" It was wonderful."]).tolist()


def test_an_encoder_without_a_head_is_not_a_reward_model(tiny_bert):
    with pytest.raises(UserError, match="not a reward model"):
        R.load_reward(str(tiny_bert))


def test_embedded_imdb_sentiment():
    from warprl.models import alias_path

    if alias_path("minilm-l6") is None:
        pytest.skip("minilm-l6 weights not installed (make install puts them in place)")
    fn = R.load_reward("imdb-sentiment")
    pos, neg = fn(["", ""], ["This movie was wonderful, I loved it", "This movie was terrible and boring"]).tolist()
    assert pos > neg
    assert fn.rm.pooling == "mean" and fn.rm.stats is not None
    assert torch.equal(fn(["This movie was "], ["great"]), fn(["This movie was "], ["great"]))  # deterministic
