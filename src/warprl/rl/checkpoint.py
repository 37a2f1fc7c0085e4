"""A run's state on disk: atomic checkpoints (weights, EMA anchor, optimiser, loop scalars) and the metrics log.

Only what cannot be recomputed is saved: every random choice of a step is seeded from (run seed, step), so a
run restored from a checkpoint replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from warprl.errors import UserError, first_line
from warprl.io import atomic_write_json, atomic_write_text


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
    """Write ``checkpoints/step_N/`` atomically, then point ``checkpoints/latest.json`` at it."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{state.step:06d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(policy, str(tmp / "policy.safetensors"))
    if anchor is not None:
        save_model(anchor, str(tmp / "anchor.safetensors"))
    tensors, meta = optimizer_tensors(opt)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "state.json").write_text(json.dumps(state.__dict__))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(ckpt_root / "latest.json", {"checkpoint": name, "step": state.step})
    old = sorted(p for p in ckpt_root.glob("step_*") if p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(ckpt_root: Path, policy, anchor, opt) -> LoopState | None:
    """Restore the checkpoint named by ``latest.json`` (None if there is none yet)."""
    pointer = ckpt_root / "latest.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
        folder = ckpt_root / name
        load_model(policy, str(folder / "policy.safetensors"))
        if anchor is not None:
            load_model(anchor, str(folder / "anchor.safetensors"))
        load_optimizer_state(opt, load_file(str(folder / "optimizer.safetensors")),
                        json.loads((folder / "optimizer.json").read_text()))
        return LoopState(**json.loads((folder / "state.json").read_text()))
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot resume from {ckpt_root}: damaged checkpoint ({first_line(e, 120)})") from None


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
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.lines += 1
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
