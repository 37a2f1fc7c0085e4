"""Rendering (warprl.eval.report): plot, report.md, README fragment and splicing, from hand-made results."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import warprl
from warprl.errors import UserError
from warprl.eval import report
from warprl.eval.evaluate import METRIC_KEYS
from warprl.eval.pareto import Series, compare_fronts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics(reward: float, kl: float) -> dict:
    m = {k: 0.5 for k in METRIC_KEYS}
    m.update(reward_mean=reward, kl_mean=kl)
    return m


def sample(prompt: str) -> dict:
    return {"prompt": prompt, "completion": " good | fun", "reward": 1.0, "judge": 0.5, "kl": 0.25}


def hand_made() -> tuple[list[Series], list[dict], dict]:
    samples = [sample("the movie was"), sample("the movie was"), sample("I love")]
    warp = Series("WARP I=1 M=2 T=4 β=0.0", "sweep", "runs/warp/final",
                  [{"eta": e, **metrics(e, 2 * e), "samples": samples} for e in (0.0, 0.5, 1.0)])
    rloo = Series("RLOO", "points", "", [{"label": "RLOO T=8 β=0.1", **metrics(0.6, 4.0), "samples": samples}])
    meta = {"sft": "sft", "final": "runs/warp/final", "reward": "toy", "judge": "vader", "prompts": "builtin",
            "n_prompts": 2, "samples_per_prompt": 2, "max_new_tokens": 6, "temperature": 1.0, "seed": 7}
    return [warp, rloo], [compare_fronts(warp, rloo)], meta


def test_columns_cover_every_metric():
    assert [c[1] for c in report.COLUMNS] == list(METRIC_KEYS)


def test_report_renders_without_loading_a_model(tmp_path, monkeypatch):
    import warprl.eval.evaluate
    import warprl.eval.pareto
    import warprl.models
    import warprl.reward

    def refuse(*a, **k):
        raise AssertionError("rendering must not load a model")

    for module, name in ((warprl.models, "load_policy"), (warprl.eval.pareto, "load_policy"),
                         (warprl.reward, "load_reward"), (warprl.eval.evaluate, "load_reward")):
        monkeypatch.setattr(module, name, refuse)
    series, comparisons, meta = hand_made()
    png = tmp_path / "pareto.png"
    report.plot_front(series, png, title="t")
    assert png.read_bytes()[:8] == PNG_MAGIC
    md = report.render_report(series, comparisons, meta, png.name, samples_shown=1, before_after="| x |")
    assert md.startswith("# Reward–KL Pareto front") and "![reward vs KL](pareto.png)" in md
    assert "## Before and after" in md and "## RLOO" in md and "| run |" in md
    assert "‡" in md  # the RLOO point lies beyond WARP's largest KL
    assert "Verdict rule" in md and "bars: 95 %" not in md  # the rule is written in the report
    # One sample per prompt (samples of one prompt are adjacent), table pipes escaped, whitespace collapsed.
    assert md.count("*the movie was*") == 4 and "*I love*" not in md  # 4 points, the first prompt each
    assert "good \\| fun" in md
    fragment = report.results_fragment(series, comparisons, meta, png, before_after="| x |")
    assert "| η |" in fragment and "Matched-KL" not in fragment
    assert "NLL sft" not in fragment  # the README keeps the short table


def test_report_module_imports_no_model_code():
    """Importing the renderer pulls in neither torch nor the model loaders (a fresh interpreter)."""
    src = str(Path(warprl.__file__).resolve().parents[1])
    code = ("import sys, warprl.eval.report; "
            "print(sorted(m for m in ('torch', 'transformers', 'warprl.models', 'warprl.reward', 'matplotlib') "
            "if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_update_readme_splices_the_fragment_and_copies_the_plot(tmp_path):
    series, comparisons, meta = hand_made()
    run = tmp_path / "runs" / "front"
    png = run / "pareto.png"
    report.plot_front(series, png)
    readme = tmp_path / "README.md"
    readme.write_text("# T\n<!-- results:start -->\n<!-- results:end -->\nend\n")
    image = report.update_readme(readme, "front", report.results_fragment(series, comparisons, meta, png), png)
    assert image == tmp_path / "docs" / "results" / "front.png" and image.read_bytes() == png.read_bytes()
    text = readme.read_text()
    assert "![reward vs KL](docs/results/front.png)" in text and text.endswith("<!-- results:end -->\nend\n")


def test_readme_block_is_spliced_between_markers_only():
    text = "# T\nintro\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n"
    once = report.splice_block(text, "quickstart", "table 1")
    assert once.startswith("# T\nintro\n") and once.endswith("<!-- results:end -->\ntail\n")
    assert "table 1" in once and "old" in once
    twice = report.splice_block(once, "quickstart", "table 2")
    assert "table 1" not in twice and twice.count("<!-- results:quickstart:start -->") == 1
    both = report.splice_block(twice, "offline", "big run")
    assert "table 2" in both and "big run" in both


def test_update_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(UserError, match="markers"):
        report.check_readme(readme)
    assert readme.read_text() == "# no markers\n"
