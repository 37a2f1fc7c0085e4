"""The η sweep's parts (warprl.eval.pareto): streamed interpolation, η grid, run labels, front maths."""

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model

from warprl import merge
from warprl.errors import UserError
from warprl.eval import pareto as R
from warprl.models import load_policy


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
    bad = tmp_path / "bad.safetensors"
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(bad))
    with pytest.raises(UserError, match="does not match"):
        R.set_interpolated_weights(copy.deepcopy(sft), sft, [bad], 0.5)


def test_eta_grid_has_exact_endpoints():
    grid = R.eta_grid(10)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and len(grid) == 11 and grid[3] == 0.3


def test_streamed_interpolation_equals_the_merge_kernel_bit_for_bit(tiny_policy_dir, tmp_path):
    sft, _ = load_policy(str(tiny_policy_dir))
    final, path = _perturbed_final(tiny_policy_dir, tmp_path)
    work = copy.deepcopy(sft)
    R.set_interpolated_weights(work, sft, [path], 0.3)
    expected = merge.interpolate(sft.state_dict(), final.state_dict(), 0.3)
    for k, v in work.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_sharded_weights_are_read_in_index_order(tmp_path):
    (tmp_path / "b.safetensors").write_bytes(b"")
    (tmp_path / "a.safetensors").write_bytes(b"")
    index = {"weight_map": {"x": "b.safetensors", "y": "a.safetensors", "z": "b.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert R.weight_files(tmp_path) == [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no .safetensors"):
        R.weight_files(empty)


def test_run_labels_come_from_the_run_config(tmp_path):
    warp = tmp_path / "warp"
    warp.mkdir()
    (warp / "config.yaml").write_text("method: warp\niterations: 2\nruns: 3\nsteps: 40\nbeta: 0.1\n")
    assert R.run_label(warp) == ("warp", "WARP I=2 M=3 T=40 β=0.1")
    rloo = tmp_path / "rloo"
    rloo.mkdir()
    (rloo / "config.yaml").write_text("method: rloo\nsteps: 8\nbeta: 0.05\n")
    assert R.run_label(rloo) == ("rloo", "RLOO T=8 β=0.05")
    (warp / "config.yaml").write_text("method: warp\niterations: 2\nruns: 4\nsteps: 25\nbeta: 0.05\nlora_r: 16\n")
    assert R.run_label(warp) == ("warp", "WARP I=2 M=4 T=25 β=0.05 LoRA r=16")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("method: [unclosed\n")
    assert R.run_label(broken) == ("model", "broken")
    assert R.run_label(tmp_path / "plain") == ("model", "plain")


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


def _point(eta: float, kl: float, rewards: list[float]) -> dict:
    """A point with per-prompt samples (one sample per prompt p0, p1, …)."""
    samples = [{"prompt": f"p{i}", "completion": "", "reward": r, "judge": 0.0, "kl": kl} for i, r in enumerate(rewards)]
    return {"eta": eta, "kl_mean": kl, "reward_mean": sum(rewards) / len(rewards), "samples": samples}


def test_compare_fronts_gives_a_paired_interval_and_a_verdict():
    import numpy as np

    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 2.0, 64)  # shared by both fronts: cancels in the paired difference
    a = R.Series("A", "sweep", points=[_point(e, 2 * e, (difficulty + e + 0.5 * (e > 0) + rng.normal(0, .1, 64)).tolist())
                                       for e in (0, 0.5, 1)])
    b = R.Series("B", "sweep", points=[_point(e, 2 * e, (difficulty + e + rng.normal(0, .1, 64)).tolist())
                                       for e in (0, 0.5, 1)])
    up = R.compare_fronts(a, b)
    assert up["verdict"] == "above" and up["ci_over"] == "prompts"
    assert up["mean_delta_ci"][0] < up["mean_delta"] < up["mean_delta_ci"][1]
    assert R.compare_fronts(b, a)["verdict"] == "below"
    assert R.compare_fronts(a, a)["verdict"] == "within noise"
    assert up["rows"][1]["delta_ci"] is not None


