"""`warprl quickstart` (what `make demo` runs): the whole pipeline, offline, on the embedded defaults.

    SFT policy (bundled SmolLM2-135M) ─► evaluate (before) ─► WARP (I × M runs of T RLOO steps, SLERP, LITI)
        ─► η sweep θ_η = (1−η)·θ_sft + η·θ_final (η = 0 is "before", η = 1 is "after") + the last SLERP
        ─► DIR/report.md, DIR/pareto.png, DIR/results.md, DIR/summary.json; DIR/final is the aligned policy.

The WARP run writes straight into DIR (so DIR is also a valid `warprl align` output folder, and
`warprl pareto --final DIR` works on it). The evaluator keeps the SFT model loaded throughout; the reward
model is loaded once and shared by training and evaluation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from warprl.commands import outdir
from warprl.commands.align import run_align
from warprl.commands.evaluate import write_outputs
from warprl.config import AlignConfig, ParetoConfig, QuickstartConfig, derive, to_dict
from warprl.eval.evaluate import METRIC_KEYS
from warprl.eval.pareto import Evaluator, eval_settings, pareto_sweep
from warprl.eval.report import COLUMNS, check_readme, update_readme
from warprl.io import atomic_write_json, atomic_write_text

MARKER = outdir.QUICKSTART.finished_key  # key in summary.json that marks a folder as a previous quickstart


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def align_config(cfg: QuickstartConfig, resume: bool = False) -> AlignConfig:
    """The WARP run: RLOO inside, checkpoints only at the end of each run; --overwrite was handled already."""
    return derive(AlignConfig, cfg, method="warp", inner="rloo", checkpoint_every=0, resume=resume, overwrite=False)


def pareto_config(cfg: QuickstartConfig) -> ParetoConfig:
    """The η sweep from θ_sft (the policy) to the run's final/; evaluation keeps its own seed and batch size."""
    return derive(ParetoConfig, cfg, exclude=("seed", "batch_size", "readme"), sft=cfg.policy, final=cfg.out)


def before_after_table(before: dict, after: dict, slerp: dict | None = None) -> str:
    """Markdown table: one row per metric, columns SFT / WARP final (/ last SLERP)."""
    head = "| metric | before (SFT) | after (WARP final) |" + (" last SLERP |" if slerp else "")
    lines = [head, "|---|---:|---:|" + ("---:|" if slerp else "")]
    for label, key, fmt in COLUMNS:
        cells = [fmt.format(before[key]), fmt.format(after[key])] + ([fmt.format(slerp[key])] if slerp else [])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_quickstart(cfg: QuickstartConfig, reward_fn=None, judge_fn=None) -> dict:
    """The pipeline; returns the summary also written to DIR/summary.json.

    ``reward_fn`` / ``judge_fn`` replace loading ``cfg.reward`` / ``cfg.judge`` (library use, tests).
    """
    t0 = time.perf_counter()
    if cfg.readme:
        check_readme(cfg.readme)
    # A finished quickstart is replaced, an interrupted one continues (the WARP run refuses other settings).
    decision = outdir.check(cfg.out, outdir.QUICKSTART, overwrite=cfg.overwrite, what="quickstart")
    resume = decision.resume
    pcfg = pareto_config(cfg)
    ecfg = eval_settings(pcfg)
    timings: dict[str, float] = {}

    _say(f"[1/4] loading {cfg.policy}, {cfg.reward} and the {cfg.judge} judge")
    scorers = None
    if reward_fn is not None or judge_fn is not None:
        if reward_fn is None or judge_fn is None:
            raise ValueError("pass both reward_fn and judge_fn, or neither")
        scorers = (reward_fn, judge_fn)
    ev = Evaluator(cfg.policy, ecfg, cfg.reward, cfg.judge, cfg.progress, scorers=scorers)
    out = outdir.prepare(decision)  # every input has loaded: now the folder may be replaced
    t = time.perf_counter()
    timings["load_s"] = t - t0

    _say(f"[2/4] evaluating the SFT policy on {len(ev.prompts)} held-out prompts × {cfg.samples_per_prompt}")
    final = out / "final"
    before = ev.at_eta(final, 0.0, desc="before")  # η = 0 needs no θ_final: the SFT weights themselves
    timings["eval_before_s"] = time.perf_counter() - t

    t = time.perf_counter()
    steps = cfg.iterations * cfg.runs * cfg.steps
    _say(f"[3/4] WARP: {cfg.iterations} iterations × {cfg.runs} runs × {cfg.steps} RLOO steps = {steps} steps "
         f"of {cfg.batch_size} prompts × {cfg.k} samples")
    if resume:
        _say(f"      continuing the interrupted WARP run in {out}")
    warp_summary = run_align(align_config(cfg, resume), reward_fn=ev.reward_fn)
    timings["warp_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(f"[4/4] Pareto sweep over η ∈ {{0, 1/{cfg.eta_steps}, …, 1}} and the last SLERP")
    series, comparisons, meta = pareto_sweep(pcfg, ev)
    timings["pareto_s"] = time.perf_counter() - t
    sweep = series[0].points
    after = next(p for p in sweep if p["eta"] == 1.0)
    slerp = series[1].points[0] if len(series) > 1 else None
    table = before_after_table(before, after, slerp)
    write_outputs(out, pcfg, series, comparisons, meta, pcfg.samples_shown, before_after=table)
    if cfg.readme:
        update_readme(cfg.readme, "quickstart", (out / "results.md").read_text(), out / "pareto.png")

    timings["total_s"] = time.perf_counter() - t0
    summary = {
        MARKER: to_dict(cfg),
        "warp": warp_summary,
        "before": {k: before[k] for k in METRIC_KEYS},
        "after": {k: after[k] for k in METRIC_KEYS},
        "last_slerp": {k: slerp[k] for k in METRIC_KEYS} if slerp else None,
        "sweep": [{"eta": p["eta"], **{k: p[k] for k in METRIC_KEYS}} for p in sweep],
        "final": str(final), "report": str(out / "report.md"), "plot": str(out / "pareto.png"),
        "results": str(out / "results.md"),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    atomic_write_json(out / "summary.json", summary)
    # The quickstart table also as plain text, for a terminal without a Markdown viewer.
    atomic_write_text(out / "before_after.md", table + "\n")
    return summary


def print_summary(summary: dict) -> None:
    """The before/after table and where everything is (stdout)."""
    cols = COLUMNS
    b, a, s = summary["before"], summary["after"], summary.get("last_slerp")
    rows = [("metric", "before (SFT)", "after (WARP)") + (("last SLERP",) if s else ())]
    for label, key, fmt in cols:
        rows.append((label, fmt.format(b[key]), fmt.format(a[key])) + ((fmt.format(s[key]),) if s else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\naligned policy: {summary['final']}\nreport:         {summary['report']}\nplot:           "
          f"{summary['plot']}\nsummary:        {Path(summary['report']).parent / 'summary.json'}\n"
          f"total time:     {summary['seconds']['total_s']:.0f} s")
