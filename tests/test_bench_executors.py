"""benchmarks/bench_executors.py --smoke: the sequential and processes executors train the same WARP run on a tiny
random model; with a 1-thread driver (OMP_NUM_THREADS=1) the workers get 1 thread too, so the weights are identical."""

from tests._bench import run_smoke


def test_bench_executors_smoke(tmp_path):
    got = run_smoke("bench_executors.py", tmp_path, timeout=600)
    assert got["driver_threads"] == 1 and got["worker_threads"] == 1
    assert got["identical_weights"] is True
    for executor in ("sequential", "processes"):
        assert len(got[executor]["train_seconds"]) == 1 and got[executor]["median_s"] > 0
    assert got["speedup"] == got["sequential"]["median_s"] / got["processes"]["median_s"]
    assert got["sequential"]["reward_mean"] == got["processes"]["reward_mean"]  # same weights, same metrics
