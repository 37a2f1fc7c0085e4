"""Which parts of WARP pay off? Anchor, merging, LITI/iterations and the method itself, over several seeds.

    .venv/bin/python benchmarks/bench_warp_ablation.py [--seeds 0 1 2] [--parts a b c d] [--out runs/ablation]
    .venv/bin/python benchmarks/bench_warp_ablation.py --plan      # the runs and evaluations, with a time estimate
    .venv/bin/python benchmarks/bench_warp_ablation.py --plan --measure   # the estimate from rates measured here
    .venv/bin/python benchmarks/bench_warp_ablation.py --smoke     # tiny sizes: proves the pipeline, not a result

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
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ablation_plan import I1, Plan, lent_files, needed_files, plan_for, run_steps, shared_steps  # noqa: E402
from _results import machine, matmul_peak, read_bandwidth, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = "../shared/data/imdb/train.parquet"
POLICY = "smollm2-imdb"  # the IMDB SFT policy (embedded LoRA on SmolLM2-135M): every run starts from it, KL to it


def bf16() -> bool:
    """The commands' default: bf16 compute copies only where bf16 is native (an emulated one costs ~10× per step)."""
    from warprl.commands.flags import default_bf16

    return default_bf16("cpu")


def align_config(sizes: dict, args, **settings):
    """The ablation's RL settings at ``sizes`` (every run and the rate probe), plus the run's own ``settings``."""
    from warprl.config import AlignConfig

    return AlignConfig(policy=POLICY, reward="imdb-sentiment", prompts=args.data, prompt_tokens="5-10",
                       batch_size=sizes["batch_size"], k=sizes["k"], max_new_tokens=sizes["max_new_tokens"],
                       lr=sizes["lr"], checkpoint_every=0, progress=False, device="cpu", bf16=bf16(), **settings)


def eval_config(sizes: dict, args, **settings):
    """The held-out evaluation at ``sizes`` (the candidates and the rate probe), plus ``settings``."""
    from warprl.config import EvalConfig

    return EvalConfig(prompts=args.data, prompt_tokens="5-10", samples_per_prompt=sizes["samples_per_prompt"],
                      max_new_tokens=sizes["max_new_tokens"], device="cpu", bf16=bf16(), **settings)

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

    dtype = torch.bfloat16 if bf16() else torch.float32  # the precision the runs compute in
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
             f"{len(seeds)} seeds + the SFT point + gold RM ≈ {GOLD_S / 60:.0f} min: total ≈ {total / 3600:.1f} h"]
    for name, run in plan.runs.items():
        lent = plan.shares.get(name)
        lines.append(f"  run {name}: {run}" + (f" (iteration 1's runs 1–{lent[1]} are {lent[0]}'s)" if lent else ""))
    kept = sum(len(needed_files(plan, n)) + 1 + (run.get("method") == "warp") for n, run in plan.runs.items())
    lines.append(f"disk (SmolLM2-135M, 0.54 GB per fp32 weight file): ≈ {kept * 0.54 * len(seeds):.0f} GB kept "
                 f"after pruning, plus one unpruned run at a time (≤ {(2 + 4 * 3) * 0.54:.0f} GB)")
    return total, lines


# ------------------------------------------------------------------------------------------------- doing


def train_runs(plan: Plan, seed_dir: Path, seed: int, sizes: dict, args) -> dict[str, float]:
    from warprl.commands.align import run_align

    seconds, freed = {}, 0.0
    for name, run in plan.runs.items():
        out = seed_dir / name
        if (out / "summary.json").is_file():
            continue
        cfg = align_config(sizes, args, seed=seed, out=str(out), **run)
        if name in plan.shares:
            lender, n = plan.shares[name]
            borrow_runs(seed_dir / lender, out, cfg, n)
        cfg.resume = (out / "config.yaml").is_file()  # an interrupted benchmark continues where it stopped
        t0 = time.perf_counter()
        run_align(cfg)
        seconds[name] = round(time.perf_counter() - t0, 1)
        freed += prune(plan, seed_dir)  # after every run: the disk holds one unpruned run at a time
    freed += prune(plan, seed_dir)
    print(f"seed {seed}: pruned {freed:.1f} GB of weights no candidate reads", file=sys.stderr)
    return seconds


