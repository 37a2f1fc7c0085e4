"""The reward–KL Pareto front: the η sweep θ_η = (1−η)·θ_sft + η·θ_final, baselines, plot and report.md.

WARP's claim is a better front: at any KL budget its policies reach a higher reward. The sweep makes the
front visible for one aligned policy (every η is a policy you could ship), and baselines (other `warprl
align` runs, e.g. RLOO at several β) are plotted beside it, as single points or as their own η sweeps.

Memory: only two models live at once, the SFT model (needed for the KL anyway) and the model being
evaluated. The interpolated weights are written into the latter tensor by tensor, streaming θ_final from its
safetensors file(s), so no third copy and no temporary files are needed.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from warprl import merge
from warprl.config import EvalConfig, EvalSettings, ParetoConfig, derive, to_dict
from warprl.errors import UserError
from warprl.eval.evaluate import METRIC_KEYS, eval_prompts, evaluate_policy, load_scorers
from warprl.io import atomic_write, atomic_write_json, atomic_write_text
from warprl.precision import compute_copy

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def eta_grid(steps: int) -> list[float]:
    """``[0, 1/steps, …, 1]`` with exact endpoints (η = 0 must be the SFT weights bit for bit)."""
    return [round(i / steps, 6) for i in range(steps + 1)]


def eval_settings(cfg: EvalSettings) -> EvalConfig:
    """The evaluation settings of a pareto sweep (its shared EvalSettings section) as an EvalConfig."""
    return derive(EvalConfig, cfg)


# ------------------------------------------------------------------------------- streamed interpolation


def model_folder(spec: str) -> Path:
    """The HF folder of a local model spec: an HF folder or a `warprl align` output folder (its ``final/``)."""
    from warprl.models import resolve

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
    """
    from safetensors import safe_open

    target = policy.state_dict()
    source = sft.state_dict()
    device = next(policy.parameters()).device
    written: set[int] = set()
    for path in final_files:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
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
        from warprl.models import load_policy, pick_device

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
        from tqdm.auto import tqdm

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


def write_outputs(out: Path, cfg, series: list[Series], comparisons: list[dict], meta: dict,
                  samples_shown: int, before_after: str = "") -> dict:
    """pareto.png, report.md, results.md (the README fragment) and pareto.json into ``out``, atomically."""
    png = out / "pareto.png"
    plot_front(series, png, title=f"Reward vs KL to the SFT policy ({meta['reward']})")
    atomic_write_text(out / "report.md", render_report(series, comparisons, meta, png.name, samples_shown,
                                                       before_after))
    fragment = results_fragment(series, comparisons, meta, png, before_after)
    atomic_write_text(out / "results.md", fragment)
    summary = {"config": to_dict(cfg), "meta": meta, "series": [s.__dict__ for s in series],
               "comparisons": comparisons, "report": str(out / "report.md"), "plot": str(png),
               "results": str(out / "results.md")}
    atomic_write_json(out / "pareto.json", summary)
    return summary


