"""Time of one `warprl sft` step (LoRA, bf16 compute copy) by LoRA dropout and attention kernel, in one process.

    .venv/bin/python benchmarks/bench_sft_step.py [--policy smollm2-135m] [--rounds 3] [--batch-size 16]
        [--max-length 128] [--lora-r 16] [--json]

The step is `warprl sft`'s own (`sft.loop.train_step`): forward and backward of one micro-batch on the bf16
compute copy, gradients onto the fp32 masters, clipping, AdamW, refresh of the adapter tensors. Each variant is
its own peft model on the same base weights; the variants run alternately (one step each per round, after one
warm-up step each), and the median step time per variant is reported beside the bf16 matmul peak measured in the
same run.
The batch is `--batch-size` rows of random token ids with lengths drawn from [max_length − 16, max_length]
(seed 0) and padding masked, the shape of `--no-packing` review openings in length buckets.
Writes the section "SFT step: LoRA dropout and attention" of benchmarks/RESULTS.md; --json prints one JSON
object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, matmul_peak, write_section  # noqa: E402

from warprl import lora  # noqa: E402
from warprl.heap import keep_freed_memory  # noqa: E402
from warprl.models import load_policy  # noqa: E402
from warprl.precision import MixedPrecision  # noqa: E402
from warprl.sft.data import Batch  # noqa: E402
from warprl.sft.loop import train_step  # noqa: E402

VARIANTS = [(0.05, "sdpa"), (0.0, "sdpa"), (0.05, "eager"), (0.0, "eager")]


def build(policy: str, dropout: float, attn: str, r: int):
    model, _ = load_policy(policy)
    model.set_attn_implementation(attn)
    model = lora.apply_lora(model, r, 2 * r, dropout, "all-linear")
    mp = MixedPrecision(model, True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                            fused=True)
    return mp, opt


def step(mp, opt, batch: Batch) -> float:
    t = time.perf_counter()
    train_step(mp, opt, [batch], max_grad_norm=1.0)  # `warprl sft`'s step, clipping included
    return time.perf_counter() - t


def main() -> None:
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.max_length - 16, args.max_length + 1, (args.batch_size,), generator=g)
    ids = torch.randint(0, 49152, (args.batch_size, args.max_length), generator=g)
    mask = (torch.arange(args.max_length)[None, :] < lengths[:, None]).long()
    batch = Batch(ids * mask, mask)
    tokens = int(mask[:, 1:].sum())

    built = {v: build(args.policy, *v, args.lora_r) for v in VARIANTS}
    for v in VARIANTS:
        step(*built[v], batch)  # warm-up
    times = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for v in VARIANTS:
            times[v].append(step(*built[v], batch))
    peak = matmul_peak(torch.bfloat16)

    rows = [{"lora_dropout": d, "attention": a, "step_s": statistics.median(times[(d, a)]),
             "tokens_per_s": tokens / statistics.median(times[(d, a)]), "steps_s": times[(d, a)]}
            for d, a in VARIANTS]
    base = rows[0]["step_s"]
    cmd = "python benchmarks/bench_sft_step.py " + " ".join(sys.argv[1:])
    md = [f"{time.strftime('%Y-%m-%d')}, {machine()}; bf16 matmul peak in this run {peak / 1e12:.2f} TFLOP/s "
          f"(2048²). `{cmd.strip()}`: {args.policy}, LoRA r {args.lora_r} α {2 * args.lora_r} on all linear layers, "
          f"bf16 compute copy, {args.batch_size} rows × ≤ {args.max_length} tokens ({tokens} target tokens), "
          f"median of {args.rounds} steps per variant, variants alternated in one process.", "",
          "| LoRA dropout | attention | step (s) | tokens/s | vs dropout 0.05 + sdpa |", "|---:|---|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['lora_dropout']} | {r['attention']} | {r['step_s']:.2f} | {r['tokens_per_s']:.0f} | "
                  f"{base / r['step_s']:.2f}× |")
    md += ["", "Dropout > 0 makes peft draw a Bernoulli mask over the input of every adapted layer (210 per step "
           "here, on tensors of 16 × 128 × 576–1536); on a CPU that draw is the cost."]
    text = "\n".join(md)
    print(text)
    write_section("SFT step: LoRA dropout and attention", text)
    if args.json:
        print(json.dumps({"peak_bf16_flops": peak, "tokens": tokens, "rows": rows}))


if __name__ == "__main__":
    main()
