"""benchmarks/bench_heap.py: the A/B runs both sides in fresh processes, each with its own heap setting."""

from tests._bench import run_smoke


def test_smoke_runs_both_sides_and_the_heap_changes_no_bit(tmp_path):
    got = run_smoke("bench_heap.py", tmp_path)
    assert [r["kept"] for r in got["rounds"]["default"]] == [False]
    assert [r["kept"] for r in got["rounds"]["kept"]] == [True]
    shape = got["shapes"]["2x2x4"]
    assert shape["identical_weights"] is True
    for side in ("default", "kept"):
        assert shape[side]["charts/step_time_s"] > 0 and shape[side]["minflt_per_step"] >= 0
