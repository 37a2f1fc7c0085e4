"""LoRA in an RL run (rl/adapters.py): the plain compute copy holds W0 + s·B·A, its gradients give peft's factor
gradients by the chain rule, only the factors train, the EMA anchor is an EMA of the factors scored through a
low-rank side path, resume is exact."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import warprl.rl.loop as T
from tests.conftest import count_word_reward, randomise_lora, tiny_gpt2
from warprl import lora
from warprl.config import AlignConfig
from warprl.models import load_policy
from warprl.rl.adapters import LoraRun, fold_adapter
from warprl.rl.loop import NonFiniteError, run_rl

PROMPTS = ["the movie was", "I love this film", "the plot is", "this actor was", "a story and", "the end"]
LLAMA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def tensor_reward(fn):
    return lambda prompts, completions: torch.tensor(fn(prompts, completions), dtype=torch.float32)


def lora_cfg(**kw) -> AlignConfig:
    base = dict(steps=6, batch_size=4, k=4, lr=3e-2, beta=0.1, max_new_tokens=8, bf16=False, progress=False,
                checkpoint_every=2, kl_sft_every=3, lora_r=4, lora_alpha=8.0)
    base.update(kw)
    return AlignConfig(**base)


def peft_twin(base, seed=1):
    """peft's LoRA model on a copy of ``base`` with random B (so that ΔW ≠ 0), and our run on ``base`` with the
    same factors (drawn from the test's generator, so that the rounding the tolerance absorbs does not depend on
    which tests ran before)."""
    twin = randomise_lora(lora.apply_lora(copy.deepcopy(base), r=4, alpha=8.0, dropout=0.0), seed=seed, b_std=0.3)
    run = LoraRun(lora_cfg(), base, "sft", seed=0)
    theirs = {k.removeprefix(lora.PEFT_PREFIX).replace(".default.", "."): v for k, v in twin.state_dict().items()
              if "lora_" in k}
    run.factors.load_state_dict(theirs)  # strict: the same layers, named as peft names them
    return twin, run


@pytest.fixture(params=["llama", "gpt2"])
def base_model(request, tiny_policy_dir):
    if request.param == "llama":
        return load_policy(str(tiny_policy_dir))[0]
    return tiny_gpt2()  # Conv1D layers store W as [in, out]: peft's fan_in_fan_out


def test_chain_rule_gradients_equal_peft_autograd(base_model):
    """dL/dA = s·Bᵀ·G, dL/dB = s·G·Aᵀ from the plain weight's gradient G equal peft's autograd gradients (fp32,
    to 1e-5 of the largest gradient: the two sum the same products in another order)."""
    twin, run = peft_twin(base_model)
    policy, _, _ = run.models(bf16=False, sft_weights=None, kl_sft=False)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [12, 3, 4, 5, 6, 7, 8, 9]])
    probe = torch.randn(2, 8, base_model.config.vocab_size, generator=torch.Generator().manual_seed(2))
    twin.eval()  # no dropout in either model (GPT-2's config has some)
    (twin(input_ids=ids).logits * probe).sum().backward()
    (policy.compute(input_ids=ids).logits * probe).sum().backward()
    policy.grads_to_master()
    peft_grads = {k.removeprefix(lora.PEFT_PREFIX).replace(".default.", "."): p.grad
                  for k, p in twin.named_parameters() if "lora_" in k}
    ours = dict(run.factors.named_parameters())
    assert ours.keys() == peft_grads.keys() and len(ours) > 0
    for name, p in ours.items():
        want = peft_grads[name]
        assert want.abs().max() > 0, name
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    # Nothing but the target weights of the compute copy took a gradient, and those were handed over.
    assert all(p.grad is None for p in policy.compute.parameters())
    assert all(p.grad is None for p in base_model.parameters())


def test_compute_copy_gives_peft_logits_and_the_saved_adapter_loads_in_peft(base_model, tmp_path):
    """The plain copy with W0 + s·B·A on its targets gives peft's (unmerged) logits to 1e-5 in fp32; the adapter
    folder it writes is read by peft and by warprl.lora.load_adapter."""
    from peft import PeftModel

    base = copy.deepcopy(base_model)
    twin, run = peft_twin(base)
    twin.eval()
    policy, _, _ = run.models(bf16=False, sft_weights=None, kl_sft=False)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        want = twin(input_ids=ids).logits
        assert (want - base_model(input_ids=ids).logits).abs().max() > 1e-2  # the adapter changes the output
        torch.testing.assert_close(policy.compute(input_ids=ids).logits, want, rtol=0, atol=1e-5)
        lora.write_adapter(run.factors, tmp_path / "ad")
        via_peft = PeftModel.from_pretrained(copy.deepcopy(base_model), tmp_path / "ad")(input_ids=ids).logits
        torch.testing.assert_close(via_peft, want, rtol=0, atol=1e-5)
        if base_model.config.model_type == "llama":
            loaded = lora.load_adapter(copy.deepcopy(base_model), tmp_path / "ad")(input_ids=ids).logits
            torch.testing.assert_close(loaded, want, rtol=0, atol=1e-5)
        # fold_adapter (a finished run's result) and LoraRun.fold give the same weights, bit for bit.
        folded = copy.deepcopy(base_model)
        fold_adapter(folded, tmp_path / "ad")
        run.fold()
        assert all(torch.equal(a, b) for a, b in zip(folded.state_dict().values(), base.state_dict().values(),
                                                     strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(base.state_dict().values(),
                                                         base_model.state_dict().values(), strict=True))


def test_bf16_copies_share_the_frozen_tensors():
    """The anchor and θ_sft hold no tensor of their own: every parameter is the policy copy's (bf16)."""
    base = tiny_gpt2()
    run = LoraRun(lora_cfg(anchor="ema"), base, "ema", seed=0)
    policy, anchor, sft_of = run.models(bf16=True, sft_weights=None, kl_sft=True)
    p, a = dict(policy.compute.named_parameters()), dict(anchor.compute.named_parameters())
    assert all(v.dtype == torch.bfloat16 for v in p.values())
    assert all(a[k] is v for k, v in p.items())
    sft = dict(sft_of().named_parameters())  # EMA anchor: θ_sft = W0, a side path on the same tensors
    assert all(sft[k] is v for k, v in p.items())
    assert all(v.dtype == torch.float32 for v in base.parameters())


