"""sample_next: the tempered log-prob, truncation, and the two-level inverse-CDF draw against known distributions."""

import pytest
import torch

from warprl.rl import sampling as S


def _frequencies(tokens: torch.Tensor, rows: int, per_row: int, vocab: int) -> list[torch.Tensor]:
    return [torch.bincount(tokens[r * per_row:(r + 1) * per_row], minlength=vocab).double() / per_row
            for r in range(rows)]


def test_inverse_cdf_draw_has_the_distribution_and_never_a_truncated_token():
    """20,000 draws per row from known distributions (top-k truncation and a banned token included): every
    frequency within 0.015 of its probability (5 standard errors at most), no zero-probability token ever."""
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, -3.0]] * 2 + [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    rows = logits.repeat_interleave(20_000, 0)
    tokens, logp = S.sample_next(rows, temperature=1.3, top_k=4, ban=1)
    scaled = logits / 1.3
    torch.testing.assert_close(logp, (scaled.log_softmax(-1).repeat_interleave(20_000, 0)).gather(1, tokens[:, None])
                               .squeeze(1), atol=1e-6, rtol=0)
    for r, freq in enumerate(_frequencies(tokens, 3, 20_000, 6)):
        kept = scaled[r].clone()
        kept[1] = -float("inf")
        kept[kept < kept.topk(4).values[-1]] = -float("inf")
        p = kept.softmax(-1)
        assert (freq[p == 0] == 0).all()
        assert (freq - p.double()).abs().max() < 0.015, (r, freq, p)


@pytest.mark.parametrize("block", [3, 4, 10])  # 10 = one block; 3 and 4 leave a padded last block
def test_two_level_cdf_draws_the_token_a_flat_cdf_draws(monkeypatch, block):
    """With blocks of 3 or 4 over a 10-entry vocabulary, the block's running sum finds the token that the first
    index whose float64 CDF exceeds the same uniform names, for every one of 4,000 rows; padding is never drawn."""
    monkeypatch.setattr(S, "CDF_BLOCK", block)
    g = torch.Generator().manual_seed(1)
    weights = torch.rand(4000, 10, generator=g, dtype=torch.float64).float()
    weights[:, 9] = 0.0  # the last real entry weighs nothing: the padding follows it
    weights[::7, 4:8] = 0.0
    torch.manual_seed(3)
    tokens = S._inverse_cdf_draw(weights, weights)
    torch.manual_seed(3)
    cdf = weights.double().cumsum(-1)
    u = torch.rand(4000, 1).double() * cdf[:, -1:]
    expected = torch.searchsorted(cdf, u, right=True).squeeze(1)
    assert torch.equal(tokens, expected)
    assert (weights.gather(1, tokens[:, None]) > 0).all()


def test_two_level_cdf_has_the_distribution_over_many_blocks(monkeypatch):
    """48 blocks of 16 (a small copy of SmolLM2's 48 × 1024): 40,000 draws match a peaked distribution."""
    monkeypatch.setattr(S, "CDF_BLOCK", 16)
    torch.manual_seed(0)
    logits = torch.randn(768, generator=torch.Generator().manual_seed(2)) * 2
    logits[500] = 8.0
    tokens, _ = S.sample_next(logits.expand(40_000, -1).contiguous(), temperature=1.0)
    freq = torch.bincount(tokens, minlength=768).double() / 40_000
    assert (freq - logits.softmax(-1).double()).abs().max() < 0.01


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_normaliser_is_torch_logsumexp_to_the_bit(temperature):
    """sample_next writes out logsumexp's operations to reuse exp(x − max): the log-probs are those of
    log_softmax at the temperature, bit for bit with torch.logsumexp."""
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(4)) * 4
    torch.manual_seed(0)
    tokens, logp = S.sample_next(logits, temperature)
    scaled = logits / temperature
    expected = scaled.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(scaled, -1)
    assert torch.equal(logp, expected)


def test_multinomial_draw_is_torch_multinomial_on_the_softmax():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    tokens, _ = S.sample_next(logits, 0.8, top_k=10, draw="multinomial")
    scores = logits / 0.8
    scores = scores.masked_fill(scores < scores.topk(10).values[:, -1:], -float("inf"))
    torch.manual_seed(7)
    assert torch.equal(tokens, torch.multinomial(scores.softmax(-1), 1).squeeze(1))
