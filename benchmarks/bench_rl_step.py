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
        [--device auto] [--policy smollm2-135m]

On a GPU (``--device cuda``, the default where one is present) both sides run there (TRL with
``use_cpu=False``), every clock waits for the device's queued work, and peak and bandwidth are the card's.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _results import machine, matmul_peak, read_bandwidth, switches, write_section

from warprl import optim
from warprl.config import AlignConfig
from warprl.data import builtin_prompts
from warprl.heap import keep_freed_memory
from warprl.models import convert_gguf, load_policy, merged_adapter_folder, pick_device, resolve
from warprl.precision import MixedPrecision, bf16_is_native, synchronize
from warprl.reward import load_reward
from warprl.rl import loop as L
from warprl.rl import rollout as R
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
# Less work for the same numbers, so a difference of method, listed on both precisions.
SHARED_PROMPT_DIFFERENCE = (
    "warprl scores the k samples of a prompt (anchor and update passes) with one pass over the prompt and its "
    "key/value cache repeated for the completions where that saves ≥ {min_tokens} prompt tokens ({where}), TRL runs the "
    "prompt once per sample: the same log-probs and gradients (fp32: within 1e-5 in tests), fewer FLOPs; the row "
    "\"warprl (prompt per sample)\", where present, always runs the prompt per sample as TRL does")
# In fp32 both sides sample, score and train the fp32 weights themselves: the precision differences go.
DIFFERENCES_FP32 = DIFFERENCES_BF16[1:6]


def loadavg() -> float:
    return float(open("/proc/loadavg").read().split()[0])


class Warprl:
    """warprl's RL step driven one step at a time (what ``run_rl`` does, minus files and checkpoints)."""

    def __init__(self, shape, reward, prompts, engine: str, attn: str, bf16: bool, policy_spec: str, device,
                 shared_prompt: bool = True):
        self.n_prompts, self.k, self.tokens = shape
        self.shared_prompt = shared_prompt  # rollout.SHARED_PROMPT during this side's steps
        self.cfg = AlignConfig(method="rloo", steps=10**6, batch_size=self.n_prompts, k=self.k, beta=0.05, lr=1e-5,
                               max_new_tokens=self.tokens, bf16=bf16, progress=False, checkpoint_every=0,
                               engine=engine, attn_implementation=attn)
        policy, self.tok = load_policy(policy_spec, device=device)
        # As run_rl does: "auto" resolved for this shape, set before the anchor and the bf16 copies are made.
        self.attn = L.training_kernel(self.cfg, policy)
        policy.set_attn_implementation(self.attn)
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
        with switches(R.SHARED_PROMPT, enabled=self.shared_prompt):
            m = L.rl_step(self.cfg, self.policy, self.anchor, self.tok, self.reward, batch, self.state, self.opt,
                          "rloo", 0)
        self.rows.append(m)
        return m


def update_breakdown(w: Warprl) -> dict:
    """Time the parts of one update on a fresh rollout: forward, backward, grads→fp32, clip + AdamW, bf16 sync."""
    model = w.policy.compute
    device = model.device
    batch = prompt_batch(w.prompts, w.n_prompts, 1, 0)
    roll = sample(model, w.tok, batch, SamplingConfig(max_new_tokens=w.tokens, engine=w.cfg.engine), k=w.k,
                  generator_seed=0)
    n = roll.completion_ids.shape[1]
    out = {}
    model.train()
    synchronize(device)
    t = time.perf_counter()
    group = R.prompt_group(model, roll.input_ids, roll.attention_mask, n, w.k)  # as the step scores
    logp, _ = sequence_logprobs(model, roll.input_ids, roll.attention_mask, n, 1.0, return_entropy=True, group=w.k)
    loss = -(logp * roll.mask).sum() / roll.mask.shape[0]
    synchronize(device)
    out["forward_s"] = time.perf_counter() - t
    t = time.perf_counter()
    loss.backward()
    synchronize(device)
    out["backward_s"] = time.perf_counter() - t
    model.eval()
    t = time.perf_counter()
    w.policy.grads_to_master()
    synchronize(device)
    out["grads_to_fp32_s"] = time.perf_counter() - t
    t = time.perf_counter()
    torch.nn.utils.clip_grad_norm_([p for p in w.policy.master.parameters() if p.grad is not None], 1.0)
    w.opt.step()
    w.opt.zero_grad(set_to_none=True)
    synchronize(device)
    out["clip_adamw_s"] = time.perf_counter() - t
    t = time.perf_counter()
    w.policy.sync()
    synchronize(device)
    out["sync_bf16_s"] = time.perf_counter() - t
    # Where the forward + backward time goes, by operator.
    model.train()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":  # on a GPU the kernels' own time, not the time the host spends launching them
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    self_time = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with torch.profiler.profile(activities=activities) as prof:
        logp = sequence_logprobs(model, roll.input_ids, roll.attention_mask, n, 1.0, group=w.k)
        (-(logp * roll.mask).sum()).backward()
        synchronize(device)
    model.eval()
    model.zero_grad(set_to_none=True)
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, self_time), reverse=True)
    total = sum(getattr(e, self_time) for e in events) or 1
    out["top_ops"] = [(e.key, e.count, getattr(e, self_time) / 1e6, getattr(e, self_time) / total)
                      for e in events[:8]]
    out["seq_len"] = roll.input_ids.shape[1]
    out["completion_len"] = n
    out["group"] = group
    return out


