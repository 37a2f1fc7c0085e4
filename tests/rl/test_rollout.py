"""Rollout log-probs: taken at the sampling temperature, equal to a separate forward pass, masks right."""

import pytest
import torch

from warprl.models import load_policy
from warprl.rl import algorithms as A
from warprl.rl.rollout import SamplingConfig, anchor_logprobs, sample, sequence_logprobs

PROMPTS = ["the movie was", "I love this film and the plot", "boring"]  # different lengths → left padding


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.8])
def test_rollout_logprobs_match_a_separate_forward_pass(tiny_policy_dir, temperature):
    model, tok = load_policy(str(tiny_policy_dir))
    roll = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=12, temperature=temperature), k=2,
                  generator_seed=0)
    assert roll.input_ids.shape[0] == 6 and roll.prompts[0] == roll.prompts[1] == PROMPTS[0]
    with torch.no_grad():
        lp = sequence_logprobs(model, roll.input_ids, roll.attention_mask, roll.completion_ids.shape[1], temperature)
    torch.testing.assert_close(lp * roll.mask, roll.logprobs, atol=1e-4, rtol=1e-4)


def test_logprobs_use_the_temperature(tiny_policy_dir):
    model, tok = load_policy(str(tiny_policy_dir))
    roll = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=8, temperature=0.5), generator_seed=1)
    with torch.no_grad():
        at_one = sequence_logprobs(model, roll.input_ids, roll.attention_mask, roll.completion_ids.shape[1], 1.0)
    assert not torch.allclose(at_one * roll.mask, roll.logprobs, atol=1e-3)


def test_kl_of_policy_against_itself_is_zero(tiny_policy_dir):
    model, tok = load_policy(str(tiny_policy_dir))
    roll = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=10, temperature=0.9), k=2, generator_seed=2)
    ref = anchor_logprobs(model, roll, 0.9)
    for est in ("k1", "k3"):
        kl = A.sequence_kl(roll.logprobs, ref, roll.mask, est)
        assert kl.abs().max() < 1e-4


def test_tokens_after_eos_are_masked_and_not_decoded(tiny_policy_dir):
    model, tok = load_policy(str(tiny_policy_dir))
    # Make EOS likely enough that some rows stop early and others run to the end.
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] += 0.5 * model.lm_head.weight.abs().max()
    roll = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=10), k=4, generator_seed=3)
    eos = tok.eos_token_id
    stopped = 0
    for ids, m, text in zip(roll.completion_ids, roll.mask, roll.completions, strict=True):
        hits = (ids == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else len(ids)  # the first EOS counts (its log-prob is trained)
        stopped += bool(len(hits)) and end < len(ids)
        assert m[:end].eq(1).all() and m[end:].eq(0).all()
        # The text is exactly the tokens before the first EOS: nothing after it leaks into the reward.
        assert text == tok.decode(ids[: end - 1 if len(hits) else end], skip_special_tokens=True)
        assert int(m.sum()) == end
    assert stopped > 0, "no row stopped before the last token: the test needs a likelier EOS"
    assert (roll.logprobs[roll.mask == 0] == 0).all()
    assert (roll.attention_mask[:, roll.prompt_len:] == roll.mask).all()


def test_sampling_is_reproducible_with_a_seed(tiny_policy_dir):
    model, tok = load_policy(str(tiny_policy_dir))
    a = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=6), generator_seed=5)
    b = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=6), generator_seed=5)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions


def test_entropy_matches_the_pure_function(tiny_policy_dir):
    model, tok = load_policy(str(tiny_policy_dir))
    roll = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=5), generator_seed=4)
    n = roll.completion_ids.shape[1]
    with torch.no_grad():
        _, ent = sequence_logprobs(model, roll.input_ids, roll.attention_mask, n, 0.8, return_entropy=True)
        from warprl.rl.rollout import position_ids_from_mask

        logits = model(input_ids=roll.input_ids, attention_mask=roll.attention_mask,
                       position_ids=position_ids_from_mask(roll.attention_mask)).logits[:, -n - 1 : -1]
    torch.testing.assert_close(ent, A.entropy_from_logits(logits / 0.8), atol=1e-5, rtol=1e-5)


def test_rows_picks_the_first_sample_of_each_prompt(tiny_policy_dir):
    policy, tok = load_policy(str(tiny_policy_dir))
    roll = sample(policy, tok, ["the movie", "a film was", "it"], SamplingConfig(max_new_tokens=5), k=2,
                  generator_seed=0)
    roll.ref_logprobs = anchor_logprobs(policy, roll, 1.0)
    first = roll.rows(slice(None, None, 2))
    assert first.prompts == ["the movie", "a film was", "it"] and first.completions == roll.completions[::2]
    for name in ("input_ids", "attention_mask", "completion_ids", "mask", "logprobs", "ref_logprobs"):
        assert torch.equal(getattr(first, name), getattr(roll, name)[::2]), name
    # The sub-batch scores as it did inside the whole batch (left padding is shared, positions from the mask).
    torch.testing.assert_close(anchor_logprobs(policy, first, 1.0), roll.ref_logprobs[::2], rtol=0, atol=1e-5)
