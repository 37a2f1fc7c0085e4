"""The RL loop on a tiny random policy: it learns a toy reward, checkpoints, resumes bit-identically."""

import json

import pytest
import torch
from safetensors.torch import load_file

import warprl.rl.loop as T
from tests.conftest import count_word_reward
from warprl.config import AlignConfig
from warprl.errors import UserError
from warprl.models import load_policy
from warprl.rl.loop import NonFiniteError, run_rl
from warprl.seeding import prompt_batch

PROMPTS = ["the movie was", "I love this film", "the plot is", "this actor was", "a story and", "the end"]


def tensor_reward(fn):
    return lambda prompts, completions: torch.tensor(fn(prompts, completions), dtype=torch.float32)


def tiny_cfg(**kw) -> AlignConfig:
    base = dict(steps=40, batch_size=4, k=4, lr=3e-2, beta=0.0, max_new_tokens=8, bf16=False, progress=False,
                checkpoint_every=5)
    base.update(kw)
    return AlignConfig(**base)


@pytest.mark.parametrize("method", ["reinforce", "rloo"])
def test_policy_learns_a_toy_reward(tiny_policy_dir, tmp_path, method):
    policy, tok = load_policy(str(tiny_policy_dir))
    reward = tensor_reward(count_word_reward("good"))
    run_rl(tiny_cfg(method=method), tmp_path, policy, tok, reward, PROMPTS, method=method, anchor_kind="sft",
           seed=0, resume=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    first = sum(r["charts/reward_mean"] for r in rows[:5]) / 5
    last = sum(r["charts/reward_mean"] for r in rows[-5:]) / 5
    assert last > first + 1.0, (first, last)
    for key in ("charts/kl_mean", "losses/policy", "losses/grad_norm", "charts/entropy", "charts/tokens_per_s"):
        assert key in rows[0]
    assert (tmp_path / "weights.safetensors").is_file() and (tmp_path / "done.json").is_file()


def test_kl_penalty_keeps_policy_closer(tiny_policy_dir, tmp_path):
    """With a large β the final KL to the SFT anchor is smaller than without the penalty."""
    kls = {}
    for beta in (0.0, 1.0):
        policy, tok = load_policy(str(tiny_policy_dir))
        out = tmp_path / f"b{beta}"
        run_rl(tiny_cfg(steps=25, beta=beta), out, policy, tok, tensor_reward(count_word_reward("good")),
               PROMPTS, method="rloo", anchor_kind="sft", seed=0, resume=False)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        kls[beta] = sum(r["charts/kl_mean"] for r in rows[-5:]) / 5
    assert kls[1.0] < kls[0.0]


@pytest.mark.parametrize("bf16", [False, True])
def test_resume_is_bit_identical(tiny_policy_dir, tmp_path, bf16):
    # kl_sft_every=3: one KL-to-SFT measurement before the kill and one after the resume (from a θ_sft copy
    # the resumed run must still have: its EMA anchor has moved).
    cfg = tiny_cfg(steps=6, checkpoint_every=2, anchor="ema", mu=0.1, bf16=bf16, kl_sft_every=3)
    reward = tensor_reward(count_word_reward("good"))
    policy, tok = load_policy(str(tiny_policy_dir))
    run_rl(cfg, tmp_path / "full", policy, tok, reward, PROMPTS, method="rloo", anchor_kind="ema", seed=3,
           resume=False)
    # A second run dies during step 5, after its checkpoint at step 4, and is resumed.
    policy, tok = load_policy(str(tiny_policy_dir))
    part2 = tmp_path / "part2"

    calls = {"n": 0}
    real_step = T.rl_step

    def dying_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # dies during step 5, after the checkpoint at step 4
        return real_step(*a, **k)

    T.rl_step = dying_step
    try:
        with pytest.raises(KeyboardInterrupt):
            run_rl(cfg, part2, policy, tok, reward, PROMPTS, method="rloo", anchor_kind="ema", seed=3, resume=False)
    finally:
        T.rl_step = real_step
    assert json.loads((part2 / "checkpoints" / "latest.json").read_text())["step"] == 4
    policy, tok = load_policy(str(tiny_policy_dir))
    run_rl(cfg, part2, policy, tok, reward, PROMPTS, method="rloo", anchor_kind="ema", seed=3, resume=True)
    a = load_file(str(tmp_path / "full" / "weights.safetensors"))
    b = load_file(str(part2 / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full_rows = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    resumed_rows = (part2 / "metrics.jsonl").read_text().splitlines()
    assert len(resumed_rows) == 6
    def strip(r):
        return {k: v for k, v in json.loads(r).items() if not k.startswith(("time/", "charts/tokens_per_s",
                                                                                         "charts/samples_per_s", "charts/step_time"))}
    assert [strip(r) for r in full_rows] == [strip(r) for r in resumed_rows]
    assert [json.loads(r)["step"] for r in resumed_rows if "charts/kl_sft" in r] == [3, 6]


@pytest.mark.parametrize("anchor", ["sft", "ema"])
def test_kl_to_the_anchor_and_kl_to_sft_are_named_apart(tiny_policy_dir, tmp_path, anchor):
    # With an EMA anchor and μ = 1 the anchor is the previous step's policy: KL to it is one step's drift,
    # while the KL to θ_sft accumulates. With the SFT anchor both measure the distance to the same model.
    cfg = tiny_cfg(steps=8, kl_sft_every=4, anchor=anchor, mu=1.0)
    policy, tok = load_policy(str(tiny_policy_dir))
    run_rl(cfg, tmp_path, policy, tok, tensor_reward(count_word_reward("good")), PROMPTS, method="rloo",
           anchor_kind=anchor, seed=0, resume=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "charts/kl_sft" in r] == [4, 8]
    assert all(r["charts/kl_anchor"] == r["charts/kl_mean"] for r in rows)  # the old name is an alias
    assert rows[-1]["charts/kl_sft"] > 0.05
    if anchor == "ema":
        assert rows[-1]["charts/kl_sft"] > 2 * abs(rows[-1]["charts/kl_anchor"])


@pytest.mark.parametrize("anchor", ["sft", "ema"])
def test_kl_to_sft_is_measured_on_the_steps_own_samples(tiny_policy_dir, tmp_path, anchor):
    # θ_sft is the penalty's anchor ("sft"), or the EMA's start with μ = 0 (a separate θ_sft copy, a pass of its
    # own). With k = 1 the first sample of each prompt is the whole batch, so the k1 KL to θ_sft is the step's
    # KL to its anchor, to the bit.
    cfg = tiny_cfg(steps=4, k=1, kl_sft_every=2, anchor=anchor, mu=0.0, kl_estimator="k1")
    policy, tok = load_policy(str(tiny_policy_dir))
    length = tensor_reward(lambda prompts, completions: [float(len(c)) for c in completions])  # never all equal
    run_rl(cfg, tmp_path, policy, tok, length, PROMPTS, method="reinforce", anchor_kind=anchor, seed=0,
           resume=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in rows if "charts/kl_sft" in r]
    assert [r["step"] for r in measured] == [2, 4]
    assert [r["charts/kl_sft"] for r in measured] == [r["charts/kl_anchor"] for r in measured]
    assert all(r["charts/kl_sft"] != 0 for r in measured)  # the policy moved (k1 may be < 0 on 4 samples)
    # The measurement is not part of the step's time: the step is its four phases, the pass is booked apart.
    for r in rows:
        phases = sum(r[f"time/{p}_s"] for p in ("generate", "reward", "anchor", "update"))
        assert r["charts/step_time_s"] == pytest.approx(phases, abs=1e-9)
    assert all(r["time/kl_sft_s"] >= 0 for r in measured) and not any("time/kl_sft_s" in r for r in rows[::2])
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["time"]["kl_sft"] == pytest.approx(sum(r["time/kl_sft_s"] for r in measured), abs=2e-3)


def test_no_checkpoint_after_the_last_step(tiny_policy_dir, tmp_path, monkeypatch):
    """The run's weights and done.json supersede a checkpoint of its last step: none is written (it cost WARP a
    full weights + EMA + optimiser write per run, deleted right after); done.json says where the time went."""
    saved = []
    real = T.save_checkpoint
    monkeypatch.setattr(T, "save_checkpoint", lambda root, state, *a, **kw: saved.append(state.step) or
                        real(root, state, *a, **kw))
    policy, tok = load_policy(str(tiny_policy_dir))
    run_rl(tiny_cfg(steps=4, checkpoint_every=2, kl_sft_every=2), tmp_path, policy, tok,
           tensor_reward(count_word_reward("good")), PROMPTS, method="rloo", anchor_kind="sft", seed=0, resume=False)
    assert saved == [2]
    assert not (tmp_path / "checkpoints").exists()
    done = json.loads((tmp_path / "done.json").read_text())
    assert set(done["time"]) == {"setup", "steps", "kl_sft", "metrics", "checkpoint", "finish"}
    steps = sum(json.loads(x)["charts/step_time_s"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines())
    assert steps <= done["time"]["steps"] + 2e-3 and all(v >= 0 for v in done["time"].values())


def test_non_finite_reward_stops_before_the_update(tiny_policy_dir, tmp_path):
    policy, tok = load_policy(str(tiny_policy_dir))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    def nan_reward(p, c):
        return torch.full((len(c),), float("nan"))
    with pytest.raises(NonFiniteError, match="non-finite reward at step 1"):
        run_rl(tiny_cfg(steps=3), tmp_path, policy, tok, nan_reward, PROMPTS, method="rloo", anchor_kind="sft",
               seed=0, resume=False)
    assert isinstance(NonFiniteError("x"), UserError)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert (tmp_path / "checkpoints" / "latest.json").is_file()


def test_prompt_batches_cover_each_epoch_once():
    prompts = [str(i) for i in range(10)]
    first_epoch = prompt_batch(prompts, 10, seed=1, position=0)
    assert sorted(first_epoch) == prompts
    assert prompt_batch(prompts, 4, seed=1, position=8) == first_epoch[8:] + prompt_batch(prompts, 2, 1, 10)


@pytest.mark.parametrize("bf16", [False, True])
def test_first_step_kl_is_exactly_zero_and_bf16_learns(tiny_policy_dir, tmp_path, bf16):
    """Before the first update policy == anchor: the KL uses the same forward path for both, so it is 0."""
    policy, tok = load_policy(str(tiny_policy_dir))
    run_rl(tiny_cfg(bf16=bf16, steps=30), tmp_path, policy, tok, tensor_reward(count_word_reward("good")),
           PROMPTS, method="rloo", anchor_kind="sft", seed=0, resume=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["charts/kl_mean"] == 0.0
    assert rows[1]["charts/kl_mean"] != 0.0
    assert sum(r["charts/reward_mean"] for r in rows[-5:]) / 5 > sum(r["charts/reward_mean"] for r in rows[:5]) / 5 + 1
    assert next(iter(load_file(str(tmp_path / "weights.safetensors")).values())).dtype == torch.float32


def _first_step_gradient(tiny_policy_dir, grad_accum: int) -> tuple[list[torch.Tensor], dict]:
    """The gradient the optimiser receives in step 1 (fp32, SFT anchor), and the step's metrics."""
    import copy

    from warprl.precision import MixedPrecision
    from warprl.rl.checkpoint import LoopState

    policy, tok = load_policy(str(tiny_policy_dir))
    anchor = copy.deepcopy(policy).eval().requires_grad_(False)
    cfg = tiny_cfg(beta=0.1, max_grad_norm=0.0, grad_accum=grad_accum)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    seen: list[torch.Tensor] = []
    opt.step = lambda: seen.extend(p.grad.clone() for p in policy.parameters())  # record, do not update
    metrics = T.rl_step(cfg, MixedPrecision(policy, False), MixedPrecision(anchor, False, trainable=False), tok,
                        tensor_reward(count_word_reward("good")), PROMPTS[:4], LoopState(), opt, "rloo", seed=3)
    return seen, metrics


def test_grad_accum_gives_the_same_update_as_one_batch(tiny_policy_dir):
    """Accumulating 2 or 4 micro-batches changes the summation order, not the gradient nor the metrics."""
    one, m1 = _first_step_gradient(tiny_policy_dir, 1)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in one))
    assert norm > 1e-3  # a real gradient, so equality below means something
    for accum in (2, 4):
        acc, m = _first_step_gradient(tiny_policy_dir, accum)
        assert len(acc) == len(one)
        for a, b in zip(acc, one, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6 * float(norm), rtol=1e-4)
        for key in ("charts/reward_mean", "charts/kl_mean", "losses/policy", "losses/grad_norm"):
            assert m[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), (key, accum)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_one_prompt_pass_per_group_gives_the_same_step(tiny_policy_dir, monkeypatch, grad_accum):
    """The step scores the k samples of a prompt with one pass over the prompt (rollout.SHARED_PROMPT): the same
    gradient and metrics as a pass per sample, micro-batches included (they keep whole groups), and the first
    step's KL is still exactly 0."""
    from warprl.rl import rollout as R

    calls = []
    group = R.prompt_group
    monkeypatch.setattr(R, "prompt_group", lambda *a: calls.append(group(*a)) or calls[-1])
    monkeypatch.setitem(R.SHARED_PROMPT, "min_tokens", 0)  # the test prompts are a few tokens long
    shared, m_shared = _first_step_gradient(tiny_policy_dir, grad_accum)
    assert calls and set(calls) == {tiny_cfg().k}  # every pass shared the prompt
    monkeypatch.setitem(R.SHARED_PROMPT, "enabled", False)
    per_sample, m = _first_step_gradient(tiny_policy_dir, grad_accum)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in per_sample))
    for a, b in zip(shared, per_sample, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6 * float(norm), rtol=1e-4)
    assert m_shared["charts/kl_mean"] == 0.0
    for key in ("charts/reward_mean", "losses/policy", "losses/grad_norm", "charts/entropy"):
        assert m_shared[key] == pytest.approx(m[key], rel=1e-5, abs=1e-7), key


def test_ema_anchor_follows_its_formula_and_is_the_kl_anchor(tiny_policy_dir, tmp_path):
    """After a step θ_ema ← (1−μ)·θ_ema + μ·θ, and the next step's KL is measured against that anchor."""
    import copy

    from warprl.precision import MixedPrecision
    from warprl.rl.checkpoint import LoopState

    policy, tok = load_policy(str(tiny_policy_dir))
    anchor = copy.deepcopy(policy).eval().requires_grad_(False)
    theta0 = {k: v.clone() for k, v in policy.state_dict().items()}
    cfg = tiny_cfg(mu=0.3, anchor="ema", beta=0.1)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    T.rl_step(cfg, MixedPrecision(policy, False), MixedPrecision(anchor, False, trainable=False), tok,
              tensor_reward(count_word_reward("good")), PROMPTS[:4], LoopState(), opt, "rloo", seed=0)
    theta1, ema = policy.state_dict(), anchor.state_dict()
    assert max(float((theta1[k] - theta0[k]).abs().max()) for k in theta0) > 1e-3  # the step moved θ
    for k in theta0:
        torch.testing.assert_close(ema[k], 0.7 * theta0[k] + 0.3 * theta1[k], atol=1e-6, rtol=1e-6)

    # With μ = 1 the EMA anchor after step 1 *is* θ_1, so step 2 (sampled from θ_1) has exactly zero KL;
    # with the SFT anchor it does not: the KL term reads the EMA anchor, updated every step.
    kl2 = {}
    for kind in ("ema", "sft"):
        policy, tok = load_policy(str(tiny_policy_dir))
        out = tmp_path / f"mu1-{kind}"
        run_rl(tiny_cfg(steps=2, mu=1.0, beta=0.1), out, policy, tok, tensor_reward(count_word_reward("good")),
               PROMPTS, method="rloo", anchor_kind=kind, seed=0, resume=False)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        kl2[kind] = rows[1]["charts/kl_mean"]
    assert kl2["ema"] == 0.0 and kl2["sft"] > 1e-4, kl2


@pytest.mark.parametrize("bf16", [False, True])
def test_eager_attention_is_the_same_step_and_leaves_the_policy_its_kernel(tiny_policy_dir, tmp_path, monkeypatch,
                                                                          bf16):
    """--attn-implementation eager runs the log-prob and update passes through eager attention: the first step
    (same samples: the rollout engine has its own attention) gives sdpa's metrics up to rounding, the KL of
    identical weights is still exactly 0, and the policy gets its own kernel back (what is saved loads with it)."""
    from transformers.models.llama import modeling_llama

    calls = []
    eager = modeling_llama.eager_attention_forward
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", lambda *a, **kw: calls.append(1) or eager(*a, **kw))
    rows = {}
    for attn in ("sdpa", "eager", "auto"):  # auto: eager for a bf16 compute copy on a CPU, sdpa in fp32
        calls.clear()
        policy, tok = load_policy(str(tiny_policy_dir))
        run_rl(tiny_cfg(bf16=bf16, steps=2, beta=0.1, attn_implementation=attn), tmp_path / attn, policy, tok,
               tensor_reward(count_word_reward("good")), PROMPTS, method="rloo", anchor_kind="sft", seed=0,
               resume=False)
        assert (len(calls) > 0) == (attn == "eager" or (attn == "auto" and bf16)), attn
        assert policy.config._attn_implementation == "sdpa"
        rows[attn] = [json.loads(line) for line in (tmp_path / attn / "metrics.jsonl").read_text().splitlines()]
    sdpa, eag = rows["sdpa"][0], rows["eager"][0]
    assert eag["charts/kl_anchor"] == 0.0
    assert eag["samples/first"] == sdpa["samples/first"] and eag["charts/reward_mean"] == sdpa["charts/reward_mean"]
    tol = 2e-2 if bf16 else 1e-5  # bf16: the two kernels round their softmax and sums differently
    for key in ("losses/policy", "losses/grad_norm", "charts/entropy"):
        assert eag[key] == pytest.approx(sdpa[key], rel=tol, abs=tol), key
