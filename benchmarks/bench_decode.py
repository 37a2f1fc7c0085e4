"""Decode speed of warprl's rollout engine against HF ``generate``, lever by lever, next to the bandwidth bound.

Bundled SmolLM2-135M as a bf16 compute copy (what an RL step samples from; fp32 on a CPU without native bf16,
as an RL step there), builtin prompts, sampling at
temperature 1. Each configuration runs ``--repeats`` times, interleaved, and the median is kept.
ms/token = decode time / decoded steps (the prefill is timed apart); the bound = weight bytes read
once per token / memory read bandwidth measured in this run (sum over a 1 GiB tensor). A second table times
the sampling step alone (``sampling.sample_next`` on [batch, vocabulary] fp32 logits) with each draw, since the
draw's cost does not depend on the model and is easy to lose in a whole decode's noise. A third table times
the decode step's matmuls alone (the engine's prepacked weights, nothing else), next to the bf16 matmul peak
measured in the same run: the floor the matmul library sets at this batch size, before any other operation.

On a GPU (``--device cuda``, the default where one is present) every clock waits for the device's queued
work first, and the bound is the card's own: weight bytes / the read bandwidth measured on it.

    PYTHONPATH=src python benchmarks/bench_decode.py [--rows 16] [--k 1] [--tokens 64] [--repeats 3] [--precision fp32]
        [--device auto] [--policy smollm2-135m] [--only NAME ...] [--json]

Each repeat times every row once, starting one row later than the repeat before (so that no row always runs
first); the ratio column divides each row's time by "all levers" of the same repeat.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import time

import torch
from _results import machine, matmul_peak, read_bandwidth, switches

from warprl.data import builtin_prompts
from warprl.heap import keep_freed_memory
from warprl.models import load_policy, pick_device
from warprl.precision import bf16_is_native, synchronize
from warprl.rl import engine as E
from warprl.rl.rollout import tokenize_prompts
from warprl.rl.sampling import DRAWS, sample_next


def weight_bytes(model) -> int:
    """Bytes a decode step must read: every weight once (the tied embedding counts once, as lm_head)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


LEVERS = {
    "all levers": {},
    "no prepack (F.linear)": {"prepack": False},
    "no fusion (7 matmuls/layer)": {"fuse": False},
    "no prepack, no fusion": {"prepack": False, "fuse": False},
    "HF's multinomial draw (not the default)": {"draw": "multinomial"},
}


def attention_lever(device: torch.device) -> dict[str, dict]:
    """The decode attention that the engine's "auto" does not pick on ``device``, as a row: SDPA's flash kernel on
    a CPU (where the batched matmuls are the default), the batched matmuls elsewhere (SDPA the default)."""
    if device.type == "cpu":
        return {"SDPA decode attention (flash kernel)": {"decode_attention": "sdpa"}}
    return {"batched-matmul decode attention": {"decode_attention": "bmm"}}


def time_engine(model, tok, prompts, k, tokens, options) -> dict:
    device = model.device
    with switches(E.OPTIONS, **options):
        enc = tokenize_prompts(tok, prompts, device)
        torch.manual_seed(0)
        E._WEIGHTS.pop(model, None)
        synchronize(device)
        t = time.perf_counter()
        E._weights(model, len(prompts) * k)
        synchronize(device)
        build = time.perf_counter() - t
        dec = E.generate(model, enc["input_ids"], enc["attention_mask"], k, tokens, None, tok.pad_token_id)
    tm = dec.timings
    return {"ms_per_token": 1e3 * tm["decode_s"] / max(tm["decode_steps"], 1), "prefill_s": tm["prefill_s"],
            "weights_s": build}


def ms_per_call(fn, calls: int, device) -> float:
    """ms per call of ``fn`` over ``calls`` back-to-back calls, the device's queue drained at both ends."""
    synchronize(device)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return 1e3 * (time.perf_counter() - t) / calls


