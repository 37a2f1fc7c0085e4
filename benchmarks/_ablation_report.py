"""The WARP ablation's report (``bench_warp_ablation.py``): Markdown tables, comparisons at matched KL with their
verdicts, and the plots, from the records the benchmark keeps in --out (``_ablation_files``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import _ablation_files as files
from _ablation_plan import I1, Plan
from _results import machine


def report(policy: str, plan: Plan, ev: dict, seeds: list[int], sizes: dict, out: Path, args,
           minutes: dict[str, float], dest: Path | None = None, interim: bool = False) -> str:
    """The results' Markdown; the plots and ablation.json go to ``dest`` (default: ``out``). ``interim``: not every
    part is complete for every seed (labelled so)."""
    from warprl.eval import stats
    from warprl.eval.pareto import compare_fronts, seeded_series
    from warprl.eval.report import _ci, plot_front

    series = {n: seeded_series(n, "sweep", "", pts) for n, pts in ev["results"].items()}
    gold = json.loads((out / "gold_rm" / "metrics.json").read_text())["val"]["accuracy"]
    settings = out / files.SETTINGS_FILE
    stored = json.loads(settings.read_text()) if settings.is_file() else {}  # what the folder was computed with
    begun = stored.get("started") or {}
    precision = {True: "bf16", False: "fp32"}.get(stored.get("bf16"), "precision not recorded")
    parts = sorted({part for _, part in plan.candidates.values()})
    lines = [("**SMOKE RUN — tiny sizes, proves the pipeline runs end to end; not evidence.** " if args.smoke else "")
             + (f"**INTERIM — the parts evaluated so far for every seed shown ({', '.join(parts) or 'none yet'}); "
                "the ablation has not finished.** " if interim else "")
             + f"{len(seeds)} seed{'s' * (len(seeds) != 1)} ({', '.join(map(str, seeds))}); policy `{policy}`, "
             "reward `imdb-sentiment`, "
             f"judge `vader`, gold = MiniLM fully fine-tuned (`{out.name}/gold_rm`, {gold:.1%} pairwise on its "
             f"validation pairs); T = {sizes['steps']}, "
             f"{sizes['batch_size']} prompts × {sizes['k']} samples per step, ≤ {sizes['max_new_tokens']} tokens; "
             f"{ev['n_prompts']} held-out IMDB prompts × {sizes['samples_per_prompt']} samples per point, η ∈ "
             f"{{{', '.join(f'{e:g}' for e in sizes['etas'])}}}; {precision}; started "
             f"{begun.get('date', '?')} on {begun.get('machine', '?')}, reported {time.strftime('%Y-%m-%d %H:%M')} on "
             f"{machine()}; compute: " + ", ".join(f"{k} {v:.0f} min" for k, v in minutes.items()) + ".", "",
             ("Each candidate: η = 1 reward / gold / KL (mean over seeds, 95 % interval across seeds). Comparisons: "
              "mean Δreward at matched KL (the first's front at the second's KLs), mean over seeds of each seed's "
              "mean Δ, 95 % interval across seeds. " if len(seeds) > 1 else
              "Each candidate: η = 1 reward / gold / KL with 95 % bootstrap intervals over prompts. Comparisons: "
              "mean Δreward at matched KL (the first's front at the second's KLs), paired bootstrap over prompts. ")
             + "Each pair is compared both ways; KL values beyond the first front's range are left out. Part (d) "
             "compares the gold rewards too, read off the first's sweep (not its upper envelope: gold need not rise "
             "with KL) at the second's KLs, with intervals and verdicts by the same rule; \"gold peaks at\" is the sweep's point of highest "
             "gold reward (beyond it more KL buys proxy reward and loses gold: the proxy is being hacked). "
             + stats.VERDICT_RULE, ""]
    names = {part: [n for n, (_, p) in plan.candidates.items() if p == part] for part in "abcd"}
    titles = {"a": "(a) anchor: SFT vs EMA", "b": "(b) merging", "c": "(c) LITI η and iterations I",
              "d": "(d) fronts at equal total RL steps"}
    pairs = {"a": [("RLOO EMA anchor", "RLOO SFT anchor"), ("REINFORCE EMA anchor", "REINFORCE SFT anchor")],
             "b": [(f"{op} M={m}", "one run (T steps)") for op in ("LERP", "SLERP") for m in (2, 4)]
             + [("SLERP M=4", "one RLOO run of 4T steps, EMA anchor"), ("SLERP M=4", "LERP M=4")],
             "c": [("η=0.3 I=3", I1), ("η=0.5 I=3", I1), ("η=0.3 I=2", I1), ("η=0.5 I=2", I1),
                   ("η=0.3 I=3", "η=0.5 I=3")],
             "d": [(f"task β={b}: WARP {w}", f"task β={b}: {m}") for b in (0.01, 0.1)
                   for w in ("final (LITI)", "last SLERP") for m in ("RLOO", "REINFORCE")]
             + [("paper: WARP last SLERP (its output)", "paper: REINFORCE"), ("paper: WARP final (LITI)",
                                                                          "paper: REINFORCE"),
                ("paper: WARP last SLERP (its output)", "paper: WARP final (LITI)")]}
    summary: dict = {"comparisons": []}
    for part in "abcd":
        if not names[part]:
            continue
        lines += [f"### {titles[part]}", "", "| candidate | reward η=1 | gold η=1 | KL η=1 | gold peaks at | seeds |",
                  "|---|---:|---:|---:|---|---:|"]
        for n in names[part]:
            p = series[n].points[-1]
            ang = ev["angles"].get(n)
            lines.append(f"| {n}" + (f" (task vectors {sum(ang) / len(ang):.0f}°)" if ang else "")
                         + f" | {p['reward_mean']:.2f} {_ci(p.get('reward_ci'), '{:.2f}')} | "
                         f"{p.get('gold_mean', float('nan')):.2f} {_ci(p.get('gold_ci'), '{:.2f}')} | "
                         f"{p['kl_mean']:.1f} {_ci(p.get('kl_ci'), '{:.1f}')} | {gold_peak(series[n].points)} | "
                         f"{p.get('n_seeds', 1)} |")
        for metric in ("reward", "gold") if part == "d" else ("reward",):
            lines += ["", f"| comparison{' (gold reward, never optimised)' * (metric == 'gold')} | matched KL | "
                      f"mean Δ{metric} | 95 % interval | verdict |", "|---|---:|---:|---:|---|"]
            for a, b in pairs[part] + [(b, a) for a, b in pairs[part]]:
                if a not in series or b not in series:
                    continue
                # gold along the sweep in KL order: nobody can pick η by a reward they do not have
                c = compare_fronts(series[a], series[b], metric, read="front" if metric == "reward" else "curve")
                summary["comparisons"].append({"part": part, "metric": metric,
                                               **{k: v for k, v in c.items() if k != "rows"}})
                center = c.get("seed_mean_delta", c["mean_delta"])  # the centre of the across-seed interval
                md = "–" if center is None else f"{center:+.3f}"
                lines.append(f"| {a} − {b} | {c['matched']} | {md} | {_ci(c.get('mean_delta_ci'))} | "
                             f"{c['verdict']} |")
        png = (dest or out) / f"ablation_{part}.png"
        plot_front(plotted(plan, names[part], series), png, title=titles[part])
        lines += ["", f"![{titles[part]}]({png.name})"]
        if part == "d":
            gpng = (dest or out) / "ablation_d_gold.png"
            plot_front(plotted(plan, names[part], series), gpng, title="gold reward vs KL (never optimised)",
                       metric="gold_mean", ylabel="mean gold reward")
            lines += ["", f"![gold vs KL]({gpng.name})"]
        lines.append("")
    summary["series"] = {n: s.points for n, s in series.items()}
    for s in summary["series"].values():
        for p in s:
            p.pop("samples", None)
    ((dest or out) / "ablation.json").write_text(json.dumps(summary, indent=1, default=str))
    return "\n".join(lines)


def plotted(plan: Plan, names: list[str], series: dict) -> list:
    """The series of ``names`` to draw: one per policy, the names of candidates that are the same weights (e.g.
    part (d)'s "paper: RLOO" and "task β=0.1: RLOO") joined in its label, so that no two curves share a colour."""
    from dataclasses import replace

    same: dict[str, list[str]] = {}
    for n in names:
        same.setdefault(plan.candidates[n][0], []).append(n)
    return [replace(series[group[0]], name=" = ".join(group)) for group in same.values()]


def gold_peak(points: list[dict]) -> str:
    """Where a sweep's gold reward is highest (η, KL): beyond it more KL buys proxy reward but loses gold (the
    proxy is being hacked); at η = 1 the gold reward has not turned down yet."""
    scored = [p for p in points if "gold_mean" in p]
    if not scored:
        return "–"
    best = max(scored, key=lambda p: p["gold_mean"])
    where = f"η={best['eta']:g}, KL {best['kl_mean']:.1f}" if "eta" in best else f"KL {best['kl_mean']:.1f}"
    return where + (" (still rising)" if best is scored[-1] else "")


def pending_lines(plan: Plan, per_seed: dict[int, dict], done: set[str]) -> list[str]:
    """A table of the candidates evaluated so far in parts not yet complete: their own points, no comparison."""
    from warprl.eval.report import _ci

    lines = ["### Evaluated so far in parts not yet complete (no comparison until their partners are evaluated)", "",
             "| seed | candidate | part | reward η=1 | gold η=1 | KL η=1 | reward at η = 0.25, 0.5, 0.75 |",
             "|---:|---|---|---:|---:|---:|---|"]
    for seed, records in per_seed.items():
        for name, (spec, part) in plan.candidates.items():
            if part in done or spec not in records:
                continue
            pts = records[spec]["points"]
            p = pts[-1]
            lines.append(f"| {seed} | {name} | {part} | {p['reward_mean']:.2f} {_ci(p.get('reward_ci'), '{:.2f}')} | "
                         f"{p.get('gold_mean', float('nan')):.2f} {_ci(p.get('gold_ci'), '{:.2f}')} | "
                         f"{p['kl_mean']:.2f} {_ci(p.get('kl_ci'), '{:.2f}')} | "
                         + ", ".join(f"{q['reward_mean']:.2f} (KL {q['kl_mean']:.2f})" for q in pts[1:-1]) + " |")
    return lines if len(lines) > 4 else []
