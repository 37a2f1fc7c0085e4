"""The reward–KL Pareto front: the η sweep θ_η = (1−η)·θ_sft + η·θ_final, baselines, and the front maths.

WARP's claim is a better front: at any KL budget its policies reach a higher reward. The sweep makes the
front visible for one aligned policy (every η is a policy you could ship), and baselines (other `warprl
align` runs, e.g. RLOO at several β) are plotted beside it, as single points or as their own η sweeps.

Memory: only two models live at once, the SFT model (needed for the KL anyway) and the model being
evaluated. The interpolated weights are written into the latter tensor by tensor, streaming θ_final from its
safetensors file(s) (:func:`warprl.merge.open_streaming`, :func:`warprl.merge.interpolate`), so no third copy
and no temporary files are needed.

Rendering (plot, Markdown, README) is :mod:`warprl.eval.report`; the `warprl pareto` command that checks the
inputs and the output folder and writes the files is :mod:`warprl.commands.evaluate`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from warprl import merge
from warprl.config import EvalConfig, EvalSettings, ParetoConfig, derive
from warprl.errors import UserError
from warprl.eval.evaluate import eval_prompts, evaluate_policy, load_scorers
from warprl.models import load_policy, pick_device, resolve
from warprl.precision import compute_copy


def eta_grid(steps: int) -> list[float]:
    """``[0, 1/steps, …, 1]`` with exact endpoints (η = 0 must be the SFT weights bit for bit)."""
    return [round(i / steps, 6) for i in range(steps + 1)]


def eval_settings(cfg: EvalSettings) -> EvalConfig:
    """The evaluation settings of a pareto sweep (its shared EvalSettings section) as an EvalConfig."""
    return derive(EvalConfig, cfg)


# ------------------------------------------------------------------------------- streamed interpolation


def model_folder(spec: str) -> Path:
    """The HF folder of a local model spec: an HF folder or a `warprl align` output folder (its ``final/``)."""
    resolved = resolve(spec, "policy")  # the same rules as every other model spec, and the same errors
    if resolved.kind != "folder" or resolved.alias:
        raise UserError(f"{spec}: the η sweep streams safetensors weights: give an HF folder or a run folder")
    return Path(resolved.location)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors file(s) of an HF folder, sharded or not."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no .safetensors weights (the η sweep streams safetensors files)")
    return files


@torch.no_grad()
def set_interpolated_weights(policy, sft, final_files: list[Path], eta: float) -> None:
    """Write θ_η = (1−η)·θ_sft + η·θ_final into ``policy`` in place, one tensor at a time.

    ``sft`` is not modified. Each tensor goes through :func:`warprl.merge.interpolate` (fp32 math, exact
    endpoints). Tensors the file does not hold must be tied to one it does (e.g. ``lm_head`` = embeddings).
    :func:`warprl.merge.merge_files` does not fit here: it writes a new file and holds the whole result.
    """
    target = policy.state_dict()
    source = sft.state_dict()
    device = next(policy.parameters()).device
    written: set[int] = set()
    for path in final_files:
        with merge.open_streaming(path, str(device)) as f:
            for name in f.keys():
                if name not in target:
                    raise UserError(f"{path}: tensor '{name}' is not in the SFT model: is θ_final fine-tuned from it?")
                try:
                    value = merge.interpolate({name: source[name]}, {name: f.get_tensor(name)}, eta)[name]
                except ValueError as e:
                    raise UserError(f"θ_final does not match the SFT model: {e}") from None
                target[name].copy_(value)
                written.add(target[name].data_ptr())
    missing = [n for n, t in target.items() if t.data_ptr() not in written and t.is_floating_point()]
    if missing:
        raise UserError(f"θ_final lacks {len(missing)} tensors of the SFT model (e.g. '{missing[0]}')")


# ------------------------------------------------------------------------------------------- the runs


@dataclass
class Series:
    """One curve or point cloud on the plot."""

    name: str  # legend label
    kind: str  # "sweep" (η from 0 to 1) or "points"
    source: str = ""
    points: list[dict] = field(default_factory=list)  # metrics (+ eta or label) + samples


def run_label(run_dir: Path) -> tuple[str, str]:
    """(method, label) of a `warprl align` output folder from its config.yaml, e.g. ("rloo", "RLOO β=0.05")."""
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        return "model", run_dir.name
    try:
        c = yaml.safe_load(cfg_file.read_text()) or {}
    except yaml.YAMLError:
        return "model", run_dir.name
    method = str(c.get("method", "model"))
    if method == "warp":
        label = f"WARP I={c.get('iterations')} M={c.get('runs')} T={c.get('steps')} β={c.get('beta')}"
    elif method in ("rloo", "reinforce"):
        label = f"{method.upper()} T={c.get('steps')} β={c.get('beta')}"
    else:
        label = run_dir.name
    return method, label


def run_folder(spec: str) -> Path:
    """The run folder above a model folder (where config.yaml lives), or the folder itself."""
    folder = model_folder(spec)
    return folder.parent if folder.name == "final" else folder


class Evaluator:
    """Holds the SFT model, the scorers and the prompts; evaluates weights given as files or folders."""

    def __init__(self, sft_spec: str, ecfg: EvalConfig, reward: str, judge: str, progress: bool,
                 scorers: tuple | None = None):
        """``scorers`` = (reward_fn, judge_fn) replaces loading ``reward`` and ``judge`` (library use, tests)."""
        self.device = pick_device(ecfg.device)
        self.sft, self.tok = load_policy(sft_spec, device=self.device)  # fp32: the source of every θ_η
        self.sft_spec = sft_spec
        # What is evaluated: bf16 copies with bf16 (see warprl.evaluate), cast once here, not at every point.
        self.sft_eval = compute_copy(self.sft, ecfg.bf16)
        # The one model whose weights change from point to point (θ_η computed in fp32, stored in its dtype).
        self.work = compute_copy(self.sft, ecfg.bf16) if ecfg.bf16 else copy.deepcopy(self.sft)
        self.reward_fn, self.judge_fn = scorers or load_scorers(reward, judge, self.device, ecfg.bf16,
                                                                ecfg.batch_size * 2)
        self.prompts = eval_prompts(ecfg, self.tok)
        self.ecfg = ecfg
        self.progress = progress
        self._sft_result: dict | None = None

    def at_eta(self, final: Path, eta: float, desc: str) -> dict:
        if eta == 0.0:
            # θ_0 is θ_sft for every run: evaluate the SFT model itself, once (same seed, same numbers).
            if self._sft_result is None:
                self._sft_result = evaluate_policy(self.sft_eval, self.tok, self.sft_eval, self.reward_fn,
                                                   self.judge_fn, self.prompts, self.ecfg, progress=self.progress,
                                                   desc=desc)
            return dict(self._sft_result)
        set_interpolated_weights(self.work, self.sft, weight_files(final), eta)
        return evaluate_policy(self.work, self.tok, self.sft_eval, self.reward_fn, self.judge_fn, self.prompts,
                               self.ecfg, progress=self.progress, desc=desc)

    def sweep(self, final: Path, etas: list[float], name: str) -> list[dict]:
        rows = []
        for eta in tqdm(etas, desc=f"η sweep {name}", disable=not self.progress, dynamic_ncols=True):
            rows.append({"eta": eta, **self.at_eta(final, eta, desc=f"η={eta:g}")})
        return rows

    def point(self, folder: Path, label: str) -> dict:
        # θ_1 of the sweep is the folder's own weights, copied exactly (shape checks catch another model).
        return {"label": label, **self.at_eta(folder, 1.0, desc=label)}


def pareto_sweep(cfg: ParetoConfig, ev: Evaluator) -> tuple[list[Series], list[dict], dict]:
    """Evaluate the η sweep of ``cfg.final``, its last SLERP and the baselines; compare the fronts."""
    final = model_folder(cfg.final)
    baselines = [model_folder(b) for b in cfg.baseline]
    etas = eta_grid(cfg.eta_steps)
    method, label = run_label(run_folder(cfg.final))
    series = [Series(label, "sweep", str(final), ev.sweep(final, etas, method.upper()))]
    slerp = final.parent / "final_slerp"
    if cfg.include_slerp and final.name == "final" and (slerp / "config.json").is_file():
        series.append(Series("WARP last SLERP (before LITI)", "points", str(slerp),
                             [ev.point(slerp, "last SLERP")]))
    by_method: dict[str, Series] = {}
    for b in baselines:
        b_method, b_label = run_label(run_folder(str(b)))
        if cfg.sweep_baselines:
            series.append(Series(b_label, "sweep", str(b), ev.sweep(b, etas, b_method.upper())))
        else:  # one series per method, one point per run (e.g. RLOO at several β)
            s = by_method.setdefault(b_method, Series(b_method.upper(), "points", ""))
            s.points.append(ev.point(b, b_label))
    series += list(by_method.values())
    comparisons = [compare_fronts(series[0], s) for s in series[1:]]
    # Another full front is also compared the other way round: is it above the main one at the main one's KLs?
    comparisons += [compare_fronts(s, series[0]) for s in series[1:] if s.kind == "sweep"]
    meta = {"sft": cfg.sft, "final": str(final), "reward": cfg.reward, "judge": cfg.judge, "prompts": cfg.prompts,
            "n_prompts": len(ev.prompts), "samples_per_prompt": cfg.samples_per_prompt,
            "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "seed": cfg.seed}
    return series, comparisons, meta


# ------------------------------------------------------------------------------------ front comparison


def pareto_points(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (KL, reward) points, sorted by KL: each has a higher reward than all at lower KL."""
    front: list[tuple[float, float]] = []
    for kl, r in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or r > front[-1][1]:
            front.append((kl, r))
    return front


