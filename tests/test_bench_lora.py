"""benchmarks/bench_lora.py --smoke: every part of the LoRA benchmark (resources, fronts, EMA-anchor gap) runs on a
tiny random model, prints one JSON object last, and writes nothing into the repository."""

from tests._bench import run_smoke


def test_bench_lora_smoke(tmp_path):
    result = run_smoke("bench_lora.py", tmp_path)
    res = result["resources"]
    assert res["lora"]["run_folder_bytes"] < res["full"]["run_folder_bytes"]  # adapters, not weights
    for kind in ("full", "lora"):
        assert res[kind]["peak_rss"] > 0 and res[kind]["step_time_s"] > 0 and len(res[kind]["angle_deg"]) == 2
    assert set(res["ratios"]) == {"peak_rss", "peak_anon_rss", "run_folder", "step_time"}
    fronts = result["quality"]["fronts"]
    assert len(fronts) == 2 and any("LoRA r=4" in name for name in fronts)
    assert all(len(p["reward_ci"]) == 2 for points in fronts.values() for p in points)
    assert len(result["quality"]["comparisons"]) == 2
    gap = result["ema_gap"]
    assert gap["tokens"] > 0 and gap["mean_abs_dlogp"] > 0 and gap["rel_dw_difference"] > 0  # not the same anchor
    assert gap["kl_to_factor_ema"] >= 0 and gap["kl_to_dw_ema"] >= 0
