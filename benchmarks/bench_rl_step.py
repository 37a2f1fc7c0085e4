"""One full RLOO step (generate + reward + anchor log-probs + update): warprl against TRL's RLOOTrainer.

Identical work on both sides: the bundled SmolLM2-135M (fp32 master weights, bf16 compute; ``--precision fp32``
for CPUs without native bf16, where bf16 is emulated several times slower than fp32), the
imdb-sentiment reward, prompts drawn from the same builtin list, k, completion length (≤ tokens, EOS stops),
temperature 1, no top-k/top-p, β = 0.05 KL to a frozen reference, lr 1e-5 AdamW, one optimiser step per
batch, TRL with ``gradient_checkpointing=False``. The two sides alternate in one process: a TRL callback
runs one warprl step after each TRL step, so both see the same machine load. Median of the steps after
the warm-up step. Remaining differences are printed beside the figures.

Also measured in the same run: memory read bandwidth (→ decode bound = bf16 weight bytes / bandwidth),
the bf16 matmul peak (→ update FLOP/s as a share of it), and a breakdown of one warprl update.

    python3 -m venv ../venv-trl && ... && pip install trl==1.16.0   # the bench needs TRL, warprl does not
    PYTHONPATH=src python benchmarks/bench_rl_step.py [--shapes 8x2x24 16x4x64] [--steps 7] [--json]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import statistics
import tempfile
import time

import torch
from _results import machine, matmul_peak, read_bandwidth, write_section

from warprl import optim
from warprl.config import AlignConfig
from warprl.data import builtin_prompts
from warprl.models import convert_gguf, load_policy, resolve
from warprl.precision import MixedPrecision, bf16_is_native
from warprl.reward import load_reward
from warprl.rl import loop as L
from warprl.rl.checkpoint import LoopState
from warprl.rl.engine import share_fused_storage
from warprl.rl.rollout import SamplingConfig, sample, sequence_logprobs
from warprl.seeding import prompt_batch

DIFFERENCES_BF16 = [
    "TRL samples and trains under bf16 autocast of fp32 weights (HF Trainer's bf16); warprl samples, scores and "
    "back-propagates a bf16 copy whose gradients go to fp32 masters (same fp32 master weights and AdamW)",
    "prompt order: each side shuffles the same builtin list with its own seed (prompt lengths are alike, 7–12 tokens)",
    "completions end at EOS on both sides, so the decoded lengths differ from step to step (both ≤ the cap)",
    "TRL's step also computes its logging metrics (entropy, clip ratios); warprl's logs its own metrics",
    "TRL's learning rate decays linearly (HF Trainer's default schedule), warprl's is constant: the same work per "
    "step",
    "warprl draws each token from one uniform per row against the CDF, TRL (HF generate) by torch.multinomial: "
    "the same distribution, other tokens under the same seed",
    "warprl's anchor is a bf16 copy; TRL's reference model is an fp32 copy run under autocast",
]
# In fp32 both sides sample, score and train the fp32 weights themselves: the precision differences go.
DIFFERENCES_FP32 = DIFFERENCES_BF16[1:6]


def loadavg() -> float:
    return float(open("/proc/loadavg").read().split()[0])


class Warprl:
    """warprl's RL step driven one step at a time (what ``run_rl`` does, minus files and checkpoints)."""

    def __init__(self, shape, reward, prompts, engine: str, attn: str, bf16: bool):
        self.n_prompts, self.k, self.tokens = shape
        self.cfg = AlignConfig(method="rloo", steps=10**6, batch_size=self.n_prompts, k=self.k, beta=0.05, lr=1e-5,
                               max_new_tokens=self.tokens, bf16=bf16, progress=False, checkpoint_every=0,
                               engine=engine, attn_implementation=attn)
        policy, self.tok = load_policy("smollm2-135m")
        policy.set_attn_implementation(attn)  # as run_rl does, before the anchor and the bf16 copies are made
        anchor = copy.deepcopy(policy).eval()
        for p in anchor.parameters():
            p.requires_grad_(False)
        self.opt = optim.make_optimizer([p for p in policy.parameters() if p.requires_grad], self.cfg.lr,
                                        kind=self.cfg.optimizer, weight_decay=self.cfg.weight_decay)
        self.policy = MixedPrecision(policy, bf16, prepare_copy=share_fused_storage)
        self.anchor = MixedPrecision(anchor, bf16, trainable=False, prepare_copy=share_fused_storage)
        if bf16:
            self.anchor.master = None  # as run_rl does: a frozen anchor needs only its bf16 copy
        self.state = LoopState()
        self.reward, self.prompts = reward, prompts
        self.rows: list[dict] = []
        self.loads: list[float] = []

    def step(self) -> dict:
        batch = prompt_batch(self.prompts, self.n_prompts, 0, self.state.step * self.n_prompts)
        self.loads.append(loadavg())
        m = L.rl_step(self.cfg, self.policy, self.anchor, self.tok, self.reward, batch, self.state, self.opt, "rloo", 0)
        self.rows.append(m)
        return m


