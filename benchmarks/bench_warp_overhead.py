"""WARP's time outside its RL steps, per phase: what a WARP run costs beyond the steps an RLOO run also takes.

    .venv/bin/python benchmarks/bench_warp_overhead.py [--iterations 2] [--runs 2] [--steps 25] [--batch-size 8]
        [--k 2] [--max-new-tokens 24] [--checkpoint-every 0] [--json]
    .venv/bin/python benchmarks/bench_warp_overhead.py --smoke --json     # a tiny random model, in seconds

One `warprl align --method warp` (the quickstart's settings unless told otherwise: RLOO inside, bf16 compute
copy, reward imdb-sentiment, builtin prompts) into a temporary folder, then the breakdown read back from it:

* steps: the sum of every step's `charts/step_time_s` (generate, reward, anchor, update);
* per run (each run's `done.json` `time`, summed over the I × M runs): loading θ_init, setup (the EMA anchor
  and θ_sft copies, the bf16 compute copies, the optimiser), the KL-to-SFT measurement every
  `--kl-sft-every` steps, metrics appends, checkpoints, the final write of the run's weights;
* per iteration: SLERP and LITI (`time/merge_s`), whatever the executor spent besides the runs' own phases;
* the driver: writing θ_sft, `final/` and `final_slerp/` (the rest of `train_seconds`).

Target (issue 11): the time outside steps under 5 % of the step time, crash safety kept (the reliability suite
checks that). The KL-to-SFT measurement is work a user asks for (`--kl-sft-every 0` turns it off); it is counted
outside the steps and shown on its own line. Writes the section "WARP overhead" of benchmarks/RESULTS.md (not
with --smoke); --json prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, run_and_publish  # noqa: E402
from bench_lora import tiny_policy  # noqa: E402

from warprl.heap import keep_freed_memory  # noqa: E402

RUN_PHASES = ("load_init", "setup", "kl_sft", "metrics", "checkpoint", "finish")


def breakdown(out: Path, train_seconds: float) -> dict:
    """The phases of a finished WARP folder (seconds), from its metrics, done.json and iteration rows."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    runs = sorted(out.glob("iter_*/run_*"))
    steps = sum(json.loads(line)["charts/step_time_s"] for r in runs
                for line in (r / "metrics.jsonl").read_text().splitlines())
    phases = {p: sum(r.get(f"time/run_{p}_s", 0.0) for r in rows) for p in RUN_PHASES}
    runs_s = sum(r["time/runs_s"] for r in rows)
    inside_runs = sum(r.get("time/run_steps_s", 0.0) for r in rows) + sum(phases.values())
    merge_s = sum(r["time/merge_s"] for r in rows)
    got = {
        "steps_s": steps,
        **{f"{p}_s": v for p, v in phases.items()},
        "executor_other_s": runs_s - inside_runs,  # between the runs' own phases (e.g. releasing memory)
        "merge_s": merge_s,
        "driver_s": train_seconds - runs_s - merge_s,  # θ_sft, final/, final_slerp/, iteration rows
        "train_seconds": train_seconds,
        "runs": len(runs),
    }
    outside = train_seconds - steps
    got["outside_steps_s"] = outside
    got["outside_share"] = outside / steps
    got["outside_without_kl_sft_share"] = (outside - phases["kl_sft"]) / steps
    got["outside_per_run_s"] = (runs_s - steps) / max(len(runs), 1)
    return got


def run(args, tmp: Path) -> dict:
    from warprl.commands.align import run_align
    from warprl.config import AlignConfig

    settings = warp_settings(args, tmp, checkpoint_every=args.checkpoint_every, kl_sft_every=args.kl_sft_every,
                             out=str(tmp / "warp"))
    cfg = AlignConfig(**settings)
    cfg.validate()
    t0 = time.perf_counter()
    summary = run_align(cfg)
    wall = time.perf_counter() - t0
    got = breakdown(Path(cfg.out), summary["train_seconds"])
    got["wall_s"] = wall
    got["settings"] = {k: v for k, v in settings.items() if k not in ("out", "progress")}
    return got


