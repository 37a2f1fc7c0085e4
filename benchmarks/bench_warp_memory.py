"""Peak memory of a WARP run on SmolLM2-135M: does it stay at one policy + optimiser as M grows?

    .venv/bin/python benchmarks/bench_warp_memory.py [--runs 2 4] [--ray] [--iterations 2] [--steps 2]

Each configuration runs in a fresh child process, because ``ru_maxrss`` is a lifetime peak per process:
sequential WARP with M = 2 and M = 4 (one model instance, runs one after another, merges streamed from
safetensors files), and with ``--ray`` the Ray executor for M = 2 (each worker holds its own run; the
driver's figure then excludes them: Ray's processes are reported as the peak of their summed RSS, sampled
every 0.2 s, and as ``ru_maxrss`` of reaped children). ``ru_maxrss`` would also count the pages of mmapped
safetensors files a merge has read (clean page cache, droppable by the kernel), so the driver's peak
*anonymous* RSS is sampled as well. A cheap reward keeps the figures about WARP: the ``vader`` alias when
warprl.reward provides it, else a word count (chosen once, the same for every row). Writes the
``## WARP memory`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from warprl.heap import keep_freed_memory

MACHINE = "2-core AMD EPYC, 24 GiB, torch 2.13.0 CPU"
GiB = 1024**3


def word_count_reward(prompts, completions):
    import torch

    return torch.tensor([len(c.split()) / 10 for c in completions], dtype=torch.float32)


def pick_reward() -> str:
    """The vader alias if warprl.reward provides it, else the word count."""
    try:
        from warprl.reward import load_reward

        load_reward("vader", device="cpu", bf16=False)
        return "vader"
    except Exception:  # module not written yet, or no vader alias: any cheap reward will do
        return "word-count"


def anon_rss() -> int:
    """This process's anonymous resident memory (heap, tensors), without file-backed pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


class Sampler(threading.Thread):
    """Every 0.2 s: this process's anonymous RSS, and the summed RSS of its descendants (Ray's processes)."""

    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        self.every, self.anon_peak, self.children_peak, self.stop = every, 0, 0, threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            total = 0
            for p in me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.children_peak = max(self.children_peak, total)
            self.anon_peak = max(self.anon_peak, anon_rss())
            self.stop.wait(self.every)


def child(args) -> None:
    """One WARP run; prints a JSON line with its peak memory figures."""
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    from warprl.commands.align import run_align as align_warp
    from warprl.config import AlignConfig

    spec = args.reward
    reward_fn = None if spec == "vader" else word_count_reward  # vader: align_warp (or each worker) loads it
    from warprl.commands.flags import default_bf16

    cfg = AlignConfig(method="warp", policy="smollm2-135m", reward=spec if reward_fn is None else "imdb-sentiment",
                      iterations=args.iterations, runs=args.child_runs, steps=args.steps, batch_size=2, k=2,
                      max_new_tokens=8, executor=args.executor, out=args.out, progress=False,
                      bf16=default_bf16("cpu"))  # the commands' default: bf16 compute copies only where native
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    align_warp(cfg, reward_fn=reward_fn)
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    kib = 1024  # ru_maxrss is in KiB on Linux
    import torch

    print(json.dumps({
        "reward": spec, "seconds": seconds, "threads": torch.get_num_threads(), "bf16": cfg.bf16,
        "driver_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        "children_maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
        "children_sampled_peak": sampler.children_peak,
        "driver_anon_peak": sampler.anon_peak,
    }))


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    sa, sb = load_file(str(a)), load_file(str(b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, nargs="+", default=[2, 4], help="values of M (sequential executor)")
    ap.add_argument("--ray", action="store_true", help="also measure the Ray executor with M = 2")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-runs", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--executor", default="sequential", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--reward", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    configs = [("sequential", m) for m in args.runs] + ([("ray", 2)] if args.ray else [])
    reward = pick_reward()
    rows, outs = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_warp_") as tmp:
        for executor, m in configs:
            out = Path(tmp) / f"{executor}_{m}"
            cmd = [sys.executable, __file__, "--child", "--child-runs", str(m), "--executor", executor,
                   "--iterations", str(args.iterations), "--steps", str(args.steps), "--out", str(out),
                   "--reward", reward]
            print(f"WARP {executor} M={m} …", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if proc.returncode != 0:
                sys.exit(f"child failed ({executor}, M={m}):\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"executor": executor, "M": m, **result})
            print(f"  {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
            outs[(executor, m)] = out
            # Keep only what the Ray comparison needs: each WARP folder holds ~10 fp32 copies of the model.
            if (executor, m) != ("sequential", 2):
                if executor == "ray" and ("sequential", 2) in outs:
                    rows[-1]["equals_sequential"] = same_weights(
                        out / "final" / "model.safetensors", outs[("sequential", 2)] / "final" / "model.safetensors")
                shutil.rmtree(out, ignore_errors=True)

    command = "python benchmarks/bench_warp_memory.py " + " ".join(sys.argv[1:])
    lines = [
        f"Measured {dt.date.today().isoformat()} on {MACHINE} ({rows[0]['threads']} torch threads).",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"SmolLM2-135M (fp32 master weights, 0.54 GB), I={args.iterations}, T={args.steps} steps per run, "
        f"batch 2 × k 2, 8 new tokens, "
        f"{'bf16 compute copy' if rows[0].get('bf16', True) else 'fp32 (no native bf16 here, no bf16 copy)'}, "
        f"reward: {rows[0]['reward']}. Peak resident memory "
        "(`ru_maxrss`); each row is a fresh process.",
        "",
        "| executor | M | driver peak RSS (`ru_maxrss`) | driver peak anonymous RSS (sampled) | "
        "Ray processes: peak summed RSS (sampled) | largest reaped child (`ru_maxrss`) | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ray_cols = (f"{r['children_sampled_peak'] / GiB:.2f} GiB", f"{r['children_maxrss'] / GiB:.2f} GiB") \
            if r["executor"] == "ray" else ("–", "–")
        lines.append(f"| {r['executor']} | {r['M']} | {r['driver_peak'] / GiB:.2f} GiB | "
                     f"{r['driver_anon_peak'] / GiB:.2f} GiB | {ray_cols[0]} | {ray_cols[1]} | {r['seconds']:.0f} s |")
    seq = [r for r in rows if r["executor"] == "sequential"]
    if len(seq) >= 2:
        lo, hi = seq[0], seq[-1]
        lines += ["", f"Sequential M={hi['M']} vs M={lo['M']}: peak RSS "
                  f"{(hi['driver_peak'] - lo['driver_peak']) / GiB:+.2f} GiB, peak anonymous RSS "
                  f"{(hi['driver_anon_peak'] - lo['driver_anon_peak']) / GiB:+.2f} GiB. One policy + EMA anchor + "
                  "AdamW state at a time; merges stream tensor by tensor from safetensors files, so what "
                  "grows with M is one tensor per run in flight (`merge.open_streaming` reads with pread, so "
                  "the files a merge has read do not stay resident)."]
    for r in rows:
        if "equals_sequential" in r:
            lines += ["", f"Ray M={r['M']} final weights bit-identical to sequential: "
                      f"{'yes' if r['equals_sequential'] else 'NO'} (workers use the driver's torch thread count)."]
    from _results import write_section

    path = write_section("WARP memory", "\n".join(lines))
    print("\n".join(lines))
    print(f"\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
