"""The RM module and its folders: save/load gives identical scores, bare heads, LP-FT init, refusals."""

import pytest
import torch

from tests.reward._toy import toy_reviews
from warprl import reward as R
from warprl.errors import UserError
from warprl.reward.model import head_pooling


def test_save_load_gives_identical_scores(tiny_bert, tmp_path):
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
    assert head_pooling(str(tmp_path / "head")) == "mean"
    assert torch.equal(R.load_reward(str(tmp_path / "head")).score_texts(texts), before)
    # LP-FT (init_head) starts a mean-pooling RM from that head; a native-pooling one is refused.
    torch.manual_seed(2)
    fresh = R.from_backbone(str(tiny_bert), pooling="mean", max_length=32)
    R.init_head(fresh, str(tmp_path / "head"))
    assert torch.equal(fresh.score(texts), before)
    with pytest.raises(UserError, match="mean pooling, not native"):
        R.init_head(R.from_backbone(str(tiny_bert), pooling="native"), str(tmp_path / "head"))
    with pytest.raises(UserError, match="only be exported for mean pooling"):
        R.from_backbone(str(tiny_bert), pooling="native").save_head(tmp_path / "head2", backbone=str(tiny_bert))


def test_find_head_is_the_one_output_layer(tiny_bert):
    rm = R.from_backbone(str(tiny_bert), pooling="native", max_length=32)
    assert R.find_head(rm.model) is rm.model.classifier and rm.head.out_features == 1
    n_head = sum(p.numel() for p in rm.head.parameters())
    assert sum(p.numel() for p in rm.backbone_parameters()) + n_head == sum(p.numel() for p in rm.model.parameters())


def test_an_encoder_without_a_head_is_not_a_reward_model(tiny_bert):
    with pytest.raises(UserError, match="not a reward model"):
        R.load_reward_model(str(tiny_bert))


def test_a_missing_head_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no head.safetensors there"):
        head_pooling(str(tmp_path))


def test_embedded_imdb_sentiment():
    from warprl.models import alias_path

    if alias_path("minilm-l6") is None:
        pytest.skip("minilm-l6 weights not installed (make install puts them in place)")
    fn = R.load_reward("imdb-sentiment")
    pos, neg = fn(["", ""], ["This movie was wonderful, I loved it", "This movie was terrible and boring"]).tolist()
    assert pos > neg
    assert fn.rm.pooling == "mean" and fn.rm.stats is not None
    assert torch.equal(fn(["This movie was "], ["great"]), fn(["This movie was "], ["great"]))  # deterministic
