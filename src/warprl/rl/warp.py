"""WARP (Ramé et al., 2024): iterated, merged RL runs with an EMA anchor.

    θ_init ← θ_sft
    for i in 1..I:
        for m in 1..M:                     # independent runs: own seed and prompt order (executor)
            θ_m ← T steps of RL on r − β·KL(π_θm ‖ π_ema) starting from θ_init, EMA anchor (train.run_rl)
        θ_slerp ← SLERP(θ_init, {θ_m}, λ)  # spherical merge of the task vectors θ_m − θ_init
        θ_init  ← (1−η)·θ_init + η·θ_slerp # LITI
    output θ_init (final/) and the last θ_slerp (final_slerp/)

Every weight set of the loop lives in a safetensors file and merges stream tensor by tensor
(:func:`warprl.merge.merge_files`), so the driver never holds more than one model: the sequential executor
trains the M runs one after the other in a single model instance; the processes executor runs them side by side
in local worker processes and the Ray executor as tasks on a cluster, each worker holding its own one
(:mod:`warprl.rl.executors`).

Output folder::

    DIR/config.yaml                     resolved settings (a resume must match them)
    DIR/sft.safetensors                 θ_sft, the first θ_init
    DIR/iter_<i>/run_<m>/               one RL run (metrics.jsonl, checkpoints/, weights.safetensors, done.json;
                                        with --lora-r adapter/ instead of weights.safetensors: ΔW = s·B·A)
    DIR/iter_<i>/slerp.safetensors      merge of the M runs
    DIR/iter_<i>/init.safetensors       θ_init after LITI (the next iteration's start)
    DIR/iter_<i>/iteration.json         the iteration's metrics row; written last = the iteration is done
    DIR/metrics.jsonl                   one row per finished iteration
    DIR/final/, DIR/final_slerp/        HF folders of the final θ_init and the last θ_slerp (weights linked)
    DIR/summary.json

Resume reads the state from disk: finished runs (done.json), merges (their files) and iterations
(iteration.json) are skipped; an unfinished run continues from its checkpoint. Every file is written to a
temporary name and renamed, so a kill at any moment leaves either the old state or the new one, never half
a file. With fixed seeds on a CPU the resumed result is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from warprl import lora_merge, merge
from warprl.config import AlignConfig
from warprl.errors import UserError
from warprl.io import (
    atomic_write_json,
    atomic_write_text,
    damage,
    file_digest,
    recorded_digest,
    recover_dirs,
    remove_stale_temp_files,
    save_weights,
    write_digest,
)
from warprl.models import save_model as save_hf
from warprl.rl.adapters import ADAPTER_DIR
from warprl.rl.checkpoint import finished_run_damage, intact_metrics_lines, note
from warprl.rl.loop import PhaseClock, RunInterrupted, StopFlag, run_rl
from warprl.seeding import derive_seed

RESUME_HINT = "rerun the same command with --resume to continue"


# ------------------------------------------------------------------------------------------------- layout


def iter_dir(out: Path, i: int) -> Path:
    return out / f"iter_{i}"


def run_dir(out: Path, i: int, m: int) -> Path:
    return iter_dir(out, i) / f"run_{m}"


def init_path(out: Path, i: int) -> Path:
    """θ_init at the *start* of iteration ``i``: θ_sft for i = 1, else the previous iteration's LITI."""
    return out / "sft.safetensors" if i == 1 else iter_dir(out, i - 1) / "init.safetensors"


def run_seed(seed: int, i: int, m: int) -> int:
    return derive_seed(seed, "iter", i, "run", m)


def run_finished(path: Path) -> bool:
    # Same test as run_rl: done.json (written after weights.safetensors) holds the weights' sha256.
    return finished_run_damage(path) is None


def reusable(path: Path) -> bool:
    """A weights file written earlier whose ``.sha256`` matches; a damaged one is named on stderr (and redone)."""
    why = damage(path)
    if why is not None and why not in ("missing", "no recorded sha256"):
        note(f"{path} is damaged ({why}): computing it again")
    return why is None


# ---------------------------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunJob:
    """Everything a run needs besides the model, reward and prompts (picklable: it travels to Ray workers)."""

    iteration: int
    run: int
    run_dir: str
    init_path: str
    seed: int
    desc: str
    sft_path: str = ""  # θ_sft, for the run's charts/kl_sft (KL to the SFT policy, not to θ_init or the EMA)


def train_run(cfg: AlignConfig, job: RunJob, policy, tok, reward_fn, prompts: list[str]) -> None:
    """θ_m ← θ_init, then T steps of RL with an EMA anchor; run_rl writes the run folder."""
    clock = PhaseClock()
    with clock("load_init"):
        merge.load_streaming(policy, job.init_path)  # the anchor is copied from these weights inside run_rl
    # resume=True is always right here: prepare_out_dir validated the WARP folder once, so anything already
    # in a run folder was made with these settings (and a Ray task retried after a crash continues).
    # θ_sft is the run's own start in iteration 1: run_rl copies it instead of reading the file again.
    sft = Path(job.sft_path) if job.sft_path and job.sft_path != job.init_path else None
    run_rl(cfg, Path(job.run_dir), policy, tok, reward_fn, prompts, method=cfg.inner, anchor_kind="ema",
           seed=job.seed, resume=True, desc=job.desc, sft_weights=sft,
           base_name=os.path.relpath(job.init_path, job.run_dir), clock=clock)  # base: wherever --out moves


