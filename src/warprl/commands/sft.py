"""`warprl sft` and `warprl sft eval`: supervised fine-tuning of a causal LM on text, and per-token NLL.

As in every command: the output folder is checked first (read only), the model and the data are loaded, and
only then is the folder created or replaced. Output: ``final/`` (a plain HF folder, the LoRA adapter merged),
``adapter/`` (peft's adapter folder, with LoRA), ``metrics.jsonl``, ``summary.json``, ``config.yaml``.
"""

from __future__ import annotations

import random
import shutil
import time

import torch
from tqdm.auto import tqdm

from warprl import lora
from warprl.commands import outdir
from warprl.config import SFTConfig, SFTEvalConfig
from warprl.data import load_reviews, split_train_val
from warprl.io import atomic_dir, atomic_write_json
from warprl.models import attention_kernel, load_policy, pick_device, save_model, training_attention
from warprl.rl.loop import graceful_stop
from warprl.seeding import derive_seed
from warprl.sft.data import micro_batches, tokenize
from warprl.sft.loop import train_sft
from warprl.sft.nll import corpus_nll, encode_for_eval

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def split_texts(source: str, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training texts, validation texts) of ``source``: the seeded split of `warprl.data`, as for reward models."""
    df = load_reviews(source, split="train")
    train, val = split_train_val(df, val_fraction=val_fraction, seed=seed)
    return train["text"].tolist(), val["text"].tolist()


def sample_texts(texts: list[str], limit: int, seed: int) -> list[str]:
    """A seeded sample of ``limit`` texts (all when 0), the same for every policy compared."""
    texts = list(texts)
    random.Random(derive_seed(seed, "sft-eval")).shuffle(texts)
    return texts[:limit] if limit else texts


def run_sft(cfg: SFTConfig) -> dict:
    """Fine-tune ``cfg.policy`` on ``cfg.data`` into ``cfg.out``; return the summary (also ``summary.json``)."""
    decision = outdir.check(cfg.out, outdir.SFT, resume=cfg.resume, overwrite=cfg.overwrite, cfg=cfg, what="SFT run")
    device = pick_device(cfg.device)
    train_texts, val_texts = split_texts(cfg.data, cfg.val_fraction, cfg.seed)  # data errors before the slow load
    if cfg.val_data:
        val_texts = split_texts(cfg.val_data, cfg.val_fraction, cfg.seed)[1]
    model, tok = load_policy(cfg.policy, device=device)
    random.Random(derive_seed(cfg.seed, "sft-texts")).shuffle(train_texts)
    if cfg.max_texts:
        train_texts = train_texts[: cfg.max_texts]
    budget = int(cfg.max_tokens * 1.1) + cfg.max_length * cfg.batch_size if cfg.max_tokens else 0
    rows = tokenize(train_texts, tok, max_tokens=budget)
    batches = micro_batches(rows, packing=cfg.packing, max_length=cfg.max_length, batch_size=cfg.batch_size,
                            pad_id=tok.pad_token_id, seed=cfg.seed, max_tokens=cfg.max_tokens, epochs=cfg.epochs)
    batches = [type(b)(b.input_ids.to(device), b.attention_mask.to(device)) for b in batches]
    val_rows = encode_for_eval(sample_texts(val_texts, cfg.val_limit, cfg.seed), tok, cfg.max_length)
    # The kernel is a training choice, not the model's: merge_and_unload hands back this same base model, which
    # gets its own kernel back before final/ is saved.
    kernel = training_attention(cfg.attn_implementation, device, cfg.bf16, model.config, cfg.batch_size,
                                cfg.max_length)
    with attention_kernel(model, kernel):
        torch.manual_seed(derive_seed(cfg.seed, "sft-init"))  # the LoRA A matrices
        if cfg.lora:
            model = lora.apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        out = outdir.prepare(decision, cfg)
        t0 = time.perf_counter()
        with graceful_stop():
            state = train_sft(cfg, model, batches, val_rows, tok.pad_token_id, out, resume=decision.resume)
        seconds = time.perf_counter() - t0
        if cfg.lora:
            model.peft_config["default"].base_model_name_or_path = cfg.policy
            atomic_dir(out / "adapter", lambda tmp: lora.save_adapter(model, tmp, DTYPES[cfg.adapter_dtype]))
            model = lora.merge(model)
    save_model(model, tok, out / "final")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the final weights supersede them
    curve = state.val_curve
    summary = {
        "policy": cfg.policy, "data": cfg.data, "out": str(out), "final": str(out / "final"),
        "adapter": str(out / "adapter") if cfg.lora else None, "trainable_params": n_trainable,
        "steps": state.step, "tokens_seen": state.tokens_seen, "train_seconds": round(seconds, 1),
        "tokens_per_s": round(state.tokens_seen / seconds, 1) if seconds > 0 and not decision.resume else None,
        "val_texts": len(val_rows), "val_nll_start": curve[0][2] if curve else None,
        "val_nll_end": curve[-1][2] if curve else None, "val_curve": curve,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def run_sft_eval(cfg: SFTEvalConfig, progress: bool = False) -> dict:
    """Per-token NLL (mean over every predicted token of every text) and perplexity of ``cfg.data`` texts."""
    device = pick_device(cfg.device)
    if cfg.split == "val":
        texts = split_texts(cfg.data, cfg.val_fraction, cfg.seed)[1]
    else:
        texts = load_reviews(cfg.data)["text"].tolist()
    model, tok = load_policy(cfg.policy, device=device)
    if cfg.bf16:
        model = model.to(torch.bfloat16)
    rows = encode_for_eval(sample_texts(texts, cfg.limit, cfg.seed), tok, cfg.max_length)
    t0 = time.perf_counter()
    with tqdm(total=len(rows), desc="nll", disable=not progress, leave=False) as bar:
        result = corpus_nll(model, rows, tok.pad_token_id, batch_size=cfg.batch_size, progress=bar.update)
    return {"policy": cfg.policy, "data": cfg.data, "split": cfg.split, "max_length": cfg.max_length,
            "bf16": cfg.bf16, **result, "seconds": round(time.perf_counter() - t0, 1)}

