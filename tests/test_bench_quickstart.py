"""benchmarks/bench_quickstart.py --reference: the demo's WARP front against an earlier demo's, both ways."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_quickstart as B  # noqa: E402

PROMPTS = [f"prompt {i}" for i in range(12)]


def _pareto(gain: float, noise: float) -> dict:
    """A quickstart pareto.json: a WARP sweep η = 0, .5, 1 whose reward rises by ``gain`` per unit of KL.

    Two samples per prompt; the per-prompt ``noise`` makes the paired bootstrap interval non-degenerate."""
    points = []
    for eta in (0.0, 0.5, 1.0):
        kl = 2.0 * eta
        samples = [{"prompt": p, "kl": kl, "reward": -1.0 + gain * kl + noise * ((i % 3) - 1) * eta,
                    "completion": "", "judge": 0.0}
                   for i, p in enumerate(PROMPTS) for _ in range(2)]
        points.append({"eta": eta, "kl_mean": kl, "reward_mean": -1.0 + gain * kl, "samples": samples})
    return {"series": [{"name": "WARP", "kind": "sweep", "source": "", "points": points, "seeds": []}]}


SUMMARY = {"quickstart": {"iterations": 2, "runs": 2, "steps": 25, "lr": 5e-5, "eta_steps": 10},
           "seconds": {"total_s": 579.0}}


def test_the_same_front_is_within_noise_both_ways():
    lines = B.same_quality_lines(_pareto(1.0, 0.3), _pareto(1.0, 0.3), SUMMARY, "ref")
    assert lines[0].startswith("Same quality as the reference `ref` (2 × 2 × 25 steps, lr 5e-05, 11 η points; 579 s)")
    assert "Verdict rule" in lines[0]
    verdicts = [line for line in lines if line.startswith("- ") and "matched KL" in line]
    assert len(verdicts) == 2 and all("+0.000" in v and "**within noise**" in v for v in verdicts)
    assert lines[-1] == "- the final policy (η = 1): reward 1.000 at KL 2.00 here, 1.000 at KL 2.00 in the reference"


def test_a_front_that_gains_more_reward_per_kl_is_seen_above_and_below():
    better, ref = _pareto(1.5, 0.1), _pareto(1.0, 0.1)
    lines = B.same_quality_lines(better, ref, SUMMARY, "ref")
    ref_minus_new = next(line for line in lines if line.startswith("- the reference's front"))
    new_minus_ref = next(line for line in lines if line.startswith("- this run's front"))
    assert "**below**" in ref_minus_new  # the reference's front lies under this run's points
    assert "**above**" in new_minus_ref