def _randomise(factors, seed, std):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in factors.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.mark.parametrize("bf16", [False, True])
def test_side_path_anchor_gives_the_logits_of_its_weights(base_model, bf16):
    """The anchor (the policy's copy + s·x·(B_a·A_a − B·A)ᵀ per target) gives the logits of a plain model with
    W0 + s·B_a·A_a on its targets, and θ_sft (no anchor factors) those of W0: to 1e-5 in fp32. In bf16 the side
    path rounds W0 + s·B·A and adds the difference in fp32, so it is held to the rounding of the plain model cast
    to bf16: its largest error against the fp32 logits at most twice that model's. Equal factors score exactly
    as the policy."""
    base = copy.deepcopy(base_model)
    run = LoraRun(lora_cfg(anchor="ema"), base, "ema", seed=0)
    std = 0.06 if bf16 else 0.3  # bf16: ΔW below W0, as in training (the error scales with |W0 + ΔW|)
    _randomise(run.factors, 1, std)
    run.ema.load_state_dict(run.factors.state_dict())
    policy, anchor, sft_of = run.models(bf16=bf16, sft_weights=None, kl_sft=True)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [12, 3, 4, 5, 6, 7, 8, 9]])

    def plain(factors):
        model = copy.deepcopy(base_model).eval()
        if factors is not None:
            modules = dict(model.named_modules())
            with torch.no_grad():
                for t, d in factors.deltas():
                    modules[t.name].weight.add_(d)
        return model

    def check(model, factors):
        truth = plain(factors)(input_ids=ids).logits
        got = model(input_ids=ids).logits.float()
        assert (truth - policy.compute(input_ids=ids).logits.float()).abs().max() > 0.05  # the factors matter
        if not bf16:
            torch.testing.assert_close(got, truth, rtol=0, atol=1e-5)
            return
        rounded = plain(factors).to(torch.bfloat16)(input_ids=ids).logits.float()
        assert (got - truth).abs().max() <= 2 * (rounded - truth).abs().max()

    with torch.no_grad():
        assert torch.equal(anchor.compute(input_ids=ids).logits, policy.compute(input_ids=ids).logits)
        _randomise(run.ema, 2, std)  # the anchor reads its factors live: no sync
        check(anchor.compute, run.ema)
        check(sft_of(), None)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_only_the_factors_train_and_the_ema_follows_its_formula(tiny_policy_dir, tmp_path, monkeypatch):
    """During the run the base is bit-identical after every step, the optimiser holds only A and B, the anchor's
    factors follow θ_ema ← (1−μ)·θ_ema + μ·θ per tensor after each step (its side path reads them:
    test_side_path_anchor_gives_the_logits_of_its_weights). At the end the policy is W0 + s·B·A of the saved adapter."""
    policy, tok = load_policy(str(tiny_policy_dir))
    start = _snapshot(policy)
    cfg = lora_cfg(anchor="ema", mu=0.3)
    real_step, seen = T.rl_step, []

    def checked_step(c, pol, anchor, tok_, reward_fn, prompts, state, opt, method, seed, sft=None):
        before = _snapshot(anchor.master)
        metrics = real_step(c, pol, anchor, tok_, reward_fn, prompts, state, opt, method, seed, sft=sft)
        assert all(torch.equal(v, start[k]) for k, v in policy.state_dict().items())  # the base: untouched
        assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in pol.master.parameters()}
        now, trained = _snapshot(anchor.master), _snapshot(pol.master)
        for k in now:
            assert torch.equal(now[k], torch.lerp(before[k], trained[k], c.mu)), k
            torch.testing.assert_close(now[k], (1 - c.mu) * before[k] + c.mu * trained[k], rtol=0, atol=1e-7)
        seen.append(metrics["charts/kl_anchor"])
        return metrics

    monkeypatch.setattr(T, "rl_step", checked_step)
    run_rl(cfg, tmp_path, policy, tok, tensor_reward(count_word_reward("good")), PROMPTS, method="rloo",
           anchor_kind="ema", seed=0, resume=False)
    assert len(seen) == cfg.steps and seen[0] == 0.0 and max(seen) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "done.json", "metrics.jsonl"]
    assert json.loads((tmp_path / "done.json").read_text())["weights"] == "adapter/adapter_model.safetensors"
    scale, _, pairs = lora.read_adapter(tmp_path / "adapter")
    assert {n.rsplit(".", 1)[-1] for n in pairs} == LLAMA_TARGETS and scale == 2.0
    assert all(float(b.abs().max()) > 0 for _, b in pairs.values())  # B left 0: the adapters trained
    end = policy.state_dict()
    for k, v in start.items():
        module = k.removesuffix(".weight")
        want = v + lora.delta(*pairs[module], scale) if module in pairs else v
        assert torch.equal(end[k], want), k
    assert all(p.requires_grad for p in policy.parameters())  # the base's flags are given back