def check_stop(where: str) -> None:
    """Raise RunInterrupted (finished runs and merges kept) once SIGINT/SIGTERM asked the command to stop."""
    if StopFlag.requested:
        raise RunInterrupted(f"stopped by {StopFlag.requested} {where}; finished runs and merges are kept — "
                             f"{RESUME_HINT}")


# ----------------------------------------------------------------------------------------------- merges


def task_vector_stats(init: str | Path, paths: list[str | Path], gram: list[list[float]] | None = None
                      ) -> dict[str, float | None]:
    """The norms of the task vectors θ_m − θ_init and their mean pairwise angle (degrees), in one streaming pass
    (or from their Gram matrix ``gram``, e.g. of LoRA runs' ΔW).

    The angle is None where undefined (one run, or a zero task vector): JSON has no NaN.
    """
    m = len(paths)
    gram = merge.task_vector_gram_files(init, paths) if gram is None else gram
    angles = [merge.angle_degrees(gram[a][b], gram[a][a], gram[b][b]) for a in range(m) for b in range(a + 1, m)]
    defined = m > 1 and not any(math.isnan(x) for x in angles)
    return {"charts/task_vector_angle_deg": sum(angles) / len(angles) if defined else None,
            "charts/task_vector_norm_mean": sum(math.sqrt(gram[a][a]) for a in range(m)) / m}


def write_merge(out_file: Path, init: Path, paths: list[Path], op: str, adapters: bool = False, **kw) -> float:
    """merge_files into ``out_file`` (atomically: temp file, fsync, rename), then its ``.sha256``; returns the
    seconds it took. With ``adapters``, ``paths`` are LoRA runs' adapter folders (lora_merge)."""
    t0 = time.perf_counter()
    digest = (lora_merge.merge_adapter_files if adapters else merge.merge_files)(init, paths, out_file, op, **kw)
    write_digest(out_file, digest)
    return time.perf_counter() - t0


def _last_row(metrics_file: Path) -> dict:
    n = intact_metrics_lines(metrics_file)
    return json.loads(metrics_file.read_text().splitlines()[n - 1]) if n else {}


def _last_value(metrics_file: Path, key: str) -> float | None:
    """The last value of ``key`` in a metrics log (logged every few steps only, e.g. charts/kl_sft)."""
    lines = metrics_file.read_text().splitlines() if metrics_file.is_file() else []
    return next((json.loads(x)[key] for x in reversed(lines) if f'"{key}"' in x), None)


def _mean(values: list[float | None]) -> float | None:
    return statistics.fmean(v for v in values if v is not None) if any(v is not None for v in values) else None


def merge_iteration(cfg: AlignConfig, out: Path, i: int) -> dict:
    """SLERP of the M runs, LITI towards θ_init, and the iteration's metrics row (skipping what exists)."""
    idir, init = iter_dir(out, i), init_path(out, i)
    lora = cfg.lora_r > 0  # a LoRA run's task vector: its ΔW = s·B·A per adapted matrix (lora_merge)
    runs = [run_dir(out, i, m) / (ADAPTER_DIR if lora else "weights.safetensors") for m in range(1, cfg.runs + 1)]
    slerp_file, next_init = idir / "slerp.safetensors", idir / "init.safetensors"
    seconds = {"time/slerp_s": 0.0, "time/liti_s": 0.0}
    lam = cfg.lam if cfg.runs == 2 else None  # λ weighs two runs; with more, SLERP uses 1/m weights (merge.slerp)
    gram = lora_merge.task_vector_gram_adapters(runs) if lora else None
    slerp_done, init_done = reusable(slerp_file), reusable(next_init)  # once each: a hash, a note if damaged
    if not lora and not slerp_done and not init_done:
        # The usual case: one pass over the runs gives the SLERP, its LITI and the Gram matrix.
        t0 = time.perf_counter()
        gram, *digests = merge.merge_liti_files(init, runs, slerp_file, next_init, cfg.merge, eta=cfg.eta, lam=lam)
        for path, digest in zip((slerp_file, next_init), digests, strict=True):
            write_digest(path, digest)
        seconds["time/slerp_s"] = time.perf_counter() - t0  # the LITI included (time/liti_s stays 0)
    else:  # LoRA runs, or a resume that finds one of the two files intact: each missing one on its own
        if not slerp_done:
            seconds["time/slerp_s"] = write_merge(slerp_file, init, runs, cfg.merge, lam=lam, adapters=lora)
        if not init_done:
            seconds["time/liti_s"] = write_merge(next_init, init, [slerp_file], "liti", eta=cfg.eta)
    last = [_last_row(run_dir(out, i, m) / "metrics.jsonl") for m in range(1, cfg.runs + 1)]
    row = {"iteration": i, "step": i * cfg.steps, **task_vector_stats(init, runs, gram)}
    # charts/kl_anchor (= charts/kl_mean): the runs' last KL to their EMA anchor; charts/kl_sft: their last
    # measured KL to θ_sft (the KL of the merged θ_init is what `warprl evaluate` measures).
    for key in ("charts/reward_mean", "charts/kl_anchor", "charts/kl_mean", "charts/kl_sft",
                "charts/reward_kl_regularised"):
        row[key] = _mean([_last_value(run_dir(out, i, m) / "metrics.jsonl", key) for m in range(1, cfg.runs + 1)]
                         if key == "charts/kl_sft" else [r[key] for r in last if key in r])
    # Where the runs' time went (summed over the M runs, from their done.json): steps and everything around them.
    phases = [json.loads((run_dir(out, i, m) / "done.json").read_text()).get("time", {}) for m in range(1, cfg.runs + 1)]
    row.update({f"time/run_{k}_s": round(sum(t.get(k, 0.0) for t in phases), 3) for k in sorted(set().union(*phases))})
    row.update({k: round(v, 3) for k, v in seconds.items()})
    row["time/merge_s"] = round(seconds["time/slerp_s"] + seconds["time/liti_s"], 3)
    return row