def test_several_seeds_give_a_mean_front_and_an_interval_across_seeds():
    per_seed_a = [[{"eta": e, "kl_mean": 2 * e, "reward_mean": e + d, "judge_positive_rate": 0.5} for e in (0, 0.5, 1)]
                  for d in (0.4, 0.5, 0.6)]
    per_seed_b = [[{"eta": e, "kl_mean": 2 * e, "reward_mean": e + d * e} for e in (0, 0.5, 1)] for d in (-0.1, 0.0, 0.1)]
    a = R.seeded_series("A", "sweep", "", per_seed_a)
    b = R.seeded_series("B", "sweep", "", per_seed_b)
    assert a.name == "A (3 seeds)" and a.points[1]["reward_mean"] == pytest.approx(1.0)
    assert a.points[1]["n_seeds"] == 3 and a.points[1]["reward_ci"] == pytest.approx([1.0 - 4.303 * 0.1 / 3 ** 0.5,
                                                                                     1.0 + 4.303 * 0.1 / 3 ** 0.5])
    c = R.compare_fronts(a, b)
    assert c["ci_over"] == "seeds" and len(c["seed_deltas"]) == 3 and c["verdict"] == "above"
    assert c["mean_delta_ci"][0] < c["seed_mean_delta"] < c["mean_delta_ci"][1]
    assert R.seeded_series("one", "sweep", "", per_seed_a[:1]).points == per_seed_a[0]  # one seed: its own points


def test_seed_groups_are_comma_lists():
    assert R.seed_group("runs/a") == ["runs/a"] and R.seed_group("runs/a, runs/b,") == ["runs/a", "runs/b"]


def test_gold_is_compared_along_the_sweeps_at_matched_kl():
    # A gold reward may fall with KL: read a's sweep in KL order ("curve"), not its envelope ("front").
    def point(eta, kl, gold, noise=0.0):
        samples = [{"prompt": f"p{i}", "kl": kl, "reward": 0.0, "gold": gold + noise * (i % 2 - 0.5)}
                   for i in range(8)]
        return {"eta": eta, "kl_mean": kl, "reward_mean": 0.0, "gold_mean": gold, "samples": samples}

    # a's gold rises to 1 at KL 2 then falls to −1 at KL 4; b sits at −1 at KL 1 and KL 3 (one noisy prompt pair).
    a = R.Series("a", "sweep", "", [point(0.0, 0.0, 0.0), point(0.5, 2.0, 1.0), point(1.0, 4.0, -1.0)])
    b = R.Series("b", "sweep", "", [point(0.0, 0.0, 0.0), point(0.5, 1.0, -1.0, 0.2), point(1.0, 3.0, -1.0, 0.2)])
    c = R.compare_fronts(a, b, "gold", read="curve")
    # a's sweep at KL 1 is 0.5 and at KL 3 is 0.0 (its points in KL order, not an envelope): Δ = 1.5 and 1.0.
    assert c["matched"] == 2 and c["mean_delta"] == pytest.approx(1.25) and c["verdict"] == "above"
    assert c["ci_over"] == "prompts" and c["mean_delta_ci"][0] < 1.25 < c["mean_delta_ci"][1]
    itself = R.compare_fronts(a, a, "gold", read="curve")  # an envelope would put a's falling points below a's own front
    assert itself["mean_delta"] == 0.0 and itself["verdict"] == "within noise"
    beyond = R.Series("far", "sweep", "", [point(0.0, 0.0, 0.0), point(1.0, 9.0, 0.0)])
    assert R.compare_fronts(a, beyond, "gold", read="curve")["matched"] == 0  # no reading of a beyond its largest KL
    seeded_a = R.Series("a", "sweep", "", a.points, [a.points, a.points])
    seeded_b = R.Series("b", "sweep", "", b.points, [b.points, [point(0.0, 0.0, 0.0), point(1.0, 1.0, 0.0)]])
    s = R.compare_fronts(seeded_a, seeded_b, "gold", read="curve")
    assert s["ci_over"] == "seeds" and s["seed_deltas"] == pytest.approx([1.25, 0.5])
    assert s["seed_mean_delta"] == pytest.approx(0.875) and s["verdict"] == "within noise"  # t with 1 df: wide


def test_a_value_the_points_lack_is_not_compared():
    a = R.Series("a", "sweep", "", [{"eta": 0.0, "kl_mean": 0.0, "reward_mean": 0.0}])
    c = R.compare_fronts(a, a, "gold", read="curve")
    assert c["matched"] == 0 and c["verdict"] == "no gold"