@pytest.mark.parametrize("method", ["reinforce", "rloo"])
def test_a_lora_run_learns_the_toy_reward(tiny_policy_dir, tmp_path, method):
    policy, tok = load_policy(str(tiny_policy_dir))
    # The tiny model's tied embeddings (std 0.02) bound its logits after the final RMSNorm to about ±0.6: no
    # change of the inner layers can make "good" likely. Larger embeddings give the adapters room.
    with torch.no_grad():
        policy.model.embed_tokens.weight.mul_(5.0)
    run_rl(lora_cfg(steps=30, beta=0.0, lora_r=8, lora_alpha=16.0, kl_sft_every=0), tmp_path, policy, tok,
           tensor_reward(count_word_reward("good")), PROMPTS, method=method, anchor_kind="sft", seed=0, resume=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["charts/reward_mean"] for r in rows[:5]) / 5
    last = sum(r["charts/reward_mean"] for r in rows[-5:]) / 5
    assert last > first + 1.0, (first, last)
    assert rows[0]["charts/kl_anchor"] == 0.0 and rows[-1]["charts/kl_anchor"] > 0.0


@pytest.mark.parametrize("bf16", [False, True])
def test_resume_is_bit_identical(tiny_policy_dir, tmp_path, bf16):
    cfg = lora_cfg(anchor="ema", mu=0.1, bf16=bf16)
    reward = tensor_reward(count_word_reward("good"))
    policy, tok = load_policy(str(tiny_policy_dir))
    run_rl(cfg, tmp_path / "full", policy, tok, reward, PROMPTS, method="rloo", anchor_kind="ema", seed=3,
           resume=False)
    full = _snapshot(policy)
    policy, tok = load_policy(str(tiny_policy_dir))
    part = tmp_path / "part"
    calls, real_step = {"n": 0}, T.rl_step

    def dying_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # during step 5, after the checkpoint of step 4
        return real_step(*a, **k)

    T.rl_step = dying_step
    try:
        with pytest.raises(KeyboardInterrupt):
            run_rl(cfg, part, policy, tok, reward, PROMPTS, method="rloo", anchor_kind="ema", seed=3, resume=False)
    finally:
        T.rl_step = real_step
    ckpt = part / "checkpoints" / "step_000004"
    assert all(".lora_" in k for k in load_file(str(ckpt / "policy.safetensors")))  # factors, not a model
    assert load_file(str(ckpt / "anchor.safetensors")).keys() == load_file(str(ckpt / "policy.safetensors")).keys()
    policy, tok = load_policy(str(tiny_policy_dir))
    run_rl(cfg, part, policy, tok, reward, PROMPTS, method="rloo", anchor_kind="ema", seed=3, resume=True)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (part / "adapter" / name).read_bytes() == (tmp_path / "full" / "adapter" / name).read_bytes()
    assert all(torch.equal(v, full[k]) for k, v in policy.state_dict().items())

    def strip(line):
        return {k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "charts/tokens_per_s",
                                                                              "charts/samples_per_s", "charts/step"))}

    rows = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("full", "part")]
    assert [strip(r) for r in rows[0]] == [strip(r) for r in rows[1]]
    # A finished run is not trained again: its adapter is folded into the policy it is given.
    policy, tok = load_policy(str(tiny_policy_dir))
    run_rl(cfg, part, policy, tok, reward, PROMPTS, method="rloo", anchor_kind="ema", seed=3, resume=True)
    assert all(torch.equal(v, full[k]) for k, v in policy.state_dict().items())


