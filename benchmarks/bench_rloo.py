"""30 RLOO steps on the embedded default: held-out reward and KL to the SFT policy, before and after.

Policy `smollm2-135m`, reward `imdb-sentiment`, builtin prompts (64 for training); evaluation on the 32
held-out builtin prompts (never trained on) × 2 samples, the same seed before and after, judge `vader`.

    .venv/bin/python benchmarks/bench_rloo.py [--steps 30] [--lr 5e-5] [--beta 0.05] [--out runs/bench_rloo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _results import machine, write_section

from warprl.commands.align import run_align as align_single
from warprl.commands.evaluate import evaluate
from warprl.config import AlignConfig, EvalConfig
from warprl.heap import keep_freed_memory

KEYS = [("reward_mean", "reward", "{:.3f}"), ("kl_mean", "KL to SFT", "{:.2f}"),
        ("judge_positive_rate", "judge > 0.05", "{:.0%}"), ("distinct_2", "distinct-2", "{:.2f}"),
        ("repetition_rate", "loops", "{:.0%}"), ("nll_sft", "NLL under SFT", "{:.2f}")]


def main() -> None:
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--out", default="runs/bench_rloo")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    from warprl.commands.flags import default_bf16

    bf16 = default_bf16("auto")  # the commands' default: a bf16 compute copy only where bf16 is native
    cfg = AlignConfig(method="rloo", steps=args.steps, lr=args.lr, beta=args.beta, batch_size=args.batch_size,
                      k=args.k, out=str(out), progress=False, bf16=bf16)
    t0 = time.perf_counter()
    summary = align_single(cfg)
    train_s = time.perf_counter() - t0
    ecfg = dict(prompts="builtin", n_prompts=100, samples_per_prompt=2, max_new_tokens=cfg.max_new_tokens, bf16=bf16)
    before = evaluate(EvalConfig(policy="smollm2-135m", **ecfg), progress=False)
    after = evaluate(EvalConfig(policy=summary["final"], **ecfg), progress=False)
    rows = ["| metric | before (SFT) | after 30 RLOO steps |", "|---|---:|---:|"]
    rows += [f"| {name} | {fmt.format(before[k])} | {fmt.format(after[k])} |" for k, name, fmt in KEYS]
    train_rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cmd = (f"python benchmarks/bench_rloo.py --steps {args.steps} --lr {args.lr} --beta {args.beta} "
           f"--batch-size {args.batch_size} --k {args.k}")
    md = "\n".join([
        f"{time.strftime('%Y-%m-%d')} · {machine()} · `{cmd}`", "",
        f"RLOO on `smollm2-135m` with `imdb-sentiment`, {args.steps} steps of {args.batch_size} builtin training "
        f"prompts × k={args.k}, ≤ {cfg.max_new_tokens} tokens, lr {args.lr}, β {args.beta}, "
        f"{'bf16 compute copy with fp32 masters' if bf16 else 'fp32 (no native bf16 here)'}: {train_s:.0f} s. "
        f"Held-out: {len(before['samples']) // 2} builtin "
        f"evaluation prompts × 2 samples, seed {EvalConfig().seed}, same for both rows.", "",
        *rows, "",
        f"Training reward (mean of first / last 5 steps): "
        f"{sum(r['charts/reward_mean'] for r in train_rows[:5]) / 5:.3f} → "
        f"{sum(r['charts/reward_mean'] for r in train_rows[-5:]) / 5:.3f}; "
        f"training KL of the last step {train_rows[-1]['charts/kl_mean']:.2f}.",
    ])
    print(md)
    write_section("RLOO: 30 steps on the embedded default", md)


if __name__ == "__main__":
    main()
