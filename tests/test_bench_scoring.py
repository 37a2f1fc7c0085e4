"""benchmarks/bench_scoring.py: both ways of scoring run at every shape and give the same log-probs."""

from tests._bench import run_smoke


def test_smoke_times_both_ways_and_they_agree(tmp_path):
    got = run_smoke("bench_scoring.py", tmp_path)
    assert set(got["shapes"]) == {"2x2x4", "2x3x4"}
    for shape in got["shapes"].values():
        for name in ("update per sample", "update shared", "anchor per sample", "anchor shared"):
            assert shape[name] > 0 and len(shape["all"][name]) == 2
        assert shape["shared_by_default"] is False  # a few prompt tokens saved: below the default's minimum
        assert shape["max_abs_logp_diff"] < 1e-4  # fp32: the same sums
    assert got["shapes"]["2x3x4"]["saved_tokens"] == 2 * 2 * got["shapes"]["2x3x4"]["prompt_width"]
