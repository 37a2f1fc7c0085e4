"""Where one evaluation batch's time goes: sampling, the two teacher-forced passes, the scorers.

    .venv/bin/python benchmarks/bench_eval.py [--policy smollm2-imdb] [--batch 64] [--repeats 3] [--gold SPEC]
    .venv/bin/python benchmarks/bench_eval.py --smoke --json     # a tiny random model, in seconds

One batch of `warprl evaluate` (`warprl.eval.evaluate.collect_samples`, its own phase clock) at the ablation's
shape: `--batch` held-out prompts of 5–10 tokens (the IMDB eval split when ../shared holds the data, else the builtin
openings) × 2 samples × ≤ 24 tokens, in the commands' default precision. The policy and its SFT reference are two
distinct models (same weights), so both teacher-forced passes run, as for every ablation candidate. After a warm-up
batch, `--repeats` batches; medians. In the same run: the policy pass's FLOP/s against the measured matmul peak,
and the lever of a79bfd2 (the fused head's entropy pass skipped where nobody reads it), alternated with the old
work (`sequence_logprobs(..., return_entropy=True)` under no_grad) on one rollout.

Writes the section "Evaluation batch: where the time goes" of benchmarks/RESULTS.md (not with --smoke); --json
prints one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, matmul_peak, run_and_publish  # noqa: E402
from bench_rl_step import update_flops  # noqa: E402

from warprl.heap import keep_freed_memory  # noqa: E402

DATA = "../shared/data/imdb/train.parquet"
PHASES = ("sample", "logp_policy", "logp_sft", "reward", "judge", "gold")


def synced_clock(device):
    """A run's PhaseClock that synchronises ``device`` before each phase ends (a GPU runs ahead of Python)."""
    from warprl.precision import synchronize
    from warprl.rl.loop import PhaseClock

    class SyncedClock(PhaseClock):
        @contextmanager
        def __call__(self, name: str):
            with super().__call__(name):
                try:
                    yield
                finally:
                    synchronize(device)

    return SyncedClock()


def run(args, tmp: Path) -> dict:
    import torch

    from warprl.commands.flags import default_bf16
    from warprl.config import EvalConfig
    from warprl.eval.evaluate import collect_samples, eval_prompts, load_gold, load_scorers
    from warprl.models import load_policy
    from warprl.precision import compute_copy
    from warprl.rl.rollout import SamplingConfig, anchor_logprobs, sample, sequence_logprobs

    policy_spec, prompt_tokens = args.policy, "5-10"  # the ablation's prompts
    prompts_spec = args.prompts or (DATA if Path(DATA).exists() else "builtin")
    if args.smoke:
        from bench_lora import tiny_policy

        policy_spec = str(tiny_policy(tmp / "tiny"))
        prompts_spec, prompt_tokens = str(tmp / "tiny" / "prompts.txt"), "2-3"
    bf16 = default_bf16("cpu") and not args.smoke
    cfg = EvalConfig(policy=policy_spec, reward=args.reward, judge="vader", gold=args.gold, prompts=prompts_spec,
                     prompt_tokens=prompt_tokens, n_prompts=args.batch, samples_per_prompt=2, batch_size=args.batch,
                     max_new_tokens=args.max_new_tokens, bf16=bf16, device="cpu")
    policy, tok = load_policy(policy_spec)
    sft = copy.deepcopy(policy)  # another model with the same weights: both passes run, KL 0
    reward_fn, judge_fn = load_scorers(cfg.reward, cfg.judge, "cpu", bf16)
    gold_fn = load_gold(cfg.gold, "cpu", bf16)
    prompts = eval_prompts(cfg, tok)[: args.batch]
    batches = []
    for i in range(args.repeats + 1):  # the first is the warm-up
        clock = synced_clock(torch.device("cpu"))
        t0 = time.perf_counter()
        s = collect_samples(policy, tok, sft, reward_fn, judge_fn, prompts, cfg, gold_fn=gold_fn, clock=clock)
        clock.seconds["total"] = time.perf_counter() - t0
        assert max(abs(k) for k in s.kl) == 0.0  # the same weights through the same code path
        if i:
            batches.append(clock.seconds)
    phases = {p: statistics.median(b.get(p, 0.0) for b in batches) for p in PHASES + ("total",)}
    n_samples = len(prompts) * cfg.samples_per_prompt

    # The entropy lever, alternated on one rollout of the same batch.
    model = compute_copy(policy, bf16)
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens)
    roll = sample(model, tok, prompts, scfg, k=cfg.samples_per_prompt, generator_seed=0)
    n = roll.completion_ids.shape[1]
    ab = {"without_entropy": [], "with_entropy": []}
    for _ in range(args.repeats + 1):
        t0 = time.perf_counter()
        anchor_logprobs(model, roll, 1.0)
        t1 = time.perf_counter()
        with torch.no_grad():
            sequence_logprobs(model, roll.input_ids, roll.attention_mask, n, 1.0, return_entropy=True)
        t2 = time.perf_counter()
        ab["without_entropy"].append(t1 - t0)
        ab["with_entropy"].append(t2 - t1)
    ab = {k: statistics.median(v[1:]) for k, v in ab.items()}
    flop = update_flops(model, *roll.input_ids.shape, n) / 3  # a forward is a third of an update
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32, reps=3 if args.smoke else 10)
    return {"policy": args.policy if not args.smoke else "tiny", "prompts": args.prompts or prompts_spec, "bf16": bf16,
            "batch_prompts": len(prompts), "samples": n_samples, "seq_len": int(roll.input_ids.shape[1]),
            "completion_tokens": n, "repeats": args.repeats, "phases_s": phases,
            "seconds_per_sample": phases["total"] / n_samples, "batches": batches,
            "entropy_lever_s": ab, "pass_gflop": flop / 1e9, "pass_gflops": flop / ab["without_entropy"] / 1e9,
            "peak_gflops": peak / 1e9, "gold": bool(args.gold), "reward": cfg.reward, "prompt_tokens": prompt_tokens}


