"""Held-out evaluation of a policy: reward, KL to the SFT policy, an independent judge, diversity, loops.

What each number means (one sample = one completion of one held-out prompt):

* ``reward_mean`` / ``reward_std``: the reward being optimised, over all samples.
* ``kl_mean``: Monte-Carlo KL(π ‖ π_sft) = mean over samples of Σ_t [log π(y_t) − log π_sft(y_t)], the sum
  running over the completion tokens (up to and including EOS). Both log-probs are taken at the *sampling*
  temperature, i.e. it is the KL between the two tempered distributions we actually sample from (the
  quantity the RL runs penalise); at temperature 1 it is the plain KL. Both terms come from the same
  teacher-forced forward pass code (not from ``generate``'s logits), so identical weights give exactly 0.
* ``judge_mean`` / ``judge_positive_rate``: a second scorer the policy never trained on (default: VADER's
  compound score in [−1, 1]). A sample counts as positive when its judge score is above
  ``JUDGE_POSITIVE_THRESHOLD`` = 0.05, VADER's own convention for "positive". If the reward rises but the
  judge does not, the policy is exploiting the reward model.
* ``distinct_1`` / ``distinct_2``: unique n-grams / all n-grams, pooled across all completions.
* ``unique_fraction``: distinct completion texts / completions.
* ``repetition_rate``: share of completions in which some 4-gram occurs twice (a degenerate loop).
* ``nll_sft``: mean per-token negative log-likelihood of the completion tokens under the SFT model at
  temperature 1 (token-weighted over all samples): is the text still language the SFT model finds likely?
* ``length_mean``: mean completion length in policy tokens (``length_words``: in words).
* ``gold_mean`` (with a gold scorer): a stronger reward model that RL never optimises, e.g. a MiniLM fine-tuned
  on all training pairs (`warprl reward train`): if the proxy reward rises but the gold one does not, the policy
  is over-optimising the proxy.
* ``reward_ci``, ``kl_ci``, ``judge_positive_rate_ci`` (and ``gold_ci``): 95 % percentile bootstrap intervals
  over *prompts* (the samples of a prompt are resampled together; :mod:`warprl.eval.stats`), as [low, high].

Precision: with ``bf16`` both models are evaluated as bf16 *copies* (weights cast once), as the training loop
does: generating with bf16 weights is far faster on a CPU than autocast, which re-casts every weight at every
token. Policy and SFT log-probs then come from the same kind of model, so equal weights still give KL 0.

Determinism: prompts are split into fixed batches and batch ``i`` is sampled with the seed
``derive_seed(seed, "eval", i)``, so two policies evaluated with the same settings see the same prompts and
the same random stream (common random numbers: their difference is less noisy than either number).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from warprl.config import EvalConfig
from warprl.data import load_prompts
from warprl.errors import UserError
from warprl.eval import stats
from warprl.eval import textmetrics as tm
from warprl.precision import compute_copy
from warprl.reward import load_reward
from warprl.rl import algorithms as A
from warprl.rl.rollout import SamplingConfig, anchor_logprobs, sample
from warprl.seeding import derive_seed

JUDGE_POSITIVE_THRESHOLD = 0.05  # VADER: compound > 0.05 is "positive"

# The metrics every evaluation reports, in display order (the JSON of `warprl evaluate` has these keys).
METRIC_KEYS = ("reward_mean", "reward_std", "kl_mean", "judge_positive_rate", "judge_mean", "distinct_1",
               "distinct_2", "unique_fraction", "repetition_rate", "nll_sft", "length_mean")


@dataclass
class SampleSet:
    """Everything measured per sample; the metrics are pure functions of it (see :func:`summarise`)."""

    prompts: list[str]
    completions: list[str]
    rewards: list[float]
    judge: list[float]
    kl: list[float]  # Σ_t log π − log π_sft per sample
    nll_sum: list[float]  # Σ_t −log π_sft(y_t) at temperature 1
    n_tokens: list[int]
    gold: list[float] = field(default_factory=list)  # the gold reward per sample (empty without a gold scorer)


# ------------------------------------------------------------------------------------------ pure metrics


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _std(xs: list[float]) -> float:
    # Sample standard deviation (n − 1), as torch.std; 0 for a single sample.
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def judge_positive_rate(scores: list[float], threshold: float = JUDGE_POSITIVE_THRESHOLD) -> float:
    """Share of judge scores strictly above ``threshold``."""
    return sum(s > threshold for s in scores) / len(scores) if scores else 0.0


def summarise(s: SampleSet) -> dict[str, float]:
    """The metrics of :data:`METRIC_KEYS` (plus counts) from per-sample measurements."""
    total_tokens = sum(s.n_tokens)
    return {
        "reward_mean": _mean(s.rewards),
        "reward_std": _std(s.rewards),
        "kl_mean": _mean(s.kl),
        "judge_positive_rate": judge_positive_rate(s.judge),
        "judge_mean": _mean(s.judge),
        "distinct_1": tm.distinct_n(s.completions, 1),
        "distinct_2": tm.distinct_n(s.completions, 2),
        "unique_fraction": tm.unique_fraction(s.completions),
        "repetition_rate": tm.repetition_rate(s.completions, n=4),
        "nll_sft": sum(s.nll_sum) / total_tokens if total_tokens else 0.0,
        "length_mean": _mean([float(n) for n in s.n_tokens]),
        "length_words": tm.mean_length_words(s.completions),
        "n_prompts": len(dict.fromkeys(s.prompts)),
        "n_samples": len(s.completions),
        **intervals(s),
    }


def intervals(s: SampleSet) -> dict:
    """95 % bootstrap intervals over prompts of the reward, KL, judge positive rate (and gold) means."""
    if not s.completions:
        return {}
    out = {"reward_ci": list(stats.prompt_ci(s.prompts, s.rewards)), "kl_ci": list(stats.prompt_ci(s.prompts, s.kl)),
           "judge_positive_rate_ci": list(stats.prompt_ci(
               s.prompts, [float(j > JUDGE_POSITIVE_THRESHOLD) for j in s.judge]))}
    if s.gold:
        out["gold_mean"] = _mean(s.gold)
        out["gold_ci"] = list(stats.prompt_ci(s.prompts, s.gold))
    return out


# ------------------------------------------------------------------------------------------- sampling


def _as_list(scores, n: int, what: str) -> list[float]:
    values = scores.detach().float().cpu().tolist() if torch.is_tensor(scores) else [float(x) for x in scores]
    if len(values) != n:
        raise ValueError(f"{what} returned {len(values)} scores for {n} completions")
    return values


@torch.no_grad()
def collect_samples(policy, tokenizer, sft, reward_fn, judge_fn, prompts: list[str], cfg: EvalConfig,
                    progress: bool = False, desc: str = "evaluate", gold_fn=None, clock=None) -> SampleSet:
    """Sample ``cfg.samples_per_prompt`` completions per prompt and measure each one (see module doc).

    ``clock`` (e.g. :class:`warprl.rl.loop.PhaseClock`) is entered around each phase of a batch: ``sample``,
    ``logp_policy``, ``logp_sft``, ``reward``, ``judge``, ``gold`` (where the evaluation's time goes).
    """
    if not prompts:
        raise ValueError("no prompts to evaluate")
    clock = clock or (lambda _phase: nullcontext())
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, engine=cfg.engine)
    out = SampleSet([], [], [], [], [], [], [])
    same = sft is policy
    policy = compute_copy(policy, cfg.bf16)
    sft = policy if same else compute_copy(sft, cfg.bf16)
    batches = [prompts[i : i + cfg.batch_size] for i in range(0, len(prompts), cfg.batch_size)]
    for i, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)):
        with clock("sample"):
            roll = sample(policy, tokenizer, batch, scfg, k=cfg.samples_per_prompt,
                          generator_seed=derive_seed(cfg.seed, "eval", i))
        # Teacher-forced log-probs for both models through the same code path: exact 0 KL for equal weights.
        group = cfg.samples_per_prompt  # each prompt is run once for its samples
        with clock("logp_policy"):
            logp = anchor_logprobs(policy, roll, cfg.temperature, group=group)
        with clock("logp_sft"):
            logp_sft = logp if sft is policy else anchor_logprobs(sft, roll, cfg.temperature, group=group)
            if cfg.temperature == 1.0:
                logp_sft_t1 = logp_sft
            else:  # the NLL is a property of the text under the SFT model itself: temperature 1
                logp_sft_t1 = anchor_logprobs(sft, roll, 1.0, group=group)
        n = len(roll.completions)
        out.prompts += roll.prompts
        out.completions += roll.completions
        with clock("reward"):
            out.rewards += _as_list(reward_fn(roll.prompts, roll.completions), n, "reward")
        with clock("judge"):
            out.judge += _as_list(judge_fn(roll.prompts, roll.completions), n, "judge")
        if gold_fn is not None:
            with clock("gold"):
                out.gold += _as_list(gold_fn(roll.prompts, roll.completions), n, "gold")
        out.kl += A.sequence_kl(logp, logp_sft, roll.mask, "k1").tolist()
        out.nll_sum += (-A.masked_sum(logp_sft_t1, roll.mask, dim=-1)).tolist()
        out.n_tokens += [int(x) for x in roll.mask.sum(-1).tolist()]
    return out


def evaluate_policy(policy, tokenizer, sft, reward_fn, judge_fn, prompts: list[str], cfg: EvalConfig,
                    progress: bool = False, desc: str = "evaluate", gold_fn=None) -> dict:
    """Evaluate ``policy`` against ``sft`` on ``prompts``: the metrics of :data:`METRIC_KEYS` plus ``samples``.

    ``reward_fn`` and ``judge_fn`` map (prompts, completions) to one score per completion (tensor or list).
    ``sft`` may be the same object as ``policy`` (KL 0 without a second forward pass). ``gold_fn`` (optional)
    scores every sample with a gold reward model as well.
    """
    s = collect_samples(policy, tokenizer, sft, reward_fn, judge_fn, prompts, cfg, progress=progress, desc=desc,
                        gold_fn=gold_fn)
    result = summarise(s)
    result["samples"] = [
        {"prompt": p, "completion": c, "reward": r, "judge": j, "kl": k}
        for p, c, r, j, k in zip(s.prompts, s.completions, s.rewards, s.judge, s.kl, strict=True)
    ]
    for smp, g in zip(result["samples"], s.gold, strict=False):
        smp["gold"] = g
    return result


# -------------------------------------------------------------------- inputs (commands, library)


def eval_prompts(cfg: EvalConfig, tokenizer) -> list[str]:
    """The held-out prompts: the ``eval`` split of ``cfg.prompts`` (never the RL training split, whatever seed
    `warprl align` ran with: the split is a hash of each review or line, see :func:`warprl.data.load_prompts`).
    """
    return load_prompts(cfg.prompts, tokenizer, split="eval", n_tokens=cfg.prompt_tokens, seed=0,
                        limit=cfg.n_prompts)


def load_scorers(reward: str, judge: str, device, bf16: bool, batch_size: int = 32):
    """(reward_fn, judge_fn) from their specs (aliases such as imdb-sentiment and vader, or RM folders)."""
    reward_fn = load_reward(reward, device=device, batch_size=batch_size, bf16=bf16)
    judge_fn = reward_fn if judge == reward else load_reward(judge, device=device, batch_size=batch_size, bf16=bf16)
    return reward_fn, judge_fn


def load_gold(gold: str, device, bf16: bool, batch_size: int = 32):
    """The gold scorer of ``--gold`` (None when not given): any reward spec, typically an RM folder."""
    return load_reward(gold, device=device, batch_size=batch_size, bf16=bf16) if gold else None


def check_same_vocab(policy, sft, policy_spec: str, sft_spec: str) -> None:
    """The KL compares token distributions: both models must share one vocabulary."""
    a, b = policy.get_output_embeddings().weight.shape[0], sft.get_output_embeddings().weight.shape[0]
    if a != b:
        raise UserError(f"policy {policy_spec} and SFT {sft_spec} have different vocabularies ({a} vs {b} tokens); "
                        f"the KL needs the same tokenizer")
