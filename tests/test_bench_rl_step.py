"""benchmarks/bench_rl_step.py: the step's FLOP floor, the ≥ 3× verdict and the section rendered from a saved run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_rl_step as B  # noqa: E402


def _shape_result(trl_step: float, sides: dict[str, float]) -> dict:
    """One shape of 8 prompts × k 2 × 24 tokens: update 3e11 FLOP, completions of 24 tokens."""
    res = {"shape": {"prompts": 8, "k": 2, "tokens": 24}, "samples": 16,
           "trl": {"step_s": trl_step, "samples_per_s": 16 / trl_step, "loadavg": 1.0},
           "update_flops_per_s": 1e11,
           "update_breakdown": {"seq_len": 34, "forward_s": 1.0, "backward_s": 2.0, "grads_to_fp32_s": 0.0,
                                "clip_adamw_s": 0.0, "sync_bf16_s": 0.0, "top_ops": [["aten::mm", 10, 1.0, 0.5]]},
           "fwd_bwd_flops_per_s": 1e11}
    for name, step in sides.items():
        res[name] = {"step_s": step, "samples_per_s": 16 / step, "ratio_vs_trl": trl_step / step, "update_s": 3.0,
                     "generate_s": 0.5, "reward_s": 0.1, "anchor_s": 0.3, "decode_ms_per_token": 20.0,
                     "completion_length": 24.0, "loadavg": 1.0}
    return res


def test_the_floor_counts_update_anchor_and_decode_and_the_target_share_by_hand():
    res = _shape_result(6.0, {"warprl": 4.0, "warprl (attention eager)": 3.0})
    f = B.step_floor(res, peak=1e12, n_params=10**8)
    # update 1e11 FLOP/s × 3 s; anchor forward a third of it; decode 2 · 1e8 · 16 rows · 24 tokens
    assert f["update_flops"] == pytest.approx(3e11)
    assert f["anchor_flops"] == pytest.approx(1e11)
    assert f["decode_flops"] == pytest.approx(7.68e10)
    assert f["floor_s"] == pytest.approx(0.4768)
    assert f["target_s"] == pytest.approx(2.0)  # 6 s / 3
    assert f["target_share_of_peak"] == pytest.approx(0.2384)
    assert f["best_ratio"] == pytest.approx(2.0)  # the eager side, the faster one
    assert f["best_share_of_peak"] == pytest.approx(0.4768 / 3.0)
    assert "**missed** (best side 2.00×)" in B.target_line(res, f)


def test_the_verdict_is_met_at_three_times():
    res = _shape_result(9.0, {"warprl": 3.0})
    assert "**met** (best side 3.00×)" in B.target_line(res, B.step_floor(res, 1e12, 10**8))


def test_a_saved_run_renders_its_own_date_machine_and_verdict():
    run = {"date": "2026-01-02 03:04", "machine": "2 cores TestCPU", "cores": 2, "command": "python bench",
           "device": "cpu", "gpu": "", "heap": "kept", "policy": "smollm2-135m", "precision": "bf16", "shapes": ["8x2x24"],
           "attn": ["sdpa"], "trl_attn": "sdpa", "trl_version": "1.16.0", "peak_flops": 1e12,
           "read_bandwidth": 2e10, "weight_bytes": 2 * 10**8, "results": [_shape_result(6.0, {"warprl": 4.0})]}
    md = B.markdown(run)
    assert md.startswith("2026-01-02 03:04 · 2 cores TestCPU · `python bench`")
    assert "Target ≥ 3× TRL at 8 × 2 × 24: **missed** (best side 1.50×)" in md
    assert "| 8 × 2 × 24 | warprl | 4.00 |" in md
    assert B.section_title(run) == "RL step: warprl vs TRL RLOOTrainer"
    assert B.section_title({**run, "precision": "fp32"}) == "RL step: warprl vs TRL RLOOTrainer, fp32, 8x2x24"
    assert B.section_title({**run, "gpu": "NVIDIA H200"}) == "RL step: warprl vs TRL RLOOTrainer, NVIDIA H200"
    # Runs from before warprl.heap (no "heap" in their record) ran under glibc's default heap: their own section.
    old = {k: v for k, v in run.items() if k != "heap"}
    assert B.section_title(old) == "RL step: warprl vs TRL RLOOTrainer, glibc's default heap"
    assert "one glibc heap setting: glibc's default heap" in B.markdown(old)
    assert "one glibc heap setting: freed memory kept" in md
