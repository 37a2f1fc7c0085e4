"""Rendering of Pareto results: the reward–KL plot (PNG), report.md, the README fragment and its splicing.

Pure rendering: everything here works from :class:`~warprl.eval.pareto.Series` objects and comparison dicts
(as :mod:`warprl.eval.pareto` makes them, or by hand); nothing here loads a model or a scorer.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from warprl.errors import UserError
from warprl.eval.stats import VERDICT_RULE
from warprl.io import atomic_write, atomic_write_text

if TYPE_CHECKING:  # only for annotations: rendering needs the fields, not the module that evaluates
    from warprl.eval.pareto import Series

README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


# ------------------------------------------------------------------------------------------------ plot


def _err(points: list[dict], key: str, ci: str):
    """Asymmetric error bars [[below], [above]] from the points' intervals, or None when they have none."""
    if not all(ci in p for p in points):
        return None
    return [[max(p[key] - p[ci][0], 0.0) for p in points], [max(p[ci][1] - p[key], 0.0) for p in points]]


def plot_front(series: list[Series], path: Path, title: str = "", metric: str = "reward_mean",
               ylabel: str = "mean reward (held-out prompts)") -> None:
    """``metric`` (the reward) against KL(π‖π_sft), one line per sweep (η annotated), markers for single runs;
    95 % intervals as error bars (over prompts, or across seeds for a multi-seed series); PNG, Agg."""
    # Here, not at the top: importing matplotlib costs ~0.5 s (measured on 2 cores), and `warprl evaluate`
    # imports this module (through warprl.commands.evaluate) without ever drawing a plot.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ci_key = {"reward_mean": "reward_ci", "gold_mean": "gold_ci"}.get(metric, "")
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)  # no pyplot: no global state, no display needed
    ax = fig.add_subplot()
    markers = "osD^v<>P*X"
    for i, s in enumerate(series):
        pts = [p for p in s.points if metric in p]
        if not pts:
            continue
        xs = [p["kl_mean"] for p in pts]
        ys = [p[metric] for p in pts]
        color = f"C{i % 10}"
        yerr, xerr = _err(pts, metric, ci_key), _err(pts, "kl_mean", "kl_ci")
        if yerr or xerr:
            ax.errorbar(xs, ys, yerr=yerr, xerr=xerr, fmt="none", ecolor=color, alpha=0.45, elinewidth=1, capsize=2)
        if s.kind == "sweep":
            ax.plot(xs, ys, marker=markers[i % len(markers)], markersize=4, linewidth=1.5, label=s.name, color=color)
            for p in pts:
                if p["eta"] in (0.0, 0.5, 1.0) or len(pts) <= 6:
                    ax.annotate(f"η={p['eta']:g}", (p["kl_mean"], p[metric]), fontsize=7,
                                textcoords="offset points", xytext=(4, -10))
        else:
            # Explicit colours: plot() and scatter() keep separate colour cycles, which would repeat blue.
            ax.scatter(xs, ys, marker=markers[i % len(markers)], s=40, label=s.name, zorder=3, color=color)
            for p in pts:
                ax.annotate(p.get("label", ""), (p["kl_mean"], p[metric]), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("KL(π ‖ π_sft), nats per completion (held-out prompts)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + ("\nbars: 95 % intervals" if title else "bars: 95 % intervals"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def has_gold(series: list[Series]) -> bool:
    return any("gold_mean" in p for s in series for p in s.points)


# --------------------------------------------------------------------------------------------- markdown

COLUMNS = (("reward", "reward_mean", "{:.3f}"), ("± std", "reward_std", "{:.2f}"), ("KL", "kl_mean", "{:.2f}"),
           ("judge > 0.05", "judge_positive_rate", "{:.0%}"), ("judge", "judge_mean", "{:+.2f}"),
           ("distinct-1", "distinct_1", "{:.2f}"), ("distinct-2", "distinct_2", "{:.2f}"),
           ("unique", "unique_fraction", "{:.0%}"), ("loops", "repetition_rate", "{:.0%}"),
           ("NLL sft", "nll_sft", "{:.2f}"), ("tokens", "length_mean", "{:.1f}"))
# One column per key of warprl.eval.evaluate.METRIC_KEYS (tests/eval/test_report.py checks it).


def interval_columns(rows: list[dict]) -> tuple:
    """Columns for the 95 % intervals (and the gold reward) the rows carry: reward, KL, judge, gold."""
    cols = []
    for label, key in (("reward 95% CI", "reward_ci"), ("KL 95% CI", "kl_ci"), ("gold", "gold_mean"),
                       ("gold 95% CI", "gold_ci")):
        if rows and all(key in r for r in rows):
            cols.append((label, key, "{:.3f}" if key == "gold_mean" else "[{:.2f}, {:.2f}]"))
    return tuple(cols)


def _cell(value, fmt: str) -> str:
    return fmt.format(*value) if isinstance(value, list | tuple) else fmt.format(value)


def metrics_table(rows: list[dict], first: tuple[str, str], columns=COLUMNS) -> str:
    """A Markdown table: ``first`` = (header, key) names the row, then the metric columns (and the intervals
    and gold reward the rows carry, after the reward column)."""
    extra = interval_columns(rows)
    if extra:
        at = next((i + 1 for i, c in enumerate(columns) if c[1] == "kl_mean"), len(columns))
        columns = tuple(columns[:at]) + extra + tuple(columns[at:])
    head = "| " + " | ".join([first[0]] + [c[0] for c in columns]) + " |"
    sep = "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"
    lines = [head, sep]
    for r in rows:
        name = r[first[1]]
        name = f"{name:g}" if isinstance(name, float) else str(name)
        lines.append("| " + " | ".join([name] + [_cell(r[key], fmt) for _, key, fmt in columns]) + " |")
    return "\n".join(lines)


def _fmt(x: float | None, spec: str = "{:.3f}") -> str:
    return "–" if x is None else spec.format(x)


def _ci(ci, spec: str = "{:+.3f}") -> str:
    return "–" if not ci else f"[{spec.format(ci[0])}, {spec.format(ci[1])}]"


def comparison_markdown(c: dict) -> str:
    with_ci = any(r.get("delta_ci") for r in c["rows"])
    lines = [f"**{c['a']}** vs **{c['b']}** at matched KL (the reward of {c['a']}'s front at each KL of "
             f"{c['b']}; linear between its non-dominated points):", "",
             f"| {c['b']} point | KL | reward {c['b']} | reward {c['a']} front | Δ |" + (" Δ 95% CI |" if with_ci else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if with_ci else "")]
    for r in c["rows"]:
        mark = " ‡" if r.get("beyond") else ""
        lines.append(f"| {r['point']} | {r['kl']:.2f} | {r['value_b']:.3f} | {_fmt(r['value_a'])}{mark} | "
                     f"{_fmt(r['delta'], '{:+.3f}')} |" + (f" {_ci(r.get('delta_ci'))} |" if with_ci else ""))
    if any(r.get("beyond") for r in c["rows"]):
        lines += ["", f"‡ beyond the largest KL of {c['a']}'s front: its best reward, reached with less KL."]
    if c["matched"]:
        left_out = ("left out: η = 0, the shared SFT point"
                    + (f", and the {c['beyond']} ‡ points beyond its KL range)" if c.get("beyond") else ")"))
        ci = c.get("mean_delta_ci")
        if ci:
            over = ("paired bootstrap over prompts" if c.get("ci_over") == "prompts"
                    else f"mean ± t·s/√n over {len(c.get('seed_deltas', []))} seeds")
            center = c.get("seed_mean_delta", c["mean_delta"])
            lines += ["", f"**{c['a']} − {c['b']}: mean Δ {center:+.3f}, 95 % interval {_ci(ci)} ({over}) "
                          f"over {c['matched']} matched KL values → {c['verdict']}** ({left_out}. "
                          f"Above at {c['a_above']} of {c['matched']}."]
        else:
            lines += ["", f"{c['a']}'s front is above at {c['a_above']} of {c['matched']} matched KL values "
                          f"(mean Δ {c['mean_delta']:+.3f}; no interval: the points carry no per-prompt samples; "
                          f"{left_out}."]
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
           "per-token NLL of the completions under the SFT model. Intervals: 95 %, bootstrap over the held-out "
           "prompts (across training seeds where a series has several). " + VERDICT_RULE, "",
           f"![reward vs KL]({png_name})", ""]
    if has_gold(series):
        out += [f"Gold reward `{meta.get('gold')}` (never optimised) against KL: ![gold vs KL](gold.png)", ""]
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
    lines = [f"Reward `{meta['reward']}`, judge `{meta['judge']}`"
             + (f", gold `{meta['gold']}`" if meta.get("gold") else "")
             + f", {meta['n_prompts']} held-out prompts × {meta['samples_per_prompt']} samples (seed {meta['seed']})"
             + (f", {meta['n_seeds']} training seeds" if meta.get("n_seeds", 1) > 1 else "")
             + ". Intervals: 95 %, bootstrap over prompts (across seeds for several seeds). " + VERDICT_RULE, ""]
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
