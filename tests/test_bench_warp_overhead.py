"""benchmarks/bench_warp_overhead.py --smoke: a WARP run on a tiny random model, its time split into the RL steps and
the phases around them; the parts add up to the whole, and nothing is written into the repository."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_warp_overhead_smoke(tmp_path):
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_warp_overhead.py"), "--smoke", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
                               "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["runs"] == 2 and got["steps_s"] > 0
    parts = ["steps_s", "load_init_s", "setup_s", "kl_sft_s", "metrics_s", "checkpoint_s", "finish_s",
             "executor_other_s", "merge_s", "driver_s"]
    assert sum(got[k] for k in parts) == pytest.approx(got["train_seconds"], abs=0.05)
    assert got["outside_steps_s"] == pytest.approx(got["train_seconds"] - got["steps_s"])
    assert got["checkpoint_s"] == 0.0  # --checkpoint-every 0: no checkpoint, not even after the last step
    assert all(got[k] >= 0 for k in parts if k != "executor_other_s")
    assert (results.read_bytes() if results.exists() else None) == before
