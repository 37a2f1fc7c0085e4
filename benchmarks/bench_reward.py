"""Reward model benchmark: held-out pairwise accuracy of the embedded head and of a full fine-tune of MiniLM,
and CPU throughput (training pairs/s, scoring texts/s) in fp32 and under bf16 autocast.

    .venv/bin/python benchmarks/bench_reward.py [--pairs 4000] [--max-length 256] [--out runs/bench_reward]

Data: ../shared/data/imdb/train.parquet. The validation reviews are the ones `warprl reward train` holds out
(``val_fraction`` 0.1, seed 0): never trained on, by the embedded head or by the fine-tune here. Targets:
frozen-backbone imdb-sentiment >= 88 %, full fine-tune >= 95 % pairwise accuracy. Writes the section
"Reward model" of benchmarks/RESULTS.md. With the defaults about 13 min on 2 idle cores (the fine-tune runs
at ≈ 8 pairs/s there), 30 min when the cores are shared with another job.

The fine-tune is LP-FT by default: mean pooling with the head started from the embedded imdb-sentiment probe
(``--init-head imdb-sentiment``), then every weight trained. ``--pooling native --init-head ''`` is the plain
BERT recipe ([CLS] pooler, new head).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section  # noqa: E402

from warprl.heap import keep_freed_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imdb" / "train.parquet"


def throughput(texts: list[str], max_length: int, steps: int = 3, pairs_per_step: int = 16) -> list[dict]:
    """Steady-state scoring texts/s and training pairs/s of minilm-l6, fp32 vs bf16 autocast.

    Each figure is timed on a second pass over the same batch shapes: the first use of a shape pays for
    oneDNN kernel creation, which a long run amortises. Training = forward + backward + AdamW of
    ``pairs_per_step`` pairs (2 × that many texts), as `reward train` does it (fp32 masters, no dropout).
    """
    import torch

    from warprl.models import disable_dropout
    from warprl.reward import bt_loss, from_backbone

    rows = []
    for bf16 in (False, True):
        torch.manual_seed(0)
        rm = from_backbone("minilm-l6", pooling="native", max_length=max_length)
        rm.score(texts, bf16=bf16)  # warm-up pass
        t0 = time.perf_counter()
        rm.score(texts, bf16=bf16)
        score_rate = len(texts) / (time.perf_counter() - t0)
        opt = torch.optim.AdamW(rm.model.parameters(), lr=1e-5)
        rm.model.train()
        disable_dropout(rm.model)
        batch = texts[: 2 * pairs_per_step]
        enc = dict(rm.tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt"))
        timings = []
        for step in range(steps + 1):  # step 0 is the warm-up
            t0 = time.perf_counter()
            r = rm(enc, bf16=bf16)
            loss = bt_loss(r[:pairs_per_step], r[pairs_per_step:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step:
                timings.append(time.perf_counter() - t0)
        rows.append({"precision": "bf16 autocast" if bf16 else "fp32", "score_texts_per_s": score_rate,
                     "train_pairs_per_s": pairs_per_step * len(timings) / sum(timings),
                     "seq_len": int(enc["input_ids"].shape[1])})
    return rows


def main() -> int:
    keep_freed_memory()  # the heap as the `warprl` command sets it (warprl.heap)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--pairs", type=int, default=4000, help="training pairs of the full fine-tune")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--pooling", default="mean", choices=("native", "mean"))
    ap.add_argument("--init-head", default="imdb-sentiment",
                    help="LP-FT: start from this trained head (needs --pooling mean); '' = a new head")
    ap.add_argument("--val-pairs", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_reward"))
    ap.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the IMDB parquet in ../shared/data)")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from warprl.commands import reward as reward_cmd
    from warprl.config import RewardEvalConfig, RewardTrainConfig
    from warprl.data import read_labelled, split_labelled

    load = os.getloadavg()[0]
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    t_all = time.perf_counter()

    # 1. Throughput on 128 training reviews (most IMDB reviews fill 256 tokens).
    train, _ = split_labelled(read_labelled(args.data), args.data, 0.1, 0)
    texts = train.sample(n=128, random_state=0)["text"].tolist()
    speed = throughput(texts, args.max_length)
    print(json.dumps(speed))

    # 2. The embedded head on the held-out validation pairs (as the RL code runs it: bf16 autocast).
    head = reward_cmd.evaluate(RewardEvalConfig(model="imdb-sentiment", data=args.data, limit=args.val_pairs,
                                                split="val", device="cpu", bf16=True), progress=True)
    print(json.dumps(head))
    vader = reward_cmd.evaluate(  # the judge, for reference
        RewardEvalConfig(model="vader", data=args.data, limit=args.val_pairs, split="val"))

    # 3. Full fine-tune of minilm-l6 on `--pairs` training pairs.
    cfg = RewardTrainConfig(data=args.data, backbone="minilm-l6", out=args.out, max_pairs=args.pairs,
                            epochs=args.epochs, lr=args.lr, batch_size=16, max_length=args.max_length,
                            pooling=args.pooling, init_head=args.init_head, val_pairs=args.val_pairs, bf16=True,
                            device="cpu", overwrite=True, seed=0)
    full = reward_cmd.train(cfg)
    print(json.dumps(full["val"]))
    minutes = (time.perf_counter() - t_all) / 60

    cmd = (f".venv/bin/python benchmarks/bench_reward.py --pairs {args.pairs} --epochs {args.epochs:g} "
           f"--lr {args.lr:g} --max-length {args.max_length} --pooling {args.pooling} --init-head '{args.init_head}'")
    v = full["val"]
    lines = [
        f"Date: {started}. Machine: {machine()}, {_mem_gib()} GiB; load average {load:.1f} at the start "
        f"(the 2 cores were shared with other jobs: throughput is a lower bound). Total {minutes:.1f} min.",
        f"Command: `{cmd}`. Data: `../shared/data/imdb/train.parquet`; validation = the reviews "
        f"`warprl reward train` holds out (val_fraction 0.1, seed 0), {v['n_pairs']} positive/negative pairs; "
        "accuracy = share of pairs with r(positive) > r(negative); all-pairs = the same over every "
        "positive × negative combination of those reviews (AUC).",
        "",
        "| model | trained on | val pairwise acc | all-pairs | mean margin | target |",
        "|---|---|---|---|---|---|",
        f"| imdb-sentiment (frozen minilm-l6 + linear head), bf16 scoring | 3,000 pairs, head only "
        f"(src/warprl/assets/imdb-sentiment/README.md) | "
        f"{head['accuracy']:.1%} | {head['auc']:.1%} | {head['margin_mean']:.3f} | ≥ 88 % |",
        f"| vader (rule-based judge, compound score in [−1, 1]) | nothing (lexicon) | {vader['accuracy']:.1%} | "
        f"{vader['auc']:.1%} | {vader['margin_mean']:.3f} | — |",
        f"| minilm-l6 full fine-tune ({args.pooling} pooling, "
        f"{'head initialised from ' + args.init_head + ' (LP-FT)' if args.init_head else 'new head'}, "
        f"max_length {args.max_length}, bf16 autocast, no dropout) | "
        f"{full['train_pairs_per_epoch']} pairs × {args.epochs:g} epoch, lr {args.lr:g}, batch 16 | "
        f"{v['accuracy']:.1%} | {v['auc']:.1%} | {v['margin_mean']:.3f} | ≥ 95 % |",
        "",
        f"Full fine-tune: {full['train_seconds'] / 60:.1f} min, {full['train_pairs_per_s']:.2f} training pairs/s, "
        f"validation scoring {full['score_texts_per_s']:.1f} texts/s (bf16).",
        "",
        f"Throughput of minilm-l6, steady state (second pass over the same shapes), on 128 training reviews "
        f"(max_length {args.max_length}, scoring batch 32 length-sorted; training step = 16 pairs = 32 texts of "
        f"{speed[0]['seq_len']} tokens, forward + backward + AdamW, fp32 master weights, no dropout):",
        "",
        "| precision | scoring texts/s | training pairs/s |",
        "|---|---|---|",
        *[f"| {r['precision']} | {r['score_texts_per_s']:.1f} | {r['train_pairs_per_s']:.2f} |" for r in speed],
        "",
        NOTES,
    ]
    md = "\n".join(lines)
    print(md)
    if not args.no_write:
        print(f"wrote {write_section('Reward model', md)}")
    return 0


# Context from other runs of this benchmark and of `warprl reward train` (not recomputed by a rerun).
NOTES = """Notes (measured 2026-11-27 on this machine, same validation reviews):
- Learning curve of the LP-FT fine-tune (1 epoch, lr 2e-5): 1,000 pairs → 92.2 % pairwise (91.2 % all-pairs);
  4,000 pairs → 94.0 % (93.4 %); all 11,250 training pairs of the split → 94.8 % (94.6 %), 34 min on shared
  cores. The 95 % target is missed by 0.2 points; a second epoch is the next thing to try (unmeasured).
- LP-FT against the plain recipe, on a 300-pair pilot that used only training reviews (its own held-out 300 pairs;
  the embedded head alone scored 85.7 % there): mean pooling + head from imdb-sentiment 86.7 %, [CLS]
  pooler + new head (lr 5e-5) 79.3 % with a mean margin of only 0.07. Hence LP-FT as the default here.
- Idle cores: after the other jobs had stopped (load average ≈ 1), the 1,000-pair fine-tune ran at 8.3 training pairs/s and scored the
  validation reviews at 84 texts/s (bf16 autocast, length-sorted batches of 32); with a load average of 4 the
  same code ran at 2.7 pairs/s and 20 texts/s. The throughput table above is from a shared machine.
- Dropout is off in `reward train` by default (TRL's RewardConfig does the same): with it, a training step on
  a CPU is ≈ 2.2× slower (no fused attention), measured on 16 × 256-token texts."""


def _mem_gib() -> int:
    try:
        kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
                 .split()[1])
        return round(kb / 2**20)
    except (OSError, StopIteration, ValueError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
