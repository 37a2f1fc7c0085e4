"""`warprl evaluate` and `warprl pareto`: load the inputs, call :mod:`warprl.eval`, write the files.

The order is the one every command follows: the output folder is checked first (read only), every input is
checked or loaded, the work runs, and only then is the folder created and written. A bad input never
creates, empties or half-writes an output folder.
"""

from __future__ import annotations

from pathlib import Path

from warprl.commands import outdir
from warprl.config import EvalConfig, ParetoConfig, to_dict
from warprl.eval.evaluate import check_same_vocab, eval_prompts, evaluate_policy, load_gold, load_scorers
from warprl.eval.pareto import Evaluator, Series, eval_settings, model_folder, pareto_sweep, seed_group
from warprl.eval.report import (
    check_readme,
    has_gold,
    plot_front,
    render_report,
    results_fragment,
    update_readme,
)
from warprl.io import atomic_write_json, atomic_write_text
from warprl.models import load_policy, pick_device


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict:
    """`warprl evaluate`: load the policy, the SFT policy and the scorers, then evaluate on held-out prompts."""
    device = pick_device(cfg.device)
    policy, tok = load_policy(cfg.policy, device=device)
    sft = policy if cfg.sft == cfg.policy else load_policy(cfg.sft, device=device)[0]
    check_same_vocab(policy, sft, cfg.policy, cfg.sft)
    reward_fn, judge_fn = load_scorers(cfg.reward, cfg.judge, device, cfg.bf16)
    gold_fn = load_gold(cfg.gold, device, cfg.bf16)
    prompts = eval_prompts(cfg, tok)
    result = evaluate_policy(policy, tok, sft, reward_fn, judge_fn, prompts, cfg, progress=progress, gold_fn=gold_fn)
    return {"policy": cfg.policy, "sft": cfg.sft, "reward": cfg.reward, "judge": cfg.judge,
            **({"gold": cfg.gold} if cfg.gold else {}), **result}


def pareto(cfg: ParetoConfig, evaluator: Evaluator | None = None) -> dict:
    """`warprl pareto`: the sweep, then pareto.png, report.md, results.md and pareto.json in ``cfg.out``.

    ``evaluator`` replaces building one from ``cfg`` (library use, tests: e.g. with toy scorers).
    """
    decision = outdir.check(cfg.out, outdir.REPORT, what="report")  # before anything is loaded
    for spec in [cfg.final, *cfg.baseline]:  # fail on a bad path before loading anything
        for folder in seed_group(spec):
            model_folder(folder)
    if cfg.readme:
        check_readme(cfg.readme)  # fail now, not after the sweep
    ev = evaluator or Evaluator(cfg.sft, eval_settings(cfg), cfg.reward, cfg.judge, cfg.progress)
    series, comparisons, meta = pareto_sweep(cfg, ev)
    out = outdir.prepare(decision)
    summary = write_outputs(out, cfg, series, comparisons, meta, cfg.samples_shown)
    if cfg.readme:
        update_readme(cfg.readme, out.name, (out / "results.md").read_text(), out / "pareto.png")
    return summary


def write_outputs(out: Path, cfg, series: list[Series], comparisons: list[dict], meta: dict,
                  samples_shown: int, before_after: str = "") -> dict:
    """pareto.png, report.md, results.md (the README fragment) and pareto.json into ``out``, atomically.

    Shared by `warprl pareto` and `warprl quickstart`. It lives with the commands, not in
    :mod:`warprl.eval.report`, because it fixes a command's output contract: the file names in the folder and
    pareto.json, which carries the command's config and is what ``--json`` prints.
    """
    png = out / "pareto.png"
    plot_front(series, png, title=f"Reward vs KL to the SFT policy ({meta['reward']})")
    if has_gold(series):
        plot_front(series, out / "gold.png", title=f"Gold reward vs KL ({meta.get('gold')}, never optimised)",
                   metric="gold_mean", ylabel="mean gold reward (held-out prompts)")
    atomic_write_text(out / "report.md", render_report(series, comparisons, meta, png.name, samples_shown,
                                                       before_after))
    fragment = results_fragment(series, comparisons, meta, png, before_after)
    atomic_write_text(out / "results.md", fragment)
    summary = {"config": to_dict(cfg), "meta": meta, "series": [s.__dict__ for s in series],
               "comparisons": comparisons, "report": str(out / "report.md"), "plot": str(png),
               "results": str(out / "results.md")}
    atomic_write_json(out / "pareto.json", summary)
    return summary
