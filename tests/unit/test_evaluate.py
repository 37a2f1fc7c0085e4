"""Evaluation metrics, the η interpolation and the front comparison on hand-made inputs and a tiny model."""

import copy
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from warprl import config as C
from warprl.config import EvalConfig, build_config, read_yaml
from warprl.errors import UserError
from warprl.eval import pareto as R
from warprl.eval.evaluate import METRIC_KEYS, SampleSet, evaluate_policy, judge_positive_rate, summarise
from warprl.models import load_policy

PROMPTS = ["the movie was", "I love this film", "the plot is", "this actor was", "a story and"]


def word_count(prompts, completions):
    return torch.tensor([float(c.split().count("good")) for c in completions])


def sample_set(completions, **kw) -> SampleSet:
    n = len(completions)
    base = dict(prompts=[f"p{i}" for i in range(n)], completions=list(completions), rewards=[0.0] * n,
                judge=[0.0] * n, kl=[0.0] * n, nll_sum=[0.0] * n, n_tokens=[1] * n)
    base.update(kw)
    return SampleSet(**base)


# ------------------------------------------------------------------------------------------ pure metrics


def test_summarise_on_hand_made_samples():
    s = sample_set(["good movie", "good film", "good movie"], rewards=[1.0, 2.0, 3.0], judge=[0.5, 0.05, -0.2],
                   kl=[0.0, 1.0, 2.0], nll_sum=[2.0, 4.0, 6.0], n_tokens=[2, 2, 2])
    m = summarise(s)
    assert set(METRIC_KEYS) <= set(m)
    assert m["reward_mean"] == 2.0 and m["reward_std"] == pytest.approx(1.0)
    assert m["kl_mean"] == 1.0
    assert m["judge_positive_rate"] == pytest.approx(1 / 3)  # 0.05 itself is not positive: strictly above
    assert m["judge_mean"] == pytest.approx(0.35 / 3)
    assert m["distinct_1"] == pytest.approx(3 / 6)  # good, movie, film out of 6 unigrams
    assert m["distinct_2"] == pytest.approx(2 / 3)  # (good movie), (good film) out of 3 bigrams
    assert m["unique_fraction"] == pytest.approx(2 / 3)
    assert m["repetition_rate"] == 0.0
    assert m["nll_sft"] == pytest.approx(12.0 / 6)  # token-weighted
    assert m["length_mean"] == 2.0 and m["n_samples"] == 3


def test_loops_and_collapse_are_visible():
    looping = "good movie good movie good movie"
    m = summarise(sample_set([looping] * 4))
    assert m["repetition_rate"] == 1.0
    assert m["unique_fraction"] == 0.25
    assert m["distinct_2"] < 0.2  # one repeated phrase: collapse
    assert summarise(sample_set(["a b c d e f", looping]))["repetition_rate"] == 0.5


def test_judge_positive_rate_threshold():
    assert judge_positive_rate([0.06, 0.05, -1.0, 0.9]) == 0.5
    assert judge_positive_rate([]) == 0.0


# --------------------------------------------------------------------------------------- tiny policy


def eval_cfg(**kw) -> EvalConfig:
    base = dict(max_new_tokens=6, batch_size=2, samples_per_prompt=2, bf16=False, seed=7)
    base.update(kw)
    return EvalConfig(**base)


@pytest.mark.parametrize("bf16", [False, True])
def test_kl_of_identical_policies_is_zero(tiny_policy_dir, bf16):
    policy, tok = load_policy(str(tiny_policy_dir))
    twin = copy.deepcopy(policy)  # another object with the same weights: the KL must still be exactly 0
    m = evaluate_policy(policy, tok, twin, word_count, word_count, PROMPTS, eval_cfg(bf16=bf16))
    assert m["kl_mean"] == 0.0
    assert m["n_samples"] == len(PROMPTS) * 2 and len(m["samples"]) == len(PROMPTS) * 2
    assert m["nll_sft"] > 0 and math.isfinite(m["nll_sft"])


def test_kl_is_positive_for_a_different_policy_and_evaluation_is_deterministic(tiny_policy_dir):
    sft, tok = load_policy(str(tiny_policy_dir))
    policy = copy.deepcopy(sft)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.5, alpha=1.0)
    cfg = eval_cfg(samples_per_prompt=4)
    a = evaluate_policy(policy, tok, sft, word_count, word_count, PROMPTS, cfg)
    b = evaluate_policy(policy, tok, sft, word_count, word_count, PROMPTS, cfg)
    assert a["kl_mean"] > 0  # an MC estimate, but with 20 samples of a strongly perturbed model, clearly > 0
    assert [s["completion"] for s in a["samples"]] == [s["completion"] for s in b["samples"]]
    assert a["kl_mean"] == b["kl_mean"]
    # Same prompts in the same order for every policy (common random numbers).
    c = evaluate_policy(sft, tok, sft, word_count, word_count, PROMPTS, cfg)
    assert [s["prompt"] for s in a["samples"]] == [s["prompt"] for s in c["samples"]]


