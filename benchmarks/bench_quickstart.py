"""Time `warprl quickstart` (what `make demo` runs) end to end and record its before/after numbers.

    .venv/bin/python benchmarks/bench_quickstart.py [--out runs/quickstart] [--readme README.md] [--reference DIR]

Runs the console command in a fresh process (imports, model loading and everything included), then writes the
section "Quickstart (make demo)" of benchmarks/RESULTS.md: wall time against the 5-minute target, the time
of each phase, the before/after table, the η sweep and a few generations before and after.

``--reference DIR`` (the folder of an earlier quickstart, e.g. one run before a change to its defaults) also
compares the two WARP fronts on the same held-out prompts, each against the other's points at matched KL
(the paired bootstrap and verdict rule of `warprl pareto`): whether a change kept the demo's quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 300  # issue 11: `make demo` in at most 5 minutes on 2 cores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/quickstart")
    ap.add_argument("--readme", default="", help="passed to `warprl quickstart --readme`")
    ap.add_argument("--reference", default="", help="an earlier quickstart folder whose WARP front to compare with")
    args = ap.parse_args()
    reference = None
    if args.reference:  # read before the run: --out may be the same folder
        ref_dir = Path(args.reference)
        reference = (json.loads((ref_dir / "pareto.json").read_text()),
                     json.loads((ref_dir / "summary.json").read_text()))
    warprl = ROOT / ".venv" / "bin" / "warprl"
    cmd = [str(warprl) if warprl.exists() else "warprl", "quickstart", "--out", args.out]
    if args.readme:
        cmd += ["--readme", args.readme]
    print("running:", " ".join(cmd), file=sys.stderr)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"quickstart failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode
    out = ROOT / args.out
    s = json.loads((out / "summary.json").read_text())
    q, sec = s["quickstart"], s["seconds"]
    b, a = s["before"], s["after"]
    verdict = "within" if wall <= BUDGET_S else "OVER"
    lines = [
        f"`{' '.join(['warprl'] + cmd[1:])}` on {machine()}, measured {time.strftime('%Y-%m-%d %H:%M')}.", "",
        f"**Wall time {wall:.0f} s ({wall / 60:.1f} min), {verdict} the {BUDGET_S // 60}-minute target** — "
        f"load {sec['load_s']:.0f} s, evaluation before {sec['eval_before_s']:.0f} s, WARP {sec['warp_s']:.0f} s "
        f"({q['iterations']} × {q['runs']} × {q['steps']} RLOO steps of {q['batch_size']} prompts × {q['k']}, "
        f"lr {q['lr']}, β {q['beta']}, μ {q['mu']}, LITI η {q['eta']}, ≤ {q['max_new_tokens']} tokens, "
        f"bf16 {q['bf16']}), Pareto sweep {sec['pareto_s']:.0f} s ({q['eta_steps'] + 1} points + last SLERP, "
        f"{q['n_prompts']} held-out prompts × {q['samples_per_prompt']} samples each).", "",
        (out / "before_after.md").read_text().strip(), "",
        f"Reward {b['reward_mean']:.3f} → {a['reward_mean']:.3f} ({a['reward_mean'] - b['reward_mean']:+.3f}) at KL "
        f"{a['kl_mean']:.2f}; judge positive rate {b['judge_positive_rate']:.0%} → {a['judge_positive_rate']:.0%}; "
        f"distinct-2 {b['distinct_2']:.2f} → {a['distinct_2']:.2f} (target ≥ 0.5).", "",
        "η sweep (θ_η = (1−η)·θ_sft + η·θ_final):", "",
        "| η | reward | KL | judge > 0.05 | distinct-2 | loops |", "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in s["sweep"]:
        lines.append(f"| {p['eta']:g} | {p['reward_mean']:.3f} | {p['kl_mean']:.2f} | {p['judge_positive_rate']:.0%} "
                     f"| {p['distinct_2']:.2f} | {p['repetition_rate']:.0%} |")
    pareto = json.loads((out / "pareto.json").read_text())
    sweep = pareto["series"][0]["points"]
    first, last = sweep[0]["samples"], sweep[-1]["samples"]
    lines += ["", "Generations for the same held-out prompts and seed, before → after:", ""]
    for i in range(0, min(len(first), 8), 2):  # one sample per prompt (samples of a prompt are adjacent)
        lines.append(f"- *{first[i]['prompt']}* → {' '.join(first[i]['completion'].split())!r} → "
                     f"{' '.join(last[i]['completion'].split())!r}")
    if reference is not None:
        lines += ["", *same_quality_lines(pareto, reference[0], reference[1], args.reference)]
    lines += ["", f"Rerun: `.venv/bin/python benchmarks/bench_quickstart.py` (report: `{args.out}/report.md`)."]
    path = write_section("Quickstart (make demo)", "\n".join(lines))
    print(f"wall {wall:.0f} s; section written to {path}", file=sys.stderr)
    return 0


def warp_front(pareto: dict):
    """The WARP η sweep of a quickstart's pareto.json as a Series (its first series)."""
    from warprl.eval.pareto import Series

    return Series(**pareto["series"][0])


def same_quality_lines(pareto: dict, ref_pareto: dict, ref_summary: dict, ref_name: str) -> list[str]:
    """This run's WARP front against a reference quickstart's, both ways, with intervals and verdicts."""
    from warprl.eval.pareto import compare_fronts
    from warprl.eval.stats import VERDICT_RULE

    new, ref = warp_front(pareto), warp_front(ref_pareto)
    q, sec = ref_summary["quickstart"], ref_summary["seconds"]
    lines = [f"Same quality as the reference `{ref_name}` ({q['iterations']} × {q['runs']} × {q['steps']} steps, lr "
             f"{q['lr']}, {q['eta_steps'] + 1} η points; {sec['total_s']:.0f} s), on the same held-out prompts. "
             + VERDICT_RULE, ""]
    for a, b, what in ((ref, new, "the reference's front minus this run's points"),
                       (new, ref, "this run's front minus the reference's points")):
        c = compare_fronts(a, b)
        ci = c["mean_delta_ci"]
        interval = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
        mean = f"{c['mean_delta']:+.3f}" if c["mean_delta"] is not None else "–"
        lines.append(f"- {what}: mean Δ reward at matched KL {mean}{interval} over {c['matched']} points → "
                     f"**{c['verdict']}**")
    ra, rr = new.points[-1], ref.points[-1]
    lines.append(f"- the final policy (η = 1): reward {ra['reward_mean']:.3f} at KL {ra['kl_mean']:.2f} here, "
                 f"{rr['reward_mean']:.3f} at KL {rr['kl_mean']:.2f} in the reference")
    return lines


if __name__ == "__main__":
    sys.exit(main())
