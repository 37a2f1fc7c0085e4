"""One RL run: T steps of REINFORCE or RLOO on R = r − β·KL(π ‖ π_anchor), with checkpoints and resume.

The loop, per step:
  prompts (seeded order) → sample k completions each (KV cache, bf16 autocast) → reward of the *text*
  → anchor log-probs → R = r − β·Σ_t KL_t → advantages (RLOO leave-one-out or REINFORCE baseline)
  → loss −A·Σ_t log π → AdamW step (fp32 master weights) → EMA anchor update (if ``anchor="ema"``).

Every random choice of a step is seeded from (run seed, step), so a resumed run replays exactly what an
uninterrupted run would have done: only weights, EMA, optimiser state and a few scalars are checkpointed.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_model
from tqdm.auto import tqdm

from warprl import merge, optim
from warprl.config import AlignConfig, parse_prompt_tokens
from warprl.errors import UserError
from warprl.io import (
    atomic_dir,
    atomic_write_json,
    file_digest,
    recover_dirs,
    remove_stale_temp_files,
    save_weights,
)
from warprl.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, write_adapter
from warprl.models import attention_kernel, training_attention
from warprl.precision import MixedPrecision, plain_copy, synchronize
from warprl.rl import algorithms as A
from warprl.rl.adapters import ADAPTER_DIR, LoraRun, fold_adapter
from warprl.rl.checkpoint import (
    LoopState,
    MetricsLog,
    finished_run_damage,
    intact_metrics_lines,
    load_checkpoint,
    note,
    save_checkpoint,
)
from warprl.rl.engine import share_fused_storage
from warprl.rl.rollout import SamplingConfig, anchor_logprobs, sample, sequence_logprobs
from warprl.seeding import derive_seed, prompt_batch


class NonFiniteError(UserError):
    """A non-finite reward, KL or loss: the run stops before the bad update and keeps the last good weights."""


class RunInterrupted(UserError):
    """SIGINT/SIGTERM: the run saved a checkpoint and stopped; ``--resume`` continues it."""


# --------------------------------------------------------------------------------------------- signals


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes the current step, checkpoints and stops."""

    requested: str | None = None


def checkpoint_due(step: int, every: int, end: bool) -> bool:
    """A checkpoint after this step: at the end, every ``every`` steps (0 = never between), or on a stop request."""
    return end or bool(every and step % every == 0) or bool(StopFlag.requested)


def stop_if_requested(step: int, end: bool, what: str) -> None:
    """After the checkpoint of a stop request: end the run with a one-line error (unless it just finished)."""
    if StopFlag.requested and not end:
        raise RunInterrupted(f"stopped by {StopFlag.requested} after step {step} of {what}; "
                             f"checkpoint saved — rerun the same command with --resume to continue")


@contextmanager
def graceful_stop():
    previous = {}

    def handler(signum, _frame):
        StopFlag.requested = signal.Signals(signum).name

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. inside a Ray worker): no handler, no harm
            pass
    StopFlag.requested = None
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


# ----------------------------------------------------------------------------------------------- the run


class PhaseClock:
    """Seconds spent per named phase of a run, steps included: where a run's time outside its RL steps goes
    (copies, checkpoints, the KL-to-SFT measurement, the final write), recorded in ``done.json``."""

    def __init__(self, **seconds: float):
        self.seconds: dict[str, float] = dict(seconds)

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def move(self, seconds: float, source: str, target: str) -> None:
        """Book ``seconds`` timed under ``source`` to ``target`` instead (a measurement inside a step)."""
        self.seconds[source] = self.seconds.get(source, 0.0) - seconds
        self.seconds[target] = self.seconds.get(target, 0.0) + seconds

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


@dataclass
class RunResult:
    weights: Path  # safetensors of the final policy (a LoRA run: its adapter folder)
    steps: int
    last_metrics: dict = field(default_factory=dict)


def _decode_ms_per_token(roll, generate_s: float) -> float:
    """Decode time per new token of the batch (warprl engine: its own prefill excluded; HF: generate / tokens)."""
    t = roll.timings
    if t and t["decode_steps"]:
        return 1e3 * t["decode_s"] / t["decode_steps"]
    return 1e3 * generate_s / max(roll.completion_ids.shape[1], 1)


