"""`warprl align`: REINFORCE or RLOO (one run) or WARP (I × M runs, SLERP, LITI) into one output folder.

The order matters for safety: the folder is checked first (read only), every input is loaded, and only then
is the folder created, replaced (``--overwrite``) or given its ``config.yaml``, so a bad input never deletes
or starts a run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from warprl.commands import outdir
from warprl.config import AlignConfig
from warprl.data import load_prompts
from warprl.io import WriteError, atomic_write_json
from warprl.lora import find_targets
from warprl.models import load_policy, pick_device, save_model
from warprl.reward import load_reward
from warprl.rl.executors import check_ray_address, make_executor
from warprl.rl.loop import graceful_stop, run_rl
from warprl.rl.warp import RESUME_HINT, run_warp
from warprl.seeding import derive_seed


@contextmanager
def _resume_hint():
    """A failed write (disk full, …) ends the run with one line that says how to continue once it is fixed."""
    try:
        yield
    except WriteError as e:
        raise WriteError(f"{e} — {RESUME_HINT} once writing works again (free space, check the disk)") from None


def run_align(cfg: AlignConfig, reward_fn=None) -> dict:
    """Run ``cfg`` into ``cfg.out`` and return the summary (also written to ``summary.json``).

    ``reward_fn(prompts, completions) -> Tensor[B]`` overrides ``cfg.reward`` (library use, tests); with the
    Ray or processes executor it is pickled to the workers, and without it each worker loads ``cfg.reward``.
    """
    decision = outdir.check(cfg.out, outdir.ALIGN, resume=cfg.resume, overwrite=cfg.overwrite, cfg=cfg)
    device = pick_device(cfg.device)
    warp = cfg.method == "warp"
    workers = warp and cfg.executor != "sequential"  # Ray tasks or local processes train the runs
    if warp and cfg.executor == "ray" and cfg.ray_address:
        check_ray_address(cfg.ray_address)  # seconds, before minutes of loading
    # With workers the driver only writes and reads weight files: its copy stays off the workers' GPUs.
    policy, tok = load_policy(cfg.policy, device="cpu" if workers else device)
    if cfg.lora_r:
        find_targets(policy, cfg.lora_targets)  # a --lora-targets that names no layer: refused before the folder
    prompts = load_prompts(cfg.prompts, tok, split="train", n_tokens=cfg.prompt_tokens, seed=cfg.seed)
    if reward_fn is None and not workers:
        reward_fn = load_reward(cfg.reward, device=device, bf16=cfg.bf16)
    elif reward_fn is None and cfg.executor == "processes":
        # Each worker loads its own; loading it here once refuses a bad --reward before the folder is touched.
        load_reward(cfg.reward, device="cpu", bf16=cfg.bf16)
    executor = make_executor(cfg, device, policy, tok, reward_fn, prompts) if warp else None

    t0 = time.perf_counter()
    try:
        out = outdir.prepare(decision, cfg)
        with graceful_stop(), _resume_hint():
            if warp:
                rows = run_warp(cfg, out, policy, tok, executor)
            else:
                result = run_rl(cfg, out, policy, tok, reward_fn, prompts, method=cfg.method,
                                anchor_kind=cfg.anchor, seed=derive_seed(cfg.seed, "run", 0),
                                resume=decision.resume, desc=cfg.method, base_name=cfg.policy)
                # final/ around the run's own weights file (linked); a LoRA run's is an adapter: the merged policy
                save_model(policy, tok, out / "final", weights_file=None if cfg.lora_r else result.weights)
    finally:
        if executor is not None:
            executor.close()

    seconds = round(time.perf_counter() - t0, 2)
    if warp:
        summary = {
            "method": "warp", "inner": cfg.inner, "executor": cfg.executor, "out": str(out),
            "final": str(out / "final"), "final_slerp": str(out / "final_slerp"), "sft": cfg.policy,
            "iterations": cfg.iterations, "runs": cfg.runs, "steps_per_run": cfg.steps, "train_seconds": seconds,
            **{k: v for k, v in rows[-1].items() if k.startswith("charts/")},
        }
    else:
        summary = {"method": cfg.method, "out": str(out), "final": str(out / "final"), "steps": result.steps,
                   "train_seconds": seconds,
                   **{k: v for k, v in result.last_metrics.items() if k.startswith(("charts/reward", "charts/kl"))}}
    with _resume_hint():
        atomic_write_json(out / "summary.json", summary)
    return summary