def update_flops(model, rows: int, seq_len: int, n_completion: int, group: int = 1) -> float:
    """Matmul FLOPs of one update as ``sequence_logprobs`` runs it: 6·N_body per token fed in (every token but
    the last; with ``group`` > 1 each prompt once per group of rows) + 6·N_head per completion token."""
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - head  # tied embedding counted once, as the head
    fed = rows * (seq_len - 1) - R.prompt_tokens_saved(rows, seq_len - n_completion, group)
    return 6 * body * fed + 6 * head * rows * n_completion


HEAP_WORDS = {"kept": "freed memory kept (`warprl.heap`, `WARPRL_GLIBC_HEAP=kept`)",
              "default": "glibc's default heap"}
TARGET_RATIO = 3.0  # issue 11: RL step throughput >= 3x TRL's at both shapes


def step_floor(res: dict, peak: float, n_params: int) -> dict:
    """The matmul work of one step of shape ``res`` and the share of ``peak`` a target step time needs.

    Work: the update (measured count, ``update_flops_per_s`` × ``update_s``), the anchor's forward (a third of
    it: 2·N against 6·N per token) and the decode (2·N per sampled token, N = all weights). The reward model
    (MiniLM, 22 M parameters) and the prefill are left out, so the floor is a lower bound.
    """
    w = res["warprl"]
    update = res["update_flops_per_s"] * w["update_s"]
    decode = 2 * n_params * res["samples"] * w["completion_length"]
    total = update + update / 3 + decode
    target_s = res["trl"]["step_s"] / TARGET_RATIO
    best = max((res[n] for n in res if n.startswith("warprl")), key=lambda o: o["ratio_vs_trl"])
    return {"update_flops": update, "anchor_flops": update / 3, "decode_flops": decode, "flops": total,
            "floor_s": total / peak, "target_s": target_s, "target_share_of_peak": total / peak / target_s,
            "best_ratio": best["ratio_vs_trl"], "best_share_of_peak": total / peak / best["step_s"]}


def target_line(res: dict, floor: dict) -> str:
    """One sentence: the ≥ 3× verdict at this shape and what it asks of the machine."""
    s = res["shape"]
    verdict = "met" if floor["best_ratio"] >= TARGET_RATIO else "missed"
    return (f"Target ≥ {TARGET_RATIO:g}× TRL at {s['prompts']} × {s['k']} × {s['tokens']}: **{verdict}** "
            f"(best side {floor['best_ratio']:.2f}×). The step's matmul work — update "
            f"{floor['update_flops'] / 1e12:.2f} TFLOP, anchor forward {floor['anchor_flops'] / 1e12:.2f}, decode "
            f"{floor['decode_flops'] / 1e12:.2f} — takes {floor['floor_s']:.2f} s at the measured peak; "
            f"{TARGET_RATIO:g}× TRL's {res['trl']['step_s']:.2f} s is {floor['target_s']:.2f} s, which needs "
            f"{100 * floor['target_share_of_peak']:.0f} % of the peak over the whole step; warprl's best side "
            f"runs at {100 * floor['best_share_of_peak']:.0f} %.")


