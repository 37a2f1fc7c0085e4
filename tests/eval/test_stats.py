"""warprl.eval.stats: bootstrap over prompts, across-seed t-intervals, paired front differences, the verdict."""

import numpy as np
import pytest

from warprl.eval import stats as S


def test_per_prompt_groups_samples_of_one_prompt():
    prompts, means = S.per_prompt(["a", "a", "b", "b", "c", "c"], [1, 3, 0, 0, 5, 7])
    assert prompts == ["a", "b", "c"] and means.tolist() == [2.0, 0.0, 6.0]


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_prompts():
    rng = np.random.default_rng(1)
    small, large = rng.normal(2.0, 1.0, 25), rng.normal(2.0, 1.0, 400)
    for x in (small, large):
        lo, hi = S.bootstrap_mean_ci(x)
        assert lo < x.mean() < hi
        # Hand check: a percentile bootstrap of a mean is close to mean ± 1.96·s/√n.
        half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
        assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert S.bootstrap_mean_ci(large)[1] - S.bootstrap_mean_ci(large)[0] < S.bootstrap_mean_ci(small)[1] - S.bootstrap_mean_ci(small)[0]
    assert S.bootstrap_mean_ci(small) == S.bootstrap_mean_ci(small)  # seeded: the same data, the same interval


def test_constant_values_give_a_zero_width_interval():
    assert S.bootstrap_mean_ci([3.0] * 10) == (3.0, 3.0)
    assert S.bootstrap_mean_ci([4.0]) == (4.0, 4.0)


def test_t_interval_by_hand():
    m, lo, hi = S.t_interval([1.0, 2.0, 3.0])  # s = 1, n = 3: half-width 4.303 / √3
    assert m == 2.0 and hi - m == pytest.approx(4.303 / np.sqrt(3)) and m - lo == pytest.approx(4.303 / np.sqrt(3))
    assert S.t_interval([5.0]) == (5.0, 5.0, 5.0)
    assert S.t_quantile(100) == 1.96


@pytest.mark.parametrize(("lo", "hi", "want"), [(0.1, 0.5, "above"), (-0.5, -0.1, "below"), (-0.1, 0.5, "within noise"),
                                               (0.0, 0.5, "within noise"), (None, None, "no comparison")])
def test_verdict_rule(lo, hi, want):
    assert S.verdict(lo, hi) == want


def _front(kls, rewards, n, noise, rng):
    """Per-prompt values of a front: each point's prompts scatter around its (KL, reward)."""
    kl = np.array([k + rng.normal(0, noise / 4, n) for k in kls]).clip(0)
    r = np.array([v + rng.normal(0, noise, n) for v in rewards])
    return kl, r


def test_a_front_shifted_up_is_above_and_the_same_front_is_within_noise():
    rng = np.random.default_rng(0)
    n, kls = 200, [0.5, 1.0, 2.0, 4.0]
    base = [0.0, 1.0, 2.0, 3.0]
    common = rng.normal(0, 1.0, n)  # prompt difficulty shared by every policy (paired design)
    b_kl, b_r = _front(kls, base, n, 0.3, rng)
    b_r = b_r + common
    a_kl, a_r = _front(kls, [v + 0.5 for v in base], n, 0.3, rng)
    a_r = a_r + common
    up = S.paired_front_deltas(a_kl, a_r, b_kl, b_r, matched=[1, 2, 3])
    lo, hi = up["mean"]
    assert S.verdict(lo, hi) == "above" and lo < 0.5 < hi + 0.1
    same_kl, same_r = _front(kls, base, n, 0.3, rng)
    same = S.paired_front_deltas(same_kl, same_r + common, b_kl, b_r, matched=[1, 2, 3])
    assert S.verdict(*same["mean"]) == "within noise"
    down = S.paired_front_deltas(b_kl, b_r, a_kl, a_r, matched=[1, 2, 3])
    assert S.verdict(*down["mean"]) == "below"
    # Per-point intervals exist where b's KL lies inside a's front; below a's smallest KL there is none.
    assert all(r is not None for r in up["rows"][1:])


def test_pairing_removes_the_prompt_noise_both_fronts_share():
    # Large shared prompt effects and a small true gain: paired, the gain is clear.
    rng = np.random.default_rng(3)
    n = 100
    common = rng.normal(0, 3.0, n)
    kl = np.array([np.full(n, 1.0), np.full(n, 2.0)])
    b_r = np.array([1.0 + common, 2.0 + common])
    a_r = b_r + 0.2 + rng.normal(0, 0.05, (2, n))
    res = S.paired_front_deltas(kl, a_r, kl, b_r, matched=[0, 1])
    assert S.verdict(*res["mean"]) == "above"
    unpaired = S.bootstrap_mean_ci(a_r[1]), S.bootstrap_mean_ci(b_r[1])
    assert unpaired[0][0] < unpaired[1][1]  # separately, the two intervals overlap


def test_front_maths_by_hand():
    pts = [(0.0, 0.0), (2.0, 1.0), (1.0, -1.0), (4.0, 3.0)]
    assert S.pareto_points(pts) == [(0.0, 0.0), (2.0, 1.0), (4.0, 3.0)]
    assert S.front_reward_at(pts, 1.0) == 0.5 and S.front_reward_at(pts, 3.0) == 2.0
    assert S.front_reward_at(pts, 9.0) == 3.0 and S.front_reward_at([(1.0, 0.0)], 0.5) is None


def test_curve_is_read_along_its_points_in_kl_order_not_their_envelope():
    pts = [(0.0, 0.0), (4.0, -1.0), (2.0, 1.0)]  # rises to 1 at KL 2, falls to −1 at KL 4
    assert S.curve_value_at(pts, 1.0) == 0.5 and S.curve_value_at(pts, 3.0) == 0.0  # envelope: 0.5 and 1.0
    assert S.front_reward_at(pts, 3.0) == 1.0
    assert S.curve_value_at(pts, 5.0) == -1.0 and S.curve_value_at(pts, -0.5) is None