def _flat_cdf_step(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling step as it was until 2026-12-07, kept here to time against: logsumexp and softmax as two
    passes, then one running sum over the whole vocabulary (a chain of V dependent additions per row)."""
    scaled = logits / temperature
    lse = torch.logsumexp(scaled, dim=-1)
    cdf = torch.softmax(scaled, dim=-1).cumsum(-1)
    total = cdf[:, -1:]
    u = torch.minimum(torch.rand_like(total) * total, total.nextafter(torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(1)
    return tokens, scaled.gather(-1, tokens[:, None]).squeeze(1) - lse


SAMPLING_STEPS = {draw: functools.partial(sample_next, draw=draw) for draw in DRAWS}
SAMPLING_STEPS["inverse_cdf, one flat running sum (before 2026-12-07)"] = _flat_cdf_step


def time_draws(rows: int, vocab: int, repeats: int, device, calls: int = 20) -> dict[str, float]:
    """Median ms per sampling step at temperature 1 on random [rows, vocab] logits, for each draw."""
    logits = (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 3).to(device)
    times: dict[str, list[float]] = {name: [] for name in SAMPLING_STEPS}
    for _ in range(repeats):
        for name, step in SAMPLING_STEPS.items():  # interleaved
            times[name].append(ms_per_call(lambda step=step: step(logits, 1.0), calls, device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def time_linears(model, rows: int, repeats: int, calls: int = 10) -> dict[str, float]:
    """ms per decode step of the engine's matmuls alone (its own prepacked weights, random [rows, in] inputs,
    no attention, norms or sampling): every layer's linears in order, the weights streaming from memory as in
    a decode step, and layer 0's linears as many times as there are layers, its weights hot in cache. A floor for the decode: what
    the matmul library gives at this batch size, before any other operation."""
    w = E._weights(model, rows)
    dtype, device = w.embed.dtype, w.embed.device
    layers = [[*lw.qkv, lw.o, *lw.gate_up, lw.down] for lw in w.layers]
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    x_h = torch.randn(rows, hidden, dtype=dtype, device=device)
    x_i = torch.randn(rows, inter, dtype=dtype, device=device)

    def step(order) -> None:
        for lins in order:
            for lin in lins:
                lin(x_i if lin is lins[-1] else x_h)  # down_proj reads the intermediate width
        w.lm_head(x_h)

    out = {}
    for name, order in (("streamed", layers), ("hot", [layers[0]] * len(layers))):
        step(order)  # warm-up
        out[name] = statistics.median(ms_per_call(lambda o=order: step(o), calls, device) for _ in range(repeats))
    return out


def time_hf(model, tok, prompts, k, tokens) -> dict:
    """HF generate without EOS stopping, so both sides decode the same number of steps."""
    torch.manual_seed(0)
    rows = [p for p in prompts for _ in range(k)]
    enc = tokenize_prompts(tok, rows, model.device)
    synchronize(model.device)
    t = time.perf_counter()
    model.generate(**enc, do_sample=True, max_new_tokens=1, min_new_tokens=1, pad_token_id=tok.pad_token_id)
    synchronize(model.device)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    model.generate(**enc, do_sample=True, max_new_tokens=tokens, min_new_tokens=tokens, eos_token_id=None,
                   pad_token_id=tok.pad_token_id)
    synchronize(model.device)
    total = time.perf_counter() - t
    return {"ms_per_token": 1e3 * (total - prefill) / (tokens - 1), "prefill_s": prefill}


def main() -> None:
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16, help="prompts per batch")
    ap.add_argument("--k", type=int, default=1, help="samples per prompt (batch = rows × k)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="",
                    help="compute dtype (default: bf16 where the device computes it natively, else fp32)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU where there is one)")
    ap.add_argument("--policy", default="smollm2-135m",
                    help="any policy spec warprl loads (alias, HF folder, GGUF); a Llama-type model for the engine")
    ap.add_argument("--draw-rows", type=int, nargs="*", default=None,
                    help="batch sizes of the sampling-step table (default: the decode batch)")
    ap.add_argument("--only", nargs="*", default=None, metavar="NAME",
                    help="time only these rows (and 'all levers'), e.g. 'SDPA decode attention (flash kernel)'")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = pick_device(args.device)
    levers = {**LEVERS, **attention_lever(device)}
    names = ["HF generate", *levers] if not args.only else ["all levers", *(n for n in args.only if n != "all levers")]
    unknown = [n for n in names if n != "HF generate" and n not in levers]
    if unknown:
        ap.error(f"unknown --only {unknown[0]!r}; choose from {['HF generate', *levers]}")  # exit code 2
    args.precision = args.precision or ("bf16" if bf16_is_native(device) else "fp32")
    master, tok = load_policy(args.policy)
    model = copy.deepcopy(master).to(torch.bfloat16 if args.precision == "bf16" else torch.float32).eval()
    del master
    model.to(device)
    prompts = builtin_prompts("train")[: args.rows]
    bw = read_bandwidth(device=device)
    wbytes = weight_bytes(model)
    bound_ms = 1e3 * wbytes / bw
    load0 = open("/proc/loadavg").read().split()[0]
    runs: dict[str, list] = {name: [] for name in names}
    with torch.no_grad():
        # Warm-up: first calls allocate and pick kernels.
        time_engine(model, tok, prompts, args.k, 4, {})
        time_hf(model, tok, prompts, args.k, 4)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:  # each repeat starts one later
                runs[name].append(time_hf(model, tok, prompts, args.k, args.tokens) if name == "HF generate" else
                                  time_engine(model, tok, prompts, args.k, args.tokens, levers[name]))
        draws = {n: time_draws(n, model.config.vocab_size, max(args.repeats, 5), device)
                 for n in (args.draw_rows or [args.rows * args.k])}
        linears = time_linears(model, args.rows * args.k, max(args.repeats, 5))
        peak = matmul_peak(model.dtype, device=device)
    load1 = open("/proc/loadavg").read().split()[0]
    result = {"machine": machine(device), "policy": args.policy, "precision": args.precision,
              "rows": args.rows * args.k, "tokens": args.tokens, "read_GBps": bw / 1e9, "weight_MB": wbytes / 1e6, "bound_ms_per_token": bound_ms, "loadavg": [load0, load1], "configs": {}}
    print(f"{machine(device)}: batch {args.rows * args.k} rows × {args.tokens} tokens, {args.precision} "
          f"{args.policy}; read bandwidth "
          f"{bw / 1e9:.1f} GB/s, weights {wbytes / 1e6:.0f} MB → bound {bound_ms:.1f} ms/token; "
          f"load {load0} → {load1}")
    print("| decoder | ms/token (median) | × bound | ÷ all levers, same repeat (median) | repeats slower | "
          "prefill s | weight build s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = [r["ms_per_token"] for r in runs["all levers"]]
    for name, rs in runs.items():
        ms = statistics.median(r["ms_per_token"] for r in rs)
        pre = statistics.median(r["prefill_s"] for r in rs)
        wb = statistics.median(r.get("weights_s", 0.0) for r in rs)
        ratios = [r["ms_per_token"] / b for r, b in zip(rs, base, strict=True)]
        result["configs"][name] = {"ms_per_token": ms, "prefill_s": pre, "weights_s": wb,
                                   "all_ms": [r["ms_per_token"] for r in rs],
                                   "ratio_to_all_levers": statistics.median(ratios)}
        print(f"| {name} | {ms:.1f} | {ms / bound_ms:.2f} | {statistics.median(ratios):.3f} | "
              f"{sum(x > 1 for x in ratios)}/{len(ratios)} | {pre:.3f} | {wb:.3f} |")
    result["sample_next_ms"] = draws
    result["linears_ms"] = linears
    result["matmul_peak_GFLOPs"] = peak / 1e9
    print(f"\n| sampling step alone (rows × {model.config.vocab_size} logits) | "
          + " | ".join(f"{n} rows: ms" for n in draws) + " |")
    print("|---|" + "---:|" * len(draws))
    for name in SAMPLING_STEPS:
        print(f"| {name}{' (default)' if name == E.OPTIONS['draw'] else ''} | "
              + " | ".join(f"{d[name]:.2f}" for d in draws.values()) + " |")
    flops = 2 * (wbytes / model.dtype.itemsize) * args.rows * args.k  # every weight once per row
    print(f"\n| the decode step's matmuls alone ({args.rows * args.k} rows, prepacked, {flops / 1e9:.1f} GFLOP; "
          f"matmul peak {peak / 1e9:.0f} GFLOP/s at 2048² → {1e3 * flops / peak:.1f} ms) | ms/token | × bound "
          "| GFLOP/s | share of peak |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("streamed", "every layer in order, then lm_head (weights from memory)"),
                        ("hot", "layer 0 once per layer, then lm_head (a layer's weights in cache)")):
        ms = linears[name]
        print(f"| {label} | {ms:.1f} | {ms / bound_ms:.2f} | {flops / ms / 1e6:.0f} | {flops / ms / peak * 1e3:.0%} |")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
