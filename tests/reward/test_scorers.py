"""The scoring API: checks and conversion of any source, normalisation, VADER on the completion only."""

import pytest
import torch

from warprl import reward as R
from warprl.errors import UserError


def test_callable_reward_is_checked_and_converted():
    fn = R.load_reward(lambda prompts, completions: [len(c) for c in completions])
    out = fn(["a", "b"], ["xy", "xyz"])
    assert out.dtype == torch.float32 and out.tolist() == [2.0, 3.0]
    assert fn([], []).shape == (0,)

    def broken(prompts, completions):
        return [float("nan")] * len(completions)

    with pytest.raises(R.RewardError, match="reward 'broken' returned a non-finite value"):
        R.load_reward(broken)(["p"], ["c"])
    with pytest.raises(R.RewardError, match="1 values for 2"):
        R.load_reward(lambda p, c: [1.0])(["a", "b"], ["c", "d"])
    with pytest.raises(R.RewardError, match="not a number"):
        R.load_reward(lambda p, c: [None])(["a"], ["b"])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        R.load_reward(lambda p, c: [1.0])(["a", "b"], ["c"])
    assert R.load_reward(lambda p, c: torch.ones(len(c), dtype=torch.float64))(["a"], ["b"]).dtype == torch.float32


def test_normalisation_on_a_reference_set(tmp_path):
    ref = ["a", "bbb", "cc", "dddddd", "e"]
    fn = R.load_reward(lambda p, c: [3.0 * len(x) + 7 for x in c], normalize=True, reference=ref)
    z = fn([""] * len(ref), ref)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-6) and float(z.std()) == pytest.approx(1.0, abs=1e-6)
    assert fn.stats["n"] == 5 and fn.stats["source"] == "reference"
    builtin = R.load_reward(lambda p, c: [float(len(x)) for x in c], normalize=True)
    assert builtin.stats["source"] == "builtin" and builtin.stats["n"] == 64
    txt = tmp_path / "ref.txt"
    txt.write_text("a\n\nbbb\nc\n")
    from_file = R.load_reward(lambda p, c: [float(len(x)) for x in c], normalize=str(txt))
    assert from_file.stats["n"] == 3 and from_file.stats["mean"] == pytest.approx(5 / 3)
    with pytest.raises(UserError, match="no stored normalisation"):
        R.load_reward(lambda p, c: [0.0] * len(c), normalize="stored")


def test_vader_judges_the_completion_only():
    fn = R.load_reward("vader")
    pos, neg = fn(["The film was"] * 2, [" wonderful, I loved it", " terrible and boring"]).tolist()
    assert pos > 0.5 and neg < -0.5
    # A hateful prompt does not drag down a positive completion: the judge reads the completion.
    assert fn(["I hated this awful movie."], [" It was wonderful."]).tolist() == fn([""], [" It was wonderful."]).tolist()