def borrow_runs(lender: Path, out: Path, cfg, n: int) -> None:
    """Start (or complete) the WARP folder ``out`` with hard links to the first ``n`` runs of the lender's iteration
    1 and its θ_sft: the runs ``out`` would train are bit-identical to them (see ``_ablation_plan``). Idempotent: a
    run already finished in ``out`` is kept, a half-linked one (the benchmark was killed) is linked again."""
    from warprl.commands import outdir
    from warprl.io import digest_file
    from warprl.rl.warp import init_path, run_dir, run_finished

    if not (out / outdir.CONFIG_FILE).is_file():
        outdir.prepare(outdir.check(out, outdir.ALIGN, cfg=cfg), cfg)  # the folder and its config.yaml, as align
    sft = init_path(lender, 1)
    for src in (sft, digest_file(sft)):
        if not (out / src.name).exists():
            _link(src, out / src.name)
    for m in range(1, n + 1):
        src, dst = run_dir(lender, 1, m), run_dir(out, 1, m)
        if run_finished(dst):
            continue
        if not run_finished(src):
            raise RuntimeError(f"{src} is not a finished run: train {lender.name} before {out.name}")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, copy_function=lambda a, b: _link(Path(a), Path(b)))


def prune(plan: Plan, seed_dir: Path) -> float:
    """Delete the weight files of finished runs that no candidate reads (each is 0.54 GB for SmolLM2-135M in
    fp32: unpruned, one seed of all four parts holds ≈ 37 GB); final/ and final_slerp/ stay. Returns GB freed."""
    freed = 0
    for name in plan.runs:
        out = seed_dir / name
        if not (out / "summary.json").is_file():
            continue
        keep = needed_files(plan, name)
        borrowers = [b for b, (lender, _) in plan.shares.items() if lender == name]
        if any(not (seed_dir / b / "summary.json").is_file() for b in borrowers):
            keep |= lent_files(plan, name)  # a borrower has yet to link them
        for f in [out / "weights.safetensors", out / "sft.safetensors", *out.glob("iter_*/*.safetensors"),
                  *out.glob("iter_*/run_*/weights.safetensors")]:
            if f.is_file() and f.relative_to(out).as_posix() not in keep:
                st = f.stat()
                freed += st.st_size if st.st_nlink == 1 else 0  # a linked file's space stays in use
                f.unlink()
    return freed / 2**30


def _link(src: Path, dst: Path) -> None:
    """A hard link (no second copy on disk), or a copy across file systems."""
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dst)


def weights_folder(seed_dir: Path, spec: str, work: Path) -> Path:
    """An HF-style folder holding the weights a candidate spec names (merges are written here once)."""
    from warprl import merge
    from warprl.rl.warp import task_vector_stats

    name, _, rest = spec.partition(":")
    run = seed_dir / name
    if not rest:
        return run / "final"
    if rest == "slerp":
        return run / "final_slerp"
    folder = work / spec.replace(":", "_")
    target = folder / "model.safetensors"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        if rest.startswith("iter"):
            _link(run / f"iter_{int(rest[4:])}" / "init.safetensors", target)
        elif rest.startswith("slerp"):
            idir = run / f"iter_{int(rest[5:])}"
            _link(idir / "slerp.safetensors", target)
            row = json.loads((idir / "iteration.json").read_text())  # its runs' angle
            (folder / "angle.json").write_text(json.dumps({k: v for k, v in row.items() if k.startswith("charts/task")}))
        else:  # merge:<op>:<m>
            _, op, m = rest.split(":")
            runs = [run / "iter_1" / f"run_{j}" / "weights.safetensors" for j in range(1, int(m) + 1)]
            if op == "one":
                _link(runs[0], target)
            else:
                merge.merge_files(run / "sft.safetensors", runs, target, op, lam=0.5 if int(m) == 2 else None)
                stats = task_vector_stats(run / "sft.safetensors", runs)
                (folder / "angle.json").write_text(json.dumps(stats))
    return folder


