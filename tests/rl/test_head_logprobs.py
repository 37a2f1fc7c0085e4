"""The chunked lm_head + log-sum-exp of sequence_logprobs against the full-logits path (values and gradients)."""

import copy

import pytest
import torch

from warprl.models import load_policy
from warprl.rl import rollout as R

PROMPTS = ["the movie was", "I love this film and the plot", "boring"]


def _both(model, roll, temperature, monkeypatch, chunk_bytes):
    n = roll.completion_ids.shape[1]
    out = {}
    for fused in (False, True):
        monkeypatch.setitem(R.FUSED_HEAD, "enabled", fused)
        monkeypatch.setitem(R.FUSED_HEAD, "chunk_bytes", chunk_bytes)
        model.zero_grad(set_to_none=True)
        logp, ent = R.sequence_logprobs(model, roll.input_ids, roll.attention_mask, n, temperature,
                                        return_entropy=True)
        adv = torch.linspace(-1, 1, logp.shape[0])[:, None]
        (-(adv * logp * roll.mask).sum()).backward()
        grads = {k: p.grad.detach().float().clone() for k, p in model.named_parameters()}
        out[fused] = (logp.detach(), ent, grads)
    return out


@pytest.mark.parametrize("temperature,chunk_bytes", [(1.0, 1 << 26), (0.7, 4 * 33 * 5)])  # one chunk / 5-row chunks
def test_fused_head_matches_full_logits_fp32(tiny_policy_dir, temperature, chunk_bytes, monkeypatch):
    model, tok = load_policy(str(tiny_policy_dir))
    roll = R.sample(model, tok, PROMPTS, R.SamplingConfig(max_new_tokens=9), k=2, generator_seed=0)
    out = _both(model, roll, temperature, monkeypatch, chunk_bytes)
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[True][1], out[False][1], atol=1e-5, rtol=1e-5)
    for name, g in out[False][2].items():
        torch.testing.assert_close(out[True][2][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_fused_head_matches_full_logits_bf16(tiny_policy_dir, monkeypatch):
    model, tok = load_policy(str(tiny_policy_dir))
    model = copy.deepcopy(model).to(torch.bfloat16)
    roll = R.sample(model, tok, PROMPTS, R.SamplingConfig(max_new_tokens=9), k=2, generator_seed=0)
    out = _both(model, roll, 1.0, monkeypatch, 4 * 33 * 4)
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-6, rtol=0)  # same bf16 logits, same fp32 maths
    for name, g in out[False][2].items():  # bf16 gradients: rounding of the chunked accumulation differs
        assert float((out[True][2][name] - g).abs().max()) <= 0.02 * float(g.abs().max()) + 1e-6, name


def test_fused_head_without_entropy_gives_the_same_logprobs_and_gradients(tiny_policy_dir):
    # The anchor and evaluation passes skip the entropy's second pass over the logits: nothing else may change.
    model, tok = load_policy(str(tiny_policy_dir))
    roll = R.sample(model, tok, PROMPTS, R.SamplingConfig(max_new_tokens=9), k=2, generator_seed=0)
    n = roll.completion_ids.shape[1]
    out = []
    for with_entropy in (True, False):
        model.zero_grad(set_to_none=True)
        res = R.sequence_logprobs(model, roll.input_ids, roll.attention_mask, n, 0.7, return_entropy=with_entropy)
        logp = res[0] if with_entropy else res
        (-(logp * roll.mask).sum()).backward()
        out.append((logp.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    assert torch.equal(out[0][0], out[1][0])
    for name, g in out[0][1].items():
        assert torch.equal(out[1][1][name], g), name
