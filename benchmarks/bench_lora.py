"""LoRA WARP against full fine-tuning WARP: peak memory, run-folder size, step time, and (--quality) the fronts.

    .venv/bin/python benchmarks/bench_lora.py [--policy ALIAS] [--iterations 2] [--runs 4] [--steps 10]
        [--lora-r 16] [--lora-alpha 32] [--lr 5e-5] [--lora-lr 5e-4] [--repeats 1] [--quality] [--seeds 1]
        [--ema-gap] [--precision auto|bf16|fp32] [--json]
    .venv/bin/python benchmarks/bench_lora.py --smoke --json     # every part on a tiny random model, in seconds

Resources: each WARP run (I × M runs, `--lora-r R` or full fine-tuning, the same settings otherwise) is a fresh
child process that runs `warprl align` in-process and reports its own peak RSS (`ru_maxrss`: a lifetime peak,
so one run per process) and its sampled peak anonymous RSS; the two kinds alternate (full, LoRA, full, …
with --repeats). Measured from the folders: the size of each run folder (`iter_<i>/run_<m>/`: a full run's
`weights.safetensors`, a LoRA run's `adapter/`), the median step time (`charts/step_time_s` of every step of
every run) and the merge time. Targets: peak RSS with LoRA ≤ 0.6× full fine-tuning, a LoRA run folder ≤ 5 %
of a full one, step time no slower.

--quality: the quickstart's WARP settings (I, M, T, batch, k, β, μ, λ, η of `warprl quickstart`), full
fine-tuning at --lr and LoRA at --lora-lr (LoRA usually wants ~10× the learning rate), --seeds seeds each;
then `warprl pareto` with both as swept series: each front's points with their 95 % intervals and the
comparison of the fronts at matched KL (mean Δ reward, its interval, the verdict).

--ema-gap: the EMA anchor of a LoRA run is an EMA of the factors A and B, and EMA(B)·EMA(A) is not EMA(B·A). A
short LoRA RLOO run with an EMA anchor keeps the EMA of ΔW = s·B·A beside it and, at the end, scores the
policy's samples under both anchors: mean |Δ log p| per token, and KL(π ‖ anchor) under each.

Writes the sections "LoRA WARP: resources", "LoRA WARP: quality" and "LoRA WARP: EMA anchor of the factors" of
benchmarks/RESULTS.md, one per part that ran (not with --smoke); --json prints one JSON object as the last line
of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section  # noqa: E402

from warprl.heap import keep_freed_memory  # noqa: E402

GiB = 1024**3
SMOKE_WORDS = ("good great bad awful movie film plot actor story the a and was is it this I love hate boring fun "
               "wonderful terrible scene end music cast").split()


# ------------------------------------------------------------------------------------------- the child


def anon_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def child(config: str) -> None:
    """One `warprl align` run in this process; prints its peak memory and wall time as a JSON line."""
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    from warprl.commands.align import run_align
    from warprl.config import AlignConfig

    cfg = AlignConfig(**json.loads(config))
    cfg.validate()
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], anon_rss())
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    run_align(cfg)
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    print(json.dumps({"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "peak_anon_rss": peak[0]}))


def run_child(settings: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(settings)], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        sys.exit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- measures


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(out: Path, iterations: int, runs: int) -> dict:
    runs_dirs = [out / f"iter_{i}" / f"run_{m}" for i in range(1, iterations + 1) for m in range(1, runs + 1)]
    steps = [json.loads(line) for r in runs_dirs for line in (r / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"run_folder_bytes": statistics.mean(folder_bytes(r) for r in runs_dirs),
            "step_time_s": statistics.median(s["charts/step_time_s"] for s in steps),
            "update_s": statistics.median(s["time/update_s"] for s in steps),
            "merge_s": statistics.mean(r["time/merge_s"] for r in rows),
            "angle_deg": [r["charts/task_vector_angle_deg"] for r in rows],
            "reward_last": rows[-1]["charts/reward_mean"]}


def resources(args, base: dict, tmp: Path) -> dict:
    kinds = {"full": {"lr": args.lr}, "lora": {"lr": args.lora_lr, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha}}
    found: dict[str, list[dict]] = {"full": [], "lora": []}
    for rep in range(args.repeats):
        for kind in (["full", "lora"] if rep % 2 == 0 else ["lora", "full"]):
            out = tmp / f"res_{kind}_{rep}"
            print(f"resources: {kind} WARP I={args.iterations} M={args.runs} T={args.steps} (repeat {rep + 1}) …",
                  file=sys.stderr, flush=True)
            got = run_child({**base, **kinds[kind], "iterations": args.iterations, "runs": args.runs,
                             "steps": args.steps, "out": str(out)})
            found[kind].append({**got, **measure(out, args.iterations, args.runs)})
            shutil.rmtree(out, ignore_errors=True)
    res = {k: {key: statistics.median(r[key] for r in v) if isinstance(v[0][key], int | float) else v[0][key]
               for key in v[0]} for k, v in found.items()}
    full, lo = res["full"], res["lora"]
    res["ratios"] = {"peak_rss": lo["peak_rss"] / full["peak_rss"],
                     "peak_anon_rss": lo["peak_anon_rss"] / full["peak_anon_rss"],
                     "run_folder": lo["run_folder_bytes"] / full["run_folder_bytes"],
                     "step_time": lo["step_time_s"] / full["step_time_s"]}
    r = res["ratios"]
    res["targets"] = {"peak_rss <= 0.6": r["peak_rss"] <= 0.6, "run_folder <= 0.05": r["run_folder"] <= 0.05,
                      "step_time <= 1": r["step_time"] <= 1.0}
    return res


def quality(args, base: dict, tmp: Path) -> dict:
    from warprl.commands.evaluate import pareto
    from warprl.config import ParetoConfig, QuickstartConfig

    q = QuickstartConfig()
    qs = {k: getattr(q, k) for k in ("iterations", "runs", "steps", "batch_size", "k", "beta", "mu", "lam", "eta",
                                     "max_new_tokens")}
    if args.smoke:
        qs.update(iterations=1, runs=2, steps=2, batch_size=2, max_new_tokens=4)
    folders: dict[str, list[str]] = {"full": [], "lora": []}
    for seed in range(args.seeds):
        for kind, extra in (("full", {"lr": args.lr}),
                            ("lora", {"lr": args.lora_lr, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha})):
            out = tmp / f"q_{kind}_{seed}"
            print(f"quality: {kind} WARP, quickstart settings, seed {seed} …", file=sys.stderr, flush=True)
            run_child({**base, **qs, **extra, "seed": seed, "out": str(out)})
            folders[kind].append(str(out))
    n_prompts, spp, eta_steps = (4, 1, 2) if args.smoke else (q.n_prompts, q.samples_per_prompt, q.eta_steps)
    cfg = ParetoConfig(sft=args.policy, final=",".join(folders["lora"]), baseline=[",".join(folders["full"])],
                       sweep_baselines=True, include_slerp=False, reward=base["reward"], judge="vader",
                       prompts=base["prompts"], n_prompts=n_prompts, samples_per_prompt=spp, eta_steps=eta_steps,
                       max_new_tokens=qs["max_new_tokens"], out=str(tmp / "pareto"), progress=not args.smoke,
                       device=base["device"], bf16=base["bf16"])
    summary = pareto(cfg)
    fronts = {}
    for s in summary["series"]:
        fronts[s["name"]] = [{k: p.get(k) for k in ("eta", "reward_mean", "reward_ci", "kl_mean", "kl_ci")}
                             for p in s["points"]]
    keys = ("a", "b", "matched", "mean_delta", "seed_mean_delta", "seed_deltas", "mean_delta_ci", "ci_over", "verdict")
    comparisons = [{k: c.get(k) for k in keys}
                   for c in summary["comparisons"]]
    return {"settings": {**qs, "lr_full": args.lr, "lr_lora": args.lora_lr, "seeds": args.seeds},
            "fronts": fronts, "comparisons": comparisons,
            "results_md": "".join(line for line in (tmp / "pareto" / "results.md").read_text().splitlines(True)
                                  if not line.startswith("!["))}  # the plot stays in the temporary folder


def ema_gap(args, base: dict, tmp: Path) -> dict:
    """A LoRA RLOO run with an EMA anchor (of the factors) that keeps the EMA of ΔW beside it; then the policy's
    samples scored under both anchors."""
    import torch

    import warprl.rl.loop as T
    from warprl.config import AlignConfig
    from warprl.data import load_prompts
    from warprl.models import load_policy, pick_device
    from warprl.reward import load_reward
    from warprl.rl import algorithms as A
    from warprl.rl.adapters import plain_copy
    from warprl.rl.rollout import SamplingConfig, anchor_logprobs, sample

    steps = args.gap_steps
    cfg = AlignConfig(**{**base, "lr": args.lora_lr, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha,
                         "anchor": "ema", "mu": args.gap_mu, "steps": steps, "kl_sft_every": 0, "checkpoint_every": 0})
    device = pick_device(cfg.device)
    policy, tok = load_policy(cfg.policy, device=device)
    prompts = load_prompts(cfg.prompts, tok, split="train", n_tokens=cfg.prompt_tokens, seed=cfg.seed)
    reward_fn = load_reward(cfg.reward, device=device, bf16=cfg.bf16)
    w0 = {n: m.weight.detach().clone() for n, m in policy.named_modules() if isinstance(m, torch.nn.Linear)}
    found: dict = {}
    real_step = T.rl_step

    def step(c, pol, anchor, tok_, rfn, batch, state, opt, method, seed, sft=None):
        metrics = real_step(c, pol, anchor, tok_, rfn, batch, state, opt, method, seed, sft=sft)
        ema_dw = found.setdefault("ema_dw", {t.name: torch.zeros_like(d) for t, d in pol.master.deltas()})
        for t, d in pol.master.deltas():
            ema_dw[t.name].lerp_(d, c.mu)
        if state.step == c.steps:  # the last step: both anchors on the policy's samples
            dw_anchor = plain_copy(pol.compute, None, set())  # the anchor itself is a side path on pol.compute
            mods = dict(dw_anchor.named_modules())
            with torch.no_grad():
                for t in anchor.targets:
                    mods[t.name].weight.copy_(w0[t.name] + ema_dw[t.name])
            gen_seed = 1234
            roll = sample(pol.compute, tok_, prompts[:64],
                          SamplingConfig(c.max_new_tokens, 0, c.temperature, c.top_p, c.top_k), k=1,
                          generator_seed=gen_seed)
            logp = anchor_logprobs(pol.compute, roll, c.temperature)
            lp_f = anchor_logprobs(anchor.compute, roll, c.temperature)
            lp_d = anchor_logprobs(dw_anchor, roll, c.temperature)
            n_tok = float(roll.mask.sum())
            rel = [float(torch.linalg.vector_norm(d - ema_dw[t.name]) / torch.linalg.vector_norm(ema_dw[t.name]))
                   for t, d in anchor.master.deltas()]
            found.update(mean_abs_dlogp=float(((lp_f - lp_d).abs() * roll.mask).sum()) / n_tok,
                         max_abs_dlogp=float(((lp_f - lp_d).abs() * roll.mask).max()),
                         kl_to_factor_ema=float(A.sequence_kl(logp, lp_f, roll.mask, "k1").mean()),
                         kl_to_dw_ema=float(A.sequence_kl(logp, lp_d, roll.mask, "k1").mean()),
                         rel_dw_difference=statistics.mean(rel), tokens=int(n_tok))
        return metrics

    T.rl_step = step
    try:
        T.run_rl(cfg, tmp / "gap", policy, tok, reward_fn, prompts, method="rloo", anchor_kind="ema", seed=0,
                 resume=False)
    finally:
        T.rl_step = real_step
    found.pop("ema_dw")
    return {"settings": {"policy": "tiny random Llama" if args.smoke else cfg.policy, "steps": steps, "lr": cfg.lr,
                         "mu": cfg.mu, "beta": cfg.beta, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
                         "bf16": cfg.bf16}, **found}


# ------------------------------------------------------------------------------------------- smoke model


def tiny_policy(folder: Path) -> Path:
    """A 2-layer random Llama with a word tokenizer (the test suite's kind), larger embeddings so that LoRA on
    its inner layers can move its outputs; and a .txt of prompts in its words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in SMOKE_WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1,
                      eos_token_id=1, pad_token_id=1, bos_token_id=None, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    lines = [f"{a} {b} {c}" for c in ("was", "is", "and", "the") for a in ("the", "a", "this", "I")
             for b in ("movie", "film", "plot", "story")]
    (folder / "prompts.txt").write_text("\n".join(lines) + "\n")
    return folder


# ------------------------------------------------------------------------------------------- report


def gb(x: float) -> str:
    return f"{x / GiB:.2f} GiB"


def render(args, result: dict, command: str) -> dict[str, str]:
    """One RESULTS.md section per part that ran, so that the parts can be run (and rerun) separately."""
    head = [f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine()}.", "", f"Command: `{command}`", ""]
    sections = {}
    if "resources" in result:
        lines = list(head)
        res = result["resources"]
        fp32_why = "fp32, as `--precision fp32` asks" if args.precision == "fp32" else "fp32 (this CPU has no native bf16)"
        f, lo, r = res["full"], res["lora"], res["ratios"]
        lines += [
            f"WARP I={args.iterations} × M={args.runs} × T={args.steps} on `{args.policy}` (reward "
            f"`{args.reward}`, batch {args.batch_size} × k {args.k}, ≤ {args.max_new_tokens} tokens, "
            f"{'bf16 compute copy' if result['bf16'] else fp32_why}), full fine-tuning "
            f"(lr {args.lr}) against `--lora-r {args.lora_r} --lora-alpha {args.lora_alpha}` "
            f"(lr {args.lora_lr}); each a fresh process, {args.repeats} repeat(s), medians.", "",
            "| | full fine-tuning | LoRA | LoRA / full | target |", "|---|---:|---:|---:|---|",
            f"| peak RSS (`ru_maxrss`) | {gb(f['peak_rss'])} | {gb(lo['peak_rss'])} | {r['peak_rss']:.2f} | ≤ 0.6 |",
            f"| peak anonymous RSS (sampled) | {gb(f['peak_anon_rss'])} | {gb(lo['peak_anon_rss'])} | "
            f"{r['peak_anon_rss']:.2f} | |",
            f"| run folder (`iter_<i>/run_<m>/`) | {f['run_folder_bytes'] / 2**20:.1f} MiB | "
            f"{lo['run_folder_bytes'] / 2**20:.2f} MiB | {r['run_folder']:.3f} | ≤ 0.05 |",
            f"| step time (median) | {f['step_time_s']:.2f} s | {lo['step_time_s']:.2f} s | {r['step_time']:.2f} | ≤ 1 |",
            f"| update time (median) | {f['update_s']:.2f} s | {lo['update_s']:.2f} s | "
            f"{lo['update_s'] / f['update_s']:.2f} | |",
            f"| merge per iteration | {f['merge_s']:.1f} s | {lo['merge_s']:.1f} s | | |",
            f"| task-vector angle per iteration | {', '.join(f'{a:.1f}°' for a in f['angle_deg'])} | "
            f"{', '.join(f'{a:.1f}°' for a in lo['angle_deg'])} | | |", "",
            "Targets met: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in res["targets"].items()) + ".", ""]
        # One section per precision: the fp32 and bf16 figures differ (the compute copy is half the memory in bf16).
        sections["LoRA WARP: resources" + ("" if result["bf16"] else ", fp32")] = "\n".join(lines)
    if "quality" in result:
        q = result["quality"]
        st = q["settings"]
        lines = head + [f"Quality at equal steps: the quickstart's WARP settings (I={st['iterations']} × M={st['runs']} × "
                  f"T={st['steps']}, batch {st['batch_size']} × k {st['k']}, β {st['beta']}, μ {st['mu']}, "
                  f"λ {st['lam']}, η {st['eta']}), full fine-tuning at lr {st['lr_full']}, LoRA at lr "
                  f"{st['lr_lora']}, {st['seeds']} seed(s) each; `warprl pareto` with both fronts swept:", "",
                  q["results_md"].strip(), ""]  # its verdict lines state each Δ with the centre of its interval
        sections["LoRA WARP: quality"] = "\n".join(lines)
    if "ema_gap" in result:
        g = result["ema_gap"]
        gs = ", ".join(f"{k} {v}" for k, v in g["settings"].items())
        lines = head + [f"EMA of the factors vs EMA of ΔW (LoRA RLOO, EMA anchor; {gs}): on {g['tokens']} sampled tokens the two "
                  f"anchors' log-probs differ by {g['mean_abs_dlogp']:.2e} per token on average (max "
                  f"{g['max_abs_dlogp']:.2e}); KL(π ‖ anchor) {g['kl_to_factor_ema']:.4f} with the EMA of the factors, "
                  f"{g['kl_to_dw_ema']:.4f} with the EMA of ΔW; the two anchors' ΔW differ by "
                  f"{g['rel_dw_difference']:.1%} (relative Frobenius norm, mean over layers).", ""]
        sections["LoRA WARP: EMA anchor of the factors"] = "\n".join(lines)
    return sections


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="", help="the SFT policy (default: the quickstart's, an embedded one)")
    ap.add_argument("--reward", default="imdb-sentiment")
    ap.add_argument("--prompts", default="builtin")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="RL steps per run in the resource measurement")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32.0)
    ap.add_argument("--lr", type=float, default=5e-5, help="full fine-tuning (the quickstart's lr until 2026-12-06, when it became 1e-4 at T=10)")
    ap.add_argument("--lora-lr", type=float, default=5e-4, help="LoRA (usually ~10x the full fine-tuning lr)")
    ap.add_argument("--repeats", type=int, default=1, help="resource runs per kind, alternating full and LoRA")
    ap.add_argument("--no-resources", action="store_true", help="skip the resource measurement")
    ap.add_argument("--quality", action="store_true", help="also compare the fronts at the quickstart's settings")
    ap.add_argument("--seeds", type=int, default=1, help="--quality: seeds per kind (intervals across seeds from 2)")
    ap.add_argument("--ema-gap", action="store_true", help="also measure EMA-of-factors vs EMA-of-ΔW anchors")
    ap.add_argument("--gap-steps", type=int, default=25, help="--ema-gap: RL steps (the quickstart's T until 2026-12-06)")
    ap.add_argument("--gap-mu", type=float, default=0.01, help="--ema-gap: EMA rate (the quickstart's μ)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="compute copy: auto = the commands' default (bf16 where the CPU has it natively); memory "
                         "ratios in fp32 can be measured on any machine")
    ap.add_argument("--smoke", action="store_true", help="every part on a tiny random model; writes no RESULTS.md")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    if not args.policy:
        from warprl.config import QuickstartConfig

        args.policy = QuickstartConfig().policy
    from warprl.commands.flags import default_bf16

    command = "python benchmarks/bench_lora.py " + " ".join(sys.argv[1:])
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as tmp_name:
        tmp = Path(tmp_name)
        if args.smoke:
            policy = tiny_policy(tmp / "tiny")
            args.policy, args.reward, args.prompts = str(policy), "vader", str(policy / "prompts.txt")
            args.iterations, args.runs, args.steps, args.batch_size, args.max_new_tokens = 2, 2, 2, 2, 4
            args.lora_r, args.lora_alpha, args.quality, args.ema_gap, args.device = 4, 8.0, True, True, "cpu"
            args.lora_lr = 1e-2  # the tiny model's outputs move at this lr within a few steps
        base = {"method": "warp", "policy": args.policy, "reward": args.reward, "prompts": args.prompts,
                "batch_size": args.batch_size, "k": args.k, "max_new_tokens": args.max_new_tokens,
                "device": args.device, "progress": False,
                "bf16": not args.smoke and (default_bf16(args.device) if args.precision == "auto"
                                            else args.precision == "bf16")}  # auto: the commands' default
        result["bf16"] = base["bf16"]
        if not args.no_resources:
            result["resources"] = resources(args, base, tmp)
        if args.quality:
            result["quality"] = quality(args, base, tmp)
        if args.ema_gap:
            result["ema_gap"] = ema_gap(args, {**base, "method": "rloo"}, tmp)
    for title, text in render(args, result, command.strip()).items():
        print(f"## {title}\n\n{text}")
        if not args.smoke:
            print(f"written to {write_section(title, text)}", file=sys.stderr)
    if args.json:
        result.get("quality", {}).pop("results_md", None)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