def render(got: dict, command: str) -> str:
    s = got["settings"]
    steps = got["steps_s"]
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M')} · {machine()} · `{command}`",
        "",
        f"WARP I={s['iterations']} × M={s['runs']} × T={s['steps']} ({s['batch_size']} prompts × k={s['k']}, "
        f"≤ {s['max_new_tokens']} tokens, {'bf16 compute copy' if s['bf16'] else 'fp32'}, RLOO inside, policy `{s['policy']}`, checkpoint every "
        f"{s['checkpoint_every'] or 'run end only'}, KL to SFT every {s['kl_sft_every']} steps): "
        f"**{got['train_seconds']:.1f} s**, of which RL steps {steps:.1f} s. Time outside the steps: "
        f"**{got['outside_steps_s']:.1f} s = {100 * got['outside_share']:.1f} % of the step time** "
        f"({100 * got['outside_without_kl_sft_share']:.1f} % without the KL-to-SFT measurement; target < 5 %), "
        f"{got['outside_per_run_s']:.2f} s per run inside the executor.",
        "",
        "| phase | seconds | % of step time |",
        "|---|---:|---:|",
    ]
    names = {"load_init_s": "runs: load θ_init", "setup_s": "runs: setup (anchor, θ_sft, bf16 copies, optimiser)",
             "kl_sft_s": "runs: KL-to-SFT measurement", "metrics_s": "runs: metrics appends (fsync)",
             "checkpoint_s": "runs: checkpoints", "finish_s": "runs: final weights + sha256",
             "executor_other_s": "executor: between runs (memory release, done.json, checkpoint removal)",
             "merge_s": "merges: SLERP + LITI", "driver_s": "driver: θ_sft, final/, final_slerp/, iteration rows"}
    lines.append(f"| RL steps | {steps:.2f} | 100 |")
    for key, name in names.items():
        lines.append(f"| {name} | {got[key]:.2f} | {100 * got[key] / steps:.1f} |")
    lines.append(f"| **outside the steps** | **{got['outside_steps_s']:.2f}** | **{100 * got['outside_share']:.1f}** |")
    return "\n".join(lines)


def add_warp_arguments(ap: argparse.ArgumentParser, steps: int, lr: float) -> None:
    """The WARP run a benchmark times: the quickstart's shape, with its own T and lr."""
    ap.add_argument("--policy", default="smollm2-imdb")
    ap.add_argument("--reward", default="imdb-sentiment")
    ap.add_argument("--prompts", default="builtin")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--beta", type=float, default=0.05)


def warp_settings(args, tmp: Path, **extra) -> dict:
    """AlignConfig settings of the WARP run from add_warp_arguments' flags (a tiny random model with --smoke)."""
    from warprl.commands.flags import default_bf16

    settings = dict(method="warp", inner="rloo", iterations=args.iterations, runs=args.runs, steps=args.steps,
                    batch_size=args.batch_size, k=args.k, max_new_tokens=args.max_new_tokens, lr=args.lr,
                    beta=args.beta, policy=args.policy, reward=args.reward, prompts=args.prompts, progress=False,
                    bf16=default_bf16("auto"), **extra)  # the commands' default: bf16 where it is native
    if args.smoke:
        settings.update(policy=str(tiny_policy(tmp / "tiny")), reward="vader", bf16=False)
    return settings


def main() -> None:
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_warp_arguments(ap, steps=25, lr=5e-5)
    ap.add_argument("--checkpoint-every", type=int, default=0, help="the quickstart's: only at a run's end")
    ap.add_argument("--kl-sft-every", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="a tiny random model; writes no RESULTS.md")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.iterations, args.runs, args.steps, args.batch_size, args.max_new_tokens = 1, 2, 3, 2, 4
    # The quickstart's setting (checkpoints at a run's end only) and align's (every 10 steps) are kept apart.
    ck = f", checkpoint every {args.checkpoint_every} steps" if args.checkpoint_every else ""
    run_and_publish(run, render, args, f"WARP overhead (time outside RL steps){ck}")


if __name__ == "__main__":
    main()