def update_breakdown(w: Warprl) -> dict:
    """Time the parts of one update on a fresh rollout: forward, backward, grads→fp32, clip + AdamW, bf16 sync."""
    model = w.policy.compute
    batch = prompt_batch(w.prompts, w.n_prompts, 1, 0)
    roll = sample(model, w.tok, batch, SamplingConfig(max_new_tokens=w.tokens, engine=w.cfg.engine), k=w.k,
                  generator_seed=0)
    n = roll.completion_ids.shape[1]
    out = {}
    model.train()
    t = time.perf_counter()
    logp, _ = sequence_logprobs(model, roll.input_ids, roll.attention_mask, n, 1.0, return_entropy=True)
    loss = -(logp * roll.mask).sum() / roll.mask.shape[0]
    out["forward_s"] = time.perf_counter() - t
    t = time.perf_counter()
    loss.backward()
    out["backward_s"] = time.perf_counter() - t
    model.eval()
    t = time.perf_counter()
    w.policy.grads_to_master()
    out["grads_to_fp32_s"] = time.perf_counter() - t
    t = time.perf_counter()
    torch.nn.utils.clip_grad_norm_([p for p in w.policy.master.parameters() if p.grad is not None], 1.0)
    w.opt.step()
    w.opt.zero_grad(set_to_none=True)
    out["clip_adamw_s"] = time.perf_counter() - t
    t = time.perf_counter()
    w.policy.sync()
    out["sync_bf16_s"] = time.perf_counter() - t
    # Where the forward + backward time goes, by operator.
    model.train()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        logp = sequence_logprobs(model, roll.input_ids, roll.attention_mask, n, 1.0)
        (-(logp * roll.mask).sum()).backward()
    model.eval()
    model.zero_grad(set_to_none=True)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    out["top_ops"] = [(e.key, e.count, e.self_cpu_time_total / 1e6, e.self_cpu_time_total / total) for e in events[:8]]
    out["seq_len"] = roll.input_ids.shape[1]
    out["completion_len"] = n
    return out


def update_flops(model, rows: int, seq_len: int, n_completion: int) -> float:
    """Matmul FLOPs of one update: 6·N_body per token of the sequence + 6·N_head per completion token."""
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - head  # tied embedding counted once, as the head
    return 6 * body * rows * seq_len + 6 * head * rows * n_completion


