"""A run's state on disk: atomic checkpoints (weights, EMA anchor, optimiser, loop scalars) and the metrics log.

Only what cannot be recomputed is saved: every random choice of a step is seeded from (run seed, step), so a
run restored from a checkpoint replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from warprl.errors import UserError, first_line
from warprl.io import append_line, atomic_dir, atomic_write_json, atomic_write_text, damage, file_digest

DIGESTS = "sha256.json"  # inside a checkpoint folder: the sha256 of each of its other files


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {f"{idx}.{name}": t.detach().contiguous().clone() for idx, st in sd["state"].items()
               for name, t in st.items() if torch.is_tensor(t)}
    scalars = {f"{idx}.{name}": v for idx, st in sd["state"].items() for name, v in st.items()
               if not torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass
class LoopState:
    step: int = 0  # completed steps
    baseline: float | None = None  # REINFORCE moving-average baseline
    metrics_lines: int = 0  # lines of metrics.jsonl that belong to the completed steps


def save_checkpoint(ckpt_root: Path, state: LoopState, policy, anchor, opt, keep: int = 2) -> Path:
    """Write ``checkpoints/step_N/`` atomically (with the sha256 of its files), then point ``latest.json`` at it."""
    name = f"step_{state.step:06d}"
    final = ckpt_root / name

    def fill(tmp: Path) -> None:
        save_model(policy, str(tmp / "policy.safetensors"))
        if anchor is not None:
            save_model(anchor, str(tmp / "anchor.safetensors"))
        tensors, meta = optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        (tmp / "state.json").write_text(json.dumps(state.__dict__))
        digests = {f.name: file_digest(f) for f in sorted(tmp.iterdir())}
        (tmp / DIGESTS).write_text(json.dumps(digests, sort_keys=True))

    atomic_dir(final, fill)
    atomic_write_json(ckpt_root / "latest.json", {"checkpoint": name, "step": state.step})
    old = sorted(p for p in ckpt_root.glob("step_*") if p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _checkpoint_damage(folder: Path, anchor: bool) -> str | None:
    """Why a checkpoint folder cannot be trusted, or None. Folders from before the digests: files present."""
    names = ["policy.safetensors", "optimizer.safetensors", "optimizer.json", "state.json"]
    names += ["anchor.safetensors"] if anchor else []
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        return f"{missing[0]} missing"
    try:
        digests = json.loads((folder / DIGESTS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"{DIGESTS} damaged"
    if not isinstance(digests, dict):
        return f"{DIGESTS} damaged"
    for n in names:
        why = damage(folder / n, str(digests.get(n, "")))
        if why:
            return f"{n}: {why}"
    return None


def intact_metrics_lines(path: Path) -> int:
    """How many leading lines of a run's ``metrics.jsonl`` are whole rows of steps 1, 2, … in order."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return 0
    n = 0
    for line in text.splitlines(keepends=True):
        try:
            row = json.loads(line) if line.endswith("\n") else None
        except ValueError:
            row = None
        if not isinstance(row, dict) or row.get("step") != n + 1:
            break
        n += 1
    return n


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def load_checkpoint(ckpt_root: Path, policy, anchor, opt, metrics_lines: int | None = None) -> LoopState | None:
    """Restore the newest checkpoint that is intact (its files match their sha256) and whose metrics rows are
    intact (``metrics_lines``: how many leading rows of metrics.jsonl are whole; None: not checked).

    Returns None when there is none: the run then starts again from its first step, which with seeded steps
    gives the same result. Each checkpoint passed over is named on stderr.
    """
    folders = sorted((p for p in ckpt_root.glob("step_*") if p.is_dir()), reverse=True)
    for folder in folders:
        why = _checkpoint_damage(folder, anchor is not None)
        state = None
        if why is None:
            try:
                state = LoopState(**json.loads((folder / "state.json").read_text()))
            except (OSError, ValueError, TypeError):
                why = "state.json damaged"
        if state is not None and metrics_lines is not None and state.metrics_lines > metrics_lines:
            why = f"metrics.jsonl holds only {metrics_lines} intact rows of its {state.metrics_lines}"
        if why is not None:
            note(f"passing over the checkpoint {folder} ({why})")
            continue
        try:
            load_model(policy, str(folder / "policy.safetensors"))
            if anchor is not None:
                load_model(anchor, str(folder / "anchor.safetensors"))
            load_optimizer_state(opt, load_file(str(folder / "optimizer.safetensors")),
                            json.loads((folder / "optimizer.json").read_text()))
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"cannot resume from {folder}: damaged checkpoint ({first_line(e, 120)})") from None
        return state
    if folders:
        note(f"no intact checkpoint in {ckpt_root}: the run starts again from its first step")
    return None


def finished_run_damage(run_dir: Path) -> str | None:
    """Why a run folder's ``done.json`` + its result cannot be reused, or None (a finished run). The result is
    ``weights.safetensors``, or for a LoRA run the file ``done.json`` names (``adapter/adapter_model.safetensors``,
    with ``config_sha256`` for the ``adapter_config.json`` beside it)."""
    try:
        done = json.loads((run_dir / "done.json").read_text())
    except FileNotFoundError:
        return "done.json missing"
    except (OSError, ValueError):
        return "done.json damaged"
    if not isinstance(done, dict) or "steps" not in done:
        return "done.json damaged"
    name = str(done.get("weights", "weights.safetensors"))
    weights = run_dir / name
    if "sha256" not in done:  # written before the digests: trust a present file
        return None if weights.is_file() else f"{name} missing"
    why = damage(weights, str(done["sha256"]))
    if why:
        return f"{name}: {why}"
    if "config_sha256" in done:
        config = weights.parent / "adapter_config.json"
        why = damage(config, str(done["config_sha256"]))
        return f"{config.relative_to(run_dir)}: {why}" if why else None
    return None


# -------------------------------------------------------------------------------------------- metrics


class MetricsLog:
    """Append-only JSONL (one object per step), optionally mirrored to TensorBoard."""

    def __init__(self, path: Path, keep_lines: int, tensorboard_dir: Path | None = None):
        self.path = path
        # A resumed run drops the lines written after its checkpoint: they will be written again.
        lines = path.read_text().splitlines(keepends=True)[:keep_lines] if path.exists() else []
        atomic_write_text(path, "".join(lines))
        self.lines = len(lines)
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install 'warprl[tensorboard]'") from None
            self.tb = SummaryWriter(str(tensorboard_dir))

    def write(self, row: dict) -> None:
        append_line(self.path, json.dumps(row))
        self.lines += 1
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
