"""Which parts of WARP pay off? Anchor, merging, LITI/iterations and the method itself, over several seeds.

    .venv/bin/python benchmarks/bench_warp_ablation.py [--seeds 0 1 2] [--parts a b c d] [--out runs/ablation]
    .venv/bin/python benchmarks/bench_warp_ablation.py --plan      # the runs and evaluations, with a time estimate
    .venv/bin/python benchmarks/bench_warp_ablation.py --plan --measure   # the estimate from rates measured here
    .venv/bin/python benchmarks/bench_warp_ablation.py --smoke     # tiny sizes: proves the pipeline, not a result
    .venv/bin/python benchmarks/bench_warp_ablation.py --so-far --seeds 0   # the parts seed 0 has finished, so far
                                                                            # (RESULTS.md: "WARP ablation: interim";
                                                                            # once every part of seeds 0-2 is in,
                                                                            # the final "WARP ablation")
    .venv/bin/python benchmarks/bench_warp_ablation.py ... --readme README.md   # also the README's block (part d)

Parts (every comparison at equal RL compute = the same number of RL steps of the same shape, S = I·M·T):

(a) anchor: RLOO and REINFORCE, S steps each, KL to the SFT policy vs KL to an EMA anchor (μ).
(b) merging: one WARP iteration of M = 4 runs of T steps: one run alone, LERP and SLERP of runs 1–2 (M = 2) and
    of all four (M = 4), beside one RLOO run of 4T steps with the EMA anchor (the equal-compute single run);
    the task vectors' mean pairwise angle is reported.
(c) LITI and iterations: WARP M = 2, η ∈ {0.3, 0.5}, the θ_init after I = 2 and 3 iterations (one I = 3 run
    each) against I = 1. After one iteration θ_init = (1−η)·θ_sft + η·θ_slerp1, a point of iteration 1's SLERP
    swept towards θ_sft, which is the same for both η: that one sweep is the I = 1 front of both.
(d) fronts at equal total RL steps: WARP vs RLOO vs REINFORCE under two named configs, swept towards the SFT
    policy: ``paper`` (WARP paper: REINFORCE inside, β 0.1, μ 0.01, η 0.3, λ 0.5; its output is the last
    SLERP) and ``task`` (the reference task: RLOO inside with k samples, β ∈ {0.01, 0.1}, η 0.5). WARP's
    ``final`` (θ_init after the last LITI) and the paper's output (the last SLERP) are both swept.

Shared runs: iteration 1 of every WARP config with the same step settings (β, inner method, μ, T) trains the same
runs (a run does not depend on M, η or I; a test checks it), so the first config to train them lends them to the
others by hard links: part c's η = 0.3 run and part b's M = 4 run borrow runs 1–2 of η = 0.5's iteration 1 (2T
steps each per seed), and part b's SLERP M = 2 is that iteration's SLERP.

Every candidate policy is swept over η (θ_η = (1−η)·θ_sft + η·θ) and evaluated on the same held-out prompts
(the IMDB split `warprl align` never trains on) with the proxy reward, the VADER judge and a gold reward model
that RL never optimises (MiniLM fully fine-tuned on all training pairs by `warprl reward train`, trained here
once and cached in --out, never committed). Fronts are compared at matched KL: per seed the paired bootstrap
over prompts, across seeds mean ± t·s/√n of the per-seed mean Δ; the verdict rule is
:data:`warprl.eval.stats.VERDICT_RULE`. Writes runs/ablation/{results.md, ablation.json, *.png}, and (not with
--smoke) the section "WARP ablation" of benchmarks/RESULTS.md and docs/results/ablation_*.png.

Stopping and going on: each run is trained and its candidates evaluated before the next run, and a seed finishes
before the next. The same command again goes on where a killed or stopped one left off (finished runs and evaluated
sweeps are kept, see ``_ablation_files``), also in a later session; a folder started with other settings (sizes,
parts, precision, the code of src/warprl) is refused with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _ablation_files as files  # noqa: E402
import _ablation_report as ablation_report  # noqa: E402
from _ablation_plan import Plan, needed_files, plan_for, run_steps, shared_steps  # noqa: E402
from _results import RESULTS, machine, matmul_peak, read_bandwidth, section_titles, write_section  # noqa: E402

from warprl.heap import keep_freed_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = "../shared/data/imdb/train.parquet"
POLICY = "smollm2-imdb"  # the IMDB SFT policy (embedded LoRA on SmolLM2-135M): every run starts from it, KL to it


def bf16(args) -> bool:
    """The commands' default: bf16 compute copies only where bf16 is native (an emulated one costs ~10× per step);
    --fp32 keeps fp32 there too (to go on with an --out folder started in fp32 on another machine)."""
    from warprl.commands.flags import default_bf16

    return not args.fp32 and default_bf16("cpu")


def align_config(sizes: dict, args, **settings):
    """The ablation's RL settings at ``sizes`` (every run and the rate probe), plus the run's own ``settings``."""
    from warprl.config import AlignConfig

    return AlignConfig(policy=POLICY, reward="imdb-sentiment", prompts=args.data, prompt_tokens="5-10",
                       batch_size=sizes["batch_size"], k=sizes["k"], max_new_tokens=sizes["max_new_tokens"],
                       lr=sizes["lr"], checkpoint_every=0, progress=False, device="cpu", bf16=bf16(args), **settings)


def eval_config(sizes: dict, args, **settings):
    """The held-out evaluation at ``sizes`` (the candidates and the rate probe), plus ``settings``."""
    from warprl.config import EvalConfig

    return EvalConfig(prompts=args.data, prompt_tokens="5-10", samples_per_prompt=sizes["samples_per_prompt"],
                      max_new_tokens=sizes["max_new_tokens"], device="cpu", bf16=bf16(args), **settings)

# Sizes. FULL holds the minimum per point (256 held-out prompts × 2) and scales the reference task's
# T = 100 to T = 15 (pass --steps 100 for the real one); --plan --measure says what it costs on this machine.
# eval_batch 64 prompts (128 rows): 0.195 s per sample against 0.204–0.216 at 32, alternated in one process (fp32,
# 2-core AVX2 EPYC, 2026-12-04). SMOKE only proves that every part runs end to end.
FULL = dict(steps=15, batch_size=8, k=2, max_new_tokens=24, lr=5e-5, n_prompts=256, samples_per_prompt=2,
            etas=(0.0, 0.25, 0.5, 0.75, 1.0), gold_pairs=0, gold_max_length=256, eval_batch=64)
SMOKE = dict(steps=2, batch_size=2, k=2, max_new_tokens=8, lr=5e-5, n_prompts=16, samples_per_prompt=2,
             etas=(0.0, 0.5, 1.0), gold_pairs=32, gold_max_length=64, eval_batch=16)
# Rates used by --plan without --measure (2 shared cores of the AMX Xeon, bf16, 2026-11-27; --measure times the
# first two on this machine): an RL step of 8 prompts × 2 × 24 tokens, one evaluated sample (generation, both
# log-probs, reward, judge, gold), the gold RM's full fine-tune (not re-measured: a 34-minute run of its own).
STEP_S, SAMPLE_S, GOLD_S = 3.1, 0.09, 34 * 60

def measure_rates(sizes: dict, args) -> tuple[float, float, str]:
    """(s per RL step, s per evaluated sample, a line saying so) on this machine, at ``sizes``: a 3-step RLOO run
    from the SFT policy (the median of steps 2–3, after the first paid for warm-up) and one evaluation batch of its
    result, with ``imdb-sentiment`` standing in for the gold RM (the same MiniLM, so the same cost per text)."""
    import statistics
    import tempfile

    from warprl.commands.align import run_align
    from warprl.eval.pareto import Evaluator

    with tempfile.TemporaryDirectory(prefix="ablation-rates-") as tmp:
        out = Path(tmp) / "rloo"
        run_align(align_config(sizes, args, method="rloo", anchor="sft", steps=3, beta=0.1, seed=0, out=str(out)))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        step_s = statistics.median(r["charts/step_time_s"] for r in rows[1:])
        n = sizes["eval_batch"]
        ecfg = eval_config(sizes, args, n_prompts=n, batch_size=n, gold="imdb-sentiment")
        ev = Evaluator(POLICY, ecfg, "imdb-sentiment", "vader", progress=False)
        t0 = time.perf_counter()
        ev.sweep(out / "final", [1.0], "rates")
        sample_s = (time.perf_counter() - t0) / (len(ev.prompts) * sizes["samples_per_prompt"])
    import torch

    dtype = torch.bfloat16 if bf16(args) else torch.float32  # the precision the runs compute in
    peak, bw = matmul_peak(dtype), read_bandwidth()
    text = (f"measured here: {step_s:.2f} s per RL step (steps 2–3 of 3), {sample_s:.3f} s per evaluated sample "
            f"({len(ev.prompts)} prompts × {sizes['samples_per_prompt']}, one batch); in the same run "
            f"{str(dtype)[6:]} matmul peak {peak / 1e9:.0f} GFLOP/s (2048²), read bandwidth {bw / 1e9:.0f} GB/s; "
            f"{machine()}")
    print(text, file=sys.stderr)
    return step_s, sample_s, text


def plan_lines(plan: Plan, seeds: list[int], sizes: dict,
               rates: tuple[float, float] = (STEP_S, SAMPLE_S)) -> tuple[float, list[str]]:
    """(estimated seconds, lines): the plan's runs, the time they take at ``rates`` (s per RL step, s per sample)
    and the disk they use."""
    step_s, sample_s = rates  # the module's defaults, or what --measure timed here
    steps, shared = sum(run_steps(r) for r in plan.runs.values()), shared_steps(plan)
    specs = {spec for spec, _ in plan.candidates.values()}  # a policy in several parts is evaluated once
    points = len(specs) * (len(sizes["etas"]) - 1)  # per seed; the SFT point once in all (same prompts and seed)
    per_point = sizes["n_prompts"] * sizes["samples_per_prompt"] * sample_s
    total = len(seeds) * ((steps - shared) * step_s + points * per_point) + per_point + GOLD_S
    lines = [f"per seed: {len(plan.runs)} runs, {steps - shared} RL steps ({steps} less {shared} shared; ≈ "
             f"{(steps - shared) * step_s / 60:.0f} min at {step_s:.2f} s/step), {len(specs)} distinct candidates × "
             f"{len(sizes['etas']) - 1} η = {points} evaluations of {sizes['n_prompts']} × "
             f"{sizes['samples_per_prompt']} (≈ {points * per_point / 60:.0f} min at {sample_s:.3f} s/sample); "
             f"{len(seeds)} seed{'s' * (len(seeds) != 1)} + the SFT point + gold RM ≈ {GOLD_S / 60:.0f} min: "
             f"total ≈ {total / 3600:.1f} h"]
    for name, run in plan.runs.items():
        lent = plan.shares.get(name)
        lines.append(f"  run {name}: {run}" + (f" (iteration 1's runs 1–{lent[1]} are {lent[0]}'s)" if lent else ""))
    outputs = len(plan.runs)  # final/: what a seed keeps once evaluated
    merges = sum(":merge:" in s and ":one:" not in s for s in specs)  # written under candidates/
    pending = (outputs + sum(run.get("method") == "warp" for run in plan.runs.values())  # + final_slerp/
               + merges + sum(len(needed_files(plan, n)) for n in plan.runs))  # a seed before its evaluation
    peak = (outputs * (len(seeds) - 1) + pending + 2 + 4 * 3) * 0.54  # + one unpruned run of M = 4 (3 iterations)
    lines.append(f"disk (SmolLM2-135M, 0.54 GB per fp32 weight file): ≈ {outputs * 0.54 * len(seeds):.0f} GB at the "
                 f"end (each run's final/), at most ≈ {peak:.0f} GB on the way (the last seed's unpruned run, and "
                 f"its candidates until they are evaluated)")
    return total, lines


# ------------------------------------------------------------------------------------------------- doing


def train_run(plan: Plan, seed_dir: Path, seed: int, name: str, sizes: dict, args) -> None:
    """Train run ``name`` of one seed unless it is finished (a killed one resumes)."""
    from warprl.commands.align import run_align

    out = seed_dir / name
    if (out / "summary.json").is_file():
        return
    cfg = align_config(sizes, args, seed=seed, out=str(out), **plan.runs[name])
    if name in plan.shares:
        lender, n = plan.shares[name]
        files.borrow_runs(seed_dir / lender, out, cfg, n)
    cfg.resume = (out / "config.yaml").is_file()  # an interrupted benchmark continues where it stopped
    print(f"seed {seed}: training {name}", file=sys.stderr)
    run_align(cfg)


def train_gold(out: Path, sizes: dict, args) -> None:
    """Train the gold RM into out/gold_rm (where :func:`candidate_eval` reads it) unless it is there."""
    from warprl.commands.reward import train
    from warprl.config import RewardTrainConfig

    gold = out / "gold_rm"
    if not (gold / "config.json").is_file():
        print(f"training the gold RM into {gold} (full fine-tune of MiniLM)", file=sys.stderr)
        train(RewardTrainConfig(data=args.data, backbone="minilm-l6", out=str(gold), pooling="mean",
                                init_head="imdb-sentiment", lr=2e-5, max_pairs=sizes["gold_pairs"],
                                max_length=sizes["gold_max_length"], val_pairs=64 if args.smoke else 1000,
                                device="cpu", bf16=bf16(args), overwrite=True, progress=False))


def candidate_eval(out: Path, sizes: dict, args):
    """(EvalConfig, key) of the candidates' evaluation with the folder's gold RM: the key is what an evaluated
    point depends on besides the weights, and a cached sweep is reused only under the same key."""
    from dataclasses import asdict

    ecfg = eval_config(sizes, args, n_prompts=sizes["n_prompts"], batch_size=sizes["eval_batch"],
                       gold=str(out / "gold_rm"))
    settings = asdict(ecfg)
    settings["gold"] = Path(settings["gold"]).name  # the folder's own gold RM, wherever the folder is
    return ecfg, {"policy": POLICY, "eval": settings, "etas": list(sizes["etas"])}


def evaluate_run(plan: Plan, seed_dir: Path, run: str, ev, key: dict, sft_point: dict, etas: list[float],
                 records: dict[str, dict]) -> None:
    """Add spec → {points, angle, seconds} to ``records`` for each candidate read from run ``run``, swept over
    ``etas`` once (a policy named in several parts is evaluated once) and cached in seed_dir/evaluated/, where a
    rerun reads it back."""
    for name, (spec, _) in plan.candidates.items():
        if spec in records or spec.partition(":")[0] != run:
            continue
        path = files.points_path(seed_dir, spec)
        record = files.read_cached(path, key)
        if record is None:
            print(f"{seed_dir.name}: evaluating {spec}", file=sys.stderr)
            t0 = time.perf_counter()
            folder = files.weights_folder(seed_dir, spec)
            points = [{"eta": 0.0, **sft_point}] + ev.sweep(folder, etas, name)
            record = {"points": points, "angle": files.angle_of(folder),
                      "seconds": round(time.perf_counter() - t0, 1)}
            files.write_cached(path, key, record)
        records[spec] = record


def run_seed(plan: Plan, seed_dir: Path, seed: int, sizes: dict, args, ev, key: dict, sft_point: dict) -> dict:
    """Spec → record for one seed: each run is trained and its candidates evaluated before the next run (so the
    first parts' results are on disk first), and then the weights no candidate still reads are pruned."""
    records: dict[str, dict] = {}
    for name in plan.runs:
        train_run(plan, seed_dir, seed, name, sizes, args)
        evaluate_run(plan, seed_dir, name, ev, key, sft_point, [e for e in sizes["etas"] if e > 0], records)
        files.prune(plan, seed_dir, set(records))  # the disk holds one unpruned run at a time
    return records


def cached_sft_point(ev, out: Path, key: dict) -> dict:
    """The SFT policy's own evaluation (η = 0 of every sweep: the same prompts and sampling seed), done once."""
    path = out / "sft_point.json"
    record = files.read_cached(path, key)
    if record is None:
        t0 = time.perf_counter()
        record = {"point": ev.at_eta(out, 0.0, "sft"), "seconds": round(time.perf_counter() - t0, 1)}
        files.write_cached(path, key, record)
    return record


def started() -> dict:
    """Where and when a folder was started (the commit names the code its "code" digest stands for)."""
    import datetime as dt
    import subprocess

    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return {"commit": git.stdout.strip() or None, "date": f"{dt.datetime.now():%Y-%m-%d %H:%M}", "machine": machine()}


def run_ablation(plan: Plan, out: Path, sizes: dict, args) -> str:
    """Train and evaluate every seed (each resumes where it stopped), then the report's text."""
    from warprl.commands import outdir
    from warprl.eval.pareto import Evaluator

    outdir.claim(out)  # one writer per folder: a second benchmark on it is refused while this one runs
    files.check_settings(out, {"policy": POLICY, "data": args.data, "parts": sorted(args.parts), "sizes": sizes,
                               "bf16": bf16(args), "code": files.code_digest(ROOT)}, started=started())
    train_gold(out, sizes, args)
    ecfg, key = candidate_eval(out, sizes, args)
    ev = Evaluator(POLICY, ecfg, "imdb-sentiment", "vader", progress=False)
    sft = cached_sft_point(ev, out, key)
    per_seed = {}
    for seed in args.seeds:  # a seed is trained and evaluated before the next: its results are then on disk
        per_seed[seed] = run_seed(plan, out / f"seed{seed}", seed, sizes, args, ev, key, sft["point"])
    minutes = files.compute_minutes(plan, out, args.seeds, per_seed, sft)
    cmd = "python benchmarks/bench_warp_ablation.py " + " ".join(sys.argv[1:])
    text = ablation_report.report(POLICY, plan, files.report_input(plan, per_seed, len(ev.prompts)), args.seeds,
                                  sizes, out, args, minutes)
    return text + f"\nCommand: `{cmd}`.\n"


def interim_report(plan: Plan, out: Path, sizes: dict, args) -> tuple[str, bool]:
    """The report of the parts that every one of ``args.seeds`` has evaluated so far, read from --out alone, and
    whether that is every part of the default seeds at least: then it is the final report (the code that wrote the
    folder need not be here)."""
    from warprl.commands import outdir
    from warprl.errors import UserError

    _, key = candidate_eval(out, sizes, args)
    sft = files.read_cached(out / "sft_point.json", key)
    per_seed = {s: {} for s in args.seeds}
    for seed, records in per_seed.items():
        for spec, _ in plan.candidates.values():
            record = files.read_cached(files.points_path(out / f"seed{seed}", spec), key)
            if record is not None:
                records[spec] = record
    if sft is None or not any(per_seed.values()):
        raise UserError(f"{out}: nothing is evaluated yet for seeds {args.seeds}")
    done = files.complete_parts(plan, per_seed)
    n_prompts = next(r for records in per_seed.values() for r in records.values())["points"][0]["n_prompts"]
    sub = Plan(runs=plan.runs, candidates={n: c for n, c in plan.candidates.items() if c[1] in done},
               shares=plan.shares)
    folder = out / "so_far"  # its own files: the running benchmark writes the final ones into --out
    outdir.claim(folder)
    folder.mkdir(exist_ok=True)
    complete = {seed: {spec: r[spec] for spec, _ in sub.candidates.values()} for seed, r in per_seed.items()}
    final = done == {part for _, part in plan.candidates.values()} and set(SEEDS) <= set(args.seeds)
    text = ablation_report.report(POLICY, sub, files.report_input(sub, complete, n_prompts), args.seeds, sizes, out,
                                  args, files.compute_minutes(sub, out, args.seeds, per_seed, sft), dest=folder,
                                  interim=not final)
    pending = ablation_report.pending_lines(plan, per_seed, done)
    text += "\n" + "\n".join(pending) + "\n" if pending else ""
    (folder / "results.md").write_text(text)
    return text, final


SEEDS = [0, 1, 2]  # the minimum: a report of fewer seeds is an interim one
INTERIM = "WARP ablation: interim"  # the RESULTS.md section of --so-far, until the final report replaces it


def publish(folder: Path, text: str, final: bool, results: Path = RESULTS,
            docs: Path = ROOT / "docs" / "results", readme: Path | None = None) -> None:
    """Put a report whose plots are in ``folder`` where results live: the final one as RESULTS.md's section
    "WARP ablation" with docs/results/ablation_*.png, an interim one (--so-far) as "WARP ablation: interim" with
    docs/results/ablation_so_far_*.png. The final one replaces the interim section by a line pointing to it, so no
    interim figure outlives the ablation. With ``readme``: its block ``warp_ablation`` (:func:`readme_fragment`)."""
    import os

    prefix = "ablation_" if final else "ablation_so_far_"
    docs.mkdir(parents=True, exist_ok=True)
    for png in sorted(folder.glob("ablation_*.png")):
        shutil.copyfile(png, docs / (prefix + png.name.removeprefix("ablation_")))
    write_section("WARP ablation" if final else INTERIM,
                  text.replace("](ablation_", f"]({os.path.relpath(docs, results.parent)}/{prefix}"), results,
                  keep_previous=final)  # an interim report is superseded by the next, not kept beside it
    if final and INTERIM in section_titles(results):
        write_section(INTERIM, "Superseded by the finished ablation: the section \"WARP ablation\".", results,
                      keep_previous=False)
    if readme is not None:
        from warprl.eval.report import check_readme, splice_block
        from warprl.io import atomic_write_text

        fragment = readme_fragment(text, "WARP ablation" if final else INTERIM)
        fragment = fragment.replace("](ablation_", f"]({os.path.relpath(docs, readme.parent)}/{prefix}")
        atomic_write_text(readme, splice_block(check_readme(readme), "warp_ablation", fragment))


def readme_fragment(text: str, section: str) -> str:
    """The README's share of a report: its opening paragraphs and part (d), the question users ask (does WARP
    beat RLOO and REINFORCE at the same KL and compute?); the other parts are named where they are."""
    head, *parts = text.split("\n### ")
    d = [p for p in parts if p.startswith("(d)")]
    others = [p.split("\n", 1)[0] for p in parts if not p.startswith("(d)") and p.startswith("(")]
    lines = ["Written by `benchmarks/bench_warp_ablation.py`: the report's opening and part (d); the whole report"
             + (f" (with {'; '.join(others)})" if others else "") + f" is in `benchmarks/RESULTS.md`, section "
             f"\"{section}\".", "", head.strip()]
    lines += ["", "### " + d[0].strip()] if d else ["", "Part (d) is not complete yet for every seed shown."]
    return "\n".join(lines) + "\n"


def readme(args) -> Path | None:
    return Path(args.readme).resolve() if args.readme else None


def main() -> int:
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    ap.add_argument("--parts", nargs="+", default=list("abcd"), choices=list("abcd"))
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--data", default=DATA, help="labelled IMDB reviews (prompts, gold RM pairs)")
    ap.add_argument("--steps", type=int, default=0, help="T per WARP run (default: 15; smoke: 2)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline, results mean nothing")
    ap.add_argument("--plan", action="store_true", help="print the runs and a time estimate, run nothing")
    ap.add_argument("--measure", action="store_true", help="time an RL step and an evaluation batch here first and "
                    "estimate from those rates (a few minutes)")
    ap.add_argument("--so-far", action="store_true", help="report the parts every one of --seeds has evaluated so "
                    "far, and the other candidates evaluated, from --out alone (trains and evaluates nothing; "
                    "written to --out/so_far/ and, not with --smoke, to RESULTS.md's section \"WARP ablation: interim\"; "
                    "once every part is complete for seeds 0, 1 and 2, the final section \"WARP ablation\": the way to "
                    "publish a folder computed by other code, e.g. in a git worktree)")
    ap.add_argument("--readme", default="", help="also write the report's opening and part (d) into this README's "
                    "block warp_ablation (not with --smoke)")
    ap.add_argument("--fp32", action="store_true", help="compute in fp32 even where bf16 is native (to go on with "
                    "an --out folder started in fp32)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default; 1 is faster on "
                    "cores shared with other jobs)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sizes = dict(SMOKE if args.smoke else FULL)
    sizes["steps"] = args.steps or sizes["steps"]
    plan = plan_for(args.parts, sizes["steps"])
    measured = measure_rates(sizes, args) if args.measure else None
    total, lines = plan_lines(plan, args.seeds, sizes, measured[:2] if measured else (STEP_S, SAMPLE_S))
    print("\n".join(lines), file=sys.stderr)
    if measured and not args.smoke:  # the estimate from rates measured here: a figure of its own
        import datetime as dt

        cmd = "python benchmarks/bench_warp_ablation.py " + " ".join(sys.argv[1:])
        verdict = "met" if total <= 3 * 3600 else f"**missed** ({total / (3 * 3600):.1f}× the target)"
        write_section("WARP ablation: plan and measured rates",
                      f"{dt.datetime.now():%Y-%m-%d %H:%M} · `{cmd}`\n\n{measured[2][0].upper()}{measured[2][1:]}."
                      f"\n\nTarget (issue 14): the whole ablation ≤ 3 h on 2 cores: {verdict}.\n\n```\n"
                      + "\n".join(lines) + "\n```\n")
    if args.plan:
        return 0
    out = (ROOT / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from warprl.errors import UserError

    try:
        if readme(args) and not args.smoke:  # a wrong README is said now, not after hours of compute
            from warprl.eval.report import check_readme

            check_readme(readme(args))
        if args.so_far:
            text, final = interim_report(plan, out, sizes, args)
            print(text)
            if not args.smoke:  # a smoke run is never written where results live
                cmd = "python benchmarks/bench_warp_ablation.py " + " ".join(sys.argv[1:])
                publish(out / "so_far", text + f"\nCommand: `{cmd}`.\n", final=final, readme=readme(args))
            return 0
        text = run_ablation(plan, out, sizes, args)
    except UserError as e:  # e.g. a folder started with other settings is not continued with these
        print(f"error: {e}", file=sys.stderr)
        return 2
    (out / "results.md").write_text(text)
    print(text)
    if not args.smoke:  # a smoke run is never written where results live
        publish(out, text, final=True, readme=readme(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
