"""One full RLOO step (generate + score + anchor log-probs + update): warprl against TRL's RLOOTrainer.

Same model (bundled SmolLM2-135M, fp32 master weights), same reward (imdb-sentiment), same prompts per step,
k, completion length and bf16, in the same process, one after the other. Reports samples/s for each, the
ratio, and the achieved FLOP/s of warprl's update against this machine's measured bf16 matmul peak.

    .venv/bin/pip install 'trl==1.16.0'   # the bench extra; not needed by warprl itself
    .venv/bin/python benchmarks/bench_rl_step.py [--steps 6] [--prompts 8] [--k 2] [--tokens 24]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _results import machine, write_section

from warprl.config import AlignConfig
from warprl.data import builtin_prompts
from warprl.models import convert_gguf, load_policy, resolve
from warprl.reward import load_reward
from warprl.rl.loop import run_rl


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bench_warprl(args, reward, prompts) -> dict:
    cfg = AlignConfig(method="rloo", steps=args.steps, batch_size=args.prompts, k=args.k, beta=0.05, lr=1e-5,
                      max_new_tokens=args.tokens, bf16=True, progress=False,
                      checkpoint_every=0)
    policy, tok = load_policy("smollm2-135m")
    with tempfile.TemporaryDirectory() as d:
        run_rl(cfg, Path(d), policy, tok, reward, prompts, method="rloo", anchor_kind="sft", seed=0, resume=False)
        import json

        rows = [json.loads(line) for line in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    rows = rows[1:]  # the first step pays one-off costs (allocations, first-call dispatch)
    n_params = sum(p.numel() for p in policy.parameters())
    seq_len = len(tok(prompts[0])["input_ids"]) + args.tokens
    flops = 6 * n_params * seq_len * args.prompts * args.k  # forward (2) + backward (4) per token per weight
    upd = statistics.median(r["time/update_s"] for r in rows)
    return {
        "step_s": statistics.median(r["charts/step_time_s"] for r in rows),
        "generate_s": statistics.median(r["time/generate_s"] for r in rows),
        "reward_s": statistics.median(r["time/reward_s"] for r in rows),
        "anchor_s": statistics.median(r["time/anchor_s"] for r in rows),
        "update_s": upd,
        "update_flops": flops / upd,
    }


def bench_trl(args, reward, prompts) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    folder = convert_gguf(resolve("smollm2-135m", "policy").location)
    _, tok = load_policy("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    def reward_fn(completions, prompts=None, **_):
        return reward(list(prompts), list(completions)).tolist()

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as d:
        cfg = RLOOConfig(output_dir=d, use_cpu=True, report_to=[], save_strategy="no", bf16=True,
                         per_device_train_batch_size=args.prompts * args.k, num_generations=args.k,
                         max_completion_length=args.tokens, learning_rate=1e-5, beta=0.05, max_steps=args.steps,
                         logging_steps=1, temperature=1.0, seed=0, disable_tqdm=True)
        trainer = RLOOTrainer(model=model, reward_funcs=reward_fn, args=cfg, processing_class=tok,
                              train_dataset=datasets.Dataset.from_dict({"prompt": prompts}), callbacks=[Timer()])
        trainer.train()
    return {"step_s": statistics.median(times[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=24, help="completion tokens")
    ap.add_argument("--reward", default="imdb-sentiment")
    args = ap.parse_args()
    torch.manual_seed(0)
    reward = load_reward(args.reward, bf16=True)
    prompts = builtin_prompts("train")
    peak = matmul_peak(torch.bfloat16)
    ours = bench_warprl(args, reward, prompts)
    trl = bench_trl(args, reward, prompts)
    import trl as trl_mod

    samples = args.prompts * args.k
    ratio = trl["step_s"] / ours["step_s"]
    cmd = (f"python benchmarks/bench_rl_step.py --steps {args.steps} --prompts {args.prompts} --k {args.k} "
           f"--tokens {args.tokens} --reward {args.reward}")
    md = f"""{dt.date.today()} · {machine()} · `{cmd}`

One RLOO step = generate {args.prompts} prompts × k={args.k} × {args.tokens} tokens + reward ({args.reward}) +
anchor log-probs + AdamW update of SmolLM2-135M (fp32 master weights, bf16), median of steps 2–{args.steps}.
TRL {trl_mod.__version__} `RLOOTrainer(bf16=True, use_cpu=True)` with the same model, reward, prompts, k and lengths.

| trainer | s / step | samples / s |
|---|---|---|
| warprl | {ours['step_s']:.2f} | {samples / ours['step_s']:.2f} |
| TRL RLOOTrainer | {trl['step_s']:.2f} | {samples / trl['step_s']:.2f} |
| **ratio (warprl / TRL throughput)** | | **{ratio:.2f}×** |

warprl step breakdown (median s): generate {ours['generate_s']:.2f}, reward {ours['reward_s']:.2f},
anchor log-probs {ours['anchor_s']:.2f}, update (policy forward+backward+AdamW) {ours['update_s']:.2f}.
Update: {ours['update_flops'] / 1e9:.0f} GFLOP/s achieved (6·params·tokens / update time) against a measured
bf16 matmul peak of {peak / 1e9:.0f} GFLOP/s (2048², this run) = {100 * ours['update_flops'] / peak:.0f} %.
"""
    print(md)
    write_section("RL step: warprl vs TRL RLOOTrainer", md)


if __name__ == "__main__":
    main()
