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
from warprl.eval import stats
from warprl.eval.evaluate import eval_prompts, evaluate_policy, load_gold, load_scorers
from warprl.eval.stats import front_reward_at, pareto_points  # noqa: F401  (re-exported: the front maths)
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
    source = sft.state_dict()
    try:
        merge.load_streaming(policy, final_files,
                             lambda name, t: merge.interpolate({name: source[name]}, {name: t}, eta)[name])
    except ValueError as e:  # another architecture: a tensor the SFT model lacks, or one of another shape
        raise UserError(f"θ_final does not match the SFT model: {e}") from None


# ------------------------------------------------------------------------------------------- the runs


@dataclass
class Series:
    """One curve or point cloud on the plot."""

    name: str  # legend label
    kind: str  # "sweep" (η from 0 to 1) or "points"
    source: str = ""
    points: list[dict] = field(default_factory=list)  # metrics (+ eta or label) + samples
    # With several training seeds: each seed's own points; ``points`` are then their means over seeds, with
    # across-seed intervals (``reward_ci``, ``kl_ci``, … and ``n_seeds``), see :func:`mean_over_seeds`.
    seeds: list[list[dict]] = field(default_factory=list)


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
    if method in ("warp", "rloo", "reinforce") and c.get("lora_r"):
        label += f" LoRA r={c['lora_r']}"
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
        self.gold_fn = load_gold(ecfg.gold, self.device, ecfg.bf16, ecfg.batch_size * 2) if ecfg.gold else None
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
                                                   desc=desc, gold_fn=getattr(self, "gold_fn", None))
            return dict(self._sft_result)
        set_interpolated_weights(self.work, self.sft, weight_files(final), eta)
        return evaluate_policy(self.work, self.tok, self.sft_eval, self.reward_fn, self.judge_fn, self.prompts,
                               self.ecfg, progress=self.progress, desc=desc, gold_fn=getattr(self, "gold_fn", None))

    def sweep(self, final: Path, etas: list[float], name: str) -> list[dict]:
        rows = []
        for eta in tqdm(etas, desc=f"η sweep {name}", disable=not self.progress, dynamic_ncols=True):
            rows.append({"eta": eta, **self.at_eta(final, eta, desc=f"η={eta:g}")})
        return rows

    def point(self, folder: Path, label: str) -> dict:
        # θ_1 of the sweep is the folder's own weights, copied exactly (shape checks catch another model).
        return {"label": label, **self.at_eta(folder, 1.0, desc=label)}


def seed_group(spec: str) -> list[str]:
    """The run folders of one series: ``A`` or ``A,B,C`` (the same config trained with different seeds)."""
    return [part.strip() for part in spec.split(",") if part.strip()]