def _perturbed_final(tiny_policy_dir, tmp_path) -> tuple[torch.nn.Module, Path]:
    final, _ = load_policy(str(tiny_policy_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in final.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "final.safetensors"
    save_model(final, str(path))
    return final, path


def test_eta_zero_gives_sft_weights_exactly_and_one_gives_final(tiny_policy_dir, tmp_path):
    sft, _ = load_policy(str(tiny_policy_dir))
    final, path = _perturbed_final(tiny_policy_dir, tmp_path)
    work = copy.deepcopy(final)  # start from other weights: everything must be overwritten
    R.set_interpolated_weights(work, sft, [path], 0.0)
    for (k, a), b in zip(work.state_dict().items(), sft.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    R.set_interpolated_weights(work, sft, [path], 1.0)
    for (k, a), b in zip(work.state_dict().items(), final.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    R.set_interpolated_weights(work, sft, [path], 0.25)
    w, s, f = (m.get_input_embeddings().weight for m in (work, sft, final))
    torch.testing.assert_close(w, 0.75 * s + 0.25 * f)
    # The SFT model is never touched.
    fresh, _ = load_policy(str(tiny_policy_dir))
    assert all(torch.equal(a, b) for a, b in zip(sft.state_dict().values(), fresh.state_dict().values(), strict=True))


def test_interpolation_refuses_another_architecture(tiny_policy_dir, tmp_path):
    sft, _ = load_policy(str(tiny_policy_dir))
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(bad))
    with pytest.raises(UserError, match="does not match"):
        R.set_interpolated_weights(copy.deepcopy(sft), sft, [bad], 0.5)


def test_eta_grid_has_exact_endpoints():
    grid = R.eta_grid(10)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and len(grid) == 11 and grid[3] == 0.3


# ---------------------------------------------------------------------------------------- fronts


def test_front_reward_at_matched_kl():
    pts = [(0.0, 0.0), (1.0, 0.5), (2.0, 0.4), (3.0, 1.0)]  # (2.0, 0.4) is dominated by (1.0, 0.5)
    assert R.pareto_points(pts) == [(0.0, 0.0), (1.0, 0.5), (3.0, 1.0)]
    assert R.front_reward_at(pts, 0.5) == pytest.approx(0.25)
    assert R.front_reward_at(pts, 2.0) == pytest.approx(0.75)
    assert R.front_reward_at(pts, 10.0) == 1.0  # flat after the last point: that policy is within budget
    assert R.front_reward_at([(1.0, 0.2)], 0.5) is None


def test_compare_fronts_counts_points_above():
    a = R.Series("WARP", "sweep", points=[{"eta": e, "kl_mean": 2 * e, "reward_mean": e} for e in (0, 0.5, 1)])
    b = R.Series("RLOO", "sweep", points=[{"eta": e, "kl_mean": 4 * e, "reward_mean": e} for e in (0, 0.5, 1)])
    c = R.compare_fronts(a, b)
    assert c["rows"][1]["delta"] == pytest.approx(0.5)  # at KL 2: WARP 1.0 against RLOO 0.5
    # KL 4 lies beyond WARP's front (its best reward, 1.0, is shown) but is left out of the verdict.
    assert c["rows"][2]["delta"] == pytest.approx(0.0) and c["rows"][2]["beyond"]
    assert c["matched"] == 1 and c["a_above"] == 1 and c["beyond"] == 1
    back = R.compare_fronts(b, a)  # RLOO's front at WARP's KLs 1 and 2: 0.25 and 0.5, below WARP's 0.5 and 1.0
    assert back["matched"] == 2 and back["a_above"] == 0 and back["mean_delta"] == pytest.approx(-0.375)


def test_readme_block_is_spliced_between_markers_only():
    text = "# T\nintro\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n"
    once = R.splice_block(text, "quickstart", "table 1")
    assert once.startswith("# T\nintro\n") and once.endswith("<!-- results:end -->\ntail\n")
    assert "table 1" in once and "old" in once
    twice = R.splice_block(once, "quickstart", "table 2")
    assert "table 1" not in twice and twice.count("<!-- results:quickstart:start -->") == 1
    both = R.splice_block(twice, "offline", "big run")
    assert "table 2" in both and "big run" in both


def test_update_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(UserError, match="markers"):
        R.check_readme(readme)
    assert readme.read_text() == "# no markers\n"


# --------------------------------------------------------------------------------------- config files

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
COMMAND_CLASS = {"align": "AlignConfig", "reward train": "RewardTrainConfig", "evaluate": "EvalConfig",
                 "pareto": "ParetoConfig", "quickstart": "QuickstartConfig", "sft": "SFTConfig"}


def config_class(path: Path) -> type:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# command: warprl "), f"{path.name}: first line must be '# command: warprl …'"
    command = first.removeprefix("# command: warprl ").split(" --")[0].strip()
    assert command in COMMAND_CLASS, f"{path.name}: unknown command {command!r}"
    return getattr(C, COMMAND_CLASS[command])


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads(path):
    cls = config_class(path)
    assert f"--config configs/{path.name}" in path.read_text().splitlines()[0]
    cfg = build_config(cls, read_yaml(path), source=str(path))
    assert isinstance(cfg, cls)


def test_configs_exist():
    assert len(list(CONFIG_DIR.glob("*.yaml"))) >= 8
