"""warprl's rollout engine against HF ``generate`` on the tiny random Llama (seconds, no hub)."""

import copy

import pytest
import torch

from warprl.models import load_policy
from warprl.rl import engine as E
from warprl.rl.rollout import SamplingConfig, sample, sequence_logprobs, tokenize_prompts

PROMPTS = ["the movie was", "I love this film and the plot", "boring"]  # different lengths → left padding


@pytest.fixture
def tiny(tiny_policy_dir):
    return load_policy(str(tiny_policy_dir))


def _boost_eos(model, tok, factor=0.5):
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] += factor * model.lm_head.weight.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_tokens_equal_generate(tiny, dtype):
    model, tok = tiny
    model = copy.deepcopy(model).to(dtype)
    enc = tokenize_prompts(tok, PROMPTS, torch.device("cpu"))
    ref = model.generate(**enc, do_sample=False, max_new_tokens=16, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)[:, enc["input_ids"].shape[1]:]
    dec = E.generate(model, enc["input_ids"], enc["attention_mask"], 1, 16, tok.eos_token_id, tok.pad_token_id,
                     top_k=1)  # top-k 1 sampling is argmax
    assert torch.equal(dec.completion_ids, ref)


@pytest.mark.parametrize("kw", [{}, {"temperature": 0.7, "top_k": 5}, {"temperature": 1.3, "top_p": 0.8}])
def test_sampled_tokens_equal_generate_under_the_same_seed(tiny, kw, monkeypatch):
    """Same RNG draws as generate with HF's own draw (compaction off, so finished rows keep drawing as in HF)."""
    model, tok = tiny
    monkeypatch.setitem(E.OPTIONS, "compact", False)
    monkeypatch.setitem(E.OPTIONS, "draw", "multinomial")
    ours = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=12, engine="warprl", **kw), k=3,
                  generator_seed=7)
    hf = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=12, engine="hf", **kw), k=3, generator_seed=7)
    assert torch.equal(ours.completion_ids, hf.completion_ids)
    assert torch.equal(ours.input_ids, hf.input_ids) and torch.equal(ours.attention_mask, hf.attention_mask)
    torch.testing.assert_close(ours.logprobs, hf.logprobs, atol=1e-5, rtol=1e-5)
    assert ours.completions == hf.completions and ours.prompts == hf.prompts


@pytest.mark.parametrize("kw", [{"temperature": 1.0}, {"temperature": 0.6, "top_p": 0.9}, {"temperature": 1.7, "top_k": 4}])
def test_logprobs_equal_a_separate_forward_pass(tiny, kw):
    """The engine's log-prob of each sampled token = sequence_logprobs of the produced sequence (fp32: 1e-4)."""
    model, tok = tiny
    roll = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=14, engine="warprl", **kw), k=2,
                  generator_seed=1)
    with torch.no_grad():
        lp = sequence_logprobs(model, roll.input_ids, roll.attention_mask, roll.completion_ids.shape[1],
                               kw["temperature"])
    torch.testing.assert_close(lp * roll.mask, roll.logprobs, atol=1e-4, rtol=1e-4)


def test_bf16_logprobs_close_to_a_separate_forward_pass(tiny):
    """In bf16 the incremental and the full forward round differently: same distribution within 0.05 nats."""
    model, tok = tiny
    model = copy.deepcopy(model).to(torch.bfloat16)
    roll = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=14, engine="warprl"), k=2, generator_seed=1)
    with torch.no_grad():
        lp = sequence_logprobs(model, roll.input_ids, roll.attention_mask, roll.completion_ids.shape[1])
    assert float(((lp - roll.logprobs) * roll.mask).abs().max()) < 0.05