# ------------------------------------------------------------------------------------------- the driver




def _read_row(done_file: Path, i: int) -> dict | None:
    """An iteration's committed metrics row, or None (not done yet, or a damaged file: the iteration is redone)."""
    if not done_file.exists():
        return None
    try:
        row = json.loads(done_file.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        row = None
    if isinstance(row, dict) and row.get("iteration") == i:
        return row
    note(f"{done_file} is damaged: finishing iteration {i} again")
    return None


def write_sft(cfg: AlignConfig, path: Path, policy) -> None:
    """θ_sft into ``sft.safetensors`` (+ ``.sha256``), unless an intact copy is there. A resume whose --policy now
    holds other weights than the recorded ones is refused: the runs so far started from those."""
    if damage(path) is None:
        return
    recorded = recorded_digest(path)

    def check(tmp: str) -> None:
        if recorded is not None and file_digest(tmp) != recorded:
            raise UserError(f"--policy {cfg.policy} holds other weights than the ones this run started from "
                            f"({path}.sha256); resume with the same policy or choose another --out")

    why = damage(path) if recorded is not None and path.exists() else None
    write_digest(path, save_weights(policy, path, check))
    if why:
        note(f"{path} was damaged ({why}): written again")


def run_warp(cfg: AlignConfig, out: Path, policy, tok, executor) -> list[dict]:
    """I iterations of M runs, SLERP and LITI in ``out``; writes ``final/`` and ``final_slerp/``.

    Returns the iterations' metrics rows. Everything already on disk (finished runs, merges, iterations) is
    skipped, so calling it again on an interrupted folder resumes it. Call inside :func:`graceful_stop`.
    """
    rows: list[dict] = []
    recover_dirs(out)  # a kill between atomic_dir's two renames (final/, final_slerp/) left the old copy aside
    remove_stale_temp_files(out)
    write_sft(cfg, init_path(out, 1), policy)
    for i in range(1, cfg.iterations + 1):
        idir, done_file = iter_dir(out, i), iter_dir(out, i) / "iteration.json"
        row = _read_row(done_file, i)
        if row is not None and reusable(idir / "slerp.safetensors") and reusable(idir / "init.safetensors"):
            rows.append(row)
            continue
        remove_stale_temp_files(idir)
        for m in range(1, cfg.runs + 1):
            run = run_dir(out, i, m)
            if run_finished(run):  # a kill can land between done.json and removing the checkpoints
                shutil.rmtree(run / "checkpoints", ignore_errors=True)
        jobs = [RunJob(i, m, str(run_dir(out, i, m)), str(init_path(out, i)), run_seed(cfg.seed, i, m),
                       f"iter {i}/{cfg.iterations} run {m}/{cfg.runs}", str(init_path(out, 1)))
                for m in range(1, cfg.runs + 1) if not run_finished(run_dir(out, i, m))]
        t_runs = time.perf_counter()
        executor.run(jobs)
        runs_s = time.perf_counter() - t_runs
        check_stop(f"after the runs of iteration {i}")
        merged = merge_iteration(cfg, out, i)  # only what is missing or damaged is computed again
        if row is None:
            row = {**merged, "time/runs_s": round(runs_s, 3)}
            # iteration.json is the iteration's commit point; metrics.jsonl is rebuilt from all of them.
            atomic_write_json(done_file, row)
        rows.append(row)
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        check_stop(f"after iteration {i}")
    last = iter_dir(out, cfg.iterations)
    # final_slerp first: final/ marks the folder as finished (the output-folder policy). Weights: linked files.
    save_hf(policy, tok, out / "final_slerp", weights_file=last / "slerp.safetensors")
    save_hf(policy, tok, out / "final", weights_file=last / "init.safetensors")
    return rows