def rl_step(cfg: AlignConfig, policy: MixedPrecision, anchor: MixedPrecision, tokenizer, reward_fn,
            prompts: list[str], state: LoopState, opt: torch.optim.Optimizer, method: str, seed: int,
            sft: torch.nn.Module | None = None) -> dict:
    """One RL step on ``prompts``; returns its metrics. Raises NonFiniteError before any bad update.

    With ``sft`` (a frozen θ_sft) the step also logs ``charts/kl_sft``: the mean sequence KL (k1) of the
    policy to θ_sft on this step's own samples (the first of each prompt), from the policy log-probs the step
    computes anyway, so it costs one no-grad pass of θ_sft over 1/k of the batch. That pass is timed apart
    (``time/kl_sft_s``) and is not part of the step's time (``charts/step_time_s``): it measures, not trains.
    """
    t0 = time.perf_counter()
    torch.manual_seed(derive_seed(seed, "step", state.step))  # sampling randomness of this step
    scfg = SamplingConfig(cfg.max_new_tokens, cfg.min_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k,
                          cfg.engine)
    model = policy.compute
    roll = sample(model, tokenizer, prompts, scfg, k=cfg.k)
    t_gen = time.perf_counter()
    rewards = reward_fn(roll.prompts, roll.completions).to(torch.float32).cpu()
    t_rew = time.perf_counter()
    n_rows, n_tok = roll.input_ids.shape[0], roll.completion_ids.shape[1]
    micro = n_rows // cfg.grad_accum
    roll.ref_logprobs = anchor_logprobs(anchor.compute, roll, cfg.temperature, micro_batch=micro, group=cfg.k)
    synchronize(roll.ref_logprobs.device)
    t_anchor = time.perf_counter()

    # log π for the KL comes from the same full forward pass as log π_anchor (not from the incremental
    # decoding of generate), so identical weights give exactly zero KL. Without accumulation that forward
    # pass is the training one; with it, a no-grad pass first.
    model.train()
    if cfg.grad_accum == 1:
        logp_grad, entropy = sequence_logprobs(model, roll.input_ids, roll.attention_mask, n_tok,
                                               cfg.temperature, return_entropy=True, group=cfg.k)
        logp = logp_grad.detach() * roll.mask
    else:
        logp = anchor_logprobs(model, roll, cfg.temperature, micro_batch=micro, group=cfg.k)
    seq_kl = A.sequence_kl(logp, roll.ref_logprobs, roll.mask, cfg.kl_estimator).cpu()
    kl_sft = None
    t_sft = time.perf_counter()
    if sft is not None:
        # One sample per prompt (the first of its k): as many samples as prompts, at 1/k of a pass's cost.
        first = slice(None, None, cfg.k)
        sub = roll.rows(first)
        # The SFT anchor is θ_sft: its log-probs are at hand.
        sft_logp = sub.ref_logprobs if sft is anchor.compute else anchor_logprobs(sft, sub, cfg.temperature,
                                                                                  micro_batch=micro)
        kl_sft = float(A.sequence_kl(logp[first], sft_logp, sub.mask, "k1").mean())
    measure_s = time.perf_counter() - t_sft
    for name, value in (("reward", rewards), ("KL", seq_kl)):
        if not torch.isfinite(value).all():
            model.eval()
            raise NonFiniteError(f"non-finite {name} at step {state.step + 1}")
    total = A.kl_regularised_reward(rewards, seq_kl, cfg.beta)
    if method == "rloo":
        adv = A.rloo_advantages(total, cfg.k)
    else:
        baseline = state.baseline if cfg.baseline == "moving_average" else None
        adv = A.reinforce_advantages(total, baseline)
    if cfg.whiten_advantages:
        adv = A.whiten(adv)

    # Update: micro-batches keep whole prompt groups together (batch_size % grad_accum == 0).
    optim.set_lr(opt, optim.warmup_constant(state.step, cfg.warmup_steps, lr=cfg.lr))
    opt.zero_grad(set_to_none=True)
    loss_total, entropy_sum = 0.0, 0.0
    device = roll.input_ids.device
    for i in range(0, n_rows, micro):
        sl = slice(i, i + micro)
        if cfg.grad_accum > 1:
            logp_grad, entropy = sequence_logprobs(model, roll.input_ids[sl], roll.attention_mask[sl], n_tok,
                                                   cfg.temperature, return_entropy=True, group=cfg.k)
        loss = A.policy_gradient_loss(logp_grad, roll.mask[sl], adv[sl].to(device), cfg.token_mean) / cfg.grad_accum
        if not torch.isfinite(loss):
            model.zero_grad(set_to_none=True)
            model.eval()
            raise NonFiniteError(f"non-finite loss at step {state.step + 1}")
        loss.backward()
        loss_total += float(loss.detach())
        entropy_sum += float(A.masked_sum(entropy, roll.mask[sl]))
    model.eval()
    policy.grads_to_master()
    params = [p for p in policy.master.parameters() if p.grad is not None]
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if not math.isfinite(grad_norm):
        opt.zero_grad(set_to_none=True)
        raise NonFiniteError(f"non-finite gradient norm at step {state.step + 1}")
    opt.step()
    opt.zero_grad(set_to_none=True)
    policy.sync()
    if cfg.anchor == "ema":
        merge.ema_(anchor.master.parameters(), policy.master.parameters(), cfg.mu)
        anchor.sync()
    if method == "reinforce" and cfg.baseline == "moving_average":
        state.baseline = A.update_baseline(state.baseline, total, cfg.baseline_decay)
    state.step += 1
    synchronize(device)
    t1 = time.perf_counter()
    n_tokens = float(roll.mask.sum())
    step_time = t1 - t0 - measure_s
    measured = {} if kl_sft is None else {"charts/kl_sft": kl_sft, "time/kl_sft_s": measure_s}
    return {
        "step": state.step,
        "charts/reward_mean": float(rewards.mean()),
        "charts/reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        # KL to the anchor the penalty uses: the SFT policy (anchor "sft") or the EMA anchor (WARP, anchor
        # "ema"). charts/kl_mean is the same number under its old name; charts/kl_sft comes with ``sft``.
        "charts/kl_anchor": float(seq_kl.mean()),
        "charts/kl_mean": float(seq_kl.mean()),
        "charts/reward_kl_regularised": float(total.mean()),
        "charts/advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "charts/entropy": entropy_sum / max(n_tokens, 1.0),
        "charts/completion_length": float(roll.lengths.mean()),
        "charts/lr": opt.param_groups[0]["lr"],
        "charts/tokens_per_s": n_tokens / step_time,
        "charts/samples_per_s": n_rows / step_time,
        "charts/step_time_s": step_time,
        "time/generate_s": t_gen - t0,
        "time/reward_s": t_rew - t_gen,
        "time/anchor_s": t_anchor - t_rew,
        # policy forward (+ no-grad pass with accumulation), backward, AdamW
        "time/update_s": t1 - t_anchor - measure_s,
        "time/decode_ms_per_token": _decode_ms_per_token(roll, t_gen - t0),
        "losses/policy": loss_total,
        "losses/grad_norm": grad_norm,
        "samples/first": roll.prompts[0] + roll.completions[0],
        **measured,
    }


