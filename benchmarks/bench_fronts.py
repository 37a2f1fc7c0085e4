"""WARP against RLOO at equal compute on the embedded default: is WARP's reward–KL front above RLOO's?

    .venv/bin/python benchmarks/bench_fronts.py [--warp-dir runs/quickstart] [--out runs/bench_fronts]

Equal compute = the same number of RL steps of the same shape: WARP's I·M·T steps (I iterations × M runs × T
steps, plus its merges) against one RLOO run of I·M·T steps with the same prompts per step, samples per
prompt, completion length, learning rate and β (RLOO's KL is to the SFT policy, WARP's to its EMA anchor,
as each method prescribes). The WARP run is reused from --warp-dir (e.g. the quickstart's) when it is a
finished WARP run, otherwise it is trained with the quickstart defaults. Both final policies are swept over
η ∈ {0, 0.1, …, 1} towards the SFT policy and evaluated on the same held-out prompts with the same seed; the
fronts are compared at matched KL both ways. Writes the section "WARP vs RLOO fronts (equal compute)" of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section  # noqa: E402

from warprl.heap import keep_freed_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_warp(warp_dir: Path) -> None:
    from warprl.commands.align import run_align as align_warp
    from warprl.commands.quickstart import align_config
    from warprl.config import QuickstartConfig

    align_warp(align_config(QuickstartConfig(out=str(warp_dir))))


def main() -> int:
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warp-dir", default="runs/quickstart", help="a finished WARP run to reuse (or to create)")
    ap.add_argument("--out", default="runs/bench_fronts")
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--samples-per-prompt", type=int, default=2)
    args = ap.parse_args()

    from warprl.commands.align import run_align as align_single
    from warprl.commands.evaluate import pareto
    from warprl.config import AlignConfig, ParetoConfig
    from warprl.eval.report import comparison_markdown

    warp_dir, out = ROOT / args.warp_dir, ROOT / args.out
    if not (warp_dir / "final" / "config.json").is_file():
        print(f"no finished WARP run in {warp_dir}: training one with the quickstart defaults", file=sys.stderr)
        train_warp(warp_dir)
    w = yaml.safe_load((warp_dir / "config.yaml").read_text())
    if w.get("method") != "warp":
        raise SystemExit(f"{warp_dir} is not a WARP run (method {w.get('method')!r})")
    warp_summary = json.loads((warp_dir / "summary.json").read_text())
    warp_s = warp_summary.get("warp", warp_summary).get("train_seconds")  # a quickstart nests it under "warp"

    steps = w["iterations"] * w["runs"] * w["steps"]
    rloo_dir = out / "rloo"
    rloo_cfg = AlignConfig(method="rloo", anchor="sft", policy=w["policy"], reward=w["reward"], prompts=w["prompts"],
                           prompt_tokens=w["prompt_tokens"], steps=steps, batch_size=w["batch_size"], k=w["k"],
                           lr=w["lr"], beta=w["beta"], kl_estimator=w["kl_estimator"],
                           max_new_tokens=w["max_new_tokens"], temperature=w["temperature"], bf16=w["bf16"],
                           device=w["device"], seed=w["seed"], checkpoint_every=20, out=str(rloo_dir))
    if (rloo_dir / "summary.json").is_file():
        print(f"reusing the finished RLOO run in {rloo_dir}", file=sys.stderr)
    else:
        rloo_cfg.resume = (rloo_dir / "config.yaml").is_file()
        align_single(rloo_cfg)
    rloo_s = json.loads((rloo_dir / "summary.json").read_text())["train_seconds"]

    t0 = time.perf_counter()
    pcfg = ParetoConfig(sft=w["policy"], final=str(warp_dir), baseline=[str(rloo_dir)], sweep_baselines=True,
                        reward=w["reward"], prompts=w["prompts"], prompt_tokens=w["prompt_tokens"],
                        n_prompts=args.n_prompts, samples_per_prompt=args.samples_per_prompt,
                        max_new_tokens=w["max_new_tokens"], bf16=w["bf16"], device=w["device"],
                        out=str(out / "pareto"))
    summary = pareto(pcfg)
    sweep_s = time.perf_counter() - t0

    series = {s["name"]: s for s in summary["series"]}
    warp_name, rloo_name = summary["series"][0]["name"], next(n for n in series if n.startswith("RLOO"))
    by_pair = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    w_over_r, r_over_w = by_pair[(warp_name, rloo_name)], by_pair[(rloo_name, warp_name)]

    def table(points) -> list[str]:
        rows = ["| η | reward | KL | judge > 0.05 | distinct-2 | loops |", "|---:|---:|---:|---:|---:|---:|"]
        rows += [f"| {p['eta']:g} | {p['reward_mean']:.3f} | {p['kl_mean']:.2f} | {p['judge_positive_rate']:.0%} | "
                 f"{p['distinct_2']:.2f} | {p['repetition_rate']:.0%} |" for p in points]
        return rows

    warp_pts, rloo_pts = series[warp_name]["points"], series[rloo_name]["points"]
    overlap = min(max(p["kl_mean"] for p in warp_pts), max(p["kl_mean"] for p in rloo_pts))

    def verdict() -> str:
        """The rule of the report (``eval.stats.verdict`` on each direction's 95 % interval of the mean Δ)."""
        a, b = w_over_r, r_over_w  # a: WARP's front at RLOO's KLs; b: RLOO's front at WARP's KLs
        if not a["matched"] and not b["matched"]:
            return "The two fronts do not overlap in KL: no matched comparison is possible."
        va, vb = a["verdict"], b["verdict"]
        if va == "above" and vb != "above":
            head = "**WARP's front lies above RLOO's**"
        elif vb == "above" and va != "above":
            head = "**RLOO's front lies above WARP's**"
        elif va in ("within noise", "no interval", "no comparison") and vb in ("within noise", "no interval",
                                                                             "no comparison"):
            head = "**The fronts are within noise of each other**"
        else:
            head = "**Neither front dominates**"
        parts = []
        for c, what in ((a, "WARP − RLOO at RLOO's KL values"), (b, "RLOO − WARP at WARP's KL values")):
            if c["matched"]:
                ci = c.get("mean_delta_ci")
                ci_text = f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "no interval"
                parts.append(f"{what}: mean Δ {c['mean_delta']:+.3f}, 95 % interval {ci_text} over "
                             f"{c['matched']} points → {c['verdict']}")
        rule = ("Rule: a front is above the other when the 95 % interval of its mean reward difference at the "
                "other's KL values lies above 0 and the reverse interval does not; within noise when no "
                "interval excludes 0.")
        return f"{head} in the KL range both cover (0–{overlap:.1f} nats). " + "; ".join(parts) + ". " + rule

    def endpoint(name: str, p: dict) -> str:
        return (f"{name} at η = 1: reward {p['reward_mean']:.2f} at KL {p['kl_mean']:.1f}, distinct-2 "
                f"{p['distinct_2']:.2f}, loops {p['repetition_rate']:.0%}, judge positive {p['judge_positive_rate']:.0%}")

    slerp = next((s["points"][0] for s in summary["series"] if s["name"].startswith("WARP last SLERP")), None)
    lines = [
        f"Embedded default (bundled SmolLM2-135M, reward `{w['reward']}`, prompts `{w['prompts']}`) on {machine()}, "
        f"measured {time.strftime('%Y-%m-%d %H:%M')}.", "",
        f"Equal compute: {steps} RL steps each of {w['batch_size']} prompts × {w['k']} samples, ≤ "
        f"{w['max_new_tokens']} tokens, lr {w['lr']}, β {w['beta']}. WARP: I = {w['iterations']} × M = {w['runs']} × "
        f"T = {w['steps']}, EMA anchor μ = {w['mu']}, LITI η = {w['eta']} "
        f"({warp_s if warp_s is not None else '?'} s). RLOO: one run of {steps} steps, KL to the SFT policy "
        f"({rloo_s} s). Evaluation: {summary['meta']['n_prompts']} held-out prompts × "
        f"{args.samples_per_prompt} samples, seed {summary['meta']['seed']}, same for every point "
        f"(sweeps: {sweep_s:.0f} s).", "",
        verdict(), "",
        f"Endpoints with the same compute: {endpoint('WARP', warp_pts[-1])}; {endpoint('RLOO', rloo_pts[-1])}.", "",
        f"**{warp_name}** (η sweep towards the SFT policy):", "", *table(warp_pts), "",
        f"**{rloo_name}**:", "", *table(rloo_pts), "",
    ]
    if slerp:
        lines += [f"WARP's last SLERP (before LITI): reward {slerp['reward_mean']:.3f} at KL {slerp['kl_mean']:.2f}.", ""]
    lines += [comparison_markdown(w_over_r), "", comparison_markdown(r_over_w), "",
              f"Plot: `{args.out}/pareto/pareto.png`; report: `{args.out}/pareto/report.md`. Rerun: "
              f"`.venv/bin/python benchmarks/bench_fronts.py --warp-dir {args.warp_dir} --out {args.out}`."]
    path = write_section("WARP vs RLOO fronts (equal compute)", "\n".join(lines))
    print(f"section written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