def train_gold(out: Path, sizes: dict, args) -> Path:
    from warprl.commands.reward import train
    from warprl.config import RewardTrainConfig

    gold = out / "gold_rm"
    if not (gold / "config.json").is_file():
        print(f"training the gold RM into {gold} (full fine-tune of MiniLM)", file=sys.stderr)
        train(RewardTrainConfig(data=args.data, backbone="minilm-l6", out=str(gold), pooling="mean",
                                init_head="imdb-sentiment", lr=2e-5, max_pairs=sizes["gold_pairs"],
                                max_length=sizes["gold_max_length"], val_pairs=64 if args.smoke else 1000,
                                device="cpu", bf16=bf16(), overwrite=True, progress=False))
    return gold


def evaluate_all(plan: Plan, seeds: list[int], out: Path, sizes: dict, gold: Path, args) -> dict:
    from warprl.eval.pareto import Evaluator

    ecfg = eval_config(sizes, args, n_prompts=sizes["n_prompts"], batch_size=sizes["eval_batch"], gold=str(gold))
    ev = Evaluator(POLICY, ecfg, "imdb-sentiment", "vader", progress=False)
    etas = [e for e in sizes["etas"] if e > 0]
    results: dict[str, list[list[dict]]] = {}  # candidate → per seed → points
    angles: dict[str, list[float]] = {}
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        done: dict[str, list[dict]] = {}  # spec → points: a policy named in several parts is evaluated once
        for name, (spec, _) in plan.candidates.items():
            folder = weights_folder(seed_dir, spec, seed_dir / "candidates")
            if spec not in done:
                done[spec] = [{"eta": 0.0, **ev.at_eta(folder, 0.0, "sft")}] + ev.sweep(folder, etas, name)
            results.setdefault(name, []).append(done[spec])
            if (folder / "angle.json").is_file():
                a = json.loads((folder / "angle.json").read_text())["charts/task_vector_angle_deg"]
                if a is not None:
                    angles.setdefault(name, []).append(a)
    return {"results": results, "angles": angles, "n_prompts": len(ev.prompts)}


# ------------------------------------------------------------------------------------------------ report