def test_eos_rows_are_masked_and_dropped_from_the_batch(tiny):
    model, tok = tiny
    _boost_eos(model, tok, 0.3)
    roll = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=10, engine="warprl"), k=4, generator_seed=3)
    eos = tok.eos_token_id
    lengths = roll.mask.sum(-1)
    assert lengths.min() < roll.completion_ids.shape[1], "the EOS boost should end some rows early"
    for ids, m, text in zip(roll.completion_ids, roll.mask, roll.completions, strict=True):
        hits = (ids == eos).nonzero()
        if len(hits):
            first = int(hits[0])
            assert m[: first + 1].eq(1).all() and m[first + 1 :].eq(0).all()
            assert ids[first + 1 :].eq(tok.pad_token_id).all()
            assert "<eos>" not in text
    assert (roll.logprobs[roll.mask == 0] == 0).all()
    # Finished rows stop costing work: fewer row-steps than rows × decode steps.
    t = roll.timings
    assert t["decode_row_steps"] < roll.completion_ids.shape[0] * t["decode_steps"]
    with torch.no_grad():
        lp = sequence_logprobs(model, roll.input_ids, roll.attention_mask, roll.completion_ids.shape[1])
    torch.testing.assert_close(lp * roll.mask, roll.logprobs, atol=1e-4, rtol=1e-4)


def test_min_new_tokens_bans_eos(tiny):
    model, tok = tiny
    _boost_eos(model, tok, 1.0)
    roll = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=8, min_new_tokens=5, engine="warprl"), k=2,
                  generator_seed=0)
    assert (roll.completion_ids[:, :5] != tok.eos_token_id).all()
    assert roll.mask[:, :5].eq(1).all()


def test_k_samples_share_one_prefill(tiny, monkeypatch):
    model, tok = tiny
    widths = []
    real = E._layer_stack

    def spy(w, x, *a):
        widths.append(tuple(x.shape[:2]))
        return real(w, x, *a)

    monkeypatch.setattr(E, "_layer_stack", spy)
    shared = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=6, engine="warprl"), k=4, generator_seed=2)
    assert widths[0][0] == len(PROMPTS) and widths[1] == (len(PROMPTS) * 4, 1)
    monkeypatch.setitem(E.OPTIONS, "share_prefill", False)
    widths.clear()
    apart = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=6, engine="warprl"), k=4, generator_seed=2)
    assert widths[0][0] == len(PROMPTS) * 4
    assert torch.equal(shared.completion_ids, apart.completion_ids)


def test_seeded_determinism_and_weight_refresh(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setitem(E.OPTIONS, "draw", "multinomial")  # HF's draw: the first token is generate's too
    cfg = SamplingConfig(max_new_tokens=8, engine="warprl")
    a = sample(model, tok, PROMPTS, cfg, k=2, generator_seed=5)
    b = sample(model, tok, PROMPTS, cfg, k=2, generator_seed=5)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    # An in-place update (optimiser step, MixedPrecision.sync) must reach the engine's fused weights.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    c = sample(model, tok, PROMPTS, cfg, k=2, generator_seed=5)
    hf = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=8, engine="hf"), k=2, generator_seed=5)
    torch.testing.assert_close(c.logprobs[:, :1], hf.logprobs[:, :1], atol=1e-5, rtol=1e-5)
    assert not torch.equal(a.logprobs, c.logprobs)


@pytest.mark.parametrize("opts", [{"fuse": False}, {"prepack": False}, {"fuse": False, "prepack": False},
                                  {"decode_attention": "sdpa"}])
def test_levers_do_not_change_tokens(tiny, opts, monkeypatch):
    model, tok = tiny
    model = copy.deepcopy(model).to(torch.bfloat16)
    base = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=10, engine="warprl"), k=2, generator_seed=4)
    for name, value in opts.items():
        monkeypatch.setitem(E.OPTIONS, name, value)
    other = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=10, engine="warprl"), k=2, generator_seed=4)
    assert torch.equal(base.completion_ids, other.completion_ids)
    torch.testing.assert_close(base.logprobs, other.logprobs, atol=0.02, rtol=0)


