"""The whole pipeline on a tiny random model: quickstart → report.md, PNG, summary.json; pareto with a baseline."""

import json

import pytest
import torch

from tests.conftest import count_word_reward
from warprl.cli import main
from warprl.commands.evaluate import pareto
from warprl.commands.quickstart import run_quickstart
from warprl.config import AlignConfig, ParetoConfig, QuickstartConfig
from warprl.errors import UserError
from warprl.eval.evaluate import METRIC_KEYS
from warprl.eval.pareto import Evaluator, eval_settings

PROMPTS = ["the movie was", "I love this film", "the plot is", "this actor was", "a story and", "the end"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tensor_reward(word: str):
    fn = count_word_reward(word)
    return lambda prompts, completions: torch.tensor(fn(prompts, completions), dtype=torch.float32)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def tiny_quickstart(tiny_policy_dir, prompt_file, out, **kw) -> QuickstartConfig:
    base = dict(out=str(out), policy=str(tiny_policy_dir), prompts=str(prompt_file), iterations=1, runs=2, steps=4,
                batch_size=2, k=2, lr=3e-2, beta=0.0, max_new_tokens=6, n_prompts=6, samples_per_prompt=2,
                eta_steps=2, bf16=False, progress=False)
    base.update(kw)
    return QuickstartConfig(**base)


@pytest.fixture(scope="module")
def quickstart_run(tiny_policy_dir, prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "quickstart"
    cfg = tiny_quickstart(tiny_policy_dir, prompt_file, out)
    summary = run_quickstart(cfg, reward_fn=tensor_reward("good"), judge_fn=tensor_reward("great"))
    return out, summary


def test_quickstart_writes_report_png_and_summary(quickstart_run):
    out, summary = quickstart_run
    assert (out / "final" / "config.json").is_file() and (out / "final_slerp" / "config.json").is_file()
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    report = (out / "report.md").read_text()
    assert "![reward vs KL](pareto.png)" in report and "## Before and after" in report
    assert "| η |" in report and "## Sample generations" in report
    assert "after (WARP final)" in (out / "results.md").read_text()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["quickstart"]["steps"] == 4
    for part in ("before", "after", "last_slerp"):
        assert set(METRIC_KEYS) == set(on_disk[part])
    assert [p["eta"] for p in on_disk["sweep"]] == [0.0, 0.5, 1.0]
    assert on_disk["before"]["kl_mean"] == 0.0  # η = 0 is the SFT policy itself
    assert on_disk["sweep"][0] == {"eta": 0.0, **on_disk["before"]}
    assert on_disk["sweep"][-1] == {"eta": 1.0, **on_disk["after"]}
    assert summary["seconds"]["total_s"] > 0
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["series"][0]["name"].startswith("WARP I=1 M=2 T=4")


def test_quickstart_replaces_its_own_folder_but_not_others(tiny_policy_dir, prompt_file, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code = main(["quickstart", "--out", str(foreign), "--policy", str(tiny_policy_dir)])
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_quickstart_folder_rules(tmp_path):
    from warprl.commands import outdir

    def decide(out, **kw):
        return outdir.check(out, outdir.QUICKSTART, what="quickstart", **kw).action

    done = tmp_path / "done"
    done.mkdir()
    (done / "summary.json").write_text(json.dumps({"quickstart": {}}))
    assert decide(done) == "replace" and done.exists()  # replaced only once the inputs have loaded
    outdir.prepare(outdir.check(done, outdir.QUICKSTART))
    assert done.is_dir() and not any(done.iterdir())
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / "config.yaml").write_text("method: warp\n")
    assert decide(interrupted) == "resume"  # the WARP run continues (and refuses other settings)
    assert decide(interrupted, overwrite=True) == "replace"
    aligned = tmp_path / "aligned"  # an `align` run's summary carries no quickstart key: never replaced silently
    aligned.mkdir()
    (aligned / "summary.json").write_text(json.dumps({"method": "warp"}))
    with pytest.raises(UserError, match="not empty"):
        decide(aligned)


def test_pareto_with_a_swept_baseline(quickstart_run, tiny_policy_dir, prompt_file, tmp_path):
    from warprl.commands.align import run_align as align_single

    warp_dir, _ = quickstart_run
    rloo = tmp_path / "rloo"
    align_single(AlignConfig(method="rloo", policy=str(tiny_policy_dir), prompts=str(prompt_file), steps=8,
                             batch_size=2, k=2, lr=3e-2, beta=0.1, max_new_tokens=6, bf16=False, progress=False,
                             out=str(rloo)), reward_fn=tensor_reward("good"))
    cfg = ParetoConfig(sft=str(tiny_policy_dir), final=str(warp_dir), baseline=[str(rloo)], sweep_baselines=True,
                       eta_steps=2, prompts=str(prompt_file), n_prompts=6, max_new_tokens=6, bf16=True,
                       progress=False, out=str(tmp_path / "pareto"))  # bf16: evaluated as bf16 copies
    ev = Evaluator(cfg.sft, eval_settings(cfg), cfg.reward, cfg.judge, progress=False,
                   scorers=(tensor_reward("good"), tensor_reward("great")))
    summary = pareto(cfg, evaluator=ev)
    names = [s["name"] for s in summary["series"]]
    assert names[0].startswith("WARP") and names[1].startswith("WARP last SLERP") and names[2] == "RLOO T=8 β=0.1"
    assert [p["eta"] for p in summary["series"][2]["points"]] == [0.0, 0.5, 1.0]
    assert summary["series"][0]["points"][0]["kl_mean"] == 0.0  # η = 0 in bf16: still exactly the SFT model
    pairs = [(c["a"][:4], c["b"][:4]) for c in summary["comparisons"]]
    assert pairs == [("WARP", "WARP"), ("WARP", "RLOO"), ("RLOO", "WARP")]  # a full front is compared both ways
    report = (tmp_path / "pareto" / "report.md").read_text()
    assert "## RLOO T=8 β=0.1" in report and "Matched-KL comparison" in report
    assert (tmp_path / "pareto" / "pareto.png").read_bytes()[:8] == PNG_MAGIC


def test_evaluate_cli_json(tiny_policy_dir, prompt_file, capsys):
    """Through the console entry point with the offline vader scorer as reward and judge."""
    code = main(["evaluate", "--policy", str(tiny_policy_dir), "--sft", str(tiny_policy_dir), "--reward", "vader",
                 "--judge", "vader", "--prompts", str(prompt_file), "--n-prompts", "4", "--samples-per-prompt", "2",
                 "--max-new-tokens", "5", "--no-bf16", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(METRIC_KEYS) <= set(result)
    assert result["kl_mean"] == 0.0 and result["n_samples"] == 8 and len(result["samples"]) == 8
    assert -1.0 <= result["judge_mean"] <= 1.0 and result["reward_mean"] == result["judge_mean"]


def test_cli_refuses_bad_input(tmp_path, capsys):
    assert main(["pareto", "--out", str(tmp_path / "p")]) == 2
    assert "--final" in capsys.readouterr().err
    assert main(["pareto", "--final", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", "--n-prompts", "0"]) == 2
    assert main(["quickstart", "--k", "1"]) == 2