def pareto_sweep(cfg: ParetoConfig, ev: Evaluator) -> tuple[list[Series], list[dict], dict]:
    """Evaluate the η sweep of ``cfg.final``, its last SLERP and the baselines; compare the fronts.

    ``cfg.final`` and each baseline may list several run folders separated by commas (one per training
    seed): their series is then the mean over seeds, with across-seed intervals.
    """
    finals = [model_folder(f) for f in seed_group(cfg.final)]
    etas = eta_grid(cfg.eta_steps)
    method, label = run_label(run_folder(str(finals[0])))
    series = [sweep_series(ev, finals, etas, label, method)]
    slerps = [f.parent / "final_slerp" for f in finals]
    if cfg.include_slerp and all(f.name == "final" and (s / "config.json").is_file() for f, s in zip(finals, slerps,
                                                                                                     strict=True)):
        series.append(seeded_series("WARP last SLERP (before LITI)", "points", str(slerps[0]),
                                    [[ev.point(s, "last SLERP")] for s in slerps]))
    by_method: dict[str, list] = {}
    for spec in cfg.baseline:
        group = [model_folder(b) for b in seed_group(spec)]
        b_method, b_label = run_label(run_folder(str(group[0])))
        if cfg.sweep_baselines:
            series.append(sweep_series(ev, group, etas, b_label, b_method))
        else:  # one series per method, one point per run (e.g. RLOO at several β)
            by_method.setdefault(b_method, []).append([ev.point(b, b_label) for b in group])
    for b_method, per_run in by_method.items():
        n = min(len(x) for x in per_run)  # seeds of every run: seed s of each run forms seed s's series
        series.append(seeded_series(b_method.upper(), "points", "", [[run[s] for run in per_run] for s in range(n)]))
    comparisons = [compare_fronts(series[0], s) for s in series[1:]]
    # Another full front is also compared the other way round: is it above the main one at the main one's KLs?
    comparisons += [compare_fronts(s, series[0]) for s in series[1:] if s.kind == "sweep"]
    meta = {"sft": cfg.sft, "final": ",".join(map(str, finals)), "reward": cfg.reward, "judge": cfg.judge,
            "gold": cfg.gold, "prompts": cfg.prompts, "n_prompts": len(ev.prompts),
            "samples_per_prompt": cfg.samples_per_prompt, "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature, "seed": cfg.seed, "n_seeds": len(finals)}
    return series, comparisons, meta


def sweep_series(ev: Evaluator, folders: list[Path], etas: list[float], label: str, method: str) -> Series:
    """The η sweep of each run folder (one per seed) as one series."""
    per_seed = [ev.sweep(f, etas, method.upper() + (f" seed {i + 1}" if len(folders) > 1 else ""))
                for i, f in enumerate(folders)]
    return seeded_series(label, "sweep", str(folders[0]), per_seed)


def seeded_series(name: str, kind: str, source: str, per_seed: list[list[dict]]) -> Series:
    """A series from each seed's points: the points themselves for one seed, else their means over seeds."""
    if len(per_seed) == 1:
        return Series(name, kind, source, per_seed[0])
    return Series(f"{name} ({len(per_seed)} seeds)", kind, source, mean_over_seeds(per_seed), per_seed)


# Metrics whose interval across seeds the points carry (the rest are plain means).
CI_KEYS = {"reward_mean": "reward_ci", "kl_mean": "kl_ci", "judge_positive_rate": "judge_positive_rate_ci",
           "gold_mean": "gold_ci"}


def mean_over_seeds(per_seed: list[list[dict]]) -> list[dict]:
    """Point j of the mean series: the mean over seeds of point j's metrics; the intervals are across seeds
    (mean ± t·s/√n, :func:`warprl.eval.stats.t_interval`); samples are those of the first seed (for the report)."""
    out = []
    for pts in zip(*per_seed, strict=True):
        first = pts[0]
        p = {k: v for k, v in first.items() if not isinstance(v, int | float) or isinstance(v, bool)}
        for key, v in first.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and all(key in q for q in pts):
                p[key] = sum(q[key] for q in pts) / len(pts)
        for key, ci in CI_KEYS.items():
            if key in p:
                _, lo, hi = stats.t_interval([q[key] for q in pts])
                p[ci] = [lo, hi]
        if "eta" in first:
            p["eta"] = first["eta"]
        p["n_seeds"] = len(pts)
        p["ci_over"] = "seeds"
        out.append(p)
    return out


# ------------------------------------------------------------------------------------ front comparison


def _per_prompt_arrays(points: list[dict], value: str = "reward"):
    """[points, prompts] per-prompt means of KL and ``value`` (a sample's key), or None when a point lacks its
    samples or the points were not evaluated on the same prompts."""
    import numpy as np

    if not points or not all(p.get("samples") for p in points):
        return None
    order = None
    kls, values = [], []
    for p in points:
        prompts = [s["prompt"] for s in p["samples"]]
        names, kl = stats.per_prompt(prompts, [s["kl"] for s in p["samples"]])
        _, v = stats.per_prompt(prompts, [s[value] for s in p["samples"]])
        if order is None:
            order = names
        elif names != order:
            return None  # not the same prompts: no paired comparison
        kls.append(kl)
        values.append(v)
    return order, np.stack(kls), np.stack(values)


def compare_fronts(a: Series, b: Series, value: str = "reward", read: str = "front") -> dict:
    """For each point of ``b``: ``a``'s ``value`` (reward, or gold) at the same KL, and the difference a − b.

    ``read="front"`` reads ``a`` on its upper envelope (the best of its points within a KL budget: a user picks
    η by the reward the method optimised); ``read="curve"`` along its points in order of KL, for a value nobody
    can pick η by (a gold reward that may fall again). The mean Δ over the matched points (η = 0 and points
    beyond a's largest KL left out) carries a 95 % interval and a verdict (:func:`warprl.eval.stats.verdict`):
    with one seed each, a paired bootstrap over prompts; with several seeds, mean ± t·s/√n over the seeds' own
    mean Δ (seed s of a against seed s of b).
    """
    key = f"{value}_mean"
    if not all(key in p for p in a.points + b.points):
        return {"a": a.name, "b": b.name, "rows": [], "matched": 0, "mean_delta": None, "mean_delta_ci": None,
                "ci_over": None, "verdict": f"no {value}"}
    a_pts = [(p["kl_mean"], p[key]) for p in a.points]
    a_curve = stats.CURVES[read](a_pts)
    rows = []
    for p in b.points:
        ra = stats.curve_value_at(a_curve, p["kl_mean"])
        rows.append({"point": f"η={p['eta']:g}" if "eta" in p else p.get("label", ""), "kl": p["kl_mean"],
                     "value_b": p[key], "value_a": ra, "delta": None if ra is None else ra - p[key],
                     "beyond": bool(a_pts) and p["kl_mean"] > max(k for k, _ in a_pts)})
    # Left out of the verdict: η = 0 (the SFT model in both, a tie by construction) and points beyond a's
    # largest KL (a's flat extension there is a bound, not a measurement at that KL).
    matched = [j for j, r in enumerate(rows) if r["delta"] is not None and r["kl"] > 1e-6 and not r["beyond"]]
    deltas = [rows[j]["delta"] for j in matched]
    out = {"a": a.name, "b": b.name, "rows": rows, "matched": len(deltas),
           "a_above": sum(d > 0 for d in deltas), "mean_delta": sum(deltas) / len(deltas) if deltas else None,
           "beyond": sum(r["beyond"] for r in rows), "mean_delta_ci": None, "ci_over": None}
    if a.seeds or b.seeds:
        a_seeds = a.seeds or [a.points]
        b_seeds = b.seeds or [b.points]
        n = max(len(a_seeds), len(b_seeds))
        per_seed = [compare_fronts(Series(a.name, a.kind, a.source, a_seeds[s % len(a_seeds)]),
                                   Series(b.name, b.kind, b.source, b_seeds[s % len(b_seeds)]),
                                   value, read)["mean_delta"]
                    for s in range(n)]
        per_seed = [d for d in per_seed if d is not None]
        if len(per_seed) >= 2:
            _, lo, hi = stats.t_interval(per_seed)
            # The interval is around the mean of the seeds' own mean Δ (not the Δ of the seed-averaged fronts).
            out.update(mean_delta_ci=[lo, hi], ci_over="seeds", seed_deltas=per_seed,
                       seed_mean_delta=sum(per_seed) / len(per_seed))
    else:
        arrays_a, arrays_b = _per_prompt_arrays(a.points, value), _per_prompt_arrays(b.points, value)
        if arrays_a and arrays_b and arrays_a[0] == arrays_b[0]:
            res = stats.paired_front_deltas(arrays_a[1], arrays_a[2], arrays_b[1], arrays_b[2], matched, read=read)
            for r, ci in zip(rows, res["rows"], strict=True):
                r["delta_ci"] = list(ci) if ci is not None and r["delta"] is not None else None
            if deltas and res["mean"] is not None:
                out.update(mean_delta_ci=list(res["mean"]), ci_over="prompts")
    ci = out["mean_delta_ci"]
    out["verdict"] = stats.verdict(*ci) if ci else "no interval"
    return out
