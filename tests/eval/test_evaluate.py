"""Held-out evaluation metrics (warprl.eval.evaluate) on hand-made samples and a tiny random model."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from warprl.config import EvalConfig
from warprl.errors import UserError
from warprl.eval.evaluate import (
    METRIC_KEYS,
    SampleSet,
    check_same_vocab,
    collect_samples,
    evaluate_policy,
    judge_positive_rate,
    summarise,
)
from warprl.models import load_policy
from warprl.rl.loop import PhaseClock

PROMPTS = ["the movie was", "I love this film", "the plot is", "this actor was", "a story and"]


def word_count(prompts, completions):
    return torch.tensor([float(c.split().count("good")) for c in completions])


def sample_set(completions, **kw) -> SampleSet:
    n = len(completions)
    base = dict(prompts=[f"p{i}" for i in range(n)], completions=list(completions), rewards=[0.0] * n,
                judge=[0.0] * n, kl=[0.0] * n, nll_sum=[0.0] * n, n_tokens=[1] * n)
    base.update(kw)
    return SampleSet(**base)


# ------------------------------------------------------------------------------------------ pure metrics


def test_summarise_on_hand_made_samples():
    s = sample_set(["good movie", "good film", "good movie"], rewards=[1.0, 2.0, 3.0], judge=[0.5, 0.05, -0.2],
                   kl=[0.0, 1.0, 2.0], nll_sum=[2.0, 4.0, 6.0], n_tokens=[2, 2, 2])
    m = summarise(s)
    assert set(METRIC_KEYS) <= set(m)
    assert m["reward_mean"] == 2.0 and m["reward_std"] == pytest.approx(1.0)
    assert m["kl_mean"] == 1.0
    assert m["judge_positive_rate"] == pytest.approx(1 / 3)  # 0.05 itself is not positive: strictly above
    assert m["judge_mean"] == pytest.approx(0.35 / 3)
    assert m["distinct_1"] == pytest.approx(3 / 6)  # good, movie, film out of 6 unigrams
    assert m["distinct_2"] == pytest.approx(2 / 3)  # (good movie), (good film) out of 3 bigrams
    assert m["unique_fraction"] == pytest.approx(2 / 3)
    assert m["repetition_rate"] == 0.0
    assert m["nll_sft"] == pytest.approx(12.0 / 6)  # token-weighted
    assert m["length_mean"] == 2.0 and m["n_samples"] == 3


def test_loops_and_collapse_are_visible():
    looping = "good movie good movie good movie"
    m = summarise(sample_set([looping] * 4))
    assert m["repetition_rate"] == 1.0
    assert m["unique_fraction"] == 0.25
    assert m["distinct_2"] < 0.2  # one repeated phrase: collapse
    assert summarise(sample_set(["a b c d e f", looping]))["repetition_rate"] == 0.5


def test_judge_positive_rate_threshold():
    assert judge_positive_rate([0.06, 0.05, -1.0, 0.9]) == 0.5
    assert judge_positive_rate([]) == 0.0


# --------------------------------------------------------------------------------------- tiny policy


def eval_cfg(**kw) -> EvalConfig:
    base = dict(max_new_tokens=6, batch_size=2, samples_per_prompt=2, bf16=False, seed=7)
    base.update(kw)
    return EvalConfig(**base)


@pytest.mark.parametrize("bf16", [False, True])
def test_kl_of_identical_policies_is_zero(tiny_policy_dir, bf16):
    policy, tok = load_policy(str(tiny_policy_dir))
    twin = copy.deepcopy(policy)  # another object with the same weights: the KL must still be exactly 0
    m = evaluate_policy(policy, tok, twin, word_count, word_count, PROMPTS, eval_cfg(bf16=bf16))
    assert m["kl_mean"] == 0.0
    assert m["n_samples"] == len(PROMPTS) * 2 and len(m["samples"]) == len(PROMPTS) * 2
    assert m["nll_sft"] > 0 and math.isfinite(m["nll_sft"])


def test_kl_is_positive_for_a_different_policy_and_evaluation_is_deterministic(tiny_policy_dir):
    sft, tok = load_policy(str(tiny_policy_dir))
    policy = copy.deepcopy(sft)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.5, alpha=1.0)
    cfg = eval_cfg(samples_per_prompt=4)
    a = evaluate_policy(policy, tok, sft, word_count, word_count, PROMPTS, cfg)
    b = evaluate_policy(policy, tok, sft, word_count, word_count, PROMPTS, cfg)
    assert a["kl_mean"] > 0  # an MC estimate, but with 20 samples of a strongly perturbed model, clearly > 0
    assert [s["completion"] for s in a["samples"]] == [s["completion"] for s in b["samples"]]
    assert a["kl_mean"] == b["kl_mean"]
    # Same prompts in the same order for every policy (common random numbers).
    c = evaluate_policy(sft, tok, sft, word_count, word_count, PROMPTS, cfg)
    assert [s["prompt"] for s in a["samples"]] == [s["prompt"] for s in c["samples"]]


def test_the_clock_times_each_phase_and_changes_nothing(tiny_policy_dir):
    policy, tok = load_policy(str(tiny_policy_dir))
    twin = copy.deepcopy(policy)
    cfg = eval_cfg(batch_size=2)  # 3 batches of the 5 prompts
    plain = collect_samples(policy, tok, twin, word_count, word_count, PROMPTS, cfg)
    clock = PhaseClock()
    timed = collect_samples(policy, tok, twin, word_count, word_count, PROMPTS, cfg, gold_fn=word_count, clock=clock)
    assert timed.completions == plain.completions and timed.kl == plain.kl and timed.rewards == plain.rewards
    assert set(clock.seconds) == {"sample", "logp_policy", "logp_sft", "reward", "judge", "gold"}
    assert all(v > 0 for v in clock.seconds.values())


def test_scorers_must_return_one_score_per_completion(tiny_policy_dir):
    policy, tok = load_policy(str(tiny_policy_dir))
    with pytest.raises(ValueError, match="judge returned 1 scores"):
        evaluate_policy(policy, tok, policy, word_count, lambda p, c: [0.0], PROMPTS[:2], eval_cfg())


def test_policy_and_sft_must_share_a_vocabulary():
    def model(vocab):
        weight = torch.zeros(vocab, 2)
        return SimpleNamespace(get_output_embeddings=lambda: SimpleNamespace(weight=weight))

    check_same_vocab(model(5), model(5), "a", "b")
    with pytest.raises(UserError, match="different vocabularies"):
        check_same_vocab(model(5), model(6), "a", "b")
