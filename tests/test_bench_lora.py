"""benchmarks/bench_lora.py --smoke: every part of the LoRA benchmark (resources, fronts, EMA-anchor gap) runs on a
tiny random model, prints one JSON object last, and writes nothing into the repository."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_lora_smoke(tmp_path):
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_lora.py"), "--smoke", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
                               "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
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
    assert (results.read_bytes() if results.exists() else None) == before
