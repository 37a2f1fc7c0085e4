"""`warprl evaluate` and `warprl pareto` (warprl.commands.evaluate): the commands, their files and refusals."""

import json
import os
import shutil

from tests.commands._helpers import PNG_MAGIC, tensor_reward
from warprl.cli import main
from warprl.commands.align import run_align
from warprl.commands.evaluate import pareto
from warprl.config import AlignConfig, ParetoConfig
from warprl.eval.evaluate import METRIC_KEYS
from warprl.eval.pareto import Evaluator, eval_settings


def toy_evaluator(cfg: ParetoConfig) -> Evaluator:
    return Evaluator(cfg.sft, eval_settings(cfg), cfg.reward, cfg.judge, progress=False,
                     scorers=(tensor_reward("good"), tensor_reward("great")))


def test_pareto_with_a_swept_baseline(quickstart_run, tiny_policy_dir, prompt_file, tmp_path):
    warp_dir, _ = quickstart_run
    rloo = tmp_path / "rloo"
    run_align(AlignConfig(method="rloo", policy=str(tiny_policy_dir), prompts=str(prompt_file), steps=8,
                             batch_size=2, k=2, lr=3e-2, beta=0.1, max_new_tokens=6, bf16=False, progress=False,
                             out=str(rloo)), reward_fn=tensor_reward("good"))
    assert os.path.samefile(rloo / "final" / "model.safetensors", rloo / "weights.safetensors")  # written once
    cfg = ParetoConfig(sft=str(tiny_policy_dir), final=str(warp_dir), baseline=[str(rloo)], sweep_baselines=True,
                       eta_steps=2, prompts=str(prompt_file), n_prompts=6, max_new_tokens=6, bf16=True,
                       progress=False, out=str(tmp_path / "pareto"))  # bf16: evaluated as bf16 copies
    summary = pareto(cfg, evaluator=toy_evaluator(cfg))
    names = [s["name"] for s in summary["series"]]
    assert names[0].startswith("WARP") and names[1].startswith("WARP last SLERP") and names[2] == "RLOO T=8 β=0.1"
    assert [p["eta"] for p in summary["series"][2]["points"]] == [0.0, 0.5, 1.0]
    assert summary["series"][0]["points"][0]["kl_mean"] == 0.0  # η = 0 in bf16: still exactly the SFT model
    pairs = [(c["a"][:4], c["b"][:4]) for c in summary["comparisons"]]
    assert pairs == [("WARP", "WARP"), ("WARP", "RLOO"), ("RLOO", "WARP")]  # a full front is compared both ways
    report = (tmp_path / "pareto" / "report.md").read_text()
    assert "## RLOO T=8 β=0.1" in report and "Matched-KL comparison" in report
    assert (tmp_path / "pareto" / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    on_disk = json.loads((tmp_path / "pareto" / "pareto.json").read_text())
    assert on_disk == json.loads(json.dumps(summary)) and on_disk["config"]["out"] == cfg.out


def test_pareto_into_a_run_folder_rewrites_its_own_files_and_keeps_the_run(quickstart_run, tiny_policy_dir,
                                                                             prompt_file, tmp_path):
    """A run folder that already holds a report (a quickstart's): the report is replaced, the run stays."""
    run = tmp_path / "run"
    shutil.copytree(quickstart_run[0], run)
    before = {p.relative_to(run) for p in run.rglob("*")}
    (run / "report.md").write_text("old report")
    cfg = ParetoConfig(sft=str(tiny_policy_dir), final=str(run), eta_steps=1, include_slerp=False,
                       prompts=str(prompt_file), n_prompts=2, max_new_tokens=4, bf16=False, progress=False,
                       out=str(run))
    pareto(cfg, evaluator=toy_evaluator(cfg))
    assert {p.relative_to(run) for p in run.rglob("*")} == before  # nothing deleted, nothing left behind
    assert (run / "final" / "config.json").is_file() and "quickstart" in json.loads((run / "summary.json").read_text())
    assert (run / "report.md").read_text().startswith("# Reward–KL Pareto front")
    assert [p["eta"] for p in json.loads((run / "pareto.json").read_text())["series"][0]["points"]] == [0.0, 1.0]


def test_pareto_refuses_a_file_as_out_and_leaves_it_untouched(tiny_policy_dir, tmp_path, capsys):
    out = tmp_path / "pareto.json"
    out.write_text("not a folder")
    code = main(["pareto", "--sft", str(tiny_policy_dir), "--final", str(tiny_policy_dir), "--reward", "vader",
                 "--judge", "vader", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not a folder" in err and len(err.strip().splitlines()) == 1
    assert out.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [out]


def test_evaluate_cli_json(tiny_policy_dir, prompt_file, capsys):
    """Through the console entry point with the offline vader scorer as reward and judge."""
    code = main(["evaluate", "--policy", str(tiny_policy_dir), "--sft", str(tiny_policy_dir), "--reward", "vader",
                 "--judge", "vader", "--prompts", str(prompt_file), "--n-prompts", "4", "--samples-per-prompt", "2",
                 "--max-new-tokens", "5", "--no-bf16", "--gold", "vader", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(METRIC_KEYS) <= set(result)
    # 95 % bootstrap intervals over prompts, and the gold scorer beside reward and judge.
    for key, ci in (("reward_mean", "reward_ci"), ("kl_mean", "kl_ci"), ("judge_positive_rate", "judge_positive_rate_ci"),
                    ("gold_mean", "gold_ci")):
        assert result[ci][0] <= result[key] <= result[ci][1], key
    assert result["gold"] == "vader" and result["gold_mean"] == result["reward_mean"]
    assert all("gold" in smp for smp in result["samples"])
    assert result["kl_mean"] == 0.0 and result["n_samples"] == 8 and len(result["samples"]) == 8
    assert -1.0 <= result["judge_mean"] <= 1.0 and result["reward_mean"] == result["judge_mean"]


def test_cli_refuses_bad_input(tmp_path, capsys):
    assert main(["pareto", "--out", str(tmp_path / "p")]) == 2
    assert "--final" in capsys.readouterr().err
    assert main(["pareto", "--final", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", "--n-prompts", "0"]) == 2
    assert main(["quickstart", "--k", "1"]) == 2
