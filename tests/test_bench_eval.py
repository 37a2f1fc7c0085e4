"""benchmarks/bench_eval.py --smoke: one evaluation batch of a tiny random model timed phase by phase through
collect_samples' own clock, and the fused head's entropy lever alternated on one rollout."""

import pytest

from tests._bench import run_smoke


def test_bench_eval_smoke(tmp_path):
    got = run_smoke("bench_eval.py", tmp_path, timeout=600)
    phases = got["phases_s"]
    for phase in ("sample", "logp_policy", "logp_sft", "reward", "judge"):
        assert phases[phase] > 0, phase  # each phase ran under the clock (the SFT is a distinct model)
    assert phases["gold"] == 0 and not got["gold"]
    assert phases["total"] >= sum(phases[p] for p in ("sample", "logp_policy", "logp_sft", "reward", "judge"))
    assert got["samples"] == got["batch_prompts"] * 2 and len(got["batches"]) == got["repeats"] == 1
    assert got["seconds_per_sample"] == pytest.approx(phases["total"] / got["samples"])
    assert set(got["entropy_lever_s"]) == {"with_entropy", "without_entropy"}
    assert got["pass_gflop"] > 0 and got["peak_gflops"] > 0
