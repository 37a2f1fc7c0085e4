"""WARP's executors side by side: the M runs one after another (sequential) or in local worker processes.

    .venv/bin/python benchmarks/bench_executors.py [--iterations 2] [--runs 2] [--steps 10] [--repeats 2] [--json]
    .venv/bin/python benchmarks/bench_executors.py --smoke --json     # a tiny random model, in seconds

The same `warprl align --method warp` (the quickstart's WARP unless told otherwise: I=2 × M=2 × T=10, lr 1e-4,
β 0.05, RLOO inside, bf16 where native, reward imdb-sentiment, builtin prompts, checkpoints at a run's end only) with `--executor sequential`
and `--executor processes`, alternated in this process (sequential, processes, sequential, …) into temporary
folders. The sequential executor trains with this process's torch threads; the processes executor starts one
worker per usable core (up to M) and splits those threads between them. Reported per executor: the median
training time (`train_seconds`, spawning and loading in the workers included), RL steps per second, and the
runs' last mean reward; and whether the two executors' final weights are identical (they are only where a
worker gets the driver's thread count: the thread count sets the CPU kernels' reduction order).

Writes the section "WARP executors" of benchmarks/RESULTS.md (not with --smoke); --json prints one JSON object
as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, run_and_publish  # noqa: E402
from bench_warp_overhead import add_warp_arguments, warp_settings  # noqa: E402

from warprl.heap import keep_freed_memory  # noqa: E402

EXECUTORS = ("sequential", "processes")


def one_run(settings: dict, executor: str, out: Path) -> dict:
    """One WARP run into ``out``: its training time, its runs' last mean reward and its final weights."""
    from safetensors.torch import load_file

    from warprl.commands.align import run_align
    from warprl.config import AlignConfig

    cfg = AlignConfig(**settings, executor=executor, out=str(out))
    cfg.validate()
    summary = run_align(cfg)
    steps = [json.loads(line)["charts/step_time_s"] for run in sorted(out.glob("iter_*/run_*"))
             for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"train_seconds": summary["train_seconds"], "reward_mean": summary.get("charts/reward_mean"),
            "step_s": statistics.median(steps), "weights": load_file(str(out / "final" / "model.safetensors"))}


def run(args, tmp: Path) -> dict:
    import torch

    from warprl.rl.executors import usable_cores

    settings = warp_settings(args, tmp, checkpoint_every=0)
    results = {e: [] for e in EXECUTORS}
    weights = {}
    for rep in range(args.repeats):
        for executor in EXECUTORS:  # alternated: a drift in the machine's speed hits both sides alike
            got = one_run(settings, executor, tmp / f"{executor}_{rep}")
            weights.setdefault(executor, got.pop("weights"))
            results[executor].append(got)
            shutil.rmtree(tmp / f"{executor}_{rep}", ignore_errors=True)
    a, b = weights["sequential"], weights["processes"]
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = args.iterations * args.runs * args.steps
    workers = min(args.runs, usable_cores())
    summary = {}
    for executor, rows in results.items():
        seconds = statistics.median(r["train_seconds"] for r in rows)
        summary[executor] = {"train_seconds": [r["train_seconds"] for r in rows], "median_s": seconds,
                             "steps_per_s": steps / seconds, "reward_mean": [r["reward_mean"] for r in rows],
                             "step_s": statistics.median(r["step_s"] for r in rows)}
    return {
        **summary,
        "speedup": summary["sequential"]["median_s"] / summary["processes"]["median_s"],
        "identical_weights": identical,
        "driver_threads": torch.get_num_threads(),
        "workers": workers,
        "worker_threads": max(1, torch.get_num_threads() // workers),
        "rl_steps": steps,
        "settings": {k: v for k, v in settings.items() if k != "progress"},
    }


def render(got: dict, command: str) -> str:
    s = got["settings"]
    seq, proc = got["sequential"], got["processes"]

    def secs(xs):
        return ", ".join(f"{x:.1f}" for x in xs)

    def rewards(xs):
        return ", ".join("—" if x is None else f"{x:.3f}" for x in xs)

    return "\n".join([
        f"{time.strftime('%Y-%m-%d %H:%M')} · {machine()} · `{command}`",
        "",
        f"WARP I={s['iterations']} × M={s['runs']} × T={s['steps']} ({got['rl_steps']} RL steps of {s['batch_size']} "
        f"prompts × k={s['k']}, ≤ {s['max_new_tokens']} tokens, {'bf16' if s['bf16'] else 'fp32'}, RLOO inside, "
        f"policy `{s['policy']}`, checkpoints at a run's end only), each executor {len(seq['train_seconds'])} times, "
        f"alternated in one process. Sequential: the runs one after another with the driver's "
        f"{got['driver_threads']} torch threads. Processes: {got['workers']} workers × {got['worker_threads']} "
        f"thread(s), spawned and loading the policy and reward inside the measured time.",
        "",
        "| executor | train_seconds (each) | median s | RL steps / s | median s / step of one run | "
        "runs' last mean reward (each) |",
        "|---|---|---:|---:|---:|---|",
        f"| sequential | {secs(seq['train_seconds'])} | {seq['median_s']:.1f} | {seq['steps_per_s']:.3f} | "
        f"{seq['step_s']:.2f} | {rewards(seq['reward_mean'])} |",
        f"| processes | {secs(proc['train_seconds'])} | {proc['median_s']:.1f} | {proc['steps_per_s']:.3f} | "
        f"{proc['step_s']:.2f} | {rewards(proc['reward_mean'])} |",
        "",
        f"Processes over sequential: **{got['speedup']:.2f}×** the RL steps per second. Final weights "
        + ("identical bit for bit." if got["identical_weights"] else
           "not identical: the workers' thread count differs from the driver's, which changes the kernels' "
           "reduction order (same settings and seeds; a 1-thread driver gives identical weights, see "
           "tests/commands/test_align_warp.py)."),
    ])


def main() -> None:
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_warp_arguments(ap, steps=10, lr=1e-4)  # the quickstart's WARP
    ap.add_argument("--repeats", type=int, default=2, help="runs per executor, alternated")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model; writes no RESULTS.md")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.iterations, args.runs, args.steps, args.batch_size, args.max_new_tokens, args.repeats = 1, 2, 2, 2, 4, 1
    run_and_publish(run, render, args, "WARP executors: sequential against local processes")


if __name__ == "__main__":
    main()
