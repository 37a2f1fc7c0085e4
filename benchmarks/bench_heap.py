"""glibc's heap as it comes against freed memory kept (warprl.heap): warprl's RL step, A/B in fresh processes.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_heap.py [--shapes 8x2x24 16x4x64]
        [--steps 7] [--rounds 2] [--json]
    .venv/bin/python benchmarks/bench_heap.py --smoke --json     # a tiny random model, in seconds

The setting is process-wide and glibc cannot be put back to its defaults once ``mallopt`` has run (its dynamic
mmap threshold stays off), so the two sides cannot alternate inside one process: each round starts one fresh
process per side, the sides alternating (default, kept, default, kept, …). Each process runs ``--steps`` RL steps
(RLOO, bf16 compute copy, the command's default attention) of the bundled policy on the builtin prompts, the
first a warm-up; it reports the median phases, the minor page faults per step (``ru_minflt``), its peak RSS and a
digest of the fp32 weights after the steps (the heap must not change a single bit).

Writes the section "Heap: freed memory kept" of benchmarks/RESULTS.md (not with --smoke); --json prints one
JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import machine, run_and_publish

PHASES = ("charts/step_time_s", "time/generate_s", "time/reward_s", "time/anchor_s", "time/update_s")
SIDES = ("default", "kept")  # WARPRL_GLIBC_HEAP=default: glibc as it comes; kept: warprl.heap.keep_freed_memory
SHAPES, STEPS = ["8x2x24", "16x4x64"], 7


def resident_gib() -> float:
    """This process's resident size now (``ru_maxrss`` gives only the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def child(args) -> dict:
    """One side in this (fresh) process: the heap set or not, ``--steps`` RL steps, their medians."""
    import torch
    from bench_rl_step import Warprl, parse_shape

    from warprl.heap import keep_freed_memory
    from warprl.reward import load_reward

    kept = keep_freed_memory()  # reads WARPRL_GLIBC_HEAP, as the `warprl` command does at its start
    torch.manual_seed(0)
    from warprl.commands.flags import default_bf16
    from warprl.data import builtin_prompts

    bf16 = default_bf16("cpu") and not args.smoke
    policy, reward = args.policy, args.reward
    if args.smoke:
        from bench_lora import tiny_policy

        policy, reward = str(tiny_policy(Path(args.tmp) / "tiny")), "vader"
    reward_fn = load_reward(reward, bf16=bf16)
    out = {"kept": kept, "shapes": {}}
    for shape in args.shapes:
        side = Warprl(parse_shape(shape), reward_fn, builtin_prompts("train"), "auto", "auto", bf16, policy,
                      torch.device("cpu"))
        faults, resident = [], []
        for _ in range(args.steps):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            side.step()
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            resident.append(resident_gib())
        rows = side.rows[1:]  # the first step pays one-off costs (weight packing, first allocations)
        digest = hashlib.sha256()
        for p in side.policy.master.parameters():
            digest.update(p.detach().float().numpy().tobytes())
        out["shapes"][shape] = {**{k: statistics.median(r[k] for r in rows) for k in PHASES},
                                "minflt_per_step": statistics.median(faults[1:]), "attn": side.attn,
                                "resident_gib": resident,
                                "weights_sha256": digest.hexdigest()}
        del side
    out["maxrss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def run_side(side: str, args, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--shapes", *args.shapes, "--steps", str(args.steps),
           "--policy", args.policy, "--reward", args.reward, "--tmp", str(tmp)] + (["--smoke"] if args.smoke else [])
    env = {**os.environ, "WARPRL_GLIBC_HEAP": side}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench_heap: the {side} side failed:\n{proc.stderr[-3000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if got["kept"] != (side == "kept"):
        raise SystemExit(f"bench_heap: the {side} side's heap setting did not take (mallopt: {got['kept']})")
    return got


def run(args, tmp: Path) -> dict:
    rounds = {side: [] for side in SIDES}
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        for side in SIDES:
            rounds[side].append(run_side(side, args, tmp))
    res = {"rounds": rounds, "seconds": time.perf_counter() - t0, "machine": machine(), "shapes": {},
           "policy": "tiny" if args.smoke else args.policy, "steps": args.steps,
           "reward": "vader" if args.smoke else args.reward}
    for shape in args.shapes:
        per = {side: {k: statistics.median(r["shapes"][shape][k] for r in rounds[side])
                      for k in (*PHASES, "minflt_per_step")} for side in SIDES}
        digests = {r["shapes"][shape]["weights_sha256"] for side in SIDES for r in rounds[side]}
        res["shapes"][shape] = {**per, "identical_weights": len(digests) == 1,
                                "attn": rounds["kept"][0]["shapes"][shape]["attn"],
                                "speedup": per["default"]["charts/step_time_s"] / per["kept"]["charts/step_time_s"]}
    res["maxrss_gib"] = {side: statistics.median(r["maxrss_gib"] for r in rounds[side]) for side in SIDES}
    return res


def render(got: dict, command: str) -> str:
    lines = [f"{time.strftime('%Y-%m-%d %H:%M')} · {got['machine']} · `{command}`", "",
             f"warprl's RL step (RLOO, the commands' default precision, policy `{got['policy']}`, builtin prompts, "
             f"reward `{got['reward']}`) with glibc's "
             "heap as it comes (`WARPRL_GLIBC_HEAP=default`) and with freed memory kept (`warprl.heap`, `WARPRL_GLIBC_HEAP=kept`). A fresh process per side and round, the sides alternating; each runs the same "
             f"{got['steps']} seeded steps, medians after the first (warm-up) step, then the median over "
             f"{len(got['rounds']['kept'])} rounds.", "",
             "| shape (prompts × k × tokens) | heap | s / step | generate | reward | anchor | update | minor faults / step |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for shape, r in got["shapes"].items():
        label = shape.replace("x", " × ")
        for side in SIDES:
            p = r[side]
            lines.append(f"| {label} | {side} | {p['charts/step_time_s']:.2f} | {p['time/generate_s']:.2f} | "
                         f"{p['time/reward_s']:.2f} | {p['time/anchor_s']:.2f} | {p['time/update_s']:.2f} | "
                         f"{p['minflt_per_step']:,.0f} |")
    lines.append("")
    for shape, r in got["shapes"].items():
        lines.append(f"- {shape.replace('x', ' × ')} (attention {r['attn']}): kept over default **{r['speedup']:.2f}×** "
                     f"the step; update {r['default']['time/update_s']:.2f} → {r['kept']['time/update_s']:.2f} s; "
                     f"fp32 weights after the steps {'bit-identical' if r['identical_weights'] else 'DIFFERENT'} "
                     "across sides and rounds.")
    m = got["maxrss_gib"]
    lines.append(f"- Peak RSS of a process (all shapes): default {m['default']:.2f} GiB, kept {m['kept']:.2f} GiB.")
    for shape in got["shapes"]:
        rest = {side: [r["shapes"][shape]["resident_gib"] for r in got["rounds"][side]] for side in SIDES}
        lines.append(f"- {shape.replace('x', ' × ')}: resident size at rest after step 1 → the last step (median over "
                     "rounds): " + ", ".join(
                         f"{side} {statistics.median(x[0] for x in rest[side]):.2f} → "
                         f"{statistics.median(x[-1] for x in rest[side]):.2f} GiB" for side in SIDES) + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="prompts x k x tokens")
    ap.add_argument("--steps", type=int, default=STEPS, help="RL steps per process, the first a warm-up")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--policy", default="smollm2-imdb")
    ap.add_argument("--reward", default="imdb-sentiment")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model; writes no RESULTS.md")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.smoke:
        args.shapes, args.steps, args.rounds = ["2x2x4"], 2, 1
    # The default run owns the section; a long run (e.g. --shapes 8x2x24 --steps 60: how far the heap grows) its own.
    default = args.shapes == SHAPES and args.steps == STEPS
    run_and_publish(run, render, args, "Heap: freed memory kept" + (
        "" if default else f", {' '.join(args.shapes)} over {args.steps} steps"))


if __name__ == "__main__":
    main()