def test_decode_attention_by_batched_matmuls_equals_sdpa():
    """The decode step's attention (one query position, GQA groups as query rows, left-pad keys masked) computes
    what SDPA computes with the boolean mask, in fp32 to rounding."""
    torch.manual_seed(0)
    rows, kv, group, keys, d = 5, 3, 3, 7, 16
    q = torch.randn(rows, kv, group, d)
    k, v = torch.randn(rows, kv, 9, d)[:, :, :keys], torch.randn(rows, kv, 9, d)[:, :, :keys]  # cache slices
    seen = torch.ones(rows, keys, dtype=torch.bool)
    seen[0, :3] = False  # left padding of a short prompt
    seen[2, :1] = False
    bias = torch.zeros(rows, kv, group, keys).masked_fill(~seen[:, None, None], -float("inf"))
    out = E._attend_one_position(q, k, v, bias.view(rows * kv, group, keys), 0.25)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=seen[:, None, None], scale=0.25)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_unsupported_model_falls_back_to_generate():
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import make_word_tokenizer

    tok = make_word_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    tok.padding_side = "left"
    assert not E.supports(model)
    roll = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=4), k=2, generator_seed=0)
    assert roll.completion_ids.shape[0] == 6 and roll.timings is None
    with pytest.raises(ValueError, match="does not support"):
        sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=4, engine="warprl"), k=2)


def test_fused_optimizer_step_reaches_the_engine(tiny):
    """torch's fused AdamW does not bump version counters: MixedPrecision.sync must mark the weights changed."""
    from warprl.precision import MixedPrecision

    model, tok = tiny
    mp = MixedPrecision(model, bf16=False)
    cfg = SamplingConfig(max_new_tokens=6, engine="warprl")
    sample(mp.compute, tok, PROMPTS, cfg, k=2, generator_seed=5)  # builds the engine's weights
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    mp.sync()
    ours = sample(mp.compute, tok, PROMPTS, cfg, k=2, generator_seed=5)
    E._WEIGHTS.clear()
    fresh = sample(mp.compute, tok, PROMPTS, cfg, k=2, generator_seed=5)
    assert torch.equal(ours.completion_ids, fresh.completion_ids) and torch.equal(ours.logprobs, fresh.logprobs)


def test_shared_fused_storage_is_transparent(tiny):
    """share_fused_storage: same outputs, same gradients, and the engine sees in-place updates without a copy."""
    from warprl.rl.engine import _adjacent, share_fused_storage

    model, tok = tiny
    other = copy.deepcopy(model)
    share_fused_storage(other)
    at = other.model.layers[0].self_attn
    assert _adjacent([at.q_proj.weight, at.k_proj.weight, at.v_proj.weight]) is not None
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in other.named_parameters()]
    cfg = SamplingConfig(max_new_tokens=8, engine="warprl")
    a = sample(model, tok, PROMPTS, cfg, k=2, generator_seed=3)
    b = sample(other, tok, PROMPTS, cfg, k=2, generator_seed=3)
    assert torch.equal(a.completion_ids, b.completion_ids)
    for m in (model, other):
        sequence_logprobs(m, a.input_ids, a.attention_mask, 8).sum().backward()
    for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=n)
    with torch.no_grad():
        for p, q in zip(model.parameters(), other.parameters(), strict=True):
            p.mul_(0.7)
            q.copy_(p)
    a = sample(model, tok, PROMPTS, cfg, k=2, generator_seed=3)
    b = sample(other, tok, PROMPTS, cfg, k=2, generator_seed=3)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.allclose(a.logprobs, b.logprobs)


def test_inverse_cdf_draw_is_seeded_and_keeps_the_log_probs(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setitem(E.OPTIONS, "draw", "inverse_cdf")
    a = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=10, engine="warprl"), k=2, generator_seed=5)
    b = sample(model, tok, PROMPTS, SamplingConfig(max_new_tokens=10, engine="warprl"), k=2, generator_seed=5)
    assert torch.equal(a.completion_ids, b.completion_ids)
    with torch.no_grad():
        lp = sequence_logprobs(model, a.input_ids, a.attention_mask, a.completion_ids.shape[1], 1.0)
    torch.testing.assert_close(lp * a.mask, a.logprobs, atol=1e-4, rtol=1e-4)