def bench_shape(shape, args, reward, prompts) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    n_prompts, k, tokens = shape
    main_attn, *other_attn = args.attn
    bf16 = args.precision == "bf16"
    sides = {"warprl": Warprl(shape, reward, prompts, "auto", main_attn, bf16)}
    for attn in other_attn:
        sides[f"warprl (attention {attn})"] = Warprl(shape, reward, prompts, "auto", attn, bf16)
    if args.with_hf_engine:
        sides["warprl (engine hf)"] = Warprl(shape, reward, prompts, "hf", main_attn, bf16)
    folder = convert_gguf(resolve("smollm2-135m", "policy").location)
    tok = sides["warprl"].tok
    # TRL gives its reference model the policy's kernel (model_init_kwargs["attn_implementation"]).
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=args.trl_attn)

    def reward_fn(completions, prompts=None, **_):
        return reward(list(prompts), list(completions)).tolist()

    trl_times: list[float] = []
    trl_loads: list[float] = []
    ckpt: list[bool] = []

    class Alternate(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            m = kw.get("model")
            ckpt.append(bool(getattr(m, "is_gradient_checkpointing", False)))
            trl_loads.append(loadavg())
            self.t = time.perf_counter()

        def on_step_end(self, *a, **kw):
            trl_times.append(time.perf_counter() - self.t)
            for side in sides.values():  # then one step of each warprl side
                side.step()

    with tempfile.TemporaryDirectory() as d:
        cfg = RLOOConfig(output_dir=d, use_cpu=True, report_to=[], save_strategy="no", bf16=bf16,
                         gradient_checkpointing=False, per_device_train_batch_size=n_prompts * k, num_generations=k,
                         max_completion_length=tokens, learning_rate=1e-5, beta=0.05, max_steps=args.steps,
                         logging_steps=1, temperature=1.0, top_p=1.0, top_k=0, seed=0, disable_tqdm=True)
        trainer = RLOOTrainer(model=model, reward_funcs=reward_fn, args=cfg, processing_class=tok,
                              train_dataset=datasets.Dataset.from_dict({"prompt": prompts}), callbacks=[Alternate()])
        trainer.train()
    del trainer, model
    samples = n_prompts * k
    res = {"shape": {"prompts": n_prompts, "k": k, "tokens": tokens}, "samples": samples,
           "trl": {"step_s": statistics.median(trl_times[1:]), "all_step_s": trl_times,
                   "loadavg": statistics.median(trl_loads[1:]), "gradient_checkpointing": any(ckpt)}}
    res["trl"]["samples_per_s"] = samples / res["trl"]["step_s"]
    for name, side in sides.items():
        rows = side.rows[1:]  # the first step pays one-off costs (weight packing, allocations)
        med = {key: statistics.median(r[key] for r in rows) for key in
               ("charts/step_time_s", "time/generate_s", "time/reward_s", "time/anchor_s", "time/update_s",
                "time/decode_ms_per_token", "charts/completion_length")}
        res[name] = {"step_s": med["charts/step_time_s"], "samples_per_s": samples / med["charts/step_time_s"],
                     "generate_s": med["time/generate_s"], "reward_s": med["time/reward_s"],
                     "anchor_s": med["time/anchor_s"], "update_s": med["time/update_s"],
                     "decode_ms_per_token": med["time/decode_ms_per_token"],
                     "completion_length": med["charts/completion_length"],
                     "all_step_s": [r["charts/step_time_s"] for r in side.rows],
                     "loadavg": statistics.median(side.loads[1:]),
                     "ratio_vs_trl": res["trl"]["step_s"] / med["charts/step_time_s"]}
    w = sides["warprl"]
    bd = update_breakdown(w)
    flops = update_flops(w.policy.compute, samples, bd["seq_len"], bd["completion_len"])
    res["update_breakdown"] = bd
    res["update_flops_per_s"] = flops / res["warprl"]["update_s"]
    res["fwd_bwd_flops_per_s"] = flops / (bd["forward_s"] + bd["backward_s"])
    return res


def parse_shape(text: str) -> tuple[int, int, int]:
    p, k, t = (int(x) for x in text.lower().split("x"))
    return p, k, t


def markdown(results: list[dict], peak: float, bw: float, wbytes: int, cmd: str, attn: list[str], trl_attn: str,
             precision: str) -> str:
    import trl as trl_mod

    bound = 1e3 * wbytes / bw
    lines = [f"{dt.datetime.now():%Y-%m-%d %H:%M} · {machine()} · `{cmd}`", "",
             f"Measured in this run: {precision} matmul peak {peak / 1e9:.0f} GFLOP/s (2048², best of 3); memory read "
             f"bandwidth {bw / 1e9:.1f} GB/s (sum of 1 GiB) → decode bound {wbytes / 1e6:.0f} MB of {precision} "
             f"weights / bandwidth = {bound:.1f} ms/token. TRL {trl_mod.__version__} `RLOOTrainer("
             f"bf16={precision == 'bf16'}, use_cpu=True, "
             f"gradient_checkpointing=False)` with attention {trl_attn}; warprl (attention {attn[0]} unless its row "
             f"says otherwise) and TRL alternate step by step in one process; medians "
             f"exclude the first (warm-up) step; load = median 1-min load average at step start (2 cores, shared).", ""]
    lines += ["| shape (prompts × k × tokens) | side | s / step | samples / s | ratio vs TRL | load | generate | reward "
              "| anchor | update | decode ms/token (× bound) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["shape"]
        label = f"{s['prompts']} × {s['k']} × {s['tokens']}"
        for name in [n for n in r if n.startswith("warprl")]:
            o = r[name]
            lines.append(f"| {label} | {name} | {o['step_s']:.2f} | {o['samples_per_s']:.2f} | "
                         f"**{o['ratio_vs_trl']:.2f}×** | {o['loadavg']:.1f} | {o['generate_s']:.2f} | "
                         f"{o['reward_s']:.2f} | {o['anchor_s']:.2f} | {o['update_s']:.2f} | "
                         f"{o['decode_ms_per_token']:.1f} ({o['decode_ms_per_token'] / bound:.1f}×) |")
        t = r["trl"]
        lines.append(f"| {label} | TRL | {t['step_s']:.2f} | {t['samples_per_s']:.2f} | 1 | {t['loadavg']:.1f} "
                     f"| | | | | |")
    lines.append("")
    for r in results:
        s, bd = r["shape"], r["update_breakdown"]
        ops = "; ".join(f"{k} {100 * f:.0f} % ({c} calls)" for k, c, _, f in bd["top_ops"][:6])
        lines.append(f"Update at {s['prompts']} × {s['k']} × {s['tokens']} (sequence {bd['seq_len']} tokens): "
                     f"{r['update_flops_per_s'] / 1e9:.0f} GFLOP/s over the whole update phase = "
                     f"{100 * r['update_flops_per_s'] / peak:.0f} % of the peak; forward+backward alone "
                     f"{r['fwd_bwd_flops_per_s'] / 1e9:.0f} GFLOP/s ({100 * r['fwd_bwd_flops_per_s'] / peak:.0f} %). "
                     f"One update, separately timed: forward {bd['forward_s']:.2f} s, backward {bd['backward_s']:.2f} s, "
                     f"grads → fp32 masters {bd['grads_to_fp32_s']:.2f} s, clip + AdamW {bd['clip_adamw_s']:.2f} s, "
                     f"compute copy refresh {bd['sync_bf16_s']:.2f} s. Top operators (self time): {ops}.")
        lines.append("")
    differences = DIFFERENCES_BF16 if precision == "bf16" else DIFFERENCES_FP32
    if attn[0] != trl_attn:
        differences = [*differences, f"attention kernel: warprl {attn[0]}, TRL {trl_attn} (the same maths)"]
    lines.append("Remaining differences: " + "; ".join(differences) + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["8x2x24", "16x4x64"], help="prompts x k x tokens")
    ap.add_argument("--steps", type=int, default=7, help="steps per side (the first is a warm-up)")
    ap.add_argument("--reward", default="imdb-sentiment")
    ap.add_argument("--with-hf-engine", action="store_true", help="also a warprl side decoding with HF generate")
    ap.add_argument("--attn", nargs="+", choices=("sdpa", "eager"), default=[AlignConfig().attn_implementation],
                    help="warprl's attention kernel (default: align's); more than one adds a warprl side per kernel")
    ap.add_argument("--trl-attn", choices=("sdpa", "eager"), default="sdpa", help="TRL's attention kernel")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="",
                    help="both sides (default: bf16 where this CPU computes it natively, else fp32)")
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    args.precision = args.precision or ("bf16" if bf16_is_native(torch.device("cpu")) else "fp32")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    torch.manual_seed(0)
    reward = load_reward(args.reward, bf16=args.precision == "bf16")
    prompts = builtin_prompts("train")
    peak = matmul_peak(dtype)
    bw = read_bandwidth()
    results = [bench_shape(parse_shape(s), args, reward, prompts) for s in args.shapes]
    policy, _ = load_policy("smollm2-135m")
    wbytes = dtype.itemsize * sum(p.numel() for p in policy.parameters())  # the compute weights (tied once)
    cmd = (f"PYTHONPATH=src python benchmarks/bench_rl_step.py --shapes {' '.join(args.shapes)} --steps {args.steps}"
           + f" --attn {' '.join(args.attn)} --trl-attn {args.trl_attn} --precision {args.precision}"
           + (" --with-hf-engine" if args.with_hf_engine else ""))
    md = markdown(results, peak, bw, wbytes, cmd, args.attn, args.trl_attn, args.precision)
    print(md)
    if not args.no_write:
        # bf16 keeps the section it always had; an fp32 run (a CPU without native bf16) gets its own beside it,
        # and an fp32 run of one shape its own per shape (one shape alone can take most of an hour there).
        title = "RL step: warprl vs TRL RLOOTrainer"
        if args.precision != "bf16":
            title += ", fp32" + ("" if len(args.shapes) > 1 else f", {args.shapes[0]}")
        write_section(title, md)
    if args.json:
        print(json.dumps({"precision": args.precision, "peak_flops": peak, "read_bandwidth": bw, "weight_bytes": wbytes,
                          "decode_bound_ms_per_token": 1e3 * wbytes / bw, "results": results}, default=str))


if __name__ == "__main__":
    main()
