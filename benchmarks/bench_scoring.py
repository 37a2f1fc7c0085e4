"""Scoring a rollout: one pass per prompt for its k samples (``sequence_logprobs(group=k)``) against a pass per
sample, the update's forward + backward and the anchor's no-grad pass, alternating in one process.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_scoring.py [--shapes 8x2x24 16x2x24 8x4x24
        16x4x64] [--repeats 7] [--json]
    .venv/bin/python benchmarks/bench_scoring.py --smoke --json     # a tiny random model, in seconds

Each shape samples one rollout (prompts × k × ≤ tokens, the builtin prompts, seeded) from the bundled policy's
compute copy (bf16 where the CPU computes it natively, as an RL step), then times, ``--repeats`` times and
alternating, the four passes: update (forward + backward of the chunked log-probs, entropy included, as the step
runs it) and anchor (no grad), each with the prompt run per sample and once per group. The first repeat is a
warm-up; medians of the rest. The order alternates (per sample first, then shared first, …): with a fixed order
the update at 16x4x64 read 1.41× faster where alternating reads 1.06–1.21×. It also reports the prompt tokens a
shared pass saves, whether the default rule (``rollout.SHARED_PROMPT["min_tokens"]``) shares at that shape, and
the largest log-prob difference between the two ways (the same sums in other batch shapes: rounding only).

Writes the section "Scoring: one pass per prompt" of benchmarks/RESULTS.md (not with --smoke); --json prints one
JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from _results import machine, run_and_publish, switches
from bench_rl_step import parse_shape

SHAPES = ["8x2x24", "16x2x24", "8x4x24", "16x4x64"]


def time_update(R, model, roll, group: int) -> tuple[float, torch.Tensor]:
    """Seconds of the update's forward + backward (log-probs with the entropy, as the RL step), and the log-probs."""
    n = roll.completion_ids.shape[1]
    model.zero_grad(set_to_none=True)
    model.train()
    start = time.perf_counter()
    logp, _ = R.sequence_logprobs(model, roll.input_ids, roll.attention_mask, n, 1.0, return_entropy=True,
                                  group=group)
    (-(logp * roll.mask).sum()).backward()
    elapsed = time.perf_counter() - start
    model.eval()
    model.zero_grad(set_to_none=True)
    return elapsed, logp.detach()


def time_anchor(R, model, roll, group: int) -> tuple[float, torch.Tensor]:
    """Seconds of the anchor's no-grad pass, and its log-probs."""
    start = time.perf_counter()
    with torch.no_grad():
        logp = R.anchor_logprobs(model, roll, 1.0, group=group)
    return time.perf_counter() - start, logp


def run(args, tmp: Path) -> dict:
    from warprl.commands.flags import default_bf16
    from warprl.config import AlignConfig
    from warprl.data import builtin_prompts
    from warprl.models import load_policy
    from warprl.rl import rollout as R
    from warprl.rl.engine import share_fused_storage
    from warprl.rl.loop import training_kernel

    bf16 = default_bf16("cpu") and not args.smoke
    spec = args.policy
    if args.smoke:
        from bench_lora import tiny_policy

        spec = str(tiny_policy(tmp / "tiny"))
    master, tok = load_policy(spec)
    master.set_attn_implementation(training_kernel(AlignConfig(bf16=bf16), master))
    model = copy.deepcopy(master).to(torch.bfloat16 if bf16 else torch.float32)
    del master
    share_fused_storage(model)
    prompts = builtin_prompts("train")
    out = {"bf16": bf16, "policy": "tiny" if args.smoke else args.policy, "attn": model.config._attn_implementation,
           "min_tokens": R.SHARED_PROMPT["min_tokens"], "shapes": {}}
    for shape in args.shapes:
        p, k, t = parse_shape(shape)
        roll = R.sample(model.eval(), tok, prompts[:p], R.SamplingConfig(max_new_tokens=t), k=k, generator_seed=0)
        ids, mask, n = roll.input_ids, roll.attention_mask, roll.completion_ids.shape[1]
        default_group = R.prompt_group(model, ids, mask, n, k)

        times: dict[str, list[float]] = {"update per sample": [], "update shared": [], "anchor per sample": [],
                                         "anchor shared": []}
        diff = 0.0
        for rep in range(args.repeats):
            got = {}
            for on in ((False, True) if rep % 2 == 0 else (True, False)):  # ABBA: neither side always goes first
                with switches(R.SHARED_PROMPT, enabled=on, min_tokens=0):  # on: at any saving
                    side = "shared" if on else "per sample"
                    for name, fn in (("update", time_update), ("anchor", time_anchor)):
                        s, lp = fn(R, model, roll, k)
                        times[f"{name} {side}"].append(s)
                        got[(name, on)] = lp
            m = roll.mask.bool()
            diff = max(diff, float((got[("update", True)] - got[("update", False)])[m].abs().max()))
        med = {name: statistics.median(ts[1:] if len(ts) > 1 else ts) for name, ts in times.items()}
        out["shapes"][shape] = {
            **med, "all": times, "rows": ids.shape[0], "prompt_width": ids.shape[1] - n, "completion_len": n,
            "saved_tokens": R.prompt_tokens_saved(ids.shape[0], ids.shape[1] - n, k), "shared_by_default": default_group > 1,
            "max_abs_logp_diff": diff,
            "update_ratio": med["update per sample"] / med["update shared"],
            "anchor_ratio": med["anchor per sample"] / med["anchor shared"]}
    return out


def render(got: dict, command: str) -> str:
    load = open("/proc/loadavg").read().split()[0]
    lines = [f"{time.strftime('%Y-%m-%d %H:%M')} · {machine()} · `{command}` (load {load} at the end)", "",
             f"Policy `{got['policy']}`, {'bf16' if got['bf16'] else 'fp32'} compute copy, attention {got['attn']}; "
             f"one seeded rollout per shape; each pass timed {'/'.join(str(len(next(iter(s['all'].values())))) for s in got['shapes'].values())} "
             "times, the two ways alternating in turn (per sample first, then shared first, …), medians without the first. "
             "Update = forward + backward of the chunked log-probs with the entropy, as the RL step runs it; anchor = "
             "the no-grad pass. Saved = prompt tokens (padding included) not run again: (k − 1) × prompts × prompt "
             f"width. The default shares from {got['min_tokens']} saved tokens on.", "",
             "| prompts × k × tokens | sequence | saved tokens | shared by default | update: per sample | shared | "
             "speed-up | anchor: per sample | shared | speed-up | max \\|Δ log p\\| |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for shape, s in got["shapes"].items():
        label = " × ".join(shape.split("x"))
        lines.append(
            f"| {label} | {s['prompt_width']} + {s['completion_len']} | {s['saved_tokens']} | "
            f"{'yes' if s['shared_by_default'] else 'no'} | {s['update per sample']:.3f} s | {s['update shared']:.3f} s | "
            f"{s['update_ratio']:.2f}× | {s['anchor per sample']:.3f} s | {s['anchor shared']:.3f} s | "
            f"{s['anchor_ratio']:.2f}× | {s['max_abs_logp_diff']:.2g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="prompts x k x tokens")
    ap.add_argument("--repeats", type=int, default=7, help="timings per pass, the first a warm-up")
    ap.add_argument("--policy", default="smollm2-135m")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model; writes no RESULTS.md")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.shapes, args.repeats = ["2x2x4", "2x3x4"], 2
    run_and_publish(run, render, args, "Scoring: one pass per prompt")


if __name__ == "__main__":
    main()