def test_non_finite_reward_stops_before_the_update(tiny_policy_dir, tmp_path):
    policy, tok = load_policy(str(tiny_policy_dir))
    before = _snapshot(policy)

    def nan_reward(p, c):
        return torch.full((len(c),), float("nan"))

    with pytest.raises(NonFiniteError, match="non-finite reward at step 1"):
        run_rl(lora_cfg(), tmp_path, policy, tok, nan_reward, PROMPTS, method="rloo", anchor_kind="sft", seed=0,
               resume=False)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    saved = load_file(str(tmp_path / "checkpoints" / "step_000000" / "policy.safetensors"))
    assert saved and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in saved)
    assert all(float(v.abs().max()) == 0 for k, v in saved.items() if "lora_B" in k)  # no update was made


def test_one_prompt_pass_per_group_with_lora_policy_and_side_path_anchor(base_model, monkeypatch):
    """With LoRA, scoring the k samples of a prompt with one pass over the prompt (rollout.SHARED_PROMPT) gives the
    policy's log-probs and its factors' gradients (handed over by the chain-rule hooks), and the side-path EMA
    anchor's log-probs, of a pass per sample: to 1e-5 in fp32."""
    from warprl.rl import rollout as R

    monkeypatch.setitem(R.SHARED_PROMPT, "min_tokens", 0)  # a few prompt tokens here
    run = LoraRun(lora_cfg(anchor="ema"), copy.deepcopy(base_model), "ema", seed=0)
    _randomise(run.factors, 1, 0.3)
    _randomise(run.ema, 2, 0.3)  # the anchor's factors differ from the policy's
    policy, anchor, _ = run.models(bf16=False, sft_weights=None, kl_sft=False)
    k, n = 3, 5
    gen = torch.Generator().manual_seed(3)
    prompts = torch.randint(2, base_model.config.vocab_size, (2, 4), generator=gen)
    p_mask = torch.ones_like(prompts)
    p_mask[1, :2] = 0  # a left-padded prompt
    ids = torch.cat([prompts.repeat_interleave(k, 0), torch.randint(2, base_model.config.vocab_size, (2 * k, n),
                                                                    generator=gen)], 1)
    mask = torch.cat([p_mask.repeat_interleave(k, 0), torch.ones(2 * k, n, dtype=torch.long)], 1)
    assert R.prompt_group(policy.compute, ids, mask, n, k) == k  # the shared path is the one taken

    def score(group):
        run.factors.zero_grad(set_to_none=True)
        logp = R.sequence_logprobs(policy.compute, ids, mask, n, 0.8, group=group)
        (logp * torch.linspace(-1, 1, 2 * k)[:, None]).sum().backward()
        policy.grads_to_master()
        with torch.no_grad():
            ref = R.sequence_logprobs(anchor.compute, ids, mask, n, 0.8, group=group)
        return logp.detach(), ref, {name: p.grad.clone() for name, p in run.factors.named_parameters()}

    shared, per_sample = score(k), score(1)
    torch.testing.assert_close(shared[0], per_sample[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared[1], per_sample[1], atol=1e-5, rtol=1e-5)
    assert (shared[1] - shared[0]).abs().max() > 1e-3  # the anchor's factors count
    assert shared[2].keys() == per_sample[2].keys() and len(shared[2]) > 0
    for name, g in per_sample[2].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(shared[2][name], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()), msg=name)