def front_reward_at(points: list[tuple[float, float]], kl: float) -> float | None:
    """The front's reward at a KL budget: linear between non-dominated points, flat after the last one.

    None below the smallest KL of the front (nothing there to compare with).
    """
    front = pareto_points(points)
    if not front or kl < front[0][0]:
        return None
    for (k0, r0), (k1, r1) in zip(front, front[1:], strict=False):
        if k0 <= kl <= k1:
            return r0 if k1 == k0 else r0 + (r1 - r0) * (kl - k0) / (k1 - k0)
    return front[-1][1]


def compare_fronts(a: Series, b: Series) -> dict:
    """For each point of ``b``: the reward of ``a``'s front at the same KL, and the difference a − b."""
    a_pts = [(p["kl_mean"], p["reward_mean"]) for p in a.points]
    rows = []
    for p in b.points:
        ra = front_reward_at(a_pts, p["kl_mean"])
        rows.append({"point": f"η={p['eta']:g}" if "eta" in p else p.get("label", ""), "kl": p["kl_mean"],
                     "reward_b": p["reward_mean"], "reward_a": ra,
                     "delta": None if ra is None else ra - p["reward_mean"],
                     "beyond": bool(a_pts) and p["kl_mean"] > max(k for k, _ in a_pts)})
    # Left out of the verdict: η = 0 (the SFT model in both, a tie by construction) and points beyond a's
    # largest KL (a's flat extension there is a bound, not a measurement at that KL).
    deltas = [r["delta"] for r in rows if r["delta"] is not None and r["kl"] > 1e-6 and not r["beyond"]]
    return {"a": a.name, "b": b.name, "rows": rows, "matched": len(deltas),
            "a_above": sum(d > 0 for d in deltas), "mean_delta": sum(deltas) / len(deltas) if deltas else None,
            "beyond": sum(r["beyond"] for r in rows)}