def render(got: dict, command: str) -> str:
    ph, total = got["phases_s"], got["phases_s"]["total"]
    rows = [f"| {p} | {ph[p]:.2f} | {100 * ph[p] / total:.0f} % |" for p in PHASES if ph[p] > 0]
    lever = got["entropy_lever_s"]
    return "\n".join([
        f"{time.strftime('%Y-%m-%d %H:%M')} · {machine()} · `{command}`",
        "",
        f"One evaluation batch: {got['batch_prompts']} held-out prompts ({got['prompt_tokens']} tokens, `{got['prompts']}`) × 2 samples × "
        f"≤ {got['completion_tokens']} tokens = {got['samples']} samples, policy `{got['policy']}` and a distinct SFT "
        f"model with the same weights, {'bf16' if got['bf16'] else 'fp32'} compute copies, proxy `{got['reward']}`, "
        f"judge VADER{', a gold RM' if got['gold'] else ', no gold RM'}; median of {got['repeats']} batches after a "
        "warm-up (`collect_samples`' own phase clock).",
        "",
        "| phase | seconds | share |",
        "|---|---:|---:|",
        *rows,
        f"| **batch** | **{total:.2f}** | {got['seconds_per_sample']:.3f} s per sample |",
        "",
        f"The policy's teacher-forced pass ({got['samples']} rows × {got['seq_len']} tokens, the head on the "
        f"{got['completion_tokens']} completion positions only): {got['pass_gflop']:.0f} GFLOP of matmuls in "
        f"{lever['without_entropy']:.2f} s = {got['pass_gflops']:.0f} GFLOP/s, "
        f"{100 * got['pass_gflops'] / got['peak_gflops']:.0f} % of the {got['peak_gflops']:.0f} GFLOP/s matmul peak "
        "measured in this run (2048², best of 3).",
        "",
        f"The fused head's entropy pass, alternated on one rollout: with it (the work before a79bfd2) "
        f"{lever['with_entropy']:.2f} s, without it (what the anchor, KL-to-SFT and evaluation passes do now) "
        f"{lever['without_entropy']:.2f} s per pass = **{lever['with_entropy'] / lever['without_entropy']:.2f}×**.",
    ])


def main() -> None:
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="smollm2-imdb")
    ap.add_argument("--reward", default="imdb-sentiment")
    ap.add_argument("--gold", default="", help="a gold reward spec (e.g. the ablation's gold_rm folder); none by default")
    ap.add_argument("--prompts", default="", help="held-out prompts (default: the IMDB data if present, else builtin)")
    ap.add_argument("--batch", type=int, default=64, help="prompts per batch (the ablation's eval_batch)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="a tiny random model; writes no RESULTS.md")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.batch, args.max_new_tokens, args.repeats, args.reward = 4, 6, 1, "vader"
    run_and_publish(run, render, args, "Evaluation batch: where the time goes")


if __name__ == "__main__":
    main()