def bench_shape(shape, args, reward, prompts) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    n_prompts, k, tokens = shape
    main_attn, *other_attn = args.attn  # "auto" resolves per shape: the side is labelled with its kernel
    bf16 = args.precision == "bf16"
    common = (bf16, args.policy, args.device)
    sides = {"warprl": Warprl(shape, reward, prompts, "auto", main_attn, *common)}
    for attn in other_attn:
        side = Warprl(shape, reward, prompts, "auto", attn, *common)
        sides[f"warprl (attention {side.attn})"] = side
    if args.with_hf_engine:
        sides["warprl (engine hf)"] = Warprl(shape, reward, prompts, "hf", main_attn, *common)
    if args.with_prompt_per_sample:
        sides["warprl (prompt per sample)"] = Warprl(shape, reward, prompts, "auto", main_attn, *common,
                                                     shared_prompt=False)
    folder = policy_folder(args.policy)
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
            synchronize(args.device)
            self.t = time.perf_counter()

        def on_step_end(self, *a, **kw):
            synchronize(args.device)
            trl_times.append(time.perf_counter() - self.t)
            for side in sides.values():  # then one step of each warprl side
                side.step()

    with tempfile.TemporaryDirectory() as d:
        cfg = RLOOConfig(output_dir=d, use_cpu=args.device.type == "cpu", report_to=[], save_strategy="no", bf16=bf16,
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
                     "loadavg": statistics.median(side.loads[1:]), "attn": side.attn,
                     "ratio_vs_trl": res["trl"]["step_s"] / med["charts/step_time_s"]}
    w = sides["warprl"]
    bd = update_breakdown(w)
    flops = update_flops(w.policy.compute, samples, bd["seq_len"], bd["completion_len"], bd["group"])
    res["update_breakdown"] = bd
    res["update_flops_per_s"] = flops / res["warprl"]["update_s"]
    res["fwd_bwd_flops_per_s"] = flops / (bd["forward_s"] + bd["backward_s"])
    return res


def policy_folder(spec: str) -> str:
    """The HF folder (or hub id) TRL loads for a policy spec: what ``load_policy`` reads, converted if need be."""
    resolved = resolve(spec, "policy")
    if resolved.kind == "gguf":
        return str(convert_gguf(resolved.location))
    if resolved.kind == "adapter":
        return str(merged_adapter_folder(resolved))
    return resolved.location


def parse_shape(text: str) -> tuple[int, int, int]:
    p, k, t = (int(x) for x in text.lower().split("x"))
    return p, k, t