def training_kernel(cfg: AlignConfig, policy) -> str:
    """The attention kernel of the run's training passes: ``cfg.attn_implementation`` with "auto" resolved for
    one pass's rows (the step's batch over its micro-batches) and its longest sequence (prompt + completion)."""
    rows = cfg.batch_size * cfg.k // cfg.grad_accum
    seq_len = parse_prompt_tokens(cfg.prompt_tokens)[1] + cfg.max_new_tokens
    return training_attention(cfg.attn_implementation, policy.device, cfg.bf16, policy.config, rows, seq_len)


def run_rl(cfg: AlignConfig, run_dir: Path, policy, tokenizer, reward_fn, prompts: list[str], *,
           method: str, anchor_kind: str, seed: int, resume: bool, desc: str = "",
           sft_weights: Path | None = None, base_name: str = "", clock: PhaseClock | None = None) -> RunResult:
    """T steps of RL starting from ``policy``'s current weights; trains ``policy`` in place.

    ``run_dir`` receives ``metrics.jsonl``, ``checkpoints/`` and, when the run is complete,
    ``weights.safetensors`` and ``done.json`` (a finished run is skipped on resume). Every
    ``cfg.kl_sft_every`` steps ``charts/kl_sft`` is logged: the KL to θ_sft on that step's samples, θ_sft read
    from ``sft_weights`` (a WARP run starts from θ_init, not θ_sft) or, without it, the run's initial weights.

    With ``cfg.lora_r`` the run trains LoRA factors on the frozen ``policy`` (:mod:`warprl.rl.adapters`):
    checkpoints hold the factors, their EMA and the optimiser; the result is ``adapter/`` (peft's format,
    ``base_name`` recorded as its base) instead of ``weights.safetensors``, and at the end ``policy`` holds
    W0 + s·B·A, as after a full fine-tune.

    ``clock`` (a :class:`PhaseClock`, e.g. with the caller's own load time) receives the run's phases; their
    seconds are written to ``done.json`` under ``time``.
    """
    clock = clock if clock is not None else PhaseClock()
    t_setup = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "done.json"
    lora = cfg.lora_r > 0
    weights = run_dir / (ADAPTER_DIR if lora else "weights.safetensors")
    if resume:
        for folder in (run_dir, run_dir / "checkpoints"):
            recover_dirs(folder)  # a kill between the two renames of a checkpoint (or adapter/) folder
            remove_stale_temp_files(folder)
        why = finished_run_damage(run_dir)
        if why is None:
            if lora:
                fold_adapter(policy, weights)
            else:
                load_model(policy, str(weights))
            info = json.loads(done.read_text())
            return RunResult(weights, info["steps"], info.get("last", {}))
        if done.exists():  # a finished run whose result is damaged: train it again (seeded: same result)
            note(f"{run_dir} is damaged ({why}): training the run again")
            done.unlink()

    # The kernel is set before the anchor and compute copies are made, so they inherit it; ``policy`` gets
    # its own back at the end.
    with attention_kernel(policy, training_kernel(cfg, policy)):
        lora_run = LoraRun(cfg, policy, anchor_kind, seed) if lora else None
        clock.seconds["setup"] = time.perf_counter() - t_setup
        try:
            return _train(cfg, run_dir, policy, tokenizer, reward_fn, prompts, method, anchor_kind, seed, resume,
                          desc, sft_weights, base_name, lora_run, clock)
        finally:
            if lora_run is not None:
                lora_run.close()