def report(plan: Plan, ev: dict, seeds: list[int], sizes: dict, out: Path, smoke: bool, seconds: float) -> str:
    from warprl.eval import stats
    from warprl.eval.pareto import compare_fronts, seeded_series
    from warprl.eval.report import _ci, plot_front

    series = {n: seeded_series(n, "sweep", "", pts) for n, pts in ev["results"].items()}
    lines = [("**SMOKE RUN — tiny sizes, proves the pipeline runs end to end; not evidence.** " if smoke else "")
             + f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); policy `{POLICY}`, reward `imdb-sentiment`, "
             f"judge `vader`, gold = MiniLM fully fine-tuned (`{out.name}/gold_rm`); T = {sizes['steps']}, "
             f"{sizes['batch_size']} prompts × {sizes['k']} samples per step, ≤ {sizes['max_new_tokens']} tokens; "
             f"{ev['n_prompts']} held-out IMDB prompts × {sizes['samples_per_prompt']} samples per point, η ∈ "
             f"{{{', '.join(f'{e:g}' for e in sizes['etas'])}}}; {'bf16' if bf16() else 'fp32'}; {machine()}; "
             f"{seconds / 60:.1f} min.", "",
             ("Each candidate: η = 1 reward / gold / KL (mean over seeds, 95 % interval across seeds). Comparisons: "
              "mean Δreward at matched KL (the first's front at the second's KLs), mean over seeds of each seed's mean "
              "Δ, 95 % interval across seeds. " if len(seeds) > 1 else
              "Each candidate: η = 1 reward / gold / KL with 95 % bootstrap intervals over prompts. Comparisons: "
              "mean Δreward at matched KL (the first's front at the second's KLs), paired bootstrap over prompts. ")
             + "Each pair is compared both ways; KL values beyond the first front's range are left out. "
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
        lines += [f"### {titles[part]}", "", "| candidate | reward η=1 | gold η=1 | KL η=1 | seeds |", "|---|---:|---:|---:|---:|"]
        for n in names[part]:
            p = series[n].points[-1]
            ang = ev["angles"].get(n)
            lines.append(f"| {n}" + (f" (task vectors {sum(ang) / len(ang):.0f}°)" if ang else "")
                         + f" | {p['reward_mean']:.2f} {_ci(p.get('reward_ci'), '{:.2f}')} | "
                         f"{p.get('gold_mean', float('nan')):.2f} {_ci(p.get('gold_ci'), '{:.2f}')} | "
                         f"{p['kl_mean']:.1f} {_ci(p.get('kl_ci'), '{:.1f}')} | {p.get('n_seeds', 1)} |")
        lines += ["", "| comparison | matched KL | mean Δreward | 95 % interval | verdict |", "|---|---:|---:|---:|---|"]
        for a, b in pairs[part] + [(b, a) for a, b in pairs[part]]:
            if a not in series or b not in series:
                continue
            c = compare_fronts(series[a], series[b])
            summary["comparisons"].append({"part": part, **{k: v for k, v in c.items() if k != "rows"}})
            center = c.get("seed_mean_delta", c["mean_delta"])  # the centre of the across-seed interval
            md = "–" if center is None else f"{center:+.3f}"
            lines.append(f"| {a} − {b} | {c['matched']} | {md} | {_ci(c.get('mean_delta_ci'))} | {c['verdict']} |")
        png = out / f"ablation_{part}.png"
        plot_front([series[n] for n in names[part]], png, title=titles[part])
        lines += ["", f"![{titles[part]}]({png.name})"]
        if part == "d":
            gpng = out / "ablation_d_gold.png"
            plot_front([series[n] for n in names[part]], gpng, title="gold reward vs KL (never optimised)",
                       metric="gold_mean", ylabel="mean gold reward")
            lines += ["", f"![gold vs KL]({gpng.name})"]
        lines.append("")
    summary["series"] = {n: s.points for n, s in series.items()}
    for s in summary["series"].values():
        for p in s:
            p.pop("samples", None)
    (out / "ablation.json").write_text(json.dumps(summary, indent=1, default=str))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--parts", nargs="+", default=list("abcd"), choices=list("abcd"))
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--data", default=DATA, help="labelled IMDB reviews (prompts, gold RM pairs)")
    ap.add_argument("--steps", type=int, default=0, help="T per WARP run (default: 15; smoke: 2)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline, results mean nothing")
    ap.add_argument("--plan", action="store_true", help="print the runs and a time estimate, run nothing")
    ap.add_argument("--measure", action="store_true", help="time an RL step and an evaluation batch here first and "
                    "estimate from those rates (a few minutes)")
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
    t0 = time.perf_counter()
    gold = train_gold(out, sizes, args)
    train_s = {}
    for seed in args.seeds:
        print(f"seed {seed}: training {len(plan.runs)} runs", file=sys.stderr)
        train_s[seed] = train_runs(plan, out / f"seed{seed}", seed, sizes, args)
    print("evaluating every candidate", file=sys.stderr)
    ev = evaluate_all(plan, args.seeds, out, sizes, gold, args)
    seconds = time.perf_counter() - t0
    cmd = "python benchmarks/bench_warp_ablation.py " + " ".join(sys.argv[1:])
    text = report(plan, ev, args.seeds, sizes, out, args.smoke, seconds) + f"\nCommand: `{cmd}`; training seconds per run: {json.dumps(train_s)}.\n"
    (out / "results.md").write_text(text)
    print(text)
    if not args.smoke:  # a smoke run is never written where results live
        docs = ROOT / "docs" / "results"
        for png in out.glob("ablation_*.png"):
            shutil.copyfile(png, docs / png.name)
        write_section("WARP ablation", text.replace("](ablation_", "](../docs/results/ablation_"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