def markdown(run: dict) -> str:
    """The RESULTS.md section of one run, from its record (what ``--json`` prints and ``--render`` reads)."""
    results, peak, bw, wbytes = run["results"], run["peak_flops"], run["read_bandwidth"], run["weight_bytes"]
    precision, attn, trl_attn = run["precision"], run["attn"], run["trl_attn"]
    bound = 1e3 * wbytes / bw
    gpu = run["device"].startswith("cuda")
    lines = [f"{run['date']} · {run['machine']} · `{run['command']}`", "",
             f"Measured in this run: {precision} matmul peak {peak / 1e9:.0f} GFLOP/s ({8192 if gpu else 2048}², best "
             f"of 3); memory read bandwidth {bw / 1e9:.1f} GB/s (sum of 1 GiB) → decode bound {wbytes / 1e6:.0f} MB "
             f"of {precision} weights / bandwidth = {bound:.2f} ms/token. TRL {run['trl_version']} `RLOOTrainer("
             f"bf16={precision == 'bf16'}, use_cpu={not gpu}, "
             f"gradient_checkpointing=False)` with attention {trl_attn}; warprl (attention {attn[0]} unless its row "
             f"says otherwise{'; auto is resolved per shape as align resolves it' if attn[0] == 'auto' else ''}) and "
             f"TRL alternate step by step in one process, so both run under one glibc heap setting: "
             f"{HEAP_WORDS[run.get('heap', 'default')]}; medians "
             f"exclude the first (warm-up) step; load = median 1-min load average at step start "
             f"({run['cores']} cores, shared).", ""]
    lines += ["| shape (prompts × k × tokens) | side | s / step | samples / s | ratio vs TRL | load | generate | reward "
              "| anchor | update | decode ms/token (× bound) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["shape"]
        label = f"{s['prompts']} × {s['k']} × {s['tokens']}"
        for name in [n for n in r if n.startswith("warprl")]:
            o = r[name]
            side = f"warprl (attention {o['attn']})" if name == "warprl" and attn[0] == "auto" else name
            lines.append(f"| {label} | {side} | {o['step_s']:.2f} | {o['samples_per_s']:.2f} | "
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
    n_params = wbytes // (2 if precision == "bf16" else 4)
    for r in results:
        lines += [target_line(r, step_floor(r, peak, n_params)), ""]
    differences = DIFFERENCES_BF16 if precision == "bf16" else DIFFERENCES_FP32
    if run.get("shared_prompt"):  # runs before it existed ran the prompt per sample
        where = ", ".join(f"{r['shape']['prompts']} × {r['shape']['k']} × {r['shape']['tokens']}: "
                          f"{'yes' if r['update_breakdown'].get('group', 1) > 1 else 'no'}" for r in results)
        differences = [*differences, SHARED_PROMPT_DIFFERENCE.format(
            where=where, min_tokens=run.get("shared_prompt_min_tokens", 128))]
    main = sorted({r["warprl"].get("attn", attn[0]) for r in results})
    if main != [trl_attn]:
        differences = [*differences, f"attention kernel: warprl {' or '.join(main)}, TRL {trl_attn} (the same maths)"]
    lines.append("Remaining differences: " + "; ".join(differences) + ".")
    return "\n".join(lines) + "\n"


def section_title(run: dict) -> str:
    """bf16 keeps the section it always had (with the heap kept; glibc's default heap, the command's default, gets
    its own section beside it); an fp32 run (a CPU without native bf16) gets its own beside it, and
    an fp32 run of one shape its own per shape (one shape alone can take most of an hour there); a GPU run its
    card's."""
    title = "RL step: warprl vs TRL RLOOTrainer"
    if run["gpu"]:
        return f"{title}, {run['gpu']}"
    if run["precision"] != "bf16":
        title += ", fp32" + ("" if len(run["shapes"]) > 1 else f", {run['shapes'][0]}")
    return title + (", glibc's default heap" if run.get("heap", "default") == "default" else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["8x2x24", "16x4x64"], help="prompts x k x tokens")
    ap.add_argument("--steps", type=int, default=7, help="steps per side (the first is a warm-up)")
    ap.add_argument("--reward", default="imdb-sentiment")
    ap.add_argument("--with-hf-engine", action="store_true", help="also a warprl side decoding with HF generate")
    ap.add_argument("--with-prompt-per-sample", action="store_true",
                    help="also a warprl side that scores each sample's prompt apart (rollout.SHARED_PROMPT off)")
    ap.add_argument("--attn", nargs="+", choices=("auto", "sdpa", "eager"), default=[AlignConfig().attn_implementation],
                    help="warprl's attention kernel (default: align's); more than one adds a warprl side per kernel")
    ap.add_argument("--trl-attn", choices=("sdpa", "eager"), default="sdpa", help="TRL's attention kernel")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="",
                    help="both sides (default: bf16 where the device computes it natively, else fp32)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU where there is one)")
    ap.add_argument("--policy", default="smollm2-135m", help="any policy spec warprl loads (both sides use it)")
    ap.add_argument("--heap", choices=("kept", "default"), default="default",
                    help="glibc's heap for the whole process, both sides: its default (what the `warprl` command "
                         "keeps unless WARPRL_GLIBC_HEAP=kept), or kept (warprl.heap)")
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--render", metavar="JSON", default="",
                    help="measure nothing: write the section of a saved --json line (the last line of its output)")
    args = ap.parse_args()
    if args.render:
        run = json.loads(Path(args.render).read_text().strip().splitlines()[-1])
        write_section(section_title(run), markdown(run))
        return
    if args.heap == "kept" and not keep_freed_memory(True):
        raise SystemExit("--heap kept: this C library's malloc cannot be set (glibc only); use --heap default")
    args.device = pick_device(args.device)
    args.precision = args.precision or ("bf16" if bf16_is_native(args.device) else "fp32")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    torch.manual_seed(0)
    reward = load_reward(args.reward, device=args.device, bf16=args.precision == "bf16")
    prompts = builtin_prompts("train")
    peak = matmul_peak(dtype, device=args.device)
    bw = read_bandwidth(device=args.device)
    results = [bench_shape(parse_shape(s), args, reward, prompts) for s in args.shapes]
    policy, _ = load_policy(args.policy)
    wbytes = dtype.itemsize * sum(p.numel() for p in policy.parameters())  # the compute weights (tied once)
    cmd = (f"PYTHONPATH=src python benchmarks/bench_rl_step.py --shapes {' '.join(args.shapes)} --steps {args.steps}"
           + f" --attn {' '.join(args.attn)} --trl-attn {args.trl_attn} --precision {args.precision}"
           + f" --device {args.device}" + (f" --policy {args.policy}" if args.policy != "smollm2-135m" else "")
           + (f" --reward {args.reward}" if args.reward != "imdb-sentiment" else "")
           + (" --with-hf-engine" if args.with_hf_engine else "")
           + (" --with-prompt-per-sample" if args.with_prompt_per_sample else "") + f" --heap {args.heap}")
    import trl

    run = {"date": f"{dt.datetime.now():%Y-%m-%d %H:%M}", "machine": machine(args.device), "cores": os.cpu_count(),
           "command": cmd, "device": str(args.device),
           "gpu": torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "",
           "heap": args.heap, "shared_prompt": R.SHARED_PROMPT["enabled"],
           "shared_prompt_min_tokens": R.SHARED_PROMPT["min_tokens"], "policy": args.policy, "precision": args.precision, "shapes": args.shapes, "attn": args.attn,
           "trl_attn": args.trl_attn, "trl_version": trl.__version__, "peak_flops": peak, "read_bandwidth": bw,
           "weight_bytes": wbytes, "decode_bound_ms_per_token": 1e3 * wbytes / bw, "results": results}
    md = markdown(run)
    print(md)
    if not args.no_write:
        write_section(section_title(run), md)
    if args.json:
        print(json.dumps(run, default=str))


if __name__ == "__main__":
    main()