def run_pareto(cfg: ParetoConfig, evaluator: Evaluator | None = None) -> dict:
    """`warprl pareto`: the sweep, then pareto.png, report.md, results.md and pareto.json in ``cfg.out``."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    model_folder(cfg.final)  # fail on a bad path before loading anything
    for b in cfg.baseline:
        model_folder(b)
    if cfg.readme:
        check_readme(cfg.readme)  # fail now, not after the sweep
    ev = evaluator or Evaluator(cfg.sft, eval_settings(cfg), cfg.reward, cfg.judge, cfg.progress)
    series, comparisons, meta = pareto_sweep(cfg, ev)
    summary = write_outputs(out, cfg, series, comparisons, meta, cfg.samples_shown)
    if cfg.readme:
        update_readme(cfg.readme, out.name, (out / "results.md").read_text(), out / "pareto.png")
    return summary


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


# ------------------------------------------------------------------------------------------------ plot


def plot_front(series: list[Series], path: Path, title: str = "") -> None:
    """Reward against KL(π‖π_sft), one line per sweep (η annotated), markers for single runs; PNG, Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)  # no pyplot: no global state, no display needed
    ax = fig.add_subplot()
    markers = "osD^v<>P*X"
    for i, s in enumerate(series):
        xs = [p["kl_mean"] for p in s.points]
        ys = [p["reward_mean"] for p in s.points]
        if s.kind == "sweep":
            ax.plot(xs, ys, marker=markers[i % len(markers)], markersize=4, linewidth=1.5, label=s.name,
                    color=f"C{i % 10}")
            for p in s.points:
                if p["eta"] in (0.0, 0.5, 1.0) or len(s.points) <= 6:
                    ax.annotate(f"η={p['eta']:g}", (p["kl_mean"], p["reward_mean"]), fontsize=7,
                                textcoords="offset points", xytext=(4, -10))
        else:
            # Explicit colours: plot() and scatter() keep separate colour cycles, which would repeat blue.
            ax.scatter(xs, ys, marker=markers[i % len(markers)], s=40, label=s.name, zorder=3, color=f"C{i % 10}")
            for p in s.points:
                ax.annotate(p.get("label", ""), (p["kl_mean"], p["reward_mean"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("KL(π ‖ π_sft), nats per completion (held-out prompts)")
    ax.set_ylabel("mean reward (held-out prompts)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


# --------------------------------------------------------------------------------------------- markdown

COLUMNS = (("reward", "reward_mean", "{:.3f}"), ("± std", "reward_std", "{:.2f}"), ("KL", "kl_mean", "{:.2f}"),
           ("judge > 0.05", "judge_positive_rate", "{:.0%}"), ("judge", "judge_mean", "{:+.2f}"),
           ("distinct-1", "distinct_1", "{:.2f}"), ("distinct-2", "distinct_2", "{:.2f}"),
           ("unique", "unique_fraction", "{:.0%}"), ("loops", "repetition_rate", "{:.0%}"),
           ("NLL sft", "nll_sft", "{:.2f}"), ("tokens", "length_mean", "{:.1f}"))
assert {c[1] for c in COLUMNS} == set(METRIC_KEYS)


def metrics_table(rows: list[dict], first: tuple[str, str], columns=COLUMNS) -> str:
    """A Markdown table: ``first`` = (header, key) names the row, then the metric columns."""
    head = "| " + " | ".join([first[0]] + [c[0] for c in columns]) + " |"
    sep = "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"
    lines = [head, sep]
    for r in rows:
        name = r[first[1]]
        name = f"{name:g}" if isinstance(name, float) else str(name)
        lines.append("| " + " | ".join([name] + [fmt.format(r[key]) for _, key, fmt in columns]) + " |")
    return "\n".join(lines)


def _fmt(x: float | None, spec: str = "{:.3f}") -> str:
    return "–" if x is None else spec.format(x)


def comparison_markdown(c: dict) -> str:
    lines = [f"**{c['a']}** vs **{c['b']}** at matched KL (the reward of {c['a']}'s front at each KL of "
             f"{c['b']}; linear between its non-dominated points):", "",
             f"| {c['b']} point | KL | reward {c['b']} | reward {c['a']} front | Δ |", "|---|---:|---:|---:|---:|"]
    for r in c["rows"]:
        mark = " ‡" if r.get("beyond") else ""
        lines.append(f"| {r['point']} | {r['kl']:.2f} | {r['reward_b']:.3f} | {_fmt(r['reward_a'])}{mark} | "
                     f"{_fmt(r['delta'], '{:+.3f}')} |")
    if any(r.get("beyond") for r in c["rows"]):
        lines += ["", f"‡ beyond the largest KL of {c['a']}'s front: its best reward, reached with less KL."]
    if c["matched"]:
        lines += ["", f"{c['a']}'s front is above at {c['a_above']} of {c['matched']} matched KL values "
                      f"(mean Δ {c['mean_delta']:+.3f}; left out: η = 0, the shared SFT point"
                      + (f", and the {c['beyond']} ‡ points beyond its KL range)." if c.get("beyond") else ").")]
    else:
        lines += ["", f"No KL value of {c['b']} falls inside {c['a']}'s front: no matched comparison."]
    return "\n".join(lines)


def _one_line(text: str, limit: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_report(series: list[Series], comparisons: list[dict], meta: dict, png_name: str,
                  samples_shown: int, before_after: str = "") -> str:
    """report.md: settings, plot, one table per series, matched-KL comparisons, sample generations."""
    main = series[0]
    out = ["# Reward–KL Pareto front", "",
           f"SFT policy `{meta['sft']}`, aligned policy `{meta['final']}`; reward `{meta['reward']}`, judge "
           f"`{meta['judge']}`; {meta['n_prompts']} held-out prompts from `{meta['prompts']}` × "
           f"{meta['samples_per_prompt']} samples, ≤ {meta['max_new_tokens']} new tokens, temperature "
           f"{meta['temperature']}, seed {meta['seed']} (the same prompts and seed at every point).", "",
           "θ_η = (1−η)·θ_sft + η·θ_final. KL: Monte-Carlo KL(π‖π_sft) summed over completion tokens; judge > 0.05:"
           " share of completions the judge scores positive; loops: share with a repeated 4-gram; NLL sft: "
           "per-token NLL of the completions under the SFT model.", "",
           f"![reward vs KL]({png_name})", ""]
    if before_after:
        out += ["## Before and after", "", before_after, ""]
    out += [f"## {main.name}", "", metrics_table(main.points, ("η", "eta"))]
    for s in series[1:]:
        first = ("η", "eta") if s.kind == "sweep" else ("run", "label")
        out += ["", f"## {s.name}", "", f"`{s.source}`" if s.source else "", "", metrics_table(s.points, first)]
    if comparisons:
        out += ["", "## Matched-KL comparison", ""]
        for c in comparisons:
            out += [comparison_markdown(c), ""]
    if samples_shown:
        out += ["", "## Sample generations", "",
                f"One sample for each of the first {samples_shown} held-out prompts at every point (same prompts, "
                f"same seed)."]
        per_prompt = meta["samples_per_prompt"]  # the samples of one prompt are adjacent
        for s in series:
            for p in s.points:
                name = f"η = {p['eta']:g}" if "eta" in p else p.get("label", "")
                out += ["", f"### {s.name}: {name}", ""]
                for smp in p["samples"][::per_prompt][:samples_shown]:
                    out.append(f"- *{_one_line(smp['prompt'])}* → {_one_line(smp['completion'])} "
                               f"(reward {smp['reward']:.2f}, judge {smp['judge']:+.2f}, KL {smp['kl']:.1f})")
    return "\n".join(out).rstrip() + "\n"


def results_fragment(series: list[Series], comparisons: list[dict], meta: dict, png: Path,
                     before_after: str = "") -> str:
    """The short Markdown block for the README: before/after (if given), the front table, comparisons."""
    keep = ("reward_mean", "kl_mean", "judge_positive_rate", "distinct_2", "repetition_rate")
    cols = tuple(c for c in COLUMNS if c[1] in keep)
    lines = [f"Reward `{meta['reward']}`, judge `{meta['judge']}`, {meta['n_prompts']} held-out prompts × "
             f"{meta['samples_per_prompt']} samples (seed {meta['seed']}).", ""]
    if before_after:
        lines += [before_after, ""]
    lines += [f"![reward vs KL]({png.name})", "", f"**{series[0].name}**, η sweep:", "",
              metrics_table(series[0].points, ("η", "eta"), cols)]
    for c in comparisons:
        if c["matched"]:  # the README keeps only comparisons that have something to compare
            lines += ["", comparison_markdown(c)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ README


def check_readme(readme: str | Path) -> str:
    path = Path(readme)
    if not path.is_file():
        raise UserError(f"--readme {path}: file not found")
    text = path.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text or text.index(README_START) > text.index(README_END):
        raise UserError(f"--readme {path}: no '{README_START}' … '{README_END}' markers to write between")
    return text


def splice_block(text: str, key: str, fragment: str) -> str:
    """Replace (or append) the sub-block ``key`` inside the results markers; everything else is kept."""
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    inner = text[start:end]
    open_tag, close_tag = f"<!-- results:{key}:start -->", f"<!-- results:{key}:end -->"
    block = f"{open_tag}\n{fragment.strip()}\n{close_tag}"
    if open_tag in inner and close_tag in inner:
        a, b = inner.index(open_tag), inner.index(close_tag) + len(close_tag)
        inner = inner[:a] + block + inner[b:]
    else:
        inner = inner.rstrip("\n") + "\n" + block + "\n"
    return text[:start] + inner + text[end:]


def update_readme(readme: str | Path, key: str, fragment: str, png: Path) -> Path:
    """Put ``fragment`` into the README between the results markers (only there), the PNG beside it.

    The plot is copied to ``docs/results/<key>.png`` next to the README (run folders are git-ignored) and
    the fragment's image link is rewritten to point there.
    """
    text = check_readme(readme)
    readme = Path(readme)
    image = readme.parent / "docs" / "results" / f"{key}.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(image, lambda tmp: shutil.copyfile(png, tmp))
    rel = image.relative_to(readme.parent).as_posix()
    fragment = fragment.replace(f"]({png.name})", f"]({rel})")
    atomic_write_text(readme, splice_block(text, key, fragment))
    return image
