"""benchmarks/bench_warp_overhead.py --smoke: a WARP run on a tiny random model, its time split into the RL steps and
the phases around them; the parts add up to the whole, and nothing is written into the repository."""

import pytest

from tests._bench import run_smoke


def test_bench_warp_overhead_smoke(tmp_path):
    got = run_smoke("bench_warp_overhead.py", tmp_path, timeout=600)
    assert got["runs"] == 2 and got["steps_s"] > 0
    parts = ["steps_s", "load_init_s", "setup_s", "kl_sft_s", "metrics_s", "checkpoint_s", "finish_s",
             "executor_other_s", "merge_s", "driver_s"]
    assert sum(got[k] for k in parts) == pytest.approx(got["train_seconds"], abs=0.05)
    assert got["outside_steps_s"] == pytest.approx(got["train_seconds"] - got["steps_s"])
    assert got["checkpoint_s"] == 0.0  # --checkpoint-every 0: no checkpoint, not even after the last step
    assert all(got[k] >= 0 for k in parts if k != "executor_other_s")
