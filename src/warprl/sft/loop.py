"""One SFT run: next-token cross-entropy on fixed micro-batches, warmup + cosine, fp32 masters, bf16 compute.

Per step: lr from the schedule → forward/backward of ``grad_accum`` micro-batches on the bf16 compute copy
(loss = summed NLL / the step's target tokens) → gradients onto the fp32 masters → clip → AdamW → refresh
the compute copy. Every ``eval_every`` steps the validation NLL; every ``checkpoint_every`` steps (and on
SIGINT/SIGTERM) an atomic checkpoint of the trainable weights, the optimiser and the counters. The data of
step ``s`` and its dropout seed depend only on (seed, s), so ``--resume`` is bit-identical.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from warprl.config import SFTConfig
from warprl.errors import UserError, first_line
from warprl.io import atomic_write_json, remove_stale_temp_files
from warprl.optim import warmup_cosine
from warprl.precision import MixedPrecision
from warprl.rl.checkpoint import MetricsLog, load_optimizer_state, optimizer_tensors
from warprl.rl.loop import NonFiniteError, checkpoint_due, stop_if_requested
from warprl.seeding import derive_seed
from warprl.sft.data import Batch
from warprl.sft.nll import corpus_nll, nll_sum


@dataclass
class SFTState:
    step: int = 0  # completed optimiser steps
    tokens_seen: int = 0  # target tokens trained on
    metrics_lines: int = 0  # lines of metrics.jsonl that belong to the completed steps
    val_curve: list = field(default_factory=list)  # [step, tokens_seen, val NLL]


# ------------------------------------------------------------------------------------------ checkpoints


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: Path, state: SFTState, model, opt, keep: int = 2) -> Path:
    """``checkpoints/step_N/``: trainable weights (the LoRA adapter only, with LoRA), optimiser, counters."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{state.step:06d}"
    tmp, final = root / f".{name}.tmp", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({n: p.detach().contiguous() for n, p in trainable(model).items()}, str(tmp / "trainable.safetensors"))
    tensors, meta = optimizer_tensors(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "state.json").write_text(json.dumps(state.__dict__))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_json(root / "latest.json", {"checkpoint": name, "step": state.step})
    for old in sorted(p for p in root.glob("step_*") if p.name != name)[: -(keep - 1) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(root: Path, model, opt) -> SFTState | None:
    pointer = root / "latest.json"
    if not pointer.is_file():
        return None
    try:
        folder = root / json.loads(pointer.read_text())["checkpoint"]
        saved = load_file(str(folder / "trainable.safetensors"))
        params = trainable(model)
        if set(saved) != set(params):
            raise ValueError("its trainable weights do not match this model")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
        load_optimizer_state(opt, load_file(str(folder / "optimizer.safetensors")),
                        json.loads((folder / "optimizer.json").read_text()))
        return SFTState(**json.loads((folder / "state.json").read_text()))
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise UserError(f"cannot resume from {root}: damaged checkpoint ({first_line(e, 120)})") from None


# --------------------------------------------------------------------------------------------- the loop


def sync_trainable(mp: MixedPrecision) -> None:
    """Refresh only the trainable tensors of the compute copy (the frozen base never changes)."""
    if mp.compute is mp.master:
        return
    with torch.no_grad():
        for pm, pc in zip(mp.master.parameters(), mp.compute.parameters(), strict=True):
            if pm.requires_grad:
                pc.copy_(pm)


class _NonFiniteStep(Exception):
    """A step's loss or gradient norm is not finite: nothing was updated (its text says which)."""


def train_step(mp: MixedPrecision, opt: torch.optim.Optimizer, batches: list[Batch], max_grad_norm: float
               ) -> tuple[float, int, float]:
    """One optimiser step on ``batches`` (accumulated): loss = summed NLL / the step's target tokens on the
    compute copy → gradients onto the masters → clip → AdamW → refresh the copy. Returns (summed NLL, target
    tokens, gradient norm); raises before the update if the loss or the gradient norm is not finite."""
    n_tok = sum(b.tokens for b in batches)
    mp.compute.train()
    loss_sum = 0.0
    try:
        for b in batches:
            s, _ = nll_sum(mp.compute, b)
            if not torch.isfinite(s):
                mp.compute.zero_grad(set_to_none=True)
                raise _NonFiniteStep("loss")
            (s / n_tok).backward()
            loss_sum += float(s.detach())
    finally:
        mp.compute.eval()
    mp.grads_to_master()
    params = [p for p in mp.master.parameters() if p.grad is not None]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf")))
    if not math.isfinite(grad_norm):
        opt.zero_grad(set_to_none=True)
        raise _NonFiniteStep("gradient norm")
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync_trainable(mp)
    return loss_sum, n_tok, grad_norm


def train_sft(cfg: SFTConfig, model, batches: list[Batch], val_rows: list[list[int]], pad_id: int, run_dir: Path,
              resume: bool) -> SFTState:
    """Train ``model`` (plain or peft-wrapped, fp32) in place on ``batches``; returns the final state."""
    total = len(batches) // cfg.grad_accum
    if total < 1:
        raise UserError(f"not enough data for one step ({len(batches)} micro-batches, --grad-accum {cfg.grad_accum})")
    ckpt = run_dir / "checkpoints"
    if resume:
        remove_stale_temp_files(ckpt)
    opt = torch.optim.AdamW(list(trainable(model).values()), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.95), fused=True)
    state = (load_checkpoint(ckpt, model, opt) if resume else None) or SFTState()
    mp = MixedPrecision(model, cfg.bf16)  # the compute copy trains only what the model trains (the adapter)
    warmup = round(cfg.warmup_ratio * total)
    log = MetricsLog(run_dir / "metrics.jsonl", state.metrics_lines)
    bar = tqdm(total=total, initial=state.step, desc="sft", disable=not cfg.progress, dynamic_ncols=True)

    def validate() -> float:
        nll = corpus_nll(mp.compute, val_rows, pad_id, batch_size=cfg.batch_size)["nll_per_token"]
        state.val_curve.append([state.step, state.tokens_seen, round(nll, 5)])
        return nll

    try:
        if val_rows and state.step == 0 and not state.val_curve:
            log.write({"step": 0, "losses/val_nll": validate(), "charts/tokens_seen": 0})
            state.metrics_lines = log.lines
        while state.step < total:
            t0 = time.perf_counter()
            lr = warmup_cosine(state.step, total, warmup, lr=cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            torch.manual_seed(derive_seed(cfg.seed, "sft-step", state.step))  # LoRA/model dropout of this step
            step_batches = batches[state.step * cfg.grad_accum:(state.step + 1) * cfg.grad_accum]
            try:
                loss_sum, n_tok, grad_norm = train_step(mp, opt, step_batches, cfg.max_grad_norm)
            except _NonFiniteStep as e:
                path = save_checkpoint(ckpt, state, model, opt)
                raise NonFiniteError(f"non-finite {e} at step {state.step + 1}; stopped before the update, "
                                     f"last good weights kept in {path}") from None
            state.step += 1
            state.tokens_seen += n_tok
            dt = time.perf_counter() - t0
            row = {"step": state.step, "losses/train_nll": loss_sum / n_tok, "losses/grad_norm": grad_norm,
                   "charts/lr": lr, "charts/tokens_seen": state.tokens_seen, "charts/tokens_per_s": n_tok / dt,
                   "time/step_s": dt}
            end = state.step == total
            if val_rows and (end or (cfg.eval_every and state.step % cfg.eval_every == 0)):
                row["losses/val_nll"] = validate()
                row["charts/val_perplexity"] = math.exp(row["losses/val_nll"])
            log.write(row)
            state.metrics_lines = log.lines
            bar.update(1)
            bar.set_postfix(loss=f"{row['losses/train_nll']:.3f}", tok_s=f"{n_tok / dt:.0f}",
                            **({"val": f"{row['losses/val_nll']:.3f}"} if "losses/val_nll" in row else {}))
            if checkpoint_due(state.step, cfg.checkpoint_every, end):
                save_checkpoint(ckpt, state, model, opt)
            stop_if_requested(state.step, end, str(total))
    finally:
        bar.close()
        log.close()
    return state
