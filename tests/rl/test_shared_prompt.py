"""Scoring a rollout's k samples per prompt with one pass over each prompt (``sequence_logprobs(group=k)``):
the same log-probs, entropies and gradients as the full pass, with the prompt run once per group."""

import pytest
import torch

from tests.conftest import tiny_gpt2
from warprl.models import load_policy
from warprl.rl import rollout as R


@pytest.fixture(autouse=True)
def _share_any_prompt(monkeypatch):
    monkeypatch.setitem(R.SHARED_PROMPT, "min_tokens", 0)  # these prompts are a few tokens long


@pytest.fixture(params=["llama", "gpt2"])
def model(request, tiny_policy_dir):
    return load_policy(str(tiny_policy_dir))[0] if request.param == "llama" else tiny_gpt2()


def _batch(vocab: int, prompts: int = 3, k: int = 3, n: int = 6, seed: int = 0):
    """Left-padded prompts of lengths 2, 4, 5 … each repeated k times, then random completions whose masks end
    at different positions (a row's tokens after its end are masked, as after EOS)."""
    gen = torch.Generator().manual_seed(seed)
    lens = [2, 4, 5, 3][:prompts]
    width = max(lens)
    p_ids = torch.full((prompts, width), 0, dtype=torch.long)
    p_mask = torch.zeros(prompts, width, dtype=torch.long)
    for i, ln in enumerate(lens):
        p_ids[i, width - ln :] = torch.randint(2, vocab, (ln,), generator=gen)
        p_mask[i, width - ln :] = 1
    rows = prompts * k
    c_ids = torch.randint(2, vocab, (rows, n), generator=gen)
    ends = torch.randint(1, n + 1, (rows,), generator=gen)
    c_mask = (torch.arange(n)[None] < ends[:, None]).long()
    ids = torch.cat([p_ids.repeat_interleave(k, 0), c_ids], 1)
    mask = torch.cat([p_mask.repeat_interleave(k, 0), c_mask], 1)
    return ids, mask, c_mask.float()


def _score(model, ids, mask, cmask, n, group, temperature=0.8):
    model.zero_grad(set_to_none=True)
    logp, ent = R.sequence_logprobs(model, ids, mask, n, temperature, return_entropy=True, group=group)
    adv = torch.linspace(-1, 1, logp.shape[0])[:, None]
    (-(adv * logp * cmask).sum()).backward()
    return logp.detach(), ent, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fused", [True, False])
def test_shared_prompt_gives_the_full_pass_logprobs_entropies_and_gradients(model, fused, monkeypatch):
    monkeypatch.setitem(R.FUSED_HEAD, "enabled", fused)
    ids, mask, cmask = _batch(model.config.vocab_size)
    n = cmask.shape[1]
    full = _score(model, ids, mask, cmask, n, group=1)
    shared = _score(model, ids, mask, cmask, n, group=3)
    m = cmask.bool()
    torch.testing.assert_close(shared[0][m], full[0][m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared[1][m], full[1][m], atol=1e-5, rtol=1e-5)
    assert full[2].keys() == shared[2].keys()
    for name, g in full[2].items():
        torch.testing.assert_close(shared[2][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_each_prompt_runs_once_per_group(model):
    ids, mask, cmask = _batch(model.config.vocab_size, prompts=4, k=2)
    n = cmask.shape[1]
    base = getattr(model, model.base_model_prefix)
    seen = []
    hook = base.register_forward_pre_hook(lambda _m, _a, kw: seen.append(tuple(kw["input_ids"].shape)),
                                          with_kwargs=True)
    try:
        with torch.no_grad():
            R.sequence_logprobs(model, ids, mask, n, group=2)
            shared_calls = len(seen)
            R.sequence_logprobs(model, ids, mask, n, group=1)
    finally:
        hook.remove()
    width = ids.shape[1] - n
    # The prompts once (4 rows), then the 8 completions without their last token; the full pass: 8 whole rows.
    assert seen[:shared_calls] == [(4, width), (8, n - 1)]
    assert seen[shared_calls:] == [(8, ids.shape[1] - 1)]


def test_a_one_token_completion_needs_only_the_prompt_pass(model):
    ids, mask, cmask = _batch(model.config.vocab_size, n=1)
    with torch.no_grad():
        full = R.sequence_logprobs(model, ids, mask, 1, group=1)
        shared = R.sequence_logprobs(model, ids, mask, 1, group=3)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)


def test_rows_not_grouped_by_prompt_are_refused(model):
    ids, mask, cmask = _batch(model.config.vocab_size, k=2)
    n = cmask.shape[1]
    with pytest.raises(ValueError, match="groups of 4"):
        R.sequence_logprobs(model, ids, mask, n, group=4)  # 6 rows
    swapped = ids.clone()
    swapped[[1, 2]] = ids[[2, 1]]
    with pytest.raises(ValueError, match="sharing one prompt"):
        R.sequence_logprobs(model, swapped, mask, n, group=2)


def test_sharing_needs_enough_prompt_tokens_saved_and_the_switch_on(model, monkeypatch):
    ids, mask, cmask = _batch(model.config.vocab_size)  # 3 prompts, 5 wide, k = 3: 2 × 3 × 5 = 30 tokens saved
    n = cmask.shape[1]
    assert R.prompt_group(model, ids, mask, n, 3) == 3
    assert R.prompt_group(model, ids, mask, n, 1) == 1
    monkeypatch.setitem(R.SHARED_PROMPT, "min_tokens", 30)
    assert R.prompt_group(model, ids, mask, n, 3) == 3
    monkeypatch.setitem(R.SHARED_PROMPT, "min_tokens", 31)
    assert R.prompt_group(model, ids, mask, n, 3) == 1
    monkeypatch.setitem(R.SHARED_PROMPT, "min_tokens", 0)
    monkeypatch.setitem(R.SHARED_PROMPT, "enabled", False)
    assert R.prompt_group(model, ids, mask, n, 3) == 1


def test_rows_are_checked_even_when_sharing_would_not_pay(model, monkeypatch):
    monkeypatch.setitem(R.SHARED_PROMPT, "min_tokens", 10**9)
    ids, mask, cmask = _batch(model.config.vocab_size, k=2)
    with pytest.raises(ValueError, match="groups of 4"):
        R.sequence_logprobs(model, ids, mask, cmask.shape[1], group=4)


def test_anchor_logprobs_share_the_prompt_within_micro_batches(tiny_policy_dir):
    model, tok = load_policy(str(tiny_policy_dir))
    roll = R.sample(model, tok, ["the movie was", "I love this film", "boring", "a plot"],
                    R.SamplingConfig(max_new_tokens=7), k=2, generator_seed=0)
    full = R.anchor_logprobs(model, roll, 1.0)
    shared = R.anchor_logprobs(model, roll, 1.0, micro_batch=4, group=2)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