def _train(cfg, run_dir, policy, tokenizer, reward_fn, prompts, method, anchor_kind, seed, resume, desc, sft_weights,
           base_name, lora_run: LoraRun | None, clock: PhaseClock) -> RunResult:
    t_setup = time.perf_counter()
    ckpt_root = run_dir / "checkpoints"
    if lora_run is None:
        # The anchor starts as a frozen copy of the initial weights (SFT anchor or EMA start point).
        anchor_master = copy.deepcopy(policy).eval()
        for p in anchor_master.parameters():
            p.requires_grad_(False)
        trainable = policy
        ema = anchor_master if anchor_kind == "ema" else None  # only an EMA anchor changes, so only it is saved
    else:  # the factors are what trains and what a checkpoint holds
        trainable, ema = lora_run.factors, lora_run.ema
    opt = optim.make_optimizer([p for p in trainable.parameters() if p.requires_grad], cfg.lr, kind=cfg.optimizer,
                               weight_decay=cfg.weight_decay)
    sft_model = None  # a frozen θ_sft for charts/kl_sft in the compute dtype, unless the SFT anchor is one already
    if lora_run is None and cfg.kl_sft_every and not (anchor_kind == "sft" and sft_weights is None):
        # The run's initial weights (taken before a checkpoint loads), cast on the way: no second fp32 model.
        sft_model = plain_copy(anchor_master, torch.bfloat16 if cfg.bf16 else None)
        if sft_weights is not None:
            # fp32 file into the compute dtype: the same rounding as a cast
            merge.load_streaming(sft_model, sft_weights)
    intact = intact_metrics_lines(run_dir / "metrics.jsonl") if resume else 0
    state = (load_checkpoint(ckpt_root, trainable, ema, opt, metrics_lines=intact) if resume else None) or LoopState()
    if lora_run is not None:
        mp_policy, mp_anchor, sft_of = lora_run.models(cfg.bf16, sft_weights, bool(cfg.kl_sft_every))
    else:
        # The bf16 copies keep q/k/v and gate/up as slices of one buffer: the rollout engine reads them as views.
        mp_policy = MixedPrecision(policy, cfg.bf16, prepare_copy=share_fused_storage)
        mp_anchor = MixedPrecision(anchor_master, cfg.bf16, trainable=False, prepare_copy=share_fused_storage)
        if cfg.bf16 and ema is None:
            mp_anchor.master = None  # a frozen anchor needs only its bf16 copy: free the fp32 one
        # θ_sft for charts/kl_sft: the frozen SFT anchor itself when there is one, else the frozen copy above.
        if cfg.kl_sft_every and sft_model is None:
            sft_model = mp_anchor.compute
        sft_of = None if sft_model is None else (lambda: sft_model)
        del anchor_master
    log = MetricsLog(run_dir / "metrics.jsonl", state.metrics_lines,
                     run_dir / "tensorboard" if cfg.tensorboard else None)
    sub_cfg = copy.copy(cfg)
    sub_cfg.anchor = anchor_kind
    last: dict = {}
    bar = tqdm(total=cfg.steps, initial=state.step, desc=desc or method, disable=not cfg.progress,
               dynamic_ncols=True, leave=False)
    clock.seconds["setup"] = clock.seconds.get("setup", 0.0) + time.perf_counter() - t_setup
    try:
        while state.step < cfg.steps:
            batch = prompt_batch(prompts, cfg.batch_size, seed, state.step * cfg.batch_size)
            try:
                measure = sft_of is not None and (state.step + 1) % cfg.kl_sft_every == 0
                sft = None
                if measure:
                    with clock("kl_sft"):
                        sft = sft_of()  # a LoRA run may build θ_sft for the measurement
                with clock("steps"):
                    last = rl_step(sub_cfg, mp_policy, mp_anchor, tokenizer, reward_fn, batch, state, opt, method,
                                   seed, sft=sft)
                if measure:
                    clock.move(last["time/kl_sft_s"], "steps", "kl_sft")
                del sft  # a model built for the measurement goes with it
            except NonFiniteError as e:
                ckpt = save_checkpoint(ckpt_root, state, trainable, ema, opt)
                raise NonFiniteError(f"{e}; stopped before the update, last good weights kept in {ckpt}") from None
            with clock("metrics"):
                log.write(last)
            state.metrics_lines = log.lines
            bar.update(1)
            bar.set_postfix(reward=f"{last['charts/reward_mean']:.3f}", kl=f"{last['charts/kl_mean']:.2f}")
            end = state.step == cfg.steps
            # No checkpoint after the last step: the run's weights and done.json, written next, supersede it (a
            # kill before done.json replays the steps after the last checkpoint, seeded: the same result).
            if not end and checkpoint_due(state.step, cfg.checkpoint_every, end):
                with clock("checkpoint"):
                    save_checkpoint(ckpt_root, state, trainable, ema, opt)
            stop_if_requested(state.step, end, desc or method)
    finally:
        bar.close()
        log.close()
    t_finish = time.perf_counter()
    kept = {k: v for k, v in last.items() if k != "samples/first"}
    if lora_run is None:
        weights = run_dir / "weights.safetensors"
        record = {"steps": state.step, "sha256": save_weights(policy, weights), "last": kept}
    else:
        del mp_policy, mp_anchor, sft_of
        weights = run_dir / ADAPTER_DIR
        atomic_dir(weights, lambda tmp: write_adapter(lora_run.factors, tmp, base=base_name))
        lora_run.fold()
        record = {"steps": state.step, "weights": f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS}",
                  "sha256": file_digest(weights / ADAPTER_WEIGHTS),
                  "config_sha256": file_digest(weights / ADAPTER_CONFIG), "last": kept}
    clock.seconds["finish"] = time.perf_counter() - t_finish  # the result and its sha256, before done.json
    record["time"] = clock.rounded()
    atomic_write_json(run_dir / "done.json", record)
    shutil.rmtree(ckpt_root, ignore_errors=True)  # the finished weights supersede the checkpoints
    return RunResult(weights, state.step, last)
